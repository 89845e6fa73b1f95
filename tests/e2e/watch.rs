//! `pipe watch`: new commits on an accepted branch become runs, in commit
//! order, recorded with their trigger; a failing commit does not stop it; it
//! remembers what it handled across restarts; SIGTERM stops it cleanly; a
//! remote is fetched and followed the same way.

use std::process::{Command, Stdio};

use crate::support::{Test, wait_until};

const PIPELINE: &str = r#"
pipeline "app" {
    on "push" branch="main"
    stage "build" { step "check" { run "echo building $(cat version.txt); test \"$(cat version.txt)\" != bad" } }
}
"#;

pub(crate) fn git(dir: &std::path::Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("git");
    assert!(ok.success(), "git {args:?}");
}

pub(crate) fn commit(dir: &std::path::Path, version: &str) -> String {
    std::fs::write(dir.join("version.txt"), version).expect("write");
    git(dir, &["commit", "-qam", &format!("version {version}")]);
    let out = Command::new("git").args(["rev-parse", "HEAD"]).current_dir(dir).output().expect("git");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The watcher's worktree of `branch` (`.pipe/watch/branches/<name>-<hash>`).
pub(crate) fn branch_dir(dir: &std::path::Path, branch: &str) -> Option<std::path::PathBuf> {
    let prefix = format!("{}-", branch.replace('/', "_"));
    std::fs::read_dir(dir.join(".pipe/watch/branches")).ok()?.flatten().map(|e| e.path()).find(|p| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        name.strip_prefix(&prefix).is_some_and(|h| h.len() == 12 && h.chars().all(|c| c.is_ascii_hexdigit()))
    })
}

/// Every finished run record the watcher kept for `branch`, oldest first.
pub(crate) fn records(dir: &std::path::Path, branch: &str) -> Vec<serde_json::Value> {
    let Some(work) = branch_dir(dir, branch) else { return Vec::new() };
    let mut ids: Vec<_> =
        std::fs::read_dir(work.join(".pipe/runs")).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    ids.sort();
    ids.iter()
        .filter_map(|p| serde_json::from_slice::<serde_json::Value>(&std::fs::read(p.join("run.json")).ok()?).ok())
        .filter(|r| r["status"] != "running")
        .collect()
}

/// (commit, status) of every run the watcher recorded on main, oldest first.
fn watched(dir: &std::path::Path) -> Vec<(String, String)> {
    records(dir, "main")
        .iter()
        .map(|r| {
            (r["trigger"]["commit"].as_str().unwrap_or("").to_string(), r["status"].as_str().unwrap_or("").to_string())
        })
        .collect()
}

#[test]
fn commits_on_main_become_runs_in_order_and_a_restart_goes_on_where_it_stopped() {
    let test = Test::new().pipeline(PIPELINE).file("version.txt", "1").file(".gitignore", ".pipe/\n").git("main");
    let dir = test.path().to_path_buf();
    let mut watcher = test
        .command()
        .args(["watch", "--interval", "100ms"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pipe watch");
    wait_until("the watcher to note the branch", || dir.join(".pipe/watch/state.json").exists());
    let c2 = commit(&dir, "2");
    let bad = commit(&dir, "bad");
    let c3 = commit(&dir, "3");
    wait_until("three runs", || watched(&dir).len() == 3);
    let runs = watched(&dir);
    assert_eq!(runs, [(c2, "succeeded".into()), (bad, "failed".into()), (c3.clone(), "succeeded".into())]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(watcher.id() as i32), nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let status = watcher.wait().expect("wait");
    assert!(status.success(), "SIGTERM stops it cleanly: {status:?}");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut watcher.stdout.take().expect("stdout"), &mut out).expect("read");
    assert!(out.contains("watching goes on") && out.contains("stopped watching"), "{out}");

    // Restarted, it goes on from the last commit it handled.
    let c4 = commit(&dir, "4");
    let once = test.pipe(&["watch", "--once"], &[]);
    assert_eq!(once.code, 0, "{}{}", once.stdout, once.stderr);
    let runs = watched(&dir);
    assert_eq!(runs.len(), 4, "only the new commit ran: {runs:?}");
    assert_eq!(runs[3], (c4, "succeeded".into()));
}

#[test]
fn a_remote_is_fetched_and_its_new_commits_run() {
    let test = Test::new().pipeline(PIPELINE).file("version.txt", "1").file(".gitignore", ".pipe/\n").git("main");
    let dir = test.path().to_path_buf();
    let remote = tempfile::tempdir().expect("remote");
    let bare = remote.path().join("app.git");
    git(remote.path(), &["clone", "-q", "--bare", &dir.to_string_lossy(), "app.git"]);
    git(&dir, &["remote", "add", "origin", &bare.to_string_lossy()]);
    git(&dir, &["fetch", "-q", "origin"]);
    let first = test.pipe(&["watch", "--remote", "origin", "--once"], &[]);
    assert!(first.stdout.contains("main: following from"), "{}", first.stdout);

    // Someone else pushes.
    let other = remote.path().join("other");
    git(remote.path(), &["clone", "-q", &bare.to_string_lossy(), "other"]);
    let pushed = commit(&other, "2");
    git(&other, &["push", "-q", "origin", "main"]);
    let out = test.pipe(&["watch", "--remote", "origin", "--once"], &[]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(watched(&dir), [(pushed, "succeeded".into())]);
}
