//! What a deployment reads back and must not believe: process-group ids in
//! the journal (a hand edit, a stale id, a journal of an older pipe), a
//! container of the same name made by someone else, a journal that says the
//! new slot is ready when its process is gone, and a probe verdict in the
//! middle of a rollback. Each test plays the one who wrote the lie.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::support::deploy::{Repo, blue_green, shop_app};
use crate::support::servers::{Nginx, free_port, get};
use crate::support::{Output, Test};

fn repo(traffic: &str, blue: u16, green: u16, extra: &str) -> Repo {
    let name = format!("trust{blue}");
    let instance = format!(
        r#"instance "command" start="exec {}" {{ env {{ VERSION "${{deploy.version}}"; HEALTH "${{env.HEALTH}}"; START_DELAY_MS "${{env.DELAY}}"; ERROR_PERCENT "${{env.ERRORS}}"; EXIT_AFTER_MS "${{env.DIE}}" }} }}"#,
        shop_app().display()
    );
    blue_green(name, &instance, traffic, (blue, green), extra)
}

fn pipe(repo: &Repo, args: &[&str], version: &str) -> Output {
    repo.pipe(
        args,
        &[("V", version), ("HEALTH", "ok"), ("DELAY", "0"), ("EXPECT", version), ("ERRORS", "0"), ("DIE", "0")],
    )
}

/// nginx in front of slot blue, and the deployment live at v1 in it. Fields
/// drop in order: nginx stops, the deployment is stopped, nginx's files go.
struct Live {
    nginx: Nginx,
    test: Repo,
    blue: u16,
    green: u16,
    _prefix: tempfile::TempDir,
}

fn live_v1() -> Live {
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let test = repo(&nginx.traffic(), blue, green, "");
    let first = pipe(&test, &["run"], "v1");
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);
    Live { nginx, test, blue, green, _prefix: prefix }
}

/// nginx in front of slot blue, and a deployment `web` of `instance` behind
/// it, `top` written at the pipeline's level; nothing deployed yet.
fn behind_nginx(top: &str, instance: &str) -> Live {
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let name = format!("trust{blue}");
    let pipeline = format!(
        r#"
pipeline "{name}" {{
    {top}
    stage "release" {{
        deploy "web" strategy="blue-green" version="${{env.V}}" {{
            {instance}
            slots {{ slot "blue" port={blue}; slot "green" port={green} }}
            health "http-check" path="/health" attempts=30 interval="100ms"
            {traffic}
        }}
    }}
}}
"#,
        traffic = nginx.traffic()
    );
    let test = Repo::new(Test::new().pipeline(&pipeline), name, "web");
    Live { nginx, test, blue, green, _prefix: prefix }
}

/// After a failed v2: nginx serves v1, the journal says v1 is live and nothing is pending.
#[track_caller]
fn back_on_v1(nginx: &Nginx, repo: &Repo, all: &str) {
    assert_eq!(get(nginx.port, "/").map(|v| v.trim().to_string()), Ok("shop v1".to_string()), "{all}");
    let j = journal(repo);
    assert!(j["pending"].is_null(), "nothing is left pending: {}", j["pending"]);
    assert_eq!(j["live"]["version"], "v1", "{all}");
}

/// The deployment's journal, as pipe wrote it.
fn journal(repo: &Repo) -> Value {
    let state: Value = serde_json::from_slice(&std::fs::read(repo.state_file()).expect("state")).expect("state json");
    serde_json::from_str(state["deploy.web/journal"].as_str().expect("journal")).expect("journal json")
}

/// Writes the journal back, as someone editing `.pipe/state` by hand would.
fn write_journal(repo: &Repo, journal: &Value) {
    let path = repo.state_file();
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).expect("state")).expect("state json");
    state["deploy.web/journal"] = Value::String(journal.to_string());
    std::fs::write(&path, serde_json::to_vec_pretty(&state).expect("json")).expect("write state");
}

/// An unrelated process group (`setsid sleep 60`), as another user's job would be.
struct Bystander(Child);

