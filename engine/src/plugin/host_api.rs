//! The host side of the `host` interface (log, outputs, state, exec), once,
//! and its bindings for every interface version.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::bindings::{v0_1, v0_2};
use super::sandbox::Sandbox;
use super::stderr::{Budget, over_budget};
use crate::event::Stream;
use crate::state::StateStore;
use crate::step::StepLog;
use crate::step::proc::{self, Group};

pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
/// Bytes kept of each stream of a command a plugin runs.
pub const MAX_EXEC_OUTPUT: usize = 1 << 20;
/// The only environment a command run for a plugin gets besides its grants.
const MINIMAL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What one plugin call may do through the host interface.
pub struct HostIo {
    pub log: StepLog,
    budget: Budget,
    pub outputs: BTreeMap<String, String>,
    output_bytes: usize,
    /// Absent while a plugin only describes itself.
    pub state: Option<PluginState>,
    exec: Vec<Vec<String>>,
    env: Vec<(String, String)>,
    workdir: PathBuf,
}

/// A plugin's view of the pipeline's state: its own namespace, and the
/// namespaces the step granted with `allow-state`.
#[derive(Clone, Debug)]
pub struct PluginState {
    pub store: StateStore,
    pub namespace: String,
    pub shared: Vec<String>,
}

impl PluginState {
    /// `key` -> `namespace/key`; `other/key` only when `other` was granted.
    fn key(&self, key: &str) -> Result<String, String> {
        if key.is_empty() || key.chars().any(char::is_control) {
            return Err(format!("`{key}` is not a valid state key"));
        }
        match key.split_once('/') {
            None => Ok(format!("{}/{key}", self.namespace)),
            Some((ns, _)) if ns == self.namespace || self.shared.iter().any(|s| s == ns) => Ok(key.to_string()),
            Some((ns, _)) => {
                Err(format!("state namespace `{ns}` is not granted: grant it with `allow-state \"{ns}\"`"))
            }
        }
    }
}

/// What a command run through `exec` did.
pub struct Executed {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub truncated: bool,
}

impl HostIo {
    pub fn new(
        log: StepLog,
        budget: Budget,
        state: Option<PluginState>,
        exec: Vec<Vec<String>>,
        env: Vec<(String, String)>,
        workdir: PathBuf,
    ) -> HostIo {
        HostIo { log, budget, outputs: BTreeMap::new(), output_bytes: 0, state, exec, env, workdir }
    }

    fn log(&mut self, line: &str) -> wasmtime::Result<()> {
        if !self.budget.take(line.len() + 1) {
            wasmtime::bail!(over_budget());
        }
        self.log.untrusted(Stream::Stdout, line);
        Ok(())
    }

    fn set_output(&mut self, key: String, value: String) -> Result<(), String> {
        if key.is_empty() || key.contains(['=', '\n']) || key.contains("<<") {
            return Err(format!("`{key}` is not a valid output name"));
        }
        self.output_bytes += key.len() + value.len();
        if self.output_bytes > MAX_OUTPUT_BYTES {
            return Err(format!("outputs exceed {} KiB", MAX_OUTPUT_BYTES >> 10));
        }
        self.outputs.insert(key, value);
        Ok(())
    }

    async fn state_get(&mut self, key: String) -> Option<String> {
        let state = self.state.clone()?;
        let full = match state.key(&key) {
            Ok(k) => k,
            Err(e) => {
                self.log.note(&format!("state: {e}"));
                return None;
            }
        };
        // Writes replace the file whole (write, then rename): reading needs no lock.
        let read = tokio::task::spawn_blocking(move || state.store.snapshot().map(|mut m| m.remove(&full)));
        match read.await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.log.note(&format!("state: {e}"));
                None
            }
            Err(_) => None,
        }
    }

    async fn state_set(&mut self, key: String, value: String) -> Result<(), String> {
        let state = self.state.clone().ok_or("state is not available while describing")?;
        let full = state.key(&key)?;
        let masker = self.log.masker();
        if masker.reveals(&value) || masker.reveals(&key) {
            return Err(format!("state `{key}` refused: it holds a secret, and state is stored in clear"));
        }
        // Poll for the lock instead of blocking in it: a plugin waiting here
        // stays cancellable, and its timeout holds.
        let guard = loop {
            match state.store.try_lock() {
                Ok(Some(g)) => break g,
                Ok(None) => tokio::time::sleep(Duration::from_millis(10)).await,
                Err(e) => return Err(e.to_string()),
            }
        };
        let write = tokio::task::spawn_blocking(move || state.store.set_bounded(&guard, &full, &value));
        match write.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(format!("internal error in pipe while writing state: {e}")),
        }
    }

    /// Runs a granted command in a group of its own, with only the granted
    /// environment; its output is read as it comes and kept up to a bound.
    /// Dropping the call (the step's timeout or cancellation) kills the group.
    async fn exec(&mut self, program: String, args: Vec<String>) -> Result<Executed, String> {
        if !self.exec.iter().any(|grant| matches_grant(grant, &program, &args)) {
            let wanted = std::iter::once(&program).chain(&args).map(|a| format!("\"{a}\"")).collect::<Vec<_>>();
            let msg = format!("exec of `{program}` denied: grant it with `allow-exec {}`", wanted.join(" "));
            self.log.note(&msg);
            return Err(msg);
        }
        let mut cmd = proc::command(&program);
        cmd.args(&args).current_dir(&self.workdir).env_clear().env("PATH", MINIMAL_PATH);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let mut child = cmd.spawn().map_err(|e| format!("cannot run `{program}`: {e}"))?;
        let group = Group::of(&child);
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let reading = async { tokio::join!(drain(out), drain(err)) };
        tokio::pin!(reading);
        let mut read = None;
        let status = loop {
            tokio::select! {
                s = child.wait() => break s,
                r = &mut reading, if read.is_none() => read = Some(r),
            }
        };
        // What the command left running would hold its pipes open; it ends with it.
        if let Some(note) = group.stop_leftovers() {
            self.log.note(&format!("`{program}`: {note}"));
        }
        let ((stdout, cut_out), (stderr, cut_err)) = match read {
            Some(r) => r,
            None => reading.await,
        };
        let status = status.map_err(|e| format!("cannot wait for `{program}`: {e}"))?;
        Ok(Executed {
            status: status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
            truncated: cut_out || cut_err,
        })
    }
}

