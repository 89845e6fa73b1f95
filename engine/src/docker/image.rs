//! Images: making sure the one a step or instance needs is present (pulling it
//! when the policy says so, giving up on cancellation or after a bound), and
//! reading image references the way the registry does.

use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::CreateImageOptions;
use futures_util::StreamExt;
use oci_spec::distribution::Reference;
use tokio_util::sync::CancellationToken;

use super::DockerError;
use crate::lang::model::PullPolicy;
use crate::step::StepLog;

/// A pull that has not finished by then has failed: no hangs without a registry.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn ensure_image(
    docker: &Docker,
    image: &str,
    pull: PullPolicy,
    log: &StepLog,
    cancel: &CancellationToken,
) -> Result<(), DockerError> {
    let present = match docker.inspect_image(image).await {
        Ok(_) => true,
        Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => false,
        Err(e) => return Err(DockerError::api(format!("inspect image `{image}`"))(e)),
    };
    match (pull, present) {
        (PullPolicy::Never, false) => Err(DockerError::ImageMissing { image: image.to_string() }),
        (PullPolicy::Never, true) | (PullPolicy::IfMissing, true) => Ok(()),
        (PullPolicy::IfMissing, false) | (PullPolicy::Always, _) => {
            log.note(&format!("pulling {image}"));
            let options = CreateImageOptions { from_image: Some(image.to_string()), ..Default::default() };
            let pull = async {
                let mut progress = docker.create_image(Some(options), None, None);
                while let Some(item) = progress.next().await {
                    item.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            };
            let pulled = tokio::select! {
                r = tokio::time::timeout(PULL_TIMEOUT, pull) => r
                    .unwrap_or_else(|_| Err(format!("no answer from the registry in {}s", PULL_TIMEOUT.as_secs()))),
                () = cancel.cancelled() => return Err(DockerError::Cancelled("pulling an image")),
            };
            match (pulled, present) {
                (Ok(()), _) => Ok(()),
                (Err(e), true) => {
                    log.note(&format!("pull failed ({e}); using the local {image}"));
                    Ok(())
                }
                (Err(reason), false) => Err(DockerError::Pull { image: image.to_string(), reason }),
            }
        }
    }
}

/// `localhost:5000/app:1` -> (`localhost:5000/app`, `1`): the repository and the
/// tag, as the Engine's tag call wants them. A registry's port is not a tag.
pub fn split_tag(reference: &str) -> Result<(String, String), DockerError> {
    let parsed: Reference = reference.parse().map_err(|e: oci_spec::distribution::ParseError| {
        DockerError::Reference { reference: reference.to_string(), reason: e.to_string() }
    })?;
    let repository = match reference.split_once('/') {
        // Written with a registry (it has a dot or a port, or is localhost): keep it.
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => {
            format!("{}/{}", parsed.registry(), parsed.repository())
        }
        _ => parsed.repository().trim_start_matches("library/").to_string(),
    };
    Ok((repository, parsed.tag().unwrap_or("latest").to_string()))
}

#[cfg(test)]
mod tests {
    use super::split_tag;

    #[test]
    fn a_registry_port_is_not_a_tag() {
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(split_tag("localhost:5000/app:1").expect("valid"), pair("localhost:5000/app", "1"));
        assert_eq!(split_tag("localhost:5000/team/app").expect("valid"), pair("localhost:5000/team/app", "latest"));
        assert_eq!(split_tag("orders:2.1").expect("valid"), pair("orders", "2.1"));
        assert_eq!(split_tag("team/orders").expect("valid"), pair("team/orders", "latest"));
        assert_eq!(split_tag("ghcr.io/acme/orders:v3").expect("valid"), pair("ghcr.io/acme/orders", "v3"));
        assert!(split_tag("Not An Image").is_err());
    }
}
