//! What a run reports as it goes, and who listens. A run sends [`Event`]s into
//! one stream; the console (live lines or JSON), the run record and any other
//! report are [`Subscriber`]s of that stream, each seeing every event in order.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

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

/// Bytes of a child's output that may wait for the listeners at once: past
/// it, reading the child's pipe waits (the child blocks on its writes), so a
/// flood of output costs time, not memory.
pub const QUEUE_BYTES: usize = 16 << 20;

/// What an event costs the queue besides its text.
const EVENT_COST: usize = 128;

/// Where events go. [`Events::send`] never blocks and never fails (the
/// engine's own events, a bounded number); [`Events::send_output`] waits while
/// [`QUEUE_BYTES`] of a child's output are still queued.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::UnboundedSender<(Event, u32)>,
    budget: Arc<Semaphore>,
}

/// The listening end: hands the queue's budget back as events are taken.
pub struct Receiver {
    rx: mpsc::UnboundedReceiver<(Event, u32)>,
    budget: Arc<Semaphore>,
}

impl Events {
    pub fn channel() -> (Events, Receiver) {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(QUEUE_BYTES));
        (Events { tx, budget: budget.clone() }, Receiver { rx, budget })
    }

    pub fn send(&self, e: Event) {
        let _ = self.tx.send((e, 0));
    }

    /// Sends a line of a child's output once the queue has room for it.
    pub async fn send_output(&self, e: Event, bytes: usize) {
        let cost = (bytes + EVENT_COST).min(QUEUE_BYTES) as u32;
        let Ok(permit) = self.budget.acquire_many(cost).await else { return };
        permit.forget();
        if self.tx.send((e, cost)).is_err() {
            // No one listens: nothing queues.
            self.budget.add_permits(cost as usize);
        }
    }
}

impl Receiver {
    fn taken(&self, cost: u32) {
        if cost > 0 {
            self.budget.add_permits(cost as usize);
        }
    }

    pub async fn recv(&mut self) -> Option<Event> {
        let (e, cost) = self.rx.recv().await?;
        self.taken(cost);
        Some(e)
    }

    pub fn try_recv(&mut self) -> Result<Event, mpsc::error::TryRecvError> {
        let (e, cost) = self.rx.try_recv()?;
        self.taken(cost);
        Ok(e)
    }

    /// Up to `limit` events into `into`; 0 once every sender is gone.
    pub async fn recv_many(&mut self, into: &mut Vec<Event>, limit: usize) -> usize {
        let mut batch = Vec::with_capacity(limit.min(256));
        let n = self.rx.recv_many(&mut batch, limit).await;
        for (e, cost) in batch {
            self.taken(cost);
            into.push(e);
        }
        n
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Senders waiting for room would wait forever: let them through.
        self.budget.close();
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

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;
    use tokio::task::unconstrained;

    use super::*;

    fn line(n: usize) -> Event {
        Event::StepLog { step: "s".into(), stream: Stream::Stdout, line: "x".repeat(n) }
    }

    #[tokio::test]
    async fn a_flood_of_output_waits_for_the_listener_instead_of_queueing() {
        let (events, mut rx) = Events::channel();
        let size = 64 << 10;
        let fits = QUEUE_BYTES / (size + EVENT_COST);
        for _ in 0..fits {
            // Unconstrained: tokio's co-operative budget must not be what makes it wait.
            unconstrained(events.send_output(line(size), size)).now_or_never().expect("room in the queue");
        }
        // Full: the next line waits (its step's pipe is no longer read) …
        let mut next = Box::pin(unconstrained(events.send_output(line(size), size)));
        assert!((&mut next).now_or_never().is_none(), "the queue is bounded");
        // … while the engine's own events still pass, and taking one line makes room.
        events.send(Event::StepWaiting { step: "s".into(), waiting: None });
        assert!(rx.recv().await.is_some());
        next.now_or_never().expect("room again");
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, fits + 1, "nothing was lost");
    }

    #[tokio::test]
    async fn nothing_waits_when_no_one_listens() {
        let (events, rx) = Events::channel();
        drop(rx);
        for _ in 0..(QUEUE_BYTES >> 16) + 10 {
            unconstrained(events.send_output(line(64 << 10), 64 << 10)).now_or_never().expect("never waits");
        }
    }
}
