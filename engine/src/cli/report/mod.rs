//! Turning run events into output: live prefixed lines with a progress view
//! for people, or one JSON object per line for tools. A task on the run's own
//! (single) thread: no cross-thread wake-up per event, which on a small machine
//! costs more than the printing.

mod human;

use std::io::Write;
use tokio::sync::mpsc::UnboundedReceiver;

use super::Format;
use crate::plan::Plan;
use crate::run::Event;

/// Prints events until the run drops its sender.
pub async fn report(format: Format, plan: &Plan, mut rx: UnboundedReceiver<Event>) {
    let width = plan.graph.node_weights().map(|s| s.id.len()).max().unwrap_or(0).min(32);
    let mut batch = Vec::new();
    match format {
        Format::Json => {
            let mut out = std::io::BufWriter::new(std::io::stdout());
            while rx.recv_many(&mut batch, 256).await > 0 {
                for e in batch.drain(..) {
                    if let Ok(line) = serde_json::to_string(&e) {
                        let _ = writeln!(out, "{line}");
                    }
                }
                let _ = out.flush();
            }
        }
        Format::Human => {
            let mut human = human::Human::new(width);
            while rx.recv_many(&mut batch, 256).await > 0 {
                batch.drain(..).for_each(|e| human.event(e));
            }
        }
    }
}

/// `850ms`, `3.2s`, `2m 05s`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}
