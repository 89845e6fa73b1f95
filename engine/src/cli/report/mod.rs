//! The console's subscribers of a run's events: live prefixed lines with a
//! progress view for people, or one JSON object per line for tools.

mod human;

use std::io::Write;

use super::Format;
use crate::event::{Event, Subscriber};
use crate::plan::Plan;

/// The console reporter for `format`.
pub fn console(format: Format, plan: &Plan) -> Box<dyn Subscriber> {
    match format {
        Format::Json => Box::new(Json(std::io::BufWriter::new(std::io::stdout()))),
        Format::Human => {
            let width = plan.graph.node_weights().map(|s| s.id.len()).max().unwrap_or(0).min(32);
            Box::new(human::Human::new(width))
        }
    }
}

/// One JSON object per event and line.
struct Json(std::io::BufWriter<std::io::Stdout>);

/// One line of `--format json` (`schemas/events.schema.json`): every event
/// says when it was written, and every event about a step names it `step`
/// (a finished step's record calls it `id` as well).
#[derive(serde::Serialize)]
struct Line<'a> {
    at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<&'a str>,
    #[serde(flatten)]
    event: &'a Event,
}

impl Subscriber for Json {
    fn event(&mut self, event: &Event) {
        let step = match event {
            Event::StepFinished(record) => Some(record.id.as_str()),
            _ => None,
        };
        let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        if let Ok(line) = serde_json::to_string(&Line { at, step, event }) {
            let _ = writeln!(self.0, "{line}");
        }
    }

    fn flush(&mut self) {
        let _ = self.0.flush();
    }
}

pub use crate::report::duration;
