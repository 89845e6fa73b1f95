//! What every deployment strategy shares: the journal, written before each
//! phase is acted on; the phases as the step's log and report show them; the
//! probe; the outcome.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::instance::Status;
use super::journal::{Action, Journal, Pending, Phase, Release};
use super::probe::Probe;
use super::{DeployError, DeployOutcome, DeployRun, PhaseReport, Report, SlotRun, StrategyRun};
use crate::plugin::contract::Backend;
use crate::step::StepLog;

/// Time a stopped instance gets to finish its requests.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(10);

/// A slot's share of the traffic in a route: `required` for the release
/// traffic moves to, not for the one it leaves.
pub(super) struct Share<'s> {
    pub(super) slot: &'s SlotRun,
    pub(super) weight: u32,
    pub(super) required: bool,
}

pub(super) struct Driver<'a> {
    pub(super) d: &'a DeployRun,
    pub(super) log: &'a StepLog,
    pub(super) cancel: &'a CancellationToken,
    pub(super) probe: Option<Probe>,
    pub(super) report: Report,
    pub(super) phase_started: Instant,
    /// Phases of an automatic rollback are reported (and probed) apart.
    pub(super) rolling_back: bool,
    /// Going back (an automatic rollback, or a rollback asked for): the
    /// probe's verdict no longer stops anything, it is reported at the end.
    pub(super) undoing: bool,
    /// When the new slot, healthy, was handed to the traffic switch.
    pub(super) switch_started: Option<Instant>,
}

