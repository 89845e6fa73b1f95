//! What deployment tests deploy and put load on: the example `shop` service
//! (pipelines/shop/app.c) built once per test process, as a binary and as an
//! image; HAProxy with its own config; and the independent load generators
//! (`hey`, whose Go client retries a GET on a reused connection as browsers do,
//! and `wrk`, which never retries: the strict count).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::Test;
use super::docker::containers_with;
use super::servers::{free_port, stop_group, which};

/// A repository holding a deployment (its pipeline named uniquely: instances
/// are named after it). Dropping it stops the deployment's instances,
/// whatever happened to the test.
pub struct Repo {
    pub test: Test,
    pub name: String,
    pub deploy: String,
}

impl Repo {
    pub fn new(test: Test, name: String, deploy: &str) -> Repo {
        Repo { test, name, deploy: deploy.to_string() }
    }

    /// The `pipe.deploy` label of its containers.
    pub fn label(&self) -> String {
        format!("{}/{}", self.name, self.deploy)
    }

    /// Where its journal lives.
    pub fn state_file(&self) -> PathBuf {
        self.test.path().join(".pipe/state").join(format!("{}.json", self.name))
    }
}

impl std::ops::Deref for Repo {
    type Target = Test;
    fn deref(&self) -> &Test {
        &self.test
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let vars = [("V", "-"), ("HEALTH", "ok"), ("DELAY", "0"), ("EXPECT", "-"), ("ERRORS", "0"), ("DIE", "0")];
        let _ = self.test.pipe(&["deploy", "stop"], &vars);
        let rt = super::docker::runtime();
        let docker = super::docker::docker(&rt);
        for id in containers_with("pipe.deploy", &self.label()) {
            let options = bollard::query_parameters::RemoveContainerOptions { force: true, ..Default::default() };
            let _ = rt.block_on(docker.remove_container(&id, Some(options)));
        }
    }
}

/// A repository whose pipeline `name` deploys `web` blue-green (version
/// `${env.V}`) into slots blue and green on `ports`, with `instance`,
/// `traffic` and `extra` nodes as given.
pub fn blue_green(name: String, instance: &str, traffic: &str, ports: (u16, u16), extra: &str) -> Repo {
    let (blue, green) = ports;
    let test = Test::new().pipeline(&format!(
        r#"
pipeline "{name}" {{
    stage "release" {{
        deploy "web" strategy="blue-green" version="${{env.V}}" {{
            {instance}
            slots {{ slot "blue" port={blue}; slot "green" port={green} }}
            health "http-check" path="/health" attempts=30 interval="100ms"
            {traffic}
            drain "10s"
            keep-previous "10m"
            {extra}
        }}
    }}
}}
"#
    ));
    Repo::new(test, name, "web")
}

/// The shop binary, statically linked (it also runs alone in a `FROM scratch` image).
pub fn shop_app() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("shop-app-{}", std::process::id()));
            let status = Command::new("cc")
                .args(["-O2", "-static", "-pthread", "-o"])
                .arg(&out)
                .arg(root.join("pipelines/shop/app.c"))
                .status()
                .expect("cc: `bash .ci/setup --tests` installs gcc");
            assert!(status.success(), "building pipelines/shop/app.c failed");
            out
        })
        .clone()
}

/// A `FROM scratch` image holding only the shop binary, removed when dropped.
pub fn shop_image() -> super::docker::Image {
    let ctx = tempfile::tempdir().expect("context");
    std::fs::copy(shop_app(), ctx.path().join("app")).expect("copy app");
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY app /app\nLABEL pipe.test=1\nENTRYPOINT [\"/app\"]\n",
    )
    .expect("Dockerfile");
    super::docker::Image::build(ctx.path(), "pipe-test-shop")
}

/// HAProxy with its own config: a frontend on a loopback port, backend `app`
/// with one server per slot address (in maintenance until routed), and the
/// runtime API on another loopback port. Stopped when dropped.
pub struct Haproxy {
    pub port: u16,
    pub admin: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    pub fn start(servers: &[(&str, u16)]) -> Haproxy {
        Haproxy::with(servers, "retries 3\n    option redispatch\n    retry-on all-retryable-errors")
    }

    /// HAProxy that never retries a request on another server: every request
    /// sent to a backend that cannot answer fails, as it reaches the client.
    pub fn strict(servers: &[(&str, u16)]) -> Haproxy {
        Haproxy::with(servers, "retries 0")
    }

    fn with(servers: &[(&str, u16)], retries: &str) -> Haproxy {
        let haproxy = which("haproxy").expect("haproxy is not installed: `bash .ci/setup --tests` installs it");
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, admin) = (free_port(), free_port());
        let mut cfg = format!(
            "global\n    stats socket ipv4@127.0.0.1:{admin} level admin\n\
             defaults\n    mode http\n    option http-keep-alive\n    {retries}\n    \
             timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    \
             timeout http-request 10s\n    timeout http-keep-alive 10s\n\
             frontend public\n    bind 127.0.0.1:{port}\n    default_backend app\n\
             backend app\n    option httpchk GET /health\n"
        );
        for (name, port) in servers {
            cfg.push_str(&format!("    server {name} 127.0.0.1:{port} check inter 500ms disabled\n"));
        }
        std::fs::write(dir.path().join("haproxy.cfg"), cfg).expect("cfg");
        let child = Command::new(haproxy)
            .arg("-f")
            .arg(dir.path().join("haproxy.cfg"))
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start haproxy");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "haproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Haproxy { port, admin, child, _dir: dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        // SIGUSR1: a soft stop, as HAProxy expects.
        stop_group(&mut self.child, nix::sys::signal::Signal::SIGUSR1);
    }
}

