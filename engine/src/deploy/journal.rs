//! The deploy journal: what is live, what is kept for a rollback, and what is
//! in progress, in the pipeline's state (`deploy.<name>/journal`). Every phase
//! is written here before it is acted on, so that a `pipe` killed in any phase
//! leaves a journal that says what was happening, and `pipe deploy resume` or
//! `rollback` can finish or undo it.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::state::{StateError, StateStore};
use crate::step::Masker;

/// Entries of history kept.
const HISTORY: usize = 50;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Journal {
    /// What serves traffic now.
    pub live: Option<Release>,
    /// What served before, kept running (idle) for an instant rollback until `kept_until`.
    pub previous: Option<Release>,
    /// Unix seconds; `None` once the previous release is stopped.
    pub kept_until: Option<u64>,
    /// A deploy or rollback that has not finished.
    pub pending: Option<Pending>,
    /// Process groups of `command` instances, by slot, with their identity:
    /// what `stop` signals, once that identity is checked.
    #[serde(default)]
    pub groups: BTreeMap<String, crate::step::ProcessGroup>,
    /// Oldest first, bounded.
    #[serde(default)]
    pub history: Vec<Entry>,
}

/// One version and the slots it runs in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// One slot for blue-green and canary; `replicas` slots for rolling.
    pub slots: Vec<String>,
    pub version: String,
    pub git_sha: String,
    pub run_id: String,
    /// The deploy step that put it out (a deployment may be written in
    /// several stages): what `resume` and `rollback` render again.
    #[serde(default)]
    pub step: String,
    /// Unix seconds: since when it is (or was) live.
    pub since: u64,
    /// The step outputs the deployment read, to redeploy this release later.
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
}

impl Release {
    /// The slot of a one-slot release (blue-green, canary).
    pub fn slot(&self) -> &str {
        self.slots.first().map_or("", String::as_str)
    }

    /// `slot green`, `slots 1, 2, 3`: for messages.
    pub fn place(&self) -> String {
        match self.slots.as_slice() {
            [one] => format!("slot {one}"),
            many => format!("slots {}", many.join(", ")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Putting `to` in front of users.
    Deploy,
    /// Taking `to` (the one that served before) back.
    Rollback,
}

/// The phases of a switch, in order. A phase is recorded before it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Starting the instance(s) that will take the traffic.
    Start,
    /// Checking it directly, never through the proxy.
    Health,
    /// Telling the proxy.
    Switch,
    /// Checking through the public URL that the proxy serves it.
    Verify,
    /// Waiting until the other instance has no connection left.
    Drain,
    /// Recording the result, keeping or stopping the other instance.
    Finish,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::Health => "health",
            Phase::Switch => "switch",
            Phase::Verify => "verify",
            Phase::Drain => "drain",
            Phase::Finish => "finish",
        }
    }

    /// Whether traffic may already have moved when this phase was reached.
    pub fn switched(self) -> bool {
        self >= Phase::Switch
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pending {
    pub action: Action,
    pub phase: Phase,
    /// What served when it began (none on the first deploy).
    pub from: Option<Release>,
    pub to: Release,
    /// Unix seconds.
    pub started: u64,
    pub pid: u32,
    /// The boot the pid belongs to: a pid of another boot is not alive.
    pub boot: String,
    pub run_id: String,
    /// Why a rollback was started.
    #[serde(default)]
    pub reason: Option<String>,
    /// Canary: the step reached (an index into the steps) and the canary's
    /// share of the traffic there, in percent.
    #[serde(default)]
    pub step: usize,
    #[serde(default)]
    pub weight: Option<u32>,
    /// Rolling: the batch in progress.
    #[serde(default)]
    pub batch: Batch,
    /// What the deployment waits for now: a person's approval, and how to give it.
    #[serde(default)]
    pub waiting: Option<String>,
    /// Every analysis verdict of this deployment, oldest first.
    #[serde(default)]
    pub verdicts: Vec<Verdict>,
}

impl Pending {
    pub fn new(action: Action, from: Option<Release>, to: Release, run_id: &str, reason: Option<String>) -> Pending {
        Pending {
            action,
            phase: Phase::Start,
            from,
            to,
            started: now(),
            pid: std::process::id(),
            boot: crate::identity::Identity::current().boot.clone(),
            run_id: run_id.to_string(),
            reason,
            step: 0,
            weight: None,
            batch: Batch::default(),
            waiting: None,
            verdicts: Vec::new(),
        }
    }
}

/// A rolling deployment's batch: instances being added, then old ones retired.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// 1 for the first batch.
    pub number: u32,
    /// Slots started with the new version, not yet taking traffic.
    pub starting: Vec<String>,
    /// Slots of the old version leaving: drained, then stopped.
    pub retiring: Vec<String>,
}

/// An analysis window's verdict, with its numbers and its reason in words.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Verdict {
    /// Unix seconds, at the window's end.
    pub at: u64,
    /// The canary's share of traffic during the window, in percent.
    pub weight: u32,
    pub window_ms: u64,
    /// `pass`, `fail` or `inconclusive`.
    pub outcome: String,
    pub reason: String,
    pub canary: crate::plugin::contract::Side,
    pub baseline: crate::plugin::contract::Side,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Entry {
    /// Unix seconds.
    pub at: u64,
    /// `deployed`, `rolled-back`, `failed`.
    pub outcome: String,
    pub version: String,
    pub slot: String,
    pub run_id: String,
    pub note: String,
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Where one deployment's journal lives.
#[derive(Clone)]
pub struct JournalStore {
    store: StateStore,
    key: String,
    /// Masks secrets in the history it writes (a version derived from a
    /// secret, a reason quoting one): `pipe deploy history` prints it.
    masker: Masker,
}

impl std::fmt::Debug for JournalStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JournalStore").field("key", &self.key).finish_non_exhaustive()
    }
}

