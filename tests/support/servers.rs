//! Real servers for plugin tests, all on loopback: a tiny HTTP server whose
//! answers a test scripts, and an nginx started with its own prefix.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server was sent: method, path, body.
pub type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

pub struct Backend {
    pub port: u16,
    pub seen: Seen,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// `answer(n)` gives the status and body of the n-th request (0-based).
    pub fn start(answer: impl Fn(usize) -> (u16, String) + Send + 'static) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let port = listener.local_addr().expect("addr").port();
        let (stop, seen): (Arc<AtomicBool>, Seen) = (Arc::default(), Arc::default());
        let count = AtomicUsize::new(0);
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let Some((method, path, body)) = read_request(&mut conn) else { continue };
                seen2.lock().expect("lock").push((method, path, body));
                let (status, body) = answer(count.fetch_add(1, Ordering::SeqCst));
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Backend { port, seen, stop, thread: Some(thread) }
    }

    /// Always the same answer.
    pub fn fixed(status: u16, body: &str) -> Backend {
        let body = body.to_string();
        Backend::start(move |_| (status, body.clone()))
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_request(conn: &mut TcpStream) -> Option<(String, String, String)> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut first = head.lines().next()?.split_whitespace();
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
    Some((method, path, body))
}

/// A plain GET through loopback; the body, or the error.
pub fn get(port: u16, path: &str) -> Result<String, String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    write!(conn, "GET {path} HTTP/1.0\r\nhost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = String::new();
    conn.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("no response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    Ok(body.to_string())
}

/// A loopback port nothing listens on, taken below the kernel's ephemeral
/// range (32768-60999): a port from that range (what binding port 0 gives)
/// can be taken, between this call and the bind, as the local port of one of
/// the many client connections the load tests open, and an instance then
/// fails to start. Each call in a process gets another port.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const COUNT: u32 = 12_000;
    let start = std::process::id().wrapping_mul(97);
    for _ in 0..COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + start.wrapping_add(n) % COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {}", FIRST + COUNT)
}

/// nginx with its own prefix and config, proxying a loopback port to the
/// upstream `app` defined in `<prefix>/app.inc`, logging each request in the
/// format `nginx-log` reads (`<prefix>/logs/access.log`). Stopped when dropped.
pub struct Nginx {
    pub prefix: PathBuf,
    pub port: u16,
    child: Child,
}

impl Nginx {
    /// The `traffic` node that switches this nginx: the nginx-switch plugin
    /// writing `app.inc` in its prefix, testing and reloading it.
    pub fn traffic(&self) -> String {
        format!(
            r#"traffic "nginx-switch" file="{}/app.inc" upstream="app" test="{}" reload="{}""#,
            self.prefix.display(),
            self.args("test"),
            self.args("reload")
        )
    }

    pub fn start(prefix: &Path, first_backend: &str) -> Nginx {
        let nginx = which("nginx").expect("nginx is not installed: `bash .ci/setup --tests` installs it");
        let port = free_port();
        for dir in ["logs", "tmp"] {
            std::fs::create_dir_all(prefix.join(dir)).expect("mkdir");
        }
        std::fs::write(prefix.join("app.inc"), format!("upstream app {{ server {first_backend}; }}\n")).expect("inc");
        let conf = format!(
            "daemon off;\nworker_processes 1;\nerror_log {p}/logs/error.log;\npid {p}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  log_format pipe '$msec $upstream_addr $status $request_time';\n  \
             access_log {p}/logs/access.log pipe;\n  client_body_temp_path {p}/tmp;\n  proxy_temp_path {p}/tmp;\n  \
             fastcgi_temp_path {p}/tmp;\n  uwsgi_temp_path {p}/tmp;\n  scgi_temp_path {p}/tmp;\n  \
             include {p}/app.inc;\n  server {{\n    listen 127.0.0.1:{port};\n    \
             location / {{ proxy_pass http://app; proxy_next_upstream error timeout http_502 http_503; }}\n  }}\n}}\n",
            p = prefix.display()
        );
        std::fs::write(prefix.join("nginx.conf"), conf).expect("conf");
        let child = Command::new(nginx)
            .args(["-p"])
            .arg(prefix)
            .args(["-c", "nginx.conf", "-e"])
            .arg(prefix.join("logs/error.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Master and workers in a group of their own, to be stopped together.
            .process_group(0)
            .spawn()
            .expect("start nginx");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(start.elapsed() < Duration::from_secs(10), "nginx did not start: {}", log(prefix));
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx { prefix: prefix.to_path_buf(), port, child }
    }

    /// The argument list pipe's grants and nginx-switch's commands use.
    pub fn args(&self, action: &str) -> String {
        let p = self.prefix.display();
        match action {
            "test" => format!("nginx -p {p} -c nginx.conf -e {p}/logs/error.log -t"),
            _ => format!("nginx -p {p} -c nginx.conf -e {p}/logs/error.log -s reload"),
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop_group(&mut self.child, nix::sys::signal::Signal::SIGQUIT);
    }
}

/// Stops a server the way it expects (`graceful`, to its leader) and waits for
/// its whole process group to be gone; SIGKILLs the group if it lingers.
pub fn stop_group(child: &mut Child, graceful: nix::sys::signal::Signal) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, graceful);
    let start = Instant::now();
    let _ = child.wait();
    while killpg(pid, None).is_ok() {
        if start.elapsed() > Duration::from_secs(5) {
            let _ = killpg(pid, Signal::SIGKILL);
        }
        if start.elapsed() > Duration::from_secs(10) {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log(prefix: &Path) -> String {
    std::fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default()
}

pub fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(program)).find(|p| p.is_file())
}
