//! What a run reports as it goes, and who listens. A run sends [`Event`]s into
//! one stream; the console (live lines or JSON), the run record and any other
//! report are [`Subscriber`]s of that stream, each seeing every event in order.

use serde::Serialize;
use tokio::sync::mpsc;

use crate::state::{RunRecord, StepRecord};

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The run's record as it starts: every step pending.
    RunStarted {
        #[serde(flatten)]
        run: Box<RunRecord>,
        jobs: usize,
    },
    StepStarted {
        step: String,
        attempt: u32,
        command: String,
    },
    StepLog {
        step: String,
        stream: Stream,
        line: String,
    },
    StepRetrying {
        step: String,
        attempt: u32,
        delay_ms: u64,
        reason: String,
    },
    /// A step waits for a person (`waiting`), or stopped waiting (none).
    StepWaiting {
        step: String,
        waiting: Option<String>,
    },
    StepFinished(StepRecord),
    RunFinished(Box<RunRecord>),
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

pub type Receiver = mpsc::UnboundedReceiver<Event>;

impl Events {
    pub fn channel() -> (Events, Receiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Events(tx), rx)
    }

    pub fn send(&self, e: Event) {
        let _ = self.0.send(e);
    }
}

/// One listener of a run's events.
pub trait Subscriber {
    fn event(&mut self, event: &Event);

    /// Called after each batch of events: a place to flush buffered output.
    fn flush(&mut self) {}
}

/// Delivers every event, in order, to every subscriber, until the run drops
/// its sender. Runs as a task beside the run, on the same thread.
pub async fn deliver(mut rx: Receiver, subscribers: &mut [Box<dyn Subscriber>]) {
    let mut batch = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        for event in batch.drain(..) {
            subscribers.iter_mut().for_each(|s| s.event(&event));
        }
        subscribers.iter_mut().for_each(|s| s.flush());
    }
}