impl Bystander {
    fn start() -> Bystander {
        let child =
            Command::new("sleep").arg("60").process_group(0).stdout(Stdio::null()).spawn().expect("start sleep");
        Bystander(child)
    }

    fn id(&self) -> i64 {
        i64::from(self.0.id())
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn deploy_stop_signals_only_the_process_groups_pipe_started() {
    let Live { nginx: _nginx, test, blue, green: _, _prefix } = live_v1();
    let real = journal(&test)["groups"]["blue"].clone();
    assert!(real["start"].is_u64() && real["boot"].is_string(), "the group is recorded with its identity: {real}");

    let mut bystander = Bystander::start();
    let lies = [
        // `kill(-1)`: every process the user may signal.
        (
            json!({"id": 1, "boot": real["boot"], "pidns": real["pidns"], "start": 0}),
            "process group 1 is not one pipe starts",
        ),
        // A live group of someone else, with the identity of pipe's own leader.
        (
            json!({"id": bystander.id(), "boot": real["boot"], "pidns": real["pidns"], "start": real["start"]}),
            "is not the one pipe started (its leader started at",
        ),
        // A journal of an older pipe: a bare id.
        (json!(bystander.id()), "recorded without an identity"),
        // Stale: recorded before a reboot.
        (
            json!({"id": bystander.id(), "boot": "00000000-0000-0000-0000-000000000000", "pidns": real["pidns"], "start": real["start"]}),
            "started on another boot",
        ),
    ];
    for (group, said) in lies {
        let mut j = journal(&test);
        j["groups"] = json!({ "blue": group });
        write_journal(&test, &j);
        let out = pipe(&test, &["deploy", "stop"], "v1");
        let all = format!("{}{}", out.stdout, out.stderr);
        assert_ne!(out.code, 0, "a group that is not pipe's is reported as not stopped: {all}");
        assert!(all.contains(said), "pipe says why it signalled nothing ({said}): {all}");
        assert!(all.contains("not signalled"), "{all}");
        assert!(bystander.alive(), "the unrelated process group was signalled: {all}");
    }
    assert_eq!(get(blue, "/version").map(|v| v.trim().to_string()).ok().as_deref(), Some("v1"), "v1 was not signalled");

    // The group pipe started, with its identity, is stopped.
    let mut j = journal(&test);
    j["groups"] = json!({ "blue": real });
    write_journal(&test, &j);
    let out = pipe(&test, &["deploy", "stop"], "v1");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(get(blue, "/version").is_err(), "pipe's own instance was stopped");
    assert!(bystander.alive());
}

/// A container someone else made, named like a slot of the deployment and
/// even carrying its `pipe.deploy` label (another checkout of the same
/// repository): removed by label when dropped.
struct Foreign {
    label: String,
}

impl Foreign {
    fn start(image: &str, name: &str, deploy_label: &str) -> Foreign {
        Foreign::labelled(image, name, &[("pipe.deploy", deploy_label)])
    }

    fn labelled(image: &str, name: &str, owner: &[(&str, &str)]) -> Foreign {
        use bollard::models::ContainerCreateBody;
        use bollard::query_parameters::CreateContainerOptions;
        let label = format!("foreign-{}-{name}", std::process::id());
        let rt = crate::support::docker::runtime();
        let docker = crate::support::docker::docker(&rt);
        let labels = owner
            .iter()
            .copied()
            .chain([("pipe.test-foreign", label.as_str())])
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec!["sleep".into(), "60".into()]),
            labels: Some(labels),
            ..Default::default()
        };
        rt.block_on(async {
            let options = CreateContainerOptions { name: Some(name.to_string()), ..Default::default() };
            docker.create_container(Some(options), body).await.expect("create the foreign container");
            docker.start_container(name, None).await.expect("start the foreign container");
        });
        Foreign { label }
    }

