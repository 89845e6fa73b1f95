//! The wasmtime host: one engine per process with epoch interruption (a ticker
//! thread), a linker with WASI p2, wasi:http and the `host` interface, and a
//! fresh store per step (a trapped instance is never re-entered).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use super::cache::{Cache, Origin};
use super::host_bindings::Step;
use super::host_bindings::exports::pipe::plugin::plugin as wit;
use super::sandbox::{Granted, HostIo, Sandbox};
use super::{PluginError, Resolved, interface};
use crate::run::Stream;
use crate::run::executor::Exit;
use crate::run::log::StepLog;
use crate::state::StateStore;

/// How often the epoch ticks: the granularity of yielding and cancelling.
const TICK: Duration = Duration::from_millis(10);
/// Default memory limit of a plugin step.
pub const DEFAULT_MEMORY: u64 = 64 << 20;

pub struct Host {
    engine: Engine,
    linker: Linker<Sandbox>,
    cache: Cache,
}

/// A plugin ready to run: resolved, checked, compiled, described.
pub struct Prepared {
    pub resolved: Resolved,
    pub component: Component,
    pub info: PluginInfo,
}

impl Prepared {
    /// `name version`, the prefix of every error the plugin causes.
    pub fn label(&self) -> String {
        format!("{} {}", self.info.name, self.info.version)
    }
}

/// What `describe` told us, in our own types.
#[derive(Clone, Debug, Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub summary: String,
    pub interface: String,
    pub fields: Vec<FieldInfo>,
    pub capabilities: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FieldInfo {
    pub name: String,
    pub description: String,
    pub required: bool,
}

/// One run of a plugin step, every value rendered.
pub struct PluginRun {
    pub plugin: Arc<Prepared>,
    pub config: Vec<(String, String)>,
    pub granted: Granted,
    pub workspace: Option<String>,
    pub memory: u64,
    pub state: StateStore,
    pub workdir: std::path::PathBuf,
    pub output_file: std::path::PathBuf,
}

impl std::fmt::Debug for PluginRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRun").field("plugin", &self.plugin.label()).field("config", &self.config).finish()
    }
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
        Step::add_to_linker::<Sandbox, HasSelf<Sandbox>>(&mut linker, |s| s)?;
        let ticking = engine.clone();
        std::thread::Builder::new().name("pipe-epoch".into()).spawn(move || {
            loop {
                std::thread::sleep(TICK);
                ticking.increment_epoch();
            }
        })?;
        let cache = Cache::new(&engine);
        Ok(Host { engine, linker, cache })
    }

    /// Checks the interface version, then compiles or loads from the cache.
    pub fn load(&self, r: &Resolved) -> Result<(Component, Origin), PluginError> {
        interface::check(&r.name, &r.bytes)?;
        self.cache
            .load(&self.engine, &r.sha256, &r.bytes)
            .map_err(|e| PluginError::Invalid { plugin: r.name.clone(), reason: format!("{e:#}") })
    }

    pub fn forget_loaded(&self) {
        self.cache.forget();
    }

    pub async fn describe(&self, name: &str, component: &Component) -> Result<PluginInfo, PluginError> {
        let io = HostIo::new(StepLog::sink(name), None, Vec::new(), std::env::temp_dir());
        let mut store = self
            .store(&Granted::default(), DEFAULT_MEMORY, io, MemoryOutputPipe::new(4096))
            .map_err(|e| PluginError::Engine { plugin: name.to_string(), message: format!("{e:#}") })?;
        let described = async {
            let step = Step::instantiate_async(&mut store, component, &self.linker).await?;
            step.pipe_plugin_plugin().call_describe(&mut store).await
        };
        let d = tokio::time::timeout(Duration::from_secs(10), described)
            .await
            .map_err(|_| PluginError::Engine { plugin: name.to_string(), message: "describe took over 10s".into() })?
            .map_err(|e| PluginError::Invalid {
                plugin: name.to_string(),
                reason: format!("describe failed: {e:#}"),
            })?;
        Ok(PluginInfo {
            name: d.name,
            version: d.version,
            summary: d.summary,
            interface: interface::VERSION.to_string(),
            fields: d
                .fields
                .into_iter()
                .map(|f| FieldInfo { name: f.name, description: f.description, required: f.required })
                .collect(),
            capabilities: d.capabilities.iter().map(|c| capability_name(*c).to_string()).collect(),
        })
    }

    pub async fn run(&self, call: &PluginRun, log: &StepLog, cancel: &CancellationToken) -> Exit {
        let label = call.plugin.label();
        let stderr = MemoryOutputPipe::new(64 << 10);
        let io = HostIo::new(log.clone(), Some(call.state.clone()), call.granted.exec.clone(), call.workdir.clone());
        let mut store = match self.store(&call.granted, call.memory, io, stderr.clone()) {
            Ok(s) => s,
            Err(e) => return Exit::Error(format!("{label}: cannot set up its sandbox: {e:#}")),
        };
        let input = wit::Input {
            config: call.config.clone(),
            env: call.granted.env.clone(),
            workspace: call.workspace.clone(),
        };
        let result = {
            let running = async {
                let step = Step::instantiate_async(&mut store, &call.plugin.component, &self.linker).await?;
                step.pipe_plugin_plugin().call_run(&mut store, &input).await
            };
            tokio::select! {
                r = running => r,
                () = cancel.cancelled() => return Exit::Cancelled,
            }
        };
        let stderr = String::from_utf8_lossy(&stderr.contents()).into_owned();
        for line in stderr.lines() {
            log.line(Stream::Stderr, line);
        }
        match result {
            Ok(Ok(())) => {
                let outputs = crate::run::outputs::render(&store.data().io.outputs);
                match std::fs::write(&call.output_file, outputs) {
                    Ok(()) => Exit::Code(0),
                    Err(e) => Exit::Error(format!("cannot record the outputs of {label}: {e}")),
                }
            }
            Ok(Err(message)) => Exit::Failed(message),
            Err(e) => {
                Exit::Error(format!("{label} {}", trap_reason(&e, store.data().limits.hit, call.memory, &stderr)))
            }
        }
    }

    fn store(
        &self,
        granted: &Granted,
        memory: u64,
        io: HostIo,
        stderr: MemoryOutputPipe,
    ) -> wasmtime::Result<Store<Sandbox>> {
        let mut store = Store::new(&self.engine, Sandbox::new(granted, memory, io, stderr)?);
        store.limiter(|s| &mut s.limits);
        // Yield to tokio every tick: a busy plugin stays cancellable and the
        // step's timeout (or fail-fast, or Ctrl-C) stops it by dropping it.
        store.set_epoch_deadline(1);
        store.epoch_deadline_async_yield_and_update(1);
        Ok(store)
    }
}

fn trap_reason(e: &wasmtime::Error, memory_hit: bool, memory: u64, stderr: &str) -> String {
    let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).map(|l| format!(": {}", l.trim()));
    if memory_hit {
        return format!("exceeded its memory limit of {} MiB{}", memory >> 20, last.unwrap_or_default());
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::UnreachableCodeReached) => format!("panicked{}", last.unwrap_or_default()),
        Some(trap) => format!("trapped: {trap}{}", last.unwrap_or_default()),
        None => format!("failed: {e:#}"),
    }
}

fn capability_name(c: wit::Capability) -> &'static str {
    match c {
        wit::Capability::Net => "net",
        wit::Capability::Read => "read",
        wit::Capability::Write => "write",
        wit::Capability::Exec => "exec",
        wit::Capability::State => "state",
    }
}
