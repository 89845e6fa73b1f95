//! `pipe deploy …`: what is live and what is kept, finishing or undoing a
//! deployment a killed `pipe` left in progress, going back to the previous
//! release, and the history of a deployment.

use std::io::Write;
use std::path::Path;

use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use super::diagnostics::eprint;
use super::project::{Loaded, Project};
use super::{Format, exit};
use crate::deploy::journal::{Journal, Release, now};
use crate::deploy::{self, JournalStore, Report};
use crate::event::{Event, Events};
use crate::lang::model::Action;
use crate::state::StateStore;
use crate::step::StepLog;

#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// What is live, since when, what is kept for a rollback, what is in progress.
    Status {
        /// The pipeline (needed when several have deployments).
        pipeline: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Finish what a killed `pipe` left in progress.
    Resume { pipeline: Option<String>, deploy: Option<String> },
    /// Undo what is in progress, or go back to the previous release (at once
    /// while it is kept running, else by deploying it again).
    Rollback { pipeline: Option<String>, deploy: Option<String> },
    /// Every deploy, rollback and failure recorded, oldest first.
    History { pipeline: Option<String>, deploy: Option<String> },
    /// Stop every instance of a deployment (the proxy is not told): take the service down.
    Stop { pipeline: Option<String>, deploy: Option<String> },
    /// Let a canary waiting for a person go on to its next step.
    Promote {
        pipeline: Option<String>,
        deploy: Option<String>,
        /// The SSH key that signs the decision, when the deployment names
        /// approvers (default: ~/.ssh/id_ed25519, id_ecdsa, id_rsa).
        #[arg(long)]
        key: Option<std::path::PathBuf>,
    },
    /// Fail a canary waiting for a person: it is rolled back.
    Abort {
        pipeline: Option<String>,
        deploy: Option<String>,
        /// Why, for the log and the notifications.
        #[arg(long)]
        reason: Option<String>,
        /// The SSH key that signs the decision, as for `promote`.
        #[arg(long)]
        key: Option<std::path::PathBuf>,
    },
}

pub fn dispatch(root: &Path, file: Option<&Path>, command: DeployCommand) -> u8 {
    let project = Project::load(root, file);
    let (pipeline, deploy_name) = match &command {
        DeployCommand::Status { pipeline, .. } => (pipeline, &None),
        DeployCommand::Resume { pipeline, deploy }
        | DeployCommand::Rollback { pipeline, deploy }
        | DeployCommand::History { pipeline, deploy }
        | DeployCommand::Stop { pipeline, deploy }
        | DeployCommand::Promote { pipeline, deploy, .. }
        | DeployCommand::Abort { pipeline, deploy, .. } => (pipeline, deploy),
    };
    let loaded = match with_deploys(&project, pipeline.as_deref()) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Ok(plan) = &loaded.plan else { return exit::INVALID };
    // One entry per deployment (a deployment written in several stages is one
    // journal), with the first step that writes it.
    let mut deploys: Vec<(String, String)> = Vec::new();
    for s in plan.graph.node_weights() {
        if let Action::Deploy(d) = &s.action
            && !deploys.iter().any(|(_, n)| *n == d.name)
        {
            deploys.push((s.id.clone(), d.name.clone()));
        }
    }
    let store = StateStore::open(root, &plan.pipeline);
    match &command {
        DeployCommand::Status { format, .. } => status(&plan.pipeline, &deploys, &store, *format),
        DeployCommand::History { .. } => match pick(&deploys, deploy_name.as_deref()) {
            Ok((_, name)) => history(name, &store),
            Err(code) => code,
        },
        DeployCommand::Promote { key, .. } => match pick(&deploys, deploy_name.as_deref()) {
            Ok((_, name)) => decide(root, name, &store, (true, None), key.as_deref()),
            Err(code) => code,
        },
        DeployCommand::Abort { reason, key, .. } => match pick(&deploys, deploy_name.as_deref()) {
            Ok((_, name)) => decide(root, name, &store, (false, reason.clone()), key.as_deref()),
            Err(code) => code,
        },
        DeployCommand::Resume { .. } => act_on(root, loaded, &deploys, deploy_name.as_deref(), &store, Act::Resume),
        DeployCommand::Rollback { .. } => act_on(root, loaded, &deploys, deploy_name.as_deref(), &store, Act::Rollback),
        DeployCommand::Stop { .. } => act_on(root, loaded, &deploys, deploy_name.as_deref(), &store, Act::Stop),
    }
}

