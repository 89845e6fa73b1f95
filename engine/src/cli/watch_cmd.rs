//! `pipe watch`: every new commit on a branch a pipeline accepts (`on "push"
//! branch="main"`) becomes a run, in commit order, without anyone typing a
//! command. Each branch is checked out in a worktree of its own
//! (`.pipe/watch/branches/<branch>-<hash>`, see [`super::watch_branch`]) whose
//! `.pipe/` holds that branch's records, cache, state and journal: a run of a
//! less trusted branch never writes where the trusted branch's runs read, and
//! may read the trusted branch's cache. A run's branch and commit come from
//! the trigger, in-process; its secrets are withheld as the trusted branch's
//! pipelines say. The last commit handled per branch is kept in
//! `.pipe/watch/state.json`, so a restarted watcher goes on where it stopped;
//! a force-pushed branch is followed from its new tip; a failing commit is
//! recorded and the next one runs; each branch keeps a bounded number of run
//! records; Ctrl-C or SIGTERM stops it (a run in progress is cancelled as a
//! run would be, and its commit is run again next time). Text that came from
//! the repository (branch names, commit subjects) is printed sanitized.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::project::Project;
use super::run_cmd::run_one;
use super::watch_branch::{self, worktree};
use super::{RunArgs, exit};
use crate::plan::Affected;
use crate::run::git::{self, GitInfo};
use crate::run::{Trust, secrets};
use crate::state::record::Trigger;
use crate::step::log::sanitize;

/// Run records kept per branch when neither `--keep-runs` nor `PIPE_KEEP_RUNS` says.
const KEEP_RUNS: usize = 50;

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
    /// The trusted branch (default: the remote's HEAD, else main, else master).
    #[arg(long, value_name = "BRANCH")]
    pub trusted: Option<String>,
    /// Run records kept per branch, the oldest deleted first [default: $PIPE_KEEP_RUNS, else 50].
    #[arg(long, value_name = "N")]
    pub keep_runs: Option<usize>,
}

/// The last commit handled, per branch.
#[derive(Default, Serialize, Deserialize)]
struct WatchState {
    branches: BTreeMap<String, String>,
}

struct Watcher<'a> {
    top: PathBuf,
    /// `.pipe/watch` of the repository.
    dir: PathBuf,
    args: &'a WatchArgs,
    trusted: Option<String>,
    keep_runs: usize,
}

