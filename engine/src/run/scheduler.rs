//! The scheduler: walks the plan's DAG, starting each step as soon as what it
//! depends on has finished, at most `jobs` at once. The first real failure (or
//! Ctrl-C / SIGTERM) cancels running steps and skips pending ones; hooks still run.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use petgraph::Direction;
use petgraph::graph::NodeIndex;
use petgraph::visit::EdgeRef;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::attempt::{self, Finished, Job};
use super::cache::CacheJob;
use super::context::{RunContext, View};
use crate::event::{Event, Events};
use crate::lang::model::{FailFast, Trigger};
use crate::plan::{Edge, Plan, Role};
use crate::state::record::log_path;
use crate::state::{RunStatus, Status, StepRecord, Timing, file_safe};
use crate::step::StepLog;

pub struct Scheduler<'p> {
    plan: &'p Plan,
    ctx: Arc<RunContext>,
    jobs: usize,
    events: Events,
    records: Vec<StepRecord>,
    outputs: Vec<BTreeMap<String, String>>,
    ids: HashMap<String, usize>,
    /// Steps that succeeded in an earlier run and are not run again (`--rerun-failed`).
    reuse: HashMap<String, StepRecord>,
    remaining: Vec<usize>,
    aborting: bool,
    interrupted: bool,
    /// Cancels main steps (fail-fast, first Ctrl-C).
    cancel: CancellationToken,
    /// Per stage as written (`fail-fast "stage"`): cancels its steps and
    /// matrix cells only; children of `cancel`.
    stage_cancel: HashMap<String, CancellationToken>,
    /// Cancels hooks too (a second Ctrl-C).
    /// Stage instances left out, and why.
    unaffected: HashMap<String, String>,
    /// When the run (and so its timeline) began.
    started: Instant,
    /// When each step became runnable.
    ready_at: Vec<Option<Instant>>,
    cancel_all: CancellationToken,
}

enum Decision {
    Run,
    Skip(String),
    Reuse(StepRecord),
}

impl<'p> Scheduler<'p> {
    pub fn new(plan: &'p Plan, ctx: Arc<RunContext>, jobs: usize, events: Events) -> Self {
        let records = plan.graph.node_weights().map(|s| StepRecord::pending(&s.id)).collect();
        let remaining =
            plan.graph.node_indices().map(|n| plan.graph.edges_directed(n, Direction::Incoming).count()).collect();
        let cancel_all = CancellationToken::new();
        let cancel = cancel_all.child_token();
        let stage_cancel =
            plan.graph.node_weights().map(|s| (s.stage_base().to_string(), cancel.child_token())).collect();
        Scheduler {
            plan,
            ctx,
            jobs: jobs.max(1),
            events,
            outputs: vec![BTreeMap::new(); plan.len()],
            ids: plan.graph.node_indices().map(|n| (plan.graph[n].id.clone(), n.index())).collect(),
            records,
            reuse: HashMap::new(),
            unaffected: HashMap::new(),
            remaining,
            started: Instant::now(),
            ready_at: vec![None; plan.len()],
            aborting: false,
            interrupted: false,
            cancel,
            stage_cancel,
            cancel_all,
        }
    }

    /// Stage instances left out of this run (`--affected`), with the reason.
    pub fn unaffected(mut self, stages: HashMap<String, String>) -> Self {
        self.unaffected = stages;
        self
    }

    pub fn reuse(mut self, records: impl IntoIterator<Item = StepRecord>) -> Self {
        self.reuse = records.into_iter().filter(|r| r.counts_as_success()).map(|r| (r.id.clone(), r)).collect();
        self
    }

