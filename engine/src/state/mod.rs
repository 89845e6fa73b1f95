//! What outlives a run, under `.pipe/`: run records and step logs (`runs/`),
//! the per-pipeline key-value state (`state/`), and the lock that keeps two runs
//! of one pipeline apart (`locks/`). Every write is atomic (write, then rename).

pub mod atomic;
pub mod lock;
pub mod record;
pub mod retention;
pub mod store;

use std::path::PathBuf;

use miette::Diagnostic;
use thiserror::Error;

pub use atomic::write_atomic;
pub use lock::RunLock;
pub use record::{GraphEdge, RunRecord, RunStatus, Status, StepRecord, Timing};
pub use store::{StateLock, StateStore};

#[derive(Debug, Error, Diagnostic)]
pub enum StateError {
    #[error("cannot {action} {}: {source}", path.display())]
    #[diagnostic(code(state::io))]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} is not a valid record: {source}", path.display())]
    #[diagnostic(code(state::corrupt), help("move the file away; pipe rewrites it on the next run"))]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("pipeline `{pipeline}` is already running{holder}")]
    #[diagnostic(code(state::locked), help("wait for it to finish, or pass --wait to queue behind it"))]
    Locked { pipeline: String, holder: String },

    #[error("state `{key}` refused: {reason}")]
    #[diagnostic(code(state::limit))]
    Limit { key: String, reason: String },

    #[error("no run `{0}`")]
    #[diagnostic(code(state::unknown_run), help("`pipe runs` lists the recorded runs"))]
    UnknownRun(String),
}

impl StateError {
    pub fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StateError {
        let path = path.into();
        move |source| StateError::Io { action, path, source }
    }
}

/// File names for pipeline and step names: anything but a path separator.
pub fn file_safe(name: &str) -> String {
    name.chars().map(|c| if c == '/' || c == '\0' || c == '\\' { '_' } else { c }).collect()
}
