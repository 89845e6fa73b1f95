//! Container steps against the Docker CLI, side by side in one run:
//!
//! 1. one container step `true` through `pipe run` against `docker run --rm`
//!    of the same image and command;
//! 2. 20 container steps with `--jobs 2` against a shell running
//!    `docker run --rm` two at a time (`xargs -P2`).
//!
//! The image is busybox, built locally (no registry is reachable). Run:
//! `cargo bench -p pipe --bench containers`.

mod common;
// The tests' helpers: the same locally built busybox image.
#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{RUNS, median, ms, ratio, time};

fn main() {
    let image = support::docker::Image::busybox();
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let one = dir.path().join("one");
    let twenty = dir.path().join("twenty");
    let pipeline = |steps: usize| {
        let mut kdl =
            format!("pipeline \"bench\" {{\n  container image=\"{}\" pull=\"never\"\n  stage \"s\" {{\n", image.tag);
        for i in 0..steps {
            kdl.push_str(&format!("    step \"t{i}\" {{ run \"true\" }}\n"));
        }
        kdl + "  }\n}\n"
    };
    for (d, n) in [(&one, 1), (&twenty, 20)] {
        std::fs::create_dir_all(d).expect("mkdir");
        std::fs::write(d.join("pipe.kdl"), pipeline(n)).expect("write");
    }
    let pipe = env!("CARGO_BIN_EXE_pipe");
    let cli_one = format!("docker run --rm {} true", image.tag);
    let cli_twenty = format!("seq 20 | xargs -P2 -I{{}} docker run --rm {} true", image.tag);
    let (mut p1, mut c1, mut p20, mut c20) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        c1.push(time(Command::new("sh").args(["-c", &cli_one])));
        p1.push(pipe_run(pipe, &one));
        c20.push(time(Command::new("sh").args(["-c", &cli_twenty])));
        p20.push(pipe_run(pipe, &twenty));
    }
    let (p1, c1, p20, c20) = (median(&mut p1), median(&mut c1), median(&mut p20), median(&mut c20));
    println!("one container step `true` (busybox)");
    println!("  docker run --rm           {:>8.1} ms", ms(c1));
    println!("  pipe run                  {:>8.1} ms   pipe/docker = {:.2} (target ≤ 1.0)", ms(p1), ratio(p1, c1));
    println!("20 container steps, two at a time");
    println!("  xargs -P2 docker run --rm {:>8.1} ms", ms(c20));
    println!("  pipe run --jobs 2         {:>8.1} ms   pipe/docker = {:.2}", ms(p20), ratio(p20, c20));
}

fn pipe_run(pipe: &str, dir: &Path) -> Duration {
    let d = time(Command::new(pipe).args(["run", "--jobs", "2"]).current_dir(dir).env("CI", "1"));
    let _ = std::fs::remove_dir_all(dir.join(".pipe"));
    d
}
