//! Everything a run knows that the plan does not: run id, git facts, secret
//! values, the process environment, and how to render a planned step with them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::RenderError;
use super::approve::ApproveRun;
use super::container::{self, ContainerRun};
use super::executor::Invocation;
use super::git::GitInfo;
use super::image::ImageBuildRun;
use super::process::{ProcessSpec, ProgramCache};
use super::script::{ScriptWriter, Written, command_line, is_posix_shell, settings};
use super::trust::Trust;
use crate::docker::{docker_name, labels};
use crate::lang::interp::{RefKind, Reference, Template};
use crate::lang::model::{Action, Condition, ContainerSpec, ImageBuild, Outcome, PluginCall, RunCommand, Test};
use crate::plan::PlannedStep;
use crate::plugin::contract::Input;
use crate::plugin::grants::absolute;
use crate::plugin::{Call, DEFAULT_MEMORY, Granted, PluginRun, PluginState, Prepared, Protected};
use crate::state::{StateStore, StepRecord};
use crate::step::Masker;

pub struct RunContext {
    pub run_id: String,
    pub pipeline: String,
    /// Where `.pipe/` lives.
    pub root: PathBuf,
    /// The pipeline file's directory: steps run here by default.
    pub dir: PathBuf,
    pub run_dir: PathBuf,
    pub git: GitInfo,
    pub secrets: HashMap<String, String>,
    /// Secrets this run may not have (restricted to other branches), with the
    /// branches that may: absent from `secrets`, `env` and steps' processes.
    pub withheld: BTreeMap<String, String>,
    pub masker: Masker,
    pub env: HashMap<String, String>,
    pub programs: ProgramCache,
    /// Plugins prepared before the run, by step id.
    pub plugins: HashMap<String, Arc<Prepared>>,
    /// The run's network when it has services: container steps join it.
    pub network: Option<String>,
    /// pipe's own files, which no plugin grant may reach.
    pub protected: Protected,
    /// The step cache; `None` with `--no-cache`.
    pub cache: Option<super::cache::StepCache>,
    /// Whether a gate of the run takes only signed decisions: then no step
    /// gets pipe's `SSH_AUTH_SOCK`, the way to an approver's loaded key.
    pub signed_gates: bool,
    /// A more trusted branch's step cache, read when this run's misses.
    pub trusted_cache: Option<super::cache::StepCache>,
}

impl RunContext {
    /// Everything a run knows before its first step: the environment, secret
    /// values (files read and git asked off the runtime thread), git facts,
    /// and the plugins the plan uses, prepared and pinned.
    pub async fn prepare(
        plan: &crate::plan::Plan,
        root: &Path,
        run_id: String,
        trust: &Trust,
    ) -> Result<RunContext, super::RunError> {
        let (spec, dir, given) = (plan.secrets.clone(), plan.dir.clone(), trust.git.clone());
        let (mut env, mut secrets, git) = super::blocking(move || {
            let env: HashMap<String, String> = std::env::vars().collect();
            let secrets = super::secrets::load(&spec, &env)?;
            Ok::<_, super::RunError>((env, secrets, given.unwrap_or_else(|| GitInfo::detect(&dir))))
        })
        .await?;
        // Values withheld are still masked: they must not show up by any road.
        let masker = Masker::new(secrets.values().map(String::as_str));
        let mut withheld = super::secrets::withheld(&plan.secrets, &git.branch);
        withheld.extend(trust.withheld.clone());
        for name in withheld.keys() {
            secrets.remove(name);
            env.remove(name);
        }
        let plugins =
            crate::plugin::prepare(plan, root, crate::plugin::LockMode::Pin).await.map_err(super::RunError::Plugins)?;
        Ok(RunContext {
            run_dir: crate::state::record::run_dir(root, &run_id),
            run_id,
            pipeline: plan.pipeline.clone(),
            root: root.to_path_buf(),
            dir: plan.dir.clone(),
            masker,
            git,
            secrets,
            withheld,
            env,
            programs: ProgramCache::default(),
            plugins,
            network: None,
            protected: crate::plugin::protected(plan, root),
            cache: Some(super::cache::StepCache::open(root)),
            signed_gates: plan.graph.node_weights().any(|s| match &s.action {
                Action::Approve(a) => a.approvers.is_some(),
                Action::Deploy(d) => d.approvers.is_some(),
                _ => false,
            }),
            trusted_cache: trust.trusted_root.as_deref().map(super::cache::StepCache::open_read_only),
        })
    }
}

