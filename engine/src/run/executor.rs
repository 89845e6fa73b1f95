//! The one seam between scheduling and execution. The scheduler renders a step
//! into an [`Invocation`] and calls [`execute`]; a new step kind is a new
//! variant here and one executor module, and nothing changes in the scheduler.

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

    /// Who a timeout is blamed on, besides the step: `name version` of a plugin.
    pub fn actor(&self) -> Option<String> {
        match self {
            Invocation::Plugin(call) => Some(call.plugin.label()),
            _ => None,
        }
    }
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
