//! The typed pipeline model: what the user wrote, checked for shape, with spans.
//! It knows nothing of graphs or processes.

use std::path::PathBuf;
use std::time::Duration;

use globset::GlobMatcher;

use super::interp::Template;
use super::reader::Spanned;
use super::source::Loc;

#[derive(Debug)]
pub struct Pipeline {
    pub name: String,
    pub loc: Loc,
    /// Directory of the pipeline file: steps run here unless `workdir` says otherwise.
    pub dir: PathBuf,
    pub env: Env,
    pub secrets: Secrets,
    pub container: Option<ContainerSpec>,
    pub executor: Option<Executor>,
    pub services: Vec<Service>,
    pub stages: Vec<Stage>,
    pub hooks: Hooks,
    /// `changes "src/**" …`: the files that make it affected (default: its directory).
    pub changes: Option<Vec<Spanned<String>>>,
    /// `on "push" branch="main"`: the branches whose new commits `pipe watch` runs it for.
    pub on_push: Vec<Spanned<String>>,
    /// `approvers "…"`: the approvers of every gate that names none itself.
    pub approvers: Option<Approvers>,
}

/// `container image="…" pull="…" { user …; memory …; cpus …; network … }`: where
/// `run` commands execute. Set on the pipeline, a stage or a step; the innermost wins.
#[derive(Clone, Debug)]
pub struct ContainerSpec {
    pub image: Template,
    pub pull: PullPolicy,
    pub user: Option<String>,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub network: Option<String>,
    pub loc: Loc,
}

/// `service "db" image="…" { env {…}; cmd "…"; health-cmd "…"; port 5432 }`: a
/// sidecar container started on the run's network before the steps, reachable
/// from container steps by its name, removed after the run.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub image: Template,
    pub pull: PullPolicy,
    pub env: Env,
    pub cmd: Option<String>,
    pub health_cmd: Option<String>,
    pub health_timeout: Duration,
    pub port: Option<u16>,
    pub loc: Loc,
}

/// `executor "docker"` (the default) or `executor "swarm"`: where container steps run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Executor {
    #[default]
    Docker,
    /// As Docker Swarm services in `replicated-job` mode.
    Swarm(Swarm),
}

/// `executor "swarm" { constraint "…"; registry "host:port" }`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Swarm {
    /// Placement constraints (`node.role==worker`, `node.labels.ci==true`).
    pub constraints: Vec<String>,
    /// The registry every node pulls from. With one, steps may land on any
    /// node: the workspace and the run's images travel through it.
    pub registry: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Never,
    IfMissing,
    Always,
}

/// Ordered `NAME value` pairs; later ones may refer to earlier ones.
#[derive(Clone, Debug, Default)]
pub struct Env(pub Vec<EnvVar>);

#[derive(Clone, Debug)]
pub struct EnvVar {
    pub name: String,
    pub value: Template,
}

/// Where secret values come from. Values never live in the model.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    /// Names read from the process environment.
    pub from_env: Vec<Spanned<String>>,
    /// dotenv-style files (relative to the pipeline file), which git must not track.
    pub files: Vec<Spanned<PathBuf>>,
    /// `from-env "DEPLOY_TOKEN" branch="main"`: secrets only runs of a matching
    /// branch get, by name. Others run without them.
    pub branch_only: std::collections::BTreeMap<String, BranchOnly>,
}

/// The branches whose runs may have a secret: one glob, as `when branch=`.
#[derive(Clone, Debug)]
pub struct BranchOnly {
    pub pattern: String,
    pub matcher: globset::GlobMatcher,
}

impl Secrets {
    pub fn declares(&self, name: &str) -> bool {
        self.from_env.iter().any(|s| s.value == name)
    }
}

#[derive(Clone, Debug)]
pub struct Stage {
    pub name: String,
    pub loc: Loc,
    pub needs: Vec<Spanned<String>>,
    pub env: Env,
    pub container: Option<ContainerSpec>,
    pub executor: Option<Executor>,
    pub services: Vec<Service>,
    pub when: Vec<Condition>,
    pub matrix: Option<Matrix>,
    pub steps: Vec<Step>,
    pub hooks: Hooks,
    /// `changes …` of its own, instead of the pipeline's.
    pub changes: Option<Vec<Spanned<String>>>,
    pub fail_fast: FailFast,
}

/// What a failed step of a stage stops (`fail-fast #true|#false|"stage"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailFast {
    /// The run: running steps are cancelled, nothing new starts.
    #[default]
    Run,
    /// Its own stage's other steps and matrix cells; other stages go on.
    Stage,
    /// Nothing: what needs the failed step is skipped, the rest runs.
    Off,
}

