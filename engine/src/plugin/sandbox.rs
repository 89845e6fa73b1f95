//! One plugin step's sandbox: the store data behind its WASI context (built
//! deny-by-default from the step's grants), the gate on outgoing HTTP, and the
//! host interface (log, outputs, state, exec).

use std::collections::BTreeMap;
use std::path::PathBuf;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::host_bindings::pipe::plugin::host;
use crate::run::log::StepLog;
use crate::state::StateStore;

/// Bounds on what a plugin may push through the host.
pub const MAX_LOG_BYTES: usize = 8 << 20;
pub const MAX_OUTPUT_BYTES: usize = 1 << 20;
pub const MAX_EXEC_OUTPUT: usize = 4 << 20;

/// What a step granted, resolved to absolute paths.
#[derive(Clone, Debug, Default)]
pub struct Granted {
    pub net: Vec<String>,
    pub read: Vec<PathBuf>,
    pub write: Vec<PathBuf>,
    pub exec: Vec<Vec<String>>,
    pub env: Vec<(String, String)>,
}

pub struct Sandbox {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    pub limits: Limits,
    gate: NetGate,
    pub io: HostIo,
}

/// The host side of the `host` interface for one step.
pub struct HostIo {
    pub log: StepLog,
    pub outputs: BTreeMap<String, String>,
    /// Absent while a plugin only describes itself.
    pub state: Option<StateStore>,
    pub exec: Vec<Vec<String>>,
    pub workdir: PathBuf,
    log_bytes: usize,
    output_bytes: usize,
}

impl Sandbox {
    pub fn new(granted: &Granted, memory: u64, io: HostIo, stderr: MemoryOutputPipe) -> Result<Sandbox> {
        let mut wasi = WasiCtxBuilder::new();
        // Deny by default: no args, no env, no stdin/stdout, no sockets, no DNS.
        wasi.stderr(stderr).allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
        for (k, v) in &granted.env {
            wasi.env(k, v);
        }
        // Granted directories appear at the same absolute path inside.
        for dir in &granted.read {
            wasi.preopened_dir(dir, dir.display().to_string(), FsPerms::ReadOnly)?;
        }
        for dir in &granted.write {
            wasi.preopened_dir(dir, dir.display().to_string(), FsPerms::ReadWrite)?;
        }
        Ok(Sandbox {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits: Limits { memory, hit: false },
            gate: NetGate { allow: granted.net.clone(), log: io.log.clone() },
            io,
        })
    }
}

impl HostIo {
    pub fn new(log: StepLog, state: Option<StateStore>, exec: Vec<Vec<String>>, workdir: PathBuf) -> HostIo {
        HostIo { log, outputs: BTreeMap::new(), state, exec, workdir, log_bytes: 0, output_bytes: 0 }
    }
}

impl WasiView for Sandbox {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for Sandbox {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.gate }
    }
}

/// Memory limit; remembers whether the plugin hit it, to say so.
pub struct Limits {
    memory: u64,
    pub hit: bool,
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        let ok = desired as u64 <= self.memory;
        self.hit |= !ok;
        Ok(ok)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

/// Every outgoing request is checked against `allow-net`.
struct NetGate {
    allow: Vec<String>,
    log: StepLog,
}

type Sent = Box<
    dyn Future<
            Output = std::result::Result<
                (
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = std::result::Result<(), wasmtime_wasi_http::Error>> + Send>,
                ),
                wasmtime_wasi_http::Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for NetGate {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = std::result::Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Sent {
        let _ = fut;
        let uri = request.uri();
        let https = uri.scheme_str() == Some("https");
        let target = uri.authority().map(|a| {
            let port = a.port_u16().unwrap_or(if https { 443 } else { 80 });
            format!("{}:{port}", a.host())
        });
        let allowed = target.as_ref().is_some_and(|t| self.allow.iter().any(|g| g == t));
        if !allowed {
            let t = target.unwrap_or_else(|| "an unknown host".into());
            self.log.note(&format!("denied: {} {uri} (grant it with `allow-net \"{t}\"`)", request.method()));
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((res.map(BodyExt::boxed_unsync), Box::new(io) as Box<dyn Future<Output = _> + Send>))
        })
    }
}

impl host::Host for Sandbox {
    async fn log(&mut self, line: String) -> Result<()> {
        self.io.log_bytes += line.len() + 1;
        if self.io.log_bytes > MAX_LOG_BYTES {
            wasmtime::bail!("wrote more than {} MiB of log", MAX_LOG_BYTES >> 20);
        }
        self.io.log.line(crate::run::Stream::Stdout, &line);
        Ok(())
    }

    async fn set_output(&mut self, key: String, value: String) -> Result<std::result::Result<(), String>> {
        if key.is_empty() || key.contains(['=', '\n']) || key.contains("<<") {
            return Ok(Err(format!("`{key}` is not a valid output name")));
        }
        self.io.output_bytes += key.len() + value.len();
        if self.io.output_bytes > MAX_OUTPUT_BYTES {
            return Ok(Err(format!("outputs exceed {} KiB", MAX_OUTPUT_BYTES >> 10)));
        }
        self.io.outputs.insert(key, value);
        Ok(Ok(()))
    }

    async fn state_get(&mut self, key: String) -> Result<Option<String>> {
        let Some(state) = &self.io.state else { return Ok(None) };
        Ok(state.get(&key).unwrap_or_else(|e| {
            self.io.log.note(&format!("state: {e}"));
            None
        }))
    }

    async fn state_set(&mut self, key: String, value: String) -> Result<std::result::Result<(), String>> {
        match &self.io.state {
            Some(state) => Ok(state.set(&key, &value).map_err(|e| e.to_string())),
            None => Ok(Err("state is not available while describing".into())),
        }
    }

    async fn exec(
        &mut self,
        program: String,
        args: Vec<String>,
    ) -> Result<std::result::Result<host::ExecOutput, String>> {
        if !self.io.exec.iter().any(|grant| matches_grant(grant, &program, &args)) {
            let wanted = std::iter::once(&program).chain(&args).map(|a| format!("\"{a}\"")).collect::<Vec<_>>();
            let msg = format!("exec of `{program}` denied: grant it with `allow-exec {}`", wanted.join(" "));
            self.io.log.note(&msg);
            return Ok(Err(msg));
        }
        let output = tokio::process::Command::new(&program)
            .args(&args)
            .current_dir(&self.io.workdir)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await;
        Ok(match output {
            Ok(o) => {
                let text = |b: &[u8]| String::from_utf8_lossy(&b[..b.len().min(MAX_EXEC_OUTPUT)]).into_owned();
                Ok(host::ExecOutput {
                    status: o.status.code().unwrap_or(-1),
                    stdout: text(&o.stdout),
                    stderr: text(&o.stderr),
                })
            }
            Err(e) => Err(format!("cannot run `{program}`: {e}")),
        })
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
