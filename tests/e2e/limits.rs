//! `pipe check` runs on pipelines under review: a hostile file must get a
//! clear error, quickly, in bounded memory. Each input here once took pipe
//! to gigabytes or hours; the test builds it and expects the limit named.

use crate::support::{Output, Test};

fn check(text: &str) -> Output {
    Test::new().pipeline(text).args(&["check"]).expect(2)
}

#[test]
fn a_file_over_the_size_limit_is_refused_unread() {
    let mut text = String::from("pipeline \"p\" { stage \"s\" { step \"a\" { run \"true\" } } }\n");
    text.push_str(&format!("// {}\n", "x".repeat(2 << 20)));
    let out = check(&text);
    assert!(out.stderr.contains("a pipeline file holds at most 1048576"), "{}", out.stderr);
}

#[test]
fn a_matrix_expanding_past_the_step_limit_is_refused() {
    let values: Vec<String> = (0..256).map(|i| format!("\"{i}\"")).collect();
    let steps: String = (0..50).map(|i| format!("step \"t{i}\" {{ run \"true\" }}\n")).collect();
    let out = check(&format!("pipeline \"p\" {{ stage \"s\" {{ matrix {{ x {} }}\n{steps} }} }}", values.join(" ")));
    assert!(out.stderr.contains("has 12800 steps once matrices are expanded (at most 10000)"), "{}", out.stderr);
}

/// Each step carries its own copy of the pipeline's `env`: 20,000 variables
/// over a 256-way matrix of 39 steps took `pipe check` past 24 GB.
#[test]
fn env_multiplied_by_a_matrix_is_refused() {
    let env: String = (0..20_000).map(|i| format!("V{i} \"x\"\n")).collect();
    let values: Vec<String> = (0..256).map(|i| format!("\"{i}\"")).collect();
    let steps: String = (0..39).map(|i| format!("step \"a{i}\" {{ run \"\" }}\n")).collect();
    let text =
        format!("pipeline \"p\" {{ env {{\n{env}}}\nstage \"s\" {{ matrix {{ x {} }}\n{steps}}} }}", values.join(" "));
    let out = check(&text);
    assert!(out.stderr.contains("environment variables over all its steps"), "{}", out.stderr);
}

/// A diagnostic finds its line from the start of the file: half a million
/// wrong lines, each reported, took hours.
#[test]
fn problems_past_a_hundred_are_counted_not_shown() {
    let out = check(&"a\n".repeat(200_000));
    assert!(out.stderr.contains("more than 100 problems in this file"), "{}", &out.stderr[out.stderr.len() - 300..]);
    assert_eq!(out.stderr.matches("unknown node `a`").count(), 100);
}

#[test]
fn a_step_id_too_long_for_a_file_name_is_refused_at_check() {
    let out = check(&format!("pipeline \"p\" {{ stage \"s\" {{ step \"{}\" {{ run \"true\" }} }} }}", "n".repeat(250)));
    assert!(out.stderr.contains("it becomes a file name, of at most 242"), "{}", out.stderr);
}
