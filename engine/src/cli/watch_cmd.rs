//! `pipe watch`: every new commit on a branch a pipeline accepts (`on "push"
//! branch="main"`) becomes a run, in commit order, without anyone typing a
//! command. Commits are checked out in a worktree of the watcher's own
//! (`.pipe/watch/work`, with its own records: `pipe runs -C .pipe/watch/work`);
//! each runs the pipelines its changes affect. The last commit handled per
//! branch is kept in `.pipe/watch/state.json`, so a restarted watcher goes on
//! where it stopped; a failing commit is recorded and the next one runs; Ctrl-C
//! or SIGTERM stops it (a run in progress is cancelled as a run would be, and
//! its commit is run again next time).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::project::Project;
use super::run_cmd::run_one;
use super::{RunArgs, exit};
use crate::plan::Affected;
use crate::run::git;
use crate::state::record::Trigger;

#[derive(Debug, clap::Args)]
pub struct WatchArgs {
    /// Follow this remote's branches (fetched every interval) instead of the local ones.
    #[arg(long, value_name = "NAME")]
    pub remote: Option<String>,
    /// How often to look for new commits.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Handle the commits there are now, then exit.
    #[arg(long)]
    pub once: bool,
    /// How many steps run at once in each run.
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
}

/// The last commit handled, per branch.
#[derive(Default, Serialize, Deserialize)]
struct WatchState {
    branches: BTreeMap<String, String>,
}

pub fn watch(root: &Path, args: WatchArgs) -> u8 {
    let Some(top) = git::toplevel(root) else {
        eprintln!("error: pipe watch follows a git repository; {} is not in one", root.display());
        return exit::INVALID;
    };
    let dir = top.join(".pipe/watch");
    let state_file = dir.join("state.json");
    let work = dir.join("work");
    let mut state: WatchState =
        std::fs::read(&state_file).ok().and_then(|t| serde_json::from_slice(&t).ok()).unwrap_or_default();
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let source = args.remote.as_deref().map_or("the local branches".to_string(), |r| format!("remote {r}"));
    println!("watching {source} of {} every {}", top.display(), humantime::format_duration(args.interval));
    loop {
        if let Some(remote) = &args.remote
            && !git::run(&top, &["fetch", "--quiet", remote])
        {
            eprintln!(
                "warning: git fetch {remote} failed; trying again in {}",
                humantime::format_duration(args.interval)
            );
        }
        let branches = accepted_branches(&top, args.remote.as_deref());
        for (branch, tip) in branches {
            let Some(last) = state.branches.get(&branch).cloned() else {
                // A branch seen for the first time: from now on.
                println!("{branch}: following from {}", short(&tip));
                state.branches.insert(branch.clone(), tip.clone());
                save(&state_file, &state);
                continue;
            };
            if last == tip {
                continue;
            }
            for commit in git::commits_between(&top, Some(&last), &tip) {
                match handle(&top, &work, &branch, &commit, &args) {
                    Handled::Done => {
                        state.branches.insert(branch.clone(), commit.clone());
                        save(&state_file, &state);
                    }
                    Handled::Stop => return exit::INTERRUPTED,
                }
            }
        }
        if args.once {
            return exit::OK;
        }
        let stop = rt.block_on(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let terminated = async {
                match &mut term {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(args.interval) => false,
                _ = tokio::signal::ctrl_c() => true,
                () = terminated => true,
            }
        });
        if stop {
            println!("stopped watching");
            return exit::OK;
        }
    }
}

enum Handled {
    Done,
    Stop,
}

