//! Where `pipe watch` keeps each branch: a worktree of its own under
//! `.pipe/watch/branches/<name>-<hash>/`, whose `.pipe/` holds that branch's
//! records, cache, state and deploy journal. A branch's runs write only there;
//! the trusted branch's directory is never written by another branch's run.
//! Branch names come from whoever pushes: the directory name keeps only safe
//! characters, is bounded, and ends with a hash of the whole name, so that
//! `a/b` and `a_b` never share a directory.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::run::git;

/// The longest part of a directory name taken from the branch name.
const NAME_MAX: usize = 48;

/// A directory name for `branch`: `[A-Za-z0-9._-]` kept (others become `_`),
/// no leading dot, at most 48 of them, then `-` and 12 hex digits of its SHA-256.
pub fn dir_name(branch: &str) -> String {
    let safe: String = branch
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
        .take(NAME_MAX)
        .collect();
    let safe = safe.trim_start_matches('.');
    let hash = Sha256::digest(branch.as_bytes());
    let hex: String = hash.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("{safe}-{hex}")
}

/// The worktree of `branch` under the watcher's directory.
pub fn worktree(watch_dir: &Path, branch: &str) -> PathBuf {
    watch_dir.join("branches").join(dir_name(branch))
}

/// The branch whose runs are trusted: `--trusted`, else the remote's HEAD,
/// else `main` or `master` (of the remote when following one).
pub fn trusted_branch(top: &Path, remote: Option<&str>, given: Option<&str>) -> Option<String> {
    if let Some(b) = given {
        return Some(b.to_string());
    }
    let prefix = remote.map_or("refs/heads/".to_string(), |r| format!("refs/remotes/{r}/"));
    if let Some(r) = remote
        && let Some(head) = git::output(top, &["symbolic-ref", "--quiet", &format!("refs/remotes/{r}/HEAD")])
        && let Some(b) = head.strip_prefix(&prefix)
    {
        return Some(b.to_string());
    }
    ["main", "master"].into_iter().find(|b| git::resolve(top, &format!("{prefix}{b}")).is_some()).map(String::from)
}

/// Checks `commit` out in `work`, creating the worktree the first time. A
/// commit that tracks `.pipe` is refused: checked out, it could put a symlink
/// where the branch's state goes and have its runs write into another's.
/// git configuration for the watcher's checkouts: hooks from nowhere.
const NO_HOOKS: &str = "core.hooksPath=/dev/null";

pub fn checkout(top: &Path, work: &Path, commit: &str) -> Result<(), String> {
    let tracked = git::output(top, &["ls-tree", "--name-only", commit, "--", ".pipe"]).unwrap_or_default();
    if !tracked.is_empty() {
        return Err("it tracks `.pipe`, where pipe keeps the branch's state; it is not run".into());
    }
    if !work.join(".git").exists() {
        let _ = std::fs::remove_dir_all(work);
        if let Some(parent) = work.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        // No hook runs on the watcher's checkouts: a branch's own files (or a
        // `core.hooksPath` pointing into them) must not run code here.
        let add =
            ["-c", NO_HOOKS, "worktree", "add", "--quiet", "--detach", "--force", &work.to_string_lossy(), commit];
        if !git::run(top, &add) {
            return Err("git worktree add failed".into());
        }
    } else {
        let ok = git::run(work, &["-c", NO_HOOKS, "checkout", "--quiet", "--detach", "--force", commit])
            && git::run(work, &["clean", "-q", "-fdx", "-e", ".pipe"]);
        if !ok {
            return Err("git checkout failed".into());
        }
    }
    // Whatever git did, the state directory is a directory of this worktree.
    match std::fs::symlink_metadata(work.join(".pipe")) {
        Ok(m) if !m.is_dir() => Err("its `.pipe` is not a directory; it is not run".into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::dir_name;

    #[test]
    fn branch_names_become_safe_distinct_bounded_directory_names() {
        let names = ["main", "feature/x", "feature_x", "../../etc", ".hidden", "a\u{1b}[31mb", &"x".repeat(300)];
        let dirs: Vec<String> = names.iter().map(|n| dir_name(n)).collect();
        for d in &dirs {
            assert!(!d.contains('/') && !d.starts_with('.') && d.len() <= 48 + 13, "{d}");
            assert!(d.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{d}");
        }
        assert!(dirs[0].starts_with("main-"));
        assert_ne!(dirs[1], dirs[2], "feature/x and feature_x differ");
        let unique: std::collections::HashSet<_> = dirs.iter().collect();
        assert_eq!(unique.len(), dirs.len());
    }
}
