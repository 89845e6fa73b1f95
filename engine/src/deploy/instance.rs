//! What runs in a slot, made to outlive the run that starts it: a container
//! with a restart policy (Docker, here), or whatever a `start` command leaves
//! running (`command_instance.rs`). Both say clearly when an instance died,
//! with its last lines.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions, StopContainerOptions};
use tokio_util::sync::CancellationToken;

use super::DeployError;
use crate::docker::{self, DockerError};
use crate::lang::model::PullPolicy;
use crate::step::StepLog;
use crate::step::process_group::ProcessGroup;

/// The label naming the checkout (a hash of its root path) a deploy container belongs to.
pub const CHECKOUT_LABEL: &str = "pipe.checkout";

/// The labels that together say a container was made by this deployment of
/// this checkout, by this user.
const OWNER_LABELS: [&str; 3] = ["pipe.deploy", CHECKOUT_LABEL, "pipe.uid"];

/// The value of [`CHECKOUT_LABEL`]: two checkouts of one repository, on one
/// machine, never share it.
pub fn checkout_id(root: &std::path::Path) -> String {
    use sha2::{Digest, Sha256};
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let digest = format!("{:x}", Sha256::digest(root.as_os_str().as_encoded_bytes()));
    digest[..16].to_string()
}

/// Lines of an instance's output shown when it dies.
pub(super) const LAST_LINES: usize = 15;

/// What runs in a slot, as a deployment drives it: the seam between the
/// deploy driver and Docker or the machine's processes (the driver's unit
/// tests put in-process fakes behind it).
#[async_trait::async_trait]
pub trait Instance: std::fmt::Debug + Send + Sync {
    /// Starts the instance; returns the process group a `command` instance runs in.
    async fn start(&self, log: &StepLog, cancel: &CancellationToken) -> Result<Option<ProcessGroup>, DeployError>;

    /// Stops it gracefully (SIGTERM, or its `stop` command), within `grace`.
    /// A recorded group that is not provably the one pipe started is not
    /// signalled: the error says so.
    async fn stop(&self, group: Option<&ProcessGroup>, grace: Duration) -> Result<(), DeployError>;

    async fn status(&self, group: Option<&ProcessGroup>) -> Status;

    /// The last lines it printed.
    async fn last_lines(&self) -> Vec<String>;

    /// What it runs, for the log: an image, or a start command.
    fn describe(&self) -> String;
}

/// A slot's instance, shared by the slot and the releases that name it.
pub type InstanceRun = std::sync::Arc<dyn Instance>;

#[derive(Clone, Debug)]
pub struct DockerInstance {
    /// `<pipeline>-<deploy>-<slot>-<checkout>`: two checkouts of one
    /// repository on one machine never share a container name.
    pub name: String,
    /// The name an older pipe gave the slot's container (without the checkout).
    pub legacy: Option<String>,
    pub image: String,
    pub pull: PullPolicy,
    /// The port inside the container, published on the slot's loopback port.
    pub port: u16,
    pub host_port: u16,
    pub env: Vec<(String, String)>,
    pub cmd: Option<String>,
    pub network: Option<String>,
    pub memory: Option<u64>,
    pub labels: HashMap<String, String>,
}

/// How an instance is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Running,
    /// It ended, or keeps restarting: how, in words.
    Dead(String),
}

#[async_trait::async_trait]
impl Instance for DockerInstance {
    async fn start(&self, log: &StepLog, cancel: &CancellationToken) -> Result<Option<ProcessGroup>, DeployError> {
        self.create(log, cancel).await.map(|()| None)
    }

    async fn stop(&self, _group: Option<&ProcessGroup>, grace: Duration) -> Result<(), DeployError> {
        self.remove(grace).await
    }

    async fn status(&self, _group: Option<&ProcessGroup>) -> Status {
        self.inspect().await
    }

    async fn last_lines(&self) -> Vec<String> {
        match docker::client().await {
            Ok(client) => docker::tail(client, &self.name, LAST_LINES).await,
            Err(_) => Vec::new(),
        }
    }

    fn describe(&self) -> String {
        format!("container {} ({})", self.name, self.image)
    }
}

