//! Blue-green deployments against the real things: nginx and HAProxy started
//! by the tests on loopback ports, the shop service as `command` instances and
//! as containers, and an independent load generator (hey, wrk) running during
//! every switch. Zero failed requests is asserted, not claimed.

use std::process::Stdio;

use crate::support::deploy::{Haproxy, LoadRun, Repo, blue_green, shop_app, shop_image};
use crate::support::docker::containers_with;
use crate::support::servers::{Nginx, free_port, get};
use crate::support::{Output, wait_until};

fn repo(instance: &str, traffic: &str, blue: u16, green: u16, extra: &str) -> Repo {
    blue_green(format!("bg{blue}"), instance, traffic, (blue, green), extra)
}

fn command_instance() -> String {
    format!(
        r#"instance "command" start="exec {}" {{ env {{ VERSION "${{deploy.version}}"; HEALTH "${{env.HEALTH}}"; START_DELAY_MS "${{env.DELAY}}" }} }}"#,
        shop_app().display()
    )
}

/// Runs `pipe` in the repository with the deploy variables set.
fn pipe(repo: &Repo, args: &[&str], version: &str) -> Output {
    repo.pipe(args, &[("V", version), ("HEALTH", "ok"), ("DELAY", "0"), ("EXPECT", version)])
}

fn served(port: u16) -> String {
    get(port, "/version").map(|v| v.trim().to_string()).unwrap_or_else(|e| format!("error: {e}"))
}

fn details(out: &Output) -> serde_json::Value {
    out.record()["steps"][0]["details"].clone()
}

/// The strict count (no retries) pipe's own probe saw, for the test's output.
fn strict(out: &Output) -> String {
    let total = &details(out)["probe"]["total"];
    format!(
        "pipe's probe: {} requests, {} failed, {} strict ({} cut by a reload)",
        total["requests"], total["non_2xx"], total["cut"], total["cut"]
    )
}