#[cfg(test)]
impl RunContext {
    /// A context for running `plan` under `root`, as a run without secrets,
    /// git or plugins would have.
    pub(crate) fn for_tests(plan: &crate::plan::Plan, root: &Path) -> RunContext {
        let run_dir = crate::state::record::run_dir(root, "test-run");
        for sub in ["logs", "outputs"] {
            std::fs::create_dir_all(run_dir.join(sub)).expect("run dir");
        }
        RunContext {
            run_id: "test-run".into(),
            pipeline: plan.pipeline.clone(),
            root: root.to_path_buf(),
            dir: root.to_path_buf(),
            run_dir,
            git: GitInfo::default(),
            secrets: HashMap::new(),
            withheld: BTreeMap::new(),
            masker: Masker::default(),
            env: std::env::vars().collect(),
            programs: ProgramCache::default(),
            plugins: HashMap::new(),
            network: None,
            protected: Protected::default(),
            cache: None,
            signed_gates: false,
            trusted_cache: None,
        }
    }
}

/// What a step's templates and conditions can see of the run so far.
pub struct View<'a> {
    pub ids: &'a HashMap<String, usize>,
    pub records: &'a [StepRecord],
    /// Outputs as the steps wrote them; records hold the masked copies.
    pub outputs: &'a [BTreeMap<String, String>],
}

impl View<'_> {
    pub fn record(&self, id: &str) -> Option<&StepRecord> {
        self.ids.get(id).map(|&i| &self.records[i])
    }

    pub fn output(&self, id: &str, key: &str) -> Option<&String> {
        self.ids.get(id).and_then(|&i| self.outputs[i].get(key))
    }

    /// Steps whose failure counts against the run, for `${run.failed-steps}`.
    pub fn failed(&self) -> Vec<&str> {
        self.records.iter().filter(|r| r.is_failure()).map(|r| r.id.as_str()).collect()
    }
}

pub struct Rendered {
    pub invocation: Invocation,
    /// The command as the log shows it, secrets masked.
    pub display: String,
}

impl RunContext {
    /// What a process step must not inherit from pipe's environment.
    /// What a step's process must not inherit from pipe's environment:
    /// secrets withheld from this run's branch, and the ssh-agent socket when
    /// gates take signed decisions.
    fn unset(&self) -> Vec<String> {
        let agent = self.signed_gates.then(|| "SSH_AUTH_SOCK".to_string());
        self.withheld.keys().cloned().chain(agent).collect()
    }

    /// The step's env: pipeline, then stage, then step values, each layer seeing the ones before.
    pub fn step_env(&self, step: &PlannedStep, view: &View) -> Result<BTreeMap<String, String>, RenderError> {
        let mut env = BTreeMap::new();
        for layer in &step.env {
            for var in &layer.0 {
                let value = var.value.render(|r| self.resolve(r, step, view, &env))?;
                env.insert(var.name.clone(), value);
            }
        }
        Ok(env)
    }

    pub fn render(
        &self,
        step: &PlannedStep,
        view: &View,
        output_file: &std::path::Path,
    ) -> Result<Rendered, RenderError> {
        let env = self.step_env(step, view)?;
        let workdir = match &step.workdir {
            Some(w) => self.dir.join(w.render(|r| self.resolve(r, step, view, &env))?),
            None => self.dir.clone(),
        };
        let (script, shell) = match &step.action {
            Action::Run(RunCommand { script, shell }) => (script, shell),
            Action::Plugin(call) => return self.render_plugin(step, call, view, &env, workdir, output_file),
            Action::ImageBuild(build) => return self.render_image_build(step, build, view, &env, output_file),
            Action::Deploy(deploy) => return self.render_deploy(step, deploy, view, &env, output_file),
            Action::Approve(a) => {
                let message = self.masker.mask(&a.message.render(|r| self.resolve(r, step, view, &env))?);
                let run = ApproveRun {
                    root: self.root.clone(),
                    pipeline: self.pipeline.clone(),
                    run_id: self.run_id.clone(),
                    step: step.id.clone(),
                    display: format!("approve: {message}"),
                    message,
                    timeout: a.timeout,
                    approvers: a.approvers.clone(),
                };
                return Ok(Rendered { display: run.display.clone(), invocation: Invocation::Approve(run) });
            }
        };
        let (script, vars) = self.script(script, shell.as_deref(), |r| self.resolve(r, step, view, &env))?;
        let mut env = env;
        env.extend(vars);
        if let Some(spec) = &step.container {
            let image = spec.image.render(|r| self.resolve(r, step, view, &env))?;
            let (program, args) = command_line(&script.text, shell.as_deref());
            let cmd = std::iter::once(program).chain(args).collect();
            let mut run = self.render_container(step, spec, image, cmd, env, output_file)?;
            let display = self.masker.mask(&format!("[{}] {}", run.image, script.shown));
            let invocation = match &step.executor {
                crate::lang::model::Executor::Docker => Invocation::Container(Box::new(run)),
                crate::lang::model::Executor::Swarm(swarm) => {
                    run.placement = swarm.constraints.clone();
                    run.registry = swarm.registry.clone();
                    Invocation::SwarmJob(Box::new(run))
                }
            };
            return Ok(Rendered { invocation, display });
        }
        let (program, args) = command_line(&script.text, shell.as_deref());
        let program = self.programs.resolve(&program, env.contains_key("PATH"));
        let mut vars: Vec<(String, String)> = env.into_iter().collect();
        vars.push(("PIPE_OUTPUT".into(), output_file.display().to_string()));
        vars.push(("PIPE_RUN_ID".into(), self.run_id.clone()));
        vars.push(("PIPE_PIPELINE".into(), self.pipeline.clone()));
        vars.push(("PIPE_STEP".into(), step.id.clone()));
        vars.push(("PIPE_WORKSPACE".into(), self.dir.display().to_string()));
        Ok(Rendered {
            display: self.masker.mask(&script.shown),
            invocation: Invocation::Process(ProcessSpec { program, args, env: vars, workdir, unset: self.unset() }),
        })
    }

