//! SSH signatures over decisions, made and checked by OpenSSH's own
//! `ssh-keygen -Y sign|find-principals|verify` (the tool git uses for SSH
//! commit signatures), so pipe carries no signature code of its own.
//!
//! The waiting run hands ssh-keygen the allowed signers it holds in memory
//! and the signature through sealed memory files (`/dev/fd/N`), never
//! through a path: a step of the run, running as the same user, could
//! rewrite a temporary file between pipe writing it and ssh-keygen reading it.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::signers::{AllowedSigners, NAMESPACE};

/// A signature longer than this is not one ssh-keygen made.
const MAX_SIGNATURE: usize = 16 * 1024;
/// ssh-keygen answers in milliseconds; a hung one must not hold the gate.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a person signs: the gate's identity as the waiting run announced it,
/// the question as `pipe approve` showed it (by hash), and the decision.
/// The run rebuilds it from what it holds in memory: a signature over any
/// other question, run, gate or decision does not verify.
#[derive(Serialize)]
pub struct Payload<'a> {
    pub namespace: &'a str,
    pub run: &'a str,
    pub step: &'a str,
    pub nonce: &'a str,
    pub question_sha256: &'a str,
    pub approved: bool,
    pub reason: Option<&'a str>,
}

impl Payload<'_> {
    pub fn bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The hex SHA-256 of a question, as decisions name it.
pub fn question_hash(question: &str) -> String {
    Sha256::digest(question.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Signs `payload` with `key` (a private key, or a public key whose private
/// half is in `ssh-agent`); ssh-keygen asks for a passphrase on the terminal.
pub fn sign(key: &Path, payload: &[u8]) -> Result<String, String> {
    let mut child = std::process::Command::new(ssh_keygen())
        .args(["-q", "-Y", "sign", "-n", NAMESPACE, "-f"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run ssh-keygen (install openssh-client): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(payload).map_err(|e| format!("cannot hand the decision to ssh-keygen: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("ssh-keygen: {e}"))?;
    if !out.status.success() {
        return Err(format!("ssh-keygen could not sign with {}", key.display()));
    }
    String::from_utf8(out.stdout).map_err(|_| "ssh-keygen wrote a signature that is not text".into())
}

/// Checks `signature` over `payload` against `signers`; the verified
/// principal, or why not.
pub async fn verify(signers: &AllowedSigners, payload: &[u8], signature: &str) -> Result<String, String> {
    if signature.len() > MAX_SIGNATURE || !signature.starts_with("-----BEGIN SSH SIGNATURE-----") {
        return Err("its signature is not an SSH signature".into());
    }
    let allowed = sealed("allowed-signers", signers.text().as_bytes())?;
    let sig = sealed("signature", signature.as_bytes())?;
    let allowed_path = format!("/dev/fd/{}", allowed.as_raw_fd());
    let sig_path = format!("/dev/fd/{}", sig.as_raw_fd());
    let found = keygen(&["-Y", "find-principals", "-s", &sig_path, "-f", &allowed_path], b"").await?;
    if !found.0 {
        return Err(format!("it is signed by a key that {} does not name", signers.path.display()));
    }
    let mut last = String::new();
    for principal in found.1.lines().map(str::trim).filter(|p| !p.is_empty()) {
        let args = ["-Y", "verify", "-f", &allowed_path, "-I", principal, "-n", NAMESPACE, "-s", &sig_path];
        let (ok, _, err) = keygen(&args, payload).await?;
        if ok {
            return Ok(principal.to_string());
        }
        last = err;
    }
    let why = last.lines().last().unwrap_or("no principal matched").trim().to_string();
    Err(format!("its signature does not verify for this gate ({why})"))
}

/// The ssh-keygen that checks approvals: the system's, found in fixed
/// places rather than on `PATH`, which a step's tool installer or a
/// repository's `.envrc` may put its own directories in front of.
/// `PIPE_SSH_KEYGEN` names another one.
fn ssh_keygen() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("PIPE_SSH_KEYGEN") {
        return path.into();
    }
    ["/usr/bin/ssh-keygen", "/bin/ssh-keygen", "/usr/local/bin/ssh-keygen"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| "/usr/bin/ssh-keygen".into())
}

/// Runs ssh-keygen with `stdin`; (success, stdout, stderr).
async fn keygen(args: &[&str], stdin: &[u8]) -> Result<(bool, String, String), String> {
    let mut child = tokio::process::Command::new(ssh_keygen())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run ssh-keygen to check it (install openssh-client): {e}"))?;
    if let Some(mut input) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        // ssh-keygen may exit before reading (an unknown key): not an error here.
        let _ = input.write_all(stdin).await;
    }
    let out = tokio::time::timeout(VERIFY_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| "ssh-keygen did not answer".to_string())?
        .map_err(|e| format!("ssh-keygen: {e}"))?;
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    Ok((out.status.success(), text(out.stdout), text(out.stderr)))
}

/// A memory file holding `bytes`, sealed against any change, inherited by
/// ssh-keygen. It is inherited as well by a step started at the same moment:
/// harmless, as it is sealed and holds nothing secret.
fn sealed(name: &str, bytes: &[u8]) -> Result<memfd::Memfd, String> {
    use memfd::FileSeal;
    let fail = |e: &dyn std::fmt::Display| format!("cannot hand {name} to ssh-keygen: {e}");
    let fd = memfd::MemfdOptions::new()
        .allow_sealing(true)
        .close_on_exec(false)
        .create(format!("pipe-{name}"))
        .map_err(|e| fail(&e))?;
    fd.as_file().write_all(bytes).map_err(|e| fail(&e))?;
    for seal in [FileSeal::SealWrite, FileSeal::SealShrink, FileSeal::SealGrow, FileSeal::SealSeal] {
        fd.add_seal(seal).map_err(|e| fail(&e))?;
    }
    Ok(fd)
}
