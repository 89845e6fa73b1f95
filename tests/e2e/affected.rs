//! `pipe run --affected` in a repository of services with shared code: a
//! change runs only the pipelines (and stages) it touches, and the others say
//! why they were left out.

use std::process::Command;

use crate::support::{Output, Test};

const ORDERS: &str = r#"
pipeline "orders" {
    changes "src/**" "../../shared/**"
    stage "build" { step "compile" { run "echo built orders" } }
    stage "test" { needs "build"; step "unit" { run "echo tested orders" } }
    stage "docs" { changes "docs/**"; step "site" { run "echo docs" } }
}
"#;

const BILLING: &str = r#"
pipeline "billing" {
    stage "build" { step "compile" { run "echo built billing" } }
}
"#;

fn repo() -> Test {
    Test::new()
        .file("services/orders/pipe.kdl", ORDERS)
        .file("services/orders/src/main.txt", "1")
        .file("services/orders/docs/index.md", "docs")
        .file("services/billing/pipe.kdl", BILLING)
        .file("services/billing/src/main.txt", "1")
        .file("shared/lib.txt", "1")
        .file(".gitignore", ".pipe/\n")
        .git("main")
}

fn git(test: &Test, args: &[&str]) {
    let ok = Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@t"])
        .args(args)
        .current_dir(test.path())
        .status()
        .expect("git");
    assert!(ok.success(), "git {args:?}");
}

fn affected(test: &Test, extra: &[&str]) -> Output {
    let mut args = vec!["run", "--affected"];
    args.extend(extra);
    let out = test.pipe(&args, &[]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    out
}

#[test]
fn a_change_runs_only_what_it_affects_and_says_why_the_rest_was_left_out() {
    let test = repo();
    // Nothing to compare with yet: everything runs.
    let first = affected(&test, &[]);
    assert!(first.stdout.contains("built orders") && first.stdout.contains("built billing"), "{}", first.stdout);

    // An uncommitted change in one service, compared with its last successful run.
    std::fs::write(test.path().join("services/orders/src/main.txt"), "2").expect("write");
    let out = affected(&test, &[]);
    assert!(out.stdout.contains("built orders") && out.stdout.contains("tested orders"), "{}", out.stdout);
    assert!(!out.stdout.contains("built billing"), "{}", out.stdout);
    assert!(out.stdout.contains("↷ billing skipped: unaffected (no change under services/billing/ since "));
    assert!(!out.stdout.contains("echo docs") && out.stdout.contains("unaffected (no change in docs/** since "));

    // Shared code: the service that declares it runs, the other does not.
    git(&test, &["commit", "-qam", "orders"]);
    std::fs::write(test.path().join("shared/lib.txt"), "2").expect("write");
    let out = affected(&test, &["--since", "HEAD"]);
    assert!(out.stdout.contains("built orders") && !out.stdout.contains("built billing"), "{}", out.stdout);

    // On a branch, the default base is the merge base with main.
    git(&test, &["checkout", "-q", "-b", "feature"]);
    git(&test, &["commit", "-qam", "shared"]);
    std::fs::write(test.path().join("services/billing/src/main.txt"), "2").expect("write");
    git(&test, &["commit", "-qam", "billing"]);
    let out = affected(&test, &["--format", "json"]);
    assert!(out.stdout.contains("built billing") && out.stdout.contains("built orders"), "both changed since main");
    git(&test, &["checkout", "-q", "main"]);
    git(&test, &["checkout", "-q", "-b", "docs-only"]);
    std::fs::write(test.path().join("services/orders/docs/index.md"), "more").expect("write");
    git(&test, &["commit", "-qam", "docs"]);
    let out = affected(&test, &["--format", "json"]);
    assert!(out.stdout.contains(r#""event":"pipeline-skipped","pipeline":"billing""#), "{}", out.stdout);
    assert!(out.stdout.contains("echo docs") && !out.stdout.contains("built orders"), "{}", out.stdout);
    let record = out.dir.join(".pipe/runs");
    assert!(record.is_dir());
}
