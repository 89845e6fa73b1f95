//! The timeline: one row per step on a shared time axis. A light bar is the
//! wait between being ready and getting a job slot; each attempt is a bar
//! (failed attempts that were retried in orange); a skipped step is a tick
//! where it was decided. Steps are ordered by when they became ready, so
//! what ran in parallel is what overlaps.

use std::fmt::Write as _;

use super::{anchor, class_of, clip_end, esc};
use crate::state::{RunRecord, StepRecord};

const LABEL_W: f64 = 260.0;
const AXIS_W: f64 = 900.0;
const ROW_H: f64 = 18.0;
const TOP: f64 = 22.0;

pub fn svg(run: &RunRecord) -> String {
    let mut steps: Vec<&StepRecord> = run.steps.iter().collect();
    steps.sort_by_key(|s| (s.timing.as_ref().map_or(u64::MAX, |t| t.ready_ms), first_start(s)));
    let end = run
        .steps
        .iter()
        .filter_map(|s| s.timing.as_ref()?.attempts.last().map(|a| a[1]))
        .max()
        .unwrap_or(0)
        .max(run.duration_ms)
        .max(1);
    let x = |ms: u64| LABEL_W + AXIS_W * ms as f64 / end as f64;
    let height = TOP + ROW_H * steps.len() as f64 + 8.0;
    let mut s = String::new();
    let _ = write!(
        s,
        "<div class=\"scroll\"><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" \
         role=\"img\" aria-label=\"timeline of {} steps\">",
        LABEL_W + AXIS_W + 20.0,
        steps.len()
    );
    for t in ticks(end) {
        let _ = write!(
            s,
            "<line class=\"tick\" x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"14\" y2=\"{height}\"/>\
             <text class=\"tl\" x=\"{0:.1}\" y=\"11\" text-anchor=\"middle\">{1}</text>",
            x(t),
            super::duration(t)
        );
    }
    for (row, step) in steps.iter().enumerate() {
        let y = TOP + ROW_H * row as f64;
        let _ = write!(
            s,
            "<a href=\"#{}\"><text x=\"4\" y=\"{:.1}\">{}</text></a>",
            anchor(&step.id),
            y + 12.0,
            esc(&clip_end(&step.id, 36))
        );
        let Some(timing) = &step.timing else { continue };
        let tip = format!("{}: {}", step.id, step.reason.as_deref().unwrap_or(step.status.as_str()));
        let class = class_of(step);
        if timing.attempts.is_empty() {
            // The reason reads away from the axis' nearer end.
            let at = x(timing.ready_ms);
            let (tx, side) = if at > LABEL_W + AXIS_W * 0.55 { (at - 6.0, "end") } else { (at + 6.0, "start") };
            let _ = write!(
                s,
                "<rect class=\"{class}\" x=\"{at:.1}\" y=\"{:.1}\" width=\"3\" height=\"12\"><title>{}</title></rect>\
                 <text class=\"tl\" x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"{side}\">{}</text>",
                y + 2.0,
                esc(&tip),
                y + 12.0,
                esc(&clip_end(step.reason.as_deref().unwrap_or("skipped"), 70))
            );
            continue;
        }
        let first = timing.attempts[0][0];
        if first > timing.ready_ms {
            let _ = write!(
                s,
                "<rect class=\"wait\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"12\"><title>{} waited {}</title></rect>",
                x(timing.ready_ms),
                y + 2.0,
                (x(first) - x(timing.ready_ms)).max(1.0),
                esc(&step.id),
                super::duration(first - timing.ready_ms)
            );
        }
        let last = timing.attempts.len() - 1;
        for (i, [a, b]) in timing.attempts.iter().enumerate() {
            let class = if i < last { "retry" } else { class };
            let what = if i < last { format!("attempt {} failed, retried", i + 1) } else { tip.clone() };
            let _ = write!(
                s,
                "<a href=\"#{}\"><rect class=\"{class}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"12\" rx=\"2\">\
                 <title>{} ({})</title></rect></a>",
                anchor(&step.id),
                x(*a),
                y + 2.0,
                (x(*b) - x(*a)).max(2.0),
                esc(&what),
                super::duration(b.saturating_sub(*a))
            );
        }
    }
    s.push_str("</svg></div>");
    s
}

fn first_start(s: &StepRecord) -> u64 {
    s.timing.as_ref().and_then(|t| t.attempts.first()).map_or(u64::MAX, |a| a[0])
}

/// About eight round ticks over `0..=end` milliseconds.
fn ticks(end: u64) -> Vec<u64> {
    let rough = end / 8;
    let step = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 300_000, 600_000]
        .into_iter()
        .find(|s| *s >= rough)
        .unwrap_or(3_600_000);
    (0..=end / step).map(|i| i * step).collect()
}
