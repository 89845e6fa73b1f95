//! Blue-green (and canary): moving all traffic from one slot to the other in an order that
//! cannot drop a request, and back again when anything fails.
//!
//! Forward: start the new slot -> health-check it directly -> switch -> verify
//! through the public URL -> drain the old slot (no connection left) -> keep
//! it for `keep-previous`, or stop it. Failure before the switch stops the new
//! slot (traffic never moved); after it, the old slot is checked, switched
//! back to, verified and the new one drained and stopped. Traffic is never
//! sent to a slot that has not just passed its health check; if neither slot
//! is healthy, traffic stays where it is and the deployment fails loudly.
//!
//! A canary is the same switch with the traffic moved in weighted steps
//! (`canary.rs`); a rollback moves it back all at once.

use std::time::{Duration, Instant};

use super::driver::{Driver, STOP_GRACE, Share};
use super::instance::Status;
use super::journal::{Action, Journal, Pending, Phase, Release, now};
use super::{DeployError, DeployOutcome, SlotRun, StrategyRun};

impl Driver<'_> {
    /// Blue-green and canary: carries a pending switch between two slots
    /// forward from its recorded phase.
    pub(super) async fn forward(&mut self, p: &Pending) -> Result<(), DeployError> {
        let to = self.slot(p.to.slot())?;
        let from = p.from.as_ref().map(|f| self.slot(f.slot())).transpose()?;
        let mut group = self.group(&to.name).await?;
        if p.phase <= Phase::Start {
            match p.action {
                Action::Deploy => {
                    self.enter(Phase::Start, format!("starting {} in slot {}", to.instance.describe(), to.name))
                        .await?;
                    // The slot may still run the release before the live one
                    // (kept, not live): it is replaced, and no longer kept.
                    group = self.restart(to, &to.instance, true).await?;
                }
                Action::Rollback => {
                    self.enter(Phase::Start, format!("slot {} still runs {}", to.name, p.to.version)).await?;
                }
            }
        }
        if p.phase <= Phase::Health {
            self.enter(Phase::Health, format!("checking {} directly", to.address())).await?;
            let note =
                self.d.health.wait_healthy(&to.address(), &to.instance, group.as_ref(), self.log, self.cancel).await?;
            self.note(note);
        } else {
            // Whatever the journal says (resumed at the switch or after it),
            // the slot is checked now, before traffic moves to it or the
            // other slot is drained; the phase recorded stays, so a failure
            // here is undone as a failure after the switch.
            self.log.note(&format!(
                "  the journal says `{}`: checking {} (slot {}) before going on",
                p.phase.name(),
                to.address(),
                to.name
            ));
            let note =
                self.d.health.wait_healthy(&to.address(), &to.instance, group.as_ref(), self.log, self.cancel).await?;
            self.note(note);
        }
        if p.phase <= Phase::Switch {
            match (&self.d.strategy, p.action, from) {
                (StrategyRun::Canary(c), Action::Deploy, Some(from)) => self.canary(c, p, to, from).await?,
                // Blue-green; a canary going back, or on a first release (nothing
                // to compare with): all at once. (Rolling never switches slots here.)
                (StrategyRun::BlueGreen | StrategyRun::Canary(_) | StrategyRun::Rolling(_), _, _) => {
                    self.enter(Phase::Switch, format!("sending traffic to slot {}", to.name)).await?;
                    self.switch_started = Some(Instant::now());
                    let mut shares = vec![Share { slot: to, weight: 1, required: true }];
                    shares.extend(from.map(|f| Share { slot: f, weight: 0, required: false }));
                    let note = self.route(&shares).await?;
                    self.note(note);
                }
            }
        }
        if p.phase <= Phase::Verify
            && let Some(v) = &self.d.verify
        {
            self.enter(Phase::Verify, format!("through {}", v.url)).await?;
            // Going back, the old version's body is whatever it is.
            let verdict = || if self.undoing { None } else { self.probe_verdict() };
            let (note, first_good) = v.run(p.action == Action::Deploy, self.cancel, &verdict).await?;
            if let Some(at) = self.switch_started {
                self.report.switch_ms = Some(first_good.saturating_duration_since(at).as_secs_f64() * 1000.0);
            }
            self.note(note);
        }
        if p.phase <= Phase::Drain
            && let Some(from) = from
        {
            self.enter(Phase::Drain, format!("waiting until slot {} has no connection left", from.name)).await?;
            self.drain(from).await?;
        }
        self.enter(Phase::Finish, "recording the release".into()).await?;
        self.complete(p, to, from).await
    }

    /// The switch is done: `to` is live; `from` is kept for a rollback, or stopped.
    async fn complete(&mut self, p: &Pending, to: &SlotRun, from: Option<&SlotRun>) -> Result<(), DeployError> {
        // Every request from the switch to here counts, and the new slot must
        // still be running: the last look comes while the old slot still
        // runs, so a failure can still go back.
        self.check_probe()?;
        if p.action == Action::Deploy {
            let group = self.group(&to.name).await?;
            if let Status::Dead(how) = to.instance.status(group.as_ref()).await {
                return Err(DeployError::Died {
                    what: to.instance.describe(),
                    how,
                    last: to.instance.last_lines().await,
                });
            }
        }
        let keep = match (p.action, from) {
            (Action::Deploy, Some(_)) if !self.d.keep_previous.is_zero() => {
                Some(now() + self.d.keep_previous.as_secs())
            }
            _ => None,
        };
        if let (Some(from), None) = (from, keep) {
            let group = self.group(&from.name).await?;
            if let Err(e) = from.instance.stop(group.as_ref(), STOP_GRACE).await {
                self.note(format!("could not stop slot {}: {e}", from.name));
            }
        }
        let p2 = p.clone();
        self.journal(move |j| {
            let to = Release { since: now(), ..p2.to.clone() };
            match p2.action {
                Action::Deploy => {
                    j.previous = p2.from.clone();
                    j.kept_until = keep;
                    j.record(DeployOutcome::Deployed, &to, "");
                }
                Action::Rollback => {
                    j.previous = None;
                    j.kept_until = None;
                    j.record(DeployOutcome::RolledBack, &to, p2.reason.clone().unwrap_or_default());
                }
            }
            if p2.action == Action::Rollback
                && let Some(bad) = &p2.from
            {
                for slot in &bad.slots {
                    j.groups.remove(slot);
                }
            }
            j.live = Some(to);
            j.pending = None;
        })
        .await?;
        self.write_facts().await?;
        self.close_phase();
        self.report.outcome = match p.action {
            Action::Deploy => DeployOutcome::Deployed,
            Action::Rollback => DeployOutcome::RolledBack,
        };
        let kept = match (keep, from) {
            (Some(until), Some(f)) => format!("; slot {} kept for a rollback until {}", f.name, clock(until)),
            _ => String::new(),
        };
        self.log.note(&format!("✓ {} is live in slot {}{kept}", p.to.version, p.to.slot()));
        Ok(())
    }

    /// Undoes a failed or abandoned switch; says what it did. Before the
    /// switch, the new slot is stopped and traffic never moved. After it, the
    /// old slot must pass its health check again before it gets the traffic back.
    pub(super) async fn switch_back(&mut self, p: Pending, reason: String) -> Result<String, DeployError> {
        let to = self.slot(p.to.slot())?;
        let group = self.group(&to.name).await?;
        if !p.phase.switched() {
            if p.action == Action::Deploy {
                let _ = to.instance.stop(group.as_ref(), STOP_GRACE).await;
            }
            // What served before serves on; gone with a reboot, it is started again.
            if let Some(from) = &p.from {
                self.revive(self.slot(from.slot())?, &from.version, false).await?;
            }
            let (release, why) = (p.to.clone(), reason.clone());
            self.journal(move |j| {
                j.pending = None;
                j.groups.remove(release.slot());
                j.record(DeployOutcome::Failed, &release, why);
            })
            .await?;
            self.report.reason = Some(format!("{reason}; traffic never moved"));
            return Ok(format!("traffic never moved, slot {} was stopped", to.name));
        }
        let Some(back) = p.from.clone() else {
            // The first release has nothing to go back to: it stays, and says so.
            self.keep_first_release(p.to.clone(), reason.clone()).await?;
            self.report.reason = Some(reason.clone());
            return Ok(format!(
                "this was the first release: there is nothing to go back to, so slot {} is left as it is",
                to.name
            ));
        };
        self.log.note(&format!("rolling back to {} in {}", back.version, back.place()));
        let rollback = Pending {
            phase: Phase::Health,
            ..Pending::new(Action::Rollback, Some(p.to.clone()), back.clone(), &self.d.run_id, Some(reason.clone()))
        };
        self.journal({
            let r = rollback.clone();
            move |j| j.pending = Some(r)
        })
        .await?;
        self.report.reason = Some(reason.clone());
        self.rolling_back = true;
        self.undoing = true;
        let back_slot = self.slot(back.slot())?;
        // Killed while finishing, pipe may have told the old slot to stop.
        let told_to_stop = p.phase == Phase::Finish && self.d.keep_previous.is_zero();
        self.revive(back_slot, &back.version, told_to_stop).await?;
        let back_group = self.group(back.slot()).await?;
        // Never send traffic to a slot that is not healthy, in a rollback too.
        self.enter(
            Phase::Health,
            format!("checking {} ({}) before it gets the traffic back", back.place(), back.version),
        )
        .await?;
        if let Err(e) = self
            .d
            .health
            .wait_healthy(&back_slot.address(), &back_slot.instance, back_group.as_ref(), self.log, self.cancel)
            .await
        {
            let new_ok = self
                .d
                .health
                .wait_healthy(&to.address(), &to.instance, group.as_ref(), self.log, self.cancel)
                .await
                .is_ok();
            let (bad, why) = (p.to.clone(), format!("{reason}; rollback impossible: {e}"));
            self.journal(move |j| {
                j.pending = None;
                j.live = Some(bad.clone());
                j.record(DeployOutcome::Failed, &bad, why);
            })
            .await?;
            let left = if new_ok {
                format!("slot {} (the new release) is healthy and keeps the traffic", to.name)
            } else {
                format!("neither slot is healthy; traffic was left on slot {}", to.name)
            };
            return Err(DeployError::Refused(format!(
                "{reason}; cannot roll back, {} is not healthy ({e}): {left}",
                back.place()
            )));
        }
        // The old slot keeps no `from` to drain from its own point of view: it
        // is the new slot that drains and stops.
        self.forward(&Pending { phase: Phase::Switch, ..rollback.clone() }).await?;
        self.report.outcome = DeployOutcome::RolledBack;
        Ok(format!("rolled back to {} in {}", back.version, back.place()))
    }

    pub(super) async fn retire_expired(&mut self, journal: &Journal) -> Result<(), DeployError> {
        let (Some(previous), Some(until)) = (&journal.previous, journal.kept_until) else { return Ok(()) };
        if until > now() {
            return Ok(());
        }
        self.log.note(&format!("stopping {} ({}): its keep-previous time is over", previous.place(), previous.version));
        for name in &previous.slots {
            let slot = self.slot(name)?;
            // A group that is not provably pipe's is reported, not signalled, and does not block the deploy.
            if let Err(e) = slot.instance.stop(journal.groups.get(name), STOP_GRACE).await {
                self.log.note(&format!("  could not stop slot {name}: {e}"));
            }
        }
        let names = previous.slots.clone();
        self.journal(move |j| {
            j.kept_until = None;
            names.iter().for_each(|n| {
                j.groups.remove(n);
            });
        })
        .await
    }
}

/// `14:05:03 UTC`.
fn clock(unix: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(unix);
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").replace('Z', " UTC")
}
