//! A real multi-node swarm on one machine: the machine's Docker Engine as the
//! manager, and worker engines each in a network namespace of its own (on a
//! switch of the test's own, with addresses of its choosing) and a mount namespace of its
//! own (a tmpfs over /tmp and the checkout, so a worker sees a workspace only
//! if pipe ships it), plus a local registry. Everything is torn down on drop,
//! and leftovers of a run that was killed are cleared before the next starts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BASE: &str = "/var/tmp/pipe-test-cluster";
/// The switch: a bridge in a namespace of its own, so that traffic between the
/// workers never meets the machine's firewall (Docker's FORWARD policy drops
/// bridged traffic it does not know).
const SWITCH: &str = "pipe-test-switch";
const UPLINK: &str = "pipe-test-up";
const SUBNET: &str = "10.213.0";

pub struct Cluster {
    /// `127.0.0.1:PORT`: the same address on every node.
    pub registry: String,
    pub workers: Vec<Worker>,
    helpers: Vec<Child>,
}

pub struct Worker {
    pub hostname: String,
    /// The engine (nsenter execs into it).
    daemon: Child,
    netns: String,
    dir: PathBuf,
    stopped: bool,
}

impl Worker {
    pub fn socket(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("pid")).ok()?.trim().parse().ok()
    }

    /// Stops the worker's engine as a crashed machine would go: SIGKILL.
    pub fn kill(&mut self) {
        // A dead machine takes its containers along; here their processes
        // would outlive the engine, so they are found first and go too.
        let containers = output(&format!(
            "docker -H {} ps -q | xargs -r docker -H {} inspect -f '{{{{.State.Pid}}}}'",
            self.socket(),
            self.socket()
        ));
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            // containerd-shims of its containers would keep them alive: they go too.
            let _ = Command::new("pkill").args(["-KILL", "-f", &self.dir.display().to_string()]).status();
        }
        for pid in containers.lines() {
            sh(&format!("kill -KILL {pid}"));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        self.stopped = true;
    }
}