#[derive(Clone, Debug)]
pub struct Matrix {
    pub axes: Vec<Axis>,
    pub loc: Loc,
}

#[derive(Clone, Debug)]
pub struct Axis {
    pub name: String,
    pub values: Vec<String>,
    pub loc: Loc,
}

/// `on-success`, `on-failure` and `always` blocks, of a stage or of the pipeline.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    pub on_success: Vec<Step>,
    pub on_failure: Vec<Step>,
    pub always: Vec<Step>,
}

impl Hooks {
    pub fn iter(&self) -> impl Iterator<Item = (Trigger, &Vec<Step>)> {
        [
            (Trigger::OnSuccess, &self.on_success),
            (Trigger::OnFailure, &self.on_failure),
            (Trigger::Always, &self.always),
        ]
        .into_iter()
    }
}

/// When a hook block fires, judged on the outcome of what it watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    OnSuccess,
    OnFailure,
    Always,
}

impl Trigger {
    pub fn keyword(self) -> &'static str {
        match self {
            Trigger::OnSuccess => "on-success",
            Trigger::OnFailure => "on-failure",
            Trigger::Always => "always",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Step {
    pub name: String,
    pub loc: Loc,
    pub action: Action,
    pub needs: Vec<Spanned<String>>,
    pub when: Vec<Condition>,
    pub retry: Retry,
    pub timeout: Option<Spanned<Duration>>,
    pub continue_on_error: bool,
    pub env: Env,
    pub container: Option<ContainerSpec>,
    pub workdir: Option<Template>,
    pub cache: Option<Cache>,
}

/// `cache { inputs "src/**" "Cargo.lock"; outputs "target/app" }`: a step
/// whose inputs, command, env, image and plugin did not change is not run
/// again; its outputs (files and step outputs) are restored instead. Paths are
/// relative to the pipeline file's directory.
#[derive(Clone, Debug)]
pub struct Cache {
    /// Globs of the files the step reads (`../shared/**` reaches outside).
    pub inputs: Vec<Spanned<String>>,
    /// Files or directories the step writes, inside the pipeline's directory.
    pub outputs: Vec<Spanned<String>>,
}

/// What a step does. The scheduler dispatches on this once; later kinds
/// (container, plugin, deploy) are new variants, not new scheduling code.
#[derive(Clone, Debug)]
pub enum Action {
    Run(RunCommand),
    Plugin(PluginCall),
    ImageBuild(ImageBuild),
    Deploy(Box<Deploy>),
    Approve(Approve),
}

/// `approve "Deploy to production?" timeout="4h"`: the run waits until a person
/// approves (`pipe approve RUN`) or aborts, or the timeout passes (then it fails).
#[derive(Clone, Debug)]
pub struct Approve {
    pub message: Template,
    pub timeout: Duration,
    /// `approvers="…"`, or the pipeline's: who may decide.
    pub approvers: Option<Approvers>,
}

/// `approvers "release/allowed_signers"`: an allowed-signers file of the
/// repository (git's format), read when the pipeline is loaded. A gate with
/// approvers takes only decisions signed by one of its keys.
pub type Approvers = std::sync::Arc<crate::approval::signers::AllowedSigners>;

/// `deploy "name" strategy="blue-green" { instance …; slots {…}; health …; traffic …; … }`:
/// a new version of a long-running service put in front of its users.
#[derive(Clone, Debug)]
pub struct Deploy {
    pub name: String,
    pub strategy: Strategy,
    /// What the deployment calls the version it puts out (default: the image, or `${git.sha}`).
    pub version: Option<Template>,
    pub instance: Instance,
    pub slots: Vec<Slot>,
    pub health: Role,
    pub traffic: Role,
    pub verify: Option<Verify>,
    /// The longest the old version may take to lose its last connection.
    pub drain: Duration,
    /// How long the old version stays running, idle, for an instant rollback.
    pub keep_previous: Duration,
    pub probe: Option<Probe>,
    /// Who hears about what the deployment does.
    pub notify: Vec<Notify>,
    /// `approvers "…"`, or the pipeline's: who may promote or abort the canary.
    pub approvers: Option<Approvers>,
    pub loc: Loc,
}

impl Deploy {
    /// Every template: the instance's (where `${slot.*}` may appear), then the
    /// deployment's own (version, roles, verify, probe).
    pub fn templates_mut(&mut self) -> (Vec<&mut Template>, Vec<&mut Template>) {
        let Deploy { instance, version, health, traffic, verify, probe, notify, strategy, .. } = self;
        let instance: Vec<&mut Template> = match instance {
            Instance::Docker { image, env, cmd, .. } => {
                std::iter::once(image).chain(cmd.iter_mut()).chain(env.0.iter_mut().map(|v| &mut v.value)).collect()
            }
            Instance::Command { start, stop, status, env } => std::iter::once(start)
                .chain(stop.iter_mut())
                .chain(status.iter_mut())
                .chain(env.0.iter_mut().map(|v| &mut v.value))
                .collect(),
        };
        let analysis = match strategy {
            Strategy::Canary(c) => c.analysis.as_mut().map(|a| &mut a.role),
            Strategy::BlueGreen | Strategy::Rolling(_) => None,
        };
        let roles = [health, traffic]
            .into_iter()
            .chain(analysis)
            .chain(notify.iter_mut().map(|n| &mut n.role))
            .flat_map(|r| r.config.iter_mut().map(|(_, t)| t).chain(r.grants.templates_mut()));
        let own = version
            .iter_mut()
            .chain(roles)
            .chain(verify.iter_mut().flat_map(|v| std::iter::once(&mut v.url).chain(v.body_contains.iter_mut())))
            .chain(probe.iter_mut().map(|p| &mut p.url))
            .collect();
        (instance, own)
    }
}

/// How traffic moves from the old version to the new one.
#[derive(Clone, Debug)]
pub enum Strategy {
    /// All at once, between two slots.
    BlueGreen,
    /// Instance by instance over a fleet.
    Rolling(Rolling),
    /// A growing share of the traffic, measured at each step.
    Canary(Box<Canary>),
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::BlueGreen => "blue-green",
            Strategy::Rolling(_) => "rolling",
            Strategy::Canary(_) => "canary",
        }
    }
}

