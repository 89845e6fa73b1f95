//! Running a plan: the tokio scheduler and the executors behind one seam
//! ([`executor`]), the run's context (secrets, git, rendering), and the record
//! writer. Never re-reads KDL: it only sees a [`Plan`].

mod approve;
mod attempt;
pub mod cache;
pub mod container;
pub mod context;
mod error;
pub mod executor;
pub mod git;
pub mod image;
mod plugin;
pub mod process;
mod records;
mod render_deploy;
mod scheduler;
pub mod script;
pub mod secrets;
mod services;
mod standalone;
mod swarm;
pub mod trust;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::event::{Event, Events};
use crate::plan::Plan;
use crate::state::{RunLock, RunRecord, RunStatus, StateError, StepRecord};
pub use context::RunContext;
pub use error::{RenderError, RunError};
pub use records::RecordWriter;
use scheduler::Scheduler;
pub use standalone::deploy_alone;
pub use trust::Trust;

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
    /// Neither read nor write the step cache.
    pub no_cache: bool,
    /// Stage instances to leave out (`--affected`), with the reason.
    pub unaffected: std::collections::HashMap<String, String>,
    /// What started the run (`pipe watch`: a push), for its record.
    pub trigger: Option<crate::state::record::Trigger>,
    /// What the starter of the run knows of it (`pipe watch`: its branch).
    pub trust: Trust,
}

pub async fn run(plan: &Plan, opts: RunOptions, events: Events) -> Result<RunRecord, RunError> {
    let run_id = new_run_id(SystemTime::now(), std::process::id());
    // Waiting for another run's lock, asking git and reading secrets files
    // block: off the runtime thread, which the reporter shares.
    let (root, pipeline, id, wait) = (opts.root.clone(), plan.pipeline.clone(), run_id.clone(), opts.wait);
    let lock = blocking(move || RunLock::acquire(&root, &pipeline, &id, wait)).await?;
    // The run's time counts from here (after any `--wait` in the queue):
    // preparing plugins, images and services is part of it.
    let (started, started_at) = (Instant::now(), SystemTime::now());
    // One clear error before any step starts, not one per container step.
    let docker = if plan.uses_docker() {
        let docker = crate::docker::client().await?;
        match crate::docker::collect_garbage(docker).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed leftovers of dead runs"),
            Err(e) => tracing::warn!(error = %e, "could not look for leftovers of dead runs"),
        }
        for registry in plan.registries() {
            crate::docker::check_reachable(&registry).await?;
        }
        Some(docker)
    } else {
        None
    };
    let mut ctx = RunContext::prepare(plan, &opts.root, run_id.clone(), &opts.trust).await?;
    if opts.no_cache {
        ctx.cache = None;
    }
    let services = match (&docker, plan.services.is_empty()) {
        (Some(docker), false) => {
            let started = services::Services::start(docker, &ctx, &plan.services, plan.on_swarm()).await?;
            ctx.network = Some(started.network().to_string());
            Some(started)
        }
        _ => None,
    };
    let ctx = Arc::new(ctx);
    let mut record = RunRecord {
        id: run_id.clone(),
        pipeline: plan.pipeline.clone(),
        file: opts.file,
        git_sha: ctx.git.sha.clone(),
        git_branch: ctx.git.branch.clone(),
        started_at: humantime::format_rfc3339_millis(started_at).to_string(),
        finished_at: None,
        status: RunStatus::Running,
        duration_ms: 0,
        pid: std::process::id(),
        steps: plan.graph.node_weights().map(|s| StepRecord::pending(&s.id)).collect(),
        edges: plan.edges(),
        trigger: opts.trigger,
    };
    for dir in ["outputs", "logs"] {
        let dir = ctx.run_dir.join(dir);
        std::fs::create_dir_all(&dir).map_err(StateError::io("create", dir))?;
    }
    events.send(Event::RunStarted { run: Box::new(record.clone()), jobs: opts.jobs });
    let mut scheduler = Scheduler::new(plan, ctx.clone(), opts.jobs, events.clone());
    if let Some(earlier) = opts.rerun {
        scheduler = scheduler.reuse(earlier.steps);
    }
    scheduler = scheduler.unaffected(opts.unaffected);
    let (status, steps) = scheduler.run().await;
    if let (Some(docker), Some(services)) = (docker, services) {
        services.stop(docker).await;
    }
    record.status = status;
    record.steps = steps;
    record.duration_ms = started.elapsed().as_millis() as u64;
    record.finished_at = Some(humantime::format_rfc3339_millis(SystemTime::now()).to_string());
    let _ = std::fs::remove_dir(ctx.run_dir.join("outputs"));
    events.send(Event::RunFinished(Box::new(record.clone())));
    drop(lock);
    Ok(record)
}

/// Runs blocking work on tokio's blocking pool; a panic in it is an engine bug.
pub(crate) async fn blocking<T: Send + 'static, E: Into<RunError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, RunError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(RunError::Internal(e.to_string())),
    }
}

/// `20261124-061700.123-4f2a`: sorts by start time; the suffix mixes the
/// sub-millisecond clock, the pid and a per-process counter, so that runs
/// started in the same millisecond (by one process or several) differ.
fn new_run_id(now: SystemTime, pid: u32) -> String {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let stamp = humantime::format_rfc3339_millis(now).to_string();
    let compact: String = stamp.chars().filter(|c| !matches!(c, '-' | ':' | 'Z')).collect();
    let nanos = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one((nanos, pid, seq));
    format!("{}-{:04x}", compact.replace('T', "-"), hash & 0xffff)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::SystemTime;

    #[test]
    fn run_ids_of_one_millisecond_differ_by_pid_and_within_a_process() {
        let now = SystemTime::now();
        // The pids differ only in their low bits, as consecutive processes do.
        let ids: HashSet<String> = (0..64).map(|i| super::new_run_id(now, 4000 + i)).collect();
        assert!(ids.len() >= 60, "{} distinct of 64", ids.len());
        let same_pid: HashSet<String> = (0..64).map(|_| super::new_run_id(now, 4000)).collect();
        assert!(same_pid.len() >= 60, "{} distinct of 64", same_pid.len());
    }
}
