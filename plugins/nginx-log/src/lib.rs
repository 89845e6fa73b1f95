//! `nginx-log`: measures a canary from nginx's access log. Each request is
//! counted for the upstream that answered it (the last of `$upstream_addr`),
//! an error when nginx answered 5xx; latency is `$request_time`. The log
//! needs these four fields, in this order:
//!
//! ```nginx
//! log_format pipe '$msec $upstream_addr $status $request_time';
//! access_log /var/log/nginx/orders.log pipe;
//! ```
//!
//! Only the end of the file is read (the window is recent): at most
//! `max-read` bytes, 32 MiB by default.

use std::io::{Read, Seek, SeekFrom};

use pipe_sdk::{Capability, Context, Description, Field, FieldKind, Measurement, Plugin, Role, Side, Window};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    /// The access log, written with the `pipe` format above.
    file: String,
    #[serde(default = "defaults::max_read")]
    max_read: u64,
}

mod defaults {
    pub fn max_read() -> u64 {
        32 << 20
    }
}

struct NginxLog;

impl Plugin for NginxLog {
    type Config = Config;

    fn describe() -> Description {
        Description::new("nginx-log", env!("CARGO_PKG_VERSION"), "Canary analysis from nginx's access log")
            .field(
                Field::required("file", "the access log, format '$msec $upstream_addr $status $request_time'")
                    .kind(FieldKind::FileRead),
            )
            .field(Field::optional("max-read", "bytes read from the end of the log at most (default 32 MiB)"))
            .needs(Capability::Read)
            .role(Role::Analysis)
    }

    fn measure(c: Config, _ctx: &Context, w: &Window) -> Result<Measurement, String> {
        // A window's start: nothing to read yet (the log is read at its end).
        if w.end_ms <= w.start_ms {
            return Ok(empty(String::new()));
        }
        let (text, cut) = tail(&c.file, c.max_read)?;
        let mut canary = Tally::default();
        let mut baseline = Tally::default();
        let (mut other, mut unparsed) = (0u64, 0u64);
        for line in text.lines() {
            let Some(r) = parse(line) else {
                unparsed += u64::from(!line.trim().is_empty());
                continue;
            };
            if r.at_ms < w.start_ms || r.at_ms > w.end_ms {
                continue;
            }
            match r.upstream {
                Some(u) if w.canary.iter().any(|a| a == u) => canary.add(&r),
                Some(u) if w.baseline.iter().any(|a| a == u) => baseline.add(&r),
                _ => other += 1,
            }
        }
        let mut note = format!("{} read", c.file);
        if cut {
            note.push_str(&format!(" (its last {} bytes)", c.max_read));
        }
        if other > 0 {
            note.push_str(&format!("; {other} request(s) reached neither side"));
        }
        if unparsed > 0 {
            note.push_str(&format!(
                "; {unparsed} line(s) not in the format '$msec $upstream_addr $status $request_time'"
            ));
        }
        Ok(Measurement { canary: canary.side(), baseline: baseline.side(), note })
    }
}

fn empty(note: String) -> Measurement {
    let side = || Side { requests: 0, errors: 0, p50_ms: None, p90_ms: None, p99_ms: None };
    Measurement { canary: side(), baseline: side(), note }
}

/// The file's last `max` bytes (from a line start), and whether it was cut.
fn tail(path: &str, max: u64) -> Result<(String, bool), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("cannot open {path}: {e} (granted with `file`?)"))?;
    let len = f.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    let start = len.saturating_sub(max);
    f.seek(SeekFrom::Start(start)).map_err(|e| format!("{path}: {e}"))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0 {
        // The first line is likely cut in the middle.
        text = text.split_once('\n').map(|(_, rest)| rest.to_string()).unwrap_or_default();
    }
    Ok((text, start > 0))
}

struct Request<'a> {
    at_ms: u64,
    upstream: Option<&'a str>,
    status: u16,
    ms: f64,
}

/// `1700000000.123 127.0.0.1:8081, 127.0.0.1:8082 200 0.004`: the upstream
/// list may hold several addresses (nginx tried the next one).
fn parse(line: &str) -> Option<Request<'_>> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.len() < 4 {
        return None;
    }
    let at: f64 = words[0].parse().ok()?;
    let status: u16 = words[words.len() - 2].parse().ok()?;
    let seconds: f64 = words[words.len() - 1].parse().ok()?;
    let last = words[words.len() - 3].trim_end_matches(',');
    let upstream = (last != "-").then_some(last);
    Some(Request { at_ms: (at * 1000.0) as u64, upstream, status, ms: seconds * 1000.0 })
}

#[derive(Default)]
struct Tally {
    requests: u64,
    errors: u64,
    latencies: Vec<f64>,
}

impl Tally {
    fn add(&mut self, r: &Request) {
        self.requests += 1;
        self.errors += u64::from(r.status >= 500);
        self.latencies.push(r.ms);
    }

    fn side(mut self) -> Side {
        self.latencies.sort_by(f64::total_cmp);
        let at = |q: f64| -> Option<f64> {
            let n = self.latencies.len();
            (n > 0).then(|| self.latencies[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
        };
        Side { requests: self.requests, errors: self.errors, p50_ms: at(0.50), p90_ms: at(0.90), p99_ms: at(0.99) }
    }
}

pipe_sdk::export!(NginxLog);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retried_request_counts_for_the_upstream_that_answered() {
        let r = parse("1700000000.250 127.0.0.1:8081, 127.0.0.1:8082 502 0.010").expect("parsed");
        assert_eq!((r.at_ms, r.upstream, r.status), (1_700_000_000_250, Some("127.0.0.1:8082"), 502));
        assert!((r.ms - 10.0).abs() < 1e-9);
        assert_eq!(parse("1700000000.250 - 503 0.000").map(|r| r.upstream), Some(None));
        assert!(parse("garbage").is_none());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut t = Tally::default();
        for ms in 1..=100 {
            t.add(&Request { at_ms: 0, upstream: None, status: if ms > 95 { 500 } else { 200 }, ms: ms as f64 });
        }
        let s = t.side();
        assert_eq!((s.requests, s.errors, s.p50_ms, s.p99_ms), (100, 5, Some(50.0), Some(99.0)));
    }
}
