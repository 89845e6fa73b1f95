//! Nodes that name files of the repository by glob: a step's `cache` (its
//! inputs and outputs) and a pipeline's or stage's `changes` (what makes it
//! affected). Globs are checked here, once, with the span of each.

use super::model::Cache;
use super::parser::Parser;
use super::reader::{Node, Spanned};

/// Why `path` cannot be a cached output: it is restored into the
/// pipeline's directory, so it must name something inside it and not all of
/// it, nor pipe's or git's own files (the cache would copy itself).
fn bad_output(path: &str) -> Option<(&'static str, &'static str)> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    if path.starts_with('/') || parts.contains(&"..") {
        return Some(("a path outside the pipeline's directory", "outputs are restored into the pipeline's directory"));
    }
    if path.contains("${") {
        return Some((
            "`${…}` is not expanded in outputs",
            "name the paths as they are, or one directory holding them",
        ));
    }
    match parts.first() {
        None => Some(("the whole pipeline's directory", "name what the step makes: outputs \"target/app\"")),
        Some(&(".pipe" | ".git")) => {
            Some(("pipe's or git's own files", "name what the step makes: outputs \"target/app\""))
        }
        _ => None,
    }
}

impl Parser {
    /// `cache { inputs "src/**" "Cargo.lock"; outputs "target/app" }`.
    pub(super) fn cache(&mut self, node: Node) -> Option<Cache> {
        node.check_props(&[], &mut self.errs);
        node.check_arg_count(0, &mut self.errs);
        let (mut inputs, mut outputs) = (Vec::new(), Vec::new());
        for child in node.children() {
            match child.name() {
                "inputs" => inputs.extend(self.globs(child)),
                "outputs" => {
                    for path in self.globs(child) {
                        if let Some((why, help)) = bad_output(&path.value) {
                            self.errs.invalid(&path.loc, "outputs", why, Some(help.to_string()));
                        }
                        outputs.push(path);
                    }
                }
                other => self.unknown(child, "a `cache` block", &["inputs", "outputs"], other),
            }
        }
        if inputs.is_empty() {
            self.missing(node, "cache", "inputs", "cache { inputs \"src/**\" \"Cargo.lock\"; outputs \"target/app\" }");
            return None;
        }
        Some(Cache { inputs, outputs })
    }

    /// `on "push" branch="main"`: a branch glob whose new commits `pipe watch` runs.
    pub(super) fn on_push(&mut self, node: Node) -> Option<Spanned<String>> {
        self.leaf(node, &["branch"], 1);
        let event = node.arg_string("an event", &mut self.errs)?;
        if event.value != "push" {
            let help = Some("on \"push\" branch=\"main\"".to_string());
            self.errs.invalid(&event.loc, "on", format!("`{}` is not an event pipe knows", event.value), help);
            return None;
        }
        let Some(branch) = node.prop_string("branch", &mut self.errs) else {
            self.missing(node, "on \"push\"", "a branch", "on \"push\" branch=\"main\"");
            return None;
        };
        if let Err(e) = globset::Glob::new(&branch.value) {
            self.errs.invalid(&branch.loc, "branch", format!("`{}` is not a glob: {}", branch.value, e.kind()), None);
        }
        Some(branch)
    }

    /// The arguments of `inputs`, `outputs` or `changes`: globs relative to the pipeline's directory.
    pub(super) fn globs(&mut self, node: Node) -> Vec<Spanned<String>> {
        self.leaf(node, &[], usize::MAX);
        let globs = node.arg_texts(node.name(), &mut self.errs);
        if globs.is_empty() {
            node.arg_string("a path or glob", &mut self.errs);
        }
        for g in &globs {
            // `!glob` excludes what `glob` matches.
            let glob = g.value.strip_prefix('!').unwrap_or(&g.value);
            if let Err(e) = globset::Glob::new(glob) {
                self.errs.invalid(&g.loc, node.name(), format!("`{}` is not a glob: {}", g.value, e.kind()), None);
            } else if glob.is_empty() {
                self.errs.invalid(
                    &g.loc,
                    node.name(),
                    "`!` must be followed by the glob it excludes".to_string(),
                    None,
                );
            }
        }
        globs
    }
}
