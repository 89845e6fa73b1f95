//! Deployments: putting a new version of a long-running service in front of its
//! users without failing a request, proving it, and taking it back safely.
//! A deployment drives instances (containers or commands that outlive the
//! run), plugins in their roles (health checks, traffic switches), the public
//! URL (verify, probe) and the kernel's connection table (drain), and records
//! every phase in the journal before acting on it.
//!
//! The rest of pipe sees a [`DeployRun`] (rendered by `run/`) and the entry
//! points here; this module knows nothing of the scheduler.

mod actions;
mod analysis;
mod canary;
mod command_instance;
mod drain;
mod driver;
mod error;
mod http;
mod instance;
pub mod journal;
mod notify;
mod ports;
mod probe;
mod roles;
mod rolling;
mod switch;
#[cfg(test)]
mod tests;
mod verify;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

pub use analysis::AnalysisRun;
pub use command_instance::CommandInstance;
pub use error::DeployError;
pub use instance::{CHECKOUT_LABEL, DockerInstance, Instance, InstanceRun, Status, checkout_id};
pub use journal::{Journal, JournalStore, Verdict};
pub use notify::NotifyRun;
pub use probe::ProbeReport;
pub use roles::{PluginRole, Role, RoleRun};
pub use verify::VerifyRun;

use crate::lang::model::{CanaryStep, Rolling};
use crate::step::{Exit, StepLog, outputs};

/// A deployment ready to run: every template rendered, every plugin prepared.
#[derive(Debug)]
pub struct DeployRun {
    pub pipeline: String,
    pub name: String,
    /// The deploy step's id.
    pub step: String,
    pub strategy: StrategyRun,
    pub version: String,
    pub run_id: String,
    pub git_sha: String,
    /// Step outputs the deployment read: recorded with the release, to deploy it again later.
    pub inputs: BTreeMap<String, String>,
    pub slots: Vec<SlotRun>,
    pub health: RoleRun,
    pub traffic: RoleRun,
    pub verify: Option<VerifyRun>,
    pub drain: Duration,
    pub keep_previous: Duration,
    /// Who may promote or abort a canary waiting for a person (`None`: anyone
    /// who can write the gate's files).
    pub approvers: Option<std::sync::Arc<crate::approval::signers::AllowedSigners>>,
    pub probe: Option<ProbeRun>,
    pub notify: Vec<NotifyRun>,
    /// The instances of the release that was live when this deployment was
    /// rendered, by slot: what a rolling deployment starts again to roll back.
    pub previous: Option<PreviousRun>,
    pub journal: JournalStore,
    /// Where `.pipe/` lives (for the deploy lock).
    pub root: PathBuf,
    /// How people see the logs of this run.
    pub logs: String,
    /// Where the step's outputs and its report go, when it runs as a step.
    pub output_file: Option<PathBuf>,
}

/// How traffic moves, with what each strategy needs at run time.
#[derive(Debug)]
pub enum StrategyRun {
    BlueGreen,
    Rolling(Rolling),
    Canary(Box<CanaryRun>),
}

impl StrategyRun {
    pub fn name(&self) -> &'static str {
        match self {
            StrategyRun::BlueGreen => "blue-green",
            StrategyRun::Rolling(_) => "rolling",
            StrategyRun::Canary(_) => "canary",
        }
    }
}

#[derive(Debug)]
pub struct CanaryRun {
    pub steps: Vec<CanaryStep>,
    pub analysis: Option<AnalysisRun>,
}

#[derive(Debug)]
pub struct PreviousRun {
    pub version: String,
    pub instances: BTreeMap<String, InstanceRun>,
}

impl DeployRun {
    /// What starts `version` in `slot`: this deployment's instance, or the
    /// previous release's (rolling back a rolling deployment).
    fn instance_for(&self, slot: &SlotRun, version: &str) -> Result<InstanceRun, DeployError> {
        if version == self.version {
            return Ok(slot.instance.clone());
        }
        self.previous
            .as_ref()
            .filter(|p| p.version == version)
            .and_then(|p| p.instances.get(&slot.name).cloned())
            .ok_or_else(|| {
                DeployError::Refused(format!(
                    "cannot start {version} again: this deployment knows only {} and the release that was live",
                    self.version
                ))
            })
    }
}

