use miette::Diagnostic;
use thiserror::Error;

use super::secrets::SecretsError;
use crate::docker::DockerError;
use crate::state::StateError;

/// What stops a run before or around its steps (a step's own failure is its
/// record's business, not an error of the run).
#[derive(Debug, Error, Diagnostic)]
pub enum RunError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    State(#[from] StateError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Secrets(#[from] SecretsError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Docker(#[from] DockerError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Render(#[from] RenderError),

    #[error("service `{service}` was not healthy after {after}: `{check}` last gave {last}")]
    #[diagnostic(code(run::service_unhealthy))]
    Unhealthy { service: String, after: String, check: String, last: String },

    #[error("{} plugin problem(s); nothing was started", .0.len())]
    #[diagnostic(code(run::plugins))]
    Plugins(#[related] Vec<crate::plugin::PluginError>),

    #[error("internal error in pipe: {0}")]
    #[diagnostic(code(run::internal))]
    Internal(String),
}

/// A reference that has no value when a step is about to run.
#[derive(Clone, Debug, Error, Diagnostic)]
#[error("`{reference}`: {reason}")]
#[diagnostic(code(run::unresolved))]
pub struct RenderError {
    pub reference: String,
    pub reason: String,
}
