use std::path::Path;

use miette::Diagnostic;
use thiserror::Error;

use crate::docker::DockerError;
use crate::state::StateError;

/// Why a deployment (or a phase of it) failed.
#[derive(Debug, Error, Diagnostic)]
pub enum DeployError {
    #[error("{what} died: {how}{}", last_lines(.last))]
    #[diagnostic(code(deploy::instance_died))]
    Died { what: String, how: String, last: Vec<String> },

    #[error("{address} was not healthy after {checks} check(s): {last}")]
    #[diagnostic(code(deploy::unhealthy))]
    Unhealthy { address: String, checks: u32, last: String },

    #[error("{0}")]
    #[diagnostic(code(deploy::instance))]
    Instance(String),

    #[error("the traffic switch failed: {0}")]
    #[diagnostic(code(deploy::switch))]
    Switch(String),

    #[error("{0}")]
    #[diagnostic(code(deploy::verify))]
    Verify(String),

    #[error("the probe saw {failures} failed request(s) (at most {max} allowed)")]
    #[diagnostic(code(deploy::probe))]
    Probe { failures: u64, max: u64 },

    #[error("the analysis failed the canary: {0}")]
    #[diagnostic(code(deploy::analysis))]
    Analysis(String),

    #[error("aborted by {by}{}", .reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    #[diagnostic(code(deploy::aborted))]
    Aborted { by: String, reason: Option<String> },

    #[error("no one promoted the canary within {0}")]
    #[diagnostic(code(deploy::not_promoted))]
    NotPromoted(String),

    #[error("{0}")]
    #[diagnostic(code(deploy::unfinished), help("see it with `pipe deploy status`"))]
    Unfinished(String),

    #[error("{0}")]
    #[diagnostic(code(deploy::refused))]
    Refused(String),

    #[error("cancelled")]
    #[diagnostic(code(deploy::cancelled))]
    Cancelled,

    #[error(transparent)]
    #[diagnostic(transparent)]
    Docker(#[from] DockerError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    State(#[from] StateError),

    #[error("cannot {action} {path}: {source}")]
    #[diagnostic(code(deploy::io))]
    Io {
        action: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl DeployError {
    pub fn io(action: &'static str, path: &Path, source: std::io::Error) -> DeployError {
        DeployError::Io { action, path: path.display().to_string(), source }
    }
}

fn last_lines(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = lines.iter().map(|l| format!("\n  │ {l}")).collect();
    format!("; its last lines:{}", shown.concat())
}
