//! Everyday tools: `pipe fmt` (stable, idempotent, comments kept, meaning
//! kept), `pipe completions`, `pipe init`.

use std::path::{Path, PathBuf};

use crate::support::{PIPE, Test};

fn kdl_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read dir").flatten() {
        let p = e.path();
        if p.is_dir() {
            kdl_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "kdl") {
            out.push(p);
        }
    }
}

fn pipe_in(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(PIPE).args(args).current_dir(dir).env("NO_COLOR", "1").output().expect("pipe")
}

#[test]
fn fmt_is_idempotent_keeps_comments_and_meaning_and_the_examples_are_formatted() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let mut files = Vec::new();
    kdl_files(&root.join("pipelines"), &mut files);
    kdl_files(&root.join("tests/cases/valid"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read");
        let dir = tempfile::tempdir().expect("tempdir");
        let copy = dir.path().join("pipe.kdl");
        std::fs::write(&copy, &text).expect("write");
        let before = pipe_in(dir.path(), &["graph", "-f", "pipe.kdl"]);
        assert!(pipe_in(dir.path(), &["fmt", "pipe.kdl"]).status.success(), "{}", file.display());
        let once = std::fs::read_to_string(&copy).expect("read");
        assert!(
            pipe_in(dir.path(), &["fmt", "--check", "pipe.kdl"]).status.success(),
            "idempotent: {}",
            file.display()
        );
        assert_eq!(once.matches("//").count(), text.matches("//").count(), "comments kept: {}", file.display());
        let after = pipe_in(dir.path(), &["graph", "-f", "pipe.kdl"]);
        assert_eq!(before.stdout, after.stdout, "the same plan: {}", file.display());
        if file.starts_with(root.join("pipelines")) {
            assert_eq!(once, text, "{} is not formatted: run `pipe fmt` on it", file.display());
        }
    }
}

#[test]
fn fmt_check_reports_and_fmt_fixes() {
    let test = Test::new()
        .pipeline("pipeline \"p\" {\n  stage \"s\" { step \"a\" { run \"true\" }; step \"b\" { run \"true\" } }\n}\n");
    let check = test.pipe(&["fmt", "--check"], &[]);
    assert_eq!(check.code, 1);
    assert!(check.stdout.contains("would reformat pipe.kdl"), "{}", check.stdout);
    assert_eq!(test.pipe(&["fmt"], &[]).code, 0);
    assert_eq!(test.pipe(&["fmt", "--check"], &[]).code, 0);
    let text = std::fs::read_to_string(test.path().join("pipe.kdl")).expect("read");
    assert!(text.contains("    stage \"s\" {\n        step \"a\" {\n            run \"true\"\n        }\n"), "{text}");
    let broken = Test::new().pipeline("pipeline \"p\" {");
    assert_eq!(broken.pipe(&["fmt"], &[]).code, 2, "a file that does not parse is not touched");
}

#[test]
fn completions_and_init() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Test::new().pipe(&["completions", shell], &[]);
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("pipe") && out.stdout.contains("deploy"), "{shell}");
    }
    // `pipe completions bash | head`: the reader goes away; no panic, no backtrace.
    let empty = Test::new();
    let mut child = empty
        .command()
        .args(["completions", "bash"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("pipe");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("panicked"), "{:?}: {stderr}", out.status);

    let test = Test::new().file("Cargo.toml", "[package]\nname = \"demo\"\n").file(".gitignore", "target");
    let init = test.pipe(&["init"], &[]);
    assert_eq!(init.code, 0, "{}", init.stderr);
    assert!(init.stdout.contains("Rust project"), "{}", init.stdout);
    // pipe's own state is never committed: `.pipe/` joins the .gitignore, once.
    assert_eq!(std::fs::read_to_string(test.path().join(".gitignore")).expect("gitignore"), "target\n.pipe/\n");
    let text = std::fs::read_to_string(test.path().join("pipe.kdl")).expect("written");
    assert!(text.contains("cargo test") && text.contains("cache {"), "{text}");
    let check = test.pipe(&["check"], &[]);
    assert_eq!(check.code, 0, "the starter is valid: {}", check.stderr);
    assert_eq!(test.pipe(&["fmt", "--check"], &[]).code, 0, "and formatted");
    let again = test.pipe(&["init"], &[]);
    assert_eq!(again.code, 2);
    assert!(again.stderr.contains("never overwrites"));
}
