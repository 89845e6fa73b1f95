//! One step from start to end: attempts, timeout, backoff, outputs. Generic over
//! the step kind: it only sees an [`Invocation`] and the [`execute`] seam.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::cache::{CacheJob, KeyParts};
use super::executor::{Invocation, execute};
use crate::event::{Event, Events};
use crate::lang::model::Retry;
use crate::state::Status;
use crate::step::{Exit, StepLog, outputs};

pub struct Job {
    pub step: String,
    pub invocation: Invocation,
    pub display: String,
    pub retry: Retry,
    pub timeout: Option<Duration>,
    pub output_file: PathBuf,
    pub log: StepLog,
    pub events: Events,
    pub cancel: CancellationToken,
    pub cache: Option<CacheJob>,
    /// A more trusted branch's cache, read when `cache` misses.
    pub trusted_cache: Option<super::cache::StepCache>,
}

pub struct Finished {
    pub status: Status,
    pub exit_code: Option<i32>,
    pub attempts: u32,
    pub duration: Duration,
    pub outputs: BTreeMap<String, String>,
    pub reason: Option<String>,
    pub tail: Vec<String>,
    /// The step kind's report, whatever the outcome (a deployment's phases).
    pub details: Option<serde_json::Value>,
    /// When each attempt ran.
    pub spans: Vec<(Instant, Instant)>,
}

