//! The Docker Engine as pipe uses it, below the executors and deployments that
//! share it: one client, names and labels for what pipe creates, images, log
//! streams, and the collector that removes what dead runs left behind.

mod build;
mod error;
mod gc;
mod ignore;
mod image;
mod logs;
mod registry;

use std::collections::HashMap;

use bollard::Docker;
use tokio::sync::OnceCell;

pub use crate::identity::Identity;
pub use build::build;
pub use error::DockerError;
pub use gc::collect_garbage;
pub use ignore::DockerIgnore;
pub use image::{ensure_image, split_tag};
pub use logs::{lines, pump, tail};
pub use registry::{check_reachable, push};

static CLIENT: OnceCell<Result<Docker, DockerError>> = OnceCell::const_new();

/// The Docker Engine named by `DOCKER_HOST` (or the local socket), checked once.
pub async fn client() -> Result<&'static Docker, DockerError> {
    CLIENT
        .get_or_init(|| async {
            let endpoint = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
            let unreachable = |e: bollard::errors::Error| DockerError::Unreachable {
                endpoint: endpoint.clone(),
                reason: e.to_string(),
            };
            let docker = Docker::connect_with_defaults().map_err(unreachable)?;
            let docker = docker.negotiate_version().await.map_err(unreachable)?;
            docker.ping().await.map_err(unreachable)?;
            Ok(docker)
        })
        .await
        .as_ref()
        .map_err(Clone::clone)
}

/// A Docker object name from pipe's ids: run ids and matrix steps hold
/// characters (`[`, `,`) that Docker names may not.
pub fn docker_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '-' }).collect()
}

/// The labels on everything a run creates: what `pipe gc` and the next run use
/// to find leftovers of dead runs. `role` is e.g. `("pipe.step", id)`. Besides
/// the run and the pid, they say whose process that pid is (boot, PID
/// namespace, user), so that a run elsewhere is never mistaken for a dead one.
pub fn labels(run_id: &str, pipeline: &str, role: (&str, &str)) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = [("pipe.run", run_id), ("pipe.pipeline", pipeline), role]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.extend(Identity::current().labels());
    labels
}
