//! Blue-green: moving all traffic from one slot to the other in an order that
//! cannot drop a request, and back again when anything fails.
//!
//! Forward: start the new slot -> health-check it directly -> switch -> verify
//! through the public URL -> drain the old slot (no connection left) -> keep
//! it for `keep-previous`, or stop it. Failure before the switch stops the new
//! slot (traffic never moved); after it, the old slot is checked, switched
//! back to, verified and the new one drained and stopped. Traffic is never
//! sent to a slot that has not just passed its health check; if neither slot
//! is healthy, traffic stays where it is and the deployment fails loudly.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::journal::{Action, Journal, Pending, Phase, Release, now};
use super::probe::Probe;
use super::{DeployError, DeployRun, PhaseReport, Report, SlotRun};
use crate::docker::Identity;
use crate::plugin::contract::Backend;
use crate::state::RunLock;
use crate::step::StepLog;

/// Time a stopped instance gets to finish its requests.
const STOP_GRACE: Duration = Duration::from_secs(10);

struct Switcher<'a> {
    d: &'a DeployRun,
    log: &'a StepLog,
    cancel: &'a CancellationToken,
    probe: Option<Probe>,
    report: Report,
    phase_started: Instant,
    /// Phases of an automatic rollback are reported (and probed) apart.
    rolling_back: bool,
    /// When the new slot, healthy, was handed to the traffic switch.
    switch_started: Option<Instant>,
}

pub async fn deploy(d: &DeployRun, log: &StepLog, cancel: &CancellationToken) -> (Result<(), DeployError>, Report) {
    let mut s = Switcher::new(d, log, cancel);
    let result = async {
        let _lock = lock(d).await?;
        let journal = s.journal(|j| j.clone()).await?;
        if let Some(p) = &journal.pending {
            return Err(DeployError::Unfinished(unfinished(p)));
        }
        s.retire_expired(&journal).await?;
        let from = journal.live.clone();
        let target = match &from {
            Some(live) => d.slots.iter().find(|slot| slot.name != live.slot),
            None => d.slots.first(),
        }
        .ok_or_else(|| DeployError::Refused("no slot to deploy into".into()))?;
        let to = Release {
            slot: target.name.clone(),
            version: d.version.clone(),
            git_sha: d.git_sha.clone(),
            run_id: d.run_id.clone(),
            step: d.step.clone(),
            since: now(),
            inputs: d.inputs.clone(),
        };
        let pending = Pending {
            action: Action::Deploy,
            phase: Phase::Start,
            from,
            to,
            started: now(),
            pid: std::process::id(),
            boot: Identity::current().boot.clone(),
            run_id: d.run_id.clone(),
            reason: None,
        };
        s.log.note(&format!(
            "deploying {} into slot {}{}",
            d.version,
            target.name,
            pending.from.as_ref().map(|f| format!(" (live: {} in {})", f.version, f.slot)).unwrap_or_default()
        ));
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

pub async fn resume(d: &DeployRun, log: &StepLog, cancel: &CancellationToken) -> (Result<(), DeployError>, Report) {
    let mut s = Switcher::new(d, log, cancel);
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
    let mut s = Switcher::new(d, log, cancel);
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
                previous.version, previous.slot
            )));
        }
        let pending = Pending {
            action: Action::Rollback,
            phase: Phase::Start,
            from: Some(live),
            to: Release { since: now(), ..previous },
            started: now(),
            pid: std::process::id(),
            boot: Identity::current().boot.clone(),
            run_id: d.run_id.clone(),
            reason: Some("rolled back on request".into()),
        };
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
    let s = Switcher::new(d, log, &cancel);
    let _lock = lock(d).await?;
    let journal = s.journal(|j| j.clone()).await?;
    for slot in &d.slots {
        let group = journal.groups.get(&slot.name).copied();
        log.note(&format!("stopping slot {}", slot.name));
        slot.instance.stop(group, STOP_GRACE).await?;
    }
    s.journal(|j| {
        if let Some(live) = j.live.take() {
            j.record("stopped", &live, "pipe deploy stop");
        }
        j.previous = None;
        j.kept_until = None;
        j.pending = None;
        j.groups.clear();
    })
    .await
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
        "a {what} of {} into slot {} stopped in phase `{}` ({}, started {}s ago by run {})",
        p.to.version,
        p.to.slot,
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

