//! Process groups: a child started in a group of its own, so that everything it
//! starts can be signalled at once, and is killed when its owner lets go of it
//! (a finished step, a cancelled plugin call, a dropped future).

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::process_group::{self, Check, ProcessGroup};

/// Time between SIGTERM and SIGKILL when a step is cancelled.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// A command that starts in a process group of its own, with no stdin and
/// piped output, killed if its `Child` is dropped.
pub fn command(program: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0).kill_on_drop(true);
    cmd
}

/// The process group of a child started by [`command`]. Dropping it kills
/// whatever is left of the group.
/// Once the leader is reaped its id may be reused: every signal goes through
/// the group's identity (its leader's start time), never the bare id.
pub struct Group {
    pgid: Option<ProcessGroup>,
}

impl Group {
    pub fn of(child: &tokio::process::Child) -> Group {
        Group { pgid: child.id().and_then(|id| i32::try_from(id).ok()).map(ProcessGroup::of_leader) }
    }

    /// The group, if it is still the one started and something of it is left.
    fn ours(&self) -> Option<Pid> {
        match self.pgid.as_ref()?.check() {
            Check::Ours(pid) => Some(pid),
            Check::Gone | Check::NotOurs(_) => None,
        }
    }

    pub fn signal(&self, sig: Signal) {
        if let Some(g) = self.ours() {
            let _ = killpg(g, sig);
        }
    }

    /// Kills what the leader left running in the background; returns a note
    /// naming it, or `None` when nothing was left.
    pub fn stop_leftovers(&self) -> Option<String> {
        let g = self.ours()?;
        killpg(g, None).ok()?;
        let names = members(g);
        let _ = killpg(g, Signal::SIGKILL);
        let listed = if names.is_empty() { String::new() } else { format!(": {}", names.join(", ")) };
        Some(format!(
            "stopped {} process(es) the step left running{listed} (a step's processes end with it; \
             long-lived services belong in a `deploy` instance)",
            names.len().max(1)
        ))
    }

    /// Lets the group outlive this handle (a deploy instance's start command).
    pub fn detach(mut self) {
        self.pgid = None;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// `pid name` of each process in the group, read from /proc (only called when
/// something was left behind, so its cost is not on the common path).
fn members(pgid: Pid) -> Vec<String> {
    let mut found: Vec<String> =
        process_group::members(pgid.as_raw()).into_iter().map(|s| format!("{} `{}`", s.pid, s.comm)).collect();
    found.sort();
    found
}

/// Reads a stream to its end, keeping at most `cap` bytes: a chatty command
/// never blocks on a full pipe and never grows pipe's memory past the cap.
pub async fn capture(mut reader: impl AsyncRead + Unpin, cap: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut chunk = vec![0u8; 16 << 10];
    let mut truncated = false;
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = cap.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (kept, truncated)
}