impl<'a> Driver<'a> {
    pub(super) fn new(d: &'a DeployRun, log: &'a StepLog, cancel: &'a CancellationToken) -> Driver<'a> {
        let report = Report {
            strategy: d.strategy.name().into(),
            version: d.version.clone(),
            outcome: DeployOutcome::Failed,
            ..Report::default()
        };
        Driver {
            d,
            log,
            cancel,
            probe: None,
            report,
            phase_started: Instant::now(),
            rolling_back: false,
            undoing: false,
            switch_started: None,
        }
    }

    pub(super) async fn journal<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut Journal) -> T + Send + 'static,
    ) -> Result<T, DeployError> {
        let store = self.d.journal.clone();
        match tokio::task::spawn_blocking(move || store.update(change)).await {
            Ok(r) => Ok(r?),
            Err(e) => Err(DeployError::Refused(format!("internal error in pipe: {e}"))),
        }
    }

    pub(super) fn slot(&self, name: &str) -> Result<&'a SlotRun, DeployError> {
        self.d.slots.iter().find(|s| s.name == name).ok_or_else(|| {
            DeployError::Refused(format!("the journal names slot `{name}`, which the deploy no longer has"))
        })
    }

    /// Records the phase before acting on it, then checks the probe.
    pub(super) async fn enter(&mut self, phase: Phase, what: String) -> Result<(), DeployError> {
        self.enter_as(phase, phase.name().to_string(), what).await
    }

    /// `enter`, reported under a name of its own (`weight 10`, `batch 2 start`).
    pub(super) async fn enter_as(&mut self, phase: Phase, label: String, what: String) -> Result<(), DeployError> {
        self.close_phase();
        self.journal(move |j| {
            if let Some(p) = &mut j.pending {
                p.phase = phase;
            }
        })
        .await?;
        let name = if self.rolling_back { format!("rollback-{label}") } else { label };
        if let Some(probe) = &self.probe {
            probe.phase(&name);
            if phase.switched() {
                probe.count_from_here();
            }
        }
        self.log.note(&format!("▸ {name}: {what}"));
        self.report.phases.push(PhaseReport { phase: name, ms: 0, note: what });
        self.phase_started = Instant::now();
        self.check_probe()
    }

    pub(super) fn close_phase(&mut self) {
        if let Some(last) = self.report.phases.last_mut() {
            last.ms = self.phase_started.elapsed().as_millis() as u64;
        }
    }

    pub(super) fn note(&mut self, text: String) {
        self.log.note(&format!("  {text}"));
        if let Some(last) = self.report.phases.last_mut() {
            last.note = format!("{}; {text}", last.note);
        }
    }

    /// Failures before the switch are the old release's, not the deployment's:
    /// they are reported, and only failures from the switch on count against
    /// `max-failures`.
    ///
    /// A probe verdict is a reason to roll back, never a reason to stop
    /// rolling back: while going back it stops nothing (see [`Self::probe_verdict`]).
    pub(super) fn check_probe(&self) -> Result<(), DeployError> {
        if self.undoing {
            return Ok(());
        }
        match self.probe_verdict() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The probe's failures over `max-failures`, if they are.
    pub(super) fn probe_verdict(&self) -> Option<DeployError> {
        let (Some(probe), Some(spec)) = (&self.probe, &self.d.probe) else { return None };
        let failures = probe.counted_failures();
        (failures > spec.max_failures).then_some(DeployError::Probe { failures, max: spec.max_failures })
    }

    pub(super) fn start_probe(&mut self, phase: Phase) {
        if let (None, Some(spec)) = (&self.probe, &self.d.probe) {
            match Probe::start(&spec.url, spec.rate, phase.name()) {
                Ok(p) => self.probe = Some(p),
                Err(e) => self.log.note(&format!("probe not started: {e}")),
            }
        }
    }

    /// Moves a pending deployment forward from its recorded phase; on
    /// failure, undoes it (or leaves it to `resume`/`rollback` when cancelled).
    pub(super) async fn carry(&mut self, pending: Pending) -> Result<(), DeployError> {
        self.report.version = pending.to.version.clone();
        self.report.slot = pending.to.slots.join(", ");
        self.report.from = pending.from.as_ref().map(|f| f.slots.join(", "));
        self.undoing |= pending.action == Action::Rollback;
        // Something serves already: probe it from the start.
        if pending.from.is_some() {
            self.start_probe(pending.phase);
        }
        let forward = match &self.d.strategy {
            StrategyRun::Rolling(r) => self.roll(&pending, *r).await,
            StrategyRun::BlueGreen | StrategyRun::Canary(_) => self.forward(&pending).await,
        };
        match forward {
            Ok(()) => {
                let (kind, what) = match pending.action {
                    Action::Deploy => ("succeeded", "is live"),
                    Action::Rollback => ("rolled-back", "is live again"),
                };
                let live = self.journal(|j| j.live.clone()).await?;
                let place = live.map(|l| l.place()).unwrap_or_default();
                self.notify(kind, format!("{} {what} in {place}", pending.to.version), self.numbers()).await;
                if let Some(verdict) = self.probe_verdict() {
                    self.log.note(&format!("{verdict} while going back"));
                }
                Ok(())
            }
            Err(DeployError::Cancelled) => {
                self.report.outcome = DeployOutcome::Interrupted;
                self.log.note("interrupted: the journal keeps the phase; `pipe deploy resume` or `rollback` ends it");
                Err(DeployError::Cancelled)
            }
            Err(e) => {
                // The journal knows how far it got (phase, batch, canary step).
                let pending = self.journal(|j| j.pending.clone()).await?.unwrap_or(pending);
                let reason = format!("{} failed: {e}", pending.phase.name());
                let failed = match pending.action {
                    Action::Deploy => match self.undo(pending, reason.clone()).await {
                        // Both facts: why it went back, and what the probe saw
                        // (if that was not already the reason).
                        Ok(done) => {
                            let probe = match (&e, self.probe_verdict()) {
                                (DeployError::Probe { .. }, _) | (_, None) => String::new(),
                                (_, Some(verdict)) => format!("; {verdict}"),
                            };
                            Err(DeployError::Refused(format!("{reason}; {done}{probe}")))
                        }
                        Err(e) => Err(e),
                    },
                    // A rollback that fails leaves traffic where it is.
                    Action::Rollback => {
                        self.journal(move |j| j.pending = None).await?;
                        Err(DeployError::Refused(format!(
                            "the rollback failed ({reason}); traffic was left where it was"
                        )))
                    }
                };
                let kind = if self.report.outcome == DeployOutcome::RolledBack { "rolled-back" } else { "failed" };
                let message = failed.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
                self.notify(kind, message, self.numbers()).await;
                failed
            }
        }
    }

    /// Undoes a failed or abandoned deployment; says what it did.
    pub(super) async fn undo(&mut self, p: Pending, reason: String) -> Result<String, DeployError> {
        match &self.d.strategy {
            StrategyRun::Rolling(r) => self.roll_back(p, *r, reason).await,
            StrategyRun::BlueGreen | StrategyRun::Canary(_) => self.switch_back(p, reason).await,
        }
    }

    /// A failed first release has nothing to go back to: it stays live, and
    /// the journal says it failed.
    pub(super) async fn keep_first_release(&self, release: Release, why: String) -> Result<(), DeployError> {
        self.journal(move |j| {
            j.pending = None;
            j.live = Some(release.clone());
            j.record(DeployOutcome::Failed, &release, why);
        })
        .await
    }

    /// The process group the journal recorded for a slot's `command` instance.
    pub(super) async fn group(&self, slot: &str) -> Result<Option<crate::step::ProcessGroup>, DeployError> {
        let slot = slot.to_string();
        self.journal(move |j| j.groups.get(&slot).cloned()).await
    }

    /// Waits until `slot` has no connection left (or the drain time is over).
    pub(super) async fn drain(&mut self, slot: &SlotRun) -> Result<(), DeployError> {
        let drained = tokio::select! {
            d = super::drain::drain(slot.port, self.d.drain) => d,
            () = self.cancel.cancelled() => return Err(DeployError::Cancelled),
        };
        let note = match drained.left {
            0 => format!("slot {} drained in {}", slot.name, super::instance::fmt(drained.waited)),
            n => format!(
                "slot {}: {n} connection(s) still open after {}; stopping gracefully",
                slot.name,
                super::instance::fmt(drained.waited)
            ),
        };
        self.note(note);
        self.check_probe()
    }

    /// Tells the traffic switch where traffic goes, after checking every slot
    /// that is to take some: traffic never goes to a slot that is not
    /// healthy now. A slot of the release being left that fails its check
    /// takes no traffic (a dead old instance is a reason to replace it, not
    /// to stop); one of the release being moved to fails the route.
    pub(super) async fn route(&mut self, shares: &[Share<'_>]) -> Result<String, DeployError> {
        let mut backends: Vec<Backend> = Vec::new();
        for share in shares {
            let mut weight = share.weight;
            if weight > 0 {
                let slot = share.slot;
                let group = self.group(&slot.name).await?;
                let address = slot.address();
                match self.d.health.wait_healthy(&address, &slot.instance, group.as_ref(), self.log, self.cancel).await
                {
                    Ok(_) => {}
                    Err(e) if share.required || matches!(e, DeployError::Cancelled) => return Err(e),
                    Err(e) => {
                        self.note(format!("slot {} is not healthy, it takes no traffic: {e}", slot.name));
                        weight = 0;
                    }
                }
            }
            if !backends.iter().any(|b| b.address == share.slot.address()) {
                backends.push(Backend { address: share.slot.address(), weight });
            }
        }
        if backends.iter().all(|b| b.weight == 0) {
            return Err(DeployError::Refused(
                "no slot that is to take traffic is healthy: traffic stays where it is".into(),
            ));
        }
        let began = Instant::now();
        let note = self.d.traffic.route(&backends, self.log, self.cancel).await?;
        // Without a public URL to verify, the switch is measured to the proxy's confirmation.
        if self.d.verify.is_none() && self.report.switch_ms.is_none() {
            let from = self.switch_started.unwrap_or(began);
            self.report.switch_ms = Some(from.elapsed().as_secs_f64() * 1000.0);
        }
        Ok(note)
    }

    /// Makes sure `slot` runs `version` before traffic goes back to it: an
    /// instance that is gone (a reboot), or that may have been told to stop
    /// (pipe killed while finishing), is started again as its release was
    /// rendered. One that cannot be rendered is left to its health check.
    pub(super) async fn revive(
        &mut self,
        slot: &SlotRun,
        version: &str,
        maybe_stopping: bool,
    ) -> Result<(), DeployError> {
        let Ok(instance) = self.d.instance_for(slot, version) else { return Ok(()) };
        let why = match instance.status(self.group(&slot.name).await?.as_ref()).await {
            Status::Dead(how) => how,
            Status::Running if maybe_stopping => "it may have been told to stop".into(),
            Status::Running => return Ok(()),
        };
        self.note(format!("slot {} ({version}): {why}; starting it again", slot.name));
        self.restart(slot, &instance, false).await.map(|_| ())
    }

    /// Stops whatever `slot` runs, starts `instance` in it, and records the
    /// process group it runs in; with `replacing_kept`, a release kept in
    /// that slot for a rollback is no longer kept (it was just stopped).
    pub(super) async fn restart(
        &mut self,
        slot: &SlotRun,
        instance: &super::InstanceRun,
        replacing_kept: bool,
    ) -> Result<Option<crate::step::ProcessGroup>, DeployError> {
        let group = self.group(&slot.name).await?;
        // A group that is not provably pipe's is reported, not signalled.
        if let Err(e) = instance.stop(group.as_ref(), STOP_GRACE).await {
            self.note(format!("could not stop slot {}: {e}", slot.name));
        }
        if let Some(holder) = super::ports::held(slot.port).await {
            return Err(DeployError::Instance(format!(
                "slot {} cannot start: its port {} is taken by {holder}",
                slot.name, slot.port
            )));
        }
        let group = instance.start(self.log, self.cancel).await?;
        let (name, recorded) = (slot.name.clone(), group.clone());
        self.journal(move |j| {
            if replacing_kept && j.previous.as_ref().is_some_and(|r| r.slots.contains(&name)) {
                j.previous = None;
                j.kept_until = None;
            }
            match recorded {
                Some(g) => j.groups.insert(name, g),
                None => j.groups.remove(&name),
            };
        })
        .await?;
        Ok(group)
    }

    /// `deploy.<name>/live-slot`, `live-version`, `live-port`, `live-addresses`:
    /// facts other steps read as `${state.deploy.<name>/live-port}`.
    pub(super) async fn write_facts(&self) -> Result<(), DeployError> {
        let store = self.d.journal.store().clone();
        let ns = format!("deploy.{}", self.d.name);
        let live = self.journal(|j| j.live.clone()).await?;
        let Some(live) = live else { return Ok(()) };
        let slots: Vec<&SlotRun> = live.slots.iter().filter_map(|s| self.slot(s).ok()).collect();
        let port = slots.first().map(|s| s.port.to_string()).unwrap_or_default();
        let addresses = slots.iter().map(|s| s.address()).collect::<Vec<_>>().join(",");
        let write = move || {
            store.update(|m| {
                m.insert(format!("{ns}/live-slot"), live.slots.join(","));
                m.insert(format!("{ns}/live-version"), live.version.clone());
                m.insert(format!("{ns}/live-port"), port);
                m.insert(format!("{ns}/live-addresses"), addresses);
            })
        };
        tokio::task::spawn_blocking(write).await.map_err(|e| DeployError::Refused(e.to_string()))??;
        Ok(())
    }

    /// What a notification carries besides its message.
    pub(super) fn numbers(&self) -> Vec<(String, String)> {
        let mut out = vec![("slots".to_string(), self.report.slot.clone())];
        if let Some(v) = self.report.verdicts.last() {
            out.push(("last verdict".into(), format!("{}: {}", v.outcome, v.reason)));
        }
        if let Some(r) = &self.report.reason {
            out.push(("reason".into(), r.clone()));
        }
        out
    }

    pub(super) async fn finish(mut self, result: Result<(), DeployError>) -> (Result<(), DeployError>, Report) {
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
