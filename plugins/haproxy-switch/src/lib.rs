//! `haproxy-switch`: moves a backend's traffic through HAProxy's runtime API
//! (`stats socket ipv4@127.0.0.1:PORT level admin`), without a reload, so no
//! worker restarts and no client connection is closed.
//!
//! The servers are declared in haproxy.cfg, one per slot or instance address
//! (`server green 127.0.0.1:8082 check disabled`). To route: each server that
//! takes traffic gets its weight and `state ready`, and is waited for until it
//! is UP; every other server of the backend is set to `drain`, waited for
//! until it has no session left, then put in `maint`. A server leaves
//! rotation only after its traffic has provably left it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pipe_sdk::{Backend, Capability, Context, Description, Field, FieldKind, Plugin, Role};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// The runtime API, `ip:port`.
    socket: String,
    backend: String,
    /// Step only: `host:port=weight`, comma-separated.
    servers: Option<String>,
    /// The longest a drained server may keep sessions before it is put in maintenance anyway.
    #[serde(default = "defaults::drain_timeout")]
    drain_timeout: String,
}

mod defaults {
    pub fn drain_timeout() -> String {
        "30s".into()
    }
}

struct HaproxySwitch;

impl Plugin for HaproxySwitch {
    type Config = Config;

    fn describe() -> Description {
        Description::new("haproxy-switch", env!("CARGO_PKG_VERSION"), "Move traffic through HAProxy's runtime API, no reload")
            .field(Field::required("socket", "the runtime API, ip:port (stats socket … level admin)").kind(FieldKind::Address))
            .field(Field::required("backend", "the backend whose servers take the traffic"))
            .field(Field::optional("servers", "step only: host:port[=weight], comma-separated"))
            .field(Field::optional("drain-timeout", "the longest a server may keep sessions after `drain` (default 30s)"))
            .needs(Capability::Connect)
            .role(Role::Step)
            .role(Role::Traffic)
    }

    fn run(c: Config, _ctx: &Context) -> Result<(), String> {
        let list = c.servers.as_deref().ok_or("`servers` is required when haproxy-switch runs as a step")?;
        let mut backends = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (address, weight) = match item.split_once('=') {
                Some((a, w)) => (a.to_string(), w.parse().map_err(|_| format!("bad weight in `{item}`"))?),
                None => (item.to_string(), 1),
            };
            backends.push(Backend { address, weight });
        }
        let note = route(&c, &backends)?;
        pipe_sdk::log(&note);
        Ok(())
    }

    fn route(c: Config, _ctx: &Context, backends: &[Backend]) -> Result<String, String> {
        route(&c, backends)
    }
}

/// One server of the backend, as `show servers state` lists it.
struct Server {
    name: String,
    address: String,
    /// 0 stopped, 1 starting, 2 running, 3 stopping.
    op_state: u32,
    /// Bit 0x01: forced into maintenance.
    admin_state: u32,
}

fn route(c: &Config, backends: &[Backend]) -> Result<String, String> {
    let drain_timeout = pipe_sdk::duration(&c.drain_timeout)?;
    let servers = list_servers(c)?;
    let mut live = Vec::new();
    for b in backends.iter().filter(|b| b.weight > 0) {
        let s = servers.iter().find(|s| s.address == b.address).ok_or_else(|| {
            let known: Vec<String> = servers.iter().map(|s| format!("{} {}", s.name, s.address)).collect();
            format!("backend `{}` has no server at {} (it has: {}); declare one per slot in haproxy.cfg", c.backend, b.address, known.join(", "))
        })?;
        command(c, &format!("set server {}/{} weight {}", c.backend, s.name, b.weight.min(256)))?;
        command(c, &format!("set server {}/{} state ready", c.backend, s.name))?;
        live.push(s.name.clone());
    }
    if live.is_empty() {
        return Err("no backend takes traffic".into());
    }
    // A server coming out of maintenance is UP at once (HAProxy does not
    // check it first): the deployment health-checked it before this call.
    wait(Duration::from_secs(10), "the new servers to be UP", || {
        let now = list_servers(c)?;
        Ok(live.iter().all(|name| now.iter().any(|s| &s.name == name && s.op_state == 2)))
    })?;
    let leaving: Vec<&Server> =
        servers.iter().filter(|s| !live.contains(&s.name) && s.admin_state & 0x01 == 0).collect();
    for s in &leaving {
        command(c, &format!("set server {}/{} state drain", c.backend, s.name))?;
    }
    let started = Instant::now();
    let drained = wait(drain_timeout, "the old servers to lose their sessions", || {
        let stats = sessions(c)?;
        Ok(leaving.iter().all(|s| stats.iter().any(|(name, cur)| name == &s.name && *cur == 0)))
    });
    for s in &leaving {
        command(c, &format!("set server {}/{} state maint", c.backend, s.name))?;
    }
    let left: Vec<&str> = leaving.iter().map(|s| s.name.as_str()).collect();
    let drain_note = match (&drained, left.is_empty()) {
        (_, true) => String::new(),
        (Ok(()), false) => format!("; {} drained in {} and in maintenance", left.join(", "), pipe_sdk::shown(started.elapsed())),
        (Err(e), false) => format!("; {} put in maintenance anyway: {e}", left.join(", ")),
    };
    Ok(format!("{}: {} ready{drain_note}", c.backend, live.join(", ")))
}

fn wait(timeout: Duration, what: &str, mut done: impl FnMut() -> Result<bool, String>) -> Result<(), String> {
    let started = Instant::now();
    loop {
        if done()? {
            return Ok(());
        }
        if started.elapsed() > timeout {
            return Err(format!("gave up waiting for {what} after {}", pipe_sdk::shown(timeout)));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn list_servers(c: &Config) -> Result<Vec<Server>, String> {
    let text = command(c, &format!("show servers state {}", c.backend))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        // be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state … srv_port (18th)
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 19 {
            continue;
        }
        let number = |i: usize| f[i].parse::<u32>().unwrap_or(0);
        out.push(Server {
            name: f[3].to_string(),
            address: format!("{}:{}", f[4], f[18]),
            op_state: number(5),
            admin_state: number(6),
        });
    }
    if out.is_empty() {
        return Err(format!("HAProxy lists no server in backend `{}`: {}", c.backend, text.trim()));
    }
    Ok(out)
}

/// (server, current sessions) of the backend, from `show stat`.
fn sessions(c: &Config) -> Result<Vec<(String, u64)>, String> {
    let text = command(c, "show stat")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() > 4 && f[0] == c.backend && f[1] != "BACKEND" && f[1] != "FRONTEND")
                .then(|| (f[1].to_string(), f[4].parse().unwrap_or(0)))
        })
        .collect())
}

/// One runtime API command on its own connection; its answer.
fn command(c: &Config, line: &str) -> Result<String, String> {
    let mut conn = TcpStream::connect(&c.socket).map_err(|e| format!("cannot reach HAProxy at {}: {e}", c.socket))?;
    conn.write_all(format!("{line}\n").as_bytes()).map_err(|e| format!("`{line}`: {e}"))?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).map_err(|e| format!("`{line}`: {e}"))?;
    let trimmed = answer.trim();
    let refused = ["Unknown command", "No such", "Require", "not found", "Permission denied"];
    if refused.iter().any(|r| trimmed.contains(r)) {
        return Err(format!("HAProxy refused `{line}`: {trimmed}"));
    }
    Ok(answer)
}

pipe_sdk::export!(HaproxySwitch);
