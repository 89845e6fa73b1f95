//! A deployment acted on by hand (`pipe deploy resume|rollback|stop`) is a
//! run like any other: a record in `.pipe/runs/` (listed by `pipe runs`), the
//! command's log as its one step's log (`pipe logs`), and a report.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use crate::deploy::{DeployError, DeployRun, Report};
use crate::state::record::{RunRecord, RunStatus, Status, StepRecord, Timing, Trigger, log_path, run_dir};

/// Where the command's log goes: its run's log of the deploy step.
pub fn log_file(root: &Path, run: &DeployRun) -> PathBuf {
    log_path(&run_dir(root, &run.run_id), &run.step)
}

/// What the command was and how it went, for [`write`].
pub struct Acted<'a> {
    pub command: &'a str,
    pub file: String,
    pub started: (SystemTime, Instant),
    pub result: &'a Result<(), DeployError>,
    pub report: &'a Report,
    pub tail: Vec<String>,
}

/// Writes the record and the report; says why when it cannot (the command's
/// outcome stands either way).
pub fn write(root: &Path, run: &DeployRun, acted: Acted) -> Result<(), String> {
    let took = acted.started.1.elapsed();
    let (status, run_status, reason) = match acted.result {
        Ok(()) => (Status::Succeeded, RunStatus::Succeeded, None),
        Err(DeployError::Cancelled) => (Status::Cancelled, RunStatus::Interrupted, Some("cancelled".to_string())),
        Err(e) => (Status::Failed, RunStatus::Failed, Some(e.to_string())),
    };
    let details = serde_json::to_value(acted.report).ok();
    let step = StepRecord {
        status,
        exit_code: Some(i32::from(acted.result.is_err())),
        attempts: 1,
        duration_ms: took.as_millis() as u64,
        reason,
        tail: if acted.result.is_err() { acted.tail } else { Vec::new() },
        command: Some(acted.command.to_string()),
        details,
        timing: Some(Timing { ready_ms: 0, attempts: vec![[0, took.as_millis() as u64]] }),
        ..StepRecord::pending(&run.step)
    };
    let time = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
    let record = RunRecord {
        id: run.run_id.clone(),
        pipeline: run.pipeline.clone(),
        file: acted.file,
        git_sha: run.git_sha.clone(),
        git_branch: String::new(),
        started_at: time(acted.started.0),
        finished_at: Some(time(SystemTime::now())),
        status: run_status,
        duration_ms: took.as_millis() as u64,
        pid: std::process::id(),
        steps: vec![step],
        edges: Vec::new(),
        trigger: Some(Trigger { kind: acted.command.to_string(), branch: String::new(), commit: run.git_sha.clone() }),
    };
    record.save(root).map_err(|e| e.to_string())?;
    crate::report::write(root, &record).map_err(|e| e.to_string())?;
    Ok(())
}
