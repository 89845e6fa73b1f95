//! `pipe plugin …`: tools for plugin authors (scaffold, build, inspect, run one
//! alone) and `pipe plugin lock` for pinning digests on purpose.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use super::diagnostics::eprint;
use super::exit;
use super::project::Project;
use crate::event::{Event, Events};
use crate::plugin::contract::Input;
use crate::plugin::{self, Call, DEFAULT_MEMORY, Granted, Host, LockMode, PluginRun, PluginState, Prepared, Resolved};
use crate::run::executor::{Invocation, execute};
use crate::step::{Exit, StepLog};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a plugin crate that builds as is.
    New {
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        path: Option<PathBuf>,
    },
    /// Build the plugin crate in DIR (default: here) for wasm32-wasip2.
    Build { dir: Option<PathBuf> },
    /// Show a plugin's name, version, interface version, settings and capabilities.
    Inspect {
        /// A `.wasm` file, or a name as a step's `uses` gives it (`http-check`).
        plugin: String,
        #[arg(long)]
        json: bool,
    },
    /// List the plugins steps can name, and where each comes from.
    List,
    /// Run one plugin alone with `key=value` settings, granting only what is given.
    Run {
        file: PathBuf,
        /// Settings, as `key=value`.
        settings: Vec<String>,
        #[arg(long = "allow-net", value_name = "HOST:PORT")]
        net: Vec<String>,
        #[arg(long = "allow-read", value_name = "DIR")]
        read: Vec<PathBuf>,
        #[arg(long = "allow-write", value_name = "DIR")]
        write: Vec<PathBuf>,
        /// A command it may run, as one shell-quoted string: "nginx -s reload".
        #[arg(long = "allow-exec", value_name = "COMMAND")]
        exec: Vec<String>,
        #[arg(long, default_value = "64MiB")]
        memory: String,
        #[arg(long, default_value = "5m")]
        timeout: humantime::Duration,
    },
    /// Pin the digest of every plugin the pipelines use in pipe.lock.
    Lock,
}

pub fn dispatch(root: &Path, file: Option<&Path>, command: PluginCommand) -> u8 {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match command {
        PluginCommand::New { name, path } => new(&name, path.unwrap_or_else(|| PathBuf::from(&name))),
        PluginCommand::Build { dir } => build(&dir.unwrap_or_else(|| PathBuf::from("."))),
        PluginCommand::Inspect { plugin, json } => rt.block_on(inspect(root, &plugin, json)),
        PluginCommand::List => rt.block_on(list(root)),
        PluginCommand::Run { file, settings, net, read, write, exec, memory, timeout } => {
            let granted =
                Granted { net, read: absolute(read), write: absolute(write), exec: split(exec), ..Granted::default() };
            let memory = crate::lang::parse_size(&memory).unwrap_or(DEFAULT_MEMORY);
            rt.block_on(run_alone(&file, &settings, granted, memory, timeout.into()))
        }
        PluginCommand::Lock => rt.block_on(lock(root, file)),
    }
}

async fn load(file: &Path) -> Result<Arc<Prepared>, u8> {
    let bytes = std::fs::read(file).map_err(|e| {
        eprintln!("error: cannot read {}: {e}", file.display());
        exit::INVALID
    })?;
    let sha256 = format!("{:x}", <sha2::Sha256 as sha2::Digest>::digest(&bytes));
    let name = file.display().to_string();
    prepare(Resolved { name: name.clone(), origin: name, bytes: bytes.into(), sha256 }).await
}

/// A file if `plugin` is one, else a name looked up as a step's `uses` would.
async fn find(root: &Path, plugin: &str) -> Result<Arc<Prepared>, u8> {
    let path = Path::new(plugin);
    if path.is_file() || plugin.ends_with(".wasm") || plugin.contains('/') {
        return load(path).await;
    }
    match plugin::resolve::by_name(plugin, root) {
        Some(Ok(resolved)) => prepare(resolved).await,
        Some(Err(e)) => {
            eprint(&e);
            Err(exit::INVALID)
        }
        None => {
            let names: Vec<String> = plugin::resolve::available(root).into_iter().map(|(n, _)| n).collect();
            let hint = crate::lang::error::did_you_mean(plugin, names.iter().map(String::as_str))
                .unwrap_or_else(|| format!("plugins: {}", names.join(", ")));
            eprintln!("error: no plugin `{plugin}` (no such file, and no plugin of that name); {hint}");
            Err(exit::INVALID)
        }
    }
}