    fn running(&self) -> bool {
        let rt = crate::support::docker::runtime();
        let docker = crate::support::docker::docker(&rt);
        crate::support::docker::containers_with("pipe.test-foreign", &self.label).iter().any(|id| {
            rt.block_on(docker.inspect_container(id, None))
                .ok()
                .and_then(|c| c.state)
                .and_then(|s| s.running)
                .unwrap_or(false)
        })
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let rt = crate::support::docker::runtime();
        let docker = crate::support::docker::docker(&rt);
        for id in crate::support::docker::containers_with("pipe.test-foreign", &self.label) {
            let options = bollard::query_parameters::RemoveContainerOptions { force: true, ..Default::default() };
            let _ = rt.block_on(docker.remove_container(&id, Some(options)));
        }
    }
}

#[test]
fn a_deploy_leaves_a_container_it_did_not_make_untouched() {
    let image = crate::support::docker::Image::busybox();
    let instance = format!(
        r#"instance "docker" image="{}" pull="never" port=8080 cmd="mkdir -p /tmp/w && echo ok > /tmp/w/health && exec httpd -f -p 8080 -h /tmp/w""#,
        image.tag
    );
    let Live { nginx: _nginx, test, blue: _, green: _, _prefix } = behind_nginx("", &instance);
    let name = test.name.clone();
    // Container names carry the checkout: only a deliberate stranger takes this one.
    let container = format!("{name}-web-blue-{}", &pipe::deploy::checkout_id(test.path())[..8]);
    let foreign = Foreign::start(&image.tag, &container, &test.label());
    // Another checkout's container under the name an older pipe used: never touched.
    let elsewhere = Foreign::start(&image.tag, &format!("{name}-web-green"), "another/checkout");
    let out = pipe(&test, &["run"], "v1");
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let why = out.step("release.web")["reason"].as_str().unwrap_or("").to_string();
    assert!(why.contains(&format!("container {container} exists and was not made by this deployment")), "{why}");
    assert!(why.contains("pipe.checkout=(none)") && why.contains("left untouched"), "it says who owns it: {why}");
    assert!(foreign.running(), "the foreign container was removed or stopped: {why}");
    let stop = pipe(&test, &["deploy", "stop"], "v1");
    assert!(foreign.running(), "`pipe deploy stop` removed the foreign container: {}{}", stop.stdout, stop.stderr);

    // Once it is gone, the deployment makes its own, and stops it; the container an
    // older pipe made for this slot (its old name, this deployment's labels) goes.
    drop(foreign);
    let checkout = pipe::deploy::checkout_id(test.path());
    let uid = nix::unistd::geteuid().to_string();
    let owner = [("pipe.deploy", test.label()), ("pipe.checkout", checkout), ("pipe.uid", uid)];
    let owner: Vec<(&str, &str)> = owner.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let older = Foreign::labelled(&image.tag, &format!("{name}-web-blue"), &owner);
    let out = pipe(&test, &["run"], "v1");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(!older.running(), "the slot's container under its old name was left running");
    let stop = pipe(&test, &["deploy", "stop"], "v1");
    assert_eq!(stop.code, 0, "{}{}", stop.stdout, stop.stderr);
    assert!(crate::support::docker::containers_with("pipe.deploy", &test.label()).is_empty());
    assert!(elsewhere.running(), "a container under the old name that this deployment did not make was removed");
}

