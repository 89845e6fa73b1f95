//! The run record as a subscriber of the run's events: `run.json` is written
//! when the run starts (every step pending) and when it finishes, with the
//! run's HTML report beside it.

use std::path::PathBuf;

use crate::event::{Event, Subscriber};

pub struct RecordWriter {
    root: PathBuf,
}

impl RecordWriter {
    pub fn new(root: PathBuf) -> RecordWriter {
        RecordWriter { root }
    }
}

impl Subscriber for RecordWriter {
    fn event(&mut self, event: &Event) {
        let record = match event {
            Event::RunStarted { run, .. } | Event::RunFinished(run) => run,
            _ => return,
        };
        if let Err(e) = record.save(&self.root) {
            // The run goes on (or has ended); its record is what is lost, and people must know.
            eprintln!("error: {e}");
            tracing::error!(error = %e, "cannot save the run record");
        }
        if let Event::RunFinished(run) = event
            && let Err(e) = crate::report::write(&self.root, run)
        {
            eprintln!("error: cannot write the run report: {e}");
        }
    }
}
