//! The probe: requests through the public URL for the whole deployment, at a
//! steady rate over a few keep-alive connections (as browsers send them),
//! counted per phase. A request a proxy's reload cut on a reused connection is
//! sent again once on a new connection, as browsers do, and counted apart: the
//! strict count includes it, the browser count does not.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::http::{Connection, Failure, Target};

const TIMEOUT: Duration = Duration::from_secs(5);
/// A probe never runs longer than this, whatever the deployment does.
const MAX_DURATION: Duration = Duration::from_secs(3600);

/// The numbers of one phase.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PhaseNumbers {
    pub requests: u64,
    /// 2xx answers.
    pub ok: u64,
    pub non_2xx: u64,
    /// No answer, even after a retry.
    pub transport_errors: u64,
    /// Reused connections closed under a request (a reload): retried once.
    pub cut: u64,
    /// Of those, answered 2xx on the retry.
    pub retried_ok: u64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl PhaseNumbers {
    /// Failed requests as a browser sees them: an error or a non-2xx answer after one retry.
    pub fn failures(&self) -> u64 {
        self.non_2xx + self.transport_errors
    }

    /// Failed requests for a client that never retries: those that failed
    /// anyway, and those only the retry saved.
    pub fn strict_failures(&self) -> u64 {
        self.failures() + self.retried_ok
    }
}

#[derive(Default)]
struct Counts {
    numbers: PhaseNumbers,
    latencies: Vec<f64>,
}

struct Shared {
    phase: String,
    /// Phases in the order they began.
    order: Vec<String>,
    /// The first phase whose failures count against the deployment.
    counted_from: Option<usize>,
    counts: BTreeMap<String, Counts>,
}

pub struct Probe {
    shared: Arc<Mutex<Shared>>,
    stop: CancellationToken,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

/// The probe's numbers, per phase and in total.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    pub url: String,
    pub rate: u32,
    pub phases: Vec<(String, PhaseNumbers)>,
    pub total: PhaseNumbers,
}

impl Probe {
    /// Starts sending `rate` requests a second to `url`.
    pub fn start(url: &str, rate: u32, first_phase: &str) -> Result<Probe, String> {
        let target = Target::parse(url)?;
        let shared = Arc::new(Mutex::new(Shared {
            phase: first_phase.to_string(),
            order: vec![first_phase.to_string()],
            counted_from: None,
            counts: BTreeMap::new(),
        }));
        let stop = CancellationToken::new();
        let rate = rate.max(1);
        let workers = rate.min(8);
        let every = Duration::from_secs_f64(f64::from(workers) / f64::from(rate));
        let handles = (0..workers)
            .map(|_| {
                let (target, shared, stop) = (target.clone(), shared.clone(), stop.clone());
                tokio::spawn(worker(target, every, shared, stop))
            })
            .collect();
        Ok(Probe { shared, stop, workers: handles })
    }

    pub fn phase(&self, name: &str) {
        let mut s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        s.phase = name.to_string();
        if !s.order.iter().any(|p| p == name) {
            s.order.push(name.to_string());
        }
    }

    /// From the current phase on, failures count (traffic has begun to move).
    pub fn count_from_here(&self) {
        let mut s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        if s.counted_from.is_none() {
            let here = s.order.iter().position(|p| *p == s.phase).unwrap_or(s.order.len());
            s.counted_from = Some(here);
        }
    }

    /// Failures (as a browser counts them) since `count_from_here`.
    pub fn counted_failures(&self) -> u64 {
        let s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(from) = s.counted_from else { return 0 };
        s.order[from..].iter().filter_map(|p| s.counts.get(p)).map(|c| c.numbers.failures()).sum()
    }

    pub async fn finish(self, url: &str, rate: u32) -> ProbeReport {
        self.stop.cancel();
        for w in self.workers {
            let _ = w.await;
        }
        let s = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all = Counts::default();
        let mut phases = Vec::new();
        for name in &s.order {
            let Some(c) = s.counts.get(name) else { continue };
            phases.push((name.clone(), summarize(&c.numbers, &c.latencies)));
            add(&mut all.numbers, &c.numbers);
            all.latencies.extend(&c.latencies);
        }
        ProbeReport { url: url.to_string(), rate, phases, total: summarize(&all.numbers, &all.latencies) }
    }
}

async fn worker(target: Target, every: Duration, shared: Arc<Mutex<Shared>>, stop: CancellationToken) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<Connection> = None;
    while started.elapsed() < MAX_DURATION {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => break,
        }
        let begun = Instant::now();
        let (outcome, cut) = request(&target, &mut conn).await;
        let ms = begun.elapsed().as_secs_f64() * 1000.0;
        let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
        let phase = s.phase.clone();
        let c = s.counts.entry(phase).or_default();
        c.numbers.requests += 1;
        c.numbers.cut += u64::from(cut);
        match outcome {
            Ok(status) if (200..300).contains(&status) => {
                c.numbers.ok += 1;
                c.numbers.retried_ok += u64::from(cut);
                c.latencies.push(ms);
            }
            Ok(_) => c.numbers.non_2xx += 1,
            Err(()) => c.numbers.transport_errors += 1,
        }
    }
}

/// One request on the kept connection (opened if needed); a reused connection
/// closed under it is replaced and the request sent once more. Returns the
/// status (or an error) and whether it was cut.
async fn request(target: &Target, conn: &mut Option<Connection>) -> (Result<u16, ()>, bool) {
    for attempt in 0..2 {
        if conn.is_none() {
            match Connection::open(target, TIMEOUT).await {
                Ok(c) => *conn = Some(c),
                Err(_) => return (Err(()), attempt > 0),
            }
        }
        let Some(c) = conn.as_mut() else { return (Err(()), attempt > 0) };
        match c.get(target, false, TIMEOUT).await {
            Ok(answer) => return (Ok(answer.status), attempt > 0),
            Err(Failure::Closed) if attempt == 0 => *conn = None,
            Err(_) => {
                *conn = None;
                return (Err(()), attempt > 0);
            }
        }
    }
    (Err(()), true)
}

fn add(to: &mut PhaseNumbers, n: &PhaseNumbers) {
    to.requests += n.requests;
    to.ok += n.ok;
    to.non_2xx += n.non_2xx;
    to.transport_errors += n.transport_errors;
    to.cut += n.cut;
    to.retried_ok += n.retried_ok;
}

fn summarize(n: &PhaseNumbers, latencies: &[f64]) -> PhaseNumbers {
    let mut sorted = latencies.to_vec();
    sorted.sort_by(f64::total_cmp);
    let pick = |q: f64| -> Option<f64> {
        let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted.get(i).map(|v| (v * 100.0).round() / 100.0)
    };
    PhaseNumbers { p50_ms: pick(0.5), p90_ms: pick(0.9), p99_ms: pick(0.99), max_ms: pick(1.0), ..n.clone() }
}

impl ProbeReport {
    /// One line per phase, for the step's log.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!("probe {} at {}/s:", self.url, self.rate)];
        for (phase, n) in self.phases.iter().chain(std::iter::once(&("total".to_string(), self.total.clone()))) {
            out.push(format!(
                "  {phase:<8} {:>6} requests, {} failed ({} strict: {} cut by a reload, {} of them answered on retry), p50 {} p99 {}",
                n.requests,
                n.failures(),
                n.strict_failures(),
                n.cut,
                n.retried_ok,
                ms(n.p50_ms),
                ms(n.p99_ms)
            ));
        }
        out
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}ms"))
}
