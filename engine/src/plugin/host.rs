//! The wasmtime host: one engine per process with epoch interruption (a ticker
//! thread), a linker with WASI p2, wasi:http and every version of the `host`
//! interface, a fresh store per call (a trapped instance is never re-entered),
//! and threads of its own that calls run on, so that a busy plugin never stalls
//! the scheduler.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap};

use super::bindings::{v0_1, v0_2};
use super::cache::{Cache, Origin};
use super::contract::{Call, Input, PluginInfo, Reply};
use super::grants::{Granted, escaping_links, remove_new_escaping_links};
use super::host_api::{HostIo, PluginState};
use super::instance::Instance;
use super::interface::{self, Found, Version};
use super::sandbox::Sandbox;
use super::stderr::{Budget, LogPipe};
use super::{PluginError, Resolved};
use crate::step::{Exit, StepLog, outputs};

/// How often the epoch ticks: the granularity of yielding and cancelling.
const TICK: Duration = Duration::from_millis(10);
/// Default memory limit of a plugin call.
pub const DEFAULT_MEMORY: u64 = 64 << 20;

pub struct Host {
    engine: Engine,
    linker: Linker<Sandbox>,
    cache: Cache,
    /// Plugin calls run here, never on the caller's (single) runtime thread.
    runtime: tokio::runtime::Runtime,
}

/// A plugin ready to run: resolved, checked, compiled, described.
pub struct Prepared {
    pub resolved: Resolved,
    pub component: Component,
    pub version: Version,
    pub info: PluginInfo,
}

impl Prepared {
    /// `name version`, the prefix of every error the plugin causes.
    pub fn label(&self) -> String {
        format!("{} {}", self.info.name, self.info.version)
    }
}

/// One call of a plugin, every value rendered.
pub struct PluginRun {
    pub plugin: Arc<Prepared>,
    pub call: Call,
    pub input: Input,
    pub granted: Granted,
    pub memory: u64,
    pub state: Option<PluginState>,
    pub workdir: PathBuf,
    /// Where a step's outputs go (`$PIPE_OUTPUT`'s format).
    pub output_file: Option<PathBuf>,
}

impl std::fmt::Debug for PluginRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRun").field("plugin", &self.plugin.label()).field("call", &self.call).finish()
    }
}

/// How a call ended, besides succeeding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The plugin reported an error (an expected failure, through the WIT `result`).
    Failed(String),
    /// It trapped, panicked, ran out of memory or broke a limit; named with its version.
    Broke(String),
    Cancelled,
}

/// A call's result and the outputs it set.
pub struct Outcome {
    pub result: Result<Reply, Failure>,
    pub outputs: BTreeMap<String, String>,
}

/// Why a component cannot be loaded.
#[derive(Debug)]
pub enum LoadError {
    Incompatible { found: String },
    Invalid(String),
}

static HOST: OnceLock<Result<Host, String>> = OnceLock::new();

