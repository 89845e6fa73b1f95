//! Canary: the switch of a blue-green deployment made in weighted steps. At
//! each step the new slot gets its share of the traffic, held for the step's
//! pause while the analysis judges window after window; a step may then wait
//! for a person to promote it. A failed verdict, an abort or a timeout fails
//! the step, and the deployment rolls back as blue-green does (all traffic
//! back to the old slot, which is health-checked first).

use std::time::{Duration, Instant};

use super::analysis::{Outcome, unix_ms};
use super::driver::{Driver, Share};
use super::journal::{Pending, Phase, Verdict};
use super::{CanaryRun, DeployError, SlotRun};
use crate::approval::{self, Gate};
use crate::lang::model::{CanaryStep, OnNoData};

impl Driver<'_> {
    /// Moves the traffic step by step, from the step the journal recorded.
    pub(super) async fn canary(
        &mut self,
        c: &CanaryRun,
        p: &Pending,
        to: &SlotRun,
        from: &SlotRun,
    ) -> Result<(), DeployError> {
        let first = if p.phase == Phase::Switch { p.step } else { 0 };
        let count = c.steps.len();
        for (i, step) in c.steps.iter().enumerate().skip(first) {
            let began = Instant::now();
            let w = step.weight;
            self.journal(move |j| {
                if let Some(p) = &mut j.pending {
                    p.step = i;
                    p.weight = Some(w);
                }
            })
            .await?;
            let what = format!(
                "{w}% of the traffic to slot {} ({}), {}% to slot {}",
                to.name,
                p.to.version,
                100 - w,
                from.name
            );
            self.enter_as(Phase::Switch, format!("weight {w}"), what).await?;
            self.switch_started.get_or_insert_with(Instant::now);
            let shares =
                [Share { slot: to, weight: w, required: true }, Share { slot: from, weight: 100 - w, required: false }];
            let note = self.route(&shares).await?;
            self.note(note);
            let label = format!("step {}/{count}", i + 1);
            let details = vec![("weight".to_string(), format!("{w}%")), ("step".to_string(), label.clone())];
            self.notify("step-reached", format!("{} takes {w}% of the traffic ({label})", p.to.version), details).await;
            let mut waited = Duration::ZERO;
            if !step.pause.is_zero() {
                waited += self.hold(c, step, to, from).await?;
            }
            if step.approve {
                let why = format!("promotion of {} from {w}%", p.to.version);
                waited += self.await_person(&why, step.timeout).await?;
            }
            if w == 100 {
                let message = format!("{} promoted: it takes all the traffic", p.to.version);
                self.notify("promoted", message, self.numbers()).await;
            }
            self.report.overhead_ms.push(began.elapsed().saturating_sub(waited).as_secs_f64() * 1000.0);
        }
        Ok(())
    }

    /// Holds the step's weight for its pause, judging the analysis windows in
    /// it; returns the time spent waiting (the pause, and for people).
    async fn hold(
        &mut self,
        c: &CanaryRun,
        step: &CanaryStep,
        to: &SlotRun,
        from: &SlotRun,
    ) -> Result<Duration, DeployError> {
        let Some(a) = &c.analysis else {
            self.note(format!("holding {}% for {}", step.weight, humantime::format_duration(step.pause)));
            self.sleep(step.pause).await?;
            return Ok(step.pause);
        };
        // Whole windows: a short last window would judge too few requests.
        let windows = (step.pause.as_millis() / a.window.as_millis().max(1)).max(1) as u32;
        let each = step.pause / windows;
        let (canary, baseline) = (vec![to.address()], vec![from.address()]);
        let mut waited = Duration::ZERO;
        for _ in 0..windows {
            let start_ms = unix_ms();
            a.open(&canary, &baseline, self.log, self.cancel).await;
            self.sleep(each).await?;
            waited += each;
            let (outcome, verdict) =
                a.judge_window(&canary, &baseline, start_ms, step.weight, self.log, self.cancel).await;
            let reason = verdict.reason.clone();
            let (c, b) = (&verdict.canary, &verdict.baseline);
            let (errors, total) = (c.errors + b.errors, c.requests + b.requests);
            self.record_verdict(verdict).await?;
            if outcome == Outcome::Fail {
                self.note(format!(
                    "blast radius in that window: {errors} of {total} requests failed ({:.1}%), with {}% of the traffic on the canary",
                    errors as f64 * 100.0 / total.max(1) as f64,
                    step.weight
                ));
            }
            match (outcome, a.on_no_data) {
                (Outcome::Pass, _) | (Outcome::Inconclusive, OnNoData::Pass) => {}
                (Outcome::Fail, _) | (Outcome::Inconclusive, OnNoData::Fail) => {
                    return Err(DeployError::Analysis(reason));
                }
                (Outcome::Inconclusive, OnNoData::Pause) => {
                    let why = format!("a decision: the analysis had no verdict at {}% ({reason})", step.weight);
                    waited += self.await_person(&why, step.timeout).await?;
                }
            }
        }
        Ok(waited)
    }

    async fn record_verdict(&mut self, v: Verdict) -> Result<(), DeployError> {
        self.note(format!("verdict at {}%: {} — {}", v.weight, v.outcome, v.reason));
        self.report.verdicts.push(v.clone());
        let details = vec![
            ("verdict".to_string(), v.outcome.clone()),
            ("weight".to_string(), format!("{}%", v.weight)),
            ("canary requests".to_string(), v.canary.requests.to_string()),
            ("canary errors".to_string(), v.canary.errors.to_string()),
            ("baseline requests".to_string(), v.baseline.requests.to_string()),
            ("baseline errors".to_string(), v.baseline.errors.to_string()),
        ];
        let message = format!("analysis at {}%: {} — {}", v.weight, v.outcome, v.reason);
        self.journal(move |j| {
            if let Some(p) = &mut j.pending {
                p.verdicts.push(v);
            }
        })
        .await?;
        self.notify("verdict", message, details).await;
        Ok(())
    }

    /// Waits at a gate until a person promotes or aborts (`pipe deploy
    /// promote|abort`, or `pipe approve|abort RUN`), or `timeout` passes.
    async fn await_person(&mut self, what: &str, timeout: Duration) -> Result<Duration, DeployError> {
        let began = Instant::now();
        let d = self.d;
        let gate = Gate::open(&d.root, &d.pipeline, &d.run_id, &d.step, what, timeout, d.approvers.clone())?;
        // The command takes the pipeline, then the deployment.
        let target = format!("{} {}", d.pipeline, d.name);
        let how = format!("`pipe deploy promote {target}` or `pipe deploy abort {target}`");
        let waiting = format!("{what} — {how}");
        self.note(format!("waiting for {waiting}"));
        self.log.waiting(Some(&waiting));
        let recorded = waiting.clone();
        self.journal(move |j| {
            if let Some(p) = &mut j.pending {
                p.waiting = Some(recorded);
            }
        })
        .await?;
        self.notify("waiting-for-approval", format!("waiting for {waiting}"), self.numbers()).await;
        let log = self.log;
        let outcome = gate.wait(timeout, self.cancel, &|m| log.note(m)).await;
        drop(gate);
        self.log.waiting(None);
        self.journal(|j| {
            if let Some(p) = &mut j.pending {
                p.waiting = None;
            }
        })
        .await?;
        match outcome {
            approval::Outcome::Decided(decision) if decision.approved => {
                self.note(format!("promoted by {}", decision.who()));
                Ok(began.elapsed())
            }
            approval::Outcome::Decided(decision) => {
                Err(DeployError::Aborted { by: decision.who(), reason: decision.reason })
            }
            approval::Outcome::TimedOut(t) => Err(DeployError::NotPromoted(humantime::format_duration(t).to_string())),
            approval::Outcome::Cancelled => Err(DeployError::Cancelled),
        }
    }

    /// Sleeps, unless cancelled; the probe is checked every second meanwhile.
    async fn sleep(&self, time: Duration) -> Result<(), DeployError> {
        let end = tokio::time::Instant::now() + time;
        while tokio::time::Instant::now() < end {
            let next = end.min(tokio::time::Instant::now() + Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = self.cancel.cancelled() => return Err(DeployError::Cancelled),
            }
            self.check_probe()?;
        }
        Ok(())
    }
}
