//! `.dockerignore` as Docker reads it, which is not gitignore: patterns are
//! cleaned and anchored at the context root (`/foo`, `./foo` and `foo/` all
//! mean `foo`), `*` and `?` stop at `/`, `**` crosses directories, a pattern
//! that matches a directory excludes everything in it, the last matching line
//! decides, and `!` re-includes. The Dockerfile and `.dockerignore` itself are
//! always sent, as the Docker CLI does. Globs are matched by `globset`.

use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

pub struct DockerIgnore {
    rules: Vec<(GlobMatcher, bool)>,
    keep: Vec<String>,
    /// Paths left out with all they hold, whatever the rules say.
    never: Vec<PathBuf>,
}

impl DockerIgnore {
    /// Parses the file's text; `dockerfile` is the Dockerfile's path in the context.
    pub fn parse(text: &str, dockerfile: &str) -> Result<DockerIgnore, String> {
        let mut rules = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let raw = if n == 0 { raw.trim_start_matches('\u{feff}') } else { raw };
            if raw.starts_with('#') {
                continue;
            }
            let mut pattern = raw.trim();
            let include = pattern.starts_with('!');
            if include {
                pattern = pattern[1..].trim();
            }
            if pattern.is_empty() {
                continue;
            }
            let cleaned = clean(pattern);
            let glob = GlobBuilder::new(&cleaned)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!(".dockerignore line {}: {e}", n + 1))?;
            rules.push((glob.compile_matcher(), include));
        }
        let keep = vec![clean(dockerfile), ".dockerignore".to_string()];
        Ok(DockerIgnore { rules, keep, never: Vec::new() })
    }

    /// Whether `rel` (a path relative to the context root) is left out.
    pub fn excludes(&self, rel: &Path) -> bool {
        if self.never.iter().any(|p| rel.starts_with(p)) {
            return true;
        }
        let rel = rel.to_string_lossy().replace('\\', "/");
        if self.keep.contains(&rel) {
            return false;
        }
        let mut excluded = false;
        for (glob, include) in &self.rules {
            // A pattern matches the path itself or any directory above it.
            let mut prefix = String::new();
            let mut matched = false;
            for part in rel.split('/') {
                if !prefix.is_empty() {
                    prefix.push('/');
                }
                prefix.push_str(part);
                if glob.is_match(&prefix) {
                    matched = true;
                    break;
                }
            }
            if matched {
                excluded = !include;
            }
        }
        excluded
    }

    /// Whether a `!` line could re-include something below an excluded directory.
    pub fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|(_, include)| *include)
    }

    /// The rules in `file`, none when there is no such file.
    pub fn read(file: &Path, dockerfile: &str) -> Result<DockerIgnore, String> {
        match std::fs::read_to_string(file) {
            Ok(text) => DockerIgnore::parse(&text, dockerfile),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerIgnore::parse("", dockerfile),
            Err(e) => Err(format!("cannot read {}: {e}", file.display())),
        }
    }

    /// Excludes `pattern` too, whatever the file says (it acts as its last line).
    pub fn exclude(mut self, pattern: &str) -> Result<DockerIgnore, String> {
        self.rules.extend(DockerIgnore::parse(pattern, "")?.rules);
        Ok(self)
    }

    /// Leaves out `rel` (a path relative to the context root, taken as it is,
    /// not as a pattern) and everything below it, whatever the rules say.
    pub fn exclude_path(mut self, rel: &Path) -> DockerIgnore {
        self.never.push(rel.to_path_buf());
        self
    }

    /// Adds to `archive` what of `dir` the rules let through, each under
    /// `prefix`; symlinks as symlinks. Walked off any async thread by callers.
    pub fn tar(self, dir: &Path, prefix: &Path, archive: &mut tar::Builder<Vec<u8>>) -> Result<(), String> {
        let rules = std::sync::Arc::new(self);
        let (root, pruning) = (dir.to_path_buf(), rules.clone());
        // Without `!` lines nothing below an excluded directory can come back: skip it whole.
        let prune = !rules.has_exceptions();
        let walk = ignore::WalkBuilder::new(dir)
            .standard_filters(false)
            .filter_entry(move |e| {
                let rel = e.path().strip_prefix(&root).unwrap_or(e.path());
                !(prune && !rel.as_os_str().is_empty() && pruning.excludes(rel))
            })
            .build();
        archive.follow_symlinks(false);
        for entry in walk.filter_map(Result::ok) {
            let path = entry.path();
            let Ok(rel) = path.strip_prefix(dir) else { continue };
            if rel.as_os_str().is_empty() || rules.excludes(rel) {
                continue;
            }
            archive
                .append_path_with_name(path, prefix.join(rel))
                .map_err(|e| format!("cannot add {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

/// Go's `filepath.Clean` of a relative pattern, with a leading `/` dropped.
fn clean(pattern: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in PathBuf::from(pattern).components() {
        match c {
            Component::ParentDir => {
                if parts.pop().is_none() {
                    parts.push("..".into());
                }
            }
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if parts.is_empty() { ".".into() } else { parts.join("/") }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::DockerIgnore;

    fn excluded(rules: &str, path: &str) -> bool {
        DockerIgnore::parse(rules, "Dockerfile").expect("valid").excludes(Path::new(path))
    }

    #[test]
    fn docker_semantics_not_gitignore() {
        // Anchored at the root: `secret.txt` does not exclude `app/secret.txt` (gitignore would).
        assert!(excluded("secret.txt", "secret.txt"));
        assert!(!excluded("secret.txt", "app/secret.txt"));
        assert!(excluded("**/secret.txt", "app/secret.txt"));
        // `/x`, `./x` and `x/` all mean `x`; a directory excludes its contents.
        for p in ["/target", "./target", "target/"] {
            assert!(excluded(p, "target/debug/app"), "{p}");
        }
        // `*` stops at `/`.
        assert!(excluded("*.log", "a.log"));
        assert!(!excluded("*.log", "logs/a.log"));
        // The last matching line decides; `!` re-includes.
        assert!(!excluded("docs\n!docs/keep.md", "docs/keep.md"));
        assert!(excluded("docs\n!docs/keep.md", "docs/other.md"));
        assert!(excluded("# comment\n  spaced.txt  ", "spaced.txt"));
        // The Dockerfile and .dockerignore are always sent.
        assert!(!excluded("*", "Dockerfile"));
        assert!(!excluded("*", ".dockerignore"));
        assert!(excluded("*", "main.c"));
    }
}
