//! Tessera's load generator: a swarm of scripted bots over real WebSockets,
//! with live progress, latency histograms and JSON/HTML reports.
//!
//! # Layout
//!
//! - [`config`]: command-line flags ([`Args`]) and the validated [`Config`].
//! - [`swarm`]: a run: resolve the target once, start bots over the ramp,
//!   sample every second, stop them, build the [`Summary`].
//! - [`bot`]: one bot task: connect, hello, join, then the scenario loop;
//!   every frame the server sends is counted and measured there. One file
//!   per concern: `connect` (handshake and join), `play` (the scenario
//!   loop), `resume` (churn: drop and resume, hop), `measure` (latencies),
//!   `socket` (frames in and out).
//! - [`fastpath`]: a lean `update` decoder that keeps only the bot's own
//!   entity (hot rooms send hundreds per tick).
//! - [`scenario`]: the I/O-free parts of behaviour: rooms and maps, send
//!   clocks and phases, the random walk, churn and back-off decisions.
//! - [`ledger`]: durable actions (`--durable-rate`), the acknowledged-
//!   action ledger and its check against the store (`--verify-admin`), and
//!   the per-bot event log (`--events`).
//! - [`placement`]: which `--url` each bot uses: round robin, or (with
//!   `--redis`) its room's owner, and `--remote-share` of them elsewhere.
//! - [`stats`]: shared counters and HdrHistograms (run-long and per second).
//! - [`per_shard`]: the figures per `--url` (connects, RTT, move to
//!   visible, updates, drops, errors).
//! - [`summary`]: the result of a run (also the `--json` document) and the
//!   threshold check behind the exit status.
//! - [`report`]: the stdout table, the JSON file and the HTML page with
//!   inline SVG charts.
//! - [`progress`]: live bar on a terminal, plain lines otherwise.
//! - [`token`]: HMAC session tokens for a production-mode shard.
//! - [`sys`]: the loadbot's own CPU time and memory from `/proc/self`.
//!
//! A bot's message travels: scenario clock ticks in [`bot`] -> a
//! [`protocol::ClientMsg`] encoded by `protocol::encode_client` -> one binary
//! WebSocket frame to the bot's `--url` -> the server's answers decoded by
//! `protocol::decode_server` in the same bot task -> counters and histograms
//! in [`stats`] -> sampled each second by [`swarm`] -> [`summary`] ->
//! [`report`].
//!
//! The binary (`src/main.rs`) only parses flags, sets up tracing and calls
//! [`cli`]; tests drive [`run`] directly.

pub mod bot;
pub mod config;
pub mod fastpath;
pub mod ledger;
pub mod per_shard;
pub mod placement;
pub mod progress;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod summary;
pub mod swarm;
pub mod sys;
pub mod token;

use std::process::ExitCode;

pub use config::{Args, Config, Scenario};
pub use summary::Summary;
pub use swarm::{run, run_until};

/// Exit status when a `--max-*` threshold was exceeded (1 is "could not
/// run", 2 is clap's "bad flags").
pub const EXIT_THRESHOLD: u8 = 3;

/// What the binary does: run the swarm on a runtime of `--threads` workers,
/// print the table, write the reports, and map thresholds to the exit status.
pub fn cli(args: Args) -> anyhow::Result<ExitCode> {
    let cfg = args.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads)
        .enable_all()
        .build()?;
    let shutdown = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No signal handler: never interrupt, the run ends on its own.
            std::future::pending::<()>().await;
        }
    };
    let summary = runtime.block_on(run_until(cfg.clone(), shutdown))?;
    // The bots are done; do not wait for stragglers of the runtime.
    runtime.shutdown_background();

    print!("{}", report::table::render(&summary));
    if let Some(path) = &cfg.json {
        report::write_json(&summary, path)?;
        println!("JSON report: {}", path.display());
    }
    if let Some(path) = &cfg.html {
        report::write_html(&summary, path)?;
        println!("HTML report: {}", path.display());
    }
    if summary.thresholds.passed {
        Ok(ExitCode::SUCCESS)
    } else {
        for violation in &summary.thresholds.violations {
            eprintln!("loadbot: threshold exceeded: {violation}");
        }
        Ok(ExitCode::from(EXIT_THRESHOLD))
    }
}