fn sh(cmd: &str) -> bool {
    Command::new("sh").args(["-c", cmd]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn must(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn output(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Cluster {
    /// The machine's engine plus `workers` worker engines and a registry.
    pub fn start(workers: usize) -> Cluster {
        for tool in ["dockerd", "docker-registry", "socat", "ip", "nsenter", "unshare"] {
            assert!(sh(&format!("command -v {tool}")), "{tool} is missing: `bash .ci/setup --tests` installs it");
        }
        clear_leftovers();
        let state = output("docker info --format '{{.Swarm.LocalNodeState}}'");
        assert_eq!(state, "inactive", "the machine's engine is already in a swarm the tests did not make");
        std::fs::create_dir_all(BASE).expect("cluster dir");
        std::fs::write(format!("{BASE}/empty.json"), "{}").expect("empty config");
        must(&format!(
            "ip netns add {SWITCH} && ip -n {SWITCH} link add br0 type bridge && ip -n {SWITCH} link set br0 up && \
             ip link add {UPLINK} type veth peer name up0 netns {SWITCH} && ip -n {SWITCH} link set up0 master br0 up && \
             ip addr add {SUBNET}.1/24 dev {UPLINK} && ip link set {UPLINK} up"
        ));
        let mut cluster = Cluster { registry: String::new(), workers: Vec::new(), helpers: Vec::new() };
        cluster.start_registry();
        for i in 1..=workers {
            cluster.start_worker(i);
        }
        must(&format!("docker swarm init --advertise-addr {SUBNET}.1 --listen-addr {SUBNET}.1:2377"));
        let token = output("docker swarm join-token -q worker");
        for (i, w) in cluster.workers.iter().enumerate() {
            must(&format!(
                "docker -H {} swarm join --token {token} --advertise-addr {SUBNET}.{n} --listen-addr {SUBNET}.{n}:2377 {SUBNET}.1:2377",
                w.socket(),
                n = i + 2
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while output("docker node ls --format '{{.Status}}' | grep -c Ready").parse::<usize>().unwrap_or(0)
            < workers + 1
        {
            assert!(Instant::now() < deadline, "the workers did not become ready");
            std::thread::sleep(Duration::from_millis(200));
        }
        cluster
    }

    fn start_registry(&mut self) {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        std::fs::create_dir_all(format!("{BASE}/registry")).expect("registry dir");
        let config = format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {BASE}/registry\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\nlog:\n  level: error\n"
        );
        std::fs::write(format!("{BASE}/registry.yml"), config).expect("registry config");
        self.spawn(Command::new("docker-registry").args(["serve", &format!("{BASE}/registry.yml")]));
        // Docker trusts plain HTTP on loopback only: every node reaches the one
        // registry at 127.0.0.1:PORT, the workers through a forwarder in their namespace.
        self.spawn(
            Command::new("socat")
                .args([&format!("TCP-LISTEN:{port},bind={SUBNET}.1,fork,reuseaddr"), &format!("TCP:127.0.0.1:{port}")]),
        );
        self.registry = format!("127.0.0.1:{port}");
        wait_for(&format!("127.0.0.1:{port}"));
    }

    fn start_worker(&mut self, i: usize) {
        let (netns, dir) = (format!("pipe-test-node{i}"), PathBuf::from(format!("{BASE}/node{i}")));
        std::fs::create_dir_all(&dir).expect("node dir");
        must(&format!(
            "ip netns add {netns} && ip -n {SWITCH} link add port{i} type veth peer name eth0 netns {netns} && \
             ip -n {SWITCH} link set port{i} master br0 up && ip -n {netns} addr add {SUBNET}.{n}/24 dev eth0 && \
             ip -n {netns} link set eth0 up && ip -n {netns} link set lo up && \
             ip -n {netns} route add default via {SUBNET}.1",
            n = i + 1
        ));
        let port = self.registry.rsplit(':').next().expect("port").to_string();
        self.spawn(Command::new("nsenter").args([
            &format!("--net=/run/netns/{netns}"),
            "socat",
            &format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"),
            &format!("TCP:{SUBNET}.1:{port}"),
        ]));
        let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("checkout").display().to_string();
        let d = dir.display();
        let script = format!(
            "hostname pipe-node{i} && mount -t tmpfs tmpfs '{checkout}' && mount -t tmpfs tmpfs /tmp && \
             exec dockerd --config-file {BASE}/empty.json --data-root {d}/data --exec-root {d}/exec \
             --host unix://{d}/docker.sock --pidfile {d}/pid --storage-driver vfs --iptables=false --bridge none"
        );
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("log");
        // `ip netns exec` would remount /sys, and the engine fails on cgroups then.
        let daemon = Command::new("nsenter")
            .args([&format!("--net=/run/netns/{netns}"), "unshare", "--mount", "--uts", "--propagation", "private"])
            .args(["sh", "-c", &script])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("dockerd");
        let worker = Worker { hostname: format!("pipe-node{i}"), daemon, netns, dir, stopped: false };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !sh(&format!("docker -H {} info", worker.socket())) {
            assert!(Instant::now() < deadline, "worker engine {i} did not start: see {BASE}/node{i}/dockerd.log");
            std::thread::sleep(Duration::from_millis(200));
        }
        self.workers.push(worker);
    }

    fn spawn(&mut self, cmd: &mut Command) {
        self.helpers.push(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("helper"));
    }

    /// Loads a local image into the registry under its own name; answers the
    /// registry's reference.
    pub fn push(&self, image: &str) -> String {
        let name = format!("{}/{}", self.registry, image);
        must(&format!("docker tag {image} {name} && docker push {name}"));
        name
    }
}

fn wait_for(address: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(address).is_err() {
        assert!(Instant::now() < deadline, "{address} did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes what a test process that was killed left: worker engines, their
/// namespaces, the bridge, the swarm it made, the registry's data.
fn clear_leftovers() {
    let ours = output("docker info --format '{{.Swarm.NodeAddr}}'") == format!("{SUBNET}.1");
    for entry in std::fs::read_dir(BASE).into_iter().flatten().flatten() {
        if let Ok(pid) = std::fs::read_to_string(entry.path().join("pid")) {
            sh(&format!("kill -KILL {}", pid.trim()));
        }
    }
    sh(&format!("pkill -KILL -f '{BASE}'"));
    for netns in output("ip netns list | awk '/^pipe-test-node/ {print $1}'").lines() {
        sh(&format!("ip netns delete {netns}"));
    }
    sh(&format!("ip netns delete {SWITCH}"));
    sh(&format!("ip link delete {UPLINK}"));
    if ours {
        sh("docker swarm leave --force && docker network rm docker_gwbridge");
    }
    let _ = std::fs::remove_dir_all(BASE);
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for w in &mut self.workers {
            if !w.stopped {
                sh(&format!("docker -H {} swarm leave --force", w.socket()));
                sh(&format!("kill -TERM {}", w.daemon.id()));
                let deadline = Instant::now() + Duration::from_secs(20);
                while w.daemon.try_wait().is_ok_and(|s| s.is_none()) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let _ = w.daemon.kill();
                let _ = w.daemon.wait();
            }
            sh(&format!("pkill -KILL -f '{}'", w.dir.display()));
            sh(&format!("ip netns delete {}", w.netns));
        }
        sh("docker swarm leave --force");
        // `swarm init` made these; the engine is left as it was found.
        sh("docker network rm docker_gwbridge");
        for child in &mut self.helpers {
            let _ = child.kill();
            let _ = child.wait();
        }
        sh(&format!("ip netns delete {SWITCH}"));
        sh(&format!("ip link delete {UPLINK}"));
        let _ = std::fs::remove_dir_all(BASE);
    }
}
