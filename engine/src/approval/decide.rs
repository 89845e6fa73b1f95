//! The approver's side: which gates wait, and writing a decision for one —
//! signed with the approver's SSH key when the gate names approvers.

use std::path::{Path, PathBuf};

use super::signers::NAMESPACE;
use super::sshsig::{self, Payload, question_hash};
use super::{Decision, Waiting, dir, file_stem, now};
use crate::identity::Identity;
use crate::state::atomic::write_atomic;

/// Keys tried, in order, when `--key` is not given (as ssh does).
const DEFAULT_KEYS: &[&str] = &["id_ed25519", "id_ecdsa", "id_rsa"];

/// Every gate waiting now under `root` (gates of dead waiters are skipped), oldest first.
pub fn waiting(root: &Path) -> Vec<Waiting> {
    let Ok(entries) = std::fs::read_dir(dir(root)) else { return Vec::new() };
    let boot = &Identity::current().boot;
    let mut out: Vec<Waiting> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "waiting"))
        .filter_map(|e| serde_json::from_slice::<Waiting>(&std::fs::read(e.path()).ok()?).ok())
        .filter(|w| &w.boot == boot && nix::sys::signal::kill(nix::unistd::Pid::from_raw(w.pid as i32), None).is_ok())
        .collect();
    out.sort_by_key(|w| w.since);
    out
}

/// Records a decision for the gate of `run` (and `step`, when the run waits at
/// several); returns the gate it decided. `run` may be `last` when only one
/// run waits, or be left out. When the gate names approvers, the decision is
/// signed with `key` (default: `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa`).
pub fn decide(
    root: &Path,
    run: Option<&str>,
    step: Option<&str>,
    approved: bool,
    reason: Option<String>,
    key: Option<&Path>,
) -> Result<Waiting, String> {
    let all = waiting(root);
    if all.is_empty() {
        return Err("nothing is waiting for approval here".into());
    }
    let candidates: Vec<&Waiting> = all
        .iter()
        .filter(|w| run.is_none_or(|r| r == "last" || w.run == r))
        .filter(|w| step.is_none_or(|s| w.step == s || w.step.ends_with(&format!(".{s}"))))
        .collect();
    let list = || all.iter().map(|w| format!("\n  {} {}: {}", w.run, w.step, shown(&w.message))).collect::<String>();
    let gate = match candidates.as_slice() {
        [one] => *one,
        [] => return Err(format!("no such gate is waiting; waiting now:{}", list())),
        _ => return Err(format!("several gates are waiting; name the run (and the step):{}", list())),
    };
    let question_sha256 = question_hash(&gate.message);
    let signature = if gate.approvers.is_empty() {
        None
    } else {
        let key = match key {
            Some(k) => k.to_path_buf(),
            None => default_key().ok_or("this gate takes only signed decisions: name your SSH key with --key")?,
        };
        // The person sees what they sign before ssh-keygen asks for a passphrase.
        eprintln!("signing with {}: {} {}: {}", key.display(), gate.run, gate.step, shown(&gate.message));
        let payload = Payload {
            namespace: NAMESPACE,
            run: &gate.run,
            step: &gate.step,
            nonce: &gate.nonce,
            question_sha256: &question_sha256,
            approved,
            reason: reason.as_deref(),
        };
        Some(sshsig::sign(&key, &payload.bytes())?)
    };
    let decision = Decision {
        approved,
        by: who_decides(),
        reason,
        at: now(),
        nonce: gate.nonce.clone(),
        question_sha256,
        signature,
    };
    let path = dir(root).join(format!("{}.decision", file_stem(&gate.run, &gate.step)));
    write_atomic(&path, &serde_json::to_vec_pretty(&decision).unwrap_or_default()).map_err(|e| e.to_string())?;
    Ok(gate.clone())
}

/// A question as a terminal may show it: `.waiting` files can be written by anyone.
pub fn shown(message: &str) -> String {
    crate::step::log::sanitize(message)
}

fn default_key() -> Option<PathBuf> {
    let home = PathBuf::from(std::env::var_os("HOME")?);
    DEFAULT_KEYS.iter().map(|k| home.join(".ssh").join(k)).find(|p| p.is_file())
}

/// Who is deciding, as the shell says (`$USER`, `$LOGNAME`), else as the
/// system knows the uid (a container or a CI job often sets neither).
fn who_decides() -> String {
    std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| {
        let uid = nix::unistd::getuid();
        match nix::unistd::User::from_uid(uid) {
            Ok(Some(user)) => user.name,
            _ => format!("uid {uid}"),
        }
    })
}
