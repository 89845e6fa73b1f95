//! Fixture cases as data: every `cases/invalid/*.kdl` must fail `pipe check`
//! with the snapshotted diagnostic; every `cases/valid/*.kdl` must run to the
//! snapshotted outcome.

#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

fn cases_dir() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/cases")).canonicalize().expect("tests/cases")
}

#[test]
fn invalid_pipelines_are_rejected_with_a_diagnostic() {
    insta::glob!("cases/invalid/*.kdl", |path| {
        let dir = cases_dir();
        let name = path.strip_prefix(&dir).expect("inside cases").display().to_string();
        let out = Command::new(support::PIPE)
            .args(["check", "--file", &name])
            .current_dir(&dir)
            .env("NO_COLOR", "1")
            .output()
            .expect("run pipe");
        assert_eq!(out.status.code(), Some(2), "{name} must be invalid");
        insta::assert_snapshot!(String::from_utf8_lossy(&out.stderr));
    });
}

#[test]
fn valid_pipelines_run_to_their_expected_outcome() {
    insta::glob!("cases/valid/*.kdl", |path| {
        let text = std::fs::read_to_string(path).expect("read case");
        let out = support::Test::new().pipeline(&text).args(&["run", "--jobs", "2"]).run();
        let record = out.record();
        let mut outcome = format!("exit: {}\nrun: {}\n", out.code, record["status"].as_str().unwrap_or("?"));
        for step in record["steps"].as_array().expect("steps") {
            let status = step["status"].as_str().unwrap_or("?");
            let allowed = if step["allowed_failure"] == true { " (allowed)" } else { "" };
            let attempts = step["attempts"].as_u64().unwrap_or(0);
            let outputs = step.get("outputs").map(|o| format!(" outputs={o}")).unwrap_or_default();
            let reason = step.get("reason").and_then(|r| r.as_str()).map(|r| format!(" — {r}")).unwrap_or_default();
            outcome.push_str(&format!(
                "{}: {status}{allowed} attempts={attempts}{outputs}{reason}\n",
                step["id"].as_str().unwrap_or("?")
            ));
        }
        insta::assert_snapshot!(outcome);
    });
}

/// The plan of every valid case, as `pipe graph` prints it: an edge that
/// changes cannot pass unnoticed.
#[test]
fn valid_pipelines_plan_to_their_snapshotted_graph() {
    insta::glob!("cases/valid/*.kdl", |path| {
        let dir = cases_dir();
        let name = path.strip_prefix(&dir).expect("inside cases").display().to_string();
        let out = Command::new(support::PIPE)
            .args(["graph", "--file", &name])
            .current_dir(&dir)
            .env("NO_COLOR", "1")
            .output()
            .expect("run pipe");
        assert_eq!(out.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        insta::assert_snapshot!(String::from_utf8_lossy(&out.stdout));
    });
}

/// A small, deterministic cousin of the fuzz target (`engine/fuzz`) that runs in
/// every test run: every fixture and example, cut and spliced at many places,
/// must be rejected or accepted, never panic the checker.
#[test]
fn mangled_pipelines_never_panic_the_checker() {
    let mut inputs = Vec::new();
    for dir in [cases_dir().join("invalid"), cases_dir().join("valid"), cases_dir().join("../../pipelines")] {
        for entry in std::fs::read_dir(dir).expect("fixture dir").flatten() {
            if entry.path().extension().is_some_and(|x| x == "kdl") {
                inputs.push(std::fs::read_to_string(entry.path()).expect("read"));
            }
        }
    }
    const SPLICES: &[&str] = &["{", "}", "\"", ";", "${", "${steps.", "[", "needs \"", "=", "#true", "\n", "é", "\\"];
    let mut checked = 0;
    for text in &inputs {
        let cuts: Vec<usize> = text.char_indices().map(|(i, _)| i).step_by(7).collect();
        for (n, &at) in cuts.iter().enumerate() {
            let _ = pipe::check_source("cut.kdl", &text[..at]);
            let splice = SPLICES[n % SPLICES.len()];
            let _ = pipe::check_source("spliced.kdl", &format!("{}{splice}{}", &text[..at], &text[at..]));
            checked += 2;
        }
    }
    assert!(checked > 1000, "only {checked} inputs");
}
