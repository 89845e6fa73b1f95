//! A container's output, demultiplexed, as lines in a step's log.

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use futures_util::StreamExt;

use crate::event::Stream;
use crate::step::StepLog;

/// Streams the container's output into the log, line by line, until it stops.
pub async fn pump(docker: &Docker, id: &str, log: &StepLog) {
    let options = LogsOptions { follow: true, stdout: true, stderr: true, ..Default::default() };
    lines(docker.logs(id, Some(options)), |kind, line| log.line(kind, line)).await;
}

/// Splits a log stream (a container's or a swarm task's) into lines, each
/// handed to `on_line` with the stream it came from, until the stream ends.
pub async fn lines(
    mut stream: impl futures_util::Stream<Item = Result<LogOutput, bollard::errors::Error>> + Unpin,
    mut on_line: impl FnMut(Stream, &str),
) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(Ok(chunk)) = stream.next().await {
        let (buf, kind) = match chunk {
            LogOutput::StdErr { message } => {
                err.extend_from_slice(&message);
                (&mut err, Stream::Stderr)
            }
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                out.extend_from_slice(&message);
                (&mut out, Stream::Stdout)
            }
            LogOutput::StdIn { .. } => continue,
        };
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            on_line(kind, String::from_utf8_lossy(&line[..i]).trim_end_matches('\r'));
        }
    }
    for (buf, kind) in [(out, Stream::Stdout), (err, Stream::Stderr)] {
        if !buf.is_empty() {
            on_line(kind, &String::from_utf8_lossy(&buf));
        }
    }
}

/// The last `lines` lines a container printed (both streams), for a failure
/// message; empty when they cannot be read.
pub async fn tail(docker: &Docker, id: &str, lines: usize) -> Vec<String> {
    let options =
        LogsOptions { follow: false, stdout: true, stderr: true, tail: lines.to_string(), ..Default::default() };
    let mut stream = docker.logs(id, Some(options));
    let mut text = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        text.extend_from_slice(&chunk.into_bytes());
    }
    String::from_utf8_lossy(&text).lines().map(|l| l.trim_end().to_string()).collect()
}