impl JournalStore {
    pub fn new(store: StateStore, deploy: &str) -> JournalStore {
        JournalStore { store, key: format!("deploy.{deploy}/journal"), masker: Masker::default() }
    }

    /// The same, masking the run's secrets in the history it writes.
    pub fn masking(self, masker: Masker) -> JournalStore {
        JournalStore { masker, ..self }
    }

    /// The pipeline's state the journal lives in.
    pub fn store(&self) -> &StateStore {
        &self.store
    }

    pub fn load(&self) -> Result<Journal, StateError> {
        match self.store.snapshot()?.get(&self.key) {
            None => Ok(Journal::default()),
            Some(text) => serde_json::from_str(text)
                .map_err(|source| StateError::Corrupt { path: format!("state `{}`", self.key).into(), source }),
        }
    }

    /// Reads, changes and writes the journal under the state lock (blocking: call off the runtime thread).
    pub fn update<T>(&self, change: impl FnOnce(&mut Journal) -> T) -> Result<T, StateError> {
        let guard = self.store.lock()?;
        let mut map = self.store.read_locked(&guard)?;
        let mut journal: Journal = match map.get(&self.key) {
            None => Journal::default(),
            Some(text) => serde_json::from_str(text)
                .map_err(|source| StateError::Corrupt { path: format!("state `{}`", self.key).into(), source })?,
        };
        let out = change(&mut journal);
        for entry in &mut journal.history {
            entry.version = self.masker.mask(&entry.version);
            entry.note = self.masker.mask(&entry.note);
        }
        let over = journal.history.len().saturating_sub(HISTORY);
        journal.history.drain(..over);
        let text = serde_json::to_string(&journal)
            .map_err(|source| StateError::Corrupt { path: format!("state `{}`", self.key).into(), source })?;
        map.insert(self.key.clone(), text);
        self.store.write_locked(&guard, &map)?;
        Ok(out)
    }
}

impl Journal {
    pub fn record(&mut self, outcome: super::DeployOutcome, release: &Release, note: impl Into<String>) {
        self.history.push(Entry {
            at: now(),
            outcome: outcome.name().to_string(),
            version: release.version.clone(),
            slot: release.slots.join(", "),
            run_id: release.run_id.clone(),
            note: note.into(),
        });
    }

    /// Whether the previous release is still kept (running) for a rollback.
    pub fn previous_kept(&self) -> bool {
        self.previous.is_some() && self.kept_until.is_some_and(|t| t > now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(version: &str) -> Release {
        Release {
            slots: vec!["blue".into()],
            version: version.into(),
            git_sha: "abc".into(),
            run_id: "r".into(),
            step: "release.web".into(),
            since: now(),
            inputs: BTreeMap::new(),
        }
    }

    #[test]
    fn updates_are_persisted_and_history_is_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journals = JournalStore::new(StateStore::open(dir.path(), "p"), "orders");
        let release = release("1");
        for _ in 0..60 {
            journals.update(|j| j.record(crate::deploy::DeployOutcome::Deployed, &release, "ok")).expect("update");
        }
        journals.update(|j| j.live = Some(release.clone())).expect("update");
        let j = journals.load().expect("load");
        assert_eq!(j.history.len(), HISTORY);
        assert_eq!(j.live, Some(release));
        assert!(Phase::Verify.switched() && !Phase::Health.switched());
    }

    #[test]
    fn the_history_keeps_no_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let journals =
            JournalStore::new(StateStore::open(dir.path(), "p"), "orders").masking(Masker::new(["s3cret-tag"]));
        let release = release("v-s3cret-tag");
        journals
            .update(|j| j.record(crate::deploy::DeployOutcome::Failed, &release, "v-s3cret-tag did not start"))
            .expect("update");
        let j = journals.load().expect("load");
        assert_eq!((j.history[0].version.as_str(), j.history[0].note.as_str()), ("v-***", "v-*** did not start"));
        let text = std::fs::read_dir(dir.path().join(".pipe/state"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect::<String>();
        assert!(!text.contains("s3cret-tag"), "{text}");
    }
}
