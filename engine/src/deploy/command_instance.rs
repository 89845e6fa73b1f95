//! An instance that is whatever a `start` command leaves running, detached
//! from pipe's process groups, in a group of its own whose identity the
//! journal records. Every process of it carries the slot's tag in its
//! environment, so that what a killed run started is found again.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

use super::DeployError;
use super::instance::{Instance, LAST_LINES, Status, fmt};
use crate::step::StepLog;
use crate::step::process_group::{Check, ProcessGroup};

#[derive(Clone, Debug)]
pub struct CommandInstance {
    pub start: String,
    pub stop: Option<String>,
    pub status: Option<String>,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    /// Where what `start` prints goes (appended).
    pub log_file: PathBuf,
    /// Variables of pipe's environment its commands must not inherit
    /// (secrets withheld from the run).
    pub unset: Vec<String>,
    /// The slot's tag, in every process's environment as [`TAG_VARIABLE`]:
    /// unique to this slot of this deployment of this checkout.
    pub tag: String,
}

/// The variable carrying an instance's tag.
pub const TAG_VARIABLE: &str = "PIPE_INSTANCE";

/// Time a leftover of a killed run gets to stop before the slot is started again.
const LEFTOVER_GRACE: Duration = Duration::from_secs(10);

/// How long a `start` command that exits is waited for, and how long a started
/// instance must survive to count as started.
const START_SETTLE: Duration = Duration::from_millis(300);

#[async_trait::async_trait]
impl Instance for CommandInstance {
    async fn start(&self, _log: &StepLog, _cancel: &CancellationToken) -> Result<Option<ProcessGroup>, DeployError> {
        self.spawn().await.map(Some)
    }

    async fn stop(&self, group: Option<&ProcessGroup>, grace: Duration) -> Result<(), DeployError> {
        self.terminate(group, grace).await
    }

    async fn status(&self, group: Option<&ProcessGroup>) -> Status {
        self.look(group).await
    }

    async fn last_lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LAST_LINES)..].iter().map(|l| l.to_string()).collect()
    }

    fn describe(&self) -> String {
        format!("`{}`", self.start)
    }
}

impl CommandInstance {
    fn command(&self, line: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("sh");
        for name in &self.unset {
            cmd.env_remove(name);
        }
        cmd.args(["-c", line])
            .current_dir(&self.workdir)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env(TAG_VARIABLE, &self.tag)
            .stdin(Stdio::null())
            // A group of its own: neither the step's group kill nor Ctrl-C on
            // pipe's terminal reaches it.
            .process_group(0);
        cmd
    }

