//! A registry as a multi-node swarm needs one: every node pulls the same bytes,
//! named by digest, from it.

use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::PushImageOptions;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{DockerError, split_tag};
use crate::step::StepLog;

/// Pushing more than this is not waited on.
const PUSH_TIMEOUT: Duration = Duration::from_secs(600);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the registry `host:port` accepts connections: checked once before
/// any step, so that a wrong address is one error, not one per step.
pub async fn check_reachable(registry: &str) -> Result<(), DockerError> {
    let address = if registry.contains(':') { registry.to_string() } else { format!("{registry}:443") };
    let unreachable = |reason: String| DockerError::Registry { registry: registry.to_string(), reason };
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&address)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!("no answer in {}s", CONNECT_TIMEOUT.as_secs()))),
    }
}

/// Pushes the tag `reference` and answers the digest reference
/// (`registry/repo@sha256:…`) the nodes pull.
pub async fn push(
    docker: &Docker,
    reference: &str,
    log: &StepLog,
    cancel: &CancellationToken,
) -> Result<String, DockerError> {
    let (repo, tag) = split_tag(reference)?;
    let failed = |reason: String| DockerError::Push { image: reference.to_string(), reason };
    let push = async {
        let options = PushImageOptions { tag: Some(tag.clone()), ..Default::default() };
        let mut progress = docker.push_image(&repo, Some(options), None);
        while let Some(item) = progress.next().await {
            let info = item.map_err(|e| e.to_string())?;
            if let Some(detail) = info.error_detail {
                return Err(detail.message.unwrap_or_else(|| "the registry refused the push".into()));
            }
        }
        Ok(())
    };
    tokio::select! {
        r = tokio::time::timeout(PUSH_TIMEOUT, push) => r
            .unwrap_or_else(|_| Err(format!("not done after {}s", PUSH_TIMEOUT.as_secs())))
            .map_err(failed)?,
        () = cancel.cancelled() => return Err(DockerError::Cancelled("pushing an image")),
    }
    let image = docker.inspect_image(reference).await.map_err(DockerError::api(format!("inspect `{reference}`")))?;
    let digest = image
        .repo_digests
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.split_once('@').is_some_and(|(r, _)| r == repo))
        .ok_or_else(|| failed("the engine did not record a digest for the pushed image".into()))?;
    log.note(&format!("pushed {digest}"));
    Ok(digest)
}