pub fn watch(root: &Path, args: WatchArgs) -> u8 {
    let Some(top) = git::toplevel(root) else {
        eprintln!("error: pipe watch follows a git repository; {} is not in one", root.display());
        return exit::INVALID;
    };
    let dir = top.join(".pipe/watch");
    let state_file = dir.join("state.json");
    let mut state: WatchState =
        std::fs::read(&state_file).ok().and_then(|t| serde_json::from_slice(&t).ok()).unwrap_or_default();
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let keep_runs = args
        .keep_runs
        .or_else(|| std::env::var("PIPE_KEEP_RUNS").ok().and_then(|v| v.parse().ok()))
        .unwrap_or(KEEP_RUNS)
        .max(1);
    let trusted = watch_branch::trusted_branch(&top, args.remote.as_deref(), args.trusted.as_deref());
    let watcher = Watcher { top: top.clone(), dir, args: &args, trusted, keep_runs };
    let source = args.remote.as_deref().map_or("the local branches".to_string(), |r| format!("remote {r}"));
    println!("watching {source} of {} every {}", top.display(), humantime::format_duration(args.interval));
    match &watcher.trusted {
        Some(b) => println!("trusted branch: {}", sanitize(b)),
        None => println!("no trusted branch (no main nor master; see --trusted): no branch reads another's cache"),
    }
    loop {
        if let Some(remote) = &args.remote
            && !git::run(&top, &["fetch", "--quiet", "--prune", remote])
        {
            eprintln!(
                "warning: git fetch {remote} failed; trying again in {}",
                humantime::format_duration(args.interval)
            );
        }
        let Some(Branches { accepted: branches, existing }) = accepted_branches(&top, args.remote.as_deref()) else {
            eprintln!(
                "warning: cannot list the branches; trying again in {}",
                humantime::format_duration(args.interval)
            );
            if args.once || wait_or_stop(&rt, args.interval) {
                return exit::FAILED;
            }
            continue;
        };
        watcher.forget_deleted(&mut state, &existing, &state_file);
        watcher.ready_trusted(&branches, &state);
        for (branch, tip) in branches {
            let shown = sanitize(&branch);
            let Some(last) = state.branches.get(&branch).cloned() else {
                // A branch seen for the first time: from now on.
                println!("{shown}: following from {}", short(&tip));
                state.branches.insert(branch.clone(), tip.clone());
                save(&state_file, &state);
                continue;
            };
            if last == tip {
                continue;
            }
            let commits = if git::is_ancestor(&top, &last, &tip) {
                git::commits_between(&top, Some(&last), &tip)
            } else {
                let how = if git::resolve(&top, &last).is_some() { "is no longer on it" } else { "is gone" };
                println!("{shown} was force-pushed: {} {how}; following the new tip {}", short(&last), short(&tip));
                vec![tip.clone()]
            };
            for commit in commits {
                match watcher.handle(&branch, &commit) {
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
        if wait_or_stop(&rt, args.interval) {
            println!("stopped watching");
            return exit::OK;
        }
    }
}

/// Sleeps an interval; true when Ctrl-C or SIGTERM came first.
fn wait_or_stop(rt: &tokio::runtime::Runtime, interval: Duration) -> bool {
    rt.block_on(async {
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
            () = tokio::time::sleep(interval) => false,
            _ = tokio::signal::ctrl_c() => true,
            () = terminated => true,
        }
    })
}

enum Handled {
    Done,
    Stop,
}

impl Watcher<'_> {
    fn is_trusted(&self, branch: &str) -> bool {
        self.trusted.as_deref() == Some(branch)
    }

    /// A branch that was deleted leaves nothing behind: its worktree (with its
    /// records, cache and state) is removed, and it is forgotten. Branches
    /// come and go with whoever pushes them; what they leave must not grow.
    fn forget_deleted(&self, state: &mut WatchState, existing: &HashSet<String>, state_file: &Path) {
        let gone: Vec<String> =
            state.branches.keys().filter(|b| !existing.contains(*b) && !self.is_trusted(b)).cloned().collect();
        for branch in gone {
            let work = worktree(&self.dir, &branch);
            if work.exists() {
                let _ = git::output(&self.top, &["worktree", "remove", "--force", &work.to_string_lossy()]);
                if let Err(e) = std::fs::remove_dir_all(&work)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    eprintln!("warning: cannot remove {}: {e}", work.display());
                    continue;
                }
                let _ = git::output(&self.top, &["worktree", "prune"]);
            }
            println!("{} was deleted: its worktree and run records are removed", sanitize(&branch));
            state.branches.remove(&branch);
            save(state_file, state);
        }
    }

    /// The trusted branch's worktree exists (at the commit last handled, or
    /// its tip): its pipelines say which secrets other branches' runs get.
    fn ready_trusted(&self, branches: &[(String, String)], state: &WatchState) {
        let Some(trusted) = &self.trusted else { return };
        let work = worktree(&self.dir, trusted);
        if work.join(".git").exists() {
            return;
        }
        let tip = branches.iter().find(|(b, _)| b == trusted).map(|(_, tip)| tip.clone());
        let prefix = self.args.remote.as_deref().map_or("refs/heads/".to_string(), |r| format!("refs/remotes/{r}/"));
        // The commit last handled, unless a force-push took it away.
        let remembered = state.branches.get(trusted).filter(|c| git::resolve(&self.top, c).is_some()).cloned();
        let at = remembered.or(tip).or_else(|| git::resolve(&self.top, &format!("{prefix}{trusted}")));
        if let Some(at) = at
            && let Err(e) = watch_branch::checkout(&self.top, &work, &at)
        {
            eprintln!("error: trusted branch {} {}: cannot check it out: {e}", sanitize(trusted), short(&at));
        }
    }

    /// Secrets the trusted branch's pipelines restrict to branches that
    /// `branch` does not match. Without a trusted branch, the checkout pipe
    /// watch was started in says.
    fn withheld(&self, branch: &str) -> BTreeMap<String, String> {
        let from = match &self.trusted {
            Some(t) => worktree(&self.dir, t),
            None => self.top.clone(),
        };
        Project::load(&from, None)
            .pipelines
            .iter()
            .filter_map(|l| l.plan.as_ref().ok())
            .flat_map(|p| secrets::withheld(&p.secrets, branch))
            .collect()
    }

    /// What a run of `branch` at `commit` is told, not asked of its checkout.
    fn trust(&self, branch: &str, commit: &str) -> Trust {
        let git = Some(GitInfo { sha: commit.to_string(), branch: branch.to_string() });
        match &self.trusted {
            Some(t) if t != branch => {
                Trust { git, withheld: self.withheld(branch), trusted_root: Some(worktree(&self.dir, t)) }
            }
            None => Trust { git, withheld: self.withheld(branch), trusted_root: None },
            Some(_) => Trust { git, withheld: BTreeMap::new(), trusted_root: None },
        }
    }

    /// Runs the pipelines a commit affects, in the branch's worktree checked out at it.
    fn handle(&self, branch: &str, commit: &str) -> Handled {
        let shown = sanitize(branch);
        let work = worktree(&self.dir, branch);
        if let Err(e) = watch_branch::checkout(&self.top, &work, commit) {
            eprintln!("error: {shown} {}: cannot check it out: {e}", short(commit));
            return Handled::Done;
        }
        let subject = git::output(&self.top, &["log", "-1", "--format=%s", commit]).unwrap_or_default();
        let trusted = if self.is_trusted(branch) { "" } else { " (untrusted)" };
        println!("▶ {shown} {}{trusted} {}", short(commit), sanitize(&subject));
        let project = Project::load(&work, None);
        project.errors.iter().for_each(|e| super::diagnostics::eprint(e.as_ref()));
        let parent = git::resolve(&self.top, &format!("{commit}^"));
        let branch_glob = |g: &str| globset::Glob::new(g).is_ok_and(|g| g.compile_matcher().is_match(branch));
        let trigger = Trigger { kind: "push".into(), branch: branch.to_string(), commit: commit.to_string() };
        let trust = self.trust(branch, commit);
        let run_args = RunArgs {
            name: None,
            stages: Vec::new(),
            jobs: self.args.jobs,
            rerun_failed: None,
            wait: true,
            format: super::Format::Human,
            no_cache: false,
            affected: true,
            since: None,
        };
        let mut handled = Handled::Done;
        for loaded in &project.pipelines {
            let Ok(plan) = &loaded.plan else { continue };
            if !plan.on_push.iter().any(|g| branch_glob(g)) {
                continue;
            }
            let name = sanitize(&plan.pipeline);
            let left_out: HashMap<String, String> = match &parent {
                Some(p) => match git::changed_since(&plan.dir, p).map(|f| plan.affected(&f, &short(p), &work)) {
                    Ok(Affected::Not(why)) => {
                        println!("↷ {name} skipped: unaffected ({})", sanitize(&why));
                        continue;
                    }
                    Ok(Affected::Stages(out)) => out.into_iter().collect(),
                    Err(e) => {
                        eprintln!("warning: {name}: cannot tell what changed ({e}); running it whole");
                        HashMap::new()
                    }
                },
                None => HashMap::new(),
            };
            let code = run_one(&work, loaded, &run_args, left_out, Some(trigger.clone()), trust.clone());
            if code == exit::INTERRUPTED {
                handled = Handled::Stop;
                break;
            }
            if code != exit::OK {
                println!("✗ {name} failed on {} ({shown}); watching goes on", short(commit));
            }
        }
        match crate::state::retention::prune_runs(&work, self.keep_runs) {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, branch = %shown, "deleted the oldest run records"),
            Err(e) => eprintln!("warning: {shown}: cannot delete old run records: {e}"),
        }
        handled
    }
}

