//! The run report as a person sees it: rendered by headless Chromium, it must
//! load without a console error and show every step, with the timeline and
//! the graph drawn.

use std::process::Command;

use crate::support::Test;
use crate::support::servers::which;

#[test]
fn the_report_renders_in_chromium_with_every_step_and_no_console_error() {
    let test = Test::new().pipeline(
        r#"
pipeline "demo" {
    stage "build" {
        step "compile" { run "echo 'compiled <ok> & done'" }
        step "lint" { run "echo lint" }
    }
    stage "test" {
        needs "build"
        step "flaky" { run "test -f .second || { touch .second; exit 1; }"; retry 1 backoff="50ms" }
        step "broken" { run "sleep 0.5; echo boom >&2; exit 3" }
    }
    stage "ship" { needs "test"; step "push" { run "echo ship" } }
    on-failure { step "tell" { run "echo failed" } }
}
"#,
    );
    let run = test.pipe(&["run", "-j", "2"], &[]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    let report = test.pipe(&["report"], &[]);
    assert_eq!(report.code, 0, "{}", report.stderr);
    let path = report.stdout.trim().to_string();
    assert!(path.ends_with("report.html") && std::path::Path::new(&path).is_file(), "{path}");

    let chromium = which("chromium").expect("chromium is not installed: `bash .ci/setup` installs it");
    let profile = tempfile::tempdir().expect("profile");
    let out = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("file://{path}"))
        .output()
        .expect("run chromium");
    let (dom, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    let console: Vec<&str> = log.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the page logged to its console: {console:?}");
    for step in ["build.compile", "build.lint", "test.flaky", "test.broken", "ship.push", "on-failure.tell"] {
        assert!(dom.contains(&format!(">{step}<")), "{step} is on the page");
    }
    assert!(dom.contains("aria-label=\"timeline of 6 steps\"") && dom.contains("aria-label=\"graph of 6 steps\""));
    assert!(dom.contains("class=\"retry\""), "the retried attempt is drawn");
    assert!(dom.contains("compiled &lt;ok&gt; &amp; done"), "logs are there, escaped");
    assert!(dom.contains("exit code 3"), "the failure says why");
}
