//! One function per subcommand. Each returns the exit code; errors are rendered here.

use std::io::Write;
use std::path::Path;

use super::diagnostics::eprint;
use super::project::{Loaded, Project};
use super::report;
use super::{Cli, Command, Format, StateAction, exit};
use crate::plan::GraphFormat;
use crate::state::{RunRecord, StateStore};

pub fn dispatch(cli: Cli) -> u8 {
    // Absolute, so that paths handed to steps ($PIPE_OUTPUT) work from any workdir.
    let root = match std::fs::canonicalize(&cli.dir) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot use {} as the working directory: {e}", cli.dir.display());
            return exit::INVALID;
        }
    };
    let root = root.as_path();
    let file = cli.file.as_deref();
    match cli.command {
        Command::Run(args) => super::run_cmd::run(root, file, args),
        Command::Check { names } => check(root, file, &names),
        Command::List { format } => list(root, file, format),
        Command::Graph { name, format } => graph(root, file, name.as_deref(), format),
        Command::Runs { limit, format } => runs(root, limit, format),
        Command::Logs { run, step } => logs(root, &run, step.as_deref()),
        Command::State { pipeline, action } => state(root, &pipeline, action),
        Command::Plugin(command) => super::plugin_cmd::dispatch(root, file, command),
        Command::Gc => gc(),
        Command::Fmt { files, check } => super::tools_cmd::fmt(root, &files, check),
        Command::Completions { shell } => super::tools_cmd::completions(shell),
        Command::Init => super::tools_cmd::init(root),
        Command::Watch(args) => super::watch_cmd::watch(root, args),
        Command::Cache { action } => cache(root, action),
        Command::Report { run, open } => report(root, &run, open),
        Command::Approve(gate) => decide(root, gate, true, None),
        Command::Abort { gate, reason } => decide(root, gate, false, reason),
        Command::Deploy(command) => super::deploy_cmd::dispatch(root, file, command),
    }
}

/// `1 step`, `2 steps`.
fn count(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}

/// Entries `pipe cache` lists, most recently used first.
const SHOWN_ENTRIES: usize = 50;

/// `pipe cache [clear]`.
fn cache(root: &std::path::Path, action: Option<super::CacheAction>) -> u8 {
    let store = crate::run::cache::StepCache::open(root);
    match action {
        Some(super::CacheAction::Clear) => match store.clear() {
            Ok(()) => {
                println!("the step cache is empty");
                exit::OK
            }
            Err(e) => {
                eprintln!("error: cannot clear the step cache: {e}");
                exit::FAILED
            }
        },
        None => {
            let (entries, bytes) = store.usage();
            println!("{entries} entries, {} in .pipe/cache", bytesize::ByteSize::b(bytes));
            let listed = store.entries();
            if !listed.is_empty() {
                println!("\n{:<10} {:<32} {:>10} {:>7}  {:<12}  IMAGE", "USED", "STEP", "SIZE", "INPUTS", "KEY");
            }
            for e in listed.iter().take(SHOWN_ENTRIES) {
                let ago = std::time::SystemTime::now().duration_since(e.last_used).unwrap_or_default();
                // Read back from `.pipe`: shown as text, never as terminal codes.
                let step = e.entry.as_ref().map_or("(unreadable)".into(), |x| crate::step::log::sanitize(&x.step));
                let inputs = e.parts.as_ref().map_or("?".into(), |p| p.inputs.len().to_string());
                let short = |s: &str, n: usize| crate::step::log::sanitize(&s.chars().take(n).collect::<String>());
                let image = e.parts.as_ref().and_then(|p| p.image.as_deref()).map_or(String::new(), |i| short(i, 19));
                let key = short(&e.key, 12);
                println!(
                    "{:<10} {step:<32} {:>10} {inputs:>7}  {key:<12}  {}",
                    super::report::duration(ago.as_millis() as u64),
                    bytesize::ByteSize::b(e.bytes).to_string(),
                    image
                );
            }
            if listed.len() > SHOWN_ENTRIES {
                println!("… and {} more", listed.len() - SHOWN_ENTRIES);
            }
            exit::OK
        }
    }
}

/// `pipe report`: the run's page, written again if it is missing (a run
/// recorded before reports existed, or one cut off before it ended).
fn report(root: &std::path::Path, run: &str, open: bool) -> u8 {
    let record = match crate::state::RunRecord::find(root, run) {
        Ok(r) => r.settle(),
        Err(e) => {
            super::diagnostics::eprint(&e);
            return exit::FAILED;
        }
    };
    let path = crate::report::path(root, &record.id);
    let path = if path.exists() && record.status != crate::state::RunStatus::Running {
        path
    } else {
        match crate::report::write(root, &record) {
            Ok(p) => p,
            Err(e) => {
                super::diagnostics::eprint(&e);
                return exit::FAILED;
            }
        }
    };
    println!("{}", path.display());
    if open {
        match std::process::Command::new("xdg-open").arg(&path).status() {
            Ok(s) if s.success() => {}
            _ => {
                eprintln!("error: could not open it (xdg-open); open the path above in a browser");
                return exit::FAILED;
            }
        }
    }
    exit::OK
}

