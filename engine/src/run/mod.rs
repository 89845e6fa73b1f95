//! Running a plan: the tokio scheduler, the executors behind one seam, secrets,
//! masking, outputs and logs. Never re-reads KDL: it only sees a [`Plan`].

mod attempt;
pub mod container;
pub mod context;
pub mod event;
pub mod executor;
pub mod git;
pub mod image;
pub mod log;
pub mod mask;
pub mod outputs;
pub mod process;
mod scheduler;
pub mod secrets;
mod services;
mod swarm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use miette::Diagnostic;
use thiserror::Error;

use crate::plan::Plan;
use crate::state::record::run_dir;
use crate::state::{RunLock, RunRecord, RunStatus, StateError, StepRecord};
pub use context::RunContext;
pub use event::{Event, Events, Stream};
use scheduler::Scheduler;

pub struct RunOptions {
    /// Where `.pipe/` lives (the repository root).
    pub root: PathBuf,
    /// The pipeline file, as the record names it.
    pub file: String,
    pub jobs: usize,
    /// Wait for another run of the same pipeline instead of failing.
    pub wait: bool,
    /// Steps that succeeded in this earlier run are not run again.
    pub rerun: Option<RunRecord>,
}

#[derive(Debug, Error, Diagnostic)]
pub enum RunError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    State(#[from] StateError),

    #[error("{0}")]
    #[diagnostic(code(run::secrets))]
    Secrets(String),

    #[error("{0}")]
    #[diagnostic(code(run::docker), help("start the Docker Engine, or point DOCKER_HOST at one"))]
    Docker(String),

    #[error("{} plugin problem(s); nothing was started", .0.len())]
    #[diagnostic(code(run::plugins))]
    Plugins(#[related] Vec<crate::plugin::PluginError>),
}

pub async fn run(plan: &Plan, opts: RunOptions, events: Events) -> Result<RunRecord, RunError> {
    let run_id = new_run_id();
    let _lock = RunLock::acquire(&opts.root, &plan.pipeline, &run_id, opts.wait)?;
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let secrets = secrets::load(&plan.secrets, &env).map_err(RunError::Secrets)?;
    let masker = mask::Masker::new(secrets.values().map(String::as_str));
    // One clear error before any step starts, not one per container step.
    let uses_docker = plan.graph.node_weights().any(|s| match s.action {
        crate::lang::model::Action::Run(_) => s.container.is_some(),
        crate::lang::model::Action::ImageBuild(_) => true,
        crate::lang::model::Action::Plugin(_) => false,
    });
    let docker = if uses_docker || !plan.services.is_empty() {
        let docker = container::client().await.map_err(RunError::Docker)?;
        match container::collect_garbage(docker).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed leftovers of dead runs"),
            Err(e) => tracing::warn!(error = %e, "could not look for leftovers of dead runs"),
        }
        Some(docker)
    } else {
        None
    };
    let plugins =
        crate::plugin::prepare(plan, &opts.root, crate::plugin::LockMode::Pin).await.map_err(RunError::Plugins)?;
    let mut ctx = RunContext {
        run_id: run_id.clone(),
        pipeline: plan.pipeline.clone(),
        root: opts.root.clone(),
        dir: plan.dir.clone(),
        run_dir: run_dir(&opts.root, &run_id),
        git: git::GitInfo::detect(&plan.dir),
        secrets,
        masker,
        env,
        programs: Default::default(),
        plugins,
        network: None,
    };
    let services = match (&docker, plan.services.is_empty()) {
        (Some(docker), false) => {
            let started = services::Services::start(docker, &ctx, &plan.services).await.map_err(RunError::Docker)?;
            ctx.network = Some(started.network.clone());
            Some(started)
        }
        _ => None,
    };
    let ctx = Arc::new(ctx);
    let started = Instant::now();
    let mut record = RunRecord {
        id: run_id.clone(),
        pipeline: plan.pipeline.clone(),
        file: opts.file,
        git_sha: ctx.git.sha.clone(),
        git_branch: ctx.git.branch.clone(),
        started_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        finished_at: None,
        status: RunStatus::Running,
        duration_ms: 0,
        pid: std::process::id(),
        steps: plan.graph.node_weights().map(|s| StepRecord::pending(&s.id)).collect(),
    };
    record.save(&opts.root)?;
    for dir in ["outputs", "logs"] {
        let dir = ctx.run_dir.join(dir);
        std::fs::create_dir_all(&dir).map_err(StateError::io("create", dir))?;
    }
    events.send(Event::RunStarted {
        run_id: run_id.clone(),
        pipeline: plan.pipeline.clone(),
        steps: plan.graph.node_weights().map(|s| s.id.clone()).collect(),
        jobs: opts.jobs,
    });
    let mut scheduler = Scheduler::new(plan, ctx.clone(), opts.jobs, events.clone());
    if let Some(earlier) = opts.rerun {
        scheduler = scheduler.reuse(earlier.steps);
    }
    let (status, steps) = scheduler.run().await;
    if let (Some(docker), Some(services)) = (docker, services) {
        services.stop(docker).await;
    }
    record.status = status;
    record.steps = steps;
    record.duration_ms = started.elapsed().as_millis() as u64;
    record.finished_at = Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
    record.save(&opts.root)?;
    let _ = std::fs::remove_dir(ctx.run_dir.join("outputs"));
    events.send(Event::RunFinished(record.clone()));
    Ok(record)
}

/// `20261124-061700.123-4f2a`: sorts by start time, unique across processes.
fn new_run_id() -> String {
    let now = SystemTime::now();
    let stamp = humantime::format_rfc3339_millis(now).to_string();
    let compact: String = stamp.chars().filter(|c| !matches!(c, '-' | ':' | 'Z')).collect();
    let nanos = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let salt = (nanos ^ std::process::id().rotate_left(16)) & 0xffff;
    format!("{}-{salt:04x}", compact.replace('T', "-"))
}
