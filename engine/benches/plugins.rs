//! Plugin costs, side by side in one run:
//!
//! 1. 200 plugin steps that do nothing (compiled code cached) against 200
//!    process steps running `true`, through `pipe run --jobs 2`;
//! 2. loading a component: compiling it cold, from the disk cache, from memory;
//!    and one instantiate + call of a no-op plugin;
//! 3. a host call's round trip (a plugin making 100,000 `set-output` calls);
//! 4. responsiveness: a plugin spinning beside a `true` step, how long `true`
//!    takes and how far past its 1 s timeout the plugin is stopped.
//!
//! Run: `cargo bench -p pipe --bench plugins`.

// Errors here only abort the benchmark.
#![allow(clippy::result_large_err)]

mod common;
// The tests' helpers: the test plugin is built the same way for both.
#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{RUNS, median, ms, us};

use pipe::plugin::contract::Input;
use pipe::plugin::{Call, Granted, Host, PluginRun, Prepared, Resolved};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

const STEPS: usize = 200;

fn main() {
    let wasm = support::test_plugin("hostile");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let cache = dir.path().join("cache");
    // SAFETY of set_var: single-threaded here, before the host starts.
    unsafe_free_env("PIPE_CACHE_DIR", &cache);

    let steps = |action: &str| {
        let mut kdl = String::from("pipeline \"bench\" {\n    stage \"s\" {\n");
        for i in 0..STEPS {
            kdl.push_str(&format!("        step \"t{i}\" {{ {action} }}\n"));
        }
        kdl + "    }\n}\n"
    };
    let plugin_dir = dir.path().join("plugin");
    let process_dir = dir.path().join("process");
    for (d, kdl) in [
        (&plugin_dir, steps(&format!("uses \"{}\" mode=\"noop\"", wasm.display()))),
        (&process_dir, steps("run \"true\"")),
    ] {
        std::fs::create_dir_all(d).expect("mkdir");
        std::fs::write(d.join("pipe.kdl"), kdl).expect("write");
    }
    let pipe = env!("CARGO_BIN_EXE_pipe");
    run(pipe, &plugin_dir, &cache); // compiles once and fills the cache
    let (mut plugin_times, mut process_times) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        process_times.push(run(pipe, &process_dir, &cache));
        plugin_times.push(run(pipe, &plugin_dir, &cache));
    }
    let (pl, pr) = (median(&mut plugin_times), median(&mut process_times));
    println!("{STEPS} steps in one stage, 2 at a time, through `pipe run`");
    println!("  process steps (`true`)      {:>8.1} ms   {:>6.0} µs a step", ms(pr), us(pr) / STEPS as f64);
    println!(
        "  plugin steps (no-op, cached) {:>7.1} ms   {:>6.0} µs a step   plugin/process = {:.2} (target < 1)",
        ms(pl),
        us(pl) / STEPS as f64,
        pl.as_secs_f64() / pr.as_secs_f64()
    );

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let host = Host::global().expect("host");
    let bytes = std::fs::read(&wasm).expect("read plugin");
    let resolved = Resolved {
        name: "hostile".into(),
        origin: wasm.display().to_string(),
        sha256: format!("{:x}", sha2::Sha256::digest(&bytes)),
        bytes: bytes.into(),
    };
    let (mut cold, mut disk, mut memory) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let _ = std::fs::remove_dir_all(&cache);
        host.forget_loaded();
        cold.push(timed(|| host.load(&resolved).map(|_| ())));
        host.forget_loaded();
        disk.push(timed(|| host.load(&resolved).map(|_| ())));
        memory.push(timed(|| host.load(&resolved).map(|_| ())));
    }
    let (component, version, _) = host.load(&resolved).expect("load");
    let info = rt.block_on(host.describe("hostile", &component, version)).expect("describe");
    let prepared = Arc::new(Prepared { resolved, component, version, info });
    let call = |mode: &str, target: &str| PluginRun {
        plugin: prepared.clone(),
        call: Call::Run,
        input: Input {
            config: vec![("mode".into(), mode.into()), ("target".into(), target.into())],
            ..Input::default()
        },
        granted: Granted::default(),
        memory: pipe::plugin::DEFAULT_MEMORY,
        state: None,
        workdir: dir.path().to_path_buf(),
        output_file: None,
    };
    let log = pipe::step::StepLog::sink("bench");
    let cancel = CancellationToken::new();
    let ok =
        |run: &PluginRun| rt.block_on(host.invoke(run, &log, &cancel)).result.map(|_| ()).map_err(|e| format!("{e:?}"));
    let mut instantiate = Vec::new();
    let noop = call("noop", "");
    for _ in 0..RUNS * 5 {
        let start = Instant::now();
        ok(&noop).expect("no-op call");
        instantiate.push(start.elapsed());
    }
    const CALLS: u64 = 100_000;
    let (none, many) = (call("calls", "0"), call("calls", &CALLS.to_string()));
    let (mut base, mut full) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        base.push(timed(|| ok(&none)));
        full.push(timed(|| ok(&many)));
    }
    let per_call = (median(&mut full).as_secs_f64() - median(&mut base).as_secs_f64()) / CALLS as f64;
    println!("loading a {} KiB component", std::fs::metadata(&wasm).map(|m| m.len() / 1024).unwrap_or(0));
    println!("  compile (cold)              {:>8.2} ms", ms(median(&mut cold)));
    println!("  from the disk cache         {:>8.2} ms", ms(median(&mut disk)));
    println!("  from memory (same process)  {:>8.3} ms", ms(median(&mut memory)));
    println!("  new store + instantiate + call (no-op)  {:>6.3} ms", ms(median(&mut instantiate)));
    println!("host call round trip (set-output)          {:>6.2} µs", per_call * 1e6);

    let busy = dir.path().join("busy");
    std::fs::create_dir_all(&busy).expect("mkdir");
    let kdl = format!(
        "pipeline \"busy\" {{ stage \"s\" {{\n  step \"spin\" {{ uses \"{}\" mode=\"loop\"; timeout \"1s\"; continue-on-error }}\n  step \"quick\" {{ run \"true\" }}\n}} }}\n",
        wasm.display()
    );
    std::fs::write(busy.join("pipe.kdl"), kdl).expect("write");
    let (mut quick, mut overshoot) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        let record = run_and_read(pipe, &busy, &cache);
        let took = |id: &str| {
            let steps = record["steps"].as_array().expect("steps");
            let ms = steps.iter().find(|s| s["id"] == id).and_then(|s| s["duration_ms"].as_u64()).expect("duration");
            Duration::from_millis(ms)
        };
        quick.push(took("s.quick"));
        overshoot.push(took("s.spin").saturating_sub(Duration::from_secs(1)));
    }
    println!("a plugin spinning beside a `true` step (jobs 2)");
    println!("  the `true` step takes        {:>8.1} ms", ms(median(&mut quick)));
    println!("  the plugin stopped past its 1 s timeout by {:>5.1} ms (target < 100)", ms(median(&mut overshoot)));
}

