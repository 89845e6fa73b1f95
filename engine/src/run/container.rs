//! The container executor: a `run` step inside a Docker container, through the
//! Engine API (bollard). The workspace is bind-mounted at `/workspace`, outputs
//! at `/pipe/outputs`; stdout and stderr stream live into the step's log; the
//! container is removed however the step ends. Everything carries `pipe.*` labels.

use std::collections::HashMap;
use std::path::PathBuf;

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions, StopContainerOptions};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::docker::{self, DockerError, ensure_image, pump};
use crate::lang::model::PullPolicy;
use crate::step::{Exit, StepLog};

/// Where the workspace and outputs appear inside a container.
pub const WORKSPACE: &str = "/workspace";
pub const OUTPUTS: &str = "/pipe/outputs";
/// Seconds between SIGTERM and SIGKILL when a container step is cancelled.
const STOP_GRACE: i32 = 5;

#[derive(Clone, Debug)]
pub struct ContainerRun {
    pub name: String,
    pub image: String,
    pub pull: PullPolicy,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub user: Option<String>,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub network: Option<String>,
    /// Host directories: the pipeline's directory and the run's outputs.
    pub workspace: PathBuf,
    pub outputs: PathBuf,
    /// The working directory inside the container.
    pub workdir: String,
    pub labels: HashMap<String, String>,
    /// Swarm placement constraints (the Swarm executor only).
    pub placement: Vec<String>,
    /// The registry the swarm's nodes pull from: the workspace is shipped
    /// through it (the Swarm executor only).
    pub registry: Option<String>,
    /// pipe's own files (the state root, secrets files): never shipped to a
    /// worker, never written back from one.
    pub private: Vec<PathBuf>,
}

impl ContainerRun {
    /// The engine, with the step's image on it (pulled as `pull` says).
    pub async fn engine(&self, log: &StepLog, cancel: &CancellationToken) -> Result<&'static Docker, DockerError> {
        let docker = docker::client().await?;
        ensure_image(docker, &self.image, self.pull, log, cancel).await?;
        Ok(docker)
    }
}

pub async fn run(spec: &ContainerRun, log: &StepLog, cancel: &CancellationToken) -> Exit {
    let docker = match spec.engine(log, cancel).await {
        Ok(d) => d,
        Err(e) => return e.into(),
    };
    let created = docker
        .create_container(
            Some(CreateContainerOptions { name: Some(spec.name.clone()), ..Default::default() }),
            body(spec),
        )
        .await;
    let id = match created {
        Ok(c) => c.id,
        Err(e) => return Exit::Error(format!("cannot create a container of `{}`: {e}", spec.image)),
    };
    let exit = run_created(docker, &id, log, cancel).await;
    let removed =
        docker.remove_container(&id, Some(RemoveContainerOptions { force: true, v: true, ..Default::default() })).await;
    if let Err(e) = removed {
        log.note(&format!("could not remove container {}: {e}", spec.name));
    }
    exit
}

async fn run_created(docker: &Docker, id: &str, log: &StepLog, cancel: &CancellationToken) -> Exit {
    if let Err(e) = docker.start_container(id, None).await {
        return Exit::Error(format!("cannot start the container: {e}"));
    }
    // Output is read while waiting, so a chatty container never blocks.
    let (exit, ()) = tokio::join!(
        async {
            tokio::select! {
                exit = exit_status(docker, id) => exit,
                () = cancel.cancelled() => {
                    let stop = StopContainerOptions { t: Some(STOP_GRACE), ..Default::default() };
                    let _ = docker.stop_container(id, Some(stop)).await;
                    Exit::Cancelled
                }
            }
        },
        // The log stream ends when the container stops (on its own, or stopped above).
        pump(docker, id, log)
    );
    exit
}

/// pipe's own files inside the mounted workspace (the state root `.pipe/`,
/// secrets files), as paths in the container: files to cover with an empty
/// one, directories with an empty read-only tmpfs. A step in a container can
/// then neither read pipe's state nor write a lie into it (a cache entry, a
/// decision, a journal). What does not exist is left alone: Docker would
/// create the mount point in the workspace, owned by root.
fn hidden(spec: &ContainerRun) -> (Vec<String>, Vec<String>) {
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    let workspace = crate::plugin::grants::absolute(&spec.workspace);
    for path in &spec.private {
        let Ok(rel) = path.strip_prefix(&workspace) else { continue };
        let Some(rel) = rel.to_str().filter(|r| !r.is_empty() && !r.contains(':')) else { continue };
        let inside = format!("{WORKSPACE}/{rel}");
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => dirs.push(inside),
            Ok(m) if m.is_file() => files.push(inside),
            _ => {}
        }
    }
    (files, dirs)
}

async fn exit_status(docker: &Docker, id: &str) -> Exit {
    match docker.wait_container(id, None).next().await {
        Some(Ok(r)) => Exit::Code(i32::try_from(r.status_code).unwrap_or(-1)),
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => {
            Exit::Code(i32::try_from(code).unwrap_or(-1))
        }
        Some(Err(e)) => Exit::Error(format!("lost the container: {e}")),
        None => Exit::Error("lost the container".into()),
    }
}

fn body(spec: &ContainerRun) -> ContainerCreateBody {
    let mut binds =
        vec![format!("{}:{WORKSPACE}", spec.workspace.display()), format!("{}:{OUTPUTS}", spec.outputs.display())];
    let (files, dirs) = hidden(spec);
    binds.extend(files.into_iter().map(|path| format!("/dev/null:{path}:ro")));
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(spec.cmd.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: Some(spec.workdir.clone()),
        user: spec.user.clone(),
        labels: Some(spec.labels.clone()),
        host_config: Some(HostConfig {
            binds: Some(binds),
            tmpfs: (!dirs.is_empty()).then(|| dirs.into_iter().map(|d| (d, "ro,size=4k".to_string())).collect()),
            memory: spec.memory.and_then(|m| i64::try_from(m).ok()),
            nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
            network_mode: spec.network.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}
