//! Turning run events into output: live prefixed lines with a progress view
//! for people, or one JSON object per line for tools. Runs on its own thread so
//! a slow terminal never stalls the scheduler.

mod human;

use std::io::Write;
use std::thread::JoinHandle;

use tokio::sync::mpsc::UnboundedReceiver;

use super::Format;
use crate::plan::Plan;
use crate::run::Event;

pub fn spawn(format: Format, plan: &Plan, mut rx: UnboundedReceiver<Event>) -> JoinHandle<()> {
    let width = plan.graph.node_weights().map(|s| s.id.len()).max().unwrap_or(0).min(32);
    std::thread::spawn(move || match format {
        Format::Json => {
            let mut out = std::io::stdout().lock();
            while let Some(e) = rx.blocking_recv() {
                if let Ok(line) = serde_json::to_string(&e) {
                    let _ = writeln!(out, "{line}");
                }
            }
            let _ = out.flush();
        }
        Format::Human => {
            let mut human = human::Human::new(width);
            while let Some(e) = rx.blocking_recv() {
                human.event(e);
            }
        }
    })
}

/// `850ms`, `3.2s`, `2m 05s`.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}
