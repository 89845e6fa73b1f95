//! `pipe watch` against a hostile branch: its runs are told their branch (no
//! commit, pipeline env or `PIPE_GIT_BRANCH` makes a `feature` run a `main`
//! one), write only their own cache, state and records (main's are never
//! touched; main's cache may be read), get no secret the trusted branch's
//! pipelines restrict to other branches, and cannot forge the watcher's output
//! with escape sequences in a commit subject. A force-pushed branch is followed
//! from its new tip; run records are kept within a bound.

use std::path::Path;

use crate::support::Test;
use crate::watch::{branch_dir, git, records};

fn write_commit(dir: &Path, files: &[(&str, &str)], message: &str) -> String {
    for (path, text) in files {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, text).expect("write");
    }
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", message]);
    let out = std::process::Command::new("git").args(["rev-parse", "HEAD"]).current_dir(dir).output().expect("git");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[track_caller]
fn watch_once(test: &Test, env: &[(&str, &str)]) -> crate::support::Output {
    let out = test.pipe(&["watch", "--once"], env);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    out
}

fn step_status(record: &serde_json::Value, id: &str) -> String {
    record["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == id)
        .map_or("?".into(), |s| s["status"].as_str().unwrap_or("?").to_string())
}

const GATED: &str = r#"
pipeline "app" {
    on "push" branch="*"
    stage "build" { step "compile" { run "cat version.txt" } }
    stage "deploy" {
        needs "build"
        when branch="main"
        step "ship" { run "echo shipping ${git.branch}" }
    }
}
"#;

#[test]
fn a_feature_commit_cannot_claim_main_and_main_commits_run_their_main_only_stage() {
    let test = Test::new().pipeline(GATED).file("version.txt", "1").file(".gitignore", ".pipe/\n").git("main");
    let dir = test.path().to_path_buf();
    git(&dir, &["branch", "feature"]);
    // The documented override, set for the watcher by an operator, is not
    // what decides a watched run's branch.
    let claim = [("PIPE_GIT_BRANCH", "main"), ("PIPE_GIT_SHA", "0000000")];
    watch_once(&test, &claim);

    git(&dir, &["checkout", "-q", "feature"]);
    // Every way a commit has to say "main": the pipeline's env, a dotenv file, a ref-like file.
    let hostile = GATED
        .replace("pipeline \"app\" {", "pipeline \"app\" {\n    env { PIPE_GIT_BRANCH \"main\"; GIT_BRANCH \"main\" }");
    let feature =
        write_commit(&dir, &[("pipe.kdl", &hostile), (".env", "PIPE_GIT_BRANCH=main\n"), ("version.txt", "2")], "f");
    git(&dir, &["checkout", "-q", "main"]);
    let main = write_commit(&dir, &[("version.txt", "3")], "m");
    let out = watch_once(&test, &claim);

    let feature_runs = records(&dir, "feature");
    assert_eq!(feature_runs.len(), 1, "{}{}", out.stdout, out.stderr);
    let run = &feature_runs[0];
    assert_eq!((run["git_branch"].as_str(), run["git_sha"].as_str()), (Some("feature"), Some(feature.as_str())));
    assert_eq!(step_status(run, "deploy.ship"), "skipped", "{run:#}");
    assert_eq!(step_status(run, "build.compile"), "succeeded");

    let main_runs = records(&dir, "main");
    assert_eq!(main_runs.len(), 1, "{}{}", out.stdout, out.stderr);
    assert_eq!(main_runs[0]["git_branch"], "main");
    assert_eq!(main_runs[0]["git_sha"], main.as_str());
    assert_eq!(step_status(&main_runs[0], "deploy.ship"), "succeeded", "{:#}", main_runs[0]);
}

/// `build` is cached on `src/**`, but runs `build.sh`, which a branch can
/// change without changing the key: the poisoning a shared cache allowed.
const CACHED: &str = r#"
pipeline "app" {
    on "push" branch="*"
    stage "build" {
        step "compile" {
            run "sh build.sh"
            cache { inputs "src/**"; outputs "out.txt" }
        }
    }
    stage "ship" { needs "build"; step "ship" { run "echo shipped=$(cat out.txt) >> $PIPE_OUTPUT" } }
}
"#;

fn shipped(record: &serde_json::Value) -> String {
    let steps = record["steps"].as_array().expect("steps");
    let ship = steps.iter().find(|s| s["id"] == "ship.ship").expect("ship.ship");
    ship["outputs"]["shipped"].as_str().unwrap_or("").to_string()
}

fn cache_hit(record: &serde_json::Value) -> bool {
    let steps = record["steps"].as_array().expect("steps");
    let compile = steps.iter().find(|s| s["id"] == "build.compile").expect("build.compile");
    compile["details"]["cache"]["hit"] == true
}

/// Every file under `dir` with its bytes and modification time.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                let modified = meta.modified().expect("mtime");
                out.push((e.path().display().to_string(), std::fs::read(e.path()).expect("read"), modified));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_feature_run_never_writes_main_cache_and_may_read_it() {
    let test = Test::new()
        .pipeline(CACHED)
        .file("src/app.txt", "app")
        .file("build.sh", "echo main-build > out.txt\n")
        .file(".gitignore", ".pipe/\nout.txt\n")
        .git("main");
    let dir = test.path().to_path_buf();
    git(&dir, &["branch", "feature"]);
    watch_once(&test, &[]);

    // The attacker's commit: same key, poisoned output.
    git(&dir, &["checkout", "-q", "feature"]);
    write_commit(&dir, &[("build.sh", "echo evil > out.txt\n")], "faster build");
    git(&dir, &["checkout", "-q", "main"]);
    watch_once(&test, &[]);
    let feature = records(&dir, "feature");
    assert_eq!(feature.iter().map(shipped).collect::<Vec<_>>(), ["evil"], "the feature run ran its own build");

    // Main's next run does not get what the feature run stored.
    write_commit(&dir, &[("README", "docs")], "docs");
    watch_once(&test, &[]);
    let main = records(&dir, "main");
    assert_eq!(main.len(), 1);
    assert_eq!(shipped(&main[0]), "main-build", "{:#}", main[0]);
    assert!(!cache_hit(&main[0]));

    // A new branch reads main's cache, and main's cache is left as it was.
    let main_cache = branch_dir(&dir, "main").expect("main's worktree").join(".pipe/cache");
    let before = snapshot(&main_cache);
    assert!(!before.is_empty(), "main stored its build");
    git(&dir, &["branch", "docs"]);
    watch_once(&test, &[]);
    git(&dir, &["checkout", "-q", "docs"]);
    write_commit(&dir, &[("README", "more docs")], "more docs");
    git(&dir, &["checkout", "-q", "main"]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    watch_once(&test, &[]);
    let docs = records(&dir, "docs");
    assert_eq!(docs.len(), 1);
    assert!(cache_hit(&docs[0]), "main's entry was read: {:#}", docs[0]);
    assert_eq!(shipped(&docs[0]), "main-build");
    assert_eq!(snapshot(&main_cache), before, "nothing of main's cache changed, not even a time");
}

#[test]
fn a_commit_that_tracks_pipe_state_is_not_run() {
    let test = Test::new().pipeline(GATED).file("version.txt", "1").file(".gitignore", ".pipe/\n").git("main");
    let dir = test.path().to_path_buf();
    git(&dir, &["branch", "feature"]);
    watch_once(&test, &[]);
    write_commit(&dir, &[("version.txt", "2")], "m");
    watch_once(&test, &[]);
    let main_state = branch_dir(&dir, "main").expect("main's worktree").join(".pipe");
    let name = main_state.parent().and_then(|p| p.file_name()).expect("name").to_string_lossy().into_owned();
    // Checked out, this `.pipe` would send the feature run's records into
    // main's. Built with plumbing: the checkout here keeps its real `.pipe/`.
    let script = format!(
        "blob=$(printf %s '../{name}/.pipe' | git hash-object -w --stdin) && \
         tree=$( (git ls-tree feature; printf '120000 blob %s\\t.pipe\\n' $blob) | git mktree) && \
         commit=$(git -c user.name=t -c user.email=t@t commit-tree $tree -p feature -m 'link the state') && \
         git update-ref refs/heads/feature $commit"
    );
    let made = std::process::Command::new("sh").arg("-c").arg(&script).current_dir(&dir).status().expect("sh");
    assert!(made.success());
    let runs_before = records(&dir, "main").len();
    let out = watch_once(&test, &[]);
    assert!(out.stderr.contains("tracks `.pipe`"), "{}{}", out.stdout, out.stderr);
    assert_eq!(records(&dir, "main").len(), runs_before, "no record landed in main's state");
    assert!(std::fs::symlink_metadata(&main_state).expect("main state").is_dir());
}

/// (commit) of every run the watcher recorded on main, oldest first.
fn main_commits(dir: &Path) -> Vec<String> {
    records(dir, "main").iter().map(|r| r["trigger"]["commit"].as_str().unwrap_or("").to_string()).collect()
}

#[test]
fn a_force_pushed_branch_is_followed_from_its_new_tip_even_when_its_old_tip_is_gone() {
    let test = Test::new().pipeline(GATED).file("version.txt", "1").file(".gitignore", ".pipe/\n").git("main");
    let dir = test.path().to_path_buf();
    watch_once(&test, &[]);
    let old = write_commit(&dir, &[("version.txt", "2")], "to be rewritten");
    watch_once(&test, &[]);
    git(&dir, &["reset", "-q", "--hard", "HEAD~1"]);
    let new = write_commit(&dir, &[("version.txt", "3")], "rewritten");
    git(&dir, &["reflog", "expire", "--expire=now", "--all"]);
    git(&dir, &["gc", "-q", "--prune=now"]);
    let out = watch_once(&test, &[]);
    // The watcher's worktree still holds the old tip: it is off the branch, not gone.
    let line = format!("main was force-pushed: {} is no longer on it; following the new tip {}", &old[..7], &new[..7]);
    assert!(out.stdout.contains(&line), "{}{}", out.stdout, out.stderr);
    assert_eq!(main_commits(&dir), [old.clone(), new.clone()]);

    // Rewritten again, with nothing left that holds the old tip (the
    // watcher's worktree removed by hand): git prunes it.
    let work = branch_dir(&dir, "main").expect("main's worktree");
    let kept = tempfile::tempdir().expect("keep");
    std::fs::rename(work.join(".pipe"), kept.path().join(".pipe")).expect("keep the records");
    git(&dir, &["worktree", "remove", "--force", &work.display().to_string()]);
    git(&dir, &["reset", "-q", "--hard", "HEAD~1"]);
    let newer = write_commit(&dir, &[("version.txt", "4")], "rewritten again");
    git(&dir, &["reflog", "expire", "--expire=now", "--all"]);
    git(&dir, &["gc", "-q", "--prune=now"]);
    let out = watch_once(&test, &[]);
    let line = format!("main was force-pushed: {} is gone; following the new tip {}", &new[..7], &newer[..7]);
    assert!(out.stdout.contains(&line), "{}{}", out.stdout, out.stderr);
    assert_eq!(main_commits(&dir), [newer], "the new tip ran (the records before went with the worktree)");

    // And it goes on from there.
    let next = write_commit(&dir, &[("version.txt", "5")], "after");
    watch_once(&test, &[]);
    assert_eq!(main_commits(&dir).last(), Some(&next));
}

#[test]
fn the_watcher_keeps_a_bounded_number_of_run_records() {
    let test = Test::new().pipeline(GATED).file("version.txt", "1").file(".gitignore", ".pipe/\n").git("main");
    let dir = test.path().to_path_buf();
    watch_once(&test, &[]);
    let commits: Vec<String> = (2..=7).map(|v| write_commit(&dir, &[("version.txt", &v.to_string())], "v")).collect();
    watch_once(&test, &[("PIPE_KEEP_RUNS", "3")]);
    let kept: Vec<String> =
        records(&dir, "main").iter().map(|r| r["trigger"]["commit"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(kept, commits[3..], "the newest three");
    let runs = branch_dir(&dir, "main").expect("worktree").join(".pipe/runs");
    assert_eq!(std::fs::read_dir(runs).expect("runs").count(), 3, "logs and reports went with their records");
}

#[test]
fn escape_sequences_in_a_commit_subject_reach_no_terminal() {
    let test = Test::new().pipeline(GATED).file("version.txt", "1").file(".gitignore", ".pipe/\n").git("main");
    let dir = test.path().to_path_buf();
    git(&dir, &["branch", "feature"]);
    watch_once(&test, &[]);
    write_commit(&dir, &[("version.txt", "2")], "\u{1b}[32m✓\u{1b}[0m deploy.ship passed\r\u{1b}]0;owned\u{7}");
    // The first commit of a branch is where its worktree is made (git says "HEAD is now at <subject>").
    git(&dir, &["checkout", "-q", "feature"]);
    write_commit(&dir, &[("version.txt", "f")], "\u{1b}[32m✓\u{1b}[0m feature checks passed");
    git(&dir, &["checkout", "-q", "main"]);
    for env in [vec![("NO_COLOR", "1")], vec![("NO_COLOR", "")]] {
        git(&dir, &["commit", "-q", "--allow-empty", "-m", "\u{1b}[2J\u{1b}[32m✓ all good\u{1b}[0m\r"]);
        let out = watch_once(&test, &env);
        assert!(!out.stdout.contains('\u{1b}') && !out.stderr.contains('\u{1b}'), "{:?}", out.stdout);
        assert!(!out.stdout.contains('\r') && !out.stdout.contains('\u{7}'), "{:?}", out.stdout);
        assert!(out.stdout.contains("✓ all good"), "the text itself stays: {}", out.stdout);
    }
}

const RESTRICTED: &str = r#"
pipeline "app" {
    on "push" branch="*"
    secrets { from-env "DEPLOY_TOKEN" branch="main" }
    stage "s" {
        step "env" { run "printf %s \"$DEPLOY_TOKEN\" > \"$LEAK_DIR/env-${git.branch}\"" }
        step "secret" {
            run "printf %s '${secrets.DEPLOY_TOKEN}' > \"$LEAK_DIR/secret-${git.branch}\""
            continue-on-error #true
        }
    }
}
"#;

#[test]
fn a_secret_restricted_to_main_reaches_no_feature_run_even_one_that_lifts_the_restriction() {
    let test = Test::new().pipeline(RESTRICTED).file(".gitignore", ".pipe/\n").git("main");
    let dir = test.path().to_path_buf();
    let leaks = tempfile::tempdir().expect("leaks");
    let leak_dir = leaks.path().display().to_string();
    let env = [("DEPLOY_TOKEN", "tok-3f9a-very-secret"), ("LEAK_DIR", leak_dir.as_str())];
    git(&dir, &["branch", "feature"]);
    watch_once(&test, &env);
    git(&dir, &["checkout", "-q", "feature"]);
    let lifted = RESTRICTED.replace(" branch=\"main\"", "").replace("stage \"s\" {", "stage \"s\" {\n        step \"via-env\" { run \"printf %s '${env.DEPLOY_TOKEN}' > \\\"$LEAK_DIR/via-env\\\"\"; continue-on-error #true }");
    write_commit(&dir, &[("pipe.kdl", &lifted)], "no restriction");
    git(&dir, &["checkout", "-q", "main"]);
    write_commit(&dir, &[("README", "x")], "main");
    let out = watch_once(&test, &env);

    let read = |name: &str| std::fs::read_to_string(leaks.path().join(name)).unwrap_or_default();
    assert_eq!(read("env-main"), "tok-3f9a-very-secret", "{}{}", out.stdout, out.stderr);
    assert_eq!(read("secret-main"), "tok-3f9a-very-secret");
    assert_eq!(read("env-feature"), "", "the process environment of a feature run holds no DEPLOY_TOKEN");
    assert!(!leaks.path().join("secret-feature").exists() && !leaks.path().join("via-env").exists());
    let feature = records(&dir, "feature");
    assert_eq!(feature.len(), 1);
    let reason = |id: &str| {
        feature[0]["steps"].as_array().expect("steps").iter().find(|s| s["id"] == id).expect("step")["reason"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    assert!(reason("s.secret").contains("secret `DEPLOY_TOKEN` is restricted to branches main"), "{:#}", feature[0]);
    assert!(reason("s.via-env").contains("restricted to branches main"), "{:#}", feature[0]);
}

#[test]
fn a_deleted_branch_leaves_no_worktree_nor_records_behind() {
    let test = Test::new().pipeline(GATED).file("version.txt", "1").file(".gitignore", ".pipe/\n").git("main");
    let dir = test.path().to_path_buf();
    git(&dir, &["branch", "feature/short-lived"]);
    watch_once(&test, &[]);
    git(&dir, &["checkout", "-q", "feature/short-lived"]);
    write_commit(&dir, &[("version.txt", "2")], "f");
    git(&dir, &["checkout", "-q", "main"]);
    watch_once(&test, &[]);
    let work = branch_dir(&dir, "feature/short-lived").expect("the branch's worktree");
    assert_eq!(records(&dir, "feature/short-lived").len(), 1);

    git(&dir, &["branch", "-q", "-D", "feature/short-lived"]);
    let out = watch_once(&test, &[]);
    assert!(out.stdout.contains("feature/short-lived was deleted"), "{}{}", out.stdout, out.stderr);
    assert!(!work.exists());
    let state = std::fs::read_to_string(dir.join(".pipe/watch/state.json")).expect("state");
    assert!(!state.contains("short-lived"), "{state}");
    let worktrees = std::process::Command::new("git").args(["worktree", "list"]).current_dir(&dir).output();
    assert!(!String::from_utf8_lossy(&worktrees.expect("git").stdout).contains("short-lived"));
    assert!(branch_dir(&dir, "main").is_some(), "the trusted branch's stays");
}

/// A repository whose configuration points git's hooks into the work tree
/// (husky does this): a branch's own hook file must not run when the watcher
/// checks the branch out.
#[test]
fn a_branch_hook_does_not_run_on_the_watchers_checkout() {
    let test = Test::new().pipeline(GATED).file("version.txt", "1").file(".gitignore", ".pipe/\n").git("main");
    let dir = test.path().to_path_buf();
    git(&dir, &["config", "core.hooksPath", ".husky"]);
    let marker = dir.join("hook-ran");
    let hook = format!("#!/bin/sh\ntouch '{}'\n", marker.display());
    git(&dir, &["checkout", "-q", "-b", "feature"]);
    write_commit(&dir, &[(".husky/post-checkout", &hook)], "a hook");
    let path = dir.join(".husky/post-checkout");
    let mut perms = std::fs::metadata(&path).expect("hook").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&path, perms).expect("chmod");
    git(&dir, &["add", "-A"]);
    git(&dir, &["commit", "-qm", "executable hook"]);
    git(&dir, &["checkout", "-q", "main"]);
    let _ = std::fs::remove_file(&marker);
    watch_once(&test, &[]);
    write_commit(&dir, &[("version.txt", "2")], "next");
    git(&dir, &["checkout", "-q", "feature"]);
    write_commit(&dir, &[("version.txt", "3")], "feature next");
    git(&dir, &["checkout", "-q", "main"]);
    // The first run of the branch adds its worktree; the next checks out in it.
    for round in 0..2 {
        if round > 0 {
            git(&dir, &["checkout", "-q", "feature"]);
            write_commit(&dir, &[("version.txt", "4")], "feature again");
            git(&dir, &["checkout", "-q", "main"]);
        }
        let _ = std::fs::remove_file(&marker);
        watch_once(&test, &[]);
        assert!(!marker.exists(), "the branch's post-checkout hook ran on the watcher's checkout (round {round})");
    }
}