/// What a load generator saw.
#[derive(Debug, Default)]
pub struct Load {
    pub requests: u64,
    pub non_2xx: u64,
    pub errors: u64,
    pub raw: String,
}

impl Load {
    pub fn failures(&self) -> u64 {
        self.non_2xx + self.errors
    }
}

/// A load generator running in the background, bounded in time (and, through
/// its rate, in count).
pub struct LoadRun {
    child: Child,
    tool: &'static str,
}

impl LoadRun {
    /// `hey`: `rate` requests a second over 8 keep-alive connections for `secs`.
    pub fn hey(url: &str, rate: u32, secs: u32) -> LoadRun {
        let hey = which("hey").expect("hey is not installed: `bash .ci/setup --tests` installs it");
        let child = Command::new(hey)
            .args(["-z", &format!("{secs}s"), "-c", "8", "-q", &(rate / 8).max(1).to_string(), "-t", "10", url])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start hey");
        LoadRun { child, tool: "hey" }
    }

    /// `wrk`: 8 connections, each pausing `pause_ms` between requests (a Lua
    /// `delay`), for `secs`. wrk never retries: every reset is counted.
    pub fn wrk(url: &str, pause_ms: u32, secs: u32) -> LoadRun {
        let wrk = which("wrk").expect("wrk is not installed: `bash .ci/setup --tests` installs it");
        let script = std::env::temp_dir().join(format!("pipe-wrk-{}-{pause_ms}.lua", std::process::id()));
        std::fs::write(&script, format!("function delay() return {pause_ms} end\n")).expect("lua");
        let child = Command::new(wrk)
            .args(["-t", "1", "-c", "8", "-d", &format!("{secs}s"), "--latency", "-s"])
            .arg(&script)
            .arg(url)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wrk");
        LoadRun { child, tool: "wrk" }
    }

    pub fn finish(self) -> Load {
        let out = self.child.wait_with_output().expect("load generator");
        let raw = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let mut load = Load { raw: raw.clone(), ..Load::default() };
        if self.tool == "hey" {
            // "  [200]\t1234 responses" and, under "Error distribution:", "  [3]\tGet …".
            let mut in_errors = false;
            for line in raw.lines() {
                in_errors |= line.starts_with("Error distribution");
                let Some(rest) = line.trim().strip_prefix('[') else { continue };
                let Some((code, tail)) = rest.split_once(']') else { continue };
                let count: u64 = tail.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
                if in_errors {
                    load.errors += code.parse::<u64>().unwrap_or(0);
                } else if let Ok(status) = code.parse::<u16>() {
                    load.requests += count;
                    if !(200..300).contains(&status) {
                        load.non_2xx += count;
                    }
                }
            }
            load.requests += load.errors;
        } else {
            for line in raw.lines().map(str::trim) {
                if let Some(n) = line.split(" requests in ").next().and_then(|n| n.parse::<u64>().ok()) {
                    load.requests = n;
                }
                if let Some(n) = line.strip_prefix("Non-2xx or 3xx responses:") {
                    load.non_2xx = n.trim().parse().unwrap_or(0);
                }
                if let Some(rest) = line.strip_prefix("Socket errors:") {
                    load.errors =
                        rest.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum();
                }
            }
        }
        assert!(load.requests > 0, "the load generator sent nothing:\n{raw}");
        load
    }
}

/// A load generator that records every request: when it was sent and what
/// came back (0: no answer). hey and wrk give totals; a canary test needs to
/// know *when* requests failed. Each request is on a new connection, as a
/// client that never retries. Bounded: it stops when told, or after `max_secs`.
pub struct Timeline {
    threads: Vec<std::thread::JoinHandle<Vec<(Instant, u16)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Timeline {
    pub fn start(port: u16, rate: u32, max_secs: u64) -> Timeline {
        use std::sync::atomic::Ordering;
        let started = Instant::now();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers = 4u32;
        let every = Duration::from_secs_f64(f64::from(workers) / f64::from(rate.max(1)));
        let threads = (0..workers)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    let mut next = Instant::now();
                    while started.elapsed() < Duration::from_secs(max_secs) && !stop.load(Ordering::Relaxed) {
                        let at = Instant::now();
                        seen.push((at, status(port)));
                        next += every;
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                    seen
                })
            })
            .collect();
        Timeline { threads, stop }
    }

    /// Stops; every request, in order of sending.
    pub fn finish(self) -> Vec<(Instant, u16)> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut all: Vec<(Instant, u16)> =
            self.threads.into_iter().flat_map(|t| t.join().expect("load thread")).collect();
        all.sort_by_key(|(at, _)| *at);
        all
    }
}

fn status(port: u16) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return 0 };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    if conn.write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").is_err() {
        return 0;
    }
    let mut response = Vec::new();
    let _ = conn.read_to_end(&mut response);
    std::str::from_utf8(response.get(9..12).unwrap_or_default()).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
}