#[test]
fn nginx_promotes_v1_v2_v3_with_no_failed_request_under_load() {
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let probe = format!(r#"probe url="http://127.0.0.1:{}/" rate=100"#, nginx.port);
    let verify = format!(r#"verify url="http://127.0.0.1:{}/version" body-contains="${{deploy.version}}""#, nginx.port);
    let test = repo(&command_instance(), &nginx.traffic(), blue, green, &format!("{verify}\n{probe}"));
    let first = pipe(&test, &["run"], "v1");
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    assert_eq!(served(nginx.port), "v1");

    let load = LoadRun::hey(&format!("http://127.0.0.1:{}/", nginx.port), 400, 8);
    for version in ["v2", "v3"] {
        let out = pipe(&test, &["run"], version);
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert_eq!(details(&out)["outcome"], "deployed");
        eprintln!("{version}: {}", strict(&out));
    }
    let load = load.finish();
    assert_eq!(served(nginx.port), "v3");
    assert_eq!(load.failures(), 0, "hey saw failures during the switches:\n{}", load.raw);
    eprintln!("hey: {} requests, 0 failed", load.requests);

    let status = pipe(&test, &["deploy", "status"], "v3");
    assert!(status.stdout.contains("live        v3 in slot blue"), "{}", status.stdout);
    assert!(status.stdout.contains("previous    v2 in slot green, kept running"), "{}", status.stdout);
    let history = pipe(&test, &["deploy", "history"], "v3");
    assert_eq!(history.stdout.matches("deployed").count(), 3, "{}", history.stdout);
}

#[test]
fn haproxy_switches_containers_with_no_failed_request_strictly_and_rolls_back_instantly() {
    let image = shop_image();
    let (blue, green) = (free_port(), free_port());
    let haproxy = Haproxy::strict(&[("blue", blue), ("green", green)]);
    let instance = format!(
        r#"instance "docker" image="{}" pull="never" port=8080 {{ env {{ VERSION "${{deploy.version}}"; BIND "0.0.0.0" }} }}"#,
        image.tag
    );
    let traffic = format!(r#"traffic "haproxy-switch" socket="127.0.0.1:{}" backend="app""#, haproxy.admin);
    let extra = format!(
        r#"verify url="http://127.0.0.1:{0}/version" body-contains="${{deploy.version}}"
           probe url="http://127.0.0.1:{0}/" rate=100"#,
        haproxy.port
    );
    let test = repo(&instance, &traffic, blue, green, &extra);
    let first = pipe(&test, &["run"], "v1");
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    let pipeline_containers = || containers_with("pipe.deploy", &test.label());
    assert_eq!(pipeline_containers().len(), 1);

    let load = LoadRun::wrk(&format!("http://127.0.0.1:{}/", haproxy.port), 10, 8);
    let out = pipe(&test, &["run"], "v2");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(served(haproxy.port), "v2");
    eprintln!("v2: {}", strict(&out));
    // The previous release is kept running: the rollback is a switch, no start.
    let back = pipe(&test, &["deploy", "rollback"], "v2");
    assert_eq!(back.code, 0, "{}{}", back.stdout, back.stderr);
    assert!(back.stdout.contains("rolled-back: v1 in slot blue"), "{}", back.stdout);
    let load = load.finish();
    assert_eq!(served(haproxy.port), "v1");
    assert_eq!(load.failures(), 0, "wrk (strict: no retries) saw failures:\n{}", load.raw);
    eprintln!("wrk: {} requests, 0 failed (strict)", load.requests);

    let _ = pipe(&test, &["deploy", "stop"], "v1");
    assert!(pipeline_containers().is_empty(), "stop removes the instances");
}

#[test]
fn a_new_version_that_fails_its_health_check_never_gets_traffic() {
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let test = repo(&command_instance(), &nginx.traffic(), blue, green, "");
    assert_eq!(pipe(&test, &["run"], "v1").code, 0);
    let load = LoadRun::hey(&format!("http://127.0.0.1:{}/", nginx.port), 200, 3);
    let sick = test.pipe(&["run"], &[("V", "v2"), ("HEALTH", "fail"), ("DELAY", "0")]);
    assert_eq!(sick.code, 1, "{}", sick.stdout);
    let why = sick.step("release.web")["reason"].as_str().unwrap_or("").to_string();
    assert!(why.contains("health failed") && why.contains("traffic never moved"), "{why}");
    assert!(why.contains("status 500"), "the reason says what the check saw: {why}");
    assert_eq!(served(nginx.port), "v1");
    let load = load.finish();
    assert_eq!(load.failures(), 0, "{}", load.raw);
}

#[test]
fn a_failure_after_the_switch_rolls_back_with_no_failed_request() {
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    // The proxy must serve `${env.EXPECT}`: v2 answers `v2`, so its verify fails after the switch.
    let verify = format!(
        r#"verify url="http://127.0.0.1:{}/version" body-contains="${{env.EXPECT}}" times=3 timeout="2s""#,
        nginx.port
    );
    let probe = format!(r#"probe url="http://127.0.0.1:{}/" rate=100"#, nginx.port);
    let test = repo(&command_instance(), &nginx.traffic(), blue, green, &format!("{verify}\n{probe}"));
    let first = pipe(&test, &["run"], "v1");
    assert_eq!(first.code, 0, "{}", first.stdout);
    let load = LoadRun::hey(&format!("http://127.0.0.1:{}/", nginx.port), 300, 6);
    let bad = test.pipe(&["run"], &[("V", "v2"), ("EXPECT", "v2-never"), ("HEALTH", "ok"), ("DELAY", "0")]);
    assert_eq!(bad.code, 1, "{}", bad.stdout);
    let why = bad.step("release.web")["reason"].as_str().unwrap_or("").to_string();
    assert!(why.contains("verify failed") && why.contains("rolled back to v1 in slot blue"), "{why}");
    assert_eq!(details(&bad)["outcome"], "rolled-back");
    assert!(bad.stdout.contains("rollback-switch"), "the rollback's phases are reported: {}", bad.stdout);
    assert_eq!(served(nginx.port), "v1");
    let load = load.finish();
    assert_eq!(load.failures(), 0, "{}", load.raw);
    eprintln!("rollback: {}", strict(&bad));
    let status = pipe(&test, &["deploy", "status"], "v1");
    assert!(status.stdout.contains("live        v1 in slot blue"), "{}", status.stdout);
}

/// Starts `pipe run` for `version` and SIGKILLs it once the journal shows `phase`.
fn kill_in_phase(repo: &Repo, version: &str, delay_ms: &str, phase: &str) {
    let dir = repo.path();
    let mut child = repo
        .command()
        .arg("run")
        .envs([("V", version), ("HEALTH", "ok"), ("DELAY", delay_ms), ("EXPECT", version)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pipe");
    let state = dir.join(".pipe/state").join(format!("{}.json", repo.name));
    let wanted = format!(r#"\"phase\":\"{phase}\""#);
    wait_until(&format!("the deploy to reach `{phase}`"), || {
        std::fs::read_to_string(&state).is_ok_and(|s| s.contains(&wanted))
    });
    child.kill().expect("SIGKILL pipe");
    child.wait().expect("reap pipe");
}

#[test]
fn a_killed_deploy_is_reported_then_resumed_or_rolled_back() {
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let verify = format!(r#"verify url="http://127.0.0.1:{}/version" body-contains="${{deploy.version}}""#, nginx.port);
    let test = repo(&command_instance(), &nginx.traffic(), blue, green, &verify);
    assert_eq!(pipe(&test, &["run"], "v1").code, 0);

    // Killed while checking a slow-starting v2: the journal says so, a new
    // deploy is refused, and `resume` finishes the job.
    kill_in_phase(&test, "v2", "1500", "health");
    let status = pipe(&test, &["deploy", "status"], "v2");
    assert!(
        status.stdout.contains("in progress a deploy of v2 into slot green, stopped in phase `health`"),
        "{}",
        status.stdout
    );
    let refused = pipe(&test, &["run"], "v9");
    assert_eq!(refused.code, 1);
    let why = refused.step("release.web")["reason"].as_str().unwrap_or("").to_string();
    assert!(why.contains("stopped in phase `health`"), "{why}");
    assert!(why.contains("`pipe deploy resume`") && why.contains("`pipe deploy rollback`"), "what to do: {why}");
    let resumed = pipe(&test, &["deploy", "resume"], "v2");
    assert_eq!(resumed.code, 0, "{}{}", resumed.stdout, resumed.stderr);
    assert_eq!(served(nginx.port), "v2");

    // Killed after the switch, while verifying v3: `rollback` puts v2 back.
    kill_in_phase(&test, "v3", "0", "drain");
    let back = pipe(&test, &["deploy", "rollback"], "v3");
    assert_eq!(back.code, 0, "{}{}", back.stdout, back.stderr);
    assert_eq!(served(nginx.port), "v2");
    let status = pipe(&test, &["deploy", "status"], "v2");
    assert!(
        status.stdout.contains("live        v2 in slot green") && status.stdout.contains("in progress nothing"),
        "{}",
        status.stdout
    );
}

#[test]
fn an_instance_that_dies_at_start_is_reported_with_its_last_lines() {
    let image = shop_image();
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let instance = format!(
        r#"instance "docker" image="{}" pull="never" port=8080 {{ env {{ VERSION "${{deploy.version}}"; BIND "0.0.0.0"; CRASH "1" }} }}"#,
        image.tag
    );
    let test = repo(&instance, &nginx.traffic(), blue, green, "");
    let out = pipe(&test, &["run"], "v1");
    assert_eq!(out.code, 1, "{}", out.stdout);
    let why = out.step("release.web")["reason"].as_str().unwrap_or("").to_string();
    assert!(why.contains("died: exited"), "{why}");
    assert!(why.contains("crashing at start, as CRASH=1 asks"), "its last lines: {why}");
    assert!(containers_with("pipe.deploy", &test.label()).is_empty(), "the dead instance was removed");
}

#[test]
fn two_deploys_of_one_target_never_overlap() {
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let test = repo(&command_instance(), &nginx.traffic(), blue, green, "");
    assert_eq!(pipe(&test, &["run"], "v1").code, 0);
    let mut slow = test
        .command()
        .arg("run")
        .envs([("V", "v2"), ("HEALTH", "ok"), ("DELAY", "1500")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let state = test.path().join(".pipe/state").join(format!("{}.json", test.name));
    wait_until("the slow deploy to start", || {
        std::fs::read_to_string(&state).is_ok_and(|s| s.contains("\\\"pending\\\":{"))
    });
    let second = pipe(&test, &["deploy", "rollback"], "v2");
    assert_eq!(second.code, 1);
    assert!(second.stderr.contains("another deploy of `web` is running"), "{}", second.stderr);
    assert!(slow.wait().expect("wait").success());
    assert_eq!(served(nginx.port), "v2");
}