    pub async fn run(mut self) -> (RunStatus, Vec<StepRecord>) {
        let mut signals = Signals::new();
        let mut ready: VecDeque<NodeIndex> =
            self.plan.graph.node_indices().filter(|n| self.remaining[n.index()] == 0).collect();
        let mut runnable: VecDeque<NodeIndex> = VecDeque::new();
        let mut running: JoinSet<(NodeIndex, Finished)> = JoinSet::new();
        let mut tasks: HashMap<tokio::task::Id, NodeIndex> = HashMap::new();
        loop {
            while let Some(n) = ready.pop_front() {
                match self.decide(n) {
                    Decision::Run => {
                        self.ready_at[n.index()] = Some(Instant::now());
                        runnable.push_back(n)
                    }
                    Decision::Skip(reason) => self.skip(n, reason, &mut ready),
                    Decision::Reuse(rec) => {
                        self.outputs[n.index()] = rec.outputs.clone();
                        self.finish(n, rec, &mut ready)
                    }
                }
            }
            while running.len() < self.jobs
                && let Some(n) = runnable.pop_front()
            {
                if let Some(why) = self.stopping(n) {
                    self.skip(n, why, &mut ready);
                    continue;
                }
                match self.start(n) {
                    Ok(job) => {
                        self.records[n.index()].status = Status::Running;
                        self.records[n.index()].command = Some(job.display.clone());
                        let task = running.spawn(async move { (n, attempt::run(job).await) });
                        tasks.insert(task.id(), n);
                    }
                    Err(reason) => self.fail_before_start(n, reason.to_string(), &mut ready),
                }
            }
            if !ready.is_empty() || (!runnable.is_empty() && running.len() < self.jobs) {
                continue;
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                joined = running.join_next() => {
                    let Some(joined) = joined else { continue };
                    match joined {
                        Ok((n, done)) => self.complete(n, done, &mut ready),
                        // An engine bug, but the step it ran must still end, as a failure.
                        Err(e) => match tasks.get(&e.id()) {
                            Some(&n) => self.fail_before_start(n, format!("internal error in pipe: {e}"), &mut ready),
                            None => tracing::error!(error = %e, "a step task ended abnormally"),
                        },
                    }
                }
                () = signals.next() => self.interrupt(),
            }
        }
        let failed = self.records.iter().any(StepRecord::is_failure);
        let status = match (self.interrupted, failed) {
            (true, _) => RunStatus::Interrupted,
            (false, true) => RunStatus::Failed,
            (false, false) => RunStatus::Succeeded,
        };
        (status, self.records)
    }

    fn interrupt(&mut self) {
        if self.interrupted {
            tracing::warn!("second interrupt: cancelling hooks too");
            self.cancel_all.cancel();
        }
        self.interrupted = true;
        self.aborting = true;
        self.cancel.cancel();
    }

    fn decide(&self, n: NodeIndex) -> Decision {
        let step = &self.plan.graph[n];
        if let Some(rec) = self.reuse.get(&step.id) {
            return Decision::Reuse(StepRecord { reason: Some("succeeded in the earlier run".into()), ..rec.clone() });
        }
        if self.cancel_all.is_cancelled() {
            return Decision::Skip("cancelled: the run was interrupted twice".into());
        }
        match step.role {
            Role::Main => {
                if let Some(why) = self.unaffected.get(&step.stage) {
                    return Decision::Skip(format!("unaffected ({why})"));
                }
                for e in self.plan.graph.edges_directed(n, Direction::Incoming) {
                    let dep = &self.records[e.source().index()];
                    if *e.weight() == Edge::Needs && !dep.counts_as_success() {
                        return Decision::Skip(format!("needs {} ({})", dep.id, dep.status.as_str()));
                    }
                }
                if let Some(why) = self.stopping(n) {
                    return Decision::Skip(why);
                }
            }
            Role::StageHook(trigger) => {
                let scope: Vec<&StepRecord> = self.scope(|s| s.role == Role::Main && s.stage == step.stage);
                if scope.iter().all(|r| r.attempts == 0) {
                    return Decision::Skip(format!("stage {} did not run", step.stage));
                }
                if let Some(why) = not_triggered(trigger, scope.iter().any(|r| r.is_failure())) {
                    return Decision::Skip(why);
                }
            }
            Role::PipelineHook(trigger) => {
                let failed = self.interrupted
                    || self.scope(|s| !matches!(s.role, Role::PipelineHook(_))).iter().any(|r| r.is_failure());
                if let Some(why) = not_triggered(trigger, failed) {
                    return Decision::Skip(why);
                }
            }
        }
        if !step.when.is_empty() {
            let view = self.view();
            let env = self.ctx.step_env(step, &view).unwrap_or_default();
            if let Some(c) = step.when.iter().find(|c| !self.ctx.holds(c, &env, &view)) {
                return Decision::Skip(format!("condition not met: {}", c.loc.text()));
            }
        }
        Decision::Run
    }

