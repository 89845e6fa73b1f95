//! Approval gates: a run that waits for a person. The waiting `pipe` and the
//! person's `pipe approve` are different processes, so a gate is two files in
//! `.pipe/approvals/`: the waiter writes `<run>--<step>.waiting` (what it
//! waits for, until when, its pid), the approver writes
//! `<run>--<step>.decision`, and the waiter, polling, reads it and removes
//! both. A gate whose waiter died is not offered to anyone.
//!
//! Those files are announcements, not the truth: a step of the run can write
//! them too. The waiter keeps its question, a nonce and its approvers in
//! memory, and takes a decision only when it names that question (by hash)
//! and that nonce — and, when the gate has approvers, only when it carries an
//! SSH signature over all of it by a key of the approvers' file
//! ([`signers`]). Anything else is rejected in the log, and the gate waits on.

mod decide;
pub mod signers;
pub mod sshsig;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use decide::{decide, shown, waiting};
use signers::{AllowedSigners, NAMESPACE};
use sshsig::{Payload, question_hash};

use crate::identity::Identity;
use crate::state::{StateError, atomic::write_atomic};

/// How often a waiting gate looks for a decision.
const POLL: Duration = Duration::from_millis(200);
/// Rejected decisions logged per wait: a step writing forgeries in a loop
/// must not flood the log.
const MAX_REJECTIONS_LOGGED: usize = 10;
/// A decision file larger than this is not one `pipe approve` wrote.
const MAX_DECISION: u64 = 64 * 1024;

/// What a gate waits for, as `pipe approve` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Waiting {
    pub run: String,
    pub pipeline: String,
    pub step: String,
    /// The question, for people.
    pub message: String,
    /// Unix seconds.
    pub since: u64,
    /// Unix seconds: when the gate gives up (and fails).
    pub until: u64,
    pub pid: u32,
    pub boot: String,
    /// Fresh for each wait: a decision made for another one does not count.
    #[serde(default)]
    pub nonce: String,
    /// Who may decide (the principals of the gate's approvers file); empty
    /// when the gate has none and takes unsigned decisions.
    #[serde(default)]
    pub approvers: Vec<String>,
}

/// What a person decided, as `pipe approve` writes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Decision {
    pub approved: bool,
    /// Who, as the approver's machine says (`$USER`): believed only when the
    /// gate has no approvers; otherwise the signature says who.
    pub by: String,
    pub reason: Option<String>,
    pub at: u64,
    #[serde(default)]
    pub nonce: String,
    /// The SHA-256 of the question `pipe approve` showed.
    #[serde(default)]
    pub question_sha256: String,
    /// `ssh-keygen -Y sign` over the [`Payload`], when the gate has approvers.
    #[serde(default)]
    pub signature: Option<String>,
}

/// A decision the gate accepted.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub approved: bool,
    /// The verified principal; or, without approvers, the name the decision gave.
    pub by: String,
    /// Whether `by` was proven by a signature.
    pub verified: bool,
    pub reason: Option<String>,
}

impl Verdict {
    /// Who decided, saying how far that is known.
    pub fn who(&self) -> String {
        if self.verified { self.by.clone() } else { format!("{} (unverified: the gate names no approvers)", self.by) }
    }
}

/// How a wait ended.
#[derive(Debug)]
pub enum Outcome {
    Decided(Verdict),
    TimedOut(Duration),
    Cancelled,
}

/// An open gate; closing it (drop) removes its files.
pub struct Gate {
    waiting: PathBuf,
    decision: PathBuf,
    /// What the run announced, kept: the file may be rewritten, this is not.
    pub info: Waiting,
    approvers: Option<Arc<AllowedSigners>>,
}

fn dir(root: &Path) -> PathBuf {
    root.join(".pipe").join("approvals")
}

