//! Narrowing a plan: `pipe run --stage X` keeps X, what it needs, their hooks and
//! the pipeline's hooks; `--rerun-failed` is built on the same graph walk.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use petgraph::Direction;
use petgraph::graph::NodeIndex;
use petgraph::visit::{Dfs, EdgeRef, Reversed};

use super::{Plan, PlanError, Role};

impl Plan {
    /// Keeps the named stages (a matrix base name selects all its instances),
    /// every step they depend on, and the hooks that watch what is kept.
    pub fn select_stages(self, names: &[String]) -> Result<Plan, Box<PlanError>> {
        let mut roots = Vec::new();
        for name in names {
            let found: Vec<NodeIndex> = self
                .graph
                .node_indices()
                .filter(|&n| {
                    let s = &self.graph[n].stage;
                    s == name || s.strip_prefix(name.as_str()).is_some_and(|rest| rest.starts_with('['))
                })
                .collect();
            if found.is_empty() {
                let known: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
                return Err(Box::new(PlanError::UnknownStage {
                    name: name.clone(),
                    pipeline: self.pipeline.clone(),
                    known: known.join(", "),
                }));
            }
            roots.extend(found);
        }
        let mut keep: HashSet<NodeIndex> = HashSet::new();
        let reversed = Reversed(&self.graph);
        for root in roots {
            let mut dfs = Dfs::new(reversed, root);
            while let Some(n) = dfs.next(reversed) {
                // Pipeline hooks are added back below; never walk through them.
                if !matches!(self.graph[n].role, Role::PipelineHook(_)) {
                    keep.insert(n);
                }
            }
        }
        let kept_stages: HashSet<String> = keep.iter().map(|&n| self.graph[n].stage.clone()).collect();
        for n in self.graph.node_indices() {
            let step = &self.graph[n];
            let watches_kept = match step.role {
                Role::StageHook(_) => kept_stages.contains(&step.stage),
                Role::PipelineHook(_) => true,
                Role::Main => false,
            };
            if watches_kept {
                keep.insert(n);
            }
        }
        let graph = self.graph.filter_map(|n, step| keep.contains(&n).then(|| step.clone()), |_, e| Some(*e));
        let stages = self.stages.into_iter().filter(|s| kept_stages.contains(&s.name)).collect();
        Ok(Plan { graph, stages, ..self })
    }

    /// Steps in an order where every step comes after what it depends on and,
    /// where the graph leaves a choice, in the order they were written.
    pub fn topological(&self) -> Vec<NodeIndex> {
        let mut left: Vec<usize> =
            self.graph.node_indices().map(|n| self.graph.edges_directed(n, Direction::Incoming).count()).collect();
        let mut ready: BinaryHeap<Reverse<NodeIndex>> =
            self.graph.node_indices().filter(|n| left[n.index()] == 0).map(Reverse).collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(Reverse(n)) = ready.pop() {
            order.push(n);
            for next in self.graph.neighbors_directed(n, Direction::Outgoing) {
                left[next.index()] -= 1;
                if left[next.index()] == 0 {
                    ready.push(Reverse(next));
                }
            }
        }
        order
    }

    /// Direct dependencies of a step, as ids; an ordering-only dependency (a
    /// hook, a `when step=`) is marked `(after)`.
    pub fn needs_of(&self, n: NodeIndex) -> Vec<String> {
        let mut v: Vec<String> = self
            .graph
            .edges_directed(n, Direction::Incoming)
            .map(|e| {
                let id = &self.graph[e.source()].id;
                if *e.weight() == super::Edge::After { format!("{id} (after)") } else { id.clone() }
            })
            .collect();
        v.sort_unstable();
        v
    }
}
