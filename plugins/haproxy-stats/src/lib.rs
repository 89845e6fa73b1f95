//! `haproxy-stats`: measures a canary from HAProxy's per-server statistics,
//! read through the runtime API (`show stat`). The counters are cumulative,
//! so the host opens each window with a zero-length call: the plugin records
//! every server's counters in its state, and at the window's end reports the
//! difference. Requests are `stot`; errors are 5xx answers (`hrsp_5xx`) and
//! failed responses (`eresp`). HAProxy gives average response times, not
//! percentiles: latency metrics need `nginx-log`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;

use pipe_sdk::{Capability, Context, Description, Field, FieldKind, Measurement, Plugin, Role, Side, Window, state};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// The runtime API, `ip:port`.
    socket: String,
    backend: String,
}

/// One server's counters at one moment.
#[derive(Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
struct Counters {
    requests: u64,
    errors: u64,
    /// Average response time over the last 1024 requests, ms.
    rtime: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Reading {
    at_ms: u64,
    servers: BTreeMap<String, Counters>,
}

struct HaproxyStats;

impl Plugin for HaproxyStats {
    type Config = Config;

    fn describe() -> Description {
        Description::new("haproxy-stats", env!("CARGO_PKG_VERSION"), "Canary analysis from HAProxy's statistics")
            .field(Field::required("socket", "the runtime API, ip:port (stats socket … level admin)").kind(FieldKind::Address))
            .field(Field::required("backend", "the backend whose servers are measured"))
            .needs(Capability::Connect)
            .needs(Capability::State)
            .role(Role::Analysis)
    }

    fn measure(c: Config, _ctx: &Context, w: &Window) -> Result<Measurement, String> {
        let now = Reading { at_ms: w.end_ms, servers: read(&c)? };
        let key = format!("{}.window", c.backend);
        if w.end_ms <= w.start_ms {
            let text = serde_json::to_string(&now).map_err(|e| e.to_string())?;
            state::set(&key, &text)?;
            return Ok(Measurement { canary: side(&[]), baseline: side(&[]), note: String::new() });
        }
        let before: Reading = state::get(&key)
            .and_then(|t| serde_json::from_str(&t).ok())
            .filter(|r: &Reading| r.at_ms.abs_diff(w.start_ms) < 5_000)
            .ok_or("no reading at the window's start (the window was not opened)")?;
        let delta = |addresses: &[String]| -> Vec<Counters> {
            addresses
                .iter()
                .filter_map(|a| {
                    let (n, b) = (now.servers.get(a)?, before.servers.get(a).copied().unwrap_or_default());
                    // A counter that went down: the server (or HAProxy) restarted.
                    Some(Counters {
                        requests: n.requests.saturating_sub(b.requests),
                        errors: n.errors.saturating_sub(b.errors),
                        rtime: n.rtime,
                    })
                })
                .collect()
        };
        let (canary, baseline) = (delta(&w.canary), delta(&w.baseline));
        let missing: Vec<&String> =
            w.canary.iter().chain(&w.baseline).filter(|a| !now.servers.contains_key(*a)).collect();
        let mut note = format!("backend {}: average response time", c.backend);
        for (name, d) in [("canary", &canary), ("baseline", &baseline)] {
            let avg = average(d);
            note.push_str(&format!(" {name} {}", avg.map_or("-".into(), |a| format!("{a:.0}ms"))));
        }
        note.push_str(" (HAProxy keeps averages, not percentiles)");
        if !missing.is_empty() {
            let list: Vec<&str> = missing.iter().map(|s| s.as_str()).collect();
            note.push_str(&format!("; no server at {} in the backend", list.join(", ")));
        }
        Ok(Measurement { canary: side(&canary), baseline: side(&baseline), note })
    }
}

fn average(d: &[Counters]) -> Option<f64> {
    let total: u64 = d.iter().map(|c| c.requests).sum();
    (total > 0).then(|| d.iter().map(|c| (c.requests * c.rtime) as f64).sum::<f64>() / total as f64)
}

fn side(d: &[Counters]) -> Side {
    Side {
        requests: d.iter().map(|c| c.requests).sum(),
        errors: d.iter().map(|c| c.errors).sum(),
        p50_ms: None,
        p90_ms: None,
        p99_ms: None,
    }
}

/// Every server of the backend by address (`ip:port`), from `show stat`.
fn read(c: &Config) -> Result<BTreeMap<String, Counters>, String> {
    let text = command(c, "show stat")?;
    let mut lines = text.lines();
    let header = lines.next().ok_or("HAProxy answered `show stat` with nothing")?;
    let names: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let col = |name: &str| names.iter().position(|n| *n == name).ok_or(format!("`show stat` has no `{name}` column"));
    let (px, sv, stot, h5xx, eresp, rtime, addr) =
        (col("pxname")?, col("svname")?, col("stot")?, col("hrsp_5xx")?, col("eresp")?, col("rtime")?, col("addr")?);
    let mut out = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() <= addr || f[px] != c.backend || f[sv] == "BACKEND" || f[sv] == "FRONTEND" {
            continue;
        }
        let n = |i: usize| f[i].parse::<u64>().unwrap_or(0);
        out.insert(f[addr].to_string(), Counters { requests: n(stot), errors: n(h5xx) + n(eresp), rtime: n(rtime) });
    }
    if out.is_empty() {
        return Err(format!("HAProxy lists no server in backend `{}`", c.backend));
    }
    Ok(out)
}

/// One runtime API command on its own connection; its answer.
fn command(c: &Config, line: &str) -> Result<String, String> {
    let mut conn = TcpStream::connect(&c.socket).map_err(|e| format!("cannot reach HAProxy at {}: {e}", c.socket))?;
    conn.write_all(format!("{line}\n").as_bytes()).map_err(|e| format!("`{line}`: {e}"))?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).map_err(|e| format!("`{line}`: {e}"))?;
    Ok(answer)
}

pipe_sdk::export!(HaproxyStats);
