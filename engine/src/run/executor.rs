//! The one seam between scheduling and execution. The scheduler renders a step
//! into an [`Invocation`] and calls [`execute`]; a new step kind (container,
//! plugin, deploy) is a new variant here and nothing changes in the scheduler.

use tokio_util::sync::CancellationToken;

use super::container::{self, ContainerRun};
use super::image::{self, ImageBuildRun};
use super::log::StepLog;
use super::process::{self, ProcessSpec};
use crate::plugin::{Host, PluginRun};

/// A step ready to execute: every template rendered, every path resolved.
#[derive(Debug)]
pub enum Invocation {
    Process(ProcessSpec),
    Container(Box<ContainerRun>),
    /// A container step as a Docker Swarm job.
    SwarmJob(Box<ContainerRun>),
    ImageBuild(Box<ImageBuildRun>),
    Plugin(Box<PluginRun>),
}

/// How one attempt ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    Cancelled,
    /// The step ran and reported a failure (a plugin's error).
    Failed(String),
    /// The step could not be run at all, or broke its sandbox's limits.
    Error(String),
}

impl Exit {
    pub fn success(&self) -> bool {
        *self == Exit::Code(0)
    }

    pub fn code(&self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(*c),
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Exit::Code(c) => format!("exit code {c}"),
            Exit::Signal(s) => format!("killed by signal {s}"),
            Exit::Cancelled => "cancelled".into(),
            Exit::Failed(e) | Exit::Error(e) => e.clone(),
        }
    }
}

pub async fn execute(invocation: &Invocation, log: &StepLog, cancel: &CancellationToken) -> Exit {
    match invocation {
        Invocation::Process(spec) => process::run(spec, log, cancel).await,
        Invocation::Container(spec) => container::run(spec, log, cancel).await,
        Invocation::SwarmJob(spec) => super::swarm::run(spec, log, cancel).await,
        Invocation::ImageBuild(spec) => image::run(spec, log, cancel).await,
        Invocation::Plugin(call) => match Host::global() {
            Ok(host) => host.run(call, log, cancel).await,
            Err(e) => Exit::Error(e.to_string()),
        },
    }
}
