//! What a run reports as it goes. The CLI turns these into live lines, a
//! progress view, or one JSON object per line (`--format json`).

use serde::Serialize;
use tokio::sync::mpsc;

use crate::state::{RunRecord, StepRecord};

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    RunStarted { run_id: String, pipeline: String, steps: Vec<String>, jobs: usize },
    StepStarted { step: String, attempt: u32, command: String },
    StepLog { step: String, stream: Stream, line: String },
    StepRetrying { step: String, attempt: u32, delay_ms: u64, reason: String },
    StepFinished(StepRecord),
    RunFinished(RunRecord),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Lines the engine itself writes into a step's log.
    Pipe,
}

/// Where events go; sending never blocks a step and never fails it.
#[derive(Clone)]
pub struct Events(mpsc::UnboundedSender<Event>);

impl Events {
    pub fn channel() -> (Events, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Events(tx), rx)
    }

    pub fn send(&self, e: Event) {
        let _ = self.0.send(e);
    }
}
