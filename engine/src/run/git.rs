//! `${git.sha}` and `${git.branch}`, asked of git once per run.
//! `PIPE_GIT_SHA` / `PIPE_GIT_BRANCH` override them (CI checkouts are often
//! detached) for `pipe run`; never for runs `pipe watch` starts, whose facts
//! come from the trigger (see `run::trust`), nor from a pipeline's own `env`.

use std::path::Path;
use std::process::Command;

#[derive(Clone, Debug, Default)]
pub struct GitInfo {
    pub sha: String,
    pub branch: String,
}

impl GitInfo {
    pub fn detect(dir: &Path) -> GitInfo {
        // One git process for both facts: its start-up is the cost here.
        let asked = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["rev-parse", "HEAD", "--abbrev-ref", "HEAD"])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let mut lines = asked.lines().map(str::trim);
        let (sha, branch) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
        GitInfo {
            sha: std::env::var("PIPE_GIT_SHA").unwrap_or_else(|_| sha.to_string()),
            // A detached HEAD has no branch.
            branch: std::env::var("PIPE_GIT_BRANCH")
                .unwrap_or_else(|_| if branch == "HEAD" { String::new() } else { branch.to_string() }),
        }
    }
}

/// git, in `dir`: whether it succeeded (its output goes where pipe's goes).
pub fn run(dir: &Path, args: &[&str]) -> bool {
    Command::new("git").arg("-C").arg(dir).args(args).status().is_ok_and(|s| s.success())
}

/// git, in `dir`: its trimmed output when it succeeds.
pub fn output(dir: &Path, args: &[&str]) -> Option<String> {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// The full sha `rev` names, if it names a commit.
pub fn resolve(dir: &Path, rev: &str) -> Option<String> {
    output(dir, &["rev-parse", "--verify", "--quiet", &format!("{rev}^{{commit}}")])
}

pub fn merge_base(dir: &Path, a: &str, b: &str) -> Option<String> {
    output(dir, &["merge-base", a, b])
}

/// The repository's top directory.
pub fn toplevel(dir: &Path) -> Option<std::path::PathBuf> {
    output(dir, &["rev-parse", "--show-toplevel"]).map(std::path::PathBuf::from)
}

/// The main branch: `main`, or `master`, when it exists.
pub fn main_branch(dir: &Path) -> Option<&'static str> {
    ["main", "master"].into_iter().find(|b| resolve(dir, &format!("refs/heads/{b}")).is_some())
}

/// Files that differ from `base`: committed since, changed in the working
/// tree, or new and not ignored. Absolute paths.
pub fn changed_since(dir: &Path, base: &str) -> Result<Vec<std::path::PathBuf>, String> {
    let top = toplevel(dir).ok_or("not in a git repository")?;
    let diff = output(&top, &["diff", "--name-only", "--no-renames", base])
        .ok_or_else(|| format!("git diff against {base} failed"))?;
    let untracked = output(&top, &["ls-files", "--others", "--exclude-standard"]).unwrap_or_default();
    Ok(diff.lines().chain(untracked.lines()).filter(|l| !l.is_empty()).map(|l| top.join(l)).collect())
}

/// Whether `a` is an ancestor of `b` (false too when either is gone).
pub fn is_ancestor(dir: &Path, a: &str, b: &str) -> bool {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["merge-base", "--is-ancestor", a, b])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Commits on `to` after `from`, oldest first (`from` none: only `to`).
pub fn commits_between(dir: &Path, from: Option<&str>, to: &str) -> Vec<String> {
    let range = match from {
        Some(f) => format!("{f}..{to}"),
        None => return vec![to.to_string()],
    };
    output(dir, &["rev-list", "--reverse", &range]).map(|s| s.lines().map(String::from).collect()).unwrap_or_default()
}