async fn drain(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> (Vec<u8>, bool) {
    match stream {
        Some(s) => proc::capture(s, MAX_EXEC_OUTPUT).await,
        None => (Vec::new(), false),
    }
}

/// The program must equal the grant's; each argument must equal its pattern or
/// the pattern be `*`; the counts must match.
pub fn matches_grant(grant: &[String], program: &str, args: &[String]) -> bool {
    let Some((granted_program, patterns)) = grant.split_first() else { return false };
    granted_program == program
        && patterns.len() == args.len()
        && patterns.iter().zip(args).all(|(p, a)| p == "*" || p == a)
}

impl v0_2::pipe::plugin::host::Host for Sandbox {
    async fn log(&mut self, line: String) -> wasmtime::Result<()> {
        self.io.log(&line)
    }

    async fn set_output(&mut self, key: String, value: String) -> wasmtime::Result<Result<(), String>> {
        Ok(self.io.set_output(key, value))
    }

    async fn state_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.io.state_get(key).await)
    }

    async fn state_set(&mut self, key: String, value: String) -> wasmtime::Result<Result<(), String>> {
        Ok(self.io.state_set(key, value).await)
    }

    async fn exec(
        &mut self,
        program: String,
        args: Vec<String>,
    ) -> wasmtime::Result<Result<v0_2::pipe::plugin::host::ExecOutput, String>> {
        Ok(self.io.exec(program, args).await.map(|e| v0_2::pipe::plugin::host::ExecOutput {
            status: e.status,
            stdout: e.stdout,
            stderr: e.stderr,
            truncated: e.truncated,
        }))
    }
}

impl v0_2::pipe::plugin::types::Host for Sandbox {}

impl v0_1::pipe::plugin::host::Host for Sandbox {
    async fn log(&mut self, line: String) -> wasmtime::Result<()> {
        self.io.log(&line)
    }

    async fn set_output(&mut self, key: String, value: String) -> wasmtime::Result<Result<(), String>> {
        Ok(self.io.set_output(key, value))
    }

    async fn state_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.io.state_get(key).await)
    }

    async fn state_set(&mut self, key: String, value: String) -> wasmtime::Result<Result<(), String>> {
        Ok(self.io.state_set(key, value).await)
    }

    async fn exec(
        &mut self,
        program: String,
        args: Vec<String>,
    ) -> wasmtime::Result<Result<v0_1::pipe::plugin::host::ExecOutput, String>> {
        Ok(self.io.exec(program, args).await.map(|e| v0_1::pipe::plugin::host::ExecOutput {
            status: e.status,
            stdout: e.stdout,
            stderr: e.stderr,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::matches_grant;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn exec_grants_match_exactly() {
        let grant = v(&["nginx", "-p", "*", "-s", "reload"]);
        assert!(matches_grant(&grant, "nginx", &v(&["-p", "/srv", "-s", "reload"])));
        assert!(!matches_grant(&grant, "nginx", &v(&["-p", "/srv", "-s", "stop"])));
        assert!(!matches_grant(&grant, "nginx", &v(&["-p", "/srv", "-s", "reload", "-x"])));
        assert!(!matches_grant(&grant, "sh", &v(&["-p", "/srv", "-s", "reload"])));
    }
}