/// Runs `pipe run` in `dir` and returns the run's record.
fn run_and_read(pipe: &str, dir: &Path, cache: &Path) -> serde_json::Value {
    let status = Command::new(pipe)
        .args(["run", "--jobs", "2"])
        .current_dir(dir)
        .env("CI", "1")
        .env("PIPE_CACHE_DIR", cache)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    assert!(status.success(), "pipe run failed in {}", dir.display());
    let runs = dir.join(".pipe/runs");
    let run = std::fs::read_dir(&runs).expect("runs").flatten().next().expect("a run").path();
    let record = serde_json::from_slice(&std::fs::read(run.join("run.json")).expect("record")).expect("json");
    let _ = std::fs::remove_dir_all(dir.join(".pipe"));
    record
}

fn unsafe_free_env(key: &str, value: &Path) {
    // The bench passes the cache directory to the `pipe` it runs through the
    // command's environment, and to the in-process host through this variable,
    // read once when the host starts.
    #[allow(unsafe_code)]
    // SAFETY: no other thread exists yet.
    unsafe {
        std::env::set_var(key, value);
    }
}

fn run(pipe: &str, dir: &Path, cache: &Path) -> Duration {
    let start = Instant::now();
    let status = Command::new(pipe)
        .args(["run", "--jobs", "2"])
        .current_dir(dir)
        .env("CI", "1")
        .env("PIPE_CACHE_DIR", cache)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    assert!(status.success(), "pipe run failed in {}", dir.display());
    let _ = std::fs::remove_dir_all(dir.join(".pipe"));
    start.elapsed()
}

fn timed<E: std::fmt::Debug>(f: impl FnOnce() -> Result<(), E>) -> Duration {
    let start = Instant::now();
    f().expect("benchmarked operation");
    start.elapsed()
}
