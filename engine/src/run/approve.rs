//! The `approve` step kind: the run waits at a gate until a person approves
//! or aborts it from another process, or its timeout passes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::approval::signers::AllowedSigners;
use crate::approval::{Gate, Outcome};
use crate::step::{Exit, StepLog};

#[derive(Debug)]
pub struct ApproveRun {
    pub root: PathBuf,
    pub pipeline: String,
    pub run_id: String,
    pub step: String,
    pub message: String,
    pub timeout: Duration,
    pub display: String,
    /// Who may decide, as read when the pipeline was loaded; `None`: anyone
    /// who can write the gate's files (the README says what that means).
    pub approvers: Option<Arc<AllowedSigners>>,
}

pub async fn run(a: &ApproveRun, log: &StepLog, cancel: &CancellationToken) -> Exit {
    let gate = match Gate::open(&a.root, &a.pipeline, &a.run_id, &a.step, &a.message, a.timeout, a.approvers.clone()) {
        Ok(g) => g,
        Err(e) => return Exit::Error(format!("cannot open the approval gate: {e}")),
    };
    let what = format!("{} — {}", a.message, gate.how());
    log.note(&format!("waiting for approval: {what}"));
    log.waiting(Some(&format!("approval: {what}")));
    let outcome = gate.wait(a.timeout, cancel, &|m| log.note(m)).await;
    log.waiting(None);
    match outcome {
        Outcome::Decided(d) if d.approved => {
            log.note(&format!("approved by {}", d.who()));
            Exit::Code(0)
        }
        Outcome::Decided(d) => {
            let reason = d.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default();
            Exit::Failed(format!("aborted by {}{reason}", d.who()))
        }
        Outcome::TimedOut(t) => Exit::Failed(format!("no one approved within {}", humantime::format_duration(t))),
        Outcome::Cancelled => Exit::Cancelled,
    }
}
