//! Model -> [`Plan`]: expands matrices, wires `needs`, hooks and conditions into
//! graph edges, resolves references, and reports every cycle and dangling name.

use std::collections::{BTreeMap, HashMap, HashSet};

use petgraph::Direction;
use petgraph::algo::{DfsSpace, has_path_connecting};
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use super::cycles::{cycle_error, cycles};
use super::{Edge, Plan, PlanError, PlannedStep, Role, StageInstance};
use crate::lang::Loc;
use crate::lang::error::did_you_mean;
use crate::lang::interp::{RefKind, Template};
use crate::lang::model::{Action, Pipeline, Stage, Step, Test, Trigger};

/// The most instances one matrix stage may expand to.
pub const MAX_MATRIX: usize = 256;

pub fn plan(pipeline: &Pipeline) -> Result<Plan, Vec<PlanError>> {
    let mut p =
        Planner { p: pipeline, errs: Vec::new(), graph: DiGraph::new(), insts: Vec::new(), locs: HashMap::new() };
    p.expand();
    if let Some(e) = super::limits::size(pipeline, p.insts.iter().map(|i| &pipeline.stages[i.stage])) {
        return Err(vec![e]);
    }
    p.add_steps();
    let stage_needs = p.stage_needs();
    let before = p.errs.len();
    p.check_stage_cycles(&stage_needs);
    let stage_cycles = p.errs.len() > before;
    p.sibling_needs();
    p.stage_hooks();
    p.cross_needs(&stage_needs);
    p.pipeline_hooks();
    p.conditions();
    let outputs = p.references();
    // A stage cycle is also a step cycle: report it once, in the user's terms.
    if !stage_cycles && p.check_step_cycles() {
        p.check_outputs_upstream(&outputs);
    }
    if !p.errs.is_empty() {
        return Err(p.errs);
    }
    let stages = p
        .insts
        .iter()
        .zip(&stage_needs)
        .map(|(i, needs)| StageInstance {
            name: i.name.clone(),
            base: pipeline.stages[i.stage].name.clone(),
            matrix: i.matrix.clone(),
            needs: needs.iter().map(|(t, _)| p.insts[*t].name.clone()).collect(),
            changes: pipeline.stages[i.stage].changes.as_ref().map(|c| c.iter().map(|g| g.value.clone()).collect()),
        })
        .collect();
    Ok(Plan {
        pipeline: pipeline.name.clone(),
        dir: pipeline.dir.clone(),
        secrets: pipeline.secrets.clone(),
        services: pipeline.services.iter().chain(pipeline.stages.iter().flat_map(|s| &s.services)).cloned().collect(),
        graph: p.graph,
        stages,
        changes: pipeline
            .changes
            .as_ref()
            .map_or_else(|| vec!["**".to_string()], |c| c.iter().map(|g| g.value.clone()).collect()),
        on_push: pipeline.on_push.iter().map(|b| b.value.clone()).collect(),
    })
}

/// One stage instance (a matrix stage has one per combination).
struct Inst {
    name: String,
    stage: usize,
    matrix: BTreeMap<String, String>,
    steps: HashMap<String, NodeIndex>,
    /// Main steps in written order.
    mains: Vec<NodeIndex>,
    /// Last step of each hook chain: what dependents wait for after the main steps.
    hook_tails: Vec<NodeIndex>,
}

struct Planner<'a> {
    p: &'a Pipeline,
    errs: Vec<PlanError>,
    graph: DiGraph<PlannedStep, Edge>,
    insts: Vec<Inst>,
    /// Where each user-written edge came from, to point at it in a cycle.
    locs: HashMap<(NodeIndex, NodeIndex), Loc>,
}

type NeedList = Vec<(usize, Loc)>;

