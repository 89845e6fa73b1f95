use std::process::Stdio;

use crate::support::{Test, wait_until};

#[test]
fn runs_and_logs_show_history() {
    let out = Test::new()
        .pipeline(r#"pipeline "p" { stage "s" { step "hello" { run "echo hello from the log" } } }"#)
        .args(&["run"])
        .expect(0);
    let run_id = out.record()["id"].as_str().expect("id").to_string();
    let log = std::fs::read_to_string(out.dir.join(format!(".pipe/runs/{run_id}/logs/s.hello.log"))).expect("log");
    assert!(log.contains("hello from the log"));

    let runs = Test::new().args(&["-C", out.dir.to_str().expect("utf-8"), "runs"]).expect(0);
    assert!(runs.stdout.contains(&run_id) && runs.stdout.contains("succeeded"), "{}", runs.stdout);
    let logs = Test::new().args(&["-C", out.dir.to_str().expect("utf-8"), "logs", "last", "hello"]).expect(0);
    assert!(logs.stdout.contains("hello from the log"), "{}", logs.stdout);
}

/// A step that failed before it printed anything (here, a reference that
/// cannot be rendered) still says why in `pipe logs`.
#[test]
fn logs_of_a_step_that_failed_before_printing_say_why() {
    let out = Test::new()
        .pipeline(
            r#"pipeline "p" { stage "s" {
                step "a" { run "true" }
                step "b" { needs "a"; run "echo ${steps.s.a.outputs.missing}" }
            } }"#,
        )
        .args(&["run"])
        .expect(1);
    let dir = out.dir.to_str().expect("utf-8");
    let one = Test::new().args(&["-C", dir, "logs", "last", "b"]).expect(0);
    assert!(one.stdout.contains("[pipe] failed before printing anything:"), "{}", one.stdout);
    assert!(one.stdout.contains("set no output `missing`"), "{}", one.stdout);
    let all = Test::new().args(&["-C", dir, "logs", "last"]).expect(0);
    assert!(all.stdout.contains("── s.b (failed) ──"), "{}", all.stdout);
}

#[test]
fn rerun_failed_runs_only_what_failed_or_was_skipped() {
    let test = Test::new().pipeline(
        r#"
pipeline "p" {
    stage "a" { step "once" { run "echo ran >> once.count; echo v=7 >> $PIPE_OUTPUT" } }
    stage "b" { needs "a"; step "flaky" { run "test -f fixed" } }
    stage "c" { needs "b"; step "after" { run "test '${steps.a.once.outputs.v}' = 7" } }
}
"#,
    );
    let dir = test.path().to_path_buf();
    let first = test.command().args(["run"]).output().expect("run");
    assert_eq!(first.status.code(), Some(1));
    std::fs::write(dir.join("fixed"), "").expect("fix");
    let out = test.args(&["run", "--rerun-failed", "last"]).expect(0);
    assert_eq!(out.read("once.count").lines().count(), 1, "a.once was not run again");
    assert_eq!(out.status("b.flaky"), "succeeded");
    assert_eq!(out.status("c.after"), "succeeded");
}

#[test]
fn a_second_run_of_the_same_pipeline_is_refused_while_the_first_holds_the_lock() {
    let test = Test::new().pipeline(
        r#"pipeline "p" { stage "s" { step "wait" { run "touch started; while [ ! -f go ]; do sleep 0.05; done" } } }"#,
    );
    let dir = test.path().to_path_buf();
    let mut first = test.command().arg("run").stdout(Stdio::null()).spawn().expect("spawn");
    wait_until("the first run to start", || dir.join("started").exists());
    let second = test.command().arg("run").output().expect("second run");
    let stderr = String::from_utf8_lossy(&second.stderr);
    std::fs::write(dir.join("go"), "").expect("release");
    assert_eq!(second.status.code(), Some(1));
    assert!(stderr.contains("pipeline `p` is already running"), "{stderr}");
    assert_eq!(first.wait().expect("first").code(), Some(0));
    let _ = test.into_output();
}

#[test]
fn state_persists_between_commands() {
    let test = Test::new();
    let dir = test.path().to_str().expect("utf-8").to_string();
    Test::new().args(&["-C", &dir, "state", "orders", "set", "live-slot", "blue"]).expect(0);
    Test::new().args(&["-C", &dir, "state", "orders", "set", "version", "1.2"]).expect(0);
    let got = Test::new().args(&["-C", &dir, "state", "orders", "get", "live-slot"]).expect(0);
    assert_eq!(got.stdout.trim(), "blue");
    let all = Test::new().args(&["-C", &dir, "state", "orders"]).expect(0);
    assert_eq!(all.stdout, "live-slot=blue\nversion=1.2\n");
    Test::new().args(&["-C", &dir, "state", "orders", "get", "missing"]).expect(1);
    let _ = test.into_output();
}