    fn start(&self, n: NodeIndex) -> Result<Job, super::RenderError> {
        let step = &self.plan.graph[n];
        let view = self.view();
        let output_file = self.ctx.run_dir.join("outputs").join(file_safe(&step.id));
        let rendered = self.ctx.render(step, &view, &output_file)?;
        let log =
            StepLog::new(log_path(&self.ctx.run_dir, &step.id), &step.id, self.events.clone(), self.ctx.masker.clone());
        let cancel = match (step.role.is_hook(), self.stage_cancel.get(step.stage_base())) {
            (true, _) => self.cancel_all.child_token(),
            (false, Some(stage)) => stage.child_token(),
            (false, None) => self.cancel.child_token(),
        };
        Ok(Job {
            step: step.id.clone(),
            timeout: step.timeout.or_else(|| rendered.invocation.default_timeout()),
            invocation: rendered.invocation,
            display: rendered.display,
            retry: step.retry,
            output_file,
            log,
            events: self.events.clone(),
            cancel,
            cache: match (&step.cache, &self.ctx.cache) {
                (Some(spec), Some(store)) => Some(CacheJob {
                    store: store.clone(),
                    spec: spec.clone(),
                    dir: self.ctx.dir.clone(),
                    masker: self.ctx.masker.clone(),
                }),
                _ => None,
            },
            trusted_cache: self.ctx.trusted_cache.clone(),
        })
    }

    fn complete(&mut self, n: NodeIndex, done: Finished, ready: &mut VecDeque<NodeIndex>) {
        let step = &self.plan.graph[n];
        let allowed = done.status == Status::Failed && step.continue_on_error;
        let masker = &self.ctx.masker;
        let rec = StepRecord {
            id: step.id.clone(),
            status: done.status,
            allowed_failure: allowed,
            exit_code: done.exit_code,
            attempts: done.attempts,
            duration_ms: done.duration.as_millis() as u64,
            outputs: done.outputs.iter().map(|(k, v)| (k.clone(), masker.mask(v))).collect(),
            reason: done.reason.map(|r| masker.mask(&r)),
            tail: if done.status == Status::Failed { done.tail } else { Vec::new() },
            command: self.records[n.index()].command.take(),
            details: done.details.map(|d| mask_json(d, masker)),
            timing: Some(Timing {
                ready_ms: self.ready_at[n.index()].map_or(0, |at| self.since_start(at)),
                attempts: done.spans.iter().map(|(a, b)| [self.since_start(*a), self.since_start(*b)]).collect(),
            }),
        };
        // Later steps read the outputs as written; the record keeps masked ones.
        self.outputs[n.index()] = done.outputs;
        self.finish(n, rec, ready);
    }

    fn since_start(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_millis() as u64
    }

    fn fail_before_start(&mut self, n: NodeIndex, reason: String, ready: &mut VecDeque<NodeIndex>) {
        let step = &self.plan.graph[n];
        let rec = StepRecord {
            status: Status::Failed,
            allowed_failure: step.continue_on_error,
            reason: Some(self.ctx.masker.mask(&reason)),
            ..self.records[n.index()].clone()
        };
        self.finish(n, rec, ready);
    }

    fn skip(&mut self, n: NodeIndex, reason: String, ready: &mut VecDeque<NodeIndex>) {
        let timing = Some(Timing { ready_ms: self.since_start(Instant::now()), attempts: Vec::new() });
        let rec =
            StepRecord { status: Status::Skipped, reason: Some(reason), timing, ..self.records[n.index()].clone() };
        self.finish(n, rec, ready);
    }

    fn finish(&mut self, n: NodeIndex, rec: StepRecord, ready: &mut VecDeque<NodeIndex>) {
        let step = &self.plan.graph[n];
        if rec.is_failure() && !step.role.is_hook() && !self.aborting {
            match step.fail_fast {
                FailFast::Run => {
                    tracing::debug!(step = %rec.id, "failing fast");
                    self.aborting = true;
                    self.cancel.cancel();
                }
                FailFast::Stage => {
                    if let Some(stage) = self.stage_cancel.get(step.stage_base()) {
                        stage.cancel();
                    }
                }
                // What needs it is skipped; nothing else is stopped.
                FailFast::Off => {}
            }
        }
        self.events.send(Event::StepFinished(rec.clone()));
        self.records[n.index()] = rec;
        let mut unblocked: Vec<NodeIndex> = Vec::new();
        for next in self.plan.graph.neighbors_directed(n, Direction::Outgoing) {
            let left = &mut self.remaining[next.index()];
            *left -= 1;
            if *left == 0 {
                unblocked.push(next);
            }
        }
        // Written order where the graph leaves a choice.
        unblocked.sort_unstable();
        ready.extend(unblocked);
    }

