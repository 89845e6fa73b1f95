//! What people and steps ask of a deployment: deploy, resume, roll back,
//! stop. One deployment of a target at a time, under an OS lock.

use tokio_util::sync::CancellationToken;

use super::driver::{Driver, STOP_GRACE};
use super::journal::{Action, Pending, Release, now};
use super::{DeployError, DeployOutcome, DeployRun, Report, StrategyRun};
use crate::identity::Identity;
use crate::state::RunLock;
use crate::step::StepLog;

pub async fn deploy(d: &DeployRun, log: &StepLog, cancel: &CancellationToken) -> (Result<(), DeployError>, Report) {
    let mut s = Driver::new(d, log, cancel);
    let result = async {
        let _lock = lock(d).await?;
        let journal = s.journal(|j| j.clone()).await?;
        if let Some(p) = &journal.pending {
            return Err(DeployError::Unfinished(unfinished(p)));
        }
        s.retire_expired(&journal).await?;
        let from = journal.live.clone();
        let slots = match (&d.strategy, &from) {
            // A rolling deployment's slots are picked batch by batch.
            (StrategyRun::Rolling(_), _) => Vec::new(),
            (_, Some(live)) => d.slots.iter().find(|slot| !live.slots.contains(&slot.name)).into_iter().collect(),
            (_, None) => d.slots.first().into_iter().collect(),
        };
        if slots.is_empty() && !matches!(d.strategy, StrategyRun::Rolling(_)) {
            return Err(DeployError::Refused("no slot to deploy into".into()));
        }
        let to = Release {
            slots: slots.iter().map(|s| s.name.clone()).collect(),
            version: d.version.clone(),
            git_sha: d.git_sha.clone(),
            run_id: d.run_id.clone(),
            step: d.step.clone(),
            since: now(),
            inputs: d.inputs.clone(),
        };
        let pending = Pending::new(Action::Deploy, from, to, &d.run_id, None);
        let into = if pending.to.slots.is_empty() { String::new() } else { format!(" into {}", pending.to.place()) };
        let live = pending.from.as_ref().map(|f| format!("; live: {} in {}", f.version, f.place())).unwrap_or_default();
        s.log.note(&format!("deploying {} ({}){into}{live}", d.version, d.strategy.name()));
        s.journal({
            let p = pending.clone();
            move |j| j.pending = Some(p)
        })
        .await?;
        s.notify("started", format!("deploying {}{into}{live}", d.version), Vec::new()).await;
        s.carry(pending).await
    }
    .await;
    s.finish(result).await
}

pub async fn resume(d: &DeployRun, log: &StepLog, cancel: &CancellationToken) -> (Result<(), DeployError>, Report) {
    let mut s = Driver::new(d, log, cancel);
    let result = async {
        let _lock = lock(d).await?;
        let journal = s.journal(|j| j.clone()).await?;
        let Some(pending) = journal.pending.clone() else {
            return Err(DeployError::Refused(format!("no deploy of `{}` is in progress", d.name)));
        };
        s.log.note(&format!("resuming: {}", unfinished(&pending)));
        s.carry(pending).await
    }
    .await;
    s.finish(result).await
}

pub async fn rollback(d: &DeployRun, log: &StepLog, cancel: &CancellationToken) -> (Result<(), DeployError>, Report) {
    let mut s = Driver::new(d, log, cancel);
    let result = async {
        let _lock = lock(d).await?;
        let journal = s.journal(|j| j.clone()).await?;
        match journal.pending.clone() {
            // An interrupted rollback is finished, not undone.
            Some(pending) if pending.action == Action::Rollback => {
                s.log.note(&format!("finishing: {}", unfinished(&pending)));
                return s.carry(pending).await;
            }
            Some(pending) => {
                s.log.note(&format!("undoing: {}", unfinished(&pending)));
                let done = s.undo(pending, "rolled back on request".into()).await?;
                s.log.note(&done);
                return Ok(());
            }
            None => {}
        }
        let (Some(live), Some(previous)) = (journal.live.clone(), journal.previous.clone()) else {
            return Err(DeployError::Refused(format!("`{}` has no previous release to go back to", d.name)));
        };
        if !journal.previous_kept() {
            return Err(DeployError::Refused(format!(
                "the previous release ({} in {}) is no longer kept running",
                previous.version,
                previous.place()
            )));
        }
        let reason = Some("rolled back on request".to_string());
        let pending =
            Pending::new(Action::Rollback, Some(live), Release { since: now(), ..previous }, &d.run_id, reason);
        s.journal({
            let p = pending.clone();
            move |j| j.pending = Some(p)
        })
        .await?;
        s.carry(pending).await
    }
    .await;
    s.finish(result).await
}

pub async fn stop_all(d: &DeployRun, log: &StepLog) -> Result<(), DeployError> {
    let cancel = CancellationToken::new();
    let s = Driver::new(d, log, &cancel);
    let _lock = lock(d).await?;
    let journal = s.journal(|j| j.clone()).await?;
    // Every slot is tried; a process group or container that is not provably
    // this deployment's is reported, never signalled or removed.
    let mut refused = Vec::new();
    for slot in &d.slots {
        let group = journal.groups.get(&slot.name);
        log.note(&format!("stopping slot {}", slot.name));
        match slot.instance.stop(group, STOP_GRACE).await {
            Ok(()) => {}
            Err(DeployError::Instance(why)) => {
                log.note(&format!("  slot {}: {why}", slot.name));
                refused.push(format!("slot {}: {why}", slot.name));
            }
            Err(e) => return Err(e),
        }
    }
    s.journal(|j| {
        if let Some(live) = j.live.take() {
            j.record(DeployOutcome::Stopped, &live, "pipe deploy stop");
        }
        j.previous = None;
        j.kept_until = None;
        j.pending = None;
        j.groups.clear();
    })
    .await?;
    if refused.is_empty() {
        Ok(())
    } else {
        Err(DeployError::Refused(format!(
            "not every instance could be stopped: {}; the journal no longer records them",
            refused.join("; ")
        )))
    }
}

/// Why a deploy cannot start or what a resume continues, in words.
fn unfinished(p: &Pending) -> String {
    let alive = p.boot == Identity::current().boot
        && nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), None).is_ok()
        && p.pid != std::process::id();
    let who = if alive { format!("pid {} is still at it", p.pid) } else { format!("pid {} is gone", p.pid) };
    let what = match p.action {
        Action::Deploy => "deploy",
        Action::Rollback => "rollback",
    };
    format!(
        "a {what} of {} into {} stopped in phase `{}` ({}, started {}s ago by run {}): finish it with \
         `pipe deploy resume` or undo it with `pipe deploy rollback`",
        p.to.version,
        p.to.place(),
        p.phase.name(),
        who,
        now().saturating_sub(p.started),
        p.run_id
    )
}

/// One deployment of a target at a time: an OS lock, released if pipe dies.
async fn lock(d: &DeployRun) -> Result<RunLock, DeployError> {
    let (root, key, id) = (d.root.clone(), format!("deploy-{}-{}", d.pipeline, d.name), d.run_id.clone());
    let name = d.name.clone();
    match tokio::task::spawn_blocking(move || RunLock::acquire(&root, &key, &id, false)).await {
        Ok(Ok(lock)) => Ok(lock),
        Ok(Err(crate::state::StateError::Locked { holder, .. })) => {
            Err(DeployError::Refused(format!("another deploy of `{name}` is running{holder}")))
        }
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(DeployError::Refused(format!("internal error in pipe: {e}"))),
    }
}
