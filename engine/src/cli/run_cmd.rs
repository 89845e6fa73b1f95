//! `pipe run`: one pipeline, or with `--affected` every pipeline (or stage) a
//! change touches, the others reported as left out and why.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::commands::select;
use super::diagnostics::eprint;
use super::project::{Loaded, Project};
use super::{Format, RunArgs, exit, report};
use crate::event::{self, Events, Subscriber};
use crate::plan::{Affected, Plan};
use crate::run::{self, RecordWriter, RunOptions, Trust, git};
use crate::state::{RunRecord, RunStatus};

pub fn run(root: &Path, file: Option<&Path>, args: RunArgs) -> u8 {
    let project = Project::load(root, file);
    if !args.affected {
        let loaded = match select(&project, args.name.as_deref()) {
            Ok(l) => l,
            Err(code) => return code,
        };
        return run_one(root, loaded, &args, HashMap::new(), None, Trust::default());
    }
    // With --affected and no name: every pipeline here.
    let chosen: Vec<&Loaded> = match &args.name {
        Some(_) => match select(&project, args.name.as_deref()) {
            Ok(l) => vec![l],
            Err(code) => return code,
        },
        None => {
            project.errors.iter().for_each(|e| eprint(e.as_ref()));
            if !project.errors.is_empty() {
                return exit::INVALID;
            }
            project.pipelines.iter().collect()
        }
    };
    let mut code = exit::OK;
    for loaded in chosen {
        let Ok(plan) = &loaded.plan else { continue };
        let (since, files) = match changes(root, plan, args.since.as_deref()) {
            Ok(Some(found)) => found,
            Ok(None) => {
                note(args.format, &plan.pipeline, None, "no earlier commit to compare with: everything runs");
                code = code.max(run_one(root, loaded, &args, HashMap::new(), None, Trust::default()));
                continue;
            }
            Err(e) => {
                eprintln!("error: {}: cannot tell what changed: {e}", plan.pipeline);
                return exit::FAILED;
            }
        };
        match plan.affected(&files, &since, root) {
            Affected::Not(why) => note(args.format, &plan.pipeline, Some(&why), ""),
            Affected::Stages(left_out) => {
                code = code.max(run_one(root, loaded, &args, left_out.into_iter().collect(), None, Trust::default()));
            }
        }
    }
    code
}

/// Says a pipeline was left out (or why it runs whole), for people or tools.
fn note(format: Format, pipeline: &str, unaffected: Option<&str>, other: &str) {
    match (format, unaffected) {
        (Format::Json, Some(why)) => {
            let line = serde_json::json!({ "event": "pipeline-skipped", "pipeline": pipeline, "reason": format!("unaffected ({why})") });
            println!("{line}");
        }
        (Format::Json, None) => {}
        (Format::Human, Some(why)) => println!("↷ {pipeline} skipped: unaffected ({why})"),
        (Format::Human, None) => println!("{pipeline}: {other}"),
    }
}

/// What changed for this pipeline: since `--since`, else since the merge
/// base with the main branch (on another branch), else since its last
/// successful run. `None`: nothing to compare with.
pub fn changes(root: &Path, plan: &Plan, since: Option<&str>) -> Result<Option<(String, Vec<PathBuf>)>, String> {
    let dir = &plan.dir;
    let base = match since {
        Some(rev) => Some(git::resolve(dir, rev).ok_or_else(|| format!("`{rev}` names no commit"))?),
        None => {
            let head = git::GitInfo::detect(dir);
            let main = git::main_branch(dir);
            match main {
                Some(m) if !head.branch.is_empty() && head.branch != m => git::merge_base(dir, "HEAD", m),
                _ => RunRecord::list(root)
                    .into_iter()
                    .rev()
                    .find(|r| r.pipeline == plan.pipeline && r.status == RunStatus::Succeeded && !r.git_sha.is_empty())
                    .map(|r| r.git_sha)
                    .filter(|sha| git::resolve(dir, sha).is_some()),
            }
        }
    };
    let Some(base) = base else { return Ok(None) };
    let files = git::changed_since(dir, &base)?;
    Ok(Some((base[..base.len().min(7)].to_string(), files)))
}

/// Runs one pipeline; `unaffected` stages are left out with their reason.
pub fn run_one(
    root: &Path,
    loaded: &Loaded,
    args: &RunArgs,
    unaffected: HashMap<String, String>,
    trigger: Option<crate::state::record::Trigger>,
    trust: Trust,
) -> u8 {
    let Ok(mut plan) = loaded.plan.as_ref().cloned() else { return exit::INVALID };
    if !args.stages.is_empty() {
        plan = match plan.select_stages(&args.stages) {
            Ok(p) => p,
            Err(e) => {
                eprint(e.as_ref());
                return exit::INVALID;
            }
        };
    }
    let rerun = match args.rerun_failed.as_deref().map(|id| RunRecord::find(root, id)) {
        None => None,
        Some(Ok(rec)) if rec.pipeline == plan.pipeline => Some(rec),
        Some(Ok(rec)) => {
            eprintln!("error: run {} is of pipeline `{}`, not `{}`", rec.id, rec.pipeline, plan.pipeline);
            return exit::INVALID;
        }
        Some(Err(e)) => {
            eprint(&e);
            return exit::INVALID;
        }
    };
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let opts = RunOptions {
        root: root.to_path_buf(),
        file: loaded.file.clone(),
        jobs,
        wait: args.wait,
        rerun,
        no_cache: args.no_cache,
        unaffected,
        trigger,
        trust,
    };
    let runtime = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let (events, rx) = Events::channel();
    let mut subscribers: Vec<Box<dyn Subscriber>> =
        vec![report::console(args.format, &plan), Box::new(RecordWriter::new(root.to_path_buf()))];
    let result = runtime.block_on(async {
        let (result, ()) = tokio::join!(run::run(&plan, opts, events), event::deliver(rx, &mut subscribers));
        result
    });
    match result {
        Ok(record) => record.status.exit_code() as u8,
        // Plugins are checked before anything starts, like the pipeline itself.
        Err(run::RunError::Plugins(errors)) => {
            errors.iter().for_each(|e| eprint(e));
            exit::INVALID
        }
        Err(e) => {
            eprint(&e);
            exit::FAILED
        }
    }
}
