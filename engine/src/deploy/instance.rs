//! What runs in a slot, made to outlive the run that starts it: a container
//! with a restart policy (Docker), or whatever a `start` command leaves
//! running, detached from pipe's process groups. Both say clearly when an
//! instance died, with its last lines.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions, StopContainerOptions};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use super::DeployError;
use crate::docker::{self, DockerError};
use crate::lang::model::PullPolicy;
use crate::step::StepLog;
use crate::step::process_group::{Check, ProcessGroup};

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
const LAST_LINES: usize = 15;

#[derive(Clone, Debug)]
pub enum InstanceRun {
    Docker(DockerInstance),
    Command(CommandInstance),
}

#[derive(Clone, Debug)]
pub struct DockerInstance {
    /// `<pipeline>-<deploy>-<slot>`.
    pub name: String,
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

#[derive(Clone, Debug)]
pub struct CommandInstance {
    pub start: String,
    pub stop: Option<String>,
    pub status: Option<String>,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    /// Where what `start` prints goes (appended).
    pub log_file: PathBuf,
    /// Variables of pipe's environment its commands must not inherit
    /// (secrets withheld from the run).
    pub unset: Vec<String>,
}

/// How an instance is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Running,
    /// It ended, or keeps restarting: how, in words.
    Dead(String),
}

/// How long a `start` command that exits is waited for, and how long a started
/// instance must survive to count as started.
const START_SETTLE: Duration = Duration::from_millis(300);

impl InstanceRun {
    /// Starts the instance; returns the process group a `command` instance runs in.
    pub async fn start(&self, log: &StepLog, cancel: &CancellationToken) -> Result<Option<ProcessGroup>, DeployError> {
        match self {
            InstanceRun::Docker(d) => d.start(log, cancel).await.map(|()| None),
            InstanceRun::Command(c) => c.start().await.map(Some),
        }
    }

    /// Stops it gracefully (SIGTERM, or its `stop` command), within `grace`.
    /// A recorded group that is not provably the one pipe started is not
    /// signalled: the error says so.
    pub async fn stop(&self, group: Option<&ProcessGroup>, grace: Duration) -> Result<(), DeployError> {
        match self {
            InstanceRun::Docker(d) => d.stop(grace).await,
            InstanceRun::Command(c) => c.stop(group, grace).await,
        }
    }

    pub async fn status(&self, group: Option<&ProcessGroup>) -> Status {
        match self {
            InstanceRun::Docker(d) => d.status().await,
            InstanceRun::Command(c) => c.status(group).await,
        }
    }

    /// The last lines it printed.
    pub async fn last_lines(&self) -> Vec<String> {
        match self {
            InstanceRun::Docker(d) => match docker::client().await {
                Ok(client) => docker::tail(client, &d.name, LAST_LINES).await,
                Err(_) => Vec::new(),
            },
            InstanceRun::Command(c) => {
                let text = std::fs::read_to_string(&c.log_file).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(LAST_LINES)..].iter().map(|l| l.to_string()).collect()
            }
        }
    }

    /// What it runs, for the log: an image, or a start command.
    pub fn describe(&self) -> String {
        match self {
            InstanceRun::Docker(d) => format!("container {} ({})", d.name, d.image),
            InstanceRun::Command(c) => format!("`{}`", c.start),
        }
    }
}

impl DockerInstance {
    async fn start(&self, log: &StepLog, cancel: &CancellationToken) -> Result<(), DeployError> {
        let client = docker::client().await?;
        docker::ensure_image(client, &self.image, self.pull, log, cancel).await?;
        // A container of this name made by this deployment is a stopped (or
        // kept, not live) release of this slot; one made by anyone else is left alone.
        if self.existing(client).await? {
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

    /// Whether a container of this name exists (made by this deployment); an
    /// error naming its owner if someone else made it.
    async fn existing(&self, client: &bollard::Docker) -> Result<bool, DeployError> {
        let c = match client.inspect_container(&self.name, None).await {
            Ok(c) => c,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => return Ok(false),
            Err(e) => return Err(DockerError::api(format!("inspect {}", self.name))(e).into()),
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
            "container {} exists and was not made by this deployment (its labels: {owner}; this deployment's: {mine}):              it is left untouched; remove or rename it if it is not needed",
            self.name
        )))
    }