impl Host {
    pub fn global() -> Result<&'static Host, PluginError> {
        HOST.get_or_init(|| Host::new().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|message| PluginError::Engine { plugin: "the plugin host".into(), message: message.clone() })
    }

    fn new() -> wasmtime::Result<Host> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        v0_1::Step::add_to_linker::<Sandbox, HasSelf<Sandbox>>(&mut linker, |s| s)?;
        v0_2::PipePlugin::add_to_linker::<Sandbox, HasSelf<Sandbox>>(&mut linker, |s| s)?;
        let ticking = engine.clone();
        std::thread::Builder::new().name("pipe-epoch".into()).spawn(move || {
            loop {
                std::thread::sleep(TICK);
                ticking.increment_epoch();
            }
        })?;
        let cache = Cache::new(&engine);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("pipe-plugin")
            .enable_all()
            .build()?;
        Ok(Host { engine, linker, cache, runtime })
    }

    /// Reads the interface version, then compiles or loads from the cache.
    pub fn load(&self, r: &Resolved) -> Result<(Component, Version, Origin), LoadError> {
        let version = match interface::detect(&r.bytes) {
            Found::Speaks(v) => v,
            Found::Other(found) => return Err(LoadError::Incompatible { found }),
            Found::Invalid(reason) => return Err(LoadError::Invalid(reason)),
        };
        let (component, origin) =
            self.cache.load(&self.engine, &r.sha256, &r.bytes).map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        Ok((component, version, origin))
    }

    pub fn forget_loaded(&self) {
        self.cache.forget();
    }

    pub async fn describe(
        &self,
        name: &str,
        component: &Component,
        version: Version,
    ) -> Result<PluginInfo, PluginError> {
        let log = StepLog::sink(name);
        let io = HostIo::new(log.clone(), Budget::default(), None, Vec::new(), Vec::new(), std::env::temp_dir());
        let stderr = LogPipe::new(log, Budget::default());
        let mut store = self
            .store(&Granted::default(), DEFAULT_MEMORY, io, stderr)
            .map_err(|e| PluginError::Engine { plugin: name.to_string(), message: format!("{e:#}") })?;
        let described = async {
            let instance = Instance::new(version, &mut store, component, &self.linker).await?;
            instance.describe(&mut store, version).await
        };
        tokio::time::timeout(Duration::from_secs(10), described)
            .await
            .map_err(|_| PluginError::Engine { plugin: name.to_string(), message: "describe took over 10s".into() })?
            .map_err(|e| PluginError::Invalid {
                plugin: name.to_string(),
                reason: format!("describe failed: {}", cause(&e)),
            })
    }

    /// Runs a call on the plugin threads, so that a busy plugin never holds
    /// up the caller's runtime. Cancelling `cancel` stops the call at its next
    /// epoch tick; one stuck in a host call that does not yield is abandoned
    /// after a short grace.
    pub async fn call(&'static self, run: Arc<PluginRun>, log: &StepLog, cancel: &CancellationToken) -> Outcome {
        const CANCEL_GRACE: Duration = Duration::from_millis(100);
        let label = run.plugin.label();
        let (log, token) = (log.clone(), cancel.clone());
        let mut task = self.runtime.spawn(async move { self.invoke(&run, &log, &token).await });
        let joined = |r: Result<Outcome, tokio::task::JoinError>| {
            r.unwrap_or_else(|e| failed(Failure::Broke(format!("{label}: the plugin's task ended abnormally: {e}"))))
        };
        tokio::select! {
            r = &mut task => joined(r),
            () = cancel.cancelled() => match tokio::time::timeout(CANCEL_GRACE, &mut task).await {
                Ok(r) => joined(r),
                Err(_) => {
                    task.abort();
                    failed(Failure::Cancelled)
                }
            },
        }
    }

    /// Runs one call to its end, its cancellation, or its sandbox's limits.
    pub async fn invoke(&self, run: &PluginRun, log: &StepLog, cancel: &CancellationToken) -> Outcome {
        let label = run.plugin.label();
        let writable = run.granted.write.clone();
        let before = if writable.is_empty() {
            Default::default()
        } else {
            let dirs = writable.clone();
            tokio::task::spawn_blocking(move || escaping_links(&dirs)).await.unwrap_or_default()
        };
        let budget = Budget::default();
        let stderr = LogPipe::new(log.clone(), budget.clone());
        let io = HostIo::new(
            log.clone(),
            budget,
            run.state.clone(),
            run.granted.exec.clone(),
            run.granted.env.clone(),
            run.workdir.clone(),
        );
        let mut store = match self.store(&run.granted, run.memory, io, stderr.clone()) {
            Ok(s) => s,
            Err(e) => return failed(Failure::Broke(format!("{label}: cannot set up its sandbox: {e:#}"))),
        };
        let answer = {
            let calling = async {
                let instance =
                    Instance::new(run.plugin.version, &mut store, &run.plugin.component, &self.linker).await?;
                instance.call(&mut store, run.input.clone(), &run.call).await
            };
            tokio::select! {
                r = calling => Some(r),
                () = cancel.cancelled() => None,
            }
        };
        stderr.finish();
        if !writable.is_empty() {
            let notes = tokio::task::spawn_blocking(move || remove_new_escaping_links(&writable, &before))
                .await
                .unwrap_or_default();
            notes.iter().for_each(|n| log.note(n));
        }
        let result = match answer {
            None => Err(Failure::Cancelled),
            Some(Ok(Ok(reply))) => Ok(reply),
            Some(Ok(Err(message))) => Err(Failure::Failed(message)),
            Some(Err(e)) => Err(Failure::Broke(format!(
                "{label} {}",
                trap_reason(&e, store.data().limits.refused, run.memory, &stderr.tail())
            ))),
        };
        Outcome { result, outputs: std::mem::take(&mut store.data_mut().io.outputs) }
    }

    fn store(&self, granted: &Granted, memory: u64, io: HostIo, stderr: LogPipe) -> wasmtime::Result<Store<Sandbox>> {
        let mut store = Store::new(&self.engine, Sandbox::new(granted, memory, io, stderr)?);
        store.limiter(|s| &mut s.limits);
        // Yield to tokio every tick: a busy plugin stays cancellable and the
        // step's timeout (or fail-fast, or Ctrl-C) stops it by dropping it.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        Ok(store)
    }
}