/// What a person asks of a deployment that runs it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    Resume,
    Rollback,
    Stop,
}

impl Act {
    fn name(self) -> &'static str {
        match self {
            Act::Resume => "resume",
            Act::Rollback => "rollback",
            Act::Stop => "stop",
        }
    }
}

fn act_on(
    root: &Path,
    loaded: &Loaded,
    deploys: &[(String, String)],
    name: Option<&str>,
    store: &StateStore,
    what: Act,
) -> u8 {
    match pick(deploys, name) {
        Ok((step, name)) => act(root, loaded, step, name, store, what),
        Err(code) => code,
    }
}

/// The pipeline named, or the only one with a deployment.
fn with_deploys<'p>(project: &'p Project, name: Option<&str>) -> Result<&'p Loaded, u8> {
    let has_deploy = |l: &Loaded| {
        l.plan.as_ref().is_ok_and(|p| p.graph.node_weights().any(|s| matches!(s.action, Action::Deploy(_))))
    };
    if let Some(name) = name {
        return match project.find(name) {
            Some(l) if has_deploy(l) => Ok(l),
            Some(_) => {
                eprintln!("error: pipeline `{name}` has no deployment");
                Err(exit::INVALID)
            }
            None => {
                eprintln!("error: no pipeline named `{name}`");
                Err(exit::INVALID)
            }
        };
    }
    let with: Vec<&Loaded> = project.pipelines.iter().filter(|l| has_deploy(l)).collect();
    match with.as_slice() {
        [one] => Ok(one),
        [] => {
            eprintln!("error: no pipeline here has a deployment");
            Err(exit::INVALID)
        }
        many => {
            let names: Vec<&str> = many.iter().map(|l| l.pipeline.name.as_str()).collect();
            eprintln!("error: several pipelines have deployments; name one: {}", names.join(", "));
            Err(exit::INVALID)
        }
    }
}

fn pick<'d>(deploys: &'d [(String, String)], name: Option<&str>) -> Result<(&'d str, &'d str), u8> {
    let found: Vec<&(String, String)> = deploys.iter().filter(|(_, n)| name.is_none_or(|want| n == want)).collect();
    match found.as_slice() {
        [(step, name)] => Ok((step, name)),
        [] => {
            eprintln!("error: no deployment `{}`", name.unwrap_or_default());
            Err(exit::INVALID)
        }
        _ => {
            let names: Vec<&str> = deploys.iter().map(|(_, n)| n.as_str()).collect();
            eprintln!("error: several deployments; name one: {}", names.join(", "));
            Err(exit::INVALID)
        }
    }
}

fn status(pipeline: &str, deploys: &[(String, String)], store: &StateStore, format: Format) -> u8 {
    let mut out = std::io::stdout().lock();
    for (_, name) in deploys {
        let journal = match JournalStore::new(store.clone(), name).load() {
            Ok(j) => j,
            Err(e) => {
                eprint(&e);
                return exit::FAILED;
            }
        };
        if format == Format::Json {
            let json = serde_json::json!({ "pipeline": pipeline, "deploy": name, "journal": journal });
            let _ = writeln!(out, "{json}");
            continue;
        }
        let _ = writeln!(out, "{name} (pipeline {pipeline})");
        for line in describe(&journal) {
            let _ = writeln!(out, "  {line}");
        }
    }
    exit::OK
}