    /// Runs `start` detached, its output appended to the instance's log file.
    /// A `start` that exits non-zero at once failed; one that exits zero
    /// started something in the background; one that keeps running is the
    /// service itself.
    async fn spawn(&self) -> Result<ProcessGroup, DeployError> {
        // A run killed between starting the slot and recording its group
        // left it running, unrecorded: it would hold the port.
        self.stop_leftovers(LEFTOVER_GRACE).await?;
        if let Some(dir) = self.log_file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| DeployError::io("create", dir, e))?;
        }
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log_file)
                .map_err(|e| DeployError::io("open", &self.log_file, e))
        };
        let mut cmd = self.command(&self.start);
        cmd.stdout(open()?).stderr(open()?);
        let mut child = cmd.spawn().map_err(|e| DeployError::Instance(format!("cannot run `{}`: {e}", self.start)))?;
        // Its identity is read now, while the leader cannot have been reaped.
        let group = ProcessGroup::of_leader(child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0));
        match tokio::time::timeout(START_SETTLE, child.wait()).await {
            Ok(Ok(s)) if !s.success() => {
                let how = s.code().map_or("was killed by a signal".to_string(), |c| format!("exited with code {c}"));
                Err(DeployError::Instance(format!("`{}` {how}", self.start)))
            }
            Ok(Err(e)) => Err(DeployError::Instance(format!("cannot wait for `{}`: {e}", self.start))),
            // Exited 0 (daemonized), or still running (the service itself):
            // its group outlives this run; tokio reaps the process if it ends.
            Ok(Ok(_)) | Err(_) => Ok(group),
        }
    }

    async fn terminate(&self, group: Option<&ProcessGroup>, grace: Duration) -> Result<(), DeployError> {
        if let Some(stop) = &self.stop {
            let run = self.command(stop).stdout(Stdio::null()).stderr(Stdio::null()).status();
            return match tokio::time::timeout(grace + Duration::from_secs(5), run).await {
                Ok(Ok(s)) if s.success() => Ok(()),
                Ok(Ok(s)) => Err(DeployError::Instance(format!("`{stop}` failed with {s}"))),
                Ok(Err(e)) => Err(DeployError::Instance(format!("cannot run `{stop}`: {e}"))),
                Err(_) => Err(DeployError::Instance(format!("`{stop}` did not finish within {}", fmt(grace)))),
            };
        }
        if let Some(recorded) = group {
            stop_group(recorded, grace).await?;
        }
        self.stop_leftovers(grace).await
    }

    /// Stops every group carrying this slot's tag that the journal does not know.
    async fn stop_leftovers(&self, grace: Duration) -> Result<(), DeployError> {
        if self.tag.is_empty() {
            return Ok(());
        }
        let entry = format!("{TAG_VARIABLE}={}", self.tag);
        for group in
            tokio::task::spawn_blocking(move || crate::step::process_group::tagged(&entry)).await.unwrap_or_default()
        {
            stop_group(&group, grace).await?;
        }
        Ok(())
    }

    async fn look(&self, group: Option<&ProcessGroup>) -> Status {
        if let Some(status) = &self.status {
            let run = self.command(status).stdout(Stdio::null()).stderr(Stdio::null()).status();
            return match tokio::time::timeout(Duration::from_secs(10), run).await {
                Ok(Ok(s)) if s.success() => Status::Running,
                Ok(Ok(s)) => Status::Dead(format!("`{status}` says it is not running ({s})")),
                _ => Status::Dead(format!("`{status}` did not answer")),
            };
        }
        match group.map(|g| (g, g.check())) {
            Some((_, Check::Ours(g))) if alive(g) => Status::Running,
            Some((_, Check::Ours(_) | Check::Gone)) => Status::Dead("its processes have exited".into()),
            // A bare id of an older journal: looking is harmless (nothing is
            // signalled), and an upgrade must not make a live release look dead.
            Some((g, Check::NotOurs(_))) if g.boot.is_none() && g.id > 1 && alive(Pid::from_raw(g.id)) => {
                Status::Running
            }
            Some((g, Check::NotOurs(_))) if g.boot.is_none() && g.id > 1 => {
                Status::Dead("its processes have exited".into())
            }
            Some((_, Check::NotOurs(why))) => Status::Dead(why),
            None => Status::Running,
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`, to a group proven to be pipe's.
async fn stop_group(recorded: &ProcessGroup, grace: Duration) -> Result<(), DeployError> {
    let group = match recorded.check() {
        Check::Ours(pid) => pid,
        Check::Gone => return Ok(()),
        Check::NotOurs(why) => return Err(DeployError::Instance(why)),
    };
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while alive(group) {
        if tokio::time::Instant::now() >= deadline {
            // Checked again: in the grace time the group may have ended and its id been reused.
            if let Check::Ours(pid) = recorded.check() {
                let _ = killpg(pid, Signal::SIGKILL);
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Whether a process group has a member that is not a zombie.
fn alive(group: Pid) -> bool {
    killpg(group, None).is_ok() && !crate::step::process_group::members(group.as_raw()).is_empty()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;

    use super::*;

    /// An instance starting `start` in `dir`, its processes tagged `tag`.
    fn instance(dir: &std::path::Path, start: &str, tag: &str) -> CommandInstance {
        CommandInstance {
            start: start.into(),
            stop: None,
            status: None,
            env: Vec::new(),
            workdir: dir.to_path_buf(),
            log_file: dir.join("slot.log"),
            unset: Vec::new(),
            tag: tag.into(),
        }
    }

    #[tokio::test]
    async fn a_group_that_is_not_pipes_is_never_signalled_nor_counted_as_the_instance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let instance = instance(dir.path(), "true", "");
        let mut other = std::process::Command::new("sleep").arg("30").process_group(0).spawn().expect("sleep");
        let id = other.id() as i32;
        let real = ProcessGroup::of_leader(id);
        let forged = ProcessGroup { start: real.start.map(|s| s.saturating_sub(1)), ..real.clone() };
        let bare = ProcessGroup { id, boot: None, pidns: None, start: None };
        let one = ProcessGroup { id: 1, ..real.clone() };
        for group in [&forged, &bare, &one] {
            let stopped = instance.stop(Some(group), Duration::from_millis(50)).await;
            assert!(
                matches!(&stopped, Err(DeployError::Instance(why)) if why.contains("not signalled")),
                "{stopped:?}"
            );
        }
        assert!(other.try_wait().expect("try_wait").is_none(), "the unrelated group was signalled");
        assert!(matches!(instance.status(Some(&forged)).await, Status::Dead(_)), "not pipe's: not the instance");
        assert_eq!(instance.status(Some(&bare)).await, Status::Running, "an older journal's live group looks alive");
        instance.stop(Some(&real), Duration::from_secs(5)).await.expect("pipe's own group is stopped");
        other.wait().expect("wait");
    }

    #[tokio::test]
    async fn a_withheld_variable_does_not_reach_an_instance_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let instance = |unset: Vec<String>| CommandInstance {
            start: String::new(),
            stop: None,
            status: None,
            env: vec![("DECLARED".into(), "yes".into())],
            workdir: dir.path().to_path_buf(),
            log_file: dir.path().join("log"),
            unset,
            tag: String::new(),
        };
        // HOME stands for a secret in pipe's environment that the run may not have.
        let line = "printf '%s/%s' \"${HOME-withheld}\" \"$DECLARED\"";
        let seen = |i: CommandInstance| async move {
            let out = i.command(line).output().await.expect("sh");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(seen(instance(vec!["HOME".into()])).await, "withheld/yes");
        if let Ok(home) = std::env::var("HOME") {
            assert_eq!(seen(instance(Vec::new())).await, format!("{home}/yes"));
        }
    }

    #[tokio::test]
    async fn what_a_killed_run_started_and_never_recorded_is_found_by_its_tag_and_stopped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tag = format!("test-{}-{}", std::process::id(), dir.path().display());
        let instance = instance(dir.path(), "sleep 30", &tag);
        // The run that started it was killed before the journal recorded its group.
        let orphan = instance.spawn().await.expect("starts");
        let entry = format!("{TAG_VARIABLE}={tag}");
        let groups = |entry: &str| crate::step::process_group::tagged(entry);
        assert_eq!(groups(&entry).iter().map(|g| g.id).collect::<Vec<_>>(), vec![orphan.id]);
        assert!(groups(&format!("{entry}-other")).is_empty(), "another slot's tag finds nothing");
        // Starting the slot again stops the orphan first.
        let second = instance.spawn().await.expect("starts again");
        assert!(matches!(orphan.check(), Check::Gone), "the orphan was stopped");
        assert_eq!(groups(&entry).iter().map(|g| g.id).collect::<Vec<_>>(), vec![second.id]);
        // `pipe deploy stop` with nothing recorded stops it too.
        instance.stop(None, Duration::from_secs(5)).await.expect("stops");
        assert!(groups(&entry).is_empty(), "nothing of the slot is left");
    }

    /// Another user's process carrying this slot's tag (copied from `ps e`,
    /// or chosen to get pipe to kill it) is neither found nor signalled.
    /// Needs root to start a process as another user, as CI runs.
    #[tokio::test]
    async fn another_users_process_with_the_slots_tag_is_left_alone() {
        use std::os::unix::process::CommandExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: starting a process as another user needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let tag = format!("test-other-{}-{}", std::process::id(), dir.path().display());
        let mut theirs = std::process::Command::new("sleep")
            .arg("30")
            .env(TAG_VARIABLE, &tag)
            .uid(65534)
            .gid(65534)
            .process_group(0)
            .spawn()
            .expect("sleep as nobody");
        let entry = format!("{TAG_VARIABLE}={tag}");
        assert!(crate::step::process_group::tagged(&entry).is_empty(), "another user's process was found");
        instance(dir.path(), "true", &tag).stop(None, Duration::from_millis(200)).await.expect("stop");
        assert!(theirs.try_wait().expect("try_wait").is_none(), "another user's process was signalled");
        let _ = theirs.kill();
        let _ = theirs.wait();
    }
}
