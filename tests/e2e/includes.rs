//! `include` on a pipeline under review: `pipe check` must not show the
//! content of any file outside the repository, whatever the path says.

use crate::support::Test;

const SECRET: &str = "PIPE_TEST_LEAK_ME=hunter2-do-not-print";

#[track_caller]
fn refused(test: &Test, why: &str, hidden: &[&str]) {
    let out = test.pipe(&["check"], &[("PIPE_TEST_LEAK_ME", "hunter2-do-not-print")]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    let shown = format!("{}{}", out.stdout, out.stderr);
    for h in hidden {
        assert!(!shown.contains(h), "`{h}` was shown");
    }
    assert!(shown.contains(why), "{why} in\n{shown}");
}

#[test]
fn check_does_not_print_the_environment_through_an_include() {
    let test = Test::new().pipeline(r#"pipeline "leak" { include "/proc/self/environ" }"#);
    refused(&test, "an absolute path is not a file of", &["hunter2", SECRET, "PATH="]);
}

#[test]
fn check_does_not_print_a_file_above_the_repository() {
    let test = Test::new().pipeline(r#"pipeline "leak" { include "../../../../../../../../../../etc/passwd" }"#);
    refused(&test, "the path leads outside the", &["root:", "/bin/"]);
    // A repository in a subdirectory of a git repository: the git toplevel is the bound.
    let outer = Test::new()
        .file("secret.txt", "password=hunter2-do-not-print")
        .file("repo/pipe.kdl", r#"pipeline "leak" { include "../secret.txt" }"#)
        .file("repo/.git/HEAD", "ref: refs/heads/main\n");
    let out = outer.pipe(&["-C", "repo", "check"], &[]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("leads outside the") && !out.stderr.contains("hunter2"), "{}", out.stderr);
}

#[test]
fn a_link_inside_the_repository_to_a_file_outside_is_refused() {
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("creds.kdl"), "template { password \"hunter2-do-not-print\" }").expect("write");
    let test = Test::new().pipeline(r#"pipeline "leak" { include "templates/creds.kdl" }"#).file("templates/keep", "");
    std::os::unix::fs::symlink(outside.path().join("creds.kdl"), test.path().join("templates/creds.kdl"))
        .expect("link");
    refused(&test, "a symbolic link on the path leads", &["hunter2"]);
    // A link to a directory outside, followed by a name below it.
    std::os::unix::fs::symlink(outside.path(), test.path().join("shared")).expect("link");
    std::fs::write(test.path().join("pipe.kdl"), r#"pipeline "leak" { include "shared/creds.kdl" }"#).expect("write");
    refused(&test, "a symbolic link on the path leads", &["hunter2"]);
}

#[test]
fn an_included_file_is_bounded_in_size() {
    let big = format!("template {{\n{}}}\n", "// padding padding padding padding padding padding\n".repeat(25_000));
    let test = Test::new().pipeline(r#"pipeline "big" { include "big.kdl" }"#).file("big.kdl", &big);
    refused(&test, "an included file holds at most 1048576", &["padding"]);
}

#[test]
fn templates_inside_the_repository_still_work() {
    let test = Test::new()
        .file("templates/t.kdl", r#"template { stage "s" { step "a" { run "true" } } }"#)
        .file("services/a/pipe.kdl", r#"pipeline "a" { include "../../templates/t.kdl" }"#);
    let out = test.pipe(&["check"], &[]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
}
