//! Container steps on a three-engine swarm (the machine's engine and two
//! worker engines in network namespaces, as the tests bring up) against the
//! local engine, side by side in one run:
//!
//! 1. 20 container steps `true` with `--jobs 2`: local engine vs the swarm,
//!    the workspace shipped through the registry;
//! 2. one step: a local container, a swarm job on the manager (bind mount, no
//!    shipping) and a swarm job shipped to a worker: the per-step overhead;
//! 3. shipping a workspace of 10 MB and 100 MB (random bytes) to a worker,
//!    over shipping an empty one.
//!
//! Run: `cargo bench -p pipe --bench cluster` (needs root, like the tests).

mod common;
#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{median, ms, ratio};

const RUNS: usize = 5;

fn main() {
    let cluster = support::cluster::Cluster::start(2);
    let image = support::docker::Image::busybox();
    let remote = Pushed(cluster.push(&image.tag));
    let remote = &remote.0;
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let reg = &cluster.registry;
    let make = |name: &str, executor: &str, image: &str, steps: usize| -> PathBuf {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        let mut kdl = format!("pipeline \"bench\" {{\n  {executor}\n  container image=\"{image}\"\n  stage \"s\" {{\n");
        for i in 0..steps {
            kdl.push_str(&format!("    step \"t{i}\" {{ run \"true\" }}\n"));
        }
        std::fs::write(d.join("pipe.kdl"), kdl + "  }\n}\n").expect("write");
        d
    };
    let local = r#"executor "docker""#;
    let ship = format!(r#"executor "swarm" {{ registry "{reg}" }}"#);
    let on_manager = r#"executor "swarm" { constraint "node.role==manager" }"#;
    let on_worker = format!(r#"executor "swarm" {{ constraint "node.hostname==pipe-node1"; registry "{reg}" }}"#);
    let local20 = make("local20", local, &image.tag, 20);
    let swarm20 = make("swarm20", &ship, remote, 20);
    let local1 = make("local1", local, &image.tag, 1);
    let manager1 = make("manager1", on_manager, &image.tag, 1);
    let worker1 = make("worker1", &on_worker, remote, 1);
    let worker10 = make("worker10", &on_worker, remote, 1);
    let worker100 = make("worker100", &on_worker, remote, 1);

    let mut t: Vec<Vec<Duration>> = vec![Vec::new(); 7];
    for run in 0..RUNS {
        // New bytes every run: what is measured is shipping, not the build
        // cache and the registry finding the layer already there.
        payload(&worker10, 10 << 20, run);
        payload(&worker100, 100 << 20, run);
        for (i, d) in [&local20, &swarm20, &local1, &manager1, &worker1, &worker10, &worker100].iter().enumerate() {
            t[i].push(pipe_run(d));
        }
    }
    let m: Vec<Duration> = t.iter_mut().map(|v| median(v)).collect();
    println!("20 container steps `true`, --jobs 2 (median of {RUNS})");
    println!("  local engine                  {:>8.0} ms", ms(m[0]));
    println!("  3-node swarm, shipped         {:>8.0} ms   swarm/local = {:.2}", ms(m[1]), ratio(m[1], m[0]));
    println!("one container step");
    println!("  local container               {:>8.0} ms", ms(m[2]));
    println!("  swarm job on the manager      {:>8.0} ms   overhead {:+.0} ms", ms(m[3]), ms(m[3]) - ms(m[2]));
    println!("  swarm job shipped to a worker {:>8.0} ms   overhead {:+.0} ms", ms(m[4]), ms(m[4]) - ms(m[2]));
    println!("shipping the workspace to a worker (over an empty one)");
    println!("  10 MB                         {:>8.0} ms   {:+.0} ms", ms(m[5]), ms(m[5]) - ms(m[4]));
    println!("  100 MB                        {:>8.0} ms   {:+.0} ms", ms(m[6]), ms(m[6]) - ms(m[4]));
}

/// The registry's tag of the test image, removed from the engine however the bench ends.
struct Pushed(String);

impl Drop for Pushed {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

fn payload(dir: &Path, size: usize, seed: usize) {
    let mut bytes = vec![0u8; size];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed as u64;
    for b in &mut bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(dir.join("payload.bin"), bytes).expect("payload");
}

fn pipe_run(dir: &Path) -> Duration {
    let start = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pipe"))
        .args(["run", "--jobs", "2"])
        .current_dir(dir)
        .env("CI", "1")
        .env("NO_COLOR", "1")
        .output()
        .expect("pipe");
    let d = start.elapsed();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let _ = std::fs::remove_dir_all(dir.join(".pipe"));
    d
}
