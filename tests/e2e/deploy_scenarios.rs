//! Deploy scenarios under strict load: HAProxy that never retries, a client
//! that opens a new connection per request and never retries either. pipe is
//! killed as soon as a deploy of v2 reaches each phase (SIGKILL lands a
//! moment later: the phase it was in is read back from the journal), then
//! `resume` or `rollback` ends it. Every request must succeed, the right
//! version must be live, and nothing may be left in progress.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::deploy::{Haproxy, Timeline, blue_green, shop_app};
use crate::support::servers::{free_port, get};

const PHASES: [&str; 6] = ["start", "health", "switch", "verify", "drain", "finish"];

struct Outcome {
    killed_in: String,
    requests: usize,
    failed: usize,
    live: String,
    /// Whether v2's slot (green) still answers.
    v2_runs: bool,
}

/// The deploy journal's pending phase, `(done)` when nothing is in progress.
fn phase(repo: &crate::support::deploy::Repo) -> String {
    std::fs::read_to_string(repo.state_file())
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|state| serde_json::from_str::<serde_json::Value>(state["deploy.web/journal"].as_str()?).ok())
        .map_or("(none)".to_string(), |j| j["pending"]["phase"].as_str().unwrap_or("(done)").to_string())
}

fn scenario(kill_in: &str, then: &str) -> Outcome {
    let (blue, green) = (free_port(), free_port());
    let haproxy = Haproxy::strict(&[("blue", blue), ("green", green)]);
    let instance = format!(
        r#"instance "command" start="exec {}" {{ env {{ VERSION "${{deploy.version}}"; START_DELAY_MS "${{env.DELAY}}" }} }}"#,
        shop_app().display()
    );
    let traffic = format!(r#"traffic "haproxy-switch" socket="127.0.0.1:{}" backend="app""#, haproxy.admin);
    let verify =
        format!(r#"verify url="http://127.0.0.1:{}/version" body-contains="${{deploy.version}}""#, haproxy.port);
    let repo = blue_green(format!("sc{blue}"), &instance, &traffic, (blue, green), &verify);
    let env = |v: &'static str| [("V", v), ("DELAY", "500")];
    let first = repo.pipe(&["run"], &env("v1"));
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);

    let load = Timeline::start(haproxy.port, 200, 30);
    let mut child =
        repo.command().arg("run").envs(env("v2")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("pipe");
    // As soon as the journal shows the phase (or a later one, or the end).
    let at = PHASES.iter().position(|p| *p == kill_in).unwrap_or(0);
    let (began, mut seen) = (Instant::now(), false);
    while child.try_wait().expect("try_wait").is_none() && began.elapsed() < Duration::from_secs(20) {
        let now = phase(&repo);
        let index = PHASES.iter().position(|p| *p == now);
        // The deploy of v2 has begun once a phase shows; done once none does again.
        seen |= index.is_some();
        if index.is_some_and(|i| i >= at) || (seen && index.is_none()) {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    let _ = child.wait();
    let killed_in = phase(&repo);
    let after = repo.pipe(&["deploy", then], &env("v2"));
    if killed_in != "(done)" || then == "rollback" {
        assert_eq!(after.code, 0, "{then} after a kill in {killed_in}:\n{}{}", after.stdout, after.stderr);
    }
    // Requests keep coming for a moment after the command: what it left must serve.
    std::thread::sleep(Duration::from_millis(500));
    let seen = load.finish();
    let live = get(haproxy.port, "/version").map(|v| v.trim().to_string()).unwrap_or_else(|e| e);
    let status = repo.pipe(&["deploy", "status"], &env("v2"));
    assert!(status.stdout.contains("in progress nothing"), "{then} after {killed_in}: {}", status.stdout);
    let v2_runs = get(green, "/version").is_ok();
    Outcome { killed_in, requests: seen.len(), failed: seen.iter().filter(|(_, s)| *s != 200).count(), live, v2_runs }
}

#[test]
fn killed_anywhere_in_a_deploy_then_resumed_or_rolled_back_no_request_fails_through_strict_haproxy() {
    let mut wrong = Vec::new();
    for kill_in in PHASES {
        for then in ["resume", "rollback"] {
            let o = scenario(kill_in, then);
            let want = if then == "resume" { "v2" } else { "v1" };
            eprintln!(
                "killed on reaching `{kill_in}` (in `{}`), then {then}: {} requests, {} failed, {} live",
                o.killed_in, o.requests, o.failed, o.live
            );
            // Rolled back, v2 is stopped; resumed, v1 is kept for a rollback (keep-previous).
            if o.failed > 0 || o.live != want || o.v2_runs != (then == "resume") {
                wrong.push(format!(
                    "killed in `{}`, then {then}: {} of {} requests failed; {} live (want {want}); v2 runs: {}",
                    o.killed_in, o.failed, o.requests, o.live, o.v2_runs
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
