//! `tessera-fuzz`: run the fuzz targets for a while, offline, on stable.
//!
//! ```text
//! tessera-fuzz all --seconds 20               # the CI smoke run
//! tessera-fuzz client_decoder --seconds 3600 --save
//! ```
//!
//! A finding is written to `fuzz/artifacts/<target>/crash-<hash>` and the
//! run exits with status 1; replay it with `--replay FILE`.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tessera_fuzz::{check, Crash, Fuzzer, Target};

#[derive(Parser)]
#[command(
    name = "tessera-fuzz",
    about = "Mutation fuzzing of Tessera's untrusted inputs"
)]
struct Cli {
    /// client_decoder, hello_token, admin_json, peer_frame, or all.
    target: String,
    /// Seconds per target.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Stop a target after this many runs (0: only the time limit).
    #[arg(long, default_value_t = 0)]
    runs: u64,
    /// Random seed; 0 picks one from the clock (printed, to repeat a run).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The corpus root (one folder per target).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))]
    corpus: PathBuf,
    /// Where findings go (one folder per target).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/artifacts"))]
    artifacts: PathBuf,
    /// Add inputs that reached a new outcome to the corpus folder.
    #[arg(long)]
    save: bool,
    /// Run the target on one file and exit (to reproduce a finding).
    #[arg(long)]
    replay: Option<PathBuf>,
}

fn hash(data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

fn read_corpus(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut seeds = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(seeds);
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths.into_iter().filter(|p| p.is_file()) {
        seeds.push(std::fs::read(&path).with_context(|| path.display().to_string())?);
    }
    Ok(seeds)
}

fn report(cli: &Cli, target: Target, crash: &Crash) -> anyhow::Result<()> {
    let dir = cli.artifacts.join(target.name());
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("crash-{:016x}", hash(&crash.input)));
    std::fs::write(&path, &crash.input)?;
    eprintln!(
        "{}: FINDING: {}\n  input ({} bytes) saved to {}\n  replay: tessera-fuzz {} --replay {}",
        target.name(),
        crash.message,
        crash.input.len(),
        path.display(),
        target.name(),
        path.display()
    );
    Ok(())
}

/// Fuzz one target; `Ok(false)` when it found something.
fn fuzz(cli: &Cli, target: Target, seed: u64) -> anyhow::Result<bool> {
    let dir = cli.corpus.join(target.name());
    let seeds = read_corpus(&dir)?;
    let seed_count = seeds.len();
    let mut fuzzer = match Fuzzer::new(target, seeds, seed) {
        Ok(f) => f,
        Err(crash) => {
            report(cli, target, &crash)?;
            return Ok(false);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(cli.seconds);
    let mut clean = true;
    while Instant::now() < deadline && (cli.runs == 0 || fuzzer.runs < cli.runs) {
        // Check the clock every 256 runs, not every run.
        for _ in 0..256 {
            if let Err(crash) = fuzzer.step() {
                report(cli, target, &crash)?;
                clean = false;
                break;
            }
        }
        if !clean {
            break;
        }
    }
    if cli.save {
        std::fs::create_dir_all(&dir)?;
        for input in &fuzzer.found {
            std::fs::write(dir.join(format!("found-{:016x}", hash(input))), input)?;
        }
    }
    println!(
        "{}: {} runs, {} seeds, {} distinct outcomes, corpus {}{}",
        target.name(),
        fuzzer.runs,
        seed_count,
        fuzzer.outcomes(),
        fuzzer.corpus_len(),
        if clean { ", no findings" } else { "" }
    );
    Ok(clean)
}

fn run(cli: Cli) -> anyhow::Result<bool> {
    let targets: Vec<Target> = if cli.target == "all" {
        Target::ALL.to_vec()
    } else {
        vec![Target::from_name(&cli.target).with_context(|| {
            format!(
                "unknown target {:?}: client_decoder, hello_token, admin_json, peer_frame or all",
                cli.target
            )
        })?]
    };
    // Findings are reported once, by us, not by the default hook as well.
    std::panic::set_hook(Box::new(|_| {}));
    if let Some(path) = &cli.replay {
        let input = std::fs::read(path).with_context(|| path.display().to_string())?;
        let mut clean = true;
        for target in targets {
            match check(target, &input) {
                Ok(outcome) => println!("{}: {outcome}", target.name()),
                Err(crash) => {
                    eprintln!("{}: FINDING: {}", target.name(), crash.message);
                    clean = false;
                }
            }
        }
        return Ok(clean);
    }
    let seed = if cli.seed == 0 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    } else {
        cli.seed
    };
    println!("seed {seed}");
    let mut clean = true;
    for target in targets {
        clean &= fuzz(&cli, target, seed)?;
    }
    Ok(clean)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("tessera-fuzz: {err:#}");
            ExitCode::from(2)
        }
    }
}