fn file_stem(run: &str, step: &str) -> String {
    crate::state::file_safe(&format!("{run}--{step}"))
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// 128 random bits, in hex.
fn nonce() -> Result<String, StateError> {
    use std::io::Read;
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; 16];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut bytes)).map_err(|source| StateError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Gate {
    /// Opens a gate for `step` of `run`; it is waiting from now on. With
    /// `approvers`, only a decision signed by one of them counts.
    pub fn open(
        root: &Path,
        pipeline: &str,
        run: &str,
        step: &str,
        message: &str,
        timeout: Duration,
        approvers: Option<Arc<AllowedSigners>>,
    ) -> Result<Gate, StateError> {
        let dir = dir(root);
        std::fs::create_dir_all(&dir).map_err(|source| StateError::Io {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let stem = file_stem(run, step);
        let gate = Gate {
            waiting: dir.join(format!("{stem}.waiting")),
            decision: dir.join(format!("{stem}.decision")),
            info: Waiting {
                run: run.to_string(),
                pipeline: pipeline.to_string(),
                step: step.to_string(),
                message: message.to_string(),
                since: now(),
                until: now() + timeout.as_secs(),
                pid: std::process::id(),
                boot: Identity::current().boot.clone(),
                nonce: nonce()?,
                approvers: approvers.as_ref().map(|a| a.principals.clone()).unwrap_or_default(),
            },
            approvers,
        };
        // A decision left from an earlier wait of the same step is not this one's.
        let _ = std::fs::remove_file(&gate.decision);
        write_atomic(&gate.waiting, &serde_json::to_vec_pretty(&gate.info).unwrap_or_default())?;
        Ok(gate)
    }

    /// Waits for a decision this gate accepts, the timeout, or cancellation;
    /// `note` hears of every decision rejected, and why.
    pub async fn wait(&self, timeout: Duration, cancel: &CancellationToken, note: &(dyn Fn(&str) + Sync)) -> Outcome {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rejected = 0;
        loop {
            if let Some(found) = self.read_decision().await {
                // Whatever it was, it is used up: the next one is read afresh.
                let _ = tokio::fs::remove_file(&self.decision).await;
                match self.check(found).await {
                    Ok(verdict) => return Outcome::Decided(verdict),
                    Err(why) => {
                        rejected += 1;
                        if rejected <= MAX_REJECTIONS_LOGGED {
                            note(&format!("rejected a decision for this gate: {why}; still waiting"));
                        }
                        if rejected == MAX_REJECTIONS_LOGGED {
                            note("further rejected decisions for this gate are not logged");
                        }
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Outcome::TimedOut(timeout);
            }
            tokio::select! {
                () = tokio::time::sleep(POLL) => {}
                () = cancel.cancelled() => return Outcome::Cancelled,
            }
        }
    }

    /// The decision file, when there is one: parsed, or why it is not a decision.
    async fn read_decision(&self) -> Option<Result<Decision, String>> {
        let meta = tokio::fs::symlink_metadata(&self.decision).await.ok()?;
        if !meta.is_file() || meta.len() > MAX_DECISION {
            return Some(Err("the decision file is not a small regular file".into()));
        }
        let bytes = tokio::fs::read(&self.decision).await.ok()?;
        Some(serde_json::from_slice(&bytes).map_err(|e| format!("it is not a decision pipe wrote ({e})")))
    }

    /// Accepts a decision only for this gate's question and wait, and, with
    /// approvers, only under a valid signature by one of them.
    async fn check(&self, found: Result<Decision, String>) -> Result<Verdict, String> {
        let d = found?;
        let ours = question_hash(&self.info.message);
        if d.question_sha256 != ours {
            return Err(format!(
                "it answers a different question from the one this gate asks (sha256 {} instead of {}): \
                 was `.pipe/approvals/*.waiting` rewritten?",
                short(&d.question_sha256),
                short(&ours)
            ));
        }
        if d.nonce != self.info.nonce {
            return Err("it was made for another wait of this gate".into());
        }
        let reason = d.reason.as_deref().map(printable);
        let Some(approvers) = &self.approvers else {
            return Ok(Verdict { approved: d.approved, by: printable(&d.by), verified: false, reason });
        };
        let Some(signature) = &d.signature else {
            return Err(format!(
                "it is not signed, and this gate takes only decisions signed by a key of {}",
                approvers.path.display()
            ));
        };
        let payload = Payload {
            namespace: NAMESPACE,
            run: &self.info.run,
            step: &self.info.step,
            nonce: &self.info.nonce,
            question_sha256: &ours,
            approved: d.approved,
            reason: d.reason.as_deref(),
        };
        let by = sshsig::verify(approvers, &payload.bytes(), signature).await?;
        Ok(Verdict { approved: d.approved, by: printable(&by), verified: true, reason })
    }

    /// The command that approves this gate, for messages.
    pub fn how(&self) -> String {
        format!("`pipe approve {0}` or `pipe abort {0}`", self.info.run)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.waiting);
        let _ = std::fs::remove_file(&self.decision);
    }
}

/// The start of a hash, for a log line (the decision's may be anything).
fn short(hash: &str) -> String {
    if hash.is_empty() { "none".into() } else { printable(hash).chars().take(12).collect() }
}

/// Text from a decision file, made safe for a log line and bounded.
fn printable(text: &str) -> String {
    crate::step::log::sanitize(text).chars().take(200).collect()
}

#[cfg(test)]
mod tests;
