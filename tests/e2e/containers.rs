use std::process::Stdio;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::docker::{Image, containers_with};
use crate::support::{Test, wait_until};

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
    )
}

#[test]
fn container_steps_run_in_the_image_with_workspace_env_secrets_and_outputs() {
    let image = Image::busybox();
    let name = unique("ctr");
    let out = Test::new()
        .pipeline(&format!(
            r#"
pipeline "{name}" {{
    secrets {{ from-env "C_TOKEN" }}
    stage "build" {{
        container image="{tag}" pull="never" {{ memory "256MiB"; cpus 1; network "none" }}
        step "inside" {{
            run "test -x /bin/busybox; pwd; echo token=$TOKEN; echo made-inside > made.txt; echo answer=42 >> $PIPE_OUTPUT; echo oops >&2"
            env {{ TOKEN "${{secrets.C_TOKEN}}" }}
        }}
        step "failing" {{ run "exit 7"; continue-on-error #true }}
    }}
    stage "check" {{
        needs "build"
        step "on-host" {{ run "grep -q made-inside made.txt && test '${{steps.build.inside.outputs.answer}}' = 42" }}
    }}
}}
"#,
            tag = image.tag
        ))
        .env("C_TOKEN", "container-secret-value")
        .args(&["run", "--format", "json"])
        .expect(0);
    assert!(out.stdout.contains(r#""line":"/workspace""#), "{}", out.stdout);
    assert!(out.stdout.contains(r#""line":"token=***""#), "{}", out.stdout);
    assert!(out.stdout.contains(r#""stream":"stderr","line":"oops""#), "{}", out.stdout);
    assert!(!out.stdout.contains("container-secret-value"));
    assert_eq!(out.step("build.failing")["exit_code"], 7);
    assert_eq!(out.status("check.on-host"), "succeeded");
    assert!(containers_with("pipe.pipeline", &name).is_empty(), "no container is left behind");
}

/// A compromised dependency in a container step (root in the container,
/// the workspace mounted) goes for pipe's own files: the secrets file, a
/// forged cache entry and decision in `.pipe/`. It sees neither.
#[test]
fn a_container_step_can_neither_read_secrets_files_nor_write_into_pipe_s_state() {
    let image = Image::busybox();
    let name = unique("ctr-private");
    let test = Test::new()
        .file(".secrets.env", "C_FILE_TOKEN=file-secret-value\n")
        .pipeline(&format!(
            r#"
pipeline "{name}" {{
    secrets {{ from-file ".secrets.env" }}
    container image="{tag}" pull="never"
    stage "s" {{
        step "attack" {{
            run "cat .secrets.env > leaked.txt; ls -a .pipe > seen.txt; mkdir -p .pipe/cache/k .pipe/approvals; echo forged > .pipe/approvals/x.decision; echo planted > .secrets.env; true"
        }}
    }}
}}
"#,
            tag = image.tag
        ));
    let out = test.pipe(&["run", "--format", "json"], &[]);
    assert_eq!(out.status("s.attack"), "succeeded", "{}", out.stdout);
    assert_eq!(out.read("leaked.txt"), "", "the step read the secrets file");
    assert_eq!(out.read("seen.txt").split_whitespace().collect::<Vec<_>>(), [".", ".."], "pipe's state was visible");
    assert!(!out.exists(".pipe/approvals/x.decision") && !out.exists(".pipe/cache/k"), "a file landed in .pipe/");
    assert_eq!(out.read(".secrets.env"), "C_FILE_TOKEN=file-secret-value\n", "the secrets file was written");
    assert!(containers_with("pipe.pipeline", &name).is_empty(), "no container is left behind");
}

#[test]
fn a_timed_out_container_step_is_stopped_and_removed() {
    let image = Image::busybox();
    let name = unique("ctr-timeout");
    let out = Test::new()
        .pipeline(&format!(
            r#"pipeline "{name}" {{ container image="{}" pull="never"; stage "s" {{ step "slow" {{ run "sleep 30"; timeout "1s" }} }} }}"#,
            image.tag
        ))
        .args(&["run"])
        .expect(1);
    assert!(out.step("s.slow")["reason"].as_str().unwrap_or("").contains("timed out after 1s"));
    assert!(containers_with("pipe.pipeline", &name).is_empty());
}

#[test]
fn ctrl_c_stops_and_removes_running_containers() {
    let image = Image::busybox();
    let name = unique("ctr-int");
    let test = Test::new()
        .pipeline(&format!(
            r#"pipeline "{name}" {{ container image="{}" pull="never"; stage "s" {{ step "long" {{ run "sleep 60" }} }} }}"#,
            image.tag
        ))
        .args(&["run"]);
    let mut child = test.command().stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
    wait_until("the container to start", || !containers_with("pipe.pipeline", &name).is_empty());
    kill(Pid::from_raw(i32::try_from(child.id()).expect("pid")), Signal::SIGINT).expect("SIGINT");
    assert_eq!(child.wait().expect("wait").code(), Some(130));
    assert!(containers_with("pipe.pipeline", &name).is_empty());
    let _ = test.into_output();
}

#[test]
fn a_missing_image_with_pull_never_fails_clearly() {
    let out = Test::new()
        .pipeline(r#"pipeline "p" { container image="pipe-test-absent:never" pull="never"; stage "s" { step "x" { run "true" } } }"#)
        .args(&["run"])
        .expect(1);
    let reason = out.step("s.x")["reason"].as_str().unwrap_or("").to_string();
    assert!(reason.contains("image `pipe-test-absent:never` is not present and pull=\"never\""), "{reason}");
    assert!(reason.contains("docker build") && reason.contains("docker load"), "{reason}");
}

/// pipe's identity labels, as a run of this machine, user and PID namespace writes them.
fn identity() -> Vec<(String, String)> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot id");
    let pidns = std::fs::read_link("/proc/self/ns/pid").expect("pid ns");
    vec![
        ("pipe.boot".into(), boot.trim().into()),
        ("pipe.pidns".into(), pidns.display().to_string()),
        ("pipe.uid".into(), nix::unistd::geteuid().to_string()),
    ]
}

#[test]
fn gc_removes_only_what_provably_dead_runs_of_this_machine_left() {
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
    let image = Image::busybox();
    let name = unique("ctr-gc");
    let dead_pid = {
        let mut c = std::process::Command::new("true").spawn().expect("spawn");
        let pid = c.id();
        c.wait().expect("wait");
        pid
    };
    let rt = crate::support::docker::runtime();
    let docker = crate::support::docker::docker(&rt);
    let create = |suffix: &str, extra: Vec<(String, String)>| {
        let mut labels: std::collections::HashMap<String, String> = [
            ("pipe.run".to_string(), "dead-run".to_string()),
            ("pipe.pipeline".into(), name.clone()),
            ("pipe.pid".into(), dead_pid.to_string()),
            ("pipe.case".into(), suffix.to_string()),
        ]
        .into_iter()
        .collect();
        labels.extend(extra);
        let body = ContainerCreateBody {
            image: Some(image.tag.clone()),
            cmd: Some(vec!["sleep".into(), "60".into()]),
            labels: Some(labels),
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(format!("{name}-{suffix}")), ..Default::default() };
        rt.block_on(docker.create_container(Some(options), body)).expect("create");
    };
    create("ours", identity());
    // The same pid in another PID namespace (a CI job sharing the Docker socket) proves nothing.
    let mut elsewhere = identity();
    elsewhere[1].1 = "pid:[1]".into();
    create("elsewhere", elsewhere);
    // Labels from before pipe recorded who it was: not provably dead either.
    create("unknown", Vec::new());
    // A deployment instance outlives its run on purpose.
    let mut deployed = identity();
    deployed.push(("pipe.deploy".into(), "p/orders".into()));
    create("deployed", deployed);
    let out = Test::new().args(&["gc"]).expect(0);
    assert!(out.stdout.contains("removed"), "{}", out.stdout);
    let left: Vec<String> = ["ours", "elsewhere", "unknown", "deployed"]
        .into_iter()
        .filter(|case| !containers_with("pipe.case", case).is_empty())
        .map(String::from)
        .collect();
    for id in containers_with("pipe.pipeline", &name) {
        let options = RemoveContainerOptions { force: true, ..Default::default() };
        let _ = rt.block_on(docker.remove_container(&id, Some(options)));
    }
    assert_eq!(left, ["elsewhere", "unknown", "deployed"]);
}

#[test]
fn image_build_then_a_step_in_the_built_image() {
    let base = Image::busybox();
    let name = unique("ctr-build");
    let built = Image { tag: format!("{name}:1") };
    let extra = Image { tag: format!("{name}:latest") };
    let out = Test::new()
        .file("app/Dockerfile", &format!("FROM {}\nARG GREETING\nCOPY . /ctx\nRUN echo \"$GREETING\" > /greeting\n", base.tag))
        .file("app/hello.txt", "hello\n")
        .file("app/secret.txt", "do not ship\n")
        .file("app/.dockerignore", "secret.txt\n")
        .pipeline(&format!(
            r#"
pipeline "{name}" {{
    stage "image" {{
        step "build" {{
            image-build context="app" tag="{tag}" {{ arg "GREETING" "built by pipe"; label "team" "orders"; tag "{extra}" }}
        }}
    }}
    stage "use" {{
        needs "image"
        container image="${{steps.image.build.outputs.tag}}" pull="never"
        step "inside" {{ run "cat /greeting; test -f /ctx/hello.txt; test ! -e /ctx/secret.txt" }}
    }}
}}
"#,
            tag = built.tag,
            extra = extra.tag
        ))
        .args(&["run"])
        .expect(0);
    assert!(out.stdout.contains("use.inside │ built by pipe"), "{}", out.stdout);
    assert!(out.step("image.build")["outputs"]["image-id"].as_str().unwrap_or("").starts_with("sha256:"));
    assert!(containers_with("pipe.pipeline", &name).is_empty());
}

/// A service `web` in busybox answering `pong` on http://web:8080/ping.
fn web_service(tag: &str) -> String {
    format!(
        r#"service "web" image="{tag}" pull="never" {{
        cmd "mkdir -p /www && echo pong > /www/ping && httpd -f -p 8080 -h /www"
        health-cmd "wget -q -O- http://127.0.0.1:8080/ping" timeout="20s"
        port 8080
    }}"#
    )
}

#[test]
fn a_service_is_reachable_by_name_and_removed_after_the_run() {
    let image = Image::busybox();
    let name = unique("ctr-svc");
    let out = Test::new()
        .pipeline(&format!(
            r#"
pipeline "{name}" {{
    {web}
    stage "s" {{
        container image="{tag}" pull="never"
        step "call" {{ run "wget -q -O- http://web:8080/ping" }}
    }}
}}
"#,
            tag = image.tag,
            web = web_service(&image.tag)
        ))
        .args(&["run"])
        .expect(0);
    assert!(out.stdout.contains("s.call │ pong"), "{}", out.stdout);
    assert!(containers_with("pipe.pipeline", &name).is_empty());
    assert!(crate::support::docker::networks_with("pipe.pipeline", &name).is_empty());
}

#[test]
fn an_unhealthy_service_stops_the_run_before_any_step() {
    let image = Image::busybox();
    let name = unique("ctr-sick");
    let out = Test::new()
        .pipeline(&format!(
            r#"
pipeline "{name}" {{
    service "db" image="{tag}" pull="never" {{ cmd "sleep 60"; health-cmd "false" timeout="1s" }}
    stage "s" {{ step "never" {{ run "touch ran" }} }}
}}
"#,
            tag = image.tag
        ))
        .args(&["run"])
        .expect(1);
    assert!(out.stderr.contains("service `db` was not healthy after 1s"), "{}", out.stderr);
    assert!(!out.exists("ran"));
    assert!(containers_with("pipe.pipeline", &name).is_empty());
    assert!(crate::support::docker::networks_with("pipe.pipeline", &name).is_empty());
}

#[test]
fn the_same_steps_run_as_swarm_jobs() {
    let image = Image::busybox();
    let swarm = crate::support::docker::Swarm::ensure();
    let name = unique("ctr-swarm");
    let out = Test::new()
        .pipeline(&format!(
            r#"
pipeline "{name}" {{
    executor "swarm" {{ constraint "node.role==manager" }}
    container image="{tag}" pull="never"
    stage "s" {{
        step "job" {{ run "echo hello from a swarm job; echo done > swarm.txt; echo where=swarm >> $PIPE_OUTPUT" }}
        step "failing" {{ run "exit 3"; continue-on-error #true }}
    }}
}}
"#,
            tag = image.tag
        ))
        .args(&["run"])
        .expect(0);
    assert!(out.stdout.contains("s.job │ hello from a swarm job"), "{}", out.stdout);
    assert_eq!(out.read("swarm.txt").trim(), "done");
    assert_eq!(out.step("s.job")["outputs"]["where"], "swarm");
    assert_eq!(out.step("s.failing")["exit_code"], 3);
    assert!(crate::support::docker::services_with("pipe.pipeline", &name).is_empty());
    drop(swarm);
}

#[test]
fn an_unreachable_docker_engine_is_one_clear_error_before_any_step() {
    let out = Test::new()
        .pipeline(r#"pipeline "p" { stage "a" { step "local" { run "touch ran" } }; stage "b" { container image="x"; step "c" { run "true" } } }"#)
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .args(&["run"])
        .expect(1);
    assert!(out.stderr.contains("cannot reach the Docker Engine at unix:///nonexistent/docker.sock"), "{}", out.stderr);
    assert!(out.stderr.contains("start the Docker Engine, or point DOCKER_HOST at one"), "{}", out.stderr);
    assert!(!out.exists("ran"), "no step started");
}

/// A container step of a pipeline with services joins the run's own network,
/// named after the run: with that name in the cache key it never hit.
#[test]
fn a_container_step_beside_a_service_hits_the_cache_on_the_next_run() {
    let image = Image::busybox();
    let name = unique("ctr-svc-cache");
    let test = Test::new().file("src/a.txt", "a").pipeline(&format!(
        r#"
pipeline "{name}" {{
    {web}
    stage "s" {{
        container image="{tag}" pull="never"
        step "call" {{
            run "wget -q -O out.txt http://web:8080/ping"
            cache {{ inputs "src/**"; outputs "out.txt" }}
        }}
    }}
}}
"#,
        tag = image.tag,
        web = web_service(&image.tag)
    ));
    let first = test.pipe(&["run", "--format", "json"], &[]);
    assert_eq!(first.status("s.call"), "succeeded", "{}{}", first.stdout, first.stderr);
    let second = test.pipe(&["run", "--format", "json"], &[]);
    assert_eq!(second.step("s.call")["details"]["cache"]["hit"], true, "{}", second.stdout);
    assert_eq!(second.read("out.txt").trim(), "pong");
    assert!(containers_with("pipe.pipeline", &name).is_empty(), "no container is left behind");
}
