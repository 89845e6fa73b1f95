//! The step cache, side by side in one run: a 200-step pipeline (each step
//! reads the same small tree of inputs and writes an output file) run with no
//! cache, then rerun with nothing changed — every step a hit — and the cost
//! of one hit. Medians of 7, alternating.
//!
//! Run: `cargo bench -p pipe --bench cache`.

mod common;

use std::process::Command;

use common::{RUNS, median, ms, time};

const STEPS: usize = 200;

fn main() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    for i in 0..20 {
        std::fs::create_dir_all(dir.path().join("src/mod")).expect("mkdir");
        std::fs::write(dir.path().join(format!("src/mod/f{i}.txt")), "x".repeat(4096)).expect("write");
    }
    let mut kdl = String::from("pipeline \"cached\" {\n");
    for s in 0..10 {
        kdl.push_str(&format!("    stage \"s{s}\" {{\n"));
        if s > 0 {
            kdl.push_str(&format!("        needs \"s{}\"\n", s - 1));
        }
        for w in 0..STEPS / 10 {
            kdl.push_str(&format!(
                "        step \"t{w}\" {{\n            run \"mkdir -p out/s{s} && echo {w} > out/s{s}/t{w}\"\n            \
                 cache {{ inputs \"src/**\"; outputs \"out/s{s}/t{w}\" }}\n        }}\n"
            ));
        }
        kdl.push_str("    }\n");
    }
    kdl.push_str("}\n");
    std::fs::write(dir.path().join("pipe.kdl"), kdl).expect("write");
    let pipe = env!("CARGO_BIN_EXE_pipe");
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(pipe);
        cmd.args(["run", "--jobs", "2"]).args(extra).current_dir(dir.path()).env("CI", "1");
        time(&mut cmd)
    };
    run(&[]);
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        cold.push(run(&["--no-cache"]));
        warm.push(run(&[]));
    }
    let (c, w) = (median(&mut cold), median(&mut warm));
    println!("{STEPS} steps, 2 at a time, each reading 20 input files (80 KiB) and writing one output");
    println!(
        "  run, cache off             {:>8.1} ms   {:>6.0} µs a step",
        ms(c),
        c.as_secs_f64() * 1e6 / STEPS as f64
    );
    println!(
        "  rerun, nothing changed     {:>8.1} ms   {:>6.0} µs a step (a hit: key, lookup, restore)   {:.2}× the run",
        ms(w),
        w.as_secs_f64() * 1e6 / STEPS as f64,
        w.as_secs_f64() / c.as_secs_f64()
    );
}