    async fn stop(&self, grace: Duration) -> Result<(), DeployError> {
        let client = docker::client().await?;
        if !self.existing(client).await? {
            return Ok(());
        }
        let t = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
        let _ =
            client.stop_container(&self.name, Some(StopContainerOptions { t: Some(t), ..Default::default() })).await;
        let remove = RemoveContainerOptions { force: true, v: true, ..Default::default() };
        match client.remove_container(&self.name, Some(remove)).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(DockerError::api(format!("remove {}", self.name))(e).into()),
        }
    }

    async fn status(&self) -> Status {
        let Ok(client) = docker::client().await else { return Status::Dead("the Docker Engine is unreachable".into()) };
        if let Err(e) = self.existing(client).await {
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

impl CommandInstance {
    fn command(&self, line: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("sh");
        for name in &self.unset {
            cmd.env_remove(name);
        }
        cmd.args(["-c", line])
            .current_dir(&self.workdir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            // A group of its own: neither the step's group kill nor Ctrl-C on
            // pipe's terminal reaches it.
            .process_group(0);
        cmd
    }

    /// Runs `start` detached, its output appended to the instance's log file.
    /// A `start` that exits non-zero at once failed; one that exits zero
    /// started something in the background; one that keeps running is the
    /// service itself.
    async fn start(&self) -> Result<ProcessGroup, DeployError> {
        if let Some(dir) = self.log_file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DeployError::io("create", dir, e))?;
        }
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log_file)
                .map_err(|e| DeployError::io("open", &self.log_file, e))
        };
        let mut cmd = self.command(&self.start);
        cmd.stdout(open()?).stderr(open()?);
        let mut child = cmd.spawn().map_err(|e| DeployError::Instance(format!("cannot run `{}`: {e}", self.start)))?;
        // Its identity is read now, while the leader cannot have been reaped.
        let group = ProcessGroup::of_leader(child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0));
        match tokio::time::timeout(START_SETTLE, child.wait()).await {
            Ok(Ok(s)) if !s.success() => {
                let how = s.code().map_or("was killed by a signal".to_string(), |c| format!("exited with code {c}"));
                Err(DeployError::Instance(format!("`{}` {how}", self.start)))
            }
            Ok(Err(e)) => Err(DeployError::Instance(format!("cannot wait for `{}`: {e}", self.start))),
            // Exited 0 (daemonized), or still running (the service itself):
            // its group outlives this run; tokio reaps the process if it ends.
            Ok(Ok(_)) | Err(_) => Ok(group),
        }
    }

    async fn stop(&self, group: Option<&ProcessGroup>, grace: Duration) -> Result<(), DeployError> {
        if let Some(stop) = &self.stop {
            let run = self.command(stop).stdout(Stdio::null()).stderr(Stdio::null()).status();
            return match tokio::time::timeout(grace + Duration::from_secs(5), run).await {
                Ok(Ok(s)) if s.success() => Ok(()),
                Ok(Ok(s)) => Err(DeployError::Instance(format!("`{stop}` failed with {s}"))),
                Ok(Err(e)) => Err(DeployError::Instance(format!("cannot run `{stop}`: {e}"))),
                Err(_) => Err(DeployError::Instance(format!("`{stop}` did not finish within {}", fmt(grace)))),
            };
        }
        let Some(recorded) = group else { return Ok(()) };
        let group = match recorded.check() {
            Check::Ours(pid) => pid,
            Check::Gone => return Ok(()),
            Check::NotOurs(why) => return Err(DeployError::Instance(why)),
        };
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while alive(group) {
            if tokio::time::Instant::now() >= deadline {
                // Checked again: in the grace time the group may have ended and its id been reused.
                if let Check::Ours(pid) = recorded.check() {
                    let _ = killpg(pid, Signal::SIGKILL);
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn status(&self, group: Option<&ProcessGroup>) -> Status {
        if let Some(status) = &self.status {
            let run = self.command(status).stdout(Stdio::null()).stderr(Stdio::null()).status();
            return match tokio::time::timeout(Duration::from_secs(10), run).await {
                Ok(Ok(s)) if s.success() => Status::Running,
                Ok(Ok(s)) => Status::Dead(format!("`{status}` says it is not running ({s})")),
                _ => Status::Dead(format!("`{status}` did not answer")),
            };
        }
        match group.map(|g| (g, g.check())) {
            Some((_, Check::Ours(g))) if alive(g) => Status::Running,
            Some((_, Check::Ours(_) | Check::Gone)) => Status::Dead("its processes have exited".into()),
            // A bare id of an older journal: looking is harmless (nothing is
            // signalled), and an upgrade must not make a live release look dead.
            Some((g, Check::NotOurs(_))) if g.boot.is_none() && g.id > 1 && alive(Pid::from_raw(g.id)) => {
                Status::Running
            }
            Some((g, Check::NotOurs(_))) if g.boot.is_none() && g.id > 1 => {
                Status::Dead("its processes have exited".into())
            }
            Some((_, Check::NotOurs(why))) => Status::Dead(why),
            None => Status::Running,
        }
    }
}

/// Whether a process group has a member that is not a zombie.
fn alive(group: Pid) -> bool {
    killpg(group, None).is_ok() && !crate::step::process_group::members(group.as_raw()).is_empty()
}

pub fn fmt(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    #[tokio::test]
    async fn a_group_that_is_not_pipes_is_never_signalled_nor_counted_as_the_instance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let instance = CommandInstance {
            start: "true".into(),
            stop: None,
            status: None,
            env: Vec::new(),
            workdir: dir.path().to_path_buf(),
            log_file: dir.path().join("slot.log"),
            unset: Vec::new(),
        };
        let mut other = std::process::Command::new("sleep").arg("30").process_group(0).spawn().expect("sleep");
        let id = other.id() as i32;
        let real = ProcessGroup::of_leader(id);
        let forged = ProcessGroup { start: real.start.map(|s| s.saturating_sub(1)), ..real.clone() };
        let bare = ProcessGroup { id, boot: None, pidns: None, start: None };
        let one = ProcessGroup { id: 1, ..real.clone() };
        for group in [&forged, &bare, &one] {
            let stopped = instance.stop(Some(group), Duration::from_millis(50)).await;
            assert!(
                matches!(&stopped, Err(DeployError::Instance(why)) if why.contains("not signalled")),
                "{stopped:?}"
            );
        }
        assert!(other.try_wait().expect("try_wait").is_none(), "the unrelated group was signalled");
        assert!(matches!(instance.status(Some(&forged)).await, Status::Dead(_)), "not pipe's: not the instance");
        assert_eq!(instance.status(Some(&bare)).await, Status::Running, "an older journal's live group looks alive");
        instance.stop(Some(&real), Duration::from_secs(5)).await.expect("pipe's own group is stopped");
        other.wait().expect("wait");
    }

    #[tokio::test]
    async fn a_withheld_variable_does_not_reach_an_instance_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let instance = |unset: Vec<String>| CommandInstance {
            start: String::new(),
            stop: None,
            status: None,
            env: vec![("DECLARED".into(), "yes".into())],
            workdir: dir.path().to_path_buf(),
            log_file: dir.path().join("log"),
            unset,
        };
        // HOME stands for a secret in pipe's environment that the run may not have.
        let line = "printf '%s/%s' \"${HOME-withheld}\" \"$DECLARED\"";
        let seen = |i: CommandInstance| async move {
            let out = i.command(line).output().await.expect("sh");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(seen(instance(vec!["HOME".into()])).await, "withheld/yes");
        if let Ok(home) = std::env::var("HOME") {
            assert_eq!(seen(instance(Vec::new())).await, format!("{home}/yes"));
        }
    }
}