/// Every branch (local, or of the remote) that a pipeline of the checkout
/// accepts, with its tip; and the names of all branches there are. `None`:
/// git could not say (not the same as no branch at all).
fn accepted_branches(top: &Path, remote: Option<&str>) -> Option<Branches> {
    let globs: Vec<globset::GlobMatcher> = Project::load(top, None)
        .pipelines
        .iter()
        .filter_map(|l| l.plan.as_ref().ok())
        .flat_map(|p| p.on_push.iter())
        .filter_map(|g| globset::Glob::new(g).ok().map(|g| g.compile_matcher()))
        .collect();
    let prefix = remote.map_or("refs/heads/".to_string(), |r| format!("refs/remotes/{r}/"));
    let refs = git::output(top, &["for-each-ref", "--format=%(refname) %(objectname)", &prefix])?;
    let all: Vec<(String, String)> = refs
        .lines()
        .filter_map(|line| {
            let (name, sha) = line.split_once(' ')?;
            let branch = name.strip_prefix(&prefix)?;
            (branch != "HEAD").then(|| (branch.to_string(), sha.to_string()))
        })
        .collect();
    let existing = all.iter().map(|(b, _)| b.clone()).collect();
    let accepted = all.into_iter().filter(|(b, _)| globs.iter().any(|g| g.is_match(b))).collect();
    Some(Branches { accepted, existing })
}

/// The branches there are, and those a pipeline accepts with their tips.
struct Branches {
    accepted: Vec<(String, String)>,
    existing: HashSet<String>,
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
