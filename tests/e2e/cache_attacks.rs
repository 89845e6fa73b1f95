//! Forged step cache entries. Whoever can write `.pipe/cache` (a step's own
//! code, a run of a contributor's branch) can rewrite an entry; each test
//! crafts one the way an attacker would and shows that nothing outside the
//! declared outputs is touched, and that the step simply runs again with the
//! reason in its log.

use std::path::{Path, PathBuf};

use crate::support::{Output, Test};

/// The pipeline sits in `svc/`, so that `../` from it is still inside the
/// test's directory, where the test can see whether anything landed.
const PIPELINE: &str = r#"
pipeline "svc" {
    stage "build" {
        step "app" {
            run "echo ran >> runs.txt; rm -rf out; mkdir out; echo built > out/app; echo version=1.0 >> $PIPE_OUTPUT"
            cache { inputs "src/**"; outputs "out" }
        }
        step "later" { needs "app"; run "echo later >> out/app" }
    }
}
"#;

fn primed() -> (Test, PathBuf) {
    let test = Test::new().file("svc/pipe.kdl", PIPELINE).file("svc/src/main.txt", "1.0");
    let first = go(&test, &[]);
    assert_eq!(runs(&test), 1, "{}", first.stdout);
    let entry = entries(&test).pop().expect("an entry was stored");
    (test, entry)
}

fn go(test: &Test, env: &[(&str, &str)]) -> Output {
    let out = test.pipe(&["run"], env);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    out
}

