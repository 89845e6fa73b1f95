//! Rolling: replacing a fleet of `replicas` instances batch by batch, surge
//! first, so that serving capacity never drops below `replicas`.
//!
//! A batch: start `batch` new instances in free slots -> health-check each
//! directly -> add them to the traffic -> take as many old ones out of it
//! (weight 0), drain them and stop them. Every batch is recorded in the
//! journal before each phase, so a killed `pipe` resumes the batch it was in.
//! On failure the batches already replaced are rolled back the same way: a
//! rolling deployment of the old version, started from the previous
//! release's instances, over the new ones.

use std::collections::BTreeSet;
use std::time::Instant;

use super::driver::{Driver, STOP_GRACE, Share};
use super::journal::{Action, Batch, Pending, Phase, Release, now};
use super::{DeployError, DeployOutcome, SlotRun};
use crate::lang::model::Rolling;

impl Driver<'_> {
    /// Carries a rolling deployment (or its rollback) forward to its end.
    pub(super) async fn roll(&mut self, p: &Pending, r: Rolling) -> Result<(), DeployError> {
        let mut p = p.clone();
        // Members that died (a reboot) are started again before anything moves.
        for name in p.to.slots.clone() {
            let slot = self.slot(&name)?;
            self.revive(slot, &p.to.version, false).await?;
        }
        loop {
            let idle = p.batch.starting.is_empty() && p.batch.retiring.is_empty();
            if idle && !self.next_batch(&mut p, r).await? {
                break;
            }
            let started = Instant::now();
            self.batch(&mut p).await?;
            self.report.overhead_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let serving = p.to.place();
        self.enter(Phase::Finish, format!("checking {serving} once more and recording the release")).await?;
        // Success is not declared with a member that died during the rollout.
        for name in p.to.slots.clone() {
            let slot = self.slot(&name)?;
            let group = self.group(&name).await?;
            self.d.health.wait_healthy(&slot.address(), &slot.instance, group.as_ref(), self.log, self.cancel).await?;
        }
        let p2 = p.clone();
        self.journal(move |j| {
            let to = Release { since: now(), ..p2.to.clone() };
            match p2.action {
                Action::Deploy => {
                    j.previous = p2.from.clone();
                    j.record(DeployOutcome::Deployed, &to, "");
                }
                Action::Rollback => {
                    j.previous = None;
                    j.record(DeployOutcome::RolledBack, &to, p2.reason.clone().unwrap_or_default());
                }
            }
            j.kept_until = None;
            j.live = Some(to);
            j.pending = None;
        })
        .await?;
        self.write_facts().await?;
        self.close_phase();
        self.report.slot = p.to.slots.join(", ");
        self.report.outcome = match p.action {
            Action::Deploy => DeployOutcome::Deployed,
            Action::Rollback => DeployOutcome::RolledBack,
        };
        self.log.note(&format!("✓ {} is live in {serving}", p.to.version));
        Ok(())
    }

    /// Plans the next batch into the journal; false when the rollout is done.
    async fn next_batch(&mut self, p: &mut Pending, r: Rolling) -> Result<bool, DeployError> {
        let old: Vec<String> = p.from.as_ref().map(|f| f.slots.clone()).unwrap_or_default();
        let serving = p.to.slots.len() as u32;
        if serving >= r.replicas && old.is_empty() {
            return Ok(false);
        }
        let add = r.batch.min(r.replicas.saturating_sub(serving)) as usize;
        let used: BTreeSet<&String> = p.to.slots.iter().chain(&old).collect();
        let free: Vec<String> =
            self.d.slots.iter().map(|s| s.name.clone()).filter(|s| !used.contains(s)).take(add).collect();
        if free.len() < add {
            return Err(DeployError::Refused(format!(
                "no free slot for a new instance ({} slots, {} in use)",
                self.d.slots.len(),
                used.len()
            )));
        }
        // Never below `replicas` serving: retire only what the new ones replace.
        let after = serving as usize + add + old.len();
        let retire = after.saturating_sub(r.replicas as usize).min(old.len());
        p.batch = Batch { number: p.batch.number + 1, starting: free, retiring: old[..retire].to_vec() };
        p.phase = Phase::Start;
        let planned = p.clone();
        self.journal(move |j| j.pending = Some(planned)).await?;
        Ok(true)
    }

    /// Runs the batch in progress from its recorded phase.
    async fn batch(&mut self, p: &mut Pending) -> Result<(), DeployError> {
        let n = p.batch.number;
        let starting: Vec<&SlotRun> = p.batch.starting.iter().map(|s| self.slot(s)).collect::<Result<_, _>>()?;
        let names = |slots: &[&SlotRun]| {
            let list = slots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
            if slots.len() == 1 { format!("slot {list}") } else { format!("slots {list}") }
        };
        if p.phase <= Phase::Start && !starting.is_empty() {
            let what = format!("starting {} in {}", p.to.version, names(&starting));
            self.enter_as(Phase::Start, format!("batch {n} start"), what).await?;
            p.phase = Phase::Start;
            for slot in &starting {
                let instance = self.d.instance_for(slot, &p.to.version)?;
                self.restart(slot, &instance, false).await?;
            }
        }
        if p.phase <= Phase::Health && !starting.is_empty() {
            self.enter_as(
                Phase::Health,
                format!("batch {n} health"),
                format!("checking {} directly", names(&starting)),
            )
            .await?;
            p.phase = Phase::Health;
            self.check_each(&starting, "").await?;
        }
        if p.phase == Phase::Switch {
            // Resumed at the switch: whatever the journal says, the new
            // instances are checked now, before they get traffic.
            self.check_each(&starting, " (checked again before the switch)").await?;
        }
        if p.phase <= Phase::Switch {
            let what = format!("adding {} to the traffic", if starting.is_empty() { "nothing" } else { "them" });
            self.enter_as(Phase::Switch, format!("batch {n} switch"), what).await?;
            p.phase = Phase::Switch;
            let mut serving: Vec<String> = p.to.slots.clone();
            serving.extend(p.batch.starting.iter().cloned());
            let note = self.route_fleet(&serving, p.from.as_ref().map_or(&[][..], |f| &f.slots), &[]).await?;
            self.note(note);
            p.to.slots = serving;
            p.batch.starting.clear();
            let saved = p.clone();
            self.journal(move |j| j.pending = Some(saved)).await?;
        }
        let retiring: Vec<&SlotRun> = p.batch.retiring.iter().map(|s| self.slot(s)).collect::<Result<_, _>>()?;
        if !retiring.is_empty() {
            let what = format!("taking {} out of the traffic, draining and stopping", names(&retiring));
            self.enter_as(Phase::Drain, format!("batch {n} drain"), what).await?;
            p.phase = Phase::Drain;
            let old = p.from.as_ref().map_or(&[][..], |f| &f.slots);
            let note = self.route_fleet(&p.to.slots, old, &p.batch.retiring).await?;
            self.note(note);
            for slot in &retiring {
                self.drain(slot).await?;
                if let Err(e) = slot.instance.stop(self.group(&slot.name).await?.as_ref(), STOP_GRACE).await {
                    self.note(format!("could not stop slot {}: {e}", slot.name));
                }
            }
            let gone = std::mem::take(&mut p.batch.retiring);
            if let Some(from) = &mut p.from {
                from.slots.retain(|s| !gone.contains(s));
            }
            let saved = p.clone();
            self.journal(move |j| {
                gone.iter().for_each(|s| {
                    j.groups.remove(s);
                });
                j.pending = Some(saved);
            })
            .await?;
        }
        Ok(())
    }

    /// Health-checks each of `slots` in turn, noting how each answered.
    async fn check_each(&mut self, slots: &[&SlotRun], when: &str) -> Result<(), DeployError> {
        for slot in slots {
            let group = self.group(&slot.name).await?;
            let note = self
                .d
                .health
                .wait_healthy(&slot.address(), &slot.instance, group.as_ref(), self.log, self.cancel)
                .await?;
            self.note(format!("slot {}{when}: {note}", slot.name));
        }
        Ok(())
    }

    /// Tells the switch: `new` and `old` slots take traffic, except `leaving` (weight 0).
    async fn route_fleet(&mut self, new: &[String], old: &[String], leaving: &[String]) -> Result<String, DeployError> {
        let mut shares = Vec::new();
        for (name, required) in new.iter().map(|n| (n, true)).chain(old.iter().map(|n| (n, false))) {
            let weight = u32::from(!leaving.contains(name));
            shares.push(Share { slot: self.slot(name)?, weight, required });
        }
        self.route(&shares).await
    }

    /// Undoes a failed rolling deployment: what never took traffic is
    /// stopped; what did is replaced by the old version, batch by batch.
    pub(super) async fn roll_back(&mut self, p: Pending, r: Rolling, reason: String) -> Result<String, DeployError> {
        self.report.reason = Some(reason.clone());
        // New instances of the batch in progress, which may already take
        // traffic once the switch was reached: out of the traffic, then stopped.
        let untried: Vec<String> = p.batch.starting.clone();
        // Old instances leave the traffic only in the drain: before it they
        // still serve, and stay.
        let retired: Vec<String> = if p.phase >= Phase::Drain { p.batch.retiring.clone() } else { Vec::new() };
        let old = p.from.clone().map(|mut f| {
            f.slots.retain(|s| !retired.contains(s));
            f
        });
        // What is gone back to serves on; gone with a reboot, it is started again.
        if let Some(old) = &old {
            for name in &old.slots {
                let slot = self.slot(name)?;
                self.revive(slot, &old.version, false).await?;
            }
        }
        if p.phase == Phase::Switch && !untried.is_empty() {
            let serving: Vec<String> = old.iter().flat_map(|o| o.slots.clone()).chain(p.to.slots.clone()).collect();
            let shares: Vec<Share> = serving
                .iter()
                .map(|n| Ok(Share { slot: self.slot(n)?, weight: 1, required: false }))
                .collect::<Result<_, DeployError>>()?;
            if !shares.is_empty() {
                let note = self.route(&shares).await?;
                self.note(note);
            }
        }
        for name in untried.iter().chain(&retired) {
            let slot = self.slot(name)?;
            let _ = slot.instance.stop(self.group(name).await?.as_ref(), STOP_GRACE).await;
        }
        if p.to.slots.is_empty() {
            let (release, why) = (p.to.clone(), reason.clone());
            self.journal(move |j| {
                j.pending = None;
                untried.iter().chain(&retired).for_each(|s| {
                    j.groups.remove(s);
                });
                j.record(DeployOutcome::Failed, &release, why);
            })
            .await?;
            return Ok("traffic never moved: the new instances were stopped".into());
        }
        let Some(old) = old else {
            self.keep_first_release(p.to.clone(), reason.clone()).await?;
            return Ok(format!(
                "this was the first release: there is nothing to go back to, so {} keep serving",
                p.to.place()
            ));
        };
        self.log.note(&format!("rolling back to {}: replacing {} batch by batch", old.version, p.to.place()));
        let rollback = Pending::new(Action::Rollback, Some(p.to.clone()), old.clone(), &self.d.run_id, Some(reason));
        let saved = rollback.clone();
        self.journal(move |j| j.pending = Some(saved)).await?;
        self.rolling_back = true;
        self.undoing = true;
        self.roll(&rollback, r).await?;
        self.report.outcome = DeployOutcome::RolledBack;
        Ok(format!("rolled back to {} in {}", old.version, self.report.slot))
    }
}
