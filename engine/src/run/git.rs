//! `${git.sha}` and `${git.branch}`, asked of git once per run.
//! `PIPE_GIT_SHA` / `PIPE_GIT_BRANCH` override them (CI checkouts are often detached).

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
