//! The one seam between scheduling and execution. The scheduler renders a step
//! into an [`Invocation`] and calls [`execute`]; a new step kind is a new
//! variant here and one executor module, and nothing changes in the scheduler.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::approve::ApproveRun;
use super::container::{self, ContainerRun};
use super::image::{self, ImageBuildRun};
use super::process::{self, ProcessSpec};
use crate::deploy::DeployRun;
use crate::plugin::PluginRun;
use crate::step::{Exit, StepLog};

/// A plugin never runs unbounded: five minutes unless its step says otherwise.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(300);

/// A step ready to execute: every template rendered, every path resolved.
#[derive(Debug)]
pub enum Invocation {
    Process(ProcessSpec),
    Container(Box<ContainerRun>),
    /// A container step as a Docker Swarm job.
    SwarmJob(Box<ContainerRun>),
    ImageBuild(Box<ImageBuildRun>),
    Plugin(Arc<PluginRun>),
    Deploy(Box<DeployRun>),
    Approve(ApproveRun),
}

impl Invocation {
    /// The timeout of a step that sets none.
    pub fn default_timeout(&self) -> Option<Duration> {
        matches!(self, Invocation::Plugin(_)).then_some(PLUGIN_TIMEOUT)
    }

    /// What the step cache keys on, besides inputs: everything that decides
    /// what the step does, except what differs in every run (its run id,
    /// where its outputs go). `None`: this kind is never cached.
    pub fn fingerprint(&self) -> Option<String> {
        let stable = |env: &[(String, String)]| -> Vec<(String, String)> {
            let mut env: Vec<(String, String)> = env
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "PIPE_RUN_ID" | "PIPE_OUTPUT" | "PIPE_WORKSPACE"))
                .cloned()
                .collect();
            env.sort();
            env
        };
        let text = match self {
            Invocation::Process(p) => {
                // Where the checkout is does not count, only the working
                // directory within the pipeline's: `pipe watch` checks each
                // branch out apart, and a branch may read the trusted one's cache.
                let workspace = p.env.iter().find(|(k, _)| k == "PIPE_WORKSPACE").map(|(_, v)| Path::new(v));
                let workdir = workspace.and_then(|w| p.workdir.strip_prefix(w).ok()).unwrap_or(&p.workdir);
                format!("process\0{:?}\0{:?}\0{:?}\0{:?}", p.program, p.args, workdir, stable(&p.env))
            }
            Invocation::Container(c) | Invocation::SwarmJob(c) => format!(
                "container\0{}\0{:?}\0{:?}\0{:?}\0{}\0{:?}\0{:?}\0{:?}\0{:?}",
                c.image,
                c.cmd,
                stable(&c.env),
                c.user,
                c.workdir,
                c.memory,
                c.cpus,
                key_network(c, matches!(self, Invocation::SwarmJob(_))),
                c.placement
            ),
            Invocation::Plugin(call) => format!(
                "plugin\0{}\0{:?}\0{:?}\0{:?}",
                call.plugin.resolved.sha256, call.input.config, call.input.env, call.workdir
            ),
            Invocation::ImageBuild(_) | Invocation::Deploy(_) | Invocation::Approve(_) => return None,
        };
        Some(text)
    }

    /// The image a container step runs: its digest is part of the cache key.
    pub fn image(&self) -> Option<&str> {
        match self {
            Invocation::Container(c) | Invocation::SwarmJob(c) => Some(&c.image),
            _ => None,
        }
    }

    /// Who a timeout is blamed on, besides the step: `name version` of a plugin.
    pub fn actor(&self) -> Option<String> {
        match self {
            Invocation::Plugin(call) => Some(call.plugin.label()),
            _ => None,
        }
    }
}

/// The network a container step joins, as far as the cache key goes: the
/// run's own network for its services is named after the run, new in every
/// run, so it counts as one name; a network the pipeline names counts as itself.
fn key_network(c: &ContainerRun, swarm: bool) -> Option<&str> {
    let run_id = c.env.iter().find(|(k, _)| k == "PIPE_RUN_ID").map(|(_, v)| v.as_str());
    c.network.as_deref().map(|n| match run_id {
        Some(id) if n == super::services::network_name(id, swarm) => "<the run's network>",
        _ => n,
    })
}

pub async fn execute(invocation: &Invocation, log: &StepLog, cancel: &CancellationToken) -> Exit {
    match invocation {
        Invocation::Process(spec) => process::run(spec, log, cancel).await,
        Invocation::Container(spec) => container::run(spec, log, cancel).await,
        Invocation::SwarmJob(spec) => super::swarm::run(spec, log, cancel).await,
        Invocation::ImageBuild(spec) => image::run(spec, log, cancel).await,
        Invocation::Plugin(call) => super::plugin::run(call, log, cancel).await,
        Invocation::Deploy(run) => crate::deploy::run(run, log, cancel).await,
        Invocation::Approve(gate) => super::approve::run(gate, log, cancel).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lang::model::PullPolicy;
    use crate::run::container::ContainerRun;

    fn container(run: &str, network: &str) -> Invocation {
        Invocation::Container(Box::new(ContainerRun {
            name: "n".into(),
            image: "busybox".into(),
            pull: PullPolicy::Never,
            cmd: vec!["true".into()],
            env: vec![("PIPE_RUN_ID".into(), run.into())],
            user: None,
            memory: None,
            cpus: None,
            network: Some(network.into()),
            workspace: "/w".into(),
            outputs: "/o".into(),
            workdir: "/workspace".into(),
            labels: Default::default(),
            placement: Vec::new(),
            registry: None,
            private: Vec::new(),
        }))
    }

    /// With service sidecars a step joins the run's own network, named after
    /// the run: such steps never hit the cache while the name was in the key.
    #[test]
    fn the_run_s_own_network_is_not_part_of_the_key() {
        let fp = |run: &str, network: &str| container(run, network).fingerprint();
        assert_eq!(fp("run-1", "pipe-run-1"), fp("run-2", "pipe-run-2"));
        assert_ne!(fp("run-1", "none"), fp("run-1", "host"));
        assert_ne!(fp("run-1", "pipe-run-1"), fp("run-1", "pipe-other"), "a network the pipeline names");
    }
}
