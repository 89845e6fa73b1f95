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
        let ask = |args: &[&str]| -> String {
            Command::new("git")
                .arg("-C")
                .arg(dir)
                .args(args)
                .stderr(std::process::Stdio::null())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        let sha = std::env::var("PIPE_GIT_SHA").unwrap_or_else(|_| ask(&["rev-parse", "HEAD"]));
        let branch = std::env::var("PIPE_GIT_BRANCH").unwrap_or_else(|_| {
            let b = ask(&["rev-parse", "--abbrev-ref", "HEAD"]);
            if b == "HEAD" { String::new() } else { b }
        });
        GitInfo { sha, branch }
    }
}