/// `replicas 4; batch 1`: `replicas` instances serve; `batch` new ones are
/// started (and as many old ones retired) at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rolling {
    pub replicas: u32,
    pub batch: u32,
}

#[derive(Clone, Debug)]
pub struct Canary {
    /// Increasing weights, the last one 100.
    pub steps: Vec<CanaryStep>,
    pub analysis: Option<Analysis>,
}

/// `weight 10 pause="2m" approve=#true timeout="1h"`: the canary's share of traffic (in
/// percent), how long it is held there (analysis runs meanwhile), and whether
/// a person must then promote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanaryStep {
    pub weight: u32,
    pub pause: Duration,
    pub approve: bool,
    /// How long a person may take to promote (or an on-no-data pause may
    /// last) before the canary fails and is rolled back.
    pub timeout: Duration,
}

/// `analysis "plugin" window="1m" min-samples=100 on-no-data="fail" { metric … }`.
#[derive(Clone, Debug)]
pub struct Analysis {
    pub role: Role,
    pub window: Duration,
    /// Fewer canary requests than this in a window: no verdict from numbers.
    pub min_samples: u64,
    pub on_no_data: OnNoData,
    pub metrics: Vec<Metric>,
}

/// What an inconclusive window (too few requests) leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnNoData {
    /// The canary fails and is rolled back.
    Fail,
    /// The deployment holds its weight and waits for a person.
    Pause,
    /// The step goes on as if the window passed.
    Pass,
}

impl OnNoData {
    pub fn name(self) -> &'static str {
        match self {
            OnNoData::Fail => "fail",
            OnNoData::Pause => "pause",
            OnNoData::Pass => "pass",
        }
    }
}

/// `metric "error-rate" max=0.01`, `metric "p99" max="300ms"`: a bound on the canary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metric {
    pub kind: MetricKind,
    /// A ratio for `error-rate`, milliseconds for latencies.
    pub max: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    ErrorRate,
    P50,
    P90,
    P99,
}

impl MetricKind {
    pub const NAMES: &[&str] = &["error-rate", "p50", "p90", "p99"];

    pub fn name(self) -> &'static str {
        match self {
            MetricKind::ErrorRate => "error-rate",
            MetricKind::P50 => "p50",
            MetricKind::P90 => "p90",
            MetricKind::P99 => "p99",
        }
    }
}

/// `notify "plugin" on="failed,rolled-back" …`: a notifier told about the
/// deployment's events (all of them, or those listed in `on`).
#[derive(Clone, Debug)]
pub struct Notify {
    pub role: Role,
    pub on: Vec<String>,
}

