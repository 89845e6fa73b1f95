//! The plan: a pipeline model compiled into a petgraph DAG of steps, with matrix
//! stages expanded and every reference resolved. Knows nothing about tokio.

mod affected;
mod cycles;
pub mod error;
mod export;
pub mod limits;
mod planner;
mod select;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use petgraph::graph::{DiGraph, NodeIndex};

use crate::lang::Loc;
use crate::lang::interp::Template;
use crate::lang::model::{Action, Condition, ContainerSpec, Env, Executor, Retry, Secrets, Service, Trigger};

pub use affected::{Affected, PathFilter, absolute_glob, normalize};
pub use error::PlanError;
pub use export::GraphFormat;
pub use planner::{plan, templates_mut};

#[derive(Clone, Debug)]
pub struct Plan {
    pub pipeline: String,
    pub dir: PathBuf,
    pub secrets: Secrets,
    /// Sidecars of the pipeline and of its stages, started before the steps.
    pub services: Vec<Service>,
    pub graph: DiGraph<PlannedStep, Edge>,
    /// Stage instances in the order written (matrix stages expanded).
    pub stages: Vec<StageInstance>,
    /// Globs (relative to `dir`) of the files that make the pipeline affected.
    pub changes: Vec<String>,
    /// Branch globs whose new commits `pipe watch` runs it for.
    pub on_push: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct StageInstance {
    pub name: String,
    pub base: String,
    pub matrix: BTreeMap<String, String>,
    pub needs: Vec<String>,
    /// Its own `changes`, instead of the pipeline's.
    pub changes: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
pub struct PlannedStep {
    /// `stage.step`, `stage.on-failure.step` or `on-failure.step`: unique in the plan.
    pub id: String,
    /// The stage instance it belongs to; empty for pipeline hooks.
    pub stage: String,
    pub name: String,
    pub role: Role,
    pub action: Action,
    /// Pipeline env, then stage env, then step env: later entries win.
    pub env: Vec<Env>,
    pub matrix: BTreeMap<String, String>,
    pub when: Vec<Condition>,
    pub retry: Retry,
    pub timeout: Option<Duration>,
    pub continue_on_error: bool,
    pub workdir: Option<Template>,
    /// Where a `run` step executes: the innermost `container`, if any.
    pub container: Option<ContainerSpec>,
    /// Where that container runs: the local engine or a swarm.
    pub executor: Executor,
    pub cache: Option<crate::lang::model::Cache>,
    /// What its failure stops; `Stage` stops the steps of its stage as written
    /// (every matrix cell of it).
    pub fail_fast: crate::lang::model::FailFast,
    pub loc: Loc,
}

impl PlannedStep {
    /// Its stage as written: what the instances of a matrix share (`test` of `test[linux,1]`).
    pub fn stage_base(&self) -> &str {
        self.stage.split('[').next().unwrap_or(&self.stage)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Main,
    StageHook(Trigger),
    PipelineHook(Trigger),
}

impl Role {
    pub fn is_hook(self) -> bool {
        !matches!(self, Role::Main)
    }
}

/// How a step depends on another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    /// Runs only if the other succeeded (`needs`).
    Needs,
    /// Runs after the other has finished, whatever its outcome (hooks, `when step=`).
    After,
}

impl Plan {
    /// Every edge, by step id, as run records keep them.
    pub fn edges(&self) -> Vec<crate::state::GraphEdge> {
        self.graph
            .edge_indices()
            .filter_map(|e| {
                let (a, b) = self.graph.edge_endpoints(e)?;
                Some(crate::state::GraphEdge {
                    from: self.graph[a].id.clone(),
                    to: self.graph[b].id.clone(),
                    after: self.graph[e] == Edge::After,
                })
            })
            .collect()
    }

    pub fn step(&self, ix: NodeIndex) -> &PlannedStep {
        &self.graph[ix]
    }

    pub fn find(&self, id: &str) -> Option<NodeIndex> {
        self.graph.node_indices().find(|&i| self.graph[i].id == id)
    }

    /// Whether any step runs on a swarm: sidecars are then swarm services.
    pub fn on_swarm(&self) -> bool {
        self.graph.node_weights().any(|s| matches!(s.executor, crate::lang::model::Executor::Swarm(_)))
    }

    /// The registries swarm steps ship through, each once.
    pub fn registries(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .graph
            .node_weights()
            .filter_map(|s| match &s.executor {
                crate::lang::model::Executor::Swarm(swarm) => swarm.registry.clone(),
                crate::lang::model::Executor::Docker => None,
            })
            .collect();
        all.sort();
        all.dedup();
        all
    }

    /// Whether a run of the plan needs the Docker Engine: container steps,
    /// image builds or services.
    pub fn uses_docker(&self) -> bool {
        !self.services.is_empty()
            || self.graph.node_weights().any(|s| match &s.action {
                Action::Run(_) => s.container.is_some(),
                Action::ImageBuild(_) => true,
                Action::Deploy(d) => matches!(d.instance, crate::lang::model::Instance::Docker { .. }),
                Action::Plugin(_) | Action::Approve(_) => false,
            })
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }
}

#[cfg(test)]
mod tests;
