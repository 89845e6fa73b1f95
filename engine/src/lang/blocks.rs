//! The small blocks shared by pipelines, stages and steps: `env`, `secrets`,
//! `matrix` and `when`.

use std::collections::HashMap;

use globset::Glob;

use super::error::LangError;
use super::model::{Axis, BranchOnly, Condition, Env, EnvVar, Matrix, Outcome, Secrets, Test};
use super::parser::{Parser, duplicate};
use super::reader::{Node, Spanned};
use super::source::Loc;

const WHEN_PROPS: &[&str] = &["branch", "env", "equals", "step", "outcome", "output"];

impl Parser {
    pub(super) fn env_block(&mut self, node: Node, env: &mut Env) {
        node.check_props(&[], &mut self.errs);
        node.check_arg_count(0, &mut self.errs);
        let mut seen: HashMap<String, Loc> = env.0.iter().map(|v| (v.name.clone(), v.value.loc.clone())).collect();
        for var in node.children() {
            self.leaf(var, &[], 1);
            let name = var.name().to_string();
            let loc = var.name_loc();
            if let Some(first) = seen.get(&name) {
                self.errs.push(duplicate("env variable", &name, &loc, Some(first)));
                continue;
            }
            let Some(value) = var.args().next() else {
                var.arg_string("a value", &mut self.errs);
                continue;
            };
            if let Some(text) = var.entry_text(value, &name, &mut self.errs) {
                let value = self.template(&text);
                seen.insert(name.clone(), loc);
                env.0.push(EnvVar { name, value });
            }
        }
    }

    pub(super) fn secrets_block(&mut self, node: Node, secrets: &mut Secrets) {
        node.check_props(&[], &mut self.errs);
        node.check_arg_count(0, &mut self.errs);
        for child in node.children() {
            match child.name() {
                "from-env" => {
                    self.leaf(child, &["branch"], usize::MAX);
                    let names = child.arg_texts("from-env", &mut self.errs);
                    if names.is_empty() {
                        child.arg_string("a variable name", &mut self.errs);
                    }
                    if let Some(only) = self.branch_only(child) {
                        secrets.branch_only.extend(names.iter().map(|n| (n.value.clone(), only.clone())));
                    }
                    secrets.from_env.extend(names);
                }
                "from-file" => {
                    self.leaf(child, &[], 1);
                    if let Some(path) = child.arg_string("a file path", &mut self.errs) {
                        let file = child.src.dir().join(&path.value);
                        secrets.files.push(Spanned { value: file, loc: path.loc });
                    }
                }
                other => self.unknown(child, "a `secrets` block", &["from-env", "from-file"], other),
            }
        }
    }

    /// `branch="main"` on a `from-env`: the glob of the branches whose runs get it.
    fn branch_only(&mut self, node: Node) -> Option<BranchOnly> {
        let pattern = node.prop_string("branch", &mut self.errs)?;
        match Glob::new(&pattern.value) {
            Ok(glob) => Some(BranchOnly { matcher: glob.compile_matcher(), pattern: pattern.value }),
            Err(e) => {
                let help = Some("from-env \"DEPLOY_TOKEN\" branch=\"main\"".to_string());
                let why = format!("`{}` is not a glob: {}", pattern.value, e.kind());
                self.errs.invalid(&pattern.loc, "branch", why, help);
                None
            }
        }
    }

