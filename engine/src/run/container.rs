//! The container executor: a `run` step inside a Docker container, through the
//! Engine API (bollard). The workspace is bind-mounted at `/workspace`, outputs
//! at `/pipe/outputs`; stdout and stderr stream live into the step's log; the
//! container is removed however the step ends. Everything carries `pipe.*` labels.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, LogsOptions, RemoveContainerOptions, StopContainerOptions,
};
use futures_util::StreamExt;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::event::Stream;
use super::executor::Exit;
use super::log::StepLog;
use crate::lang::model::PullPolicy;

/// Where the workspace and outputs appear inside a container.
pub const WORKSPACE: &str = "/workspace";
pub const OUTPUTS: &str = "/pipe/outputs";
/// A pull that has not finished by then has failed: no hangs without a registry.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);
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
}

/// A Docker object name from pipe's ids: run ids and matrix steps hold
/// characters (`[`, `,`) that Docker names may not.
pub fn docker_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "_.-".contains(c) { c } else { '-' }).collect()
}

/// The labels on everything a run creates: what `pipe gc` and the next run use
/// to find leftovers of dead runs (`pipe.pid`). `role` is e.g. `("pipe.step", id)`.
pub fn labels(run_id: &str, pipeline: &str, role: (&str, &str)) -> HashMap<String, String> {
    [("pipe.run", run_id), ("pipe.pipeline", pipeline), role, ("pipe.pid", &std::process::id().to_string())]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

static CLIENT: OnceCell<Result<Docker, String>> = OnceCell::const_new();

/// The Docker Engine named by `DOCKER_HOST` (or the local socket), checked once.
pub async fn client() -> Result<&'static Docker, String> {
    CLIENT
        .get_or_init(|| async {
            let endpoint = std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
            let unreachable = |e: bollard::errors::Error| format!("cannot reach the Docker Engine at {endpoint}: {e}");
            let docker = Docker::connect_with_defaults().map_err(unreachable)?;
            let docker = docker.negotiate_version().await.map_err(unreachable)?;
            docker.ping().await.map_err(unreachable)?;
            Ok(docker)
        })
        .await
        .as_ref()
        .map_err(Clone::clone)
}

pub async fn run(spec: &ContainerRun, log: &StepLog, cancel: &CancellationToken) -> Exit {
    let docker = match client().await {
        Ok(d) => d,
        Err(e) => return Exit::Error(e),
    };
    if let Err(e) = ensure_image(docker, &spec.image, spec.pull, log).await {
        return Exit::Error(e);
    }
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

/// Streams the container's output into the log, demultiplexed, line by line.
pub async fn pump(docker: &Docker, id: &str, log: &StepLog) {
    let options = LogsOptions { follow: true, stdout: true, stderr: true, ..Default::default() };
    let mut stream = docker.logs(id, Some(options));
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(Ok(chunk)) = stream.next().await {
        let (buf, kind) = match chunk {
            LogOutput::StdErr { message } => {
                err.extend_from_slice(&message);
                (&mut err, Stream::Stderr)
            }
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                out.extend_from_slice(&message);
                (&mut out, Stream::Stdout)
            }
            LogOutput::StdIn { .. } => continue,
        };
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            log.line(kind, String::from_utf8_lossy(&line[..i]).trim_end_matches('\r'));
        }
    }
    for (buf, kind) in [(out, Stream::Stdout), (err, Stream::Stderr)] {
        if !buf.is_empty() {
            log.line(kind, &String::from_utf8_lossy(&buf));
        }
    }
}

fn body(spec: &ContainerRun) -> ContainerCreateBody {
    let binds =
        vec![format!("{}:{WORKSPACE}", spec.workspace.display()), format!("{}:{OUTPUTS}", spec.outputs.display())];
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(spec.cmd.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        working_dir: Some(spec.workdir.clone()),
        user: spec.user.clone(),
        labels: Some(spec.labels.clone()),
        host_config: Some(HostConfig {
            binds: Some(binds),
            memory: spec.memory.and_then(|m| i64::try_from(m).ok()),
            nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
            network_mode: spec.network.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub async fn ensure_image(docker: &Docker, image: &str, pull: PullPolicy, log: &StepLog) -> Result<(), String> {
    let present = match docker.inspect_image(image).await {
        Ok(_) => true,
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => false,
        Err(e) => return Err(format!("cannot inspect image `{image}`: {e}")),
    };
    let how = format!("build it (an `image-build` step, or `docker build -t {image} .`) or load it (`docker load`)");
    match (pull, present) {
        (PullPolicy::Never, false) => Err(format!("image `{image}` is not present and pull=\"never\": {how}")),
        (PullPolicy::Never, true) | (PullPolicy::IfMissing, true) => Ok(()),
        (PullPolicy::IfMissing, false) | (PullPolicy::Always, _) => {
            log.note(&format!("pulling {image}"));
            let options = CreateImageOptions { from_image: Some(image.to_string()), ..Default::default() };
            let pulled = tokio::time::timeout(PULL_TIMEOUT, async {
                let mut progress = docker.create_image(Some(options), None, None);
                while let Some(item) = progress.next().await {
                    item.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            })
            .await
            .unwrap_or_else(|_| Err(format!("no answer from the registry in {}s", PULL_TIMEOUT.as_secs())));
            match (pulled, present) {
                (Ok(()), _) => Ok(()),
                (Err(e), true) => {
                    log.note(&format!("pull failed ({e}); using the local {image}"));
                    Ok(())
                }
                (Err(e), false) => Err(format!("cannot pull image `{image}`: {e}; {how}")),
            }
        }
    }
}

/// Removes containers and networks that runs which no longer exist left behind
/// (a `pipe` killed outright cannot clean up after itself). Returns how many.
pub async fn collect_garbage(docker: &Docker) -> Result<usize, String> {
    use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions};
    let dead = |labels: Option<&HashMap<String, String>>| {
        labels.and_then(|l| l.get("pipe.pid")).and_then(|p| p.parse::<i32>().ok()).is_some_and(|pid| {
            pid != std::process::id() as i32 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_err()
        })
    };
    let filters: HashMap<String, Vec<String>> =
        [("label".to_string(), vec!["pipe.run".to_string()])].into_iter().collect();
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .map_err(|e| format!("cannot list containers: {e}"))?;
    let mut removed = 0;
    for c in containers.iter().filter(|c| dead(c.labels.as_ref())) {
        if let Some(id) = &c.id
            && docker
                .remove_container(id, Some(RemoveContainerOptions { force: true, v: true, ..Default::default() }))
                .await
                .is_ok()
        {
            removed += 1;
        }
    }
    // Swarm jobs: only a manager lists services; elsewhere there are none of ours.
    let services = docker
        .list_services(Some(bollard::query_parameters::ListServicesOptions {
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    for s in services.iter().filter(|s| dead(s.spec.as_ref().and_then(|spec| spec.labels.as_ref()))) {
        if let Some(id) = &s.id
            && docker.delete_service(id).await.is_ok()
        {
            removed += 1;
        }
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions { filters: Some(filters) }))
        .await
        .map_err(|e| format!("cannot list networks: {e}"))?;
    for n in networks.iter().filter(|n| dead(n.labels.as_ref())) {
        if let Some(id) = &n.id
            && docker.remove_network(id).await.is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}
