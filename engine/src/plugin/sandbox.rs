//! One plugin call's sandbox: the store data behind its WASI context (built
//! deny-by-default from the step's grants), the gates on outgoing HTTP and TCP,
//! and the resource limits.

use std::net::SocketAddr;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Result};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::grants::Granted;
use super::host_api::HostIo;
use super::stderr::LogPipe;
use crate::step::StepLog;

pub struct Sandbox {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    pub limits: Limits,
    gate: NetGate,
    pub io: HostIo,
}

impl Sandbox {
    pub fn new(granted: &Granted, memory: u64, io: HostIo, stderr: LogPipe) -> Result<Sandbox> {
        let mut wasi = WasiCtxBuilder::new();
        // Deny by default: no args, no env, no stdin/stdout, no UDP, no DNS, no
        // listening; TCP connections only to granted addresses (checked per
        // address below, so that a denied one says which grant would allow it).
        wasi.stderr(stderr).allow_tcp(true).allow_udp(false).allow_ip_name_lookup(false);
        let connect: Vec<SocketAddr> = granted.connect.iter().filter_map(|a| a.parse().ok()).collect();
        let log = io.log.clone();
        wasi.socket_addr_check(move |addr, usage| {
            let allowed = match usage {
                SocketAddrUse::TcpConnect => connect.contains(&addr),
                // The implicit bind of a connecting socket: any local address.
                SocketAddrUse::TcpBind => addr.ip().is_unspecified() && addr.port() == 0,
                _ => false,
            };
            if !allowed && matches!(usage, SocketAddrUse::TcpConnect) {
                log.note(&format!("denied: TCP to {addr} (grant it with `allow-connect \"{addr}\"`)"));
            }
            Box::pin(async move { allowed })
        });
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
            limits: Limits::new(memory),
            gate: NetGate { allow: granted.net.clone(), log: io.log.clone() },
            io,
        })
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

/// Memory, tables and instances. The memory limit is on the total of all of a
/// plugin's linear memories, not on each alone.
pub struct Limits {
    memory: u64,
    used: u64,
    /// The size asked for when growing last failed, until a later growth succeeds.
    pub refused: Option<u64>,
}

const MAX_TABLE_ELEMENTS: usize = 1 << 20;
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;

impl Limits {
    fn new(memory: u64) -> Limits {
        Limits { memory, used: 0, refused: None }
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        let total = self.used.saturating_sub(current as u64).saturating_add(desired as u64);
        if total <= self.memory {
            self.used = total;
            self.refused = None;
            Ok(true)
        } else {
            self.refused = Some(total);
            Ok(false)
        }
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
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
