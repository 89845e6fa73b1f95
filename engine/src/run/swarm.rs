//! The Swarm executor: a container step as a Docker Swarm service in
//! `replicated-job` mode (one task, never restarted). Its task's container logs
//! stream into the step's log, the task's exit code is the step's, and the
//! service is removed afterwards — the same step as on the local engine.

use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    Limit, Mount, MountType, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicatedJob, TaskSpec,
    TaskSpecContainerSpec, TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::ListTasksOptions;
use tokio_util::sync::CancellationToken;

use super::container::{ContainerRun, OUTPUTS, WORKSPACE};
use crate::docker::{self, ensure_image, pump};
use crate::step::{Exit, StepLog};

const POLL: Duration = Duration::from_millis(100);
/// A job that no node has started by then will not start: no node fits its
/// constraints, or none can get its image. The step's own timeout bounds the rest.
const START_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn run(spec: &ContainerRun, log: &StepLog, cancel: &CancellationToken) -> Exit {
    let docker = match docker::client().await {
        Ok(d) => d,
        Err(e) => return e.into(),
    };
    // On one node the task uses this engine's images; a multi-node swarm needs
    // the image in a registry the nodes can pull from.
    if let Err(e) = ensure_image(docker, &spec.image, spec.pull, log, cancel).await {
        return e.into();
    }
    let id = match docker.create_service(service(spec), None).await {
        Ok(r) => r.id.unwrap_or_default(),
        Err(e) => return Exit::Error(format!("cannot create a swarm service for the step: {e}")),
    };
    let exit = tokio::select! {
        exit = follow(docker, &id, log) => exit,
        () = cancel.cancelled() => Exit::Cancelled,
    };
    if let Err(e) = docker.delete_service(&id).await {
        log.note(&format!("could not remove swarm service {}: {e}", spec.name));
    }
    exit
}

/// Waits for the job's task to end, streaming its container's logs.
async fn follow(docker: &Docker, service: &str, log: &StepLog) -> Exit {
    let filters = [("service".to_string(), vec![service.to_string()])].into_iter().collect();
    let options = ListTasksOptions { filters: Some(filters) };
    let mut logs: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>> = None;
    let mut logs_done = false;
    let (created, mut started, mut last_state) = (std::time::Instant::now(), false, String::new());
    loop {
        let tasks = match docker.list_tasks(Some(options.clone())).await {
            Ok(t) => t,
            Err(e) => return Exit::Error(format!("cannot follow the swarm job: {e}")),
        };
        if let Some(status) = tasks.into_iter().next().and_then(|t| t.status) {
            let container = status.container_status.as_ref().and_then(|c| c.container_id.clone());
            if let (None, Some(id)) = (&logs, container) {
                logs = Some(Box::pin(async move { pump(docker, &id, log).await }));
            }
            let code = status.container_status.as_ref().and_then(|c| c.exit_code);
            started |= matches!(status.state, Some(TaskState::RUNNING | TaskState::COMPLETE | TaskState::FAILED));
            last_state = format!(
                "{} {}",
                status.state.map(|s| s.to_string()).unwrap_or_default(),
                status.err.as_deref().or(status.message.as_deref()).unwrap_or_default()
            );
            match status.state {
                Some(TaskState::COMPLETE) | Some(TaskState::FAILED) => {
                    if let (Some(l), false) = (logs.take(), logs_done) {
                        let _ = tokio::time::timeout(Duration::from_secs(5), l).await;
                    }
                    return Exit::Code(code.and_then(|c| i32::try_from(c).ok()).unwrap_or(-1));
                }
                Some(TaskState::REJECTED) | Some(TaskState::ORPHANED) | Some(TaskState::SHUTDOWN) => {
                    let why = status.err.or(status.message).unwrap_or_default();
                    return Exit::Error(format!("the swarm could not run the job: {why}"));
                }
                _ => {}
            }
        }
        if !started && created.elapsed() > START_TIMEOUT {
            let secs = START_TIMEOUT.as_secs();
            return Exit::Error(format!(
                "no swarm node started the job within {secs}s (last state: {})",
                last_state.trim()
            ));
        }
        match logs.as_mut() {
            // Poll while the logs stream, without waiting on them; a finished
            // stream is never polled again.
            Some(l) if !logs_done => logs_done = tokio::time::timeout(POLL, l.as_mut()).await.is_ok(),
            _ => tokio::time::sleep(POLL).await,
        }
    }
}

fn service(spec: &ContainerRun) -> ServiceSpec {
    let bind = |source: &std::path::Path, target: &str| Mount {
        source: Some(source.display().to_string()),
        target: Some(target.to_string()),
        typ: Some(MountType::BIND),
        ..Default::default()
    };
    ServiceSpec {
        name: Some(dns_label(&spec.name)),
        labels: Some(spec.labels.clone()),
        mode: Some(ServiceSpecMode {
            replicated_job: Some(ServiceSpecModeReplicatedJob { max_concurrent: Some(1), total_completions: Some(1) }),
            ..Default::default()
        }),
        task_template: Some(TaskSpec {
            container_spec: Some(TaskSpecContainerSpec {
                image: Some(spec.image.clone()),
                command: Some(spec.cmd.clone()),
                env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                dir: Some(spec.workdir.clone()),
                user: spec.user.clone(),
                labels: Some(spec.labels.clone()),
                mounts: Some(vec![bind(&spec.workspace, WORKSPACE), bind(&spec.outputs, OUTPUTS)]),
                ..Default::default()
            }),
            resources: Some(TaskSpecResources {
                limits: Some(Limit {
                    memory_bytes: spec.memory.and_then(|m| i64::try_from(m).ok()),
                    nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            placement: (!spec.placement.is_empty())
                .then(|| TaskSpecPlacement { constraints: Some(spec.placement.clone()), ..Default::default() }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Swarm service names are DNS labels: letters, digits and `-`, at most 63
/// characters. A hash of the full name keeps shortened ones unique.
fn dns_label(name: &str) -> String {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    name.hash(&mut h);
    let clean: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let head: String = clean.chars().take(50).collect();
    format!("{}-{:08x}", head.trim_end_matches('-'), h.finish() as u32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn service_names_are_dns_labels() {
        let n =
            super::dns_label("pipe-20261124-074511.542-2e91-test[linux,1.2].unit_x-with-a-very-long-name-indeed-yes");
        assert!(n.len() <= 63 && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "{n}");
    }
}