    /// Why a main step is not started: the run is stopping, or its stage
    /// (`fail-fast "stage"`) is.
    fn stopping(&self, n: NodeIndex) -> Option<String> {
        let step = &self.plan.graph[n];
        if step.role.is_hook() {
            return None;
        }
        if self.aborting {
            return Some("cancelled: the run is stopping".into());
        }
        let stage = self.stage_cancel.get(step.stage_base())?;
        stage.is_cancelled().then(|| format!("cancelled: a step of stage {} failed", step.stage_base()))
    }

    fn scope(&self, pick: impl Fn(&crate::plan::PlannedStep) -> bool) -> Vec<&StepRecord> {
        self.plan
            .graph
            .node_indices()
            .filter(|&n| pick(&self.plan.graph[n]))
            .map(|n| &self.records[n.index()])
            .collect()
    }

    fn view(&self) -> View<'_> {
        View { ids: &self.ids, records: &self.records, outputs: &self.outputs }
    }
}

/// A step kind's report as the record keeps it: every string masked.
fn mask_json(value: serde_json::Value, masker: &crate::step::Masker) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(masker.mask(&s)),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| mask_json(v, masker)).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, mask_json(v, masker))).collect()),
        other => other,
    }
}

fn not_triggered(trigger: Trigger, failed: bool) -> Option<String> {
    match (trigger, failed) {
        (Trigger::OnSuccess, true) => Some("on-success: something failed".into()),
        (Trigger::OnFailure, false) => Some("on-failure: nothing failed".into()),
        _ => None,
    }
}

/// SIGINT and SIGTERM as one stream; where they cannot be installed, never fires.
struct Signals(Option<(Signal, Signal)>);

impl Signals {
    fn new() -> Self {
        Signals(signal(SignalKind::interrupt()).and_then(|i| Ok((i, signal(SignalKind::terminate())?))).ok())
    }