/// The journal in words.
pub fn describe(j: &Journal) -> Vec<String> {
    let ago = |t: u64| super::report::duration(now().saturating_sub(t) * 1000);
    let mut lines = Vec::new();
    match &j.live {
        Some(r) => {
            let git = if r.git_sha.is_empty() { String::new() } else { format!(", git {}", short(&r.git_sha)) };
            lines.push(format!(
                "live        {} in {} since {} ago (run {}{git})",
                r.version,
                r.place(),
                ago(r.since),
                r.run_id
            ))
        }
        None => lines.push("live        nothing deployed yet".into()),
    }
    match (&j.previous, j.kept_until) {
        (Some(p), Some(until)) if until > now() => lines.push(format!(
            "previous    {} in {}, kept running for an instant rollback for {} more",
            p.version,
            p.place(),
            super::report::duration((until - now()) * 1000)
        )),
        (Some(p), Some(_)) => lines.push(format!(
            "previous    {} in {}, its keep time is over (stopped at the next deploy)",
            p.version,
            p.place()
        )),
        (Some(p), None) => lines.push(format!("previous    {} (stopped; a rollback deploys it again)", p.version)),
        (None, _) => {}
    }
    match &j.pending {
        Some(p) => {
            let alive = p.boot == crate::identity::Identity::current().boot
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid as i32), None).is_ok();
            let into = if p.to.slots.is_empty() { String::new() } else { format!(" into {}", p.to.place()) };
            let (state, next) =
                if alive { ("running", "") } else { ("stopped", ": `pipe deploy resume` or `pipe deploy rollback`") };
            lines.push(format!(
                "in progress a {} of {}{into}, {state} in phase `{}`, started {} ago (pid {}, run {}){next}",
                if p.action == deploy::journal::Action::Deploy { "deploy" } else { "rollback" },
                p.to.version,
                p.phase.name(),
                ago(p.started),
                p.pid,
                p.run_id
            ));
            if let Some(w) = p.weight {
                let from = p
                    .from
                    .as_ref()
                    .map(|f| format!(", {}% on {} in {}", 100 - w, f.version, f.place()))
                    .unwrap_or_default();
                lines.push(format!("weights     {w}% on {} (canary step {}){from}", p.to.version, p.step + 1));
            }
            if p.batch.number > 0 {
                let from = p.from.as_ref().map(|f| f.place()).unwrap_or_default();
                lines.push(format!(
                    "batch       {}: new serving in {}; old serving in {from}",
                    p.batch.number,
                    if p.to.slots.is_empty() { "no slot yet".to_string() } else { p.to.place() }
                ));
            }
            if let Some(v) = p.verdicts.last() {
                lines.push(format!("verdict     {} at {}%: {}", v.outcome, v.weight, v.reason));
            }
            if let Some(w) = &p.waiting {
                lines.push(format!("waiting for {w}"));
            }
        }
        None => lines.push("in progress nothing".into()),
    }
    if let Some(last) = j.history.last() {
        let note = if last.note.is_empty() { String::new() } else { format!(": {}", last.note) };
        let slots = if last.slot.contains(',') { "slots" } else { "slot" };
        lines.push(format!(
            "last        {} {} in {slots} {} {} ago{note}",
            last.outcome,
            last.version,
            last.slot,
            ago(last.at)
        ));
    }
    lines
}

/// `promote` and `abort`: the decision for the gate the deployment waits at,
/// written for the waiting `pipe` (another process) to read.
fn decide(root: &Path, name: &str, store: &StateStore, what: (bool, Option<String>), key: Option<&Path>) -> u8 {
    let (approved, reason) = what;
    let journal = match JournalStore::new(store.clone(), name).load() {
        Ok(j) => j,
        Err(e) => {
            eprint(&e);
            return exit::FAILED;
        }
    };
    let Some(p) = journal.pending.filter(|p| p.waiting.is_some()) else {
        eprintln!("error: `{name}` is not waiting for a person; see `pipe deploy status`");
        return exit::FAILED;
    };
    match crate::approval::decide(root, Some(&p.run_id), Some(&p.to.step), approved, reason, key) {
        Ok(_) => {
            let what = if approved { "promoted" } else { "aborted: it rolls back" };
            println!("{name}: {} {what}", p.to.version);
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILED
        }
    }
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(8)]
}

fn history(name: &str, store: &StateStore) -> u8 {
    let journal = match JournalStore::new(store.clone(), name).load() {
        Ok(j) => j,
        Err(e) => {
            eprint(&e);
            return exit::FAILED;
        }
    };
    let mut out = std::io::stdout().lock();
    if journal.history.is_empty() {
        let _ = writeln!(out, "no deploys of `{name}` recorded yet");
        return exit::OK;
    }
    let _ = writeln!(out, "{:<24} {:<12} {:<24} {:<8} {:<28} NOTE", "WHEN", "OUTCOME", "VERSION", "SLOT", "RUN");
    for e in &journal.history {
        let when = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.at));
        let _ =
            writeln!(out, "{when:<24} {:<12} {:<24} {:<8} {:<28} {}", e.outcome, e.version, e.slot, e.run_id, e.note);
    }
    exit::OK
}