fn entries(test: &Test) -> Vec<PathBuf> {
    let dir = test.path().join(".pipe/cache");
    let mut found: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    found.retain(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')));
    found
}

fn runs(test: &Test) -> usize {
    std::fs::read_to_string(test.path().join("svc/runs.txt")).unwrap_or_default().lines().count()
}

fn edit_entry(entry: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = entry.join("entry.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("entry.json")).expect("json");
    edit(&mut json);
    std::fs::write(&path, json.to_string()).expect("write entry.json");
}

/// The step ran again (no hit), and its log (the file and the live view) says why.
#[track_caller]
fn refused(test: &Test, out: &Output, why: &str) {
    assert_eq!(out.step("build.app")["details"]["cache"]["hit"], false, "{}", out.stdout);
    assert_eq!(runs(test), 2, "the step ran again: {}", out.stdout);
    let expected = format!("cache entry refused: {why}");
    assert!(out.stdout.contains(&expected), "{expected} in\n{}", out.stdout);
    let id = out.record()["id"].as_str().expect("run id").to_string();
    let log = std::fs::read_to_string(test.path().join(format!(".pipe/runs/{id}/logs/build.app.log"))).expect("log");
    assert!(log.contains(&expected), "{expected} in the log:\n{log}");
    assert_eq!(std::fs::read_to_string(test.path().join("svc/out/app")).expect("out/app"), "built\nlater\n");
}

#[test]
fn a_dot_dot_path_in_an_entry_writes_nothing_outside() {
    let (test, entry) = primed();
    std::fs::write(entry.join("escaped"), "planted").expect("plant");
    edit_entry(&entry, |j| j["files"] = serde_json::json!(["out", "../escaped"]));
    let out = go(&test, &[]);
    assert!(!test.path().join("escaped").exists(), "written outside the pipeline's directory");
    refused(&test, &out, "path `../escaped` is outside the declared outputs");
}

#[test]
fn an_absolute_path_in_an_entry_does_not_truncate_the_file() {
    let (test, entry) = primed();
    let victim = test.path().join("victim.txt");
    std::fs::write(&victim, "precious").expect("victim");
    let absolute = victim.display().to_string();
    edit_entry(&entry, |j| j["files"] = serde_json::json!(["out", absolute]));
    let out = go(&test, &[]);
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious");
    refused(&test, &out, &format!("path `{absolute}` is outside the declared outputs"));
}

#[test]
fn a_symbolic_link_in_an_entry_is_never_restored() {
    let (test, entry) = primed();
    let victim = test.path().join("victim.txt");
    std::fs::write(&victim, "precious").expect("victim");
    std::fs::remove_file(entry.join("files/out/app")).expect("rm");
    std::os::unix::fs::symlink(&victim, entry.join("files/out/app")).expect("link");
    let out = go(&test, &[]);
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious", "a later step wrote through it");
    assert!(!test.path().join("svc/out/app").symlink_metadata().expect("out/app").is_symlink());
    refused(&test, &out, "the stored `out/app` is a symbolic link");
}

#[test]
fn a_symbolic_link_planted_in_the_workspace_is_not_written_through() {
    let (test, _) = primed();
    let elsewhere = test.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    std::fs::remove_dir_all(test.path().join("svc/out")).expect("rm");
    std::os::unix::fs::symlink(&elsewhere, test.path().join("svc/out")).expect("link");
    let out = go(&test, &[]);
    assert!(!elsewhere.join("app").exists(), "the restore wrote through the link");
    refused(&test, &out, "`out` in the workspace is a symbolic link");
}

/// A hard link is no symbolic link, and a restore that truncated it in place
/// would write into the file outside: the restore replaces it instead.
#[test]
fn a_hard_link_planted_in_the_workspace_is_replaced_not_written_through() {
    let (test, _) = primed();
    let victim = test.path().join("victim.txt");
    std::fs::write(&victim, "precious").expect("victim");
    std::fs::remove_file(test.path().join("svc/out/app")).expect("rm");
    std::fs::hard_link(&victim, test.path().join("svc/out/app")).expect("hard link");
    let out = go(&test, &[]);
    assert_eq!(out.step("build.app")["details"]["cache"]["hit"], true, "{}", out.stdout);
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "precious");
    assert_eq!(std::fs::read_to_string(test.path().join("svc/out/app")).expect("out/app"), "built\nlater\n");
}

#[test]
fn restored_output_values_are_checked_like_fresh_ones() {
    let (test, entry) = primed();
    let huge = "x".repeat(2 << 20);
    edit_entry(&entry, |j| j["outputs"] = serde_json::json!({ "version": huge }));
    let out = go(&test, &[]);
    refused(&test, &out, "its outputs are not valid: $PIPE_OUTPUT holds");

    let entry = entries(&test).pop().expect("stored again");
    edit_entry(&entry, |j| j["outputs"] = serde_json::json!({ "version\nother": "1" }));
    let out = go(&test, &[]);
    assert!(out.stdout.contains("cache entry refused: its output"), "{}", out.stdout);
    assert_eq!(runs(&test), 3);
}

/// A forged `bytes: 0` does not hide an entry from eviction: sizes are measured.
#[test]
fn eviction_measures_entries_instead_of_believing_them() {
    let test = Test::new().file("svc/pipe.kdl", PIPELINE).file("svc/src/main.txt", "1.0");
    let forged = test.path().join(".pipe/cache").join("f".repeat(64));
    std::fs::create_dir_all(forged.join("files/out")).expect("mkdir");
    std::fs::write(forged.join("files/out/big"), vec![0u8; 200_000]).expect("big");
    let entry = r#"{"step":"build.app","duration_ms":1,"outputs":{},"files":["out"],"bytes":0}"#;
    std::fs::write(forged.join("entry.json"), entry).expect("entry");
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
    std::fs::File::options()
        .write(true)
        .open(forged.join("entry.json"))
        .expect("open")
        .set_modified(old)
        .expect("mtime");
    go(&test, &[("PIPE_CACHE_SIZE", "100000")]);
    assert!(!forged.exists(), "the forged entry escaped eviction");
    assert_eq!(entries(&test).len(), 1, "the new entry stays");
}

#[test]
fn a_dead_stores_temporary_directory_is_counted_then_cleaned() {
    let (test, entry) = primed();
    let cache = entry.parent().expect("cache dir").to_path_buf();
    // No process has this id (above any pid_max), so no store is writing it.
    let dead = cache.join(format!(".tmp-{}-999999999", "d".repeat(64)));
    std::fs::create_dir_all(dead.join("files/out")).expect("mkdir");
    std::fs::write(dead.join("files/out/big"), vec![0u8; 300_000]).expect("big");
    // This test's own process is alive: a store in progress, counted and kept.
    let live = cache.join(format!(".tmp-{}-{}", "e".repeat(64), std::process::id()));
    std::fs::create_dir_all(&live).expect("mkdir");
    std::fs::write(live.join("partial"), vec![0u8; 50_000]).expect("partial");
    let usage = test.pipe(&["cache"], &[]);
    assert_eq!(usage.code, 0, "{}", usage.stderr);
    assert!(!dead.exists(), "a dead store's directory is removed");
    assert!(live.exists(), "a live store's directory is kept");
    assert!(usage.stdout.starts_with("1 entries, ") && usage.stdout.contains("KiB"), "{}", usage.stdout);
    let kib: f64 =
        usage.stdout.split(", ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0.0);
    assert!(kib > 48.0 && kib < 100.0, "the live store counts, the dead one is gone: {}", usage.stdout);
}

/// An output derived from a secret is never written to an entry in clear.
#[test]
fn a_step_whose_outputs_hold_a_secret_is_not_cached() {
    let test = Test::new()
        .file(
            "svc/pipe.kdl",
            r#"
pipeline "svc" {
    secrets { from-env "TOKEN" }
    stage "build" {
        step "login" {
            env { TOKEN "${secrets.TOKEN}" }
            run "echo ran >> runs.txt; echo session=$TOKEN >> $PIPE_OUTPUT"
            cache { inputs "src/**" }
        }
    }
}
"#,
        )
        .file("svc/src/main.txt", "1.0");
    let token = [("TOKEN", "s3cret-session-token")];
    let out = go(&test, &token);
    assert!(out.stdout.contains("not cached: its output `session` holds a secret's value"), "{}", out.stdout);
    go(&test, &token);
    assert_eq!(runs(&test), 2, "nothing was cached, so it ran again");
    let found = std::process::Command::new("grep")
        .args(["-r", "-l", "s3cret-session-token", ".pipe/cache"])
        .current_dir(test.path())
        .output()
        .expect("grep");
    assert!(found.stdout.is_empty(), "the secret in clear: {}", String::from_utf8_lossy(&found.stdout));
}