impl DockerInstance {
    async fn create(&self, log: &StepLog, cancel: &CancellationToken) -> Result<(), DeployError> {
        let client = docker::client().await?;
        docker::ensure_image(client, &self.image, self.pull, log, cancel).await?;
        // A container of this name made by this deployment is a stopped (or
        // kept, not live) release of this slot; one made by anyone else is left alone.
        if self.existing(client, &self.name).await? {
            let remove = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            let _ = client.remove_container(&self.name, Some(remove)).await;
        }
        let port = format!("{}/tcp", self.port);
        let binding = PortBinding { host_ip: Some("127.0.0.1".into()), host_port: Some(self.host_port.to_string()) };
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: self.cmd.as_ref().map(|c| vec!["sh".into(), "-c".into(), c.clone()]),
            env: Some(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(self.labels.clone()),
            exposed_ports: Some(vec![port.clone()]),
            host_config: Some(HostConfig {
                port_bindings: Some([(port, Some(vec![binding]))].into_iter().collect()),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                    maximum_retry_count: None,
                }),
                memory: self.memory.and_then(|m| i64::try_from(m).ok()),
                network_mode: self.network.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(self.name.clone()), ..Default::default() };
        client
            .create_container(Some(options), body)
            .await
            .map_err(DockerError::api(format!("create container {} of `{}`", self.name, self.image)))?;
        client.start_container(&self.name, None).await.map_err(DockerError::api(format!("start {}", self.name)))?;
        Ok(())
    }

    /// Whether a container named `name` exists (made by this deployment); an
    /// error naming its owner if someone else made it.
    async fn existing(&self, client: &bollard::Docker, name: &str) -> Result<bool, DeployError> {
        let c = match client.inspect_container(name, None).await {
            Ok(c) => c,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(false),
            Err(e) => return Err(DockerError::api(format!("inspect {name}"))(e).into()),
        };
        let theirs = c.config.and_then(|c| c.labels).unwrap_or_default();
        let ours = OWNER_LABELS.iter().all(|k| self.labels.get(*k).is_some_and(|v| theirs.get(*k) == Some(v)));
        if ours {
            return Ok(true);
        }
        let owner = OWNER_LABELS
            .iter()
            .chain(&["pipe.host"])
            .map(|k| format!("{k}={}", theirs.get(*k).map_or("(none)", String::as_str)))
            .collect::<Vec<_>>()
            .join(", ");
        let mine = OWNER_LABELS
            .iter()
            .map(|k| format!("{k}={}", self.labels.get(*k).map_or("", String::as_str)))
            .collect::<Vec<_>>()
            .join(", ");
        Err(DeployError::Instance(format!(
            "container {name} exists and was not made by this deployment (its labels: {owner}; this \
             deployment's: {mine}): it is left untouched; remove or rename it if it is not needed"
        )))
    }

    /// Stops and removes this slot's container, and the one an older pipe
    /// named without the checkout (when this deployment made it).
    async fn remove(&self, grace: Duration) -> Result<(), DeployError> {
        let client = docker::client().await?;
        if let Some(legacy) = &self.legacy
            && matches!(self.existing(client, legacy).await, Ok(true))
        {
            remove_named(client, legacy, grace).await?;
        }
        if !self.existing(client, &self.name).await? {
            return Ok(());
        }
        remove_named(client, &self.name, grace).await
    }

    async fn inspect(&self) -> Status {
        let Ok(client) = docker::client().await else { return Status::Dead("the Docker Engine is unreachable".into()) };
        if let Err(e) = self.existing(client, &self.name).await {
            return Status::Dead(e.to_string());
        }
        match client.inspect_container(&self.name, None).await {
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                let restarts = c.restart_count.unwrap_or(0);
                if state.running == Some(true) && restarts == 0 && state.restarting != Some(true) {
                    return Status::Running;
                }
                // Restarting, its exit code is already the next start's.
                let mut how = match (restarts, state.exit_code) {
                    (0, Some(code)) => format!("exited with code {code}"),
                    (0, None) => "stopped".to_string(),
                    (n, _) => format!("exited and was restarted {n} time(s)"),
                };
                if state.oom_killed == Some(true) {
                    how.push_str(" (killed: out of memory)");
                }
                Status::Dead(how)
            }
            Err(_) => Status::Dead("its container is gone".into()),
        }
    }
}

/// Stops a container within `grace`, then removes it (gone already is fine).
async fn remove_named(client: &bollard::Docker, name: &str, grace: Duration) -> Result<(), DeployError> {
    let t = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
    let _ = client.stop_container(name, Some(StopContainerOptions { t: Some(t), ..Default::default() })).await;
    let remove = RemoveContainerOptions { force: true, v: true, ..Default::default() };
    match client.remove_container(name, Some(remove)).await {
        Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
        Err(e) => Err(DockerError::api(format!("remove {name}"))(e).into()),
    }
}

pub fn fmt(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}