    /// A `run` script and the variables its references travel in
    /// ([`super::script`]); refused for a shell that does not read `"$VAR"`.
    pub(super) fn script(
        &self,
        t: &Template,
        shell: Option<&[String]>,
        resolve: impl FnMut(&Reference) -> Result<String, RenderError>,
    ) -> Result<(Written, Vec<(String, String)>), RenderError> {
        if let Some(program) = shell.and_then(|s| s.first())
            && !is_posix_shell(program)
            && let Some(r) = t.refs().next()
        {
            return Err(RenderError {
                reference: r.text.clone(),
                reason: format!(
                    "`{program}` is not a POSIX shell, so the value cannot be passed to it as data; \
                     set it in the step's `env {{ }}` and read it from the environment"
                ),
            });
        }
        let mut writer = ScriptWriter::default();
        let written = writer.write(t, resolve)?;
        Ok((written, writer.into_vars()))
    }

    fn render_container(
        &self,
        step: &PlannedStep,
        spec: &ContainerSpec,
        image: String,
        cmd: Vec<String>,
        env: BTreeMap<String, String>,
        output_file: &Path,
    ) -> Result<ContainerRun, RenderError> {
        let workdir = match &step.workdir {
            Some(w) => format!(
                "{}/{}",
                container::WORKSPACE,
                w.render(|r| Err(RenderError {
                    reference: r.text.clone(),
                    reason: "references in a container workdir are not supported".into()
                }))?
            ),
            None => container::WORKSPACE.to_string(),
        };
        let output_name = output_file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut vars: Vec<(String, String)> = env.into_iter().collect();
        vars.push(("PIPE_OUTPUT".into(), format!("{}/{output_name}", container::OUTPUTS)));
        vars.push(("PIPE_RUN_ID".into(), self.run_id.clone()));
        vars.push(("PIPE_PIPELINE".into(), self.pipeline.clone()));
        vars.push(("PIPE_STEP".into(), step.id.clone()));
        vars.push(("PIPE_WORKSPACE".into(), container::WORKSPACE.into()));
        let run = ContainerRun {
            name: docker_name(&format!("pipe-{}-{}", self.run_id, step.id)),
            image,
            pull: spec.pull,
            cmd,
            env: vars,
            user: spec.user.clone(),
            memory: spec.memory,
            cpus: spec.cpus,
            network: spec.network.clone().or_else(|| self.network.clone()),
            workspace: self.dir.clone(),
            outputs: output_file.parent().map(Path::to_path_buf).unwrap_or_default(),
            workdir,
            labels: labels(&self.run_id, &self.pipeline, ("pipe.step", &step.id)),
            placement: Vec::new(),
            registry: None,
            private: self.protected.private().to_vec(),
        };
        Ok(run)
    }