async fn prepare(resolved: Resolved) -> Result<Arc<Prepared>, u8> {
    let fail = |e: &dyn miette::Diagnostic| {
        eprint(e);
        exit::INVALID
    };
    let host = Host::global().map_err(|e| fail(&e))?;
    let (component, version, _) =
        host.load(&resolved).map_err(|e| fail(&plugin::load_error(&resolved.name, e, None)))?;
    let info = host.describe(&resolved.name, &component, version).await.map_err(|e| fail(&e))?;
    Ok(Arc::new(Prepared { resolved, component, version, info }))
}

/// `pipe plugin list`: each plugin a step can name, where it comes from, what it is.
async fn list(root: &Path) -> u8 {
    println!("{:<18} {:<10} {:<28} FROM", "NAME", "VERSION", "ROLES");
    for (name, origin) in plugin::resolve::available(root) {
        let (version, roles) = match find(root, &name).await {
            Ok(p) => (p.info.version.clone(), p.info.roles.iter().map(|r| r.node()).collect::<Vec<_>>().join(", ")),
            Err(_) => ("?".into(), "(cannot be loaded)".into()),
        };
        println!("{name:<18} {version:<10} {roles:<28} {origin}");
    }
    exit::OK
}

async fn inspect(root: &Path, plugin: &str, json: bool) -> u8 {
    let p = match find(root, plugin).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let i = &p.info;
    if json {
        println!("{}", serde_json::to_string_pretty(i).unwrap_or_default());
        return exit::OK;
    }
    println!("{} {} — {}", i.name, i.version, i.summary);
    println!("interface   pipe:plugin@{}", i.interface);
    println!("from        {}", p.resolved.origin);
    println!("sha256      {}", p.resolved.sha256);
    let caps = if i.capabilities.is_empty() { "none".to_string() } else { i.capabilities.join(", ") };
    println!("needs       {caps}");
    let roles: Vec<&str> = i.roles.iter().map(|r| r.node()).collect();
    println!("roles       {}", roles.join(", "));
    println!("settings");
    for f in &i.fields {
        let req = if f.required { " (required)" } else { "" };
        let grants = f.kind.grants();
        let grants = if grants.is_empty() { String::new() } else { format!("; {grants}") };
        println!("  {:<18} {}{req}{grants}", f.name, f.description);
    }
    exit::OK
}

async fn run_alone(
    file: &Path,
    settings: &[String],
    granted: Granted,
    memory: u64,
    timeout: std::time::Duration,
) -> u8 {
    let plugin = match load(file).await {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut config = Vec::new();
    for s in settings {
        match s.split_once('=') {
            Some((k, v)) => config.push((k.to_string(), v.to_string())),
            None => {
                eprintln!("error: settings are written key=value, not `{s}`");
                return exit::INVALID;
            }
        }
    }
    let scratch = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot create a scratch directory: {e}");
            return exit::FAILED;
        }
    };
    let granted =
        match granted.with_settings(&mut config, &plugin.info.fields, &std::env::current_dir().unwrap_or_default()) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("error: {e}");
                return exit::INVALID;
            }
        };
    let (events, mut rx) = Events::channel();
    let log = StepLog::new(scratch.path().join("plugin.log"), "plugin", events, Default::default());
    let output_file = scratch.path().join("outputs");
    let state = PluginState {
        store: crate::state::StateStore::open(scratch.path(), "plugin-run"),
        namespace: plugin.info.name.clone(),
        shared: Vec::new(),
    };
    let call = PluginRun {
        plugin,
        call: Call::Run,
        input: Input { config, env: Vec::new(), workspace: None },
        granted,
        memory,
        state: Some(state),
        workdir: std::env::current_dir().unwrap_or_default(),
        output_file: Some(output_file.clone()),
    };
    // The same path as a step: the executor seam, on the plugin host's threads.
    let invocation = Invocation::Plugin(Arc::new(call));
    let cancel = CancellationToken::new();
    let running = async {
        tokio::select! {
            e = execute(&invocation, &log, &cancel) => e,
            () = tokio::time::sleep(timeout) => {
                cancel.cancel();
                Exit::Error(format!("timed out after {}", humantime::format_duration(timeout)))
            }
        }
    };
    let printing = async {
        while let Some(e) = rx.recv().await {
            if let Event::StepLog { line, .. } = e {
                println!("{line}");
            }
        }
    };
    let exit_status = tokio::select! {
        e = running => e,
        () = printing => Exit::Error("the log stream ended early".into()),
    };
    drop((log, invocation));
    while let Ok(e) = rx.try_recv() {
        if let Event::StepLog { line, .. } = e {
            println!("{line}");
        }
    }
    let outputs = std::fs::read_to_string(&output_file).unwrap_or_default();
    for line in outputs.lines() {
        println!("output: {line}");
    }
    if exit_status.success() {
        exit::OK
    } else {
        eprintln!("error: {}", exit_status.describe());
        exit::FAILED
    }
}