    async fn next(&mut self) {
        match &mut self.0 {
            Some((int, term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::Scheduler;
    use crate::event::{Event, Events};
    use crate::lang::Source;
    use crate::plan::Plan;
    use crate::run::RunContext;
    use crate::state::{RunStatus, Status, StepRecord};

    fn plan(text: &str) -> Plan {
        let src = Source::new("t.kdl", "t.kdl", text);
        let pipelines = crate::lang::parse(&src).unwrap_or_else(|e| panic!("{:?}", e.0));
        crate::plan::plan(&pipelines[0]).unwrap_or_else(|e| panic!("{e:?}"))
    }

    /// Runs a plan with real processes in a scratch directory.
    fn run(plan: &Plan, jobs: usize, reuse: Vec<StepRecord>) -> (RunStatus, Vec<StepRecord>, Vec<Event>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ctx = Arc::new(RunContext::for_tests(plan, dir.path()));
        let (events, mut rx) = Events::channel();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let (status, records) = rt.block_on(Scheduler::new(plan, ctx, jobs, events).reuse(reuse).run());
        let mut seen = Vec::new();
        while let Ok(e) = rx.try_recv() {
            seen.push(e);
        }
        (status, records, seen)
    }

    fn status_of(records: &[StepRecord], id: &str) -> Status {
        records.iter().find(|r| r.id == id).map(|r| r.status).unwrap_or_else(|| panic!("no {id}"))
    }

    /// A failing matrix cell under each `fail-fast`: what it stops. The other
    /// cell sleeps (cancelled, or it succeeds); an unrelated stage sleeps a
    /// little longer; a stage needing the matrix is always skipped.
    #[test]
    fn fail_fast_stops_the_run_its_stage_or_nothing() {
        let cases = [
            ("", Status::Cancelled, Status::Cancelled),
            (r#"fail-fast "stage""#, Status::Cancelled, Status::Succeeded),
            ("fail-fast #false", Status::Succeeded, Status::Succeeded),
        ];
        for (setting, sibling, unrelated) in cases {
            let p = plan(&format!(
                r#"pipeline "p" {{
                    stage "build" {{
                        {setting}
                        matrix {{ os "bad" "good" }}
                        step "cell" {{ run "if [ ${{matrix.os}} = bad ]; then exit 3; fi; sleep 1" }}
                    }}
                    stage "lint" {{ step "slow" {{ run "sleep 1.5" }} }}
                    stage "ship" {{ needs "build"; step "it" {{ run "true" }} }}
                }}"#
            ));
            let (status, records, _) = run(&p, 4, Vec::new());
            assert_eq!(status, RunStatus::Failed, "{setting}");
            assert_eq!(status_of(&records, "build[bad].cell"), Status::Failed, "{setting}");
            assert_eq!(status_of(&records, "build[good].cell"), sibling, "{setting}: the other cell");
            assert_eq!(status_of(&records, "lint.slow"), unrelated, "{setting}: an unrelated stage");
            assert_eq!(status_of(&records, "ship.it"), Status::Skipped, "{setting}: what needs the matrix");
        }
    }

    #[test]
    fn a_failure_skips_dependents_cancels_siblings_and_runs_the_hooks() {
        let p = plan(
            r#"pipeline "p" {
                stage "a" { step "bad" { run "exit 3" }; step "slow" { run "sleep 30" } }
                stage "b" { needs "a"; step "never" { run "true" } }
                on-failure { step "report" { run "true" } }
                on-success { step "party" { run "true" } }
                always { step "tidy" { run "true" } }
            }"#,
        );
        let (status, records, _) = run(&p, 2, Vec::new());
        assert_eq!(status, RunStatus::Failed);
        assert_eq!(status_of(&records, "a.bad"), Status::Failed);
        assert_eq!(status_of(&records, "a.slow"), Status::Cancelled);
        assert_eq!(status_of(&records, "b.never"), Status::Skipped);
        assert_eq!(status_of(&records, "on-failure.report"), Status::Succeeded);
        assert_eq!(status_of(&records, "on-success.party"), Status::Skipped);
        assert_eq!(status_of(&records, "always.tidy"), Status::Succeeded);
    }

    #[test]
    fn an_allowed_failure_lets_dependents_run() {
        let p = plan(
            r#"pipeline "p" {
                stage "a" { step "lint" { run "false"; continue-on-error } }
                stage "b" { needs "a"; step "ship" { run "true" } }
            }"#,
        );
        let (status, records, _) = run(&p, 2, Vec::new());
        assert_eq!(status, RunStatus::Succeeded);
        assert_eq!(status_of(&records, "b.ship"), Status::Succeeded);
    }

    #[test]
    fn jobs_bounds_how_many_steps_run_at_once() {
        let p = plan(
            r#"pipeline "p" { stage "s" { step "a" { run "true" }; step "b" { run "true" }; step "c" { run "true" } } }"#,
        );
        let (_, _, events) = run(&p, 1, Vec::new());
        let (mut running, mut most) = (0i32, 0i32);
        for e in &events {
            match e {
                Event::StepStarted { .. } => running += 1,
                Event::StepFinished(_) => running -= 1,
                _ => {}
            }
            most = most.max(running);
        }
        assert_eq!(most, 1);
    }

    #[test]
    fn a_skip_propagates_through_needs_but_not_to_unrelated_steps() {
        let p = plan(
            r#"pipeline "p" {
                stage "a" { step "gated" { run "true"; when env="PIPE_TEST_NEVER_SET" } }
                stage "b" { step "after" { run "true"; needs "a.gated" }; step "free" { run "true" } }
            }"#,
        );
        let (status, records, _) = run(&p, 2, Vec::new());
        assert_eq!(status, RunStatus::Succeeded);
        assert_eq!(status_of(&records, "a.gated"), Status::Skipped);
        assert_eq!(status_of(&records, "b.after"), Status::Skipped);
        assert_eq!(status_of(&records, "b.free"), Status::Succeeded);
    }

    #[test]
    fn a_rerun_reuses_what_succeeded_and_runs_the_rest() {
        let p = plan(r#"pipeline "p" { stage "s" { step "done" { run "false" }; step "todo" { run "true" } } }"#);
        let mut earlier = StepRecord::pending("s.done");
        earlier.status = Status::Succeeded;
        let (status, records, _) = run(&p, 2, vec![earlier]);
        assert_eq!(status, RunStatus::Succeeded, "`s.done` would fail if it ran again");
        assert_eq!(records[0].reason.as_deref(), Some("succeeded in the earlier run"));
        assert_eq!(status_of(&records, "s.todo"), Status::Succeeded);
    }
}
