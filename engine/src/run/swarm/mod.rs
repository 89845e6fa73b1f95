//! The Swarm executor: a container step as a Docker Swarm service in
//! `replicated-job` mode (one task, never restarted). The task's log streams
//! into the step's log through the manager, whichever node runs it; the task's
//! exit code is the step's; a node lost under it fails the step; the service is
//! removed afterwards. With a registry the workspace is shipped (`ship`), so
//! the task may land on any node.

mod channel;
mod ship;
mod unpack;

use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::{
    Limit, Mount, MountType, NodeState, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicatedJob, TaskSpec,
    TaskSpecContainerSpec, TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{ListTasksOptions, LogsOptions};
use tokio_util::sync::CancellationToken;

use super::container::{ContainerRun, OUTPUTS, WORKSPACE};
use crate::docker;
use crate::step::{Exit, StepLog};
use channel::Receiver;
use ship::Shipment;
use unpack::Destination;

const POLL: Duration = Duration::from_millis(100);
/// A job that no node has started by then will not start: no node fits its
/// constraints, or none can get its image. The step's own timeout bounds the rest.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the node running the task is asked after.
const NODE_CHECK: Duration = Duration::from_secs(1);

pub async fn run(spec: &ContainerRun, log: &StepLog, cancel: &CancellationToken) -> Exit {
    // The engine pipe talks to builds the shipped image on top of the step's,
    // so it needs the step's image; without a registry, so does the node.
    let docker = match spec.engine(log, cancel).await {
        Ok(d) => d,
        Err(e) => return e.into(),
    };
    let shipment = match &spec.registry {
        Some(registry) => match Shipment::send(docker, spec, registry, log, cancel).await {
            Ok(s) => Some(s),
            Err(e) => return e.into(),
        },
        None => None,
    };
    let exit = run_service(docker, spec, shipment.as_ref(), log, cancel).await;
    if let Some(s) = shipment {
        s.discard(docker).await;
    }
    exit
}

async fn run_service(
    docker: &Docker,
    spec: &ContainerRun,
    shipment: Option<&Shipment>,
    log: &StepLog,
    cancel: &CancellationToken,
) -> Exit {
    let id = match docker.create_service(service(spec, shipment), None).await {
        Ok(r) => r.id.unwrap_or_default(),
        Err(e) => return Exit::Error(format!("cannot create a swarm service for the step: {e}")),
    };
    let mut receiver = shipment.map(Shipment::receiver).unwrap_or_default();
    let exit = tokio::select! {
        exit = follow(docker, &id, log, &mut receiver) => exit,
        () = cancel.cancelled() => Exit::Cancelled,
    };
    let exit = match (exit, shipment) {
        (Exit::Code(code), Some(_)) => match bring_back(receiver, spec, log) {
            Ok(()) => Exit::Code(code),
            Err(e) => Exit::Error(e),
        },
        (exit, _) => exit,
    };
    if let Err(e) = docker.delete_service(&id).await {
        log.note(&format!("could not remove swarm service {}: {e}", spec.name));
    }
    exit
}

/// Writes back the files of the block that ended the task's log.
fn bring_back(receiver: Receiver, spec: &ContainerRun, log: &StepLog) -> Result<(), String> {
    let block = receiver.finish(&mut |kind, line| log.line(kind, line))?;
    let done = unpack::unpack(block, &Destination::for_step(spec))?;
    for (path, why) in &done.refused {
        log.note(&format!("not taken back from the swarm: `{}` ({why})", path.escape_debug()));
    }
    if done.written > 0 {
        log.note(&format!("{} changed file(s) came back from the swarm", done.written));
    }
    Ok(())
}

/// Waits for the job's task to end, streaming its log (through the manager,
/// from whichever node runs it) into the step's log and `receiver`.
async fn follow(docker: &Docker, service: &str, log: &StepLog, receiver: &mut Receiver) -> Exit {
    let filters = [("service".to_string(), vec![service.to_string()])].into_iter().collect();
    let options = ListTasksOptions { filters: Some(filters) };
    // The receiver, and how many lines the follow stream delivered.
    let received = std::sync::Mutex::new((std::mem::take(receiver), 0usize));
    let mut logs: Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send + '_>>> = None;
    let (mut logs_done, mut task_id) = (false, None);
    let (created, mut started, mut last_state) = (Instant::now(), false, String::new());
    let mut node_checked = Instant::now();
    let exit = loop {
        let tasks = match docker.list_tasks(Some(options.clone())).await {
            Ok(t) => t,
            Err(e) => break Exit::Error(format!("cannot follow the swarm job: {e}")),
        };
        if let Some(task) = tasks.into_iter().next() {
            let status = task.status.clone().unwrap_or_default();
            if let (None, Some(id)) = (&logs, task.id.clone()) {
                task_id = Some(id.clone());
                let received = &received;
                logs = Some(Box::pin(async move {
                    let options = LogsOptions { follow: true, stdout: true, stderr: true, ..Default::default() };
                    docker::lines(docker.task_logs(&id, Some(options)), |kind, line| {
                        let mut r = received.lock().unwrap_or_else(|e| e.into_inner());
                        r.1 += 1;
                        r.0.take(kind, line, &mut |k, l| log.line(k, l));
                    })
                    .await
                }));
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
                    break Exit::Code(code.and_then(|c| i32::try_from(c).ok()).unwrap_or(-1));
                }
                Some(TaskState::REJECTED) | Some(TaskState::ORPHANED) | Some(TaskState::SHUTDOWN) => {
                    let why = status.err.or(status.message).unwrap_or_default();
                    break Exit::Error(format!("the swarm could not run the job: {why}"));
                }
                _ => {}
            }
            if node_checked.elapsed() > NODE_CHECK
                && let Some(node) = &task.node_id
            {
                node_checked = Instant::now();
                if let Some(down) = node_down(docker, node).await {
                    break Exit::Error(format!(
                        "{down} while the step ran on it (last task state: {})",
                        last_state.trim()
                    ));
                }
            }
        }
        if !started && created.elapsed() > START_TIMEOUT {
            let secs = START_TIMEOUT.as_secs();
            break Exit::Error(format!(
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
    };
    // A finished task's follow stream may stay open: the log is read once
    // more, to its end, and what the stream had not delivered yet is taken
    // from there.
    drop(logs);
    let (mut rest, seen) = received.into_inner().unwrap_or_else(|e| e.into_inner());
    if let (Exit::Code(_), Some(id), false) = (&exit, task_id, logs_done) {
        let options = LogsOptions { stdout: true, stderr: true, ..Default::default() };
        let mut n = 0;
        docker::lines(docker.task_logs(&id, Some(options)), |kind, line| {
            n += 1;
            if n > seen {
                rest.take(kind, line, &mut |k, l| log.line(k, l));
            }
        })
        .await;
    }
    *receiver = rest;
    exit
}

/// `node NAME is down` when the swarm lost the node (its engine stopped or unreachable).
async fn node_down(docker: &Docker, node: &str) -> Option<String> {
    let n = docker.inspect_node(node).await.ok()?;
    let status = n.status?;
    let name = n.description.and_then(|d| d.hostname).unwrap_or_else(|| node.to_string());
    match status.state {
        Some(NodeState::DOWN | NodeState::DISCONNECTED) => Some(format!(
            "swarm node {name} went {} ({})",
            status.state.map(|s| s.to_string()).unwrap_or_default(),
            status.message.unwrap_or_default()
        )),
        _ => None,
    }
}

fn service(spec: &ContainerRun, shipment: Option<&Shipment>) -> ServiceSpec {
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
                image: Some(shipment.map_or_else(|| spec.image.clone(), |s| s.image.clone())),
                command: Some(shipment.map_or_else(|| spec.cmd.clone(), |s| s.command(&spec.cmd))),
                env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                dir: Some(spec.workdir.clone()),
                user: spec.user.clone(),
                labels: Some(spec.labels.clone()),
                // Shipped, the wrapper must be PID 1: it kills the rest of the
                // container before it answers (see `channel`).
                init: shipment.map(|_| false),
                // Shipped, the workspace is in the image: no node needs the checkout.
                mounts: shipment
                    .is_none()
                    .then(|| vec![bind(&spec.workspace, WORKSPACE), bind(&spec.outputs, OUTPUTS)]),
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
            // The run's sidecar network (overlay, attachable) when it has sidecars.
            networks: spec.network.as_ref().map(|n| {
                vec![bollard::models::NetworkAttachmentConfig { target: Some(n.clone()), ..Default::default() }]
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
pub(crate) fn dns_label(name: &str) -> String {
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