/// Starts `pipe run` for `version` and SIGKILLs it once the journal shows `phase`.
fn kill_in_phase(repo: &Repo, version: &str, delay_ms: &str, phase: &str) {
    let mut child = repo
        .command()
        .arg("run")
        .envs([
            ("V", version),
            ("HEALTH", "ok"),
            ("DELAY", delay_ms),
            ("EXPECT", version),
            ("ERRORS", "0"),
            ("DIE", "0"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pipe");
    let wanted = format!(r#"\"phase\":\"{phase}\""#);
    crate::support::wait_until(&format!("the deploy to reach `{phase}`"), || {
        std::fs::read_to_string(repo.state_file()).is_ok_and(|s| s.contains(&wanted))
    });
    child.kill().expect("SIGKILL pipe");
    child.wait().expect("reap pipe");
}

#[test]
fn resume_at_the_switch_never_routes_to_a_dead_slot() {
    let Live { nginx, test, blue: _, green, _prefix } = live_v1();

    // pipe and the new instance die (a reboot, an OOM kill): the journal says
    // `switch`, the process behind slot green is gone.
    kill_in_phase(&test, "v2", "1500", "health");
    let mut j = journal(&test);
    j["pending"]["phase"] = json!("switch");
    write_journal(&test, &j);
    let green_group = j["groups"]["green"]["id"].as_i64().expect("green's group") as i32;
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(green_group), nix::sys::signal::Signal::SIGKILL);
    crate::support::wait_until("v2 to be gone", || get(green, "/version").is_err());

    let out = pipe(&test, &["deploy", "resume"], "v2");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "a resume onto a dead slot is not a success: {all}");
    assert!(!all.contains("v2 is live"), "{all}");
    assert_eq!(get(nginx.port, "/version").map(|v| v.trim().to_string()), Ok("v1".to_string()), "{all}");
    assert!(journal(&test)["pending"].is_null(), "nothing is left pending: {all}");
}

#[test]
fn a_probe_verdict_never_stops_a_rollback() {
    let (blue, green) = (free_port(), free_port());
    let prefix = tempfile::tempdir().expect("prefix");
    let nginx = Nginx::start(prefix.path(), &format!("127.0.0.1:{blue}"));
    let extra = format!(
        r#"verify url="http://127.0.0.1:{0}/" times=3 timeout="60s"
           probe url="http://127.0.0.1:{0}/" rate=100 max-failures=0"#,
        nginx.port
    );
    let test = repo(&nginx.traffic(), blue, green, &extra);
    let first = pipe(&test, &["run"], "v1");
    assert_eq!(first.code, 0, "{}{}", first.stdout, first.stderr);

    // v2 answers 500 on `/`: verify fails, the probe counts failures after the switch.
    let bad = test.pipe(&["run"], &[("V", "v2"), ("HEALTH", "ok"), ("DELAY", "0"), ("ERRORS", "100"), ("DIE", "0")]);
    let all = format!("{}{}", bad.stdout, bad.stderr);
    assert_eq!(bad.code, 1, "{all}");
    let why = bad.step("release.web")["reason"].as_str().unwrap_or("").to_string();
    assert!(why.contains("rolled back to v1 in slot blue"), "the rollback was completed: {why}\n{all}");
    assert!(why.contains("the probe saw"), "and the probe's verdict is reported with it: {why}");
    // Verify waits up to 60 s for good answers, but the probe's failures end it:
    // a failing version does not keep the traffic for the whole timeout.
    // (Verify may also pass on old v1 answers still in flight; the probe then ends the drain.)
    assert!(why.contains("failed: the probe saw"), "the probe's verdict ended it: {why}");
    assert!(!why.contains("did not answer as expected"), "verify ran to its timeout: {why}");
    back_on_v1(&nginx, &test, &all);
}

/// A v2 that exits 1.5 s after it started: healthy, switched to, verified,
/// then dead while the old slot drains. It must not be declared live: the old
/// slot, still running, gets the traffic back.
#[test]
fn an_instance_that_dies_after_the_switch_is_not_declared_live() {
    let Live { nginx, test, blue, green: _, _prefix } = live_v1();

    // An idle connection to v1 holds the drain open (up to its 5 s): v2 dies in it.
    let _held = std::net::TcpStream::connect(("127.0.0.1", blue)).expect("connect to v1");
    let bad = test.pipe(&["run"], &[("V", "v2"), ("HEALTH", "ok"), ("DELAY", "0"), ("ERRORS", "0"), ("DIE", "1500")]);
    let all = format!("{}{}", bad.stdout, bad.stderr);
    assert_eq!(bad.code, 1, "a dead release is not a success: {all}");
    assert!(!all.contains("v2 is live"), "{all}");
    let why = bad.step("release.web")["reason"].as_str().unwrap_or("").to_string();
    assert!(why.contains("rolled back to v1 in slot blue"), "{why}\n{all}");
    back_on_v1(&nginx, &test, &all);
}

/// The previous release is no longer kept, so a rollback starts it again:
/// with `V=v9` in the environment it once deployed v9 ("rollback deployed
/// the wrong version"), and with no V at all it refused. It deploys the
/// release the journal recorded, with the environment that release read.
#[test]
fn a_rollback_deploys_the_recorded_release_whatever_the_environment_says() {
    let Live { nginx, test, blue, green, _prefix } = live_v1();
    let out = pipe(&test, &["run"], "v2");
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    // Its keep-previous time is over: v1 is stopped and must be started again.
    let mut j = journal(&test);
    j["kept_until"] = json!(1);
    write_journal(&test, &j);

    let back = test.pipe(&["deploy", "rollback"], &[("V", "v9")]);
    let all = format!("{}{}", back.stdout, back.stderr);
    assert_eq!(back.code, 0, "{all}");
    assert_eq!(get(nginx.port, "/version").map(|v| v.trim().to_string()), Ok("v1".to_string()), "{all}");
    assert_eq!(journal(&test)["live"]["version"], "v1", "{all}");

    // A rollback by hand is a run: in `pipe runs`, with its log and a report.
    let record = back.record();
    let id = record["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("deploy-"), "{record:#}");
    assert_eq!(record["status"], "succeeded", "{record:#}");
    assert_eq!(record["steps"][0]["details"]["version"], "v1", "{record:#}");
    assert_eq!(record["steps"][0]["command"], "pipe deploy rollback web", "{record:#}");
    let runs = test.pipe(&["runs"], &[]);
    assert!(runs.stdout.contains(&id), "{}", runs.stdout);
    let logs = test.pipe(&["logs", &id], &[]);
    assert!(logs.stdout.contains("deploying v1 again"), "{}{}", logs.stdout, logs.stderr);
    assert!(test.path().join(format!(".pipe/runs/{id}/report.html")).exists(), "no report");

    // And with nothing in the environment, stop still stops what runs.
    let stop = test.pipe(&["deploy", "stop"], &[]);
    assert_eq!(stop.code, 0, "{}{}", stop.stdout, stop.stderr);
    assert!(get(blue, "/version").is_err() && get(green, "/version").is_err(), "an instance still answers");
}

/// `pipe deploy stop` needs nothing but the journal: with the secret the
/// instance reads unset and the version's variable gone, it refused to render
/// the deployment and the instance kept running.
#[test]
fn deploy_stop_stops_what_runs_with_its_secret_and_variables_unset() {
    let instance = format!(
        r#"instance "command" start="exec {}" {{ env {{ VERSION "${{deploy.version}}"; API_TOKEN "${{secrets.TOKEN}}" }} }}"#,
        shop_app().display()
    );
    let Live { nginx: _nginx, test, blue, green: _, _prefix } =
        behind_nginx(r#"secrets { from-env "TOKEN" }"#, &instance);
    let out = test.pipe(&["run"], &[("V", "v1"), ("TOKEN", "s3cret-token")]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(get(blue, "/version").is_ok(), "v1 runs");
    let stop = test.pipe(&["deploy", "stop"], &[]);
    assert_eq!(stop.code, 0, "{}{}", stop.stdout, stop.stderr);
    assert!(get(blue, "/version").is_err(), "the instance still answers after `pipe deploy stop`");
    assert!(journal(&test)["live"].is_null(), "the journal says nothing is live");
}

/// A slot's port held by something else (another checkout's journey, a
/// service started by hand): the deploy says which process, instead of the
/// instance's own bind error, and traffic never moves.
#[test]
fn a_port_held_by_another_process_is_named() {
    let Live { nginx, test, blue: _, green, _prefix } = live_v1();
    let stranger = std::net::TcpListener::bind(("127.0.0.1", green)).expect("hold the green slot's port");
    let out = pipe(&test, &["run"], "v2");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_eq!(out.code, 1, "{all}");
    let why = out.step("release.web")["reason"].as_str().unwrap_or("").to_string();
    let me = format!("its port {green} is taken by pid {} (", std::process::id());
    assert!(why.contains(&me) && why.contains("traffic never moved"), "{why}");
    back_on_v1(&nginx, &test, &all);
    drop(stranger);
}
