//! Sidecars on a swarm: an attachable overlay network per run and each service
//! as a swarm service on it, aliased by its name. A `health-cmd` becomes the
//! task's health check: Swarm reports the task running only once it passes,
//! whichever node it landed on. The images must be pullable by every node.

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, HealthConfig, NetworkAttachmentConfig, NetworkCreateRequest, ServiceSpec,
    TaskSpec, TaskSpecContainerSpec, TaskState,
};
use bollard::query_parameters::ListTasksOptions;

use crate::docker::{DockerError, labels};
use crate::lang::model::Service;
use crate::run::RunError;
use crate::run::context::RunContext;

const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

pub struct OnSwarm {
    pub network: String,
    services: Vec<String>,
}

impl OnSwarm {
    pub async fn start(docker: &Docker, ctx: &RunContext, services: &[Service]) -> Result<OnSwarm, RunError> {
        let network = super::network_name(&ctx.run_id, true);
        let request = NetworkCreateRequest {
            name: network.clone(),
            driver: Some("overlay".into()),
            attachable: Some(true),
            labels: Some(labels(&ctx.run_id, &ctx.pipeline, ("pipe.service", "network"))),
            ..Default::default()
        };
        docker.create_network(request).await.map_err(DockerError::api(format!("create overlay network {network}")))?;
        let mut started = OnSwarm { network, services: Vec::new() };
        let mut ids = Vec::new();
        for service in services {
            match started.create(docker, ctx, service).await {
                Ok(id) => ids.push((id, service)),
                Err(e) => {
                    started.stop(docker).await;
                    return Err(e);
                }
            }
        }
        // Created all at once, they start side by side on their nodes.
        for (id, service) in ids {
            if let Err(e) = running(docker, &id, service).await {
                started.stop(docker).await;
                return Err(e);
            }
        }
        Ok(started)
    }

    async fn create(&mut self, docker: &Docker, ctx: &RunContext, s: &Service) -> Result<String, RunError> {
        let image = ctx.render_loose(&s.image)?;
        let mut env = Vec::new();
        for var in &s.env.0 {
            env.push(format!("{}={}", var.name, ctx.render_loose(&var.value)?));
        }
        let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
        let health_check = s.health_cmd.as_ref().map(|check| HealthConfig {
            test: Some(vec!["CMD-SHELL".into(), check.clone()]),
            interval: Some(nanos(HEALTH_INTERVAL)),
            timeout: Some(nanos(s.health_timeout)),
            // The deadline below bounds the wait, not a count of attempts.
            retries: Some(i64::from(u32::MAX >> 1)),
            ..Default::default()
        });
        let name = crate::run::swarm::dns_label(&format!("pipe-{}-svc-{}", ctx.run_id, s.name));
        let spec = ServiceSpec {
            name: Some(name.clone()),
            labels: Some(labels(&ctx.run_id, &ctx.pipeline, ("pipe.service", &s.name))),
            // The name answers with the task's own address: no virtual IP, whose
            // load balancing needs the nodes' iptables (and a sidecar has one task).
            endpoint_spec: Some(EndpointSpec { mode: Some(EndpointSpecModeEnum::DNSRR), ..Default::default() }),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(image.clone()),
                    command: s.cmd.as_ref().map(|c| vec!["sh".into(), "-c".into(), c.clone()]),
                    env: Some(env),
                    health_check,
                    // Sidecars hold nothing worth a graceful stop (local ones are killed).
                    stop_grace_period: Some(nanos(Duration::from_secs(1))),
                    ..Default::default()
                }),
                networks: Some(vec![NetworkAttachmentConfig {
                    target: Some(self.network.clone()),
                    aliases: Some(vec![s.name.clone()]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let id = docker
            .create_service(spec, None)
            .await
            .map_err(DockerError::api(format!("create swarm service `{}` (image `{image}`)", s.name)))?
            .id
            .unwrap_or(name);
        self.services.push(id.clone());
        Ok(id)
    }

    pub async fn stop(self, docker: &Docker) {
        for id in &self.services {
            let _ = docker.delete_service(id).await;
        }
        // The network goes once the services' tasks have left it, on every
        // node; the engine still lists it until then.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let removed = docker.remove_network(&self.network).await;
            let gone = docker.inspect_network(&self.network, None).await.is_err();
            match removed {
                _ if gone => break,
                Err(e) if Instant::now() > deadline => {
                    tracing::warn!(network = %self.network, error = %e, "could not remove the sidecars' network");
                    break;
                }
                _ if Instant::now() > deadline => break,
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// Waits until a task of the service runs (and, with a health check, passes it).
async fn running(docker: &Docker, id: &str, s: &Service) -> Result<(), RunError> {
    let filters = [("service".to_string(), vec![id.to_string()])].into_iter().collect();
    let options = ListTasksOptions { filters: Some(filters) };
    let deadline = Instant::now() + s.health_timeout;
    let mut last = String::from("no task yet");
    while Instant::now() < deadline {
        let tasks = docker.list_tasks(Some(options.clone())).await.map_err(DockerError::api("list service tasks"))?;
        for status in tasks.into_iter().filter_map(|t| t.status) {
            if status.state == Some(TaskState::RUNNING) {
                return Ok(());
            }
            last = format!(
                "{} {}",
                status.state.map(|s| s.to_string()).unwrap_or_default(),
                status.err.or(status.message).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(RunError::Unhealthy {
        service: s.name.clone(),
        after: humantime::format_duration(s.health_timeout).to_string(),
        check: s.health_cmd.clone().unwrap_or_else(|| "its task running on a node".into()),
        last: last.trim().to_string(),
    })
}
