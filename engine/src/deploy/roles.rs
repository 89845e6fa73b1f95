//! A deployment's plugins in their roles: a health check repeated on an
//! instance's own address (never through the proxy), watching that the
//! instance stays alive between checks; a traffic switch told which backends
//! take traffic.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::DeployError;
use super::instance::{InstanceRun, Status};
use crate::plugin::contract::{Backend, DeployEvent, Input, Measurement, Reply, Window};
use crate::plugin::{Call, DEFAULT_MEMORY, Failure, Granted, Host, PluginRun, PluginState, Prepared};
use crate::step::StepLog;

/// The longest one plugin call in a role may take: a health check or a
/// traffic switch (which may wait for a drain).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// A measurement reads a log or statistics.
const MEASURE_TIMEOUT: Duration = Duration::from_secs(60);
/// A notification must not hold a deployment up.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(30);

/// A role as a deployment calls it: the seam between the deploy driver and
/// the plugin host (the driver's unit tests put in-process fakes behind it).
#[async_trait::async_trait]
pub trait Role: Send + Sync {
    /// The plugin's name and version, for messages.
    fn label(&self) -> String;

    /// One call; `net` is an address the call may connect to besides the
    /// role's grants (the instance a health check looks at).
    async fn call(
        &self,
        call: Call,
        net: Option<&str>,
        log: &StepLog,
        cancel: &CancellationToken,
    ) -> Result<Reply, String>;
}

/// A plugin in a role, its settings and grants rendered.
pub struct PluginRole {
    pub plugin: Arc<Prepared>,
    pub config: Vec<(String, String)>,
    pub granted: Granted,
    pub state: PluginState,
    pub workdir: PathBuf,
}

#[async_trait::async_trait]
impl Role for PluginRole {
    fn label(&self) -> String {
        self.plugin.label()
    }

    async fn call(
        &self,
        call: Call,
        net: Option<&str>,
        log: &StepLog,
        cancel: &CancellationToken,
    ) -> Result<Reply, String> {
        let host = Host::global().map_err(|e| e.to_string())?;
        let mut granted = self.granted.clone();
        granted.net.extend(net.map(String::from));
        let run = Arc::new(PluginRun {
            plugin: self.plugin.clone(),
            call,
            input: Input { config: self.config.clone(), env: granted.env.clone(), workspace: None },
            granted,
            memory: DEFAULT_MEMORY,
            state: Some(self.state.clone()),
            workdir: self.workdir.clone(),
            output_file: None,
        });
        host.call(run, log, cancel).await.result.map_err(|f| match f {
            Failure::Failed(m) | Failure::Broke(m) => m,
            Failure::Cancelled => "cancelled".into(),
        })
    }
}

/// A role with how often a health check is repeated.
#[derive(Clone)]
pub struct RoleRun {
    pub role: Arc<dyn Role>,
    pub attempts: u32,
    pub interval: Duration,
}

impl std::fmt::Debug for RoleRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoleRun").field("role", &self.role.label()).finish()
    }
}

impl RoleRun {
    pub fn label(&self) -> String {
        self.role.label()
    }

    /// One call, bounded by `timeout`.
    async fn call(
        &self,
        call: Call,
        net: Option<&str>,
        timeout: Duration,
        log: &StepLog,
        cancel: &CancellationToken,
    ) -> Result<Reply, String> {
        let bounded = cancel.child_token();
        tokio::select! {
            r = self.role.call(call, net, log, &bounded) => r,
            () = tokio::time::sleep(timeout) => {
                bounded.cancel();
                Err(format!("{} did not answer within {}s", self.role.label(), timeout.as_secs()))
            }
        }
    }

    /// Checks `address` until the plugin says it is healthy (at most
    /// `attempts` checks, `interval` apart); fails at once if the instance dies.
    pub async fn wait_healthy(
        &self,
        address: &str,
        instance: &InstanceRun,
        group: Option<&crate::step::ProcessGroup>,
        log: &StepLog,
        cancel: &CancellationToken,
    ) -> Result<String, DeployError> {
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            if cancel.is_cancelled() {
                return Err(DeployError::Cancelled);
            }
            if let Status::Dead(how) = instance.status(group).await {
                return Err(DeployError::Died { what: instance.describe(), how, last: instance.last_lines().await });
            }
            match self
                .call(Call::Check { address: address.to_string() }, Some(address), CALL_TIMEOUT, log, cancel)
                .await
            {
                Ok(Reply::Note(note)) => return Ok(format!("{note} (check {attempt})")),
                Ok(_) => return Ok(format!("healthy (check {attempt})")),
                Err(_) if cancel.is_cancelled() => return Err(DeployError::Cancelled),
                Err(e) => last = e,
            }
            if attempt < self.attempts {
                log.note(&format!("health {attempt}/{}: {last}", self.attempts));
                tokio::select! {
                    () = tokio::time::sleep(self.interval) => {}
                    () = cancel.cancelled() => return Err(DeployError::Cancelled),
                }
            }
        }
        Err(DeployError::Unhealthy { address: address.to_string(), checks: self.attempts, last })
    }

    /// Routes the service's traffic to `backends`.
    pub async fn route(
        &self,
        backends: &[Backend],
        log: &StepLog,
        cancel: &CancellationToken,
    ) -> Result<String, DeployError> {
        match self.call(Call::Route { backends: backends.to_vec() }, None, CALL_TIMEOUT, log, cancel).await {
            Ok(Reply::Note(note)) => Ok(note),
            Ok(_) => Ok(String::new()),
            Err(e) => Err(DeployError::Switch(e)),
        }
    }

    /// Measures both sides of a canary over a window.
    pub async fn measure(
        &self,
        window: Window,
        log: &StepLog,
        cancel: &CancellationToken,
    ) -> Result<Measurement, String> {
        match self.call(Call::Measure(window), None, MEASURE_TIMEOUT, log, cancel).await? {
            Reply::Measured(m) => Ok(m),
            _ => Err(format!("{} answered no measurement", self.role.label())),
        }
    }

    /// Tells a notifier what happened.
    pub async fn notify(&self, event: DeployEvent, log: &StepLog, cancel: &CancellationToken) -> Result<(), String> {
        self.call(Call::Notify(event), None, NOTIFY_TIMEOUT, log, cancel).await.map(|_| ())
    }
}
