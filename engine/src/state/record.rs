//! Run records: `.pipe/runs/<run-id>/run.json` plus one log per step in `logs/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{StateError, file_safe, write_atomic};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Pending | Status::Running)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Succeeded => "succeeded",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
            Status::Cancelled => "cancelled",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    Interrupted,
}

impl RunStatus {
    pub fn exit_code(self) -> i32 {
        match self {
            RunStatus::Succeeded => 0,
            RunStatus::Running | RunStatus::Failed => 1,
            RunStatus::Interrupted => 130,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: String,
    pub pipeline: String,
    pub file: String,
    pub git_sha: String,
    pub git_branch: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub status: RunStatus,
    pub duration_ms: u64,
    pub pid: u32,
    pub steps: Vec<StepRecord>,
    /// The plan's edges, `[from, to]`: `to` needs `from` (or, with `after`,
    /// runs after it whatever its outcome). What the report draws.
    #[serde(default)]
    pub edges: Vec<GraphEdge>,
    /// What started it, when not a person: `pipe watch` and the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Trigger {
    /// `push`.
    pub kind: String,
    pub branch: String,
    pub commit: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after: bool,
}

/// When a step could start and when it ran, in milliseconds after the run started.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timing {
    /// Everything it needs was done (it may then wait for a free job slot).
    pub ready_ms: u64,
    /// Each attempt's start and end.
    pub attempts: Vec<[u64; 2]>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StepRecord {
    pub id: String,
    pub status: Status,
    /// A failure that `continue-on-error` lets through.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allowed_failure: bool,
    pub exit_code: Option<i32>,
    pub attempts: u32,
    pub duration_ms: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub outputs: BTreeMap<String, String>,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last log lines of a failed step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tail: Vec<String>,
    /// What ran, as shown to people (secrets masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// What the step kind reports besides outputs: a deployment's phases and
    /// its probe's numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timing: Option<Timing>,
}

impl StepRecord {
    pub fn pending(id: &str) -> StepRecord {
        StepRecord {
            id: id.to_string(),
            status: Status::Pending,
            allowed_failure: false,
            exit_code: None,
            attempts: 0,
            duration_ms: 0,
            outputs: BTreeMap::new(),
            reason: None,
            tail: Vec::new(),
            command: None,
            details: None,
            timing: None,
        }
    }

    pub fn counts_as_success(&self) -> bool {
        self.status == Status::Succeeded || (self.status == Status::Failed && self.allowed_failure)
    }

    /// A failure that counts against the run: not one that `continue-on-error` allows.
    pub fn is_failure(&self) -> bool {
        (self.status == Status::Failed && !self.allowed_failure) || self.status == Status::Cancelled
    }
}

pub fn runs_dir(root: &Path) -> PathBuf {
    root.join(".pipe").join("runs")
}

pub fn run_dir(root: &Path, id: &str) -> PathBuf {
    runs_dir(root).join(file_safe(id))
}

pub fn log_path(run_dir: &Path, step: &str) -> PathBuf {
    run_dir.join("logs").join(format!("{}.log", file_safe(step)))
}

impl RunRecord {
    pub fn save(&self, root: &Path) -> Result<(), StateError> {
        let path = run_dir(root, &self.id).join("run.json");
        let json =
            serde_json::to_vec_pretty(self).map_err(|source| StateError::Corrupt { path: path.clone(), source })?;
        write_atomic(&path, &json)
    }

    pub fn load(root: &Path, id: &str) -> Result<RunRecord, StateError> {
        let path = run_dir(root, id).join("run.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StateError::UnknownRun(id.to_string())),
            Err(e) => return Err(StateError::io("read", &path)(e)),
        };
        serde_json::from_slice(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Every recorded run, oldest first. Unreadable records are skipped, not fatal.
    pub fn list(root: &Path) -> Vec<RunRecord> {
        let Ok(dir) = std::fs::read_dir(runs_dir(root)) else { return Vec::new() };
        let mut ids: Vec<String> = dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        ids.sort();
        ids.iter().filter_map(|id| RunRecord::load(root, id).ok()).collect()
    }

    /// `last` names the newest run; otherwise an exact id or a unique prefix.
    pub fn find(root: &Path, id: &str) -> Result<RunRecord, StateError> {
        let runs = RunRecord::list(root);
        if id == "last" {
            return runs.into_iter().last().ok_or_else(|| StateError::UnknownRun(id.to_string()));
        }
        let matches: Vec<RunRecord> = runs.into_iter().filter(|r| r.id.starts_with(id)).collect();
        match matches.len() {
            1 => Ok(matches.into_iter().next().ok_or_else(|| StateError::UnknownRun(id.to_string()))?),
            _ => Err(StateError::UnknownRun(id.to_string())),
        }
    }

    /// A record still marked running whose process is gone was cut off.
    pub fn settle(mut self) -> RunRecord {
        if self.status == RunStatus::Running && !process_alive(self.pid) {
            self.status = RunStatus::Interrupted;
        }
        self
    }
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return false };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}
