use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = pipe::cli::Cli::parse();
    // pipe's own warnings go to stderr; other crates' (wasmtime, bollard, …)
    // only when PIPE_LOG asks, so they never mix into the console or JSON events.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("PIPE_LOG").unwrap_or_else(|_| EnvFilter::new("off,pipe=warn")))
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    ExitCode::from(pipe::cli::main(cli))
}