impl Planner<'_> {
    fn expand(&mut self) {
        for (si, stage) in self.p.stages.iter().enumerate() {
            let Some(matrix) = &stage.matrix else {
                self.insts.push(inst(stage.name.clone(), si, BTreeMap::new()));
                continue;
            };
            let count = matrix.axes.iter().fold(1usize, |n, a| n.saturating_mul(a.values.len()));
            if count > MAX_MATRIX {
                self.errs.push(PlanError::MatrixTooLarge {
                    stage: stage.name.clone(),
                    count,
                    max: MAX_MATRIX,
                    src: matrix.loc.src.named(),
                    span: matrix.loc.span,
                });
                continue;
            }
            let mut combos: Vec<Vec<(&str, &str)>> = vec![Vec::new()];
            for axis in &matrix.axes {
                combos = combos
                    .into_iter()
                    .flat_map(|c| {
                        axis.values.iter().map(move |v| {
                            let mut c = c.clone();
                            c.push((axis.name.as_str(), v.as_str()));
                            c
                        })
                    })
                    .collect();
            }
            for combo in combos {
                let values: Vec<&str> = combo.iter().map(|(_, v)| *v).collect();
                let name = format!("{}[{}]", stage.name, values.join(","));
                let map = combo.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                self.insts.push(inst(name, si, map));
            }
        }
    }

    fn add_steps(&mut self) {
        for ii in 0..self.insts.len() {
            let stage = &self.p.stages[self.insts[ii].stage];
            for step in &stage.steps {
                let id = format!("{}.{}", self.insts[ii].name, step.name);
                let ix = self.add(step, stage, ii, id, Role::Main);
                self.insts[ii].steps.insert(step.name.clone(), ix);
                self.insts[ii].mains.push(ix);
            }
        }
    }

    fn add(&mut self, step: &Step, stage: &Stage, ii: usize, id: String, role: Role) -> NodeIndex {
        self.errs.extend(super::limits::id(&id, step));
        let inst = &self.insts[ii];
        let mut when = stage.when.clone();
        when.extend(step.when.iter().cloned());
        self.graph.add_node(PlannedStep {
            id,
            stage: inst.name.clone(),
            name: step.name.clone(),
            role,
            action: step.action.clone(),
            env: vec![self.p.env.clone(), stage.env.clone(), step.env.clone()],
            matrix: inst.matrix.clone(),
            when,
            retry: step.retry,
            timeout: step.timeout.as_ref().map(|t| t.value),
            continue_on_error: step.continue_on_error,
            workdir: step.workdir.clone(),
            cache: step.cache.clone(),
            container: step.container.clone().or_else(|| stage.container.clone()).or_else(|| self.p.container.clone()),
            executor: stage.executor.clone().or_else(|| self.p.executor.clone()).unwrap_or_default(),
            fail_fast: stage.fail_fast,
            loc: step.loc.clone(),
        })
    }

    /// Resolves a stage name as written from inside instance `from`: a matrix base
    /// means the same instance when written from inside it, all instances otherwise.
    fn stage_ref(&self, from: Option<usize>, name: &str) -> Result<Vec<usize>, Option<String>> {
        if let Some(i) = self.insts.iter().position(|i| i.name == name) {
            return Ok(vec![i]);
        }
        if let Some(f) = from
            && self.p.stages[self.insts[f].stage].name == name
        {
            return Ok(vec![f]);
        }
        let all: Vec<usize> =
            (0..self.insts.len()).filter(|&i| self.p.stages[self.insts[i].stage].name == name).collect();
        if all.is_empty() { Err(did_you_mean(name, self.p.stages.iter().map(|s| s.name.as_str()))) } else { Ok(all) }
    }

    fn stage_needs(&mut self) -> Vec<NeedList> {
        let mut all = Vec::new();
        for ii in 0..self.insts.len() {
            let mut list = Vec::new();
            for need in &self.p.stages[self.insts[ii].stage].needs {
                match self.stage_ref(None, &need.value) {
                    Ok(targets) => list.extend(targets.into_iter().map(|t| (t, need.loc.clone()))),
                    Err(help) => self.errs.push(PlanError::unknown(&need.loc, &need.value, "stage", help)),
                }
            }
            all.push(list);
        }
        all
    }

    fn check_stage_cycles(&mut self, needs: &[NeedList]) {
        let mut g: DiGraph<usize, Loc> = DiGraph::new();
        let nodes: Vec<NodeIndex> = (0..self.insts.len()).map(|i| g.add_node(i)).collect();
        for (ii, list) in needs.iter().enumerate() {
            for (t, loc) in list {
                g.add_edge(nodes[*t], nodes[ii], loc.clone());
            }
        }
        for cycle in cycles(&g) {
            let names: Vec<&str> = cycle.iter().map(|&n| self.insts[g[n]].name.as_str()).collect();
            let loc = g.find_edge(cycle[0], cycle[1]).map(|e| g[e].clone());
            if let Some(loc) = loc {
                self.errs.push(cycle_error(&names, &loc));
            }
        }
    }

    fn sibling_needs(&mut self) {
        for ii in 0..self.insts.len() {
            let stage = &self.p.stages[self.insts[ii].stage];
            for step in &stage.steps {
                let to = self.insts[ii].steps[&step.name];
                for need in step.needs.iter().filter(|n| !n.value.contains('.')) {
                    if let Some(&from) = self.insts[ii].steps.get(&need.value) {
                        self.edge(from, to, Edge::Needs, Some(&need.loc));
                    }
                }
            }
        }
    }

    fn stage_hooks(&mut self) {
        for ii in 0..self.insts.len() {
            let stage = &self.p.stages[self.insts[ii].stage];
            let sinks = self.sinks(&self.insts[ii].mains);
            let name = self.insts[ii].name.clone();
            let tails = self.hook_chains(&stage.hooks, &sinks, |t, s| {
                (format!("{name}.{}.{}", t.keyword(), s.name), Role::StageHook(t), Some((stage, ii)))
            });
            self.insts[ii].hook_tails = tails;
        }
    }

    fn pipeline_hooks(&mut self) {
        let sinks: Vec<NodeIndex> = self
            .graph
            .node_indices()
            .filter(|&n| self.graph.edges_directed(n, Direction::Outgoing).next().is_none())
            .collect();
        let hooks = &self.p.hooks;
        self.hook_chains(hooks, &sinks, |t, s| (format!("{}.{}", t.keyword(), s.name), Role::PipelineHook(t), None));
    }

    /// Adds hook blocks as chains: each hook after the previous one, `always` after
    /// `on-success`/`on-failure`, all after `after`. Returns the chain tails.
    fn hook_chains<'s>(
        &mut self,
        hooks: &'s crate::lang::model::Hooks,
        after: &[NodeIndex],
        mut name: impl FnMut(Trigger, &Step) -> (String, Role, Option<(&'s Stage, usize)>),
    ) -> Vec<NodeIndex> {
        let mut tails = Vec::new();
        let mut always_after = after.to_vec();
        for (trigger, steps) in hooks.iter() {
            let start = if trigger == Trigger::Always { always_after.clone() } else { after.to_vec() };
            let mut prev = start;
            for step in steps {
                let (id, role, stage) = name(trigger, step);
                let ix = match stage {
                    Some((stage, ii)) => self.add(step, stage, ii, id, role),
                    None => self.add_pipeline_hook(step, id, role),
                };
                for &p in &prev {
                    self.edge(p, ix, Edge::After, None);
                }
                prev = vec![ix];
            }
            if let (false, Some(&last)) = (steps.is_empty(), prev.last()) {
                if trigger == Trigger::Always {
                    tails = vec![last];
                } else {
                    always_after.push(last);
                    tails.push(last);
                }
            }
        }
        if !hooks.always.is_empty() {
            tails.truncate(1);
        }
        tails
    }

    fn add_pipeline_hook(&mut self, step: &Step, id: String, role: Role) -> NodeIndex {
        self.graph.add_node(PlannedStep {
            id,
            stage: String::new(),
            name: step.name.clone(),
            role,
            action: step.action.clone(),
            env: vec![self.p.env.clone(), step.env.clone()],
            matrix: BTreeMap::new(),
            when: step.when.clone(),
            retry: step.retry,
            timeout: step.timeout.as_ref().map(|t| t.value),
            continue_on_error: step.continue_on_error,
            workdir: step.workdir.clone(),
            cache: step.cache.clone(),
            container: step.container.clone().or_else(|| self.p.container.clone()),
            executor: self.p.executor.clone().unwrap_or_default(),
            fail_fast: crate::lang::model::FailFast::Run,
            loc: step.loc.clone(),
        })
    }

    /// Stage `needs` and `stage.step` step needs, which cross stage instances.
    fn cross_needs(&mut self, stage_needs: &[NeedList]) {
        for (ii, list) in stage_needs.iter().enumerate() {
            let sources = self.sources(&self.insts[ii].mains);
            for (t, loc) in list {
                let target_sinks = self.sinks(&self.insts[*t].mains);
                let tails = self.insts[*t].hook_tails.clone();
                for &s in &sources {
                    for &from in &target_sinks {
                        self.edge(from, s, Edge::Needs, Some(loc));
                    }
                    for &from in &tails {
                        self.edge(from, s, Edge::After, Some(loc));
                    }
                }
            }
        }
        for ii in 0..self.insts.len() {
            let stage = &self.p.stages[self.insts[ii].stage];
            for step in &stage.steps {
                let to = self.insts[ii].steps[&step.name];
                for need in &step.needs {
                    if !need.value.contains('.') && self.insts[ii].steps.contains_key(&need.value) {
                        continue; // a sibling, wired already
                    }
                    match self.step_targets(Some(ii), &need.value) {
                        Ok(froms) => froms.into_iter().for_each(|f| self.edge(f, to, Edge::Needs, Some(&need.loc))),
                        Err(help) => self.errs.push(PlanError::unknown(&need.loc, &need.value, "step or stage", help)),
                    }
                }
            }
        }
    }

    /// `stage.step`, a sibling step name, or a whole stage (its last steps).
    fn step_targets(&self, from: Option<usize>, target: &str) -> Result<Vec<NodeIndex>, Option<String>> {
        if let Some((stage, step)) = split_step(target) {
            let insts = self.stage_ref(from, stage)?;
            let found: Vec<NodeIndex> = insts.iter().filter_map(|&i| self.insts[i].steps.get(step).copied()).collect();
            if found.len() == insts.len() {
                return Ok(found);
            }
            let known = self.insts[insts[0]].steps.keys().map(String::as_str);
            return Err(did_you_mean(step, known).or_else(|| Some(format!("stage `{stage}` has no step `{step}`"))));
        }
        if let Some(f) = from
            && let Some(&ix) = self.insts[f].steps.get(target)
        {
            return Ok(vec![ix]);
        }
        let insts = self.stage_ref(from, target).map_err(|help| {
            let siblings = from.into_iter().flat_map(|f| self.insts[f].steps.keys().map(String::as_str));
            did_you_mean(target, siblings).or(help)
        })?;
        Ok(insts.iter().flat_map(|&i| self.sinks(&self.insts[i].mains)).collect())
    }

    fn conditions(&mut self) {
        for n in self.graph.node_indices().collect::<Vec<_>>() {
            let ii = self.inst_of(n);
            let mut resolved = Vec::new();
            for (ci, cond) in self.graph[n].when.iter().enumerate() {
                let step = match &cond.test {
                    Test::Outcome { step, .. } | Test::Output { step, .. } => step,
                    _ => continue,
                };
                match self.step_targets(ii, &step.value) {
                    Ok(t) if t.len() == 1 => resolved.push((ci, t[0], step.loc.clone())),
                    Ok(_) => self.errs.push(PlanError::unresolved(
                        &step.loc,
                        &step.value,
                        "names more than one step",
                        Some("name one step, with its matrix instance: stage[value].step".into()),
                    )),
                    Err(help) => self.errs.push(PlanError::unknown(&step.loc, &step.value, "step", help)),
                }
            }
            for (ci, target, loc) in resolved {
                let id = self.graph[target].id.clone();
                if let Test::Outcome { step, .. } | Test::Output { step, .. } = &mut self.graph[n].when[ci].test {
                    step.value = id;
                }
                self.edge(target, n, Edge::After, Some(&loc));
            }
        }
    }

    /// Checks and resolves every `${…}` in a step; returns the output references
    /// as (step, target, where) to check they run upstream.
    fn references(&mut self) -> Vec<(NodeIndex, NodeIndex, Loc, String)> {
        let mut outputs = Vec::new();
        for n in self.graph.node_indices().collect::<Vec<_>>() {
            let ii = self.inst_of(n);
            let mut step = self.graph[n].clone();
            let matrix = step.matrix.clone();
            for (t, scope) in templates_mut(&mut step) {
                for r in t.refs_mut() {
                    match &mut r.kind {
                        RefKind::Slot(_) if scope != Scope::Instance => {
                            let help = Some(
                                "`${slot.…}` exists in a deploy's `instance` (its start command, env, image)".into(),
                            );
                            self.errs.push(PlanError::unresolved(
                                &r.loc,
                                &r.text,
                                "not inside a deploy instance",
                                help,
                            ));
                        }
                        RefKind::DeployVersion if scope == Scope::Step => {
                            let help = Some("`${deploy.version}` exists inside a `deploy` block".into());
                            self.errs.push(PlanError::unresolved(&r.loc, &r.text, "not inside a deploy", help));
                        }
                        RefKind::Matrix(key) if !matrix.contains_key(key.as_str()) => {
                            let help = if matrix.is_empty() {
                                Some("only steps of a stage with a `matrix` have matrix values".into())
                            } else {
                                did_you_mean(key, matrix.keys().map(String::as_str))
                            };
                            self.errs.push(PlanError::unresolved(&r.loc, &r.text, "no such matrix axis", help));
                        }
                        RefKind::Secret(name) if !self.p.secrets.declares(name) && self.p.secrets.files.is_empty() => {
                            let help = Some(format!("declare it: secrets {{ from-env \"{name}\" }}"));
                            self.errs.push(PlanError::unresolved(&r.loc, &r.text, "secret not declared", help));
                        }
                        RefKind::StepOutput { stage, step: name, .. } => {
                            let target = format!("{stage}.{name}");
                            match self.step_targets(ii, &target) {
                                Ok(t) if t.len() == 1 => {
                                    *stage = self.graph[t[0]].stage.clone();
                                    outputs.push((n, t[0], r.loc.clone(), r.text.clone()));
                                }
                                Ok(_) => self.errs.push(PlanError::unresolved(
                                    &r.loc,
                                    &r.text,
                                    "a matrix stage has one output per instance",
                                    Some("name the instance: steps.stage[value].step.outputs.key".into()),
                                )),
                                Err(help) => {
                                    self.errs.push(PlanError::unresolved(&r.loc, &r.text, "no such step", help))
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            self.graph[n] = step;
        }
        outputs
    }

    /// Reports step cycles; true when there are none.
    fn check_step_cycles(&mut self) -> bool {
        let cycles = cycles(&self.graph);
        let none = cycles.is_empty();
        for cycle in cycles {
            let names: Vec<&str> = cycle.iter().map(|&n| self.graph[n].id.as_str()).collect();
            let loc = self.locs.get(&(cycle[0], cycle[1])).cloned().unwrap_or_else(|| self.graph[cycle[1]].loc.clone());
            self.errs.push(cycle_error(&names, &loc));
        }
        none
    }

    fn check_outputs_upstream(&mut self, outputs: &[(NodeIndex, NodeIndex, Loc, String)]) {
        let mut space = DfsSpace::new(&self.graph);
        for (n, target, loc, text) in outputs {
            if !has_path_connecting(&self.graph, *target, *n, Some(&mut space)) {
                let (step, dep) = (&self.graph[*n].id, &self.graph[*target].id);
                self.errs.push(PlanError::unresolved(
                    loc,
                    text,
                    format!("`{step}` does not need `{dep}`"),
                    Some(format!("add `needs \"{dep}\"` so its outputs exist when `{step}` starts")),
                ));
            }
        }
    }

    fn edge(&mut self, from: NodeIndex, to: NodeIndex, kind: Edge, loc: Option<&Loc>) {
        if let Some(e) = self.graph.find_edge(from, to) {
            if kind == Edge::Needs {
                self.graph[e] = Edge::Needs; // the stronger dependency wins
            }
            return;
        }
        self.graph.add_edge(from, to, kind);
        if let Some(loc) = loc {
            self.locs.insert((from, to), loc.clone());
        }
    }

    fn inst_of(&self, n: NodeIndex) -> Option<usize> {
        let stage = &self.graph[n].stage;
        self.insts.iter().position(|i| &i.name == stage)
    }

    /// Steps of `set` that nothing else in `set` depends on.
    fn sinks(&self, set: &[NodeIndex]) -> Vec<NodeIndex> {
        let inside: HashSet<NodeIndex> = set.iter().copied().collect();
        set.iter()
            .copied()
            .filter(|&n| !self.graph.edges_directed(n, Direction::Outgoing).any(|e| inside.contains(&e.target())))
            .collect()
    }

    /// Steps of `set` that depend on nothing else in `set`.
    fn sources(&self, set: &[NodeIndex]) -> Vec<NodeIndex> {
        let inside: HashSet<NodeIndex> = set.iter().copied().collect();
        set.iter()
            .copied()
            .filter(|&n| !self.graph.edges_directed(n, Direction::Incoming).any(|e| inside.contains(&e.source())))
            .collect()
    }
}

fn inst(name: String, stage: usize, matrix: BTreeMap<String, String>) -> Inst {
    Inst { name, stage, matrix, steps: HashMap::new(), mains: Vec::new(), hook_tails: Vec::new() }
}

/// `stage.step` split at the first dot outside a matrix instance's brackets.
pub(super) fn split_step(target: &str) -> Option<(&str, &str)> {
    let mut depth = 0usize;
    for (i, c) in target.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            '.' if depth == 0 => return Some((&target[..i], &target[i + 1..])),
            _ => {}
        }
    }
    None
}

/// Where a template sits, for references that exist only in some places.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Step,
    /// A deployment's own settings: `${deploy.version}` exists here.
    Deploy,
    /// A deployment's instance: `${slot.*}` exists here too.
    Instance,
}

/// Every template of a step, with where it sits.
pub fn templates_mut(step: &mut PlannedStep) -> Vec<(&mut Template, Scope)> {
    fn scoped<'a>(scope: Scope, ts: impl Iterator<Item = &'a mut Template>) -> Vec<(&'a mut Template, Scope)> {
        ts.map(|t| (t, scope)).collect()
    }
    let mut out: Vec<(&mut Template, Scope)> = Vec::new();
    match &mut step.action {
        Action::Run(run) => out.push((&mut run.script, Scope::Step)),
        Action::Plugin(call) => {
            out.extend(scoped(Scope::Step, call.config.iter_mut().map(|(_, t)| t)));
            out.extend(scoped(Scope::Step, call.grants.templates_mut()));
        }
        Action::ImageBuild(b) => {
            out.push((&mut b.context, Scope::Step));
            out.extend(scoped(Scope::Step, b.tags.iter_mut()));
            out.extend(scoped(Scope::Step, b.args.iter_mut().chain(b.labels.iter_mut()).map(|(_, t)| t)));
        }
        Action::Approve(a) => out.push((&mut a.message, Scope::Step)),
        Action::Deploy(d) => {
            let (instance, own) = d.templates_mut();
            out.extend(scoped(Scope::Instance, instance.into_iter()));
            out.extend(scoped(Scope::Deploy, own.into_iter()));
        }
    }
    for env in &mut step.env {
        out.extend(env.0.iter_mut().map(|v| (&mut v.value, Scope::Step)));
    }
    out.extend(step.workdir.as_mut().map(|t| (t, Scope::Step)));
    out.extend(step.container.as_mut().map(|c| (&mut c.image, Scope::Step)));
    out
}