pub async fn run(job: Job) -> Finished {
    let started = Instant::now();
    let key = match &job.cache {
        Some(c) => match c.key(&job.step, &job.invocation).await {
            Ok(key) => Some(key),
            Err(why) => {
                job.log.note(&format!("not cached: {why}"));
                None
            }
        },
        None => None,
    };
    if let (Some(c), Some(k)) = (&job.cache, &key)
        && let Some(hit) = from_cache(&job, c, &k.id(), started).await
    {
        return hit;
    }
    let changed = match (&job.cache, &key) {
        (Some(c), Some(k)) => Some(miss(&job, c, k).await),
        _ => None,
    };
    let mut spans = Vec::new();
    let mut attempt = 0;
    let (status, exit, reason, outputs) = loop {
        attempt += 1;
        job.events.send(Event::StepStarted { step: job.step.clone(), attempt, command: job.display.clone() });
        if attempt > 1 {
            job.log.note(&format!("attempt {attempt} of {}", job.retry.count + 1));
        }
        if let Err(e) = clear(&job.output_file) {
            let reason = format!("cannot create {}: {e}", job.output_file.display());
            break (Status::Failed, None, Some(reason), BTreeMap::new());
        }
        let began = Instant::now();
        let (exit, timed_out) = attempt_once(&job).await;
        spans.push((began, Instant::now()));
        if exit.success() {
            match read_outputs(&job.output_file) {
                Ok(out) => break (Status::Succeeded, exit.code(), None, out),
                Err(e) => break (Status::Failed, exit.code(), Some(e), BTreeMap::new()),
            }
        }
        if exit == Exit::Cancelled && !timed_out {
            break (Status::Cancelled, None, Some("cancelled".into()), BTreeMap::new());
        }
        let reason = match (timed_out, job.timeout) {
            (true, Some(t)) => {
                let who = job.invocation.actor().map(|p| format!("{p} ")).unwrap_or_default();
                format!("{who}timed out after {}", humantime::format_duration(t))
            }
            _ => exit.describe(),
        };
        if attempt > job.retry.count {
            break (Status::Failed, exit.code(), Some(reason), BTreeMap::new());
        }
        let delay = job.retry.backoff.saturating_mul(1 << (attempt - 1).min(16));
        job.log
            .note(&format!("attempt {attempt} failed ({reason}); retrying in {}", humantime::format_duration(delay)));
        job.events.send(Event::StepRetrying {
            step: job.step.clone(),
            attempt,
            delay_ms: delay.as_millis() as u64,
            reason: reason.clone(),
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = job.cancel.cancelled() => break (Status::Cancelled, None, Some("cancelled".into()), BTreeMap::new()),
        }
    };
    if let Some(r) = &reason {
        job.log.note(r);
    }
    let _ = std::fs::remove_file(&job.output_file);
    let details_file = outputs::details_path(&job.output_file);
    let mut details: Option<serde_json::Value> =
        std::fs::read(&details_file).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let _ = std::fs::remove_file(&details_file);
    if let (Some(c), Some(k)) = (&job.cache, key) {
        let stored = if status == Status::Succeeded {
            let (c2, k2, out, took) = (c.clone(), k.clone(), outputs.clone(), started.elapsed());
            let put = move || c2.store.store(&k2, &c2, &out, took);
            match tokio::task::spawn_blocking(put).await.unwrap_or_else(|e| Err(e.to_string())) {
                Ok(()) => true,
                Err(why) => {
                    job.log.note(&format!("not cached: {why}"));
                    false
                }
            }
        } else {
            false
        };
        let info = serde_json::json!({ "hit": false, "key": k.id(), "stored": stored, "changed": changed });
        details = Some(with_cache(details, info));
    }
    Finished {
        status,
        exit_code: exit,
        attempts: attempt,
        duration: started.elapsed(),
        outputs,
        reason,
        tail: job.log.finish(),
        details,
        spans,
    }
}

/// A miss: why, against the key this step's last stored run had.
async fn miss(job: &Job, c: &CacheJob, key: &KeyParts) -> Vec<String> {
    let (store, step) = (c.store.clone(), job.step.clone());
    let before = tokio::task::spawn_blocking(move || store.last_key(&step)).await.ok().flatten();
    let changed: Vec<String> = match before {
        None => vec!["no earlier run of this step was stored".into()],
        Some(before) if before == *key => vec!["its entry was evicted or removed".into()],
        // Read back from `.pipe`: what it names is shown as text, never as terminal codes.
        Some(before) => key.changes_since(&before).iter().map(|c| crate::step::log::sanitize(c)).collect(),
    };
    job.log.note(&format!("cache miss: {}", changed.join("; ")));
    changed
}

/// A hit: the entry's files restored, its outputs given back, nothing run.
/// An entry that is refused is a miss (the step runs), and the log says why.
async fn from_cache(job: &Job, c: &CacheJob, key: &str, started: Instant) -> Option<Finished> {
    let (c2, k2, step, trusted) = (c.clone(), key.to_string(), job.step.clone(), job.trusted_cache.clone());
    // The run's own cache first, then (read only) a more trusted branch's.
    let restored = tokio::task::spawn_blocking(move || {
        let mut refusals = Vec::new();
        for store in [Some(&c2.store), trusted.as_ref()].into_iter().flatten() {
            match store.restore(&k2, &step, &c2) {
                Ok(Some(entry)) => return (Some(entry), refusals),
                Ok(None) => {}
                Err(refused) => refusals.push(refused.to_string()),
            }
        }
        (None, refusals)
    })
    .await
    .ok()?;
    let (entry, refusals) = restored;
    for refused in refusals {
        job.log.note(&refused);
    }
    let entry = entry?;
    job.events.send(Event::StepStarted { step: job.step.clone(), attempt: 1, command: job.display.clone() });
    let saved = humantime::format_duration(Duration::from_millis(entry.duration_ms / 100 * 100));
    job.log.note(&format!("cached (key {}…, saved {saved})", &key[..8]));
    let info = serde_json::json!({ "hit": true, "key": key, "saved_ms": entry.duration_ms });
    Some(Finished {
        status: Status::Succeeded,
        exit_code: Some(0),
        attempts: 1,
        duration: started.elapsed(),
        outputs: entry.outputs,
        reason: None,
        tail: job.log.finish(),
        details: Some(with_cache(None, info)),
        spans: vec![(started, Instant::now())],
    })
}

fn with_cache(details: Option<serde_json::Value>, cache: serde_json::Value) -> serde_json::Value {
    match details {
        Some(serde_json::Value::Object(mut m)) => {
            m.insert("cache".into(), cache);
            serde_json::Value::Object(m)
        }
        _ => serde_json::json!({ "cache": cache }),
    }
}

/// Runs one attempt; a timeout cancels it and waits for the executor to clean up.
async fn attempt_once(job: &Job) -> (Exit, bool) {
    let cancel = job.cancel.child_token();
    let fut = execute(&job.invocation, &job.log, &cancel);
    tokio::pin!(fut);
    let Some(limit) = job.timeout else { return (fut.await, false) };
    tokio::select! {
        exit = &mut fut => (exit, false),
        () = tokio::time::sleep(limit) => {
            cancel.cancel();
            (fut.await, true)
        }
    }
}

/// Steps append to `$PIPE_OUTPUT` and create it when they have outputs: most
/// have none, and creating a file per step costs more than running `true`.
fn clear(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn read_outputs(path: &std::path::Path) -> Result<BTreeMap<String, String>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => outputs::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(format!("cannot read $PIPE_OUTPUT: {e}")),
    }
}
