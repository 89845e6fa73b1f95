//! A small builder for end-to-end tests: a temporary repository, files in it,
//! and the real `pipe` binary run inside it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const PIPE: &str = env!("CARGO_BIN_EXE_pipe");

#[must_use]
pub struct Test {
    dir: tempfile::TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub dir: PathBuf,
    /// Whether dropping the output removes `dir` (a run that consumed its `Test`).
    owned: bool,
}

impl Test {
    pub fn new() -> Test {
        watch_for_leftovers();
        Test { dir: tempfile::tempdir().expect("tempdir"), args: Vec::new(), env: Vec::new() }
    }

    /// Writes `pipe.kdl`.
    pub fn pipeline(self, text: &str) -> Test {
        self.file("pipe.kdl", text)
    }

    pub fn file(self, path: &str, text: &str) -> Test {
        let full = self.dir.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, text).expect("write");
        self
    }

    pub fn args(mut self, args: &[&str]) -> Test {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Test {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Makes the directory a git repository on `branch`, with one commit.
    pub fn git(self, branch: &str) -> Test {
        for args in [
            vec!["init", "-q", "-b", branch],
            vec!["add", "-A"],
            vec!["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"],
        ] {
            let ok = Command::new("git").args(&args).current_dir(self.path()).status().expect("git");
            assert!(ok.success(), "git {args:?}");
        }
        self
    }

    pub fn command(&self) -> Command {
        let mut cmd = Command::new(PIPE);
        cmd.args(&self.args)
            .current_dir(self.path())
            .env("NO_COLOR", "1")
            .env("CI", "true")
            .env_remove("PIPE_GIT_BRANCH")
            .env_remove("PIPE_GIT_SHA")
            // Compiled plugin code is cached here, not in the user's home.
            .env("PIPE_CACHE_DIR", Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache"))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    #[track_caller]
    pub fn run(self) -> Output {
        let out = self.command().output().expect("run pipe");
        let output = Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            dir: self.path().to_path_buf(),
            owned: true,
        };
        // Keep the directory alive for inspection through `Output`.
        let _ = self.dir.keep();
        output
    }

    /// The directory as an [`Output`], for tests that ran `pipe` themselves.
    pub fn into_output(self) -> Output {
        let dir = self.path().to_path_buf();
        let _ = self.dir.keep();
        Output { code: -1, stdout: String::new(), stderr: String::new(), dir, owned: true }
    }

    /// Runs `pipe args…` in this repository with extra environment, keeping
    /// the repository for more runs (the output does not remove it).
    #[track_caller]
    pub fn pipe(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let out = self.command().args(args).envs(env.iter().copied()).output().expect("run pipe");
        Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            dir: self.path().to_path_buf(),
            owned: false,
        }
    }

    /// Runs and checks the exit code, showing everything on a mismatch.
    #[track_caller]
    pub fn expect(self, code: i32) -> Output {
        let out = self.run();
        assert_eq!(out.code, code, "exit code\n--- stdout\n{}\n--- stderr\n{}", out.stdout, out.stderr);
        out
    }
}

impl Output {
    /// The newest run record.
    pub fn record(&self) -> serde_json::Value {
        let runs = self.dir.join(".pipe/runs");
        let mut ids: Vec<_> = std::fs::read_dir(&runs).expect("runs dir").map(|e| e.expect("entry").path()).collect();
        ids.sort();
        let text = std::fs::read_to_string(ids.last().expect("a run").join("run.json")).expect("run.json");
        serde_json::from_str(&text).expect("json")
    }

    pub fn step(&self, id: &str) -> serde_json::Value {
        let record = self.record();
        let steps = record["steps"].as_array().expect("steps").clone();
        steps.into_iter().find(|s| s["id"] == id).unwrap_or_else(|| panic!("no step {id} in {record:#}"))
    }

    pub fn status(&self, id: &str) -> String {
        self.step(id)["status"].as_str().expect("status").to_string()
    }

    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.dir.join(path)).unwrap_or_default()
    }

    pub fn exists(&self, path: &str) -> bool {
        self.dir.join(path).exists()
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if self.owned {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Waits (bounded) until `cond` holds.
#[track_caller]
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn alive(pid: i32) -> bool {
    // A zombie is dead for our purposes: it runs nothing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

pub fn read_pid(path: &Path) -> i32 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.trim().parse().unwrap_or_else(|_| panic!("no pid in {}: {text:?}", path.display()))
}

/// Makes this test process the adopter of whatever its children leave behind
/// (a child subreaper), and checks at exit that none of it still runs: a test
/// that leaves an nginx worker, a step's background process or an instance
/// running fails the suite, and what it left is killed.
pub fn watch_for_leftovers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        nix::sys::prctl::set_child_subreaper(true).expect("become a child subreaper");
        // SAFETY: registers a plain `extern "C"` function that only reads /proc,
        // writes to stderr and signals processes.
        #[allow(unsafe_code)]
        unsafe {
            libc::atexit(check_leftovers);
        }
    });
}

extern "C" fn check_leftovers() {
    let me = std::process::id().to_string();
    let mut left = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        if fields.get(1) == Some(&me.as_str()) && fields.first() != Some(&"Z") {
            let cmd = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default().replace('\0', " ");
            left.push((entry.file_name().to_string_lossy().into_owned(), cmd));
        }
    }
    if left.is_empty() {
        return;
    }
    eprintln!("error: the tests left {} process(es) running:", left.len());
    for (pid, cmd) in &left {
        eprintln!("  {pid} {cmd}");
        if let Ok(pid) = pid.parse::<i32>() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
    // SAFETY: ends the process at once with a failing status, as a test failure would.
    #[allow(unsafe_code)]
    unsafe {
        libc::_exit(101);
    }
}

pub mod cluster;
pub mod deploy;
pub mod docker;
pub mod servers;

/// The repository's `tests/plugins` crates, built once per test process for
/// wasm32-wasip2 (sharing the built-in plugins' target directory).
pub fn test_plugin(name: &str) -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let target = root.join("target").join("wasm-plugins");
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root.join("tests/plugins/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("cargo");
        assert!(status.success(), "building tests/plugins failed");
        target.join("wasm32-wasip2/release")
    });
    dir.join(format!("{}.wasm", name.replace('-', "_")))
}
