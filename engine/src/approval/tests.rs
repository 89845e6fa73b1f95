use std::sync::Mutex;

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
