//! Image builds through the Engine API, their output streamed into a step's log.

use bollard::Docker;
use bollard::query_parameters::BuildImageOptions;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::DockerError;
use crate::event::Stream;
use crate::step::StepLog;

/// Builds `context` (a tar archive) with `options`, line by line into `log`.
pub async fn build(
    docker: &Docker,
    options: BuildImageOptions,
    context: Vec<u8>,
    log: &StepLog,
    cancel: &CancellationToken,
) -> Result<(), DockerError> {
    let build = async {
        let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
        let mut partial = String::new();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| e.to_string())?;
            if let Some(text) = info.stream {
                partial.push_str(&text);
                while let Some(i) = partial.find('\n') {
                    let line: String = partial.drain(..=i).collect();
                    log.line(Stream::Stdout, line.trim_end());
                }
            }
            if let Some(detail) = info.error_detail {
                return Err(detail.message.unwrap_or_default());
            }
        }
        Ok(())
    };
    tokio::select! {
        r = build => r.map_err(|reason| DockerError::Build { reason }),
        () = cancel.cancelled() => Err(DockerError::Cancelled("building an image")),
    }
}