/// What runs in a slot: a long-lived container, or anything started by commands.
#[derive(Clone, Debug)]
pub enum Instance {
    /// A container (restart policy `unless-stopped`) with its `port` published
    /// on the slot's loopback port.
    Docker {
        image: Template,
        pull: PullPolicy,
        port: u16,
        env: Env,
        cmd: Option<Template>,
        network: Option<String>,
        memory: Option<u64>,
    },
    /// `start` runs detached (it may stay in the foreground or daemonize);
    /// `stop` and `status` are optional (default: signal / look at what start left).
    Command { start: Template, stop: Option<Template>, status: Option<Template>, env: Env },
}

/// A place an instance runs in: blue, green.
#[derive(Clone, Debug)]
pub struct Slot {
    pub name: String,
    pub port: u16,
    pub loc: Loc,
}

/// A plugin in a deployment role (`health`, `traffic`, `analysis`, `notify`): its settings and grants.
#[derive(Clone, Debug)]
pub struct Role {
    pub uses: Spanned<String>,
    pub config: Vec<(String, Template)>,
    pub grants: Grants,
    /// Health checks: how many checks at most, and the wait between them.
    pub attempts: u32,
    pub interval: Duration,
}

/// `verify url="…" status=200 body-contains="…" times=5 timeout="30s"`: the
/// public URL serves the new version, `times` times in a row on new connections.
#[derive(Clone, Debug)]
pub struct Verify {
    pub url: Template,
    pub status: u16,
    pub body_contains: Option<Template>,
    pub times: u32,
    pub timeout: Duration,
}

/// `probe url="…" rate=200 max-failures=0`: requests through the public URL
/// during the whole deployment, counted per phase.
#[derive(Clone, Debug)]
pub struct Probe {
    pub url: Template,
    pub rate: u32,
    pub max_failures: u64,
}

/// `image-build context="." tag="app:1" dockerfile="Dockerfile" target="…" { arg K "v"; label K "v"; tag "more" }`.
#[derive(Clone, Debug)]
pub struct ImageBuild {
    pub context: Template,
    pub dockerfile: Option<String>,
    pub target: Option<String>,
    /// The first tag names the image; the rest are added after the build.
    pub tags: Vec<Template>,
    pub args: Vec<(String, Template)>,
    pub labels: Vec<(String, Template)>,
}

/// `uses "name" key=value…` with the step's `allow-*` grants.
#[derive(Clone, Debug)]
pub struct PluginCall {
    /// A built-in or installed plugin's name, or a path to a `.wasm` file.
    pub uses: Spanned<String>,
    pub config: Vec<(String, Template)>,
    pub grants: Grants,
    /// Memory limit in bytes (`memory="256MiB"` on the step).
    pub memory: Option<u64>,
}

/// What a plugin step may touch. Nothing is granted by default. Values may
/// use `${…}` (a port from state, a directory from `${pipeline.dir}`).
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// `host:port` a plugin may send HTTP requests to.
    pub net: Vec<Template>,
    /// Directories it may read (relative ones are below the pipeline's directory).
    pub read: Vec<Template>,
    /// Directories it may read and write.
    pub write: Vec<Template>,
    /// Commands it may run: the program, then argument patterns (`*` matches any one).
    pub exec: Vec<Vec<Template>>,
    /// Environment variables it may see (and the commands it runs).
    pub env: Vec<Spanned<String>>,
    /// `ip:port` it may open TCP connections to.
    pub connect: Vec<Template>,
    /// Other state namespaces it may use besides its own.
    pub state: Vec<Spanned<String>>,
}

impl Grants {
    /// Every template in the grants, for the planner to resolve.
    pub fn templates_mut(&mut self) -> impl Iterator<Item = &mut Template> {
        self.net
            .iter_mut()
            .chain(self.read.iter_mut())
            .chain(self.write.iter_mut())
            .chain(self.exec.iter_mut().flatten())
            .chain(self.connect.iter_mut())
    }
}

#[derive(Clone, Debug)]
pub struct RunCommand {
    pub script: Template,
    /// Overrides `sh -c`: the program and its leading arguments; the script comes last.
    pub shell: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Retry {
    /// Extra attempts after the first.
    pub count: u32,
    /// Wait before the first retry; doubled before each later one.
    pub backoff: Duration,
}

/// One `when` node; every field set on it must hold.
#[derive(Clone, Debug)]
pub struct Condition {
    pub loc: Loc,
    pub test: Test,
}

#[derive(Clone, Debug)]
pub enum Test {
    Branch { pattern: String, matcher: GlobMatcher },
    Env { name: String, equals: Option<String> },
    Outcome { step: Spanned<String>, outcome: Outcome },
    Output { step: Spanned<String>, key: String, equals: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    Skipped,
}
