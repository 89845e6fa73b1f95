//! A canary's analysis: an analysis plugin measures both sides over a window;
//! pipe, not the plugin, turns the numbers into a verdict (`pass`, `fail`,
//! `inconclusive`) against the pipeline's metrics, and says why in words.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::journal::{Verdict, now};
use super::roles::RoleRun;
use crate::lang::model::{Metric, MetricKind, OnNoData};
use crate::plugin::contract::{Measurement, Side, Window};
use crate::step::StepLog;

#[derive(Debug)]
pub struct AnalysisRun {
    pub role: RoleRun,
    pub window: Duration,
    pub min_samples: u64,
    pub on_no_data: OnNoData,
    pub metrics: Vec<Metric>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Inconclusive => "inconclusive",
        }
    }
}

impl AnalysisRun {
    /// Marks a window's start: plugins that read cumulative counters (HAProxy's
    /// statistics) take their first reading here. A failure is only noted: the
    /// window's end will fail the same way and be judged.
    pub async fn open(&self, canary: &[String], baseline: &[String], log: &StepLog, cancel: &CancellationToken) {
        let at = unix_ms();
        let window = Window { canary: canary.to_vec(), baseline: baseline.to_vec(), start_ms: at, end_ms: at };
        if let Err(e) = self.role.measure(window, log, cancel).await {
            log.note(&format!("  analysis: opening the window failed: {e}"));
        }
    }

    /// Measures the window that began at `start_ms` and judges it.
    pub async fn judge_window(
        &self,
        canary: &[String],
        baseline: &[String],
        start_ms: u64,
        weight: u32,
        log: &StepLog,
        cancel: &CancellationToken,
    ) -> (Outcome, Verdict) {
        let end_ms = unix_ms();
        let window = Window { canary: canary.to_vec(), baseline: baseline.to_vec(), start_ms, end_ms };
        let span = Duration::from_millis(end_ms.saturating_sub(start_ms));
        let (outcome, reason, m) = match self.role.measure(window, log, cancel).await {
            Ok(m) => {
                let (outcome, reason) = judge(&m, &self.metrics, self.min_samples, self.on_no_data, span);
                (outcome, reason, m)
            }
            Err(e) => {
                let reason = format!("the analysis could not measure: {e}; on-no-data={}", self.on_no_data.name());
                (Outcome::Inconclusive, reason, Measurement::default())
            }
        };
        let verdict = Verdict {
            at: now(),
            weight,
            window_ms: span.as_millis() as u64,
            outcome: outcome.name().into(),
            reason,
            canary: m.canary,
            baseline: m.baseline,
        };
        (outcome, verdict)
    }
}

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The verdict on one window's numbers, and why, in words.
pub fn judge(
    m: &Measurement,
    metrics: &[Metric],
    min_samples: u64,
    on_no_data: OnNoData,
    span: Duration,
) -> (Outcome, String) {
    let c = &m.canary;
    let baseline = format!("; baseline: {}", side(&m.baseline));
    if c.requests < min_samples {
        let got = format!(
            "canary got {} request{} in {} (min-samples={min_samples}); on-no-data={}",
            c.requests,
            if c.requests == 1 { "" } else { "s" },
            humantime::format_duration(Duration::from_secs(span.as_secs().max(1))),
            on_no_data.name()
        );
        return (Outcome::Inconclusive, got + &baseline);
    }
    let mut failed = Vec::new();
    let mut passed = Vec::new();
    let mut unmeasured = Vec::new();
    for metric in metrics {
        let latency = |v: Option<f64>| (v, v.map(ms).unwrap_or_default(), ms(metric.max));
        let (value, shown, limit) = match metric.kind {
            MetricKind::ErrorRate => {
                let rate = c.errors as f64 / c.requests as f64;
                (Some(rate), format!("{} ({} of {})", percent(rate), c.errors, c.requests), percent(metric.max))
            }
            MetricKind::P50 => latency(c.p50_ms),
            MetricKind::P90 => latency(c.p90_ms),
            MetricKind::P99 => latency(c.p99_ms),
        };
        match value {
            None => unmeasured.push(metric.kind.name()),
            Some(v) if v > metric.max => failed.push(format!("{} {shown} > max {limit}", metric.kind.name())),
            Some(_) => passed.push(format!("{} {shown} ≤ {limit}", metric.kind.name())),
        }
    }
    if !failed.is_empty() {
        return (Outcome::Fail, format!("canary {}{baseline}", failed.join(", ")));
    }
    if !unmeasured.is_empty() {
        let why = format!(
            "the analysis plugin measured no {} (it cannot, or saw no timing); on-no-data={}{baseline}",
            unmeasured.join(", "),
            on_no_data.name()
        );
        return (Outcome::Inconclusive, why);
    }
    (Outcome::Pass, format!("canary {} requests: {}{baseline}", c.requests, passed.join(", ")))
}

fn side(s: &Side) -> String {
    if s.requests == 0 {
        return "0 requests".into();
    }
    let rate = s.errors as f64 / s.requests as f64;
    let p99 = s.p99_ms.map(|p| format!(", p99 {}", ms(p))).unwrap_or_default();
    format!("{} requests, {} errors{p99}", s.requests, percent(rate))
}

fn percent(r: f64) -> String {
    let p = r * 100.0;
    if p == 0.0 || p >= 10.0 { format!("{p:.0}%") } else { format!("{p:.1}%") }
}

fn ms(v: f64) -> String {
    if v >= 1000.0 { format!("{:.2}s", v / 1000.0) } else { format!("{v:.0}ms") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(requests: u64, errors: u64, p99: Option<f64>) -> Measurement {
        Measurement {
            canary: Side { requests, errors, p50_ms: p99, p90_ms: p99, p99_ms: p99 },
            baseline: Side { requests: 900, errors: 0, p50_ms: Some(5.0), p90_ms: Some(8.0), p99_ms: Some(12.0) },
            note: String::new(),
        }
    }

    const ERR: Metric = Metric { kind: MetricKind::ErrorRate, max: 0.01 };
    const P99: Metric = Metric { kind: MetricKind::P99, max: 300.0 };

    #[test]
    fn verdicts_say_why() {
        let w = Duration::from_secs(60);
        let (o, why) = judge(&m(0, 0, None), &[ERR], 100, OnNoData::Fail, w);
        assert_eq!(o, Outcome::Inconclusive);
        assert!(why.starts_with("canary got 0 requests in 1m (min-samples=100); on-no-data=fail"), "{why}");

        let (o, why) = judge(&m(400, 154, Some(20.0)), &[ERR, P99], 100, OnNoData::Fail, w);
        assert_eq!(o, Outcome::Fail);
        assert!(why.contains("error-rate 38% (154 of 400) > max 1.0%"), "{why}");
        assert!(why.contains("baseline: 900 requests, 0% errors, p99 12ms"), "{why}");

        let (o, why) = judge(&m(400, 1, Some(350.0)), &[ERR, P99], 100, OnNoData::Fail, w);
        assert_eq!(o, Outcome::Fail);
        assert!(why.contains("p99 350ms > max 300ms"), "{why}");

        let (o, why) = judge(&m(400, 2, Some(120.0)), &[ERR, P99], 100, OnNoData::Fail, w);
        assert_eq!(o, Outcome::Pass, "{why}");

        let (o, why) = judge(&m(400, 0, None), &[ERR, P99], 100, OnNoData::Pause, w);
        assert_eq!(o, Outcome::Inconclusive);
        assert!(why.contains("measured no p99"), "{why}");
    }
}
