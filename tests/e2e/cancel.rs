use std::process::Stdio;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{Test, alive, read_pid, wait_until};

#[test]
fn ctrl_c_cancels_steps_runs_hooks_and_exits_130() {
    let test = Test::new()
        .pipeline(
            r#"
pipeline "p" {
    stage "s" {
        step "long" { run "sleep 60 & echo $! > long.pid; wait" }
    }
    stage "after" { needs "s"; step "never" { run "touch never" } }
    on-failure { step "report" { run "touch reported" } }
    always { step "cleanup" { run "touch cleaned" } }
}
"#,
        )
        .args(&["run"]);
    let mut child = test.command().stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn pipe");
    let dir = test.path().to_path_buf();
    wait_until("the step to start", || std::fs::read_to_string(dir.join("long.pid")).is_ok_and(|s| s.ends_with('\n')));
    let pid = i32::try_from(child.id()).expect("pid");
    kill(Pid::from_raw(pid), Signal::SIGINT).expect("send SIGINT");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    assert!(!alive(read_pid(&dir.join("long.pid"))), "the step's process is gone");
    assert!(dir.join("reported").exists() && dir.join("cleaned").exists(), "hooks ran");
    assert!(!dir.join("never").exists());
    let out = test.into_output();
    assert_eq!(out.record()["status"], "interrupted");
    assert_eq!(out.status("s.long"), "cancelled");
}

#[test]
fn sigterm_behaves_like_ctrl_c() {
    let test = Test::new()
        .pipeline(r#"pipeline "p" { stage "s" { step "long" { run "echo $$ > sh.pid; sleep 60" } } }"#)
        .args(&["run"]);
    let mut child = test.command().stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn pipe");
    let dir = test.path().to_path_buf();
    wait_until("the step to start", || std::fs::read_to_string(dir.join("sh.pid")).is_ok_and(|s| s.ends_with('\n')));
    kill(Pid::from_raw(i32::try_from(child.id()).expect("pid")), Signal::SIGTERM).expect("send SIGTERM");
    assert_eq!(child.wait().expect("wait").code(), Some(130));
    assert!(!alive(read_pid(&dir.join("sh.pid"))));
}
