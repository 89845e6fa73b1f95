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

impl Subscriber for Json {
    fn event(&mut self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            let _ = writeln!(self.0, "{line}");
        }
    }

    fn flush(&mut self) {
        let _ = self.0.flush();
    }
}

pub use crate::report::duration;
