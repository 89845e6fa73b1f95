use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = pipe::cli::Cli::parse();
    // Engine diagnostics (not step output) go to stderr, off unless PIPE_LOG asks.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("PIPE_LOG").unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .without_time()
        .init();
    ExitCode::from(pipe::cli::main(cli))
}