/// `pipe approve` / `pipe abort`: the decision, for the waiting run to read.
fn decide(root: &std::path::Path, gate: super::GateArgs, approved: bool, reason: Option<String>) -> u8 {
    let key = gate.key.as_deref();
    match crate::approval::decide(root, gate.run.as_deref(), gate.step.as_deref(), approved, reason, key) {
        Ok(w) => {
            let what = if approved { "approved" } else { "aborted" };
            let question = crate::approval::shown(&w.message);
            println!("{what}: {} of run {} ({question})", w.step, w.run);
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILED
        }
    }
}

/// The pipeline to work on, with its plan; on any problem, reports it and gives the exit code.
pub(super) fn select<'p>(project: &'p Project, name: Option<&str>) -> Result<&'p Loaded, u8> {
    // Without a name, a broken file might hold the pipeline meant: refuse to guess.
    if name.is_none() && !project.errors.is_empty() {
        project.errors.iter().for_each(|e| eprint(e.as_ref()));
        return Err(exit::INVALID);
    }
    let loaded = project.select(name).map_err(|e| {
        project.errors.iter().for_each(|e| eprint(e.as_ref()));
        eprint(&e);
        exit::INVALID
    })?;
    if let Err(errs) = &loaded.plan {
        errs.iter().for_each(|e| eprint(e));
        return Err(exit::INVALID);
    }
    if !project.errors.is_empty() {
        eprintln!("warning: {} problem(s) in other pipeline files; `pipe check` shows them", project.errors.len());
    }
    Ok(loaded)
}

fn check(root: &Path, file: Option<&Path>, names: &[String]) -> u8 {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let project = Project::load(root, file);
    let mut bad = project.errors.len();
    project.errors.iter().for_each(|e| eprint(e.as_ref()));
    for name in names.iter().filter(|n| project.find(n).is_none()) {
        eprintln!("error: no pipeline named `{name}`");
        bad += 1;
    }
    let mut good = 0;
    for p in project.pipelines.iter().filter(|p| names.is_empty() || names.contains(&p.pipeline.name)) {
        match &p.plan {
            Ok(plan) => {
                let problems = plugin_problems(&rt, plan, root);
                if problems > 0 {
                    bad += problems;
                    continue;
                }
                good += 1;
                println!(
                    "✓ {} ({}): {}, {}",
                    plan.pipeline,
                    p.file,
                    count(plan.stages.len(), "stage"),
                    count(plan.len(), "step")
                );
            }
            Err(errs) => {
                bad += errs.len();
                errs.iter().for_each(|e| eprint(e));
            }
        }
    }
    if bad > 0 {
        eprintln!("{good} pipeline(s) valid, {bad} problem(s)");
        exit::INVALID
    } else {
        exit::OK
    }
}

/// Checks the plugins a plan uses (capabilities granted, settings known), as
/// `pipe run` would; reports and counts the problems.
fn plugin_problems(rt: &tokio::runtime::Runtime, plan: &crate::plan::Plan, root: &Path) -> usize {
    match rt.block_on(crate::plugin::prepare(plan, root, crate::plugin::LockMode::CheckOnly)) {
        Ok(_) => 0,
        Err(errors) => {
            errors.iter().for_each(|e| eprint(e));
            errors.len()
        }
    }
}

fn list(root: &Path, file: Option<&Path>, format: Format) -> u8 {
    let project = Project::load(root, file);
    let mut out = std::io::stdout().lock();
    for p in &project.pipelines {
        let Ok(plan) = &p.plan else {
            let _ = writeln!(out, "{} ({}) — invalid, see `pipe check`", p.pipeline.name, p.file);
            continue;
        };
        if format == Format::Json {
            let stages: Vec<_> = plan
                .stages
                .iter()
                .map(|s| {
                    let steps: Vec<&str> =
                        plan.graph.node_weights().filter(|w| w.stage == s.name).map(|w| w.id.as_str()).collect();
                    serde_json::json!({ "name": s.name, "needs": s.needs, "steps": steps })
                })
                .collect();
            let _ =
                writeln!(out, "{}", serde_json::json!({ "pipeline": plan.pipeline, "file": p.file, "stages": stages }));
            continue;
        }
        let _ = writeln!(out, "{} ({}, {})", plan.pipeline, p.file, count(plan.len(), "step"));
        for s in &plan.stages {
            let count = plan.graph.node_weights().filter(|w| w.stage == s.name).count();
            let needs = if s.needs.is_empty() { String::new() } else { format!(" ← {}", s.needs.join(", ")) };
            let _ = writeln!(out, "  {}{needs} ({count} steps)", s.name);
        }
    }
    if project.errors.is_empty() { exit::OK } else { exit::INVALID }
}