#[derive(Clone, Debug)]
pub struct SlotRun {
    pub name: String,
    pub port: u16,
    pub instance: InstanceRun,
}

impl SlotRun {
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

#[derive(Clone, Debug)]
pub struct ProbeRun {
    pub url: String,
    pub rate: u32,
    pub max_failures: u64,
}

/// What a deployment did, kept in the step's record.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub strategy: String,
    pub version: String,
    pub outcome: DeployOutcome,
    /// The slot(s) of the new version, comma-separated.
    pub slot: String,
    pub from: Option<String>,
    pub phases: Vec<PhaseReport>,
    pub probe: Option<ProbeReport>,
    /// Why it was rolled back or failed.
    pub reason: Option<String>,
    /// From the healthy new slot handed to the switch to its first answer
    /// through the public URL (`verify`), or without one to the traffic
    /// switch's confirmation, in milliseconds.
    pub switch_ms: Option<f64>,
    /// Every analysis verdict, oldest first.
    pub verdicts: Vec<Verdict>,
    /// What the engine itself spent beyond the configured waits (pauses,
    /// drains): per rolling batch or canary step, in milliseconds.
    pub overhead_ms: Vec<f64>,
}

/// How a deployment (or a command acting on one) ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeployOutcome {
    Deployed,
    RolledBack,
    #[default]
    Failed,
    /// pipe was stopped: the journal keeps the phase for `resume` or `rollback`.
    Interrupted,
    Stopped,
}

impl DeployOutcome {
    pub fn name(self) -> &'static str {
        match self {
            DeployOutcome::Deployed => "deployed",
            DeployOutcome::RolledBack => "rolled-back",
            DeployOutcome::Failed => "failed",
            DeployOutcome::Interrupted => "interrupted",
            DeployOutcome::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for DeployOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    pub ms: u64,
    pub note: String,
}

/// The `deploy` step: deploys the new version, rolling back on any failure.
pub async fn run(d: &DeployRun, log: &StepLog, cancel: &CancellationToken) -> Exit {
    let (result, report) = actions::deploy(d, log, cancel).await;
    finish_step(d, log, result, report)
}

/// Deploys a release again (a rollback to a release no longer kept running).
pub async fn redeploy(d: &DeployRun, log: &StepLog, cancel: &CancellationToken) -> (Result<(), DeployError>, Report) {
    actions::deploy(d, log, cancel).await
}

/// `pipe deploy stop`: stops every instance of the deployment (the proxy is
/// not told): the service is taken down, and the journal says so.
pub async fn stop(d: &DeployRun, log: &StepLog) -> Result<(), DeployError> {
    actions::stop_all(d, log).await
}

/// `pipe deploy resume`: finishes what a killed `pipe` left in progress.
pub async fn resume(d: &DeployRun, log: &StepLog, cancel: &CancellationToken) -> (Result<(), DeployError>, Report) {
    actions::resume(d, log, cancel).await
}

/// `pipe deploy rollback`: undoes what is in progress, or goes back to the
/// kept previous release.
pub async fn rollback(d: &DeployRun, log: &StepLog, cancel: &CancellationToken) -> (Result<(), DeployError>, Report) {
    actions::rollback(d, log, cancel).await
}

fn finish_step(d: &DeployRun, log: &StepLog, result: Result<(), DeployError>, report: Report) -> Exit {
    if let Some(probe) = &report.probe {
        probe.lines().iter().for_each(|l| log.note(l));
    }
    if let Some(file) = &d.output_file {
        let mut out = BTreeMap::new();
        out.insert("version".to_string(), report.version.clone());
        out.insert("slot".to_string(), report.slot.clone());
        if let Some(from) = &report.from {
            out.insert("previous-slot".to_string(), from.clone());
        }
        if let Some(slot) = d.slots.iter().find(|s| s.name == report.slot) {
            out.insert("port".to_string(), slot.port.to_string());
        }
        let written = std::fs::write(file, outputs::render(&out)).and_then(|()| {
            std::fs::write(outputs::details_path(file), serde_json::to_vec(&report).unwrap_or_default())
        });
        if let Err(e) = written {
            return Exit::Error(format!("cannot record the deployment's outputs: {e}"));
        }
    }
    match result {
        Ok(()) => Exit::Code(0),
        Err(DeployError::Cancelled) => Exit::Cancelled,
        Err(e) => Exit::Failed(e.to_string()),
    }
}
