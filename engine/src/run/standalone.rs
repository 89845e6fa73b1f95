//! A deploy step rendered outside a run, for `pipe deploy resume`,
//! `rollback` and `stop`: the run's context, with the git sha, the step
//! outputs and the environment variables that the release being finished (or
//! deployed again) recorded.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use super::context::{RunContext, View};
use super::executor::Invocation;
use super::{RenderError, RunError};
use crate::deploy::DeployRun;
use crate::deploy::journal::Release;
use crate::lang::interp::RefKind;
use crate::plan::Plan;
use crate::state::StepRecord;

pub async fn deploy_alone(
    plan: &Plan,
    root: &Path,
    step_id: &str,
    release: Option<&Release>,
    to_stop: bool,
) -> Result<DeployRun, RunError> {
    let run_id = format!("deploy-{}", super::new_run_id(std::time::SystemTime::now(), std::process::id()));
    let mut ctx = RunContext::prepare(plan, root, run_id, &super::Trust::default()).await?;
    let n = plan
        .find(step_id)
        .ok_or_else(|| RenderError { reference: step_id.to_string(), reason: "no such step".into() })?;
    if let Some(r) = release {
        ctx.git.sha = r.git_sha.clone();
        // The environment as the release read it: rollback, resume and stop act
        // on that release, whatever (or nothing) the variables say now.
        let read = env_refs(&plan.graph[n]);
        ctx.env.extend(recorded_env(&r.inputs, &read).map(|(k, v)| (k.to_string(), v.to_string())));
    }
    // The outputs of earlier steps, as the release recorded them (`stage.step.key`).
    let ids: HashMap<String, usize> =
        plan.graph.node_indices().map(|i| (plan.graph[i].id.clone(), i.index())).collect();
    let records: Vec<StepRecord> = plan.graph.node_weights().map(|s| StepRecord::pending(&s.id)).collect();
    let mut outputs: Vec<BTreeMap<String, String>> = vec![BTreeMap::new(); plan.len()];
    for (reference, value) in release.map(|r| &r.inputs).into_iter().flatten() {
        if let Some((step, key)) = reference.rsplit_once('.')
            && let Some(&i) = ids.get(step)
        {
            outputs[i].insert(key.to_string(), value.clone());
        }
    }
    // Stopping needs nothing but the journal: instances are found by slot,
    // recorded group and tag, never by a value. What cannot be known now (an
    // unset secret or variable, an output a release did not record because it
    // held a secret) renders empty rather than leaving the service running.
    if to_stop {
        for kind in refs(&plan.graph[n]) {
            match kind {
                RefKind::Secret(name) => {
                    ctx.secrets.entry(name).or_default();
                }
                RefKind::Env(name) => {
                    ctx.env.entry(name).or_default();
                }
                RefKind::StepOutput { stage, step, key } => {
                    if let Some(&i) = ids.get(&format!("{stage}.{step}")) {
                        outputs[i].entry(key).or_default();
                    }
                }
                _ => {}
            }
        }
    }
    let view = View { ids: &ids, records: &records, outputs: &outputs };
    let rendered = ctx.render(&plan.graph[n], &view, &ctx.run_dir.join("unused-outputs"))?;
    match rendered.invocation {
        Invocation::Deploy(mut run) => {
            run.output_file = None;
            Ok(*run)
        }
        _ => Err(RenderError { reference: step_id.to_string(), reason: "is not a deploy step".into() }.into()),
    }
}

/// Every reference a step's templates make.
fn refs(step: &crate::plan::PlannedStep) -> Vec<RefKind> {
    let mut step = step.clone();
    crate::plan::templates_mut(&mut step)
        .into_iter()
        .flat_map(|(t, _)| t.refs().map(|r| r.kind.clone()).collect::<Vec<_>>())
        .collect()
}

/// The `${env.NAME}` names a step reads.
fn env_refs(step: &crate::plan::PlannedStep) -> BTreeSet<String> {
    refs(step)
        .into_iter()
        .filter_map(|kind| match kind {
            RefKind::Env(name) => Some(name),
            _ => None,
        })
        .collect()
}

/// The recorded environment values of `inputs`, of the names the step reads
/// and no others: a journal is read back, and a forged `env.NAME` of a name
/// the step does not reference must not reach its plugins' granted
/// environment or its conditions.
fn recorded_env<'a>(
    inputs: &'a BTreeMap<String, String>,
    read: &'a BTreeSet<String>,
) -> impl Iterator<Item = (&'a str, &'a str)> {
    inputs.iter().filter_map(move |(reference, value)| {
        let name = reference.strip_prefix(super::render_deploy::ENV_INPUT)?;
        read.contains(name).then_some((name, value.as_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_recorded_values_of_names_the_step_reads_are_taken() {
        let inputs: BTreeMap<String, String> =
            [("env.V", "v1"), ("env.PLUGIN_TOKEN", "forged"), ("build.app.image", "img"), ("env.stage.step.key", "x")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let read: BTreeSet<String> = ["V".to_string()].into();
        assert_eq!(recorded_env(&inputs, &read).collect::<Vec<_>>(), [("V", "v1")]);
    }
}