fn graph(root: &Path, file: Option<&Path>, name: Option<&str>, format: GraphFormat) -> u8 {
    let project = Project::load(root, file);
    match select(&project, name) {
        Ok(Loaded { plan: Ok(plan), .. }) => {
            print!("{}", plan.render(format));
            exit::OK
        }
        Ok(_) => exit::INVALID,
        Err(code) => code,
    }
}

fn runs(root: &Path, limit: usize, format: Format) -> u8 {
    let all = RunRecord::list(root);
    let shown = &all[all.len().saturating_sub(limit)..];
    let mut out = std::io::stdout().lock();
    if format == Format::Json {
        for r in shown {
            let r = r.clone().settle();
            let _ = writeln!(out, "{}", serde_json::to_string(&r).unwrap_or_default());
        }
        return exit::OK;
    }
    if shown.is_empty() {
        let _ = writeln!(out, "no runs recorded yet");
        return exit::OK;
    }
    let _ =
        writeln!(out, "{:<26} {:<20} {:<12} {:>9}  {:<24} COMMIT", "RUN", "PIPELINE", "STATUS", "DURATION", "STARTED");
    for r in shown {
        let r = r.clone().settle();
        let sha: String = r.git_sha.chars().take(8).collect();
        let branch = if r.git_branch.is_empty() { String::new() } else { format!(" ({})", r.git_branch) };
        let _ = writeln!(
            out,
            "{:<26} {:<20} {:<12} {:>9}  {:<24} {sha}{branch}",
            r.id,
            r.pipeline,
            r.status.as_str(),
            report::duration(r.duration_ms),
            r.started_at
        );
    }
    exit::OK
}

fn logs(root: &Path, run: &str, step: Option<&str>) -> u8 {
    let record = match RunRecord::find(root, run) {
        Ok(r) => r,
        Err(e) => {
            eprint(&e);
            return exit::INVALID;
        }
    };
    let dir = crate::state::record::run_dir(root, &record.id);
    let chosen: Vec<&crate::state::StepRecord> = match step {
        None => record.steps.iter().collect(),
        Some(s) => {
            let exact: Vec<_> = record.steps.iter().filter(|r| r.id == s).collect();
            if exact.is_empty() {
                record.steps.iter().filter(|r| r.id.ends_with(&format!(".{s}"))).collect()
            } else {
                exact
            }
        }
    };
    if let (Some(s), true) = (step, chosen.len() != 1) {
        let ids: Vec<&str> = record.steps.iter().map(|r| r.id.as_str()).collect();
        eprintln!("error: `{s}` names {} steps of run {}; steps: {}", chosen.len(), record.id, ids.join(", "));
        return exit::INVALID;
    }
    let mut out = std::io::stdout().lock();
    for rec in chosen {
        let path = crate::state::record::log_path(&dir, &rec.id);
        let text = std::fs::read_to_string(&path)
            .or_else(|_| std::fs::read_to_string(path.with_extension("log.partial")))
            .unwrap_or_default();
        // A step that failed before it printed anything still says why.
        let why = rec.reason.as_deref().filter(|_| text.is_empty() && rec.is_failure());
        if step.is_none() {
            if text.is_empty() && why.is_none() {
                continue;
            }
            let _ = writeln!(out, "── {} ({}) ──", rec.id, rec.status.as_str());
        }
        let _ = write!(out, "{text}");
        match why {
            Some(why) => {
                // Read back from the record: shown as text, never as terminal codes.
                let why = crate::step::log::sanitize(why);
                let _ = writeln!(out, "[pipe] {} before printing anything: {why}", rec.status.as_str());
            }
            None if text.is_empty() => {
                let _ = writeln!(out, "[pipe] {} printed nothing ({})", rec.id, rec.status.as_str());
            }
            None => {}
        }
    }
    exit::OK
}

fn gc() -> u8 {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(async {
        let docker = crate::docker::client().await?;
        crate::docker::collect_garbage(docker).await
    });
    match result {
        Ok(n) => {
            println!("removed {n} container(s) and network(s) of dead runs");
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::FAILED
        }
    }
}

fn state(root: &Path, pipeline: &str, action: Option<StateAction>) -> u8 {
    let store = StateStore::open(root, pipeline);
    let result = match action {
        None => store.all().map(|m| m.iter().for_each(|(k, v)| println!("{k}={v}"))),
        Some(StateAction::Get { key }) => match store.get(&key) {
            Ok(Some(v)) => {
                println!("{v}");
                Ok(())
            }
            Ok(None) => {
                eprintln!("error: `{pipeline}` has no state `{key}`");
                return exit::FAILED;
            }
            Err(e) => Err(e),
        },
        Some(StateAction::Set { key, value }) => store.set(&key, &value),
        Some(StateAction::Rm { key }) => store.remove(&key),
    };
    match result {
        Ok(()) => exit::OK,
        Err(e) => {
            eprint(&e);
            exit::FAILED
        }
    }
}
