//! The step graph, laid out in columns: a step's column is the length of the
//! longest path of edges leading to it, so everything a step needs is to its
//! left. Ordering-only edges (hooks, `when step=`) are dashed.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::{anchor, class_of, clip_start, esc};
use crate::state::RunRecord;

/// Above this many steps the graph is not drawn (the timeline still is).
const MAX_DRAWN: usize = 400;
const COL_W: f64 = 210.0;
const NODE_W: f64 = 180.0;
const ROW_H: f64 = 30.0;

pub fn svg(run: &RunRecord) -> String {
    if run.steps.len() > MAX_DRAWN {
        return format!(
            "<p class=\"dim\">{} steps: too many to draw; `pipe graph {} --format mermaid` prints it.</p>",
            run.steps.len(),
            esc(&run.pipeline)
        );
    }
    let index: HashMap<&str, usize> = run.steps.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
    let edges: Vec<(usize, usize, bool)> = run
        .edges
        .iter()
        .filter_map(|e| Some((*index.get(e.from.as_str())?, *index.get(e.to.as_str())?, e.after)))
        .collect();
    // Longest path from a root; the plan is acyclic, so |steps| rounds settle it.
    let mut column = vec![0usize; run.steps.len()];
    for _ in 0..run.steps.len() {
        let mut changed = false;
        for &(a, b, _) in &edges {
            if column[b] < column[a] + 1 {
                column[b] = column[a] + 1;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut rows = vec![0usize; column.iter().max().map_or(1, |m| m + 1)];
    let mut place = vec![(0.0, 0.0); run.steps.len()];
    for (i, &c) in column.iter().enumerate() {
        place[i] = (8.0 + COL_W * c as f64, 8.0 + ROW_H * rows[c] as f64);
        rows[c] += 1;
    }
    let width = 16.0 + COL_W * rows.len() as f64;
    let height = 16.0 + ROW_H * rows.iter().max().copied().unwrap_or(1) as f64;
    let mut s = String::new();
    let _ = write!(
        s,
        "<div class=\"scroll\"><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         role=\"img\" aria-label=\"graph of {} steps\">",
        run.steps.len()
    );
    for &(a, b, after) in &edges {
        let ((ax, ay), (bx, by)) = (place[a], place[b]);
        let (x1, y1, x2, y2) = (ax + NODE_W, ay + 11.0, bx, by + 11.0);
        let mid = (x1 + x2) / 2.0;
        let _ = write!(
            s,
            "<path class=\"edge{}\" d=\"M{x1:.1},{y1:.1} C{mid:.1},{y1:.1} {mid:.1},{y2:.1} {x2:.1},{y2:.1}\"/>",
            if after { " after" } else { "" }
        );
    }
    for (i, step) in run.steps.iter().enumerate() {
        let (x, y) = place[i];
        let class = class_of(step);
        let _ = write!(
            s,
            "<a href=\"#{}\"><g class=\"node {class}\"><rect class=\"{class}\" x=\"{x:.1}\" y=\"{y:.1}\" \
             width=\"{NODE_W}\" height=\"22\"/><text x=\"{:.1}\" y=\"{:.1}\">{}</text><title>{}: {}</title></g></a>",
            anchor(&step.id),
            x + 6.0,
            y + 15.0,
            esc(&clip_start(&step.id, 24)),
            esc(&step.id),
            step.status.as_str()
        );
    }
    s.push_str("</svg></div>");
    s
}