fn act(root: &Path, loaded: &Loaded, step: &str, name: &str, store: &StateStore, what: Act) -> u8 {
    let Ok(plan) = &loaded.plan else { return exit::INVALID };
    let journal = match JournalStore::new(store.clone(), name).load() {
        Ok(j) => j,
        Err(e) => {
            eprint(&e);
            return exit::FAILED;
        }
    };
    // Which release the deployment is rendered for: the one in progress, the
    // previous one (a rollback that deploys it again), or the live one.
    let redeploy = what == Act::Rollback && journal.pending.is_none() && !journal.previous_kept();
    if what == Act::Rollback && journal.pending.is_none() && journal.previous.is_none() {
        eprintln!("error: `{name}` has no previous release to go back to");
        return exit::FAILED;
    }
    let release: Option<Release> = match (&journal.pending, redeploy) {
        (Some(p), _) => Some(p.to.clone()),
        (None, true) => match &journal.previous {
            Some(p) => Some(p.clone()),
            None => {
                eprintln!("error: `{name}` has no previous release to go back to");
                return exit::FAILED;
            }
        },
        (None, false) => journal.live.clone(),
    };
    // The step that put the release out, when the plan still has it.
    let step = release
        .as_ref()
        .map(|r| r.step.as_str())
        .filter(|s| plan.find(s).is_some_and(|n| matches!(plan.graph[n].action, Action::Deploy(_))))
        .unwrap_or(step);
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let (events, mut rx) = Events::channel();
    let result = runtime.block_on(async {
        let run = match crate::run::deploy_alone(plan, root, step, release.as_ref(), what == Act::Stop).await {
            Ok(r) => r,
            Err(e) => {
                eprint(&e);
                return Err(exit::FAILED);
            }
        };
        let started = (std::time::SystemTime::now(), std::time::Instant::now());
        let log_file = super::deploy_record::log_file(root, &run);
        if let Some(dir) = log_file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let log = StepLog::new(log_file, name, events, Default::default());
        let cancel = CancellationToken::new();
        let printing = async {
            while let Some(e) = rx.recv().await {
                if let Event::StepLog { line, .. } = e {
                    println!("{line}");
                }
            }
        };
        let acting = async {
            let (result, report): (Result<(), deploy::DeployError>, Report) = match (what, redeploy) {
                (Act::Resume, _) => deploy::resume(&run, &log, &cancel).await,
                (Act::Stop, _) => {
                    let stopped = deploy::stop(&run, &log).await;
                    let report = Report {
                        outcome: deploy::DeployOutcome::Stopped,
                        version: run.version.clone(),
                        ..Report::default()
                    };
                    (stopped, report)
                }
                (Act::Rollback, false) => deploy::rollback(&run, &log, &cancel).await,
                (Act::Rollback, true) => {
                    log.note(&format!("the previous release is no longer running: deploying {} again", run.version));
                    deploy::redeploy(&run, &log, &cancel).await
                }
            };
            if let Some(probe) = &report.probe {
                probe.lines().iter().for_each(|l| log.note(l));
            }
            let tail = log.finish();
            drop(log);
            // A deployment acted on by hand is a run: `pipe runs`, `pipe logs`, `pipe report`.
            let command = format!("pipe deploy {} {name}", what.name());
            let file = loaded.file.clone();
            let acted = super::deploy_record::Acted {
                command: &command,
                file,
                started,
                result: &result,
                report: &report,
                tail,
            };
            if let Err(e) = super::deploy_record::write(root, &run, acted) {
                eprintln!("warning: the run record of this {} could not be written: {e}", what.name());
            }
            (result, report)
        };
        let ((result, report), ()) = tokio::join!(acting, printing);
        Ok((result, report))
    });
    match result {
        Err(code) => code,
        Ok((Ok(()), report)) if report.slot.is_empty() => {
            println!("{name} {}", report.outcome);
            exit::OK
        }
        Ok((Ok(()), report)) => {
            println!("{name} {}: {} in slot {}", report.outcome, report.version, report.slot);
            exit::OK
        }
        Ok((Err(e), _)) => {
            eprint(&e);
            exit::FAILED
        }
    }
}