    /// Renders what is known before any step runs (service images and env):
    /// env, secrets, git and run facts.
    pub fn render_loose(&self, t: &Template) -> Result<String, RenderError> {
        t.render(|r| {
            let missing = |reason: &str| RenderError { reference: r.text.clone(), reason: reason.to_string() };
            match &r.kind {
                RefKind::Env(n) => match self.withheld.get(n) {
                    Some(branches) => Err(missing(&self.restricted(n, branches))),
                    None => self.env.get(n).cloned().ok_or_else(|| missing("not set in the environment")),
                },
                RefKind::Secret(n) => self.secret(n).map_err(|why| missing(&why)),
                RefKind::GitSha => Ok(self.git.sha.clone()),
                RefKind::GitBranch => Ok(self.git.branch.clone()),
                RefKind::RunId => Ok(self.run_id.clone()),
                RefKind::RunPipeline => Ok(self.pipeline.clone()),
                RefKind::PipelineDir => Ok(self.dir.display().to_string()),
                _ => Err(missing("not known before the steps run")),
            }
        })
    }

    /// A secret's value; a declared secret that is not set is an error only
    /// here, where a step that runs reads it.
    fn secret(&self, name: &str) -> Result<String, String> {
        if let Some(branches) = self.withheld.get(name) {
            return Err(self.restricted(name, branches));
        }
        self.secrets.get(name).cloned().ok_or_else(|| format!("secret `{name}` is not set in the environment"))
    }

    fn restricted(&self, name: &str, branches: &str) -> String {
        let branch =
            if self.git.branch.is_empty() { "no branch".to_string() } else { format!("`{}`", self.git.branch) };
        format!("secret `{name}` is restricted to branches {branches}; this run is of {branch}")
    }

    fn render_image_build(
        &self,
        step: &PlannedStep,
        build: &ImageBuild,
        view: &View,
        env: &BTreeMap<String, String>,
        output_file: &Path,
    ) -> Result<Rendered, RenderError> {
        let render = |t: &Template| t.render(|r| self.resolve(r, step, view, env));
        let pairs = |list: &[(String, Template)]| -> Result<HashMap<String, String>, RenderError> {
            list.iter().map(|(k, v)| Ok((k.clone(), render(v)?))).collect()
        };
        let mut labels = pairs(&build.labels)?;
        labels.insert("pipe.pipeline".into(), self.pipeline.clone());
        labels.insert("pipe.run".into(), self.run_id.clone());
        let run = ImageBuildRun {
            context: self.dir.join(render(&build.context)?),
            dockerfile: build.dockerfile.clone().unwrap_or_else(|| "Dockerfile".into()),
            target: build.target.clone(),
            tags: build.tags.iter().map(render).collect::<Result<_, _>>()?,
            args: pairs(&build.args)?,
            labels,
            output_file: output_file.to_path_buf(),
            push_to: match &step.executor {
                crate::lang::model::Executor::Swarm(swarm) => swarm.registry.clone(),
                crate::lang::model::Executor::Docker => None,
            },
        };
        let display = self.masker.mask(&format!("image-build {} -t {}", run.context.display(), run.tags.join(" -t ")));
        Ok(Rendered { invocation: Invocation::ImageBuild(Box::new(run)), display })
    }

    fn render_plugin(
        &self,
        step: &PlannedStep,
        call: &PluginCall,
        view: &View,
        env: &BTreeMap<String, String>,
        workdir: PathBuf,
        output_file: &Path,
    ) -> Result<Rendered, RenderError> {
        let refused = |reason: String| RenderError { reference: call.uses.value.clone(), reason };
        let plugin =
            self.plugins.get(&step.id).cloned().ok_or_else(|| refused("the plugin was not prepared".into()))?;
        let resolve = |r: &Reference| self.resolve(r, step, view, env);
        let render = |t: &Template| t.render(resolve);
        let mut config = settings(&call.config, &plugin.info.fields, &resolve)?;
        let granted = self.render_grants(&call.grants, &render, env)?;
        let granted = granted.with_settings(&mut config, &plugin.info.fields, &self.dir).map_err(refused)?;
        granted.check(&self.protected).map_err(refused)?;
        let workspace = granted
            .read
            .iter()
            .chain(&granted.write)
            .any(|d| self.dir.starts_with(d))
            .then(|| self.dir.display().to_string());
        let shown: Vec<String> = config.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let display = self.masker.mask(&format!("uses {} {}", plugin.label(), shown.join(" ")));
        let state = PluginState {
            store: StateStore::open(&self.root, &self.pipeline),
            namespace: call.uses.value.clone(),
            shared: granted.state.clone(),
        };
        let run = PluginRun {
            plugin,
            call: Call::Run,
            input: Input { config, env: granted.env.clone(), workspace },
            granted,
            memory: call.memory.unwrap_or(DEFAULT_MEMORY),
            state: Some(state),
            workdir,
            output_file: Some(output_file.to_path_buf()),
        };
        Ok(Rendered { invocation: Invocation::Plugin(Arc::new(run)), display })
    }