/// Runs the pipelines a commit affects, in a worktree checked out at it.
fn handle(top: &Path, work: &Path, branch: &str, commit: &str, args: &WatchArgs) -> Handled {
    if let Err(e) = checkout(top, work, commit) {
        eprintln!("error: {branch} {}: cannot check it out: {e}", short(commit));
        return Handled::Done;
    }
    let subject = git::output(top, &["log", "-1", "--format=%s", commit]).unwrap_or_default();
    println!("▶ {branch} {} {subject}", short(commit));
    let project = Project::load(work, None);
    project.errors.iter().for_each(|e| super::diagnostics::eprint(e.as_ref()));
    let parent = git::resolve(top, &format!("{commit}^"));
    let branch_glob = |g: &str| globset::Glob::new(g).is_ok_and(|g| g.compile_matcher().is_match(branch));
    let trigger = Trigger { kind: "push".into(), branch: branch.to_string(), commit: commit.to_string() };
    let run_args = RunArgs {
        name: None,
        stages: Vec::new(),
        jobs: args.jobs,
        rerun_failed: None,
        wait: true,
        format: super::Format::Human,
        no_cache: false,
        affected: true,
        since: None,
    };
    for loaded in &project.pipelines {
        let Ok(plan) = &loaded.plan else { continue };
        if !plan.on_push.iter().any(|g| branch_glob(g)) {
            continue;
        }
        let left_out = match &parent {
            Some(p) => match git::changed_since(&plan.dir, p).map(|files| plan.affected(&files, &short(p), work)) {
                Ok(Affected::Not(why)) => {
                    println!("↷ {} skipped: unaffected ({why})", plan.pipeline);
                    continue;
                }
                Ok(Affected::Stages(out)) => out.into_iter().collect(),
                Err(e) => {
                    eprintln!("warning: {}: cannot tell what changed ({e}); running it whole", plan.pipeline);
                    Default::default()
                }
            },
            None => Default::default(),
        };
        let code = run_one(work, loaded, &run_args, left_out, Some(trigger.clone()));
        if code == exit::INTERRUPTED {
            return Handled::Stop;
        }
        if code != exit::OK {
            println!("✗ {} failed on {} ({branch}); watching goes on", plan.pipeline, short(commit));
        }
    }
    Handled::Done
}

/// Every branch (local, or of the remote) that a pipeline of the checkout
/// accepts, with its tip.
fn accepted_branches(top: &Path, remote: Option<&str>) -> Vec<(String, String)> {
    let globs: Vec<globset::GlobMatcher> = Project::load(top, None)
        .pipelines
        .iter()
        .filter_map(|l| l.plan.as_ref().ok())
        .flat_map(|p| p.on_push.iter())
        .filter_map(|g| globset::Glob::new(g).ok().map(|g| g.compile_matcher()))
        .collect();
    let prefix = remote.map_or("refs/heads/".to_string(), |r| format!("refs/remotes/{r}/"));
    let refs = git::output(top, &["for-each-ref", "--format=%(refname) %(objectname)", &prefix]).unwrap_or_default();
    refs.lines()
        .filter_map(|line| {
            let (name, sha) = line.split_once(' ')?;
            let branch = name.strip_prefix(&prefix)?;
            (branch != "HEAD" && globs.iter().any(|g| g.is_match(branch)))
                .then(|| (branch.to_string(), sha.to_string()))
        })
        .collect()
}

fn checkout(top: &Path, work: &Path, commit: &str) -> Result<(), String> {
    if !work.join(".git").exists() {
        let _ = std::fs::remove_dir_all(work);
        if !git::run(top, &["worktree", "add", "--detach", "--force", &work.to_string_lossy(), commit]) {
            return Err("git worktree add failed".into());
        }
        return Ok(());
    }
    let ok = git::run(work, &["checkout", "--quiet", "--detach", "--force", commit])
        && git::run(work, &["clean", "-q", "-fdx", "-e", ".pipe"]);
    if ok { Ok(()) } else { Err("git checkout failed".into()) }
}

fn save(path: &Path, state: &WatchState) {
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Err(e) = crate::state::write_atomic(path, &serde_json::to_vec_pretty(state).unwrap_or_default()) {
        eprintln!("error: cannot remember the commits handled: {e}");
    }
}

fn short(sha: &str) -> String {
    sha[..sha.len().min(7)].to_string()
}
