//! Approval gates: a run that waits for a person. The waiting `pipe` and the
//! person's `pipe approve` are different processes, so a gate is two files in
//! `.pipe/approvals/`: the waiter writes `<run>--<step>.waiting` (what it
//! waits for, until when, its pid), the approver writes
//! `<run>--<step>.decision`, and the waiter, polling, reads it and removes
//! both. A gate whose waiter died is not offered to anyone.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::docker::Identity;
use crate::state::{StateError, atomic::write_atomic};

/// How often a waiting gate looks for a decision.
const POLL: Duration = Duration::from_millis(200);

/// What a gate waits for, as `pipe approve` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Waiting {
    pub run: String,
    pub pipeline: String,
    pub step: String,
    /// The question, for people.
    pub message: String,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds: when the gate gives up (and fails).
    pub until: u64,
    pub pid: u32,
    pub boot: String,
}

/// What a person decided.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Decision {
    pub approved: bool,
    /// Who: the approver's user name.
    pub by: String,
    pub reason: Option<String>,
    pub at: u64,
}

/// How a wait ended.
#[derive(Debug)]
pub enum Outcome {
    Decided(Decision),
    TimedOut(Duration),
    Cancelled,
}

/// An open gate; closing it (drop) removes its files.
pub struct Gate {
    waiting: PathBuf,
    decision: PathBuf,
    pub info: Waiting,
}

fn dir(root: &Path) -> PathBuf {
    root.join(".pipe").join("approvals")
}

fn file_stem(run: &str, step: &str) -> String {
    crate::state::file_safe(&format!("{run}--{step}"))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Gate {
    /// Opens a gate for `step` of `run`; it is waiting from now on.
    pub fn open(
        root: &Path,
        pipeline: &str,
        run: &str,
        step: &str,
        message: &str,
        timeout: Duration,
    ) -> Result<Gate, StateError> {
        let dir = dir(root);
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let stem = file_stem(run, step);
        let gate = Gate {
            waiting: dir.join(format!("{stem}.waiting")),
            decision: dir.join(format!("{stem}.decision")),
            info: Waiting {
                run: run.to_string(),
                pipeline: pipeline.to_string(),
                step: step.to_string(),
                message: message.to_string(),
                since: now(),
                until: now() + timeout.as_secs(),
                pid: std::process::id(),
                boot: Identity::current().boot.clone(),
            },
        };
        // A decision left from an earlier wait of the same step is not this one's.
        let _ = std::fs::remove_file(&gate.decision);
        write_atomic(&gate.waiting, &serde_json::to_vec_pretty(&gate.info).unwrap_or_default())?;
        Ok(gate)
    }

    /// Waits for a decision, the timeout, or cancellation.
    pub async fn wait(&self, timeout: Duration, cancel: &CancellationToken) -> Outcome {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(text) = tokio::fs::read(&self.decision).await
                && let Ok(decision) = serde_json::from_slice::<Decision>(&text)
            {
                return Outcome::Decided(decision);
            }
            if tokio::time::Instant::now() >= deadline {
                return Outcome::TimedOut(timeout);
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = cancel.cancelled() => return Outcome::Cancelled,
            }
        }
    }

    /// The command that approves this gate, for messages.
    pub fn how(&self) -> String {
        format!("`pipe approve {0}` or `pipe abort {0}`", self.info.run)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.waiting);
        let _ = std::fs::remove_file(&self.decision);
    }
}

/// Every gate waiting now under `root` (gates of dead waiters are skipped), oldest first.
pub fn waiting(root: &Path) -> Vec<Waiting> {
    let Ok(entries) = std::fs::read_dir(dir(root)) else { return Vec::new() };
    let boot = &Identity::current().boot;
    let mut out: Vec<Waiting> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "waiting"))
        .filter_map(|e| serde_json::from_slice::<Waiting>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|w| &w.boot == boot && nix::sys::signal::kill(nix::unistd::Pid::from_raw(w.pid as i32), None).is_ok())
        .collect();
    out.sort_by_key(|w| w.since);
    out
}

/// Records a decision for the gate of `run` (and `step`, when the run waits at
/// several); returns the gate it decided. `run` may be `last` when only one
/// run waits, or be left out.
pub fn decide(
    root: &Path,
    run: Option<&str>,
    step: Option<&str>,
    approved: bool,
    reason: Option<String>,
) -> Result<Waiting, String> {
    let all = waiting(root);
    if all.is_empty() {
        return Err("nothing is waiting for approval here".into());
    }
    let candidates: Vec<&Waiting> = all
        .iter()
        .filter(|w| run.is_none_or(|r| r == "last" || w.run == r))
        .filter(|w| step.is_none_or(|s| w.step == s || w.step.ends_with(&format!(".{s}"))))
        .collect();
    let list = || all.iter().map(|w| format!("\n  {} {}: {}", w.run, w.step, w.message)).collect::<String>();
    let gate = match candidates.as_slice() {
        [one] => *one,
        [] => return Err(format!("no such gate is waiting; waiting now:{}", list())),
        _ => return Err(format!("several gates are waiting; name the run (and the step):{}", list())),
    };
    let decision = Decision {
        approved,
        by: std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "someone".into()),
        reason,
        at: now(),
    };
    let path = dir(root).join(format!("{}.decision", file_stem(&gate.run, &gate.step)));
    write_atomic(&path, &serde_json::to_vec_pretty(&decision).unwrap_or_default()).map_err(|e| e.to_string())?;
    Ok(gate.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_decision_from_another_writer_ends_the_wait() {
        let root = tempfile::tempdir().expect("tempdir");
        let gate = Gate::open(root.path(), "p", "run-1", "prod.go", "ship it?", Duration::from_secs(60)).expect("open");
        assert_eq!(waiting(root.path()).len(), 1);
        assert!(decide(root.path(), Some("run-2"), None, true, None).is_err());
        let decided = decide(root.path(), None, Some("go"), false, Some("not today".into())).expect("decide");
        assert_eq!(decided.step, "prod.go");
        match gate.wait(Duration::from_secs(5), &CancellationToken::new()).await {
            Outcome::Decided(d) => assert!(!d.approved && d.reason.as_deref() == Some("not today")),
            other => panic!("{other:?}"),
        }
        drop(gate);
        assert!(waiting(root.path()).is_empty());
    }

    #[tokio::test]
    async fn an_unanswered_gate_times_out() {
        let root = tempfile::tempdir().expect("tempdir");
        let gate = Gate::open(root.path(), "p", "r", "s", "?", Duration::from_millis(300)).expect("open");
        assert!(matches!(gate.wait(Duration::from_millis(300), &CancellationToken::new()).await, Outcome::TimedOut(_)));
    }
}
