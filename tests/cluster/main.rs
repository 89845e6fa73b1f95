//! Pipelines on a real multi-node swarm: the machine's engine as the manager,
//! two worker engines that cannot see the checkout, and a local registry.
//! The cluster comes up once (on the first test that needs it) and is torn
//! down after the last, whatever the tests did.

#[path = "../support/mod.rs"]
mod support;

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

mod ship_trust;

use std::sync::{Arc, Mutex, OnceLock};

use libtest_mimic::{Arguments, Failed, Trial};
use support::cluster::Cluster;
use support::docker::{Image, services_with};
use support::{Test, wait_until};

struct Fixture {
    cluster: Mutex<Cluster>,
    /// The busybox test image as every node pulls it.
    image: String,
    registry: String,
    _local: Image,
}

impl Fixture {
    fn start() -> Fixture {
        let cluster = Cluster::start(2);
        let local = Image::busybox();
        let image = cluster.push(&local.tag);
        Fixture { registry: cluster.registry.clone(), image, cluster: Mutex::new(cluster), _local: local }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker").args(["rmi", "-f", &self.image]).output();
    }
}

type Shared = Arc<OnceLock<Fixture>>;
type ClusterTest = fn(&Fixture) -> Result<(), Failed>;

fn main() {
    let mut args = Arguments::from_args();
    // One cluster on two cores: the tests take turns, the fault test last.
    args.test_threads.get_or_insert(1);
    let shared: Shared = Arc::new(OnceLock::new());
    let tests: [(&str, ClusterTest); 11] = [
        ("an_unreachable_registry_is_one_error_before_any_step", unreachable_registry),
        ("a_worker_sees_no_workspace_unless_pipe_ships_it", unshipped_workspace_is_absent),
        ("the_workspace_is_shipped_to_workers_and_changes_come_back", shipped_workspace),
        ("git_and_pipe_files_never_come_back_from_a_worker", ship_trust::git_and_pipe_files_never_come_back),
        ("a_forged_file_back_is_ignored", ship_trust::a_forged_file_back_is_ignored),
        (
            "more_than_the_return_bound_fails_and_writes_nothing",
            ship_trust::more_than_the_bound_fails_and_writes_nothing,
        ),
        ("the_shipped_image_holds_no_git_nor_secrets", ship_trust::shipped_image_holds_no_git_nor_secrets),
        ("a_built_image_is_pushed_and_run_by_digest_on_a_worker", built_image_by_digest),
        ("sidecars_are_swarm_services_reachable_by_name_from_every_node", sidecars_on_the_swarm),
        ("ctrl_c_during_a_shipped_step_removes_its_service_and_image", cancelled_shipped_step),
        ("a_worker_that_disappears_fails_its_step_and_leaves_nothing", worker_disappears),
    ];
    let trials = tests
        .into_iter()
        .map(|(name, test)| {
            let shared = shared.clone();
            Trial::test(name, move || test(shared.get_or_init(Fixture::start)))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // The trials are gone; this is the last handle: the cluster goes down here.
    drop(shared);
    conclusion.exit();
}

fn unreachable_registry(f: &Fixture) -> Result<(), Failed> {
    let out = Test::new()
        .pipeline(&format!(
            r#"
pipeline "reg" {{
    executor "swarm" {{ registry "127.0.0.1:1" }}
    container image="{image}"
    stage "s" {{ step "never" {{ run "touch ran" }} }}
}}
"#,
            image = f.image
        ))
        .args(&["run"])
        .run();
    check!(out.code != 0, "the run succeeded");
    check!(out.stderr.contains("cannot reach the registry 127.0.0.1:1"), "no clear error:\n{}", out.stderr);
    check!(!out.exists("ran"), "a step ran");
    Ok(())
}

fn unshipped_workspace_is_absent(f: &Fixture) -> Result<(), Failed> {
    let out = Test::new()
        .pipeline(&format!(
            r#"
pipeline "bind" {{
    executor "swarm" {{ constraint "node.hostname==pipe-node1" }}
    container image="{image}"
    stage "s" {{ step "look" {{ run "cat pipe.kdl" }} }}
}}
"#,
            image = f.image
        ))
        .args(&["run"])
        .run();
    check!(out.code == 1, "exit {}:\n{}\n{}", out.code, out.stdout, out.stderr);
    let all = format!("{}{}", out.stdout, out.stderr);
    check!(all.contains("bind source path does not exist"), "the worker saw the checkout:\n{all}");
    Ok(())
}

fn shipped_workspace(f: &Fixture) -> Result<(), Failed> {
    let out = Test::new()
        .file("input.txt", "from-the-checkout\n")
        .pipeline(&format!(
            r#"
pipeline "ship" {{
    container image="{image}"
    stage "one" {{
        executor "swarm" {{ constraint "node.hostname==pipe-node1"; registry "{registry}" }}
        step "make" {{
            run "cat input.txt && mkdir -p dist && printf 'echo built-on-one\n' > dist/app && chmod +x dist/app && echo version=7 >> $PIPE_OUTPUT"
        }}
    }}
    stage "two" {{
        needs "one"
        executor "swarm" {{ constraint "node.hostname==pipe-node2"; registry "{registry}" }}
        step "use" {{ run "sh dist/app && test -x dist/app && echo v=${{steps.one.make.outputs.version}} > seen.txt" }}
    }}
    stage "here" {{
        needs "two"
        step "read" {{ run "cat seen.txt dist/app" }}
    }}
}}
"#,
            image = f.image,
            registry = f.registry
        ))
        .args(&["run"])
        .run();
    check!(out.code == 0, "exit {}:\n{}\n{}", out.code, out.stdout, out.stderr);
    check!(out.stdout.contains("from-the-checkout"), "the input did not reach node 1:\n{}", out.stdout);
    check!(out.stdout.contains("built-on-one"), "node 2 did not get node 1's file:\n{}", out.stdout);
    check!(out.read("seen.txt") == "v=7\n", "outputs did not come back: {:?}", out.read("seen.txt"));
    check!(!out.stdout.contains("::pipe-ship"), "the shipping lines leaked into the log:\n{}", out.stdout);
    check!(services_with("pipe.pipeline", "ship").is_empty(), "services left behind");
    Ok(())
}

fn built_image_by_digest(f: &Fixture) -> Result<(), Failed> {
    let test = Test::new().file("app/Dockerfile", &format!("FROM {}\nRUN echo v2 > /version\n", f.image));
    let out = test
        .pipeline(&format!(
            r#"
pipeline "digest" {{
    executor "swarm" {{ registry "{registry}" }}
    stage "build" {{
        step "image" {{ image-build context="app" tag="{registry}/pipe-test-app:1" }}
    }}
    stage "use" {{
        needs "build"
        executor "swarm" {{ constraint "node.hostname==pipe-node2"; registry "{registry}" }}
        container image="${{steps.build.image.outputs.image}}" pull="never"
        step "run" {{ run "cat /version" }}
    }}
}}
"#,
            registry = f.registry
        ))
        .args(&["run"])
        .run();
    let _ =
        std::process::Command::new("docker").args(["rmi", "-f", &format!("{}/pipe-test-app:1", f.registry)]).output();
    check!(out.code == 0, "exit {}:\n{}\n{}", out.code, out.stdout, out.stderr);
    check!(out.stdout.contains(&format!("{}/pipe-test-app@sha256:", f.registry)), "not by digest:\n{}", out.stdout);
    check!(out.stdout.contains("v2"), "the worker did not run the built image:\n{}", out.stdout);
    Ok(())
}

fn sidecars_on_the_swarm(f: &Fixture) -> Result<(), Failed> {
    let name = format!("sidecars-{}", std::process::id());
    let out = Test::new()
        .pipeline(&format!(
            r#"
pipeline "{name}" {{
    executor "swarm" {{ registry "{registry}" }}
    container image="{image}"
    service "web" image="{image}" {{
        cmd "mkdir -p /www && echo pong > /www/ping && httpd -f -p 8080 -h /www"
        health-cmd "wget -q -O- http://127.0.0.1:8080/ping" timeout="60s"
    }}
    stage "one" {{
        executor "swarm" {{ constraint "node.hostname==pipe-node1"; registry "{registry}" }}
        step "call" {{ run "echo node1 got $(wget -q -O- http://web:8080/ping)" }}
    }}
    stage "two" {{
        executor "swarm" {{ constraint "node.hostname==pipe-node2"; registry "{registry}" }}
        step "call" {{ run "echo node2 got $(wget -q -O- http://web:8080/ping)" }}
    }}
}}
"#,
            image = f.image,
            registry = f.registry
        ))
        .args(&["run"])
        .run();
    check!(out.code == 0, "exit {}:\n{}\n{}", out.code, out.stdout, out.stderr);
    check!(out.stdout.contains("node1 got pong") && out.stdout.contains("node2 got pong"), "{}", out.stdout);
    check!(services_with("pipe.pipeline", &name).is_empty(), "services left behind");
    let left = support::docker::networks_with("pipe.pipeline", &name);
    check!(left.is_empty(), "the overlay network was left behind: {left:?}\n{}", out.stderr);
    Ok(())
}

fn cancelled_shipped_step(f: &Fixture) -> Result<(), Failed> {
    let name = format!("cancel-{}", std::process::id());
    let test = Test::new().pipeline(&format!(
        r#"
pipeline "{name}" {{
    executor "swarm" {{ constraint "node.hostname==pipe-node1"; registry "{registry}" }}
    container image="{image}"
    stage "s" {{ step "long" {{ run "sleep 300"; timeout "150s" }} }}
}}
"#,
        image = f.image,
        registry = f.registry
    ));
    let quiet = || std::process::Stdio::null();
    let mut child = test.command().arg("run").stdout(quiet()).stderr(quiet()).spawn()?;
    wait_until("the step's service", || !services_with("pipe.pipeline", &name).is_empty());
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT)?;
    let status = child.wait()?;
    check!(status.code() == Some(130), "exit {:?}", status.code());
    check!(services_with("pipe.pipeline", &name).is_empty(), "the step's service was left behind");
    let images = std::process::Command::new("docker").args(["images", "-q", "*/pipe-workspace"]).output()?;
    check!(images.stdout.is_empty(), "the shipped image was left behind");
    Ok(())
}

fn worker_disappears(f: &Fixture) -> Result<(), Failed> {
    let test = Test::new().pipeline(&format!(
        r#"
pipeline "lost" {{
    executor "swarm" {{ constraint "node.hostname==pipe-node2"; registry "{registry}" }}
    container image="{image}"
    stage "s" {{ step "long" {{ run "echo started; sleep 300"; timeout "150s" }} }}
}}
"#,
        image = f.image,
        registry = f.registry
    ));
    let child = test.command().arg("run").stdout(std::process::Stdio::piped()).spawn()?;
    // Killed if the test fails before pipe ends on its own.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Guard(child);
    let mut stdout = child.0.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stdout, &mut text);
        text
    });
    let node2 = {
        let cluster = f.cluster.lock().unwrap_or_else(|e| e.into_inner());
        cluster.workers[1].socket()
    };
    wait_until("the step runs on node 2", || {
        let ps = std::process::Command::new("docker").args(["-H", &node2, "ps", "-q"]).output();
        ps.is_ok_and(|o| !o.stdout.is_empty())
    });
    f.cluster.lock().unwrap_or_else(|e| e.into_inner()).workers[1].kill();
    let killed = std::time::Instant::now();
    let status = child.0.wait()?;
    eprintln!("the step failed {:.1}s after its node was killed", killed.elapsed().as_secs_f64());
    let stdout = reader.join().unwrap_or_default();
    check!(status.code() == Some(1), "exit {:?}:\n{stdout}", status.code());
    check!(stdout.contains("swarm node pipe-node2 went down"), "no clear reason:\n{stdout}");
    check!(services_with("pipe.pipeline", "lost").is_empty(), "services left behind");
    Ok(())
}
