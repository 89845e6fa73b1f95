//! Sidecars on the local engine: a bridge network per run, each service's
//! container on it under its name, waited on until its `health-cmd` succeeds.

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::exec::StartExecResults;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, ExecConfig, HostConfig, NetworkCreateRequest, NetworkingConfig,
};
use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
use futures_util::StreamExt;

use crate::docker::{DockerError, docker_name, ensure_image, labels};
use crate::lang::model::Service;
use crate::run::RunError;
use crate::run::context::RunContext;
use crate::step::StepLog;

pub struct Local {
    pub network: String,
    containers: Vec<String>,
}

impl Local {
    /// Starts every service and waits until each is healthy. On failure, what was
    /// started is removed again before the error returns.
    pub async fn start(docker: &Docker, ctx: &RunContext, services: &[Service]) -> Result<Local, RunError> {
        let network = super::network_name(&ctx.run_id, false);
        let request = NetworkCreateRequest {
            name: network.clone(),
            labels: Some(labels(&ctx.run_id, &ctx.pipeline, ("pipe.service", "network"))),
            ..Default::default()
        };
        docker.create_network(request).await.map_err(DockerError::api(format!("create network {network}")))?;
        let mut started = Local { network, containers: Vec::new() };
        for service in services {
            if let Err(e) = started.start_one(docker, ctx, service).await {
                started.stop(docker).await;
                return Err(e);
            }
        }
        Ok(started)
    }

    async fn start_one(&mut self, docker: &Docker, ctx: &RunContext, s: &Service) -> Result<(), RunError> {
        let image = ctx.render_loose(&s.image)?;
        let log = StepLog::sink(&s.name);
        ensure_image(docker, &image, s.pull, &log, &Default::default()).await?;
        let mut env = Vec::new();
        for var in &s.env.0 {
            env.push(format!("{}={}", var.name, ctx.render_loose(&var.value)?));
        }
        let endpoints =
            [(self.network.clone(), EndpointSettings { aliases: Some(vec![s.name.clone()]), ..Default::default() })];
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            cmd: s.cmd.as_ref().map(|c| vec!["sh".into(), "-c".into(), c.clone()]),
            env: Some(env),
            labels: Some(labels(&ctx.run_id, &ctx.pipeline, ("pipe.service", &s.name))),
            host_config: Some(HostConfig { network_mode: Some(self.network.clone()), ..Default::default() }),
            networking_config: Some(NetworkingConfig { endpoints_config: Some(endpoints.into_iter().collect()) }),
            ..Default::default()
        };
        let name = format!("pipe-{}-svc-{}", docker_name(&ctx.run_id), docker_name(&s.name));
        let id = docker
            .create_container(Some(CreateContainerOptions { name: Some(name), ..Default::default() }), body)
            .await
            .map_err(DockerError::api(format!("create service `{}` (image `{image}`)", s.name)))?
            .id;
        self.containers.push(id.clone());
        docker.start_container(&id, None).await.map_err(DockerError::api(format!("start service `{}`", s.name)))?;
        if let Some(check) = &s.health_cmd {
            wait_healthy(docker, &id, s, check).await?;
        }
        Ok(())
    }

    pub async fn stop(self, docker: &Docker) {
        for id in &self.containers {
            let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            let _ = docker.remove_container(id, Some(options)).await;
        }
        let _ = docker.remove_network(&self.network).await;
    }
}

async fn wait_healthy(docker: &Docker, id: &str, s: &Service, check: &str) -> Result<(), RunError> {
    let deadline = Instant::now() + s.health_timeout;
    let mut last = String::from("nothing yet");
    while Instant::now() < deadline {
        // Each check is bounded too: a health command that never returns must
        // not hold the run past the service's timeout.
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, exec(docker, id, check)).await {
            Ok(Ok((0, _))) => return Ok(()),
            Ok(Ok((code, output))) => last = format!("exit code {code}: {}", output.trim()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer before the timeout".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(RunError::Unhealthy {
        service: s.name.clone(),
        after: humantime::format_duration(s.health_timeout).to_string(),
        check: check.to_string(),
        last,
    })
}

/// Runs `sh -c command` in a container; its exit code and output.
async fn exec(docker: &Docker, id: &str, command: &str) -> Result<(i64, String), DockerError> {
    let config = ExecConfig {
        cmd: Some(vec!["sh".into(), "-c".into(), command.into()]),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = docker.create_exec(id, config).await.map_err(DockerError::api("create a health check"))?;
    let mut output = String::new();
    if let StartExecResults::Attached { output: mut stream, .. } =
        docker.start_exec(&exec.id, None).await.map_err(DockerError::api("start a health check"))?
    {
        while let Some(Ok(chunk)) = stream.next().await {
            output.push_str(&chunk.to_string());
        }
    }
    let inspected = docker.inspect_exec(&exec.id).await.map_err(DockerError::api("inspect a health check"))?;
    Ok((inspected.exit_code.unwrap_or(-1), output))
}
