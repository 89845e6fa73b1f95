use miette::Diagnostic;
use thiserror::Error;

const HOW: &str = "build it (an `image-build` step, or `docker build -t IMAGE .`) or load it (`docker load`)";

/// What can go wrong talking to the Docker Engine.
#[derive(Clone, Debug, Error, Diagnostic)]
pub enum DockerError {
    #[error("cannot reach the Docker Engine at {endpoint}: {reason}")]
    #[diagnostic(code(docker::unreachable), help("start the Docker Engine, or point DOCKER_HOST at one"))]
    Unreachable { endpoint: String, reason: String },

    #[error("image `{image}` is not present and pull=\"never\": {HOW}")]
    #[diagnostic(code(docker::image_missing))]
    ImageMissing { image: String },

    #[error("cannot pull image `{image}`: {reason}; {HOW}")]
    #[diagnostic(code(docker::pull))]
    Pull { image: String, reason: String },

    #[error("the build failed: {reason}")]
    #[diagnostic(code(docker::build))]
    Build { reason: String },

    #[error("cannot push image `{image}`: {reason}")]
    #[diagnostic(
        code(docker::push),
        help("is the registry running, and does the engine trust it (`insecure-registries` for plain HTTP)?")
    )]
    Push { image: String, reason: String },

    #[error("cannot reach the registry {registry}: {reason}")]
    #[diagnostic(
        code(docker::registry),
        help("start the registry, or fix `registry` in `executor \"swarm\"`: every swarm node pulls from it")
    )]
    Registry { registry: String, reason: String },

    #[error("`{reference}` is not an image reference: {reason}")]
    #[diagnostic(code(docker::reference))]
    Reference { reference: String, reason: String },

    /// An Engine API call that failed: what pipe was doing, and the engine's answer.
    #[error("cannot {action}: {reason}")]
    #[diagnostic(code(docker::api))]
    Api { action: String, reason: String },

    #[error("cancelled while {0}")]
    #[diagnostic(code(docker::cancelled))]
    Cancelled(&'static str),
}

impl DockerError {
    /// A failed API call, as `map_err(DockerError::api("create the container"))`.
    pub fn api(action: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> DockerError {
        let action = action.into();
        move |e| DockerError::Api { action, reason: e.to_string() }
    }
}

/// How a step that needed the engine ends when the engine said no.
impl From<DockerError> for crate::step::Exit {
    fn from(e: DockerError) -> Self {
        match &e {
            DockerError::Cancelled(_) => crate::step::Exit::Cancelled,
            DockerError::Build { .. } => crate::step::Exit::Failed(e.to_string()),
            _ => crate::step::Exit::error(e),
        }
    }
}
