//! Everyday tools: `pipe fmt`, `pipe completions`, `pipe init`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;

use super::diagnostics::eprint;
use super::{Cli, exit};
use crate::lang::{self, Source};

/// `pipe fmt [--check] [FILE]…`: the discovered pipeline files, or those named.
pub fn fmt(root: &Path, files: &[PathBuf], check: bool) -> u8 {
    let files: Vec<PathBuf> =
        if files.is_empty() { lang::discover::discover(root) } else { files.iter().map(|f| root.join(f)).collect() };
    if files.is_empty() {
        eprintln!("error: no pipeline files here (pipe.kdl, pipelines/*.kdl, **/pipe.kdl)");
        return exit::INVALID;
    }
    let (mut changed, mut broken) = (0, 0);
    for path in &files {
        let name = lang::discover::display_name(root, path);
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: cannot read {name}: {e}");
                broken += 1;
                continue;
            }
        };
        let src = Source::new(&name, &name, text.as_str());
        let formatted = match lang::format::format(&src) {
            Ok(f) => f,
            Err(errs) => {
                errs.0.iter().for_each(|e| eprint(e));
                broken += 1;
                continue;
            }
        };
        if formatted == text {
            continue;
        }
        changed += 1;
        if check {
            println!("would reformat {name}");
        } else if let Err(e) = crate::state::write_atomic(path, formatted.as_bytes()) {
            eprintln!("error: {e}");
            broken += 1;
        } else {
            println!("formatted {name}");
        }
    }
    match (broken, changed, check) {
        (0, 0, _) => exit::OK,
        (0, _, false) => exit::OK,
        (0, n, true) => {
            eprintln!("{n} file(s) would be reformatted; `pipe fmt` does it");
            exit::FAILED
        }
        _ => exit::INVALID,
    }
}

/// `pipe completions SHELL`: the script, on stdout.
pub fn completions(shell: clap_complete::Shell) -> u8 {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "pipe", &mut script);
    // `pipe completions bash | head`: a reader that stops early is not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            eprintln!("error: cannot write the completions: {e}");
            exit::FAILED
        }
        _ => exit::OK,
    }
}

/// `pipe init`: a commented starter `pipe.kdl` for what the repository holds.
pub fn init(root: &Path) -> u8 {
    let path = root.join("pipe.kdl");
    if path.exists() {
        eprintln!("error: {} exists; pipe init never overwrites a file", path.display());
        return exit::INVALID;
    }
    let name = root.file_name().map_or("app".to_string(), |n| n.to_string_lossy().to_lowercase().replace(' ', "-"));
    let (kind, text) = starter(root, &name);
    // Written as `pipe fmt` would write it.
    let text = lang::format::format(&Source::new("pipe.kdl", "pipe.kdl", text.as_str())).unwrap_or(text);
    if let Err(e) = crate::state::write_atomic(&path, text.as_bytes()) {
        eprintln!("error: {e}");
        return exit::FAILED;
    }
    let ignored = match ignore_state(root) {
        Ok(true) => "; added `.pipe/` (pipe's runs, cache and state) to .gitignore",
        Ok(false) => "",
        Err(e) => {
            eprintln!("warning: cannot add `.pipe/` to .gitignore: {e}");
            ""
        }
    };
    println!("wrote pipe.kdl for a {kind} project{ignored}; `pipe check` validates it, `pipe run` runs it");
    exit::OK
}

/// Adds `.pipe/` to the repository's `.gitignore` unless a line already
/// ignores it; whether it did.
fn ignore_state(root: &Path) -> std::io::Result<bool> {
    let path = root.join(".gitignore");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    if text.lines().map(str::trim).any(|l| matches!(l, ".pipe" | ".pipe/" | "/.pipe" | "/.pipe/")) {
        return Ok(false);
    }
    let sep = if text.is_empty() || text.ends_with('\n') { "" } else { "\n" };
    crate::state::write_atomic(&path, format!("{text}{sep}.pipe/\n").as_bytes()).map_err(std::io::Error::other)?;
    Ok(true)
}

fn starter(root: &Path, name: &str) -> (&'static str, String) {
    let has = |f: &str| root.join(f).exists();
    let (kind, build, test, lint, inputs, outputs) = if has("Cargo.toml") {
        (
            "Rust",
            "cargo build --release",
            "cargo test",
            "cargo clippy -- -D warnings",
            r#""src/**" "Cargo.toml" "Cargo.lock""#,
            "target/release",
        )
    } else if has("package.json") {
        (
            "Node",
            "npm ci && npm run build --if-present",
            "npm test",
            "npm run lint --if-present",
            r#""src/**" "package.json" "package-lock.json""#,
            "dist",
        )
    } else if has("go.mod") {
        ("Go", "go build ./...", "go test ./...", "go vet ./...", r#""**/*.go" "go.mod" "go.sum""#, "")
    } else if has("pyproject.toml") {
        (
            "Python",
            "python -m build",
            "python -m pytest",
            "python -m ruff check .",
            r#""src/**" "pyproject.toml""#,
            "dist",
        )
    } else if has("Makefile") {
        ("make", "make", "make test", "make lint", r#""**""#, "")
    } else {
        ("", "echo build", "echo test", "echo lint", r#""**""#, "")
    };
    let outputs = if outputs.is_empty() { String::new() } else { format!("; outputs \"{outputs}\"") };
    let text = format!(
        r#"// The pipeline of this repository: `pipe run` runs it, `pipe check` checks it,
// `pipe graph` draws it; pipe's README describes the language.
pipeline "{name}" {{
    // Runs for every new commit on main under `pipe watch`.
    on "push" branch="main"

    stage "build" {{
        step "compile" {{
            run "{build}"
            // Not run again while these files, the command and its env are unchanged.
            cache {{ inputs {inputs}{outputs} }}
        }}
    }}
    stage "check" {{
        needs "build"
        // Steps of a stage run in parallel.
        step "test" {{ run "{test}" }}
        step "lint" {{ run "{lint}" }}
    }}
    // A deployment goes here, e.g.:
    // stage "release" {{
    //     needs "check"
    //     when branch="main"
    //     deploy "{name}" strategy="blue-green" {{ … }}   // see the README, "Deployments"
    // }}
    on-failure {{
        step "report" {{ run "echo failed: ${{run.failed-steps}}" }}
    }}
}}
"#
    );
    (if kind.is_empty() { "new" } else { kind }, text)
}