impl<'a> Switcher<'a> {
    fn new(d: &'a DeployRun, log: &'a StepLog, cancel: &'a CancellationToken) -> Switcher<'a> {
        let report = Report {
            strategy: d.strategy.name().into(),
            version: d.version.clone(),
            outcome: "failed".into(),
            ..Report::default()
        };
        Switcher { d, log, cancel, probe: None, report, phase_started: Instant::now(), rolling_back: false, switch_started: None }
    }

    async fn journal<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut Journal) -> T + Send + 'static,
    ) -> Result<T, DeployError> {
        let store = self.d.journal.clone();
        match tokio::task::spawn_blocking(move || store.update(change)).await {
            Ok(r) => Ok(r?),
            Err(e) => Err(DeployError::Refused(format!("internal error in pipe: {e}"))),
        }
    }

    fn slot(&self, name: &str) -> Result<&'a SlotRun, DeployError> {
        self.d.slots.iter().find(|s| s.name == name).ok_or_else(|| {
            DeployError::Refused(format!("the journal names slot `{name}`, which the deploy no longer has"))
        })
    }

    /// Records the phase before acting on it, then checks the probe.
    async fn enter(&mut self, phase: Phase, what: String) -> Result<(), DeployError> {
        self.close_phase();
        self.journal(move |j| {
            if let Some(p) = &mut j.pending {
                p.phase = phase;
            }
        })
        .await?;
        let name = if self.rolling_back { format!("rollback-{}", phase.name()) } else { phase.name().to_string() };
        if let Some(probe) = &self.probe {
            probe.phase(&name);
        }
        self.log.note(&format!("▸ {name}: {what}"));
        self.report.phases.push(PhaseReport { phase: name, ms: 0, note: what });
        self.phase_started = Instant::now();
        self.check_probe()
    }

    fn close_phase(&mut self) {
        if let Some(last) = self.report.phases.last_mut() {
            last.ms = self.phase_started.elapsed().as_millis() as u64;
        }
    }

    fn note(&mut self, text: String) {
        self.log.note(&format!("  {text}"));
        if let Some(last) = self.report.phases.last_mut() {
            last.note = format!("{}; {text}", last.note);
        }
    }

    /// Failures before the switch are the old release's, not the deployment's:
    /// they are reported, and only failures from the switch on count against
    /// `max-failures`.
    fn check_probe(&self) -> Result<(), DeployError> {
        let (Some(probe), Some(spec)) = (&self.probe, &self.d.probe) else { return Ok(()) };
        let failures = probe.failures_since(Phase::Switch.name());
        if failures > spec.max_failures {
            return Err(DeployError::Probe { failures, max: spec.max_failures });
        }
        Ok(())
    }

    fn start_probe(&mut self, phase: Phase) {
        if let (None, Some(spec)) = (&self.probe, &self.d.probe) {
            match Probe::start(&spec.url, spec.rate, phase.name()) {
                Ok(p) => self.probe = Some(p),
                Err(e) => self.log.note(&format!("probe not started: {e}")),
            }
        }
    }

    /// Moves a pending switch forward from its recorded phase; on failure,
    /// undoes it (or leaves it to `resume`/`rollback` when cancelled).
    async fn carry(&mut self, pending: Pending) -> Result<(), DeployError> {
        self.report.version = pending.to.version.clone();
        self.report.slot = pending.to.slot.clone();
        self.report.from = pending.from.as_ref().map(|f| f.slot.clone());
        // Something serves already: probe it from the start.
        if pending.from.is_some() {
            self.start_probe(pending.phase);
        }
        match self.forward(&pending).await {
            Ok(()) => Ok(()),
            Err(DeployError::Cancelled) => {
                self.report.outcome = "interrupted".into();
                self.log.note("interrupted: the journal keeps the phase; `pipe deploy resume` or `rollback` ends it");
                Err(DeployError::Cancelled)
            }
            Err(e) => {
                let phase = self.journal(|j| j.pending.as_ref().map(|p| p.phase)).await?.unwrap_or(pending.phase);
                let reason = format!("{} failed: {e}", phase.name());
                let pending = Pending { phase, ..pending };
                match pending.action {
                    Action::Deploy => {
                        let done = self.undo(pending, reason.clone()).await?;
                        Err(DeployError::Refused(format!("{reason}; {done}")))
                    }
                    // A rollback that fails leaves traffic where it is.
                    Action::Rollback => {
                        self.journal(move |j| j.pending = None).await?;
                        Err(DeployError::Refused(format!(
                            "the rollback failed ({reason}); traffic was left where it was"
                        )))
                    }
                }
            }
        }
    }

    async fn forward(&mut self, p: &Pending) -> Result<(), DeployError> {
        let to = self.slot(&p.to.slot)?;
        let from = p.from.as_ref().map(|f| self.slot(&f.slot)).transpose()?;
        let mut group = self
            .journal({
                let slot = to.name.clone();
                move |j| j.groups.get(&slot).copied()
            })
            .await?;
        if p.phase <= Phase::Start {
            match p.action {
                Action::Deploy => {
                    self.enter(Phase::Start, format!("starting {} in slot {}", to.instance.describe(), to.name))
                        .await?;
                    // The slot may still run the release before the live one (kept, not live).
                    let _ = to.instance.stop(group, STOP_GRACE).await;
                    group = to.instance.start(self.log, self.cancel).await?;
                    let (slot, g) = (to.name.clone(), group);
                    self.journal(move |j| {
                        if j.previous.as_ref().is_some_and(|r| r.slot == slot) {
                            j.previous = None;
                            j.kept_until = None;
                        }
                        match g {
                            Some(g) => j.groups.insert(slot, g),
                            None => j.groups.remove(&slot),
                        };
                    })
                    .await?;
                }
                Action::Rollback => {
                    self.enter(Phase::Start, format!("slot {} still runs {}", to.name, p.to.version)).await?;
                }
            }
        }
        if p.phase <= Phase::Health {
            self.enter(Phase::Health, format!("checking {} directly", to.address())).await?;
            let note = self.d.health.wait_healthy(&to.address(), &to.instance, group, self.log, self.cancel).await?;
            self.note(note);
        }
        if p.phase <= Phase::Switch {
            self.enter(Phase::Switch, format!("sending traffic to slot {}", to.name)).await?;
            self.switch_started = Some(Instant::now());
            let mut backends = vec![Backend { address: to.address(), weight: 1 }];
            backends.extend(from.map(|f| Backend { address: f.address(), weight: 0 }));
            let note = self.d.traffic.route(&backends, self.log, self.cancel).await?;
            self.note(note);
        }
        if p.phase <= Phase::Verify
            && let Some(v) = &self.d.verify
        {
            self.enter(Phase::Verify, format!("through {}", v.url)).await?;
            // Going back, the old version's body is whatever it is.
            let (note, first_good) = v.run(p.action == Action::Deploy, self.cancel).await?;
            if let Some(at) = self.switch_started {
                self.report.switch_ms = Some(first_good.saturating_duration_since(at).as_secs_f64() * 1000.0);
            }
            self.note(note);
        }
        if p.phase <= Phase::Drain
            && let Some(from) = from
        {
            self.enter(Phase::Drain, format!("waiting until slot {} has no connection left", from.name)).await?;
            let drained = tokio::select! {
                d = super::drain::drain(from.port, self.d.drain) => d,
                () = self.cancel.cancelled() => return Err(DeployError::Cancelled),
            };
            let note = match drained.left {
                0 => format!("drained in {}", super::instance::fmt(drained.waited)),
                n => format!(
                    "{n} connection(s) still open after {}; stopping gracefully",
                    super::instance::fmt(drained.waited)
                ),
            };
            self.note(note);
            self.check_probe()?;
        }
        self.enter(Phase::Finish, "recording the release".into()).await?;
        self.complete(p, from).await
    }

    /// The switch is done: `to` is live; `from` is kept for a rollback, or stopped.
    async fn complete(&mut self, p: &Pending, from: Option<&SlotRun>) -> Result<(), DeployError> {
        let keep = match (p.action, from) {
            (Action::Deploy, Some(_)) if !self.d.keep_previous.is_zero() => {
                Some(now() + self.d.keep_previous.as_secs())
            }
            _ => None,
        };
        if let (Some(from), None) = (from, keep) {
            let group = self
                .journal({
                    let slot = from.name.clone();
                    move |j| j.groups.get(&slot).copied()
                })
                .await?;
            if let Err(e) = from.instance.stop(group, STOP_GRACE).await {
                self.note(format!("could not stop slot {}: {e}", from.name));
            }
        }
        let p2 = p.clone();
        let port = self.slot(&p.to.slot)?.port;
        self.journal(move |j| {
            let to = Release { since: now(), ..p2.to.clone() };
            match p2.action {
                Action::Deploy => {
                    j.previous = p2.from.clone();
                    j.kept_until = keep;
                    j.record("deployed", &to, "");
                }
                Action::Rollback => {
                    j.previous = None;
                    j.kept_until = None;
                    j.record("rolled-back", &to, p2.reason.clone().unwrap_or_default());
                }
            }
            if p2.action == Action::Rollback
                && let Some(bad) = &p2.from
            {
                j.groups.remove(&bad.slot);
            }
            j.live = Some(to);
            j.pending = None;
        })
        .await?;
        self.write_facts(port).await?;
        self.close_phase();
        self.report.outcome = match p.action {
            Action::Deploy => "deployed".into(),
            Action::Rollback => "rolled-back".into(),
        };
        let kept = match (keep, from) {
            (Some(until), Some(f)) => format!("; slot {} kept for a rollback until {}", f.name, clock(until)),
            _ => String::new(),
        };
        self.log.note(&format!("✓ {} is live in slot {}{kept}", p.to.version, p.to.slot));
        Ok(())
    }

    /// `deploy.<name>/live-slot`, `live-version`, `live-port`: facts other
    /// steps read as `${state.deploy.<name>/live-port}`.
    async fn write_facts(&self, port: u16) -> Result<(), DeployError> {
        let store = self.d.journal.store().clone();
        let ns = format!("deploy.{}", self.d.name);
        let live = self.journal(|j| j.live.clone()).await?;
        let Some(live) = live else { return Ok(()) };
        let write = move || {
            store.update(|m| {
                m.insert(format!("{ns}/live-slot"), live.slot.clone());
                m.insert(format!("{ns}/live-version"), live.version.clone());
                m.insert(format!("{ns}/live-port"), port.to_string());
            })
        };
        tokio::task::spawn_blocking(write).await.map_err(|e| DeployError::Refused(e.to_string()))??;
        Ok(())
    }

    /// Undoes a failed or abandoned switch; says what it did. Before the
    /// switch, the new slot is stopped and traffic never moved. After it, the
    /// old slot must pass its health check again before it gets the traffic back.
    async fn undo(&mut self, p: Pending, reason: String) -> Result<String, DeployError> {
        let to = self.slot(&p.to.slot)?;
        let group = self
            .journal({
                let slot = to.name.clone();
                move |j| j.groups.get(&slot).copied()
            })
            .await?;
        if !p.phase.switched() {
            if p.action == Action::Deploy {
                let _ = to.instance.stop(group, STOP_GRACE).await;
            }
            let (release, why) = (p.to.clone(), reason.clone());
            self.journal(move |j| {
                j.pending = None;
                j.groups.remove(&release.slot);
                j.record("failed", &release, why);
            })
            .await?;
            self.report.reason = Some(format!("{reason}; traffic never moved"));
            return Ok(format!("traffic never moved, slot {} was stopped", to.name));
        }
        let Some(back) = p.from.clone() else {
            // The first release has nothing to go back to: it stays, and says so.
            let (release, why) = (p.to.clone(), reason.clone());
            self.journal(move |j| {
                j.pending = None;
                j.live = Some(release.clone());
                j.record("failed", &release, why);
            })
            .await?;
            self.report.reason = Some(reason.clone());
            return Ok(format!(
                "this was the first release: there is nothing to go back to, so slot {} is left as it is",
                to.name
            ));
        };
        self.log.note(&format!("rolling back to {} in slot {}", back.version, back.slot));
        let rollback = Pending {
            action: Action::Rollback,
            phase: Phase::Health,
            from: Some(p.to.clone()),
            to: back.clone(),
            started: now(),
            pid: std::process::id(),
            boot: Identity::current().boot.clone(),
            run_id: self.d.run_id.clone(),
            reason: Some(reason.clone()),
        };
        self.journal({
            let r = rollback.clone();
            move |j| j.pending = Some(r)
        })
        .await?;
        self.report.reason = Some(reason.clone());
        self.rolling_back = true;
        let back_slot = self.slot(&back.slot)?;
        let back_group = self
            .journal({
                let slot = back.slot.clone();
                move |j| j.groups.get(&slot).copied()
            })
            .await?;
        // Never send traffic to a slot that is not healthy, in a rollback too.
        self.enter(
            Phase::Health,
            format!("checking slot {} ({}) before it gets the traffic back", back.slot, back.version),
        )
        .await?;
        if let Err(e) = self
            .d
            .health
            .wait_healthy(&back_slot.address(), &back_slot.instance, back_group, self.log, self.cancel)
            .await
        {
            let new_ok =
                self.d.health.wait_healthy(&to.address(), &to.instance, group, self.log, self.cancel).await.is_ok();
            let (bad, why) = (p.to.clone(), format!("{reason}; rollback impossible: {e}"));
            self.journal(move |j| {
                j.pending = None;
                j.live = Some(bad.clone());
                j.record("failed", &bad, why);
            })
            .await?;
            let left = if new_ok {
                format!("slot {} (the new release) is healthy and keeps the traffic", to.name)
            } else {
                format!("neither slot is healthy; traffic was left on slot {}", to.name)
            };
            return Err(DeployError::Refused(format!(
                "{reason}; cannot roll back, slot {} is not healthy ({e}): {left}",
                back.slot
            )));
        }
        // The old slot keeps no `from` to drain from its own point of view: it
        // is the new slot that drains and stops.
        self.forward(&Pending { phase: Phase::Switch, ..rollback.clone() }).await?;
        self.report.outcome = "rolled-back".into();
        Ok(format!("rolled back to {} in slot {}", back.version, back.slot))
    }

    async fn retire_expired(&mut self, journal: &Journal) -> Result<(), DeployError> {
        let (Some(previous), Some(until)) = (&journal.previous, journal.kept_until) else { return Ok(()) };
        if until > now() {
            return Ok(());
        }
        let slot = self.slot(&previous.slot)?;
        let group = journal.groups.get(&slot.name).copied();
        self.log.note(&format!("stopping slot {} ({}): its keep-previous time is over", slot.name, previous.version));
        slot.instance.stop(group, STOP_GRACE).await?;
        let name = slot.name.clone();
        self.journal(move |j| {
            j.kept_until = None;
            j.groups.remove(&name);
        })
        .await
    }

    async fn finish(mut self, result: Result<(), DeployError>) -> (Result<(), DeployError>, Report) {
        self.close_phase();
        if let Some(probe) = self.probe.take() {
            let spec = self.d.probe.as_ref();
            let report = probe.finish(spec.map_or("", |s| s.url.as_str()), spec.map_or(0, |s| s.rate)).await;
            self.report.probe = Some(report);
        }
        if result.is_err() && self.report.reason.is_none() {
            self.report.reason = result.as_ref().err().map(|e| e.to_string());
        }
        (result, self.report)
    }
}

/// `14:05:03 UTC`.
fn clock(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").replace('Z', " UTC")
}
