//! Progressive delivery against the real things: rolling over containers
//! behind HAProxy with a backend killed mid-rollout, canaries behind nginx
//! judged from its access log, approval gates answered from a second process,
//! and notifications received by a webhook. An independent load generator
//! (one new connection per request, no retries) runs during every rollout.

use std::process::{Child, Stdio};
use std::time::Instant;

use crate::approvals::{key, public};
use crate::support::deploy::{Haproxy, Repo, Timeline, shop_app, shop_image};
use crate::support::docker::containers_with;
use crate::support::servers::{Backend, Nginx, free_port, get};
use crate::support::{Output, Test, wait_until};

const VARS: [&str; 4] = ["HEALTH", "DELAY", "EXPECT", "ERRORS"];

/// Runs `pipe` with version `v` (and `errors` percent of 500s from it).
fn pipe(repo: &Repo, args: &[&str], v: &str, errors: &str) -> Output {
    repo.pipe(args, &[("V", v), (VARS[0], "ok"), (VARS[1], "0"), (VARS[2], v), (VARS[3], errors)])
}

fn spawn(repo: &Repo, args: &[&str], v: &str) -> Child {
    repo.command()
        .args(args)
        .envs([("V", v), (VARS[0], "ok"), (VARS[1], "0"), (VARS[2], v), (VARS[3], "0")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pipe")
}

fn served(port: u16) -> String {
    get(port, "/version").map(|v| v.trim().to_string()).unwrap_or_else(|e| format!("error: {e}"))
}

fn details(out: &Output) -> serde_json::Value {
    out.record()["steps"][0]["details"].clone()
}

fn reason(out: &Output) -> String {
    out.step("release.web")["reason"].as_str().unwrap_or("").to_string()
}

/// A canary of the shop service (`command` instances) behind nginx.
fn canary(nginx: &Nginx, blue: u16, green: u16, extra: &str) -> Repo {
    canary_with(nginx, blue, green, extra, &[])
}

/// A canary, with more files in its repository.
fn canary_with(nginx: &Nginx, blue: u16, green: u16, extra: &str, files: &[(&str, &str)]) -> Repo {
    let name = format!("canary{blue}");
    let p = nginx.prefix.display();
    let test = files.iter().fold(Test::new(), |t, (path, text)| t.file(path, text));
    let test = test.pipeline(&format!(
        r#"
pipeline "{name}" {{
    stage "release" {{
        deploy "web" strategy="canary" version="${{env.V}}" {{
            instance "command" start="exec {app}" {{
                env {{ VERSION "${{deploy.version}}"; HEALTH "${{env.HEALTH}}"; START_DELAY_MS "${{env.DELAY}}"; ERROR_PERCENT "${{env.ERRORS}}" }}
            }}
            slots {{ slot "blue" port={blue}; slot "green" port={green} }}
            health "http-check" path="/health" attempts=30 interval="100ms"
            traffic "nginx-switch" file="{p}/app.inc" upstream="app" test="{test}" reload="{reload}"
            drain "10s"
            {extra}
        }}
    }}
}}
"#,
        app = shop_app().display(),
        test = nginx.args("test"),
        reload = nginx.args("reload"),
    ));
    Repo::new(test, name, "web")
}

fn analysis(nginx: &Nginx, window: &str, metrics: &str) -> String {
    format!(
        r#"analysis "nginx-log" file="{}/logs/access.log" window="{window}" min-samples=20 on-no-data="fail" {{ {metrics} }}"#,
        nginx.prefix.display()
    )
}

fn failed(requests: &[(Instant, u16)]) -> usize {
    requests.iter().filter(|(_, s)| *s != 200).count()
}

#[test]
fn a_canary_on_good_numbers_is_promoted_10_50_100_with_no_failed_request() {
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let extra = format!(
        r#"{}
           steps {{ weight 10 pause="2s"; weight 50 pause="2s"; weight 100 }}"#,
        analysis(&nginx, "2s", r#"metric "error-rate" max=0.05; metric "p99" max="500ms""#)
    );
    let repo = canary(&nginx, blue, green, &extra);
    let first = pipe(&repo, &["run"], "v1", "0");
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);

    let load = Timeline::start(nginx.port, 200, 60);
    let out = pipe(&repo, &["run"], "v2", "0");
    let requests = load.finish();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(served(nginx.port), "v2");
    let d = details(&out);
    assert_eq!(d["outcome"], "deployed");
    let verdicts = d["verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 2, "one window per pause: {verdicts:?}");
    assert!(verdicts.iter().all(|v| v["outcome"] == "pass"), "{verdicts:?}");
    assert!(verdicts[0]["canary"]["requests"].as_u64() > Some(20), "the canary got its share: {verdicts:?}");
    assert!(out.stdout.contains("▸ weight 10") && out.stdout.contains("▸ weight 50"), "{}", out.stdout);
    assert_eq!(failed(&requests), 0, "no request failed ({} sent)", requests.len());
    eprintln!("canary 10→50→100: {} requests, 0 failed; verdicts: {}", requests.len(), verdicts[1]["reason"]);
}

#[test]
fn a_canary_answering_500s_is_rolled_back_and_only_its_share_failed() {
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let hook = Backend::fixed(200, "ok");
    let extra = format!(
        r#"{}
           steps {{ weight 10 pause="4s"; weight 100 }}
           notify "notify" url="http://{}/hook""#,
        analysis(&nginx, "2s", r#"metric "error-rate" max=0.01"#),
        hook.addr()
    );
    let repo = canary(&nginx, blue, green, &extra);
    assert_eq!(pipe(&repo, &["run"], "v1", "0").code, 0);

    let load = Timeline::start(nginx.port, 200, 60);
    let bad = pipe(&repo, &["run"], "v2", "100");
    let rolled_back = Instant::now();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let requests = load.finish();
    assert_eq!(bad.code, 1, "{}{}", bad.stdout, bad.stderr);
    let why = reason(&bad);
    assert!(why.contains("the analysis failed the canary: canary error-rate 100%"), "{why}");
    assert!(why.contains("rolled back to v1 in slot blue"), "{why}");
    assert_eq!(details(&bad)["outcome"], "rolled-back");
    assert_eq!(served(nginx.port), "v1");

    // Blast radius: every failure is a 500 from the canary, at most its 10%
    // share of what was sent while it served, and none after the rollback.
    let bad_ones: Vec<&(Instant, u16)> = requests.iter().filter(|(_, s)| *s != 200).collect();
    assert!(bad_ones.iter().all(|(_, s)| *s == 500), "only the canary's 500s: {bad_ones:?}");
    let (first, last) = (bad_ones.first().expect("the canary served").0, bad_ones.last().expect("failures").0);
    let during = requests.iter().filter(|(at, _)| *at >= first && *at <= last).count();
    let share = bad_ones.len() as f64 / during as f64;
    assert!(bad_ones.len() <= during / 10 + 2, "{} failed of {during} sent while the canary served", bad_ones.len());
    assert_eq!(requests.iter().filter(|(at, s)| *at > rolled_back && *s != 200).count(), 0);
    assert!(bad.stdout.contains("blast radius"), "pipe reports it too: {}", bad.stdout);
    eprintln!(
        "blast radius: {} of {during} requests ({:.1}%) at weight 10%; 0 after the rollback",
        bad_ones.len(),
        share * 100.0
    );

    let events: Vec<String> = hook
        .seen
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|(_, _, body)| serde_json::from_str::<serde_json::Value>(body).ok())
        .map(|v| v["event"].as_str().unwrap_or("").to_string())
        .collect();
    for kind in ["started", "step-reached", "verdict", "rolled-back"] {
        assert!(events.iter().any(|e| e == kind), "the webhook heard `{kind}`: {events:?}");
    }
}

#[test]
fn a_canary_that_gets_no_traffic_fails_with_the_no_data_message() {
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let extra = format!(
        r#"{}
           steps {{ weight 10 pause="1s"; weight 100 }}"#,
        analysis(&nginx, "1s", r#"metric "error-rate" max=0.01"#)
    );
    let repo = canary(&nginx, blue, green, &extra);
    assert_eq!(pipe(&repo, &["run"], "v1", "0").code, 0);
    let out = pipe(&repo, &["run"], "v2", "0");
    assert_eq!(out.code, 1, "{}", out.stdout);
    let why = reason(&out);
    assert!(why.contains("canary got 0 requests in 1s (min-samples=20); on-no-data=fail"), "{why}");
    assert_eq!(details(&out)["verdicts"][0]["outcome"], "inconclusive");
    assert_eq!(served(nginx.port), "v1");
}

#[test]
fn a_canary_waits_for_promote_or_abort_from_another_process() {
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let repo = canary(&nginx, blue, green, r#"steps { weight 50 approve=#true timeout="1m"; weight 100 }"#);
    assert_eq!(pipe(&repo, &["run"], "v1", "0").code, 0);
    let waiting = || std::fs::read_to_string(repo.state_file()).is_ok_and(|s| s.contains(r#"\"waiting\":\""#));

    let run = spawn(&repo, &["run"], "v2");
    wait_until("the canary to wait for a person", waiting);
    let status = pipe(&repo, &["deploy", "status"], "v2", "0");
    assert!(status.stdout.contains("weights     50% on v2"), "{}", status.stdout);
    assert!(status.stdout.contains("waiting for promotion of v2 from 50%"), "{}", status.stdout);
    // The command the message gives works as given (it once named the
    // deployment where the pipeline goes: "no pipeline named web").
    let given = status.stdout.split("`pipe deploy promote ").nth(1).and_then(|r| r.split('`').next());
    let given: Vec<&str> = given.expect("the message says how to promote").split(' ').collect();
    let promote = pipe(&repo, &[&["deploy", "promote"][..], &given].concat(), "v2", "0");
    assert_eq!(promote.code, 0, "{}{}", promote.stdout, promote.stderr);
    let out = run.wait_with_output().expect("pipe run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(served(nginx.port), "v2");

    let run = spawn(&repo, &["run", "--format", "json"], "v3");
    wait_until("the canary to wait again", waiting);
    let abort = pipe(&repo, &["deploy", "abort", "--reason", "error budget"], "v3", "0");
    assert_eq!(abort.code, 0, "{}{}", abort.stdout, abort.stderr);
    let out = run.wait_with_output().expect("pipe run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(r#""event":"step-waiting""#), "a JSON event says what it waits for: {stdout}");
    assert!(stdout.contains("error budget") && stdout.contains("rolled back to v2"), "{stdout}");
    assert_eq!(served(nginx.port), "v2");
}

/// A canary whose deployment names approvers: promoting needs a key of its
/// allowed-signers file; mallory's is refused, the canary waits on.
#[test]
fn a_canary_with_approvers_is_promoted_only_by_a_signed_decision() {
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let gate = r#"steps { weight 50 approve=#true timeout="1m"; weight 100 }
            approvers "allowed_signers""#;
    let keys = tempfile::tempdir().expect("keys");
    let (alice, mallory) = (key(keys.path(), "alice"), key(keys.path(), "mallory"));
    let signers = format!("alice@example.com {}\n", public(&alice));
    let repo = canary_with(&nginx, blue, green, gate, &[("allowed_signers", &signers)]);
    assert_eq!(pipe(&repo, &["run"], "v1", "0").code, 0);
    let waiting = || std::fs::read_to_string(repo.state_file()).is_ok_and(|s| s.contains(r#"\"waiting\":\""#));
    let run = spawn(&repo, &["run"], "v2");
    wait_until("the canary to wait for a person", waiting);
    let decision = std::fs::read_dir(repo.path().join(".pipe/approvals"))
        .expect("approvals")
        .flatten()
        .map(|e| e.path().with_extension("decision"))
        .next()
        .expect("a gate");
    let nobody = keys.path().join("no-home");
    let unsigned = repo.pipe(&["deploy", "promote"], &[("HOME", nobody.to_str().expect("utf-8"))]);
    assert_eq!(unsigned.code, 1, "{}", unsigned.stderr);
    assert!(unsigned.stderr.contains("name your SSH key with --key"), "{}", unsigned.stderr);
    let refused = repo.pipe(&["deploy", "promote", "--key", mallory.to_str().expect("utf-8")], &[]);
    assert_eq!(refused.code, 0, "{}", refused.stderr);
    wait_until("the run to read mallory's decision", || !decision.exists());
    assert!(waiting(), "still waiting after mallory's promotion");
    let promote = repo.pipe(&["deploy", "promote", "--key", alice.to_str().expect("utf-8")], &[]);
    assert_eq!(promote.code, 0, "{}{}", promote.stdout, promote.stderr);
    let out = run.wait_with_output().expect("pipe run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("is signed by a key that allowed_signers does not name"), "{stdout}");
    assert!(stdout.contains("promoted by alice@example.com"), "{stdout}");
    assert_eq!(served(nginx.port), "v2");
}

#[test]
fn an_approve_step_waits_for_pipe_approve_from_another_process() {
    let test = Test::new().pipeline(
        r#"
pipeline "gated" {
    stage "gate" { step "go" { approve "Ship it?" timeout="1m" } }
    stage "ship" { needs "gate"; step "deploy" { run "echo shipped" } }
}
"#,
    );
    let child = test.command().arg("run").stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn pipe");
    let approvals = test.path().join(".pipe/approvals");
    // The `.waiting` file itself, not the temporary file it is written through.
    wait_until("the gate to open", || {
        std::fs::read_dir(&approvals)
            .is_ok_and(|d| d.flatten().any(|e| e.path().extension().is_some_and(|x| x == "waiting")))
    });
    let list = test.pipe(&["approve", "some-other-run"], &[]);
    assert_eq!(list.code, 1);
    assert!(list.stderr.contains("gate.go: Ship it?"), "it lists what waits: {}", list.stderr);
    let ok = test.pipe(&["approve"], &[]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    let out = child.wait_with_output().expect("pipe run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("approved by") && stdout.contains("shipped"), "{stdout}");
    assert!(!approvals.read_dir().is_ok_and(|mut d| d.next().is_some()), "the gate's files are gone");
}

#[test]
fn rolling_four_containers_behind_haproxy_survives_a_backend_killed_mid_rollout() {
    let image = shop_image();
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let servers: Vec<(String, u16)> = ports.iter().enumerate().map(|(i, p)| (format!("s{}", i + 1), *p)).collect();
    let named: Vec<(&str, u16)> = servers.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    let haproxy = Haproxy::start(&named);
    let name = format!("rolling{}", ports[0]);
    let slots: String = ports.iter().enumerate().map(|(i, p)| format!("slot \"{}\" port={p}; ", i + 1)).collect();
    let test = Test::new().pipeline(&format!(
        r#"
pipeline "{name}" {{
    stage "release" {{
        deploy "web" strategy="rolling" version="${{env.V}}" {{
            instance "docker" image="{tag}" pull="never" port=8080 {{ env {{ VERSION "${{deploy.version}}"; BIND "0.0.0.0" }} }}
            slots {{ {slots}}}
            replicas 4
            batch 1
            health "http-check" path="/health" attempts=50 interval="100ms"
            traffic "haproxy-switch" socket="127.0.0.1:{admin}" backend="app"
            drain "10s"
        }}
    }}
}}
"#,
        tag = image.tag,
        admin = haproxy.admin
    ));
    let repo = Repo::new(test, name, "web");
    let first = pipe(&repo, &["run"], "v1", "0");
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert_eq!(containers_with("pipe.deploy", &repo.label()).len(), 4);

    let load = Timeline::start(haproxy.port, 100, 120);
    let run = spawn(&repo, &["run"], "v2");
    wait_until("the second batch", || {
        std::fs::read_to_string(repo.state_file()).is_ok_and(|s| s.contains(r#"\"batch\":{\"number\":2"#))
    });
    // kill -9 the main process of an old instance that still serves.
    let victim = old_instance_pid(&repo, "v1");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), nix::sys::signal::Signal::SIGKILL).expect("kill -9");
    let out = run.wait_with_output().expect("pipe run");
    let requests = load.finish();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("▸ batch 4 drain"), "{stdout}");
    let versions: Vec<String> = (0..8).map(|_| served(haproxy.port)).collect();
    assert!(versions.iter().all(|v| v == "v2"), "{versions:?}");
    assert_eq!(failed(&requests), 0, "{} of {} requests failed", failed(&requests), requests.len());
    let status = pipe(&repo, &["deploy", "status"], "v2", "0");
    assert!(status.stdout.contains("live        v2 in slots"), "{}", status.stdout);
    eprintln!("rolling 4 replicas with a kill -9: {} requests, 0 failed", requests.len());
}

/// The host pid of the newest-slot instance still running `version`.
fn old_instance_pid(repo: &Repo, version: &str) -> i32 {
    let rt = crate::support::docker::runtime();
    let docker = crate::support::docker::docker(&rt);
    let mut found = Vec::new();
    for id in containers_with("pipe.deploy", &repo.label()) {
        let Ok(c) = rt.block_on(docker.inspect_container(&id, None)) else { continue };
        let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
        if labels.get("pipe.version").map(String::as_str) == Some(version) {
            let slot = labels.get("pipe.slot").cloned().unwrap_or_default();
            found.push((slot, c.state.and_then(|s| s.pid).unwrap_or(0)));
        }
    }
    found.sort();
    let (_, pid) = found.last().cloned().expect("an old instance still runs");
    assert!(pid > 0);
    pid as i32
}

#[test]
fn a_rolling_deploy_failing_in_its_second_batch_rolls_the_first_back_under_load() {
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let servers: Vec<(String, u16)> = ports.iter().enumerate().map(|(i, p)| (format!("s{}", i + 1), *p)).collect();
    let named: Vec<(&str, u16)> = servers.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    let haproxy = Haproxy::strict(&named);
    let name = format!("rollback{}", ports[0]);
    let slots: String = ports.iter().enumerate().map(|(i, p)| format!("slot \"{}\" port={p}; ", i + 1)).collect();
    // v2 is sick in slot 1 only: the second batch (slot 1, after slot 5) fails its health check.
    let start = format!(
        "#!/bin/sh\nif [ \"$VERSION\" = v2 ] && [ \"$SLOT\" = 1 ]; then export HEALTH=fail; fi\nexec {}\n",
        shop_app().display()
    );
    let test = Test::new().file("start.sh", &start).pipeline(&format!(
        r#"
pipeline "{name}" {{
    stage "release" {{
        deploy "web" strategy="rolling" version="${{env.V}}" {{
            instance "command" start="sh start.sh"
            slots {{ {slots}}}
            replicas 4
            health "http-check" path="/health" attempts=5 interval="100ms"
            traffic "haproxy-switch" socket="127.0.0.1:{admin}" backend="app"
            drain "10s"
        }}
    }}
}}
"#,
        admin = haproxy.admin
    ));
    let repo = Repo::new(test, name, "web");
    assert_eq!(pipe(&repo, &["run"], "v1", "0").code, 0);

    let load = Timeline::start(haproxy.port, 100, 60);
    let out = pipe(&repo, &["run"], "v2", "0");
    let requests = load.finish();
    assert_eq!(out.code, 1, "{}", out.stdout);
    let why = reason(&out);
    assert!(why.contains("health failed") && why.contains("rolled back to v1"), "{why}");
    assert!(out.stdout.contains("▸ rollback-batch 1 start: starting v1"), "{}", out.stdout);
    assert_eq!(details(&out)["outcome"], "rolled-back");
    let versions: Vec<String> = (0..8).map(|_| served(haproxy.port)).collect();
    assert!(versions.iter().all(|v| v == "v1"), "{versions:?}");
    assert_eq!(failed(&requests), 0, "{} of {} requests failed", failed(&requests), requests.len());
    let status = pipe(&repo, &["deploy", "status"], "v1", "0");
    assert!(status.stdout.contains("live        v1 in slots") && status.stdout.contains("in progress nothing"));
    eprintln!("rolling rollback after batch 1: {} requests, 0 failed", requests.len());
}