    /// A step's explicit grants, rendered, paths made absolute below the
    /// pipeline's directory, granted variables given their values.
    pub(super) fn render_grants(
        &self,
        g: &crate::lang::model::Grants,
        render: &dyn Fn(&Template) -> Result<String, RenderError>,
        env: &BTreeMap<String, String>,
    ) -> Result<Granted, RenderError> {
        let dirs = |list: &[Template]| -> Result<Vec<PathBuf>, RenderError> {
            list.iter().map(|d| Ok(absolute(&self.dir.join(render(d)?)))).collect()
        };
        Ok(Granted {
            net: g.net.iter().map(render).collect::<Result<_, _>>()?,
            read: dirs(&g.read)?,
            write: dirs(&g.write)?,
            exec: g.exec.iter().map(|e| e.iter().map(render).collect()).collect::<Result<_, _>>()?,
            env: g
                .env
                .iter()
                .filter_map(|n| {
                    env.get(&n.value).or_else(|| self.env.get(&n.value)).map(|v| (n.value.clone(), v.clone()))
                })
                .collect(),
            connect: g.connect.iter().map(render).collect::<Result<_, _>>()?,
            state: g.state.iter().map(|s| s.value.clone()).collect(),
        })
    }

    pub(super) fn resolve(
        &self,
        r: &Reference,
        step: &PlannedStep,
        view: &View,
        env: &BTreeMap<String, String>,
    ) -> Result<String, RenderError> {
        let missing = |what: &str| Err(RenderError { reference: r.text.clone(), reason: what.to_string() });
        match &r.kind {
            RefKind::Env(name) if !env.contains_key(name) && self.withheld.contains_key(name) => {
                missing(&self.restricted(name, &self.withheld[name]))
            }
            RefKind::Env(name) => match env.get(name).or_else(|| self.env.get(name)) {
                Some(v) => Ok(v.clone()),
                None => missing("not set in the pipeline nor in the environment"),
            },
            RefKind::Secret(name) => self.secret(name).or_else(|why| missing(&why)),
            RefKind::Matrix(key) => match step.matrix.get(key) {
                Some(v) => Ok(v.clone()),
                None => missing("no such matrix axis"),
            },
            RefKind::Param(_) => missing("parameters exist only inside templates"),
            RefKind::GitSha => Ok(self.git.sha.clone()),
            RefKind::GitBranch => Ok(self.git.branch.clone()),
            RefKind::RunId => Ok(self.run_id.clone()),
            RefKind::RunPipeline => Ok(self.pipeline.clone()),
            RefKind::RunFailedSteps => Ok(view.failed().join(", ")),
            RefKind::State(key) => match StateStore::open(&self.root, &self.pipeline).snapshot() {
                Ok(mut state) => match state.remove(key) {
                    Some(v) => Ok(v),
                    None => missing(&format!("the pipeline's state has no `{key}`")),
                },
                Err(e) => missing(&e.to_string()),
            },
            RefKind::PipelineDir => Ok(self.dir.display().to_string()),
            RefKind::Slot(_) => missing("there is no slot outside a deploy instance"),
            RefKind::DeployVersion => missing("there is no deploy version outside a deploy"),
            RefKind::StepOutput { stage, step: name, key } => {
                let id = format!("{stage}.{name}");
                match view.output(&id, key) {
                    Some(v) => Ok(v.clone()),
                    None => missing(&format!("`{id}` set no output `{key}`")),
                }
            }
        }
    }

    pub fn holds(&self, cond: &Condition, env: &BTreeMap<String, String>, view: &View) -> bool {
        match &cond.test {
            Test::Branch { matcher, .. } => matcher.is_match(&self.git.branch),
            Test::Env { name, equals } => {
                let value = env.get(name).or_else(|| self.env.get(name));
                match (value, equals) {
                    (Some(v), Some(want)) => v == want,
                    (Some(v), None) => !v.is_empty(),
                    (None, _) => false,
                }
            }
            Test::Outcome { step, outcome } => view.record(&step.value).is_some_and(|rec| match outcome {
                Outcome::Success => rec.counts_as_success(),
                Outcome::Failure => {
                    rec.status == crate::state::Status::Failed || rec.status == crate::state::Status::Cancelled
                }
                Outcome::Skipped => rec.status == crate::state::Status::Skipped,
            }),
            Test::Output { step, key, equals } => view.output(&step.value, key).is_some_and(|v| v == equals),
        }
    }
}