    pub(super) fn matrix(&mut self, node: Node) -> Option<Matrix> {
        node.check_props(&[], &mut self.errs);
        node.check_arg_count(0, &mut self.errs);
        let mut axes: Vec<Axis> = Vec::new();
        for child in node.children() {
            child.check_props(&[], &mut self.errs);
            child.check_no_children(&mut self.errs);
            let values: Vec<String> =
                child.arg_texts("a matrix value", &mut self.errs).into_iter().map(|v| v.value).collect();
            let loc = child.name_loc();
            if values.is_empty() {
                child.arg_string("at least one value", &mut self.errs);
                continue;
            }
            if let Some(bad) = values.iter().find(|v| v.is_empty() || v.contains([',', '[', ']'])) {
                self.errs.invalid(
                    &child.loc(),
                    "matrix value",
                    format!("`{bad}` is empty or holds `,`, `[` or `]`"),
                    None,
                );
            }
            if let Some(first) = axes.iter().find(|a| a.name == child.name()) {
                self.errs.push(duplicate("matrix axis", child.name(), &loc, Some(&first.loc)));
                continue;
            }
            axes.push(Axis { name: child.name().to_string(), values, loc });
        }
        if axes.is_empty() {
            self.errs.push(LangError::Missing {
                node: "matrix".into(),
                what: "an axis".into(),
                src: node.src.named(),
                span: node.kdl.span(),
                help: Some("write axes as: matrix { os \"linux\" \"macos\"; version \"1\" \"2\" }".into()),
            });
            return None;
        }
        Some(Matrix { axes, loc: node.name_loc() })
    }

    /// One `when` node. Its fields combine with AND; several `when` nodes do too.
    pub(super) fn condition(&mut self, node: Node) -> Vec<Condition> {
        self.leaf(node, WHEN_PROPS, 0);
        let errs = &mut self.errs;
        let loc = node.loc();
        let mut tests = Vec::new();
        let equals = node.prop_text("equals", errs);
        let mut equals_used = false;
        if let Some(pattern) = node.prop_string("branch", errs) {
            match Glob::new(&pattern.value) {
                Ok(glob) => tests.push(Test::Branch { matcher: glob.compile_matcher(), pattern: pattern.value }),
                Err(e) => errs.invalid(&pattern.loc, "branch pattern", e.kind().to_string(), None),
            }
        }
        if let Some(name) = node.prop_string("env", errs) {
            equals_used = true;
            tests.push(Test::Env { name: name.value, equals: equals.as_ref().map(|e| e.value.clone()) });
        }
        if let Some(step) = node.prop_string("step", errs) {
            let outcome = match node.prop_string("outcome", errs) {
                None => Outcome::Success,
                Some(o) => match o.value.as_str() {
                    "success" => Outcome::Success,
                    "failure" => Outcome::Failure,
                    "skipped" => Outcome::Skipped,
                    _ => {
                        errs.invalid(&o.loc, "outcome", "expected \"success\", \"failure\" or \"skipped\"", None);
                        Outcome::Success
                    }
                },
            };
            tests.push(Test::Outcome { step, outcome });
        } else if let Some(o) = node.prop("outcome") {
            errs.invalid(&node.entry_loc(o), "outcome", "`outcome` goes with `step=`", None);
        }
        if let Some(output) = node.prop_string("output", errs) {
            match output.value.rsplit_once('.') {
                Some((step, key)) if !step.is_empty() && !key.is_empty() => {
                    if equals_used {
                        errs.invalid(&output.loc, "when", "`equals` cannot apply to both `env` and `output`", None);
                    }
                    equals_used = true;
                    let step = Spanned { value: step.to_string(), loc: output.loc.clone() };
                    let equals = equals.as_ref().map(|e| e.value.clone()).unwrap_or_default();
                    tests.push(Test::Output { step, key: key.to_string(), equals });
                }
                _ => errs.invalid(&output.loc, "output", "write it as \"stage.step.key\"", None),
            }
        }
        if let (Some(e), false) = (&equals, equals_used) {
            errs.invalid(&e.loc, "when", "`equals` goes with `env=` or `output=`", None);
        }
        if tests.is_empty() && node.props().next().is_none() {
            errs.push(LangError::Missing {
                node: "when".into(),
                what: "a condition".into(),
                src: node.src.named(),
                span: node.kdl.span(),
                help: Some(super::error::expected_one_of(&["branch", "env", "step", "output"])),
            });
        }
        tests.into_iter().map(|test| Condition { loc: loc.clone(), test }).collect()
    }
}
