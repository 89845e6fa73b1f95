//! Approval gates against a step that plays the attacker: it forges the
//! decision, or rewrites the question a person is shown. Real `pipe`, real
//! `ssh-keygen`, keys made for each test in its repository.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::support::{Test, wait_until};

const ATTACKS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/e2e/attacks");

/// An ed25519 key pair `name` under `dir` (no passphrase); the private key's path.
pub(crate) fn key(dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("key dir");
    let path = dir.join(name);
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen (openssh-client) is needed by these tests");
    assert!(ok.success(), "ssh-keygen");
    path
}

pub(crate) fn public(key: &Path) -> String {
    let text = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    text.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

/// A repository whose pipeline names `release/allowed_signers`, where alice
/// is the only approver; alice's and mallory's keys live outside it.
struct Signed {
    test: Test,
    keys: tempfile::TempDir,
    alice: PathBuf,
    mallory: PathBuf,
}

fn signed(stages: &str) -> Signed {
    let keys = tempfile::tempdir().expect("keys");
    let alice = key(&keys.path().join("alice/.ssh"), "id_ed25519");
    let mallory = key(keys.path(), "mallory");
    let allowed = format!("alice@example.com namespaces=\"pipe-approval\" {}\n", public(&alice));
    let test = Test::new()
        .file("release/allowed_signers", &allowed)
        .pipeline(&format!("pipeline \"gated\" {{\n    approvers \"release/allowed_signers\"\n{stages}\n}}\n"));
    for script in ["forge-decision.sh", "rewrite-question.sh"] {
        std::fs::copy(Path::new(ATTACKS).join(script), test.path().join(script)).expect("copy attack");
    }
    Signed { test, keys, alice, mallory }
}

fn spawn(test: &Test, env: &[(&str, &str)]) -> Child {
    test.command()
        .arg("run")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pipe")
}

fn finish(child: Child) -> (i32, String) {
    let out = child.wait_with_output().expect("pipe run");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn waiting_file(test: &Test) -> PathBuf {
    let dir = test.path().join(".pipe/approvals");
    wait_until("the gate to open", || {
        std::fs::read_dir(&dir).is_ok_and(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "waiting")))
    });
    std::fs::read_dir(&dir)
        .expect("approvals")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "waiting"))
        .expect("waiting file")
}

const GATE_WITH_FORGER: &str = r#"
    stage "gate" {
        step "go" { approve "Ship it?" timeout="4s" }
        step "forge" { run "./forge-decision.sh" }
    }
    stage "ship" { needs "gate"; step "deploy" { run "echo shipped" } }"#;

#[test]
fn a_step_that_writes_the_decision_does_not_approve_a_signed_gate() {
    let s = signed(GATE_WITH_FORGER);
    let (code, stdout) = finish(spawn(&s.test, &[]));
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("forged two decisions"), "the attack ran: {stdout}");
    assert!(stdout.contains("answers a different question"), "the issue's forgery is refused: {stdout}");
    assert!(stdout.contains("it is not signed"), "a well-formed unsigned one too: {stdout}");
    assert!(stdout.contains("no one approved within 4s"), "{stdout}");
    assert!(!stdout.contains("shipped") && !stdout.contains("approved by"), "{stdout}");
}

#[test]
fn a_rewritten_question_cannot_be_approved() {
    let s = signed(
        r#"
    stage "gate" {
        step "go" { approve "Deploy to production?" timeout="5s" }
        step "rewrite" { run "./rewrite-question.sh" }
    }
    stage "ship" { needs "gate"; step "deploy" { run "echo shipped" } }"#,
    );
    let child = spawn(&s.test, &[]);
    let waiting = waiting_file(&s.test);
    wait_until("the step to rewrite the question", || {
        std::fs::read_to_string(&waiting).is_ok_and(|t| t.contains("approve quickly"))
    });
    let key = s.alice.display().to_string();
    let approve = s.test.pipe(&["approve", "--key", &key], &[]);
    // pipe approve shows (and signs) what the file says: the lie...
    assert_eq!(approve.code, 0, "{}{}", approve.stdout, approve.stderr);
    assert!(approve.stderr.contains("Rotate the staging logs?"), "{}", approve.stderr);
    // ...but the run holds its own question and refuses the decision.
    let (code, stdout) = finish(child);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("answers a different question from the one this gate asks"), "{stdout}");
    assert!(!stdout.contains("shipped") && !stdout.contains("approved by"), "{stdout}");
}

#[test]
fn a_key_outside_the_approvers_is_refused_and_an_approver_key_approves() {
    let s = signed(
        r#"
    stage "gate" { step "go" { approve "Ship it?" timeout="1m" } }
    stage "ship" {
        needs "gate"
        step "deploy" { run "echo shipped; echo \"agent=[$SSH_AUTH_SOCK]\"" }
    }"#,
    );
    let child = spawn(&s.test, &[("SSH_AUTH_SOCK", "/tmp/an-agent.sock")]);
    let waiting = waiting_file(&s.test);
    let decision = waiting.with_extension("decision");
    let mallory = s.mallory.display().to_string();
    let refused = s.test.pipe(&["approve", "--key", &mallory], &[]);
    assert_eq!(refused.code, 0, "pipe approve writes it; the run judges it: {}", refused.stderr);
    wait_until("the run to read mallory's decision", || !decision.exists());
    assert!(waiting.exists(), "the gate still waits");
    // alice's key is found where ssh looks: ~/.ssh/id_ed25519.
    let home = s.keys.path().join("alice").display().to_string();
    let ok = s.test.pipe(&["approve"], &[("HOME", &home)]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    let (code, stdout) = finish(child);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("is signed by a key that release/allowed_signers does not name"), "{stdout}");
    assert!(stdout.contains("approved by alice@example.com") && stdout.contains("shipped"), "{stdout}");
    assert!(stdout.contains("agent=[]"), "steps do not get the agent socket: {stdout}");
}

#[test]
fn without_approvers_pipe_approve_works_and_the_log_says_who_is_unverified() {
    let test = Test::new().pipeline(
        r#"
pipeline "gated" {
    stage "gate" { step "go" { approve "Ship it?" timeout="1m" } }
    stage "ship" { needs "gate"; step "deploy" { run "echo shipped; echo \"agent=[$SSH_AUTH_SOCK]\"" } }
}
"#,
    );
    let child = spawn(&test, &[("SSH_AUTH_SOCK", "/tmp/an-agent.sock")]);
    waiting_file(&test);
    let ok = test.pipe(&["approve"], &[("USER", "carol")]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    let (code, stdout) = finish(child);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("approved by carol (unverified: the gate names no approvers)"), "{stdout}");
    assert!(stdout.contains("agent=[/tmp/an-agent.sock]"), "nothing to protect, nothing taken: {stdout}");
}
