//! Which stages a change affects. A stage is affected when a changed file
//! matches its `changes` (or the pipeline's, by default everything under the
//! pipeline file's directory), or when it needs an affected stage; a stage
//! that an affected one needs runs too (its outputs are needed). The rest
//! are left out, each with the reason.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::Plan;

/// What a change means for one pipeline.
#[derive(Debug, PartialEq, Eq)]
pub enum Affected {
    /// Nothing matched: the reason, for people.
    Not(String),
    /// These stage instances are left out, each with its reason (maybe none).
    Stages(BTreeMap<String, String>),
}

impl Plan {
    /// `files` are absolute paths of what changed since `since` (a short
    /// commit, for messages); `root` is where paths are shown from.
    pub fn affected(&self, files: &[PathBuf], since: &str, root: &Path) -> Affected {
        let matches = |globs: &[String]| -> bool {
            let filter = PathFilter::new(&self.dir, globs);
            files.iter().any(|f| filter.is_match(f))
        };
        let globs = |i: usize| self.stages[i].changes.as_deref().unwrap_or(&self.changes);
        let mut affected: Vec<bool> = (0..self.stages.len()).map(|i| matches(globs(i))).collect();
        let index = |name: &str| self.stages.iter().position(|s| s.name == name);
        // Downstream of an affected stage is affected: its inputs changed.
        loop {
            let mut changed = false;
            for (j, stage) in self.stages.iter().enumerate() {
                if !affected[j] && stage.needs.iter().filter_map(|n| index(n)).any(|i| affected[i]) {
                    affected[j] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        if !affected.iter().any(|a| *a) {
            return Affected::Not(self.reason(&self.changes, since, root));
        }
        // Upstream of an affected stage runs: what it needs must exist.
        let mut keep: HashSet<usize> = (0..self.stages.len()).filter(|&i| affected[i]).collect();
        let mut todo: Vec<usize> = keep.iter().copied().collect();
        while let Some(j) = todo.pop() {
            for i in self.stages[j].needs.iter().filter_map(|n| index(n)) {
                if keep.insert(i) {
                    todo.push(i);
                }
            }
        }
        Affected::Stages(
            (0..self.stages.len())
                .filter(|i| !keep.contains(i))
                .map(|i| (self.stages[i].name.clone(), self.reason(globs(i), since, root)))
                .collect(),
        )
    }

    /// `no change under services/orders/ since 3f2a1c` or `no change in src/**, Cargo.toml since 3f2a1c`.
    fn reason(&self, globs: &[String], since: &str, root: &Path) -> String {
        if globs == ["**"] {
            let dir = self.dir.strip_prefix(root).unwrap_or(&self.dir).display().to_string();
            let dir = if dir.is_empty() { "the repository".to_string() } else { format!("{dir}/") };
            return format!("no change under {dir} since {since}");
        }
        format!("no change in {} since {since}", globs.join(", "))
    }
}

/// Globs relative to a directory, a `!` in front excluding what it matches:
/// a path passes when some glob without `!` matches it (everything under the
/// directory when all are exclusions) and no `!` glob does. `changes "**"
/// "!docs/**"`: any change but the docs.
pub struct PathFilter {
    include: globset::GlobSet,
    exclude: globset::GlobSet,
}

impl PathFilter {
    pub fn new(dir: &Path, globs: &[String]) -> PathFilter {
        let (excluded, included): (Vec<&String>, Vec<&String>) = globs.iter().partition(|g| g.starts_with('!'));
        let set = |globs: Vec<&str>| {
            let mut set = globset::GlobSetBuilder::new();
            for g in globs {
                // `pipe check` refused a glob that does not build.
                if let Ok(glob) = globset::GlobBuilder::new(&absolute_glob(dir, g)).literal_separator(true).build() {
                    set.add(glob);
                }
            }
            set.build().unwrap_or_else(|_| globset::GlobSet::empty())
        };
        let included: Vec<&str> = if included.is_empty() && !excluded.is_empty() {
            vec!["**"]
        } else {
            included.iter().map(|g| g.as_str()).collect()
        };
        PathFilter { include: set(included), exclude: set(excluded.iter().map(|g| &g[1..]).collect()) }
    }

    pub fn is_match(&self, path: &Path) -> bool {
        self.include.is_match(path) && !self.exclude.is_match(path)
    }
}

/// A glob written relative to `dir` (`../shared/**` too), made absolute.
pub fn absolute_glob(dir: &Path, glob: &str) -> String {
    normalize(&dir.join(glob)).to_string_lossy().into_owned()
}

pub use crate::lang::include_path::normalize;

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dir: &str, text: &str) -> Plan {
        let src = crate::lang::Source::new(format!("{dir}/pipe.kdl"), format!("{dir}/pipe.kdl"), text);
        let pipelines = crate::lang::parse(&src).unwrap_or_else(|e| panic!("{e:?}"));
        super::super::plan(&pipelines[0]).unwrap_or_else(|e| panic!("{e:?}"))
    }

    const SVC: &str = r#"
pipeline "orders" {
    changes "src/**" "../../shared/**"
    stage "build" { step "b" { run "true" } }
    stage "docs" { changes "docs/**"; step "d" { run "true" } }
    stage "test" { needs "build"; step "t" { run "true" } }
    stage "site" { needs "docs"; changes "site/**"; step "s" { run "true" } }
}
"#;

    #[test]
    fn a_change_runs_what_it_touches_what_needs_that_and_what_that_needs() {
        let p = plan("/repo/services/orders", SVC);
        let root = Path::new("/repo");
        let f = |s: &str| vec![PathBuf::from(s)];
        assert_eq!(
            p.affected(&f("/repo/services/billing/src/x.rs"), "abc123", root),
            Affected::Not("no change in src/**, ../../shared/** since abc123".into())
        );
        let Affected::Stages(out) = p.affected(&f("/repo/shared/lib.rs"), "abc123", root) else { panic!() };
        assert_eq!(out.keys().collect::<Vec<_>>(), ["docs", "site"], "shared code affects build and test");
        assert_eq!(out["site"], "no change in site/** since abc123");
        let Affected::Stages(out) = p.affected(&f("/repo/services/orders/docs/a.md"), "abc123", root) else { panic!() };
        assert_eq!(out.keys().collect::<Vec<_>>(), ["build", "test"], "docs, and site which needs it");
        let Affected::Stages(out) = p.affected(&f("/repo/services/orders/site/index.html"), "abc123", root) else {
            panic!()
        };
        assert_eq!(out.keys().collect::<Vec<_>>(), ["build", "test"], "site, and docs which it needs");
        // `!` excludes: a docs-only change once ran this pipeline, the exclusion ignored.
        let r =
            plan("/repo/api", r#"pipeline "api" { changes "**" "!docs/**"; stage "b" { step "x" { run "true" } } }"#);
        assert!(matches!(r.affected(&f("/repo/api/docs/guide.md"), "abc123", root), Affected::Not(_)));
        assert!(matches!(r.affected(&f("/repo/api/src/main.rs"), "abc123", root), Affected::Stages(_)));
        let only = plan("/repo/api", r#"pipeline "api" { changes "!*.md"; stage "b" { step "x" { run "true" } } }"#);
        assert!(matches!(only.affected(&f("/repo/api/README.md"), "abc123", root), Affected::Not(_)));
        assert!(matches!(only.affected(&f("/repo/api/src/lib.rs"), "abc123", root), Affected::Stages(_)));
        let q = plan("/repo/services/billing", "pipeline \"billing\" { stage \"b\" { step \"x\" { run \"true\" } } }");
        assert_eq!(
            q.affected(&f("/repo/services/orders/x"), "abc123", root),
            Affected::Not("no change under services/billing/ since abc123".into())
        );
    }
}
