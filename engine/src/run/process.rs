//! The process executor: a step as a local process in its own process group, so
//! cancellation reaches everything it started (SIGTERM, then SIGKILL after a grace).

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio_util::sync::CancellationToken;

use crate::event::Stream;
use crate::step::proc::{self, Group, KILL_GRACE};
use crate::step::{Exit, StepLog};

/// PATH lookups, done once per program per run instead of by every exec
/// (each exec would otherwise try every PATH entry in turn).
#[derive(Default)]
pub struct ProgramCache(std::sync::Mutex<std::collections::HashMap<String, Option<PathBuf>>>);

impl ProgramCache {
    /// The program's full path, or the name as given when it is a path already,
    /// when the step sets its own PATH, or when nothing is found (the spawn then
    /// reports it as not found).
    pub fn resolve(&self, program: &str, step_sets_path: bool) -> String {
        if program.contains('/') || step_sets_path {
            return program.to_string();
        }
        let mut cache = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = cache.entry(program.to_string()).or_insert_with(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| is_executable(p))
        });
        found.as_ref().map_or_else(|| program.to_string(), |p| p.display().to_string())
    }
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[derive(Clone, Debug)]
pub struct ProcessSpec {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    /// Variables of pipe's own environment the step must not inherit, even
    /// when the pipeline sets them (secrets withheld from the run's branch;
    /// the ssh-agent socket, when gates of the run take signed decisions).
    pub unset: Vec<String>,
}

pub async fn run(spec: &ProcessSpec, log: &StepLog, cancel: &CancellationToken) -> Exit {
    let mut cmd = proc::command(&spec.program);
    cmd.args(&spec.args).envs(spec.env.iter().map(|(k, v)| (k, v))).current_dir(&spec.workdir);
    for name in &spec.unset {
        cmd.env_remove(name);
    }
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
    let group = Group::of(&child);
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    // Output is read while the process runs (a full pipe would block it), in
    // this task: two fewer tasks per step than spawning a reader for each stream.
    let mut pumps = std::pin::pin!(async {
        let out = async {
            if let Some(o) = stdout {
                log.clone().pump(o, Stream::Stdout).await;
            }
        };
        let err = async {
            if let Some(e) = stderr {
                log.clone().pump(e, Stream::Stderr).await;
            }
        };
        tokio::join!(out, err);
    });
    let mut drained = false;
    let mut wait = std::pin::pin!(async {
        tokio::select! {
            s = child.wait() => (s, false),
            () = cancel.cancelled() => {
                group.signal(Signal::SIGTERM);
                let s = match tokio::time::timeout(KILL_GRACE, child.wait()).await {
                    Ok(s) => s,
                    Err(_) => {
                        group.signal(Signal::SIGKILL);
                        child.wait().await
                    }
                };
                (s, true)
            }
        }
    });
    let (status, cancelled) = loop {
        tokio::select! {
            s = &mut wait => break s,
            () = &mut pumps, if !drained => drained = true,
        }
    };
    // Whatever the step left running in the background ends with it, and the log says so.
    if let Some(note) = group.stop_leftovers()
        && !cancelled
    {
        log.note(&note);
    }
    if !drained {
        // Bounded: a process that escaped the group may hold the pipe open.
        let _ = tokio::time::timeout(Duration::from_secs(2), pumps).await;
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
