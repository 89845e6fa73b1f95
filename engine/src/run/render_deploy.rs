//! A `deploy` step rendered into a [`DeployRun`]: the instance once per slot
//! (`${slot.*}` filled in), the roles' plugins with their settings and grants,
//! and the step outputs the deployment read, recorded with the release.

use std::collections::BTreeMap;
use std::path::Path;

use super::RenderError;
use super::context::{RunContext, View};
use super::executor::Invocation;
use super::script::ScriptWriter;
use super::script::settings;
use crate::deploy::{
    AnalysisRun, CanaryRun, CommandInstance, DeployRun, DockerInstance, InstanceRun, JournalStore, NotifyRun,
    PluginRole, PreviousRun, ProbeRun, RoleRun, SlotRun, StrategyRun, VerifyRun,
};
use crate::docker::docker_name;

/// How a release's recorded inputs name an environment variable (`env.V`);
/// step outputs are `stage.step.key`.
pub(super) const ENV_INPUT: &str = "env.";
use crate::lang::interp::{RefKind, Reference, SlotField, Template};
use crate::lang::model::{Deploy, Instance, Role, Slot, Strategy};
use crate::plan::PlannedStep;
use crate::plugin::PluginState;
use crate::state::{StateStore, file_safe};

/// The key a deployment's role plugin is prepared under.
pub fn role_key(step: &str, role: &str) -> String {
    format!("{step}#{role}")
}

impl RunContext {
    pub(super) fn render_deploy(
        &self,
        step: &PlannedStep,
        d: &Deploy,
        view: &View,
        env: &BTreeMap<String, String>,
        output_file: &Path,
    ) -> Result<super::context::Rendered, RenderError> {
        let plain = |t: &Template| t.render(|r| self.resolve(r, step, view, env));
        let version = match (&d.version, &d.instance) {
            (Some(v), _) => plain(v)?,
            (None, Instance::Docker { image, .. }) => plain(image)?,
            (None, Instance::Command { .. }) => self.git.sha.clone(),
        };
        let in_slot = |r: &Reference, slot: &Slot| match &r.kind {
            RefKind::Slot(SlotField::Name) => Ok(slot.name.clone()),
            RefKind::Slot(SlotField::Port) => Ok(slot.port.to_string()),
            RefKind::Slot(SlotField::Address) => Ok(format!("127.0.0.1:{}", slot.port)),
            RefKind::DeployVersion => Ok(version.clone()),
            _ => self.resolve(r, step, view, env),
        };
        let own_ref = |r: &Reference| match &r.kind {
            RefKind::DeployVersion => Ok(version.clone()),
            _ => self.resolve(r, step, view, env),
        };
        let own = |t: &Template| t.render(own_ref);
        let slots = d
            .slots
            .iter()
            .map(|slot| {
                Ok(SlotRun {
                    name: slot.name.clone(),
                    port: slot.port,
                    instance: self.instance(d, slot, &version, &|r| in_slot(r, slot))?,
                })
            })
            .collect::<Result<Vec<_>, RenderError>>()?;
        let journal =
            JournalStore::new(StateStore::open(&self.root, &self.pipeline), &d.name).masking(self.masker.clone());
        let strategy = match &d.strategy {
            Strategy::BlueGreen => StrategyRun::BlueGreen,
            Strategy::Rolling(r) => StrategyRun::Rolling(*r),
            Strategy::Canary(c) => StrategyRun::Canary(Box::new(CanaryRun {
                steps: c.steps.clone(),
                analysis: c
                    .analysis
                    .as_ref()
                    .map(|a| {
                        Ok::<_, RenderError>(AnalysisRun {
                            role: self.role(step, &a.role, "analysis", &own_ref, env)?,
                            window: a.window,
                            min_samples: a.min_samples,
                            on_no_data: a.on_no_data,
                            metrics: a.metrics.clone(),
                        })
                    })
                    .transpose()?,
            })),
        };
        let notify = d
            .notify
            .iter()
            .enumerate()
            .map(|(i, n)| {
                Ok(NotifyRun {
                    role: self.role(step, &n.role, &format!("notify-{i}"), &own_ref, env)?,
                    on: n.on.clone(),
                })
            })
            .collect::<Result<Vec<_>, RenderError>>()?;
        // The live release as it was rendered: what a rolling rollback starts
        // again, and what any rollback starts again when its instance is gone.
        let previous = match (&d.strategy, self.previous(step, d, view, env, &journal)) {
            (_, Ok(previous)) => previous,
            (Strategy::Rolling(_), Err(e)) => return Err(e),
            (Strategy::BlueGreen | Strategy::Canary(_), Err(_)) => None,
        };
        let run = DeployRun {
            pipeline: self.pipeline.clone(),
            name: d.name.clone(),
            step: step.id.clone(),
            strategy,
            version: version.clone(),
            run_id: self.run_id.clone(),
            git_sha: self.git.sha.clone(),
            inputs: self.inputs(step, view),
            slots,
            health: self.role(step, &d.health, "health", &own_ref, env)?,
            traffic: self.role(step, &d.traffic, "traffic", &own_ref, env)?,
            verify: d
                .verify
                .as_ref()
                .map(|v| {
                    Ok::<_, RenderError>(VerifyRun {
                        url: own(&v.url)?,
                        status: v.status,
                        body_contains: v.body_contains.as_ref().map(&own).transpose()?,
                        times: v.times,
                        timeout: v.timeout,
                    })
                })
                .transpose()?,
            drain: d.drain,
            keep_previous: d.keep_previous,
            approvers: d.approvers.clone(),
            probe: d
                .probe
                .as_ref()
                .map(|p| {
                    Ok::<_, RenderError>(ProbeRun { url: own(&p.url)?, rate: p.rate, max_failures: p.max_failures })
                })
                .transpose()?,
            notify,
            previous,
            journal,
            root: self.root.clone(),
            logs: format!("pipe logs {}", self.run_id),
            output_file: Some(output_file.to_path_buf()),
        };
        let display = self.masker.mask(&format!(
            "deploy {} {} ({}, slots {})",
            d.name,
            version,
            d.strategy.name(),
            d.slots.iter().map(|s| format!("{}:{}", s.name, s.port)).collect::<Vec<_>>().join(", ")
        ));
        Ok(super::context::Rendered { invocation: Invocation::Deploy(Box::new(run)), display })
    }

