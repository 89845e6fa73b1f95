//! The process executor: a step as a local process in its own process group, so
//! cancellation reaches everything it started (SIGTERM, then SIGKILL after a grace).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use super::event::Stream;
use super::executor::Exit;
use super::log::StepLog;

/// Time between SIGTERM and SIGKILL when a step is cancelled.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub struct ProcessSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
}

pub async fn run(spec: &ProcessSpec, log: &StepLog, cancel: &CancellationToken) -> Exit {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !spec.workdir.is_dir() => {
            return Exit::Error(format!("working directory {} does not exist", spec.workdir.display()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            log.note(&format!("{}: command not found", spec.program));
            return Exit::Code(127);
        }
        Err(e) => return Exit::Error(format!("cannot start `{}`: {e}", spec.program)),
    };
    let group = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
    let pumps = [
        child.stdout.take().map(|o| tokio::spawn(log.clone().pump(o, Stream::Stdout))),
        child.stderr.take().map(|e| tokio::spawn(log.clone().pump(e, Stream::Stderr))),
    ];
    let mut cancelled = false;
    let status = tokio::select! {
        s = child.wait() => s,
        () = cancel.cancelled() => {
            cancelled = true;
            signal(group, Signal::SIGTERM);
            match tokio::time::timeout(KILL_GRACE, child.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    signal(group, Signal::SIGKILL);
                    child.wait().await
                }
            }
        }
    };
    // Whatever the step left running in the background ends with it.
    signal(group, Signal::SIGKILL);
    for pump in pumps.into_iter().flatten() {
        // Bounded: a process that escaped the group may hold the pipe open.
        let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
    }
    if cancelled {
        return Exit::Cancelled;
    }
    match status {
        Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
            (Some(code), _) => Exit::Code(code),
            (None, Some(sig)) => Exit::Signal(sig),
            (None, None) => Exit::Error("the process ended without a status".into()),
        },
        Err(e) => Exit::Error(format!("cannot wait for `{}`: {e}", spec.program)),
    }
}

fn signal(group: Option<Pid>, sig: Signal) {
    if let Some(g) = group {
        let _ = killpg(g, sig);
    }
}
