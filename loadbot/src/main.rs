//! `loadbot`: parse flags, set up tracing, call the library.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let args = loadbot::Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("warn,loadbot=info")),
        )
        .init();
    match loadbot::cli(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("loadbot: {err:#}");
            ExitCode::FAILURE
        }
    }
}
