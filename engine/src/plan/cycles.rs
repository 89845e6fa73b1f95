//! Cycles in the step graph, found once per strongly connected component and
//! reported as the path a person would follow.

use std::collections::{HashMap, HashSet};

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};

use super::PlanError;
use crate::lang::Loc;

/// Every cycle in `g`, one per strongly connected component, as a closed path.
pub(super) fn cycles<N, E>(g: &DiGraph<N, E>) -> Vec<Vec<NodeIndex>> {
    let mut out = Vec::new();
    for scc in tarjan_scc(g) {
        let start = scc[0];
        let self_loop = g.find_edge(start, start).is_some();
        if scc.len() == 1 && !self_loop {
            continue;
        }
        if self_loop {
            out.push(vec![start, start]);
            continue;
        }
        // Breadth-first inside the component from `start` back to itself.
        let inside: HashSet<NodeIndex> = scc.iter().copied().collect();
        let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        'search: while let Some(n) = queue.pop_front() {
            for next in g.neighbors_directed(n, Direction::Outgoing) {
                if next == start {
                    let mut path = vec![n];
                    let mut cur = n;
                    while cur != start {
                        cur = parent[&cur];
                        path.push(cur);
                    }
                    path.reverse();
                    path.push(start);
                    out.push(path);
                    break 'search;
                }
                if inside.contains(&next) && !parent.contains_key(&next) {
                    parent.insert(next, n);
                    queue.push_back(next);
                }
            }
        }
    }
    out
}

/// Edges run from a dependency to its dependent; the message reads the other
/// way, `a → b` meaning "a needs b", as users write it.
pub(super) fn cycle_error(names: &[&str], loc: &Loc) -> PlanError {
    let path: Vec<&str> = names.iter().rev().copied().collect();
    PlanError::CircularDependency { path: path.join(" → "), src: loc.src.named(), span: loc.span }
}
