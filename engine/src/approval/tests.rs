use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::*;

fn quiet(_: &str) {}

#[tokio::test]
async fn a_decision_from_another_writer_ends_the_wait() {
    let root = tempfile::tempdir().expect("tempdir");
    let gate =
        Gate::open(root.path(), "p", "run-1", "prod.go", "ship it?", Duration::from_secs(60), None).expect("open");
    assert_eq!(waiting(root.path()).len(), 1);
    assert!(decide(root.path(), Some("run-2"), None, true, None, None).is_err());
    let decided = decide(root.path(), None, Some("go"), false, Some("not today".into()), None).expect("decide");
    assert_eq!(decided.step, "prod.go");
    match gate.wait(Duration::from_secs(5), &CancellationToken::new(), &quiet).await {
        Outcome::Decided(d) => assert!(!d.approved && !d.verified && d.reason.as_deref() == Some("not today")),
        other => panic!("{other:?}"),
    }
    drop(gate);
    assert!(waiting(root.path()).is_empty());
}

#[tokio::test]
async fn an_unanswered_gate_times_out() {
    let root = tempfile::tempdir().expect("tempdir");
    let gate = Gate::open(root.path(), "p", "r", "s", "?", Duration::from_millis(300), None).expect("open");
    let outcome = gate.wait(Duration::from_millis(300), &CancellationToken::new(), &quiet).await;
    assert!(matches!(outcome, Outcome::TimedOut(_)));
}

/// The attack of the issue: a step writes the decision pipe used to believe.
#[tokio::test]
async fn a_hand_written_decision_is_rejected_and_the_gate_waits_on() {
    let root = tempfile::tempdir().expect("tempdir");
    let gate = Gate::open(root.path(), "p", "r", "s", "ship?", Duration::from_secs(60), None).expect("open");
    std::fs::write(&gate.decision, r#"{"approved":true,"by":"release-manager","reason":null,"at":0}"#).expect("forge");
    let notes = Mutex::new(Vec::<String>::new());
    let note = |m: &str| notes.lock().expect("notes").push(m.to_string());
    let outcome = gate.wait(Duration::from_millis(600), &CancellationToken::new(), &note).await;
    assert!(matches!(outcome, Outcome::TimedOut(_)), "{outcome:?}");
    let notes = notes.into_inner().expect("notes");
    assert!(notes.iter().any(|n| n.contains("answers a different question")), "{notes:?}");
}

/// An approver's key made with the real ssh-keygen, and the file naming it.
fn approver(dir: &Path) -> (PathBuf, Arc<AllowedSigners>) {
    let key = dir.join("alice");
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f"])
        .arg(&key)
        .status()
        .expect("ssh-keygen");
    assert!(ok.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    let text = format!("alice@example.com namespaces=\"pipe-approval\" {public}");
    (key, Arc::new(AllowedSigners::parse(Path::new("allowed_signers"), text).expect("allowed signers")))
}

/// A genuine signed abort, turned into an approval by a step; a genuine
/// approval of an earlier wait, replayed: neither counts, the true one does.
#[tokio::test]
async fn a_tampered_or_replayed_signed_decision_is_rejected() {
    let root = tempfile::tempdir().expect("tempdir");
    let (key, signers) = approver(root.path());
    let open = || {
        Gate::open(root.path(), "p", "r", "s", "ship?", Duration::from_secs(60), Some(signers.clone())).expect("open")
    };
    let earlier = open();
    decide(root.path(), None, None, true, None, Some(&key)).expect("sign");
    let replayed = std::fs::read(&earlier.decision).expect("earlier decision");
    drop(earlier);

    let gate = open();
    decide(root.path(), None, None, false, Some("not today".into()), Some(&key)).expect("sign");
    let mut tampered: Decision = serde_json::from_slice(&std::fs::read(&gate.decision).expect("read")).expect("parse");
    tampered.approved = true;
    let notes = Mutex::new(Vec::<String>::new());
    let note = |m: &str| notes.lock().expect("notes").push(m.to_string());
    for forged in [serde_json::to_vec(&tampered).expect("json"), replayed] {
        std::fs::write(&gate.decision, forged).expect("forge");
        let outcome = gate.wait(Duration::from_millis(400), &CancellationToken::new(), &note).await;
        assert!(matches!(outcome, Outcome::TimedOut(_)), "{outcome:?}");
    }
    let notes = notes.into_inner().expect("notes");
    assert!(notes[0].contains("its signature does not verify"), "{notes:?}");
    assert!(notes[1].contains("made for another wait"), "{notes:?}");

    decide(root.path(), None, None, true, None, Some(&key)).expect("sign");
    match gate.wait(Duration::from_secs(10), &CancellationToken::new(), &quiet).await {
        Outcome::Decided(v) => assert!(v.approved && v.verified && v.by == "alice@example.com", "{v:?}"),
        other => panic!("{other:?}"),
    }
}
