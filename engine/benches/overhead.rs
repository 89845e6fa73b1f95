//! Engine overhead, side by side with its peers in one run:
//!
//! 1. a 1,000-step pipeline of trivial steps (`true`) with a realistic DAG shape,
//!    `pipe run --jobs 2` against `make -j2` on the equivalent generated Makefile;
//! 2. parse + check + plan of a 10,000-step pipeline, in process.
//!
//! Prints medians and the pipe/make ratio. Run: `cargo bench -p pipe --bench overhead`.

mod common;

use std::fmt::Write as _;
use std::process::Command;
use std::time::Instant;

use common::{RUNS, median, ms, ratio, time};

fn main() {
    // In the target directory: on some disks /tmp creates files far slower.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let (kdl, makefile) = generate(50, 20);
    std::fs::write(dir.path().join("pipe.kdl"), &kdl).expect("write pipe.kdl");
    std::fs::write(dir.path().join("Makefile"), &makefile).expect("write Makefile");

    let pipe = env!("CARGO_BIN_EXE_pipe");
    let mut pipe_times = Vec::new();
    let mut make_times = Vec::new();
    // Alternate the two so that machine noise lands on both alike.
    for _ in 0..RUNS {
        make_times.push(time(Command::new("make").args(["-j2", "-s", "all"]).current_dir(dir.path())));
        pipe_times.push(time(Command::new(pipe).args(["run", "--jobs", "2"]).current_dir(dir.path()).env("CI", "1")));
        let _ = std::fs::remove_dir_all(dir.path().join(".pipe"));
    }
    let (m, p) = (median(&mut make_times), median(&mut pipe_times));
    println!("1,000 trivial steps in 50 stages of 20 (each stage needs the one or two before), 2 at a time");
    println!("  make -j2              {:>8.1} ms", ms(m));
    println!("  pipe run --jobs 2     {:>8.1} ms   pipe/make = {:.2} (target ≤ 1.2)", ms(p), ratio(p, m));
    println!(
        "  per step: make {:.0} µs, pipe {:.0} µs",
        m.as_secs_f64() * 1e6 / 1000.0,
        p.as_secs_f64() * 1e6 / 1000.0
    );

    let (big, _) = generate(500, 20);
    let mut plan_times = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        let plans = pipe::check_source("big.kdl", &big).unwrap_or_else(|_| panic!("the generated pipeline is valid"));
        assert_eq!(plans[0].len(), 10_000);
        plan_times.push(start.elapsed());
    }
    println!("10,000-step pipeline ({} KiB of KDL)", big.len() / 1024);
    println!("  parse + check + plan  {:>8.1} ms   (target well under 1,000 ms)", ms(median(&mut plan_times)));
}

/// A pipeline of `stages` stages of `width` parallel `true` steps; stage i needs
/// stage i-1 and, every third stage, i-3 too. The Makefile is the same graph.
fn generate(stages: usize, width: usize) -> (String, String) {
    let mut kdl = String::from("pipeline \"bench\" {\n");
    let mut make = String::from(".PHONY: all\nall:");
    for s in 0..stages {
        let _ = write!(make, " stage{s}");
    }
    make.push('\n');
    for s in 0..stages {
        let needs = needs(s);
        let _ = writeln!(kdl, "    stage \"s{s}\" {{");
        if !needs.is_empty() {
            let list: Vec<String> = needs.iter().map(|n| format!("\"s{n}\"")).collect();
            let _ = writeln!(kdl, "        needs {}", list.join(" "));
        }
        for w in 0..width {
            let _ = writeln!(kdl, "        step \"t{w}\" {{ run \"true\" }}");
        }
        kdl.push_str("    }\n");
        let steps: Vec<String> = (0..width).map(|w| format!("s{s}_t{w}")).collect();
        let _ = writeln!(make, ".PHONY: stage{s} {}\nstage{s}: {}", steps.join(" "), steps.join(" "));
        let prereqs: Vec<String> = needs.iter().map(|n| format!("stage{n}")).collect();
        for step in &steps {
            let _ = writeln!(make, "{step}: {}\n\ttrue", prereqs.join(" "));
        }
    }
    kdl.push_str("}\n");
    (kdl, make)
}

fn needs(s: usize) -> Vec<usize> {
    let mut n = Vec::new();
    if s >= 1 {
        n.push(s - 1);
    }
    if s >= 3 && s.is_multiple_of(3) {
        n.push(s - 3);
    }
    n
}