fn failed(f: Failure) -> Outcome {
    Outcome { result: Err(f), outputs: BTreeMap::new() }
}

/// A step's ending: its outputs recorded, its failure in the step's terms.
pub fn step_exit(outcome: Outcome, output_file: Option<&std::path::Path>, label: &str) -> Exit {
    match outcome.result {
        Ok(_) => match output_file.map(|f| std::fs::write(f, outputs::render(&outcome.outputs))) {
            None | Some(Ok(())) => Exit::Code(0),
            Some(Err(e)) => Exit::Error(format!("cannot record the outputs of {label}: {e}")),
        },
        Err(Failure::Failed(m)) => Exit::Failed(m),
        Err(Failure::Broke(m)) => Exit::Error(m),
        Err(Failure::Cancelled) => Exit::Cancelled,
    }
}

/// Why a call broke, in words: the panic's own message, the memory limit (only
/// when the last growth was refused, or the allocator said so), the trap, or
/// the host's reason, never a raw wasm backtrace.
fn trap_reason(e: &wasmtime::Error, refused: Option<u64>, memory: u64, stderr: &[String]) -> String {
    let out_of_memory = || {
        let asked = refused.map(|b| format!(" (it asked for {} MiB)", b >> 20)).unwrap_or_default();
        format!("exceeded its memory limit of {} MiB{asked}", memory >> 20)
    };
    // Rust's allocator says so before it aborts; other guests just trap.
    if stderr.iter().any(|l| l.starts_with("memory allocation of ") && l.ends_with(" failed")) {
        return out_of_memory();
    }
    if let Some(message) = panic_message(stderr) {
        return format!("panicked: {message}");
    }
    if refused.is_some() && e.downcast_ref::<Trap>() == Some(&Trap::UnreachableCodeReached) {
        return out_of_memory();
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::UnreachableCodeReached) => "aborted (it trapped on `unreachable`)".into(),
        Some(trap) => format!("trapped: {trap}"),
        None => format!("failed: {}", cause(e)),
    }
}

/// The message of the last Rust panic on stderr: the lines after
/// `thread '…' panicked at file:line:col:`, up to the `note:` hint.
fn panic_message(stderr: &[String]) -> Option<String> {
    let start = stderr.iter().rposition(|l| l.contains("panicked at "))?;
    let first = &stderr[start];
    let inline =
        first.split_once("panicked at ").map(|(_, rest)| rest).and_then(|r| r.split_once(": ")).map(|(_, m)| m);
    let mut lines: Vec<&str> = inline.into_iter().collect();
    lines.extend(stderr[start + 1..].iter().map(String::as_str).take_while(|l| !l.starts_with("note: ")));
    let message = lines.join(" ").trim().to_string();
    (!message.is_empty()).then_some(message)
}

/// The innermost error: the host's own reason, never the wasm backtrace that
/// wasmtime wraps around it.
fn cause(e: &wasmtime::Error) -> String {
    e.root_cause().to_string()
}

#[cfg(test)]
mod tests {
    use super::panic_message;

    #[test]
    fn the_panic_message_not_the_backtrace_hint() {
        let stderr: Vec<String> = [
            "starting",
            "thread '<unnamed>' panicked at src/lib.rs:37:24:",
            "hostile plugin panicked on purpose",
            "note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(panic_message(&stderr).as_deref(), Some("hostile plugin panicked on purpose"));
        assert_eq!(panic_message(&["all fine".to_string()]), None);
    }
}