async fn lock(root: &Path, file: Option<&Path>) -> u8 {
    let project = Project::load(root, file);
    let mut code = exit::OK;
    for p in &project.pipelines {
        let Ok(plan) = &p.plan else { continue };
        if let Err(errors) = plugin::prepare(plan, root, LockMode::Update).await {
            errors.iter().for_each(|e| eprint(e));
            code = exit::INVALID;
        }
    }
    if code == exit::OK {
        println!("pinned in {}", plugin::lockfile::path(root).display());
    }
    code
}

fn new(name: &str, dir: PathBuf) -> u8 {
    if dir.exists() {
        eprintln!("error: {} exists already", dir.display());
        return exit::INVALID;
    }
    let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
    let sdk = std::fs::canonicalize(&sdk).unwrap_or(sdk);
    let ident: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    let ty: String = ident
        .split('_')
        .map(|w| {
            w.chars().enumerate().map(|(i, c)| if i == 0 { c.to_ascii_uppercase() } else { c }).collect::<String>()
        })
        .collect();
    let files = [
        ("Cargo.toml", templates::CARGO.replace("{name}", name).replace("{sdk}", &sdk.display().to_string())),
        ("src/lib.rs", templates::LIB.replace("{name}", name).replace("{Type}", &ty)),
        (".gitignore", "/target\n".to_string()),
    ];
    for (path, text) in files {
        let full = dir.join(path);
        if let Err(e) = full.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&full, text))
        {
            eprintln!("error: cannot write {}: {e}", full.display());
            return exit::FAILED;
        }
    }
    println!("created {}: build it with `pipe plugin build {}`", dir.display(), dir.display());
    exit::OK
}

fn build(dir: &Path) -> u8 {
    let sysroot = Command::new("rustc").args(["--print", "sysroot"]).output();
    let has_target = sysroot
        .is_ok_and(|o| Path::new(String::from_utf8_lossy(&o.stdout).trim()).join("lib/rustlib/wasm32-wasip2").is_dir());
    if !has_target {
        eprintln!("error: the wasm32-wasip2 target is not installed");
        eprintln!("  help: rustup target add wasm32-wasip2");
        return exit::FAILED;
    }
    // Cargo's JSON messages name the artifacts wherever the target directory is.
    let output = Command::new("cargo")
        .args(["build", "--release", "--target", "wasm32-wasip2", "--message-format=json-render-diagnostics"])
        .current_dir(dir)
        .stderr(std::process::Stdio::inherit())
        .output();
    let output = match output {
        Ok(o) if o.status.success() => o,
        Ok(_) => return exit::FAILED,
        Err(e) => {
            eprintln!("error: cannot run cargo: {e}");
            return exit::FAILED;
        }
    };
    let built: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .flat_map(|m| m["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|f| f.as_str().filter(|f| f.ends_with(".wasm")).map(String::from))
        .collect();
    if built.is_empty() {
        eprintln!("error: the build made no .wasm component (is the crate a cdylib?)");
        return exit::FAILED;
    }
    for path in built {
        println!("built {path}");
    }
    exit::OK
}

fn absolute(dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.into_iter().map(|d| std::path::absolute(&d).unwrap_or(d)).collect()
}

fn split(commands: Vec<String>) -> Vec<Vec<String>> {
    commands.iter().filter_map(|c| shell_words::split(c).ok()).filter(|w| !w.is_empty()).collect()
}

mod templates {
    pub const CARGO: &str = r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
pipe-sdk = { path = "{sdk}" }
serde = { version = "1", features = ["derive"] }

[profile.release]
opt-level = "s"
lto = true
strip = true
"#;

    pub const LIB: &str = r#"//! {name}: a pipe plugin.

use pipe_sdk::{Context, Description, Field, Plugin};

#[derive(serde::Deserialize)]
struct Config {
    message: String,
}

struct {Type};

impl Plugin for {Type} {
    type Config = Config;

    fn describe() -> Description {
        Description::new("{name}", env!("CARGO_PKG_VERSION"), "Logs a message and sets it as an output")
            .field(Field::required("message", "what to say"))
    }

    fn run(config: Config, _ctx: &Context) -> Result<(), String> {
        pipe_sdk::log(&config.message);
        pipe_sdk::output("message", &config.message)
    }
}

pipe_sdk::export!({Type});
"#;
}
