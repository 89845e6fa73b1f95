//! The `pipe` command line: clap definitions, and the one place where errors
//! become rendered reports and exit codes.

mod commands;
mod deploy_cmd;
mod deploy_record;
mod diagnostics;
mod plugin_cmd;
mod project;
mod report;
mod run_cmd;
mod tools_cmd;
mod watch_branch;
mod watch_cmd;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::plan::GraphFormat;
pub use diagnostics::render;
pub use report::duration;

/// Exit codes, in one place.
pub mod exit {
    pub const OK: u8 = 0;
    /// The run failed (a step failed), or a runtime error stopped it.
    pub const FAILED: u8 = 1;
    /// Invalid pipeline or usage: nothing was started.
    pub const INVALID: u8 = 2;
    /// Interrupted by Ctrl-C or SIGTERM.
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, Parser)]
#[command(
    name = "pipe",
    version,
    about = "Pipelines as code: KDL files compiled into a DAG of steps and run",
    long_about = "Pipelines as code: KDL files compiled into a DAG of steps and run.\n\n\
        pipe finds pipe.kdl, pipelines/*.kdl and **/pipe.kdl below the current directory \
        (skipping what .gitignore ignores), checks them, and runs the one you name.",
    after_help = "Examples:\n  pipe run                 run the only pipeline here\n  \
        pipe run orders -j 4     run `orders`, four steps at a time\n  \
        pipe run --stage test    run `test` and the stages it needs\n  \
        pipe check               validate every pipeline\n  \
        pipe graph orders --format mermaid\n  \
        pipe logs last test.unit\n  \
        pipe approve             let the run waiting for approval go on"
)]
pub struct Cli {
    /// Run as if started in DIR.
    #[arg(short = 'C', long, global = true, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,

    /// Use this pipeline file instead of discovering them.
    #[arg(short, long, global = true, value_name = "FILE")]
    pub file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline.
    Run(RunArgs),
    /// Run every new commit of the branches pipelines accept (`on "push"`), in order.
    Watch(watch_cmd::WatchArgs),
    /// Validate pipelines without running anything.
    Check {
        /// Pipelines to check (default: all).
        names: Vec<String>,
    },
    /// List pipelines and their stages.
    List {
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Print a pipeline's step graph.
    Graph {
        name: Option<String>,
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
    /// Format pipeline files (the discovered ones, or FILEs); `--check` only reports.
    Fmt {
        files: Vec<PathBuf>,
        /// Change nothing; exit 1 if a file is not formatted.
        #[arg(long)]
        check: bool,
    },
    /// List recorded runs, newest last.
    Runs {
        /// Show at most this many runs.
        #[arg(short = 'n', long, default_value_t = 20)]
        limit: usize,
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Print the logs of a run (`last` for the newest), or of one of its steps.
    Logs {
        run: String,
        /// A step id (`stage.step`), or any unique end of one.
        step: Option<String>,
    },
    /// Where a run's HTML report is (timeline, graph, logs); `--open` opens it.
    Report {
        /// A run id, or `last` (the default).
        #[arg(default_value = "last")]
        run: String,
        /// Open it in the desktop's browser (xdg-open).
        #[arg(long)]
        open: bool,
    },
    /// Let a run waiting at an `approve` step (or a canary waiting for a person) go on.
    Approve(GateArgs),
    /// Refuse what a waiting run asks: the gate fails (a deployment rolls back).
    Abort {
        #[command(flatten)]
        gate: GateArgs,
        /// Why, for the run's log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// See and steer deployments: status, history, promote, abort, resume, rollback, stop.
    #[command(subcommand)]
    Deploy(deploy_cmd::DeployCommand),
    /// The step cache: its size, or `clear` to empty it.
    Cache {
        #[command(subcommand)]
        action: Option<CacheAction>,
    },
    /// Read or change a pipeline's persistent state.
    State {
        pipeline: String,
        #[command(subcommand)]
        action: Option<StateAction>,
    },
    /// Write, build, inspect and try plugins; pin their digests.
    #[command(subcommand)]
    Plugin(plugin_cmd::PluginCommand),
    /// Remove containers and networks left behind by runs that died.
    Gc,
    /// Write a commented starter pipe.kdl for this repository.
    Init,
    /// Print a shell completion script: `pipe completions bash > /etc/bash_completion.d/pipe`.
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline to run (needed when there are several).
    pub name: Option<String>,

    /// Run only this stage and what it needs (repeatable).
    #[arg(long = "stage", value_name = "STAGE")]
    pub stages: Vec<String>,

    /// How many steps run at once (default: the number of cores).
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,

    /// Rerun only what failed or was skipped in RUN (`last` for the newest).
    #[arg(long, value_name = "RUN")]
    pub rerun_failed: Option<String>,

    /// Wait for a running run of the same pipeline instead of failing.
    #[arg(long)]
    pub wait: bool,

    /// Run every step, ignoring the step cache (and storing nothing in it).
    #[arg(long)]
    pub no_cache: bool,

    /// Run only the pipelines and stages whose files changed (`changes`); without
    /// NAME, every pipeline here. The others are reported as left out, and why.
    #[arg(long)]
    pub affected: bool,

    /// With --affected: compare with this commit (default: the merge base with
    /// the main branch, or the pipeline's last successful run).
    #[arg(long, value_name = "REF", requires = "affected")]
    pub since: Option<String>,

    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Remove every entry.
    Clear,
}

#[derive(Debug, Args)]
pub struct GateArgs {
    /// The waiting run (default: the only run waiting).
    pub run: Option<String>,
    /// The waiting step, when the run waits at several.
    pub step: Option<String>,
    /// The SSH key that signs the decision, when the gate names approvers
    /// (a private key, or a public key whose private half is in ssh-agent).
    /// Default: ~/.ssh/id_ed25519, id_ecdsa, id_rsa, the first that exists.
    #[arg(long)]
    pub key: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum StateAction {
    /// Print one value.
    Get { key: String },
    /// Set a value.
    Set { key: String, value: String },
    /// Remove a value.
    Rm { key: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

/// The single-threaded runtime every async command runs on; an error is
/// reported here and becomes the exit code.
fn runtime() -> Result<tokio::runtime::Runtime, u8> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the async runtime: {e}");
        exit::FAILED
    })
}

/// Runs the command; returns the process exit code.
pub fn main(cli: Cli) -> u8 {
    commands::dispatch(cli)
}