    fn instance(
        &self,
        d: &Deploy,
        slot: &Slot,
        version: &str,
        resolve: &dyn Fn(&Reference) -> Result<String, RenderError>,
    ) -> Result<InstanceRun, RenderError> {
        let render = |t: &Template| t.render(resolve);
        let checkout = crate::deploy::checkout_id(&self.root);
        // Commands are shell scripts: their values travel as variables.
        let mut scripts = ScriptWriter::default();
        let env = |e: &crate::lang::model::Env| -> Result<Vec<(String, String)>, RenderError> {
            let mut vars: Vec<(String, String)> =
                e.0.iter().map(|v| Ok((v.name.clone(), render(&v.value)?))).collect::<Result<_, RenderError>>()?;
            vars.push(("PORT".into(), slot.port.to_string()));
            vars.push(("SLOT".into(), slot.name.clone()));
            vars.push(("VERSION".into(), version.to_string()));
            Ok(vars)
        };
        Ok(match &d.instance {
            Instance::Docker { image, pull, port, env: e, cmd, network, memory } => {
                let cmd = cmd.as_ref().map(|c| scripts.write(c, resolve)).transpose()?.map(|w| w.text);
                let mut vars = env(e)?;
                vars.extend(scripts.into_vars());
                // Inside the container the app listens on its own port.
                if let Some(p) = vars.iter_mut().find(|(k, _)| k == "PORT") {
                    p.1 = port.to_string();
                }
                // Who made it: this deployment, of this checkout, by this user. Only
                // a container carrying all three is ever removed by a deploy.
                let labels = [
                    ("pipe.deploy", format!("{}/{}", self.pipeline, d.name)),
                    (crate::deploy::CHECKOUT_LABEL, checkout.clone()),
                    ("pipe.uid", crate::identity::Identity::current().uid.clone()),
                    ("pipe.pipeline", self.pipeline.clone()),
                    ("pipe.slot", slot.name.clone()),
                    ("pipe.version", version.to_string()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
                std::sync::Arc::new(DockerInstance {
                    name: docker_name(&format!("{}-{}-{}-{}", self.pipeline, d.name, slot.name, &checkout[..8])),
                    legacy: Some(docker_name(&format!("{}-{}-{}", self.pipeline, d.name, slot.name))),
                    image: render(image)?,
                    pull: *pull,
                    port: *port,
                    host_port: slot.port,
                    env: vars,
                    cmd,
                    network: network.clone(),
                    memory: *memory,
                    labels,
                })
            }
            Instance::Command { start, stop, status, env: e } => std::sync::Arc::new(CommandInstance {
                start: scripts.write(start, resolve)?.text,
                stop: stop.as_ref().map(|t| scripts.write(t, resolve)).transpose()?.map(|w| w.text),
                status: status.as_ref().map(|t| scripts.write(t, resolve)).transpose()?.map(|w| w.text),
                env: env(e)?.into_iter().chain(scripts.into_vars()).collect(),
                workdir: self.dir.clone(),
                log_file: self
                    .root
                    .join(".pipe/deploy")
                    .join(file_safe(&self.pipeline))
                    .join(file_safe(&d.name))
                    .join(format!("{}.log", file_safe(&slot.name))),
                unset: self.withheld.keys().cloned().collect(),
                tag: format!("{checkout}/{}/{}/{}", self.pipeline, d.name, slot.name),
            }),
        })
    }

    fn role(
        &self,
        step: &PlannedStep,
        role: &Role,
        which: &str,
        resolve: &dyn Fn(&Reference) -> Result<String, RenderError>,
        env: &BTreeMap<String, String>,
    ) -> Result<RoleRun, RenderError> {
        let render = |t: &Template| t.render(resolve);
        let refused = |reason: String| RenderError { reference: role.uses.value.clone(), reason };
        let plugin = self
            .plugins
            .get(&role_key(&step.id, which))
            .cloned()
            .ok_or_else(|| refused(format!("the {which} plugin was not prepared")))?;
        let mut config = settings(&role.config, &plugin.info.fields, resolve)?;
        let granted = self.render_grants(&role.grants, &render, env)?;
        let granted = granted.with_settings(&mut config, &plugin.info.fields, &self.dir).map_err(refused)?;
        granted.check(&self.protected).map_err(refused)?;
        let plugin = PluginRole {
            state: PluginState {
                store: StateStore::open(&self.root, &self.pipeline),
                namespace: role.uses.value.clone(),
                shared: granted.state.clone(),
            },
            plugin,
            config,
            granted,
            workdir: self.dir.clone(),
        };
        Ok(RoleRun { role: std::sync::Arc::new(plugin), attempts: role.attempts, interval: role.interval })
    }
}

impl RunContext {
    /// The live release's instances, rendered as that release rendered them
    /// (its git sha, version and recorded step outputs): what a rolling
    /// rollback starts again. None when nothing is live or it is this version.
    fn previous(
        &self,
        step: &PlannedStep,
        d: &Deploy,
        view: &View,
        env: &BTreeMap<String, String>,
        journal: &JournalStore,
    ) -> Result<Option<PreviousRun>, RenderError> {
        let refused = |reason: String| RenderError { reference: d.name.clone(), reason };
        let Some(live) = journal.load().map_err(|e| refused(e.to_string()))?.live else { return Ok(None) };
        let mut instances = BTreeMap::new();
        for slot in &d.slots {
            let resolve = |r: &Reference| match &r.kind {
                RefKind::Slot(SlotField::Name) => Ok(slot.name.clone()),
                RefKind::Slot(SlotField::Port) => Ok(slot.port.to_string()),
                RefKind::Slot(SlotField::Address) => Ok(format!("127.0.0.1:{}", slot.port)),
                RefKind::DeployVersion => Ok(live.version.clone()),
                RefKind::GitSha => Ok(live.git_sha.clone()),
                RefKind::StepOutput { stage, step: name, key } => {
                    live.inputs.get(&format!("{stage}.{name}.{key}")).cloned().ok_or_else(|| RenderError {
                        reference: r.text.clone(),
                        reason: format!("release {} did not record it", live.version),
                    })
                }
                _ => self.resolve(r, step, view, env),
            };
            instances.insert(slot.name.clone(), self.instance(d, slot, &live.version, &resolve)?);
        }
        Ok(Some(PreviousRun { version: live.version, instances }))
    }

    /// The step outputs a deployment read, by reference: recorded with the
    /// release so that it can be deployed again later (a rollback by
    /// redeploy). A value holding a secret is not recorded: state is in clear.
    fn inputs(&self, step: &PlannedStep, view: &View) -> BTreeMap<String, String> {
        let mut found = BTreeMap::new();
        let mut step = step.clone();
        for (t, _) in crate::plan::templates_mut(&mut step) {
            for r in t.refs() {
                if let RefKind::StepOutput { stage, step: name, key } = &r.kind
                    && let Some(v) = view.output(&format!("{stage}.{name}"), key)
                    && !self.masker.reveals(v)
                {
                    found.insert(format!("{stage}.{name}.{key}"), v.clone());
                }
                // What the environment said then (`version="${env.V}"`): a
                // rollback deploys this release, not what V says today.
                if let RefKind::Env(name) = &r.kind
                    && let Some(v) = self.env.get(name)
                    && !self.masker.reveals(v)
                {
                    found.insert(format!("{ENV_INPUT}{name}"), v.clone());
                }
            }
        }
        found
    }
}
