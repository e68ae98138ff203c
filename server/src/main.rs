//! `tessera-server`: parse flags, set up logging, run a shard until SIGINT or
//! SIGTERM. Everything else lives in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use server::auth::{mint_with_key, Claims};
use server::config::{AuthMode, LogFormat};
use server::Config;

// `--features system-alloc` leaves glibc's malloc in place, for heaptrack.
#[cfg(all(not(target_env = "msvc"), not(feature = "system-alloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "tessera-server", version, about = "Tessera game-server shard")]
struct Cli {
    /// TOML configuration file; every field is optional.
    #[arg(long, env = "TESSERA_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Game WebSocket address (server.ws_addr); port 0 picks a free port.
    #[arg(long)]
    ws_addr: Option<SocketAddr>,
    /// HTTP address for the demo page, health and metrics (server.http_addr).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Worker threads (server.workers); 0 = one per core.
    #[arg(long)]
    workers: Option<usize>,
    /// dev: guests allowed; production: signed tokens only (auth.mode).
    #[arg(long, value_enum)]
    mode: Option<AuthMode>,
    /// Join a cluster whose directory is this Redis (cluster.redis),
    /// `redis://HOST:PORT/DB`.
    #[arg(long)]
    cluster_redis: Option<String>,
    /// This shard's id in the cluster (cluster.shard_id); default: derived
    /// from the host name and the ports.
    #[arg(long)]
    shard_id: Option<String>,
    /// The peer tunnel listener (cluster.peer_addr); port 0 picks a free
    /// port.
    #[arg(long)]
    peer_addr: Option<SocketAddr>,
    /// Log format (log.format).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Print the configuration in force (file, environment and flags
    /// applied, the built-in maps listed when none are configured) as TOML,
    /// and exit. Secrets (auth and cluster secrets, admin tokens, URL
    /// passwords) are printed as `<redacted>` unless `--show-secrets`.
    #[arg(long)]
    print_config: bool,
    /// With `--print-config`: print the secrets too.
    #[arg(long, requires = "print_config")]
    show_secrets: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Mint a signed session token for tests and tools.
    Token {
        /// The HMAC secret (auth.secret of the shard that will check it).
        /// Defaults to auth.secret from the configuration.
        #[arg(long, env = "TESSERA_TOKEN_SECRET")]
        secret: Option<String>,
        /// The player id the token speaks for.
        #[arg(long)]
        player: String,
        /// Display name; defaults to the player id.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime: a duration such as `1h`, `30m`, `90s` or `1h 30m`, or
        /// plain seconds (`3600`).
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: u64,
    },
}

/// A token lifetime in seconds: plain seconds or a human duration
/// (`humantime` syntax), at least one second.
fn parse_ttl(text: &str) -> Result<u64, String> {
    let secs = match text.trim().parse::<u64>() {
        Ok(secs) => secs,
        Err(_) => humantime::parse_duration(text.trim())
            .map_err(|e| format!("{e}: use seconds (3600) or a duration such as 1h, 30m, 90s"))?
            .as_secs(),
    };
    if secs == 0 {
        return Err("a token must live at least 1s".into());
    }
    Ok(secs)
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(addr) = cli.ws_addr {
        config.server.ws_addr = addr;
    }
    if let Some(addr) = cli.http_addr {
        config.server.http_addr = addr;
    }
    if let Some(workers) = cli.workers {
        config.server.workers = workers;
    }
    if let Some(mode) = cli.mode {
        config.auth.mode = mode;
    }
    if let Some(redis) = &cli.cluster_redis {
        config.cluster.redis = redis.clone();
    }
    if let Some(id) = &cli.shard_id {
        config.cluster.shard_id = id.clone();
    }
    if let Some(addr) = cli.peer_addr {
        config.cluster.peer_addr = addr;
    }
    if let Some(format) = cli.log_format {
        config.log.format = format;
    }
    Ok(config)
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Panics become structured error events. Rooms and sessions catch their
/// own (and are restarted or closed); this makes each one a log line with
/// the thread, location and message instead of a bare stderr dump.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let message = server::supervise::panic_text(info.payload());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            %location,
            panic = %message,
            "panic"
        );
    }));
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(&cli)?;
    if let Some(Command::Token {
        secret,
        player,
        name,
        ttl,
    }) = cli.command
    {
        let secret = secret.unwrap_or(config.auth.secret);
        anyhow::ensure!(
            !secret.is_empty(),
            "no secret: pass --secret or set auth.secret"
        );
        let claims = Claims {
            name: name.unwrap_or_else(|| player.clone()),
            sub: player,
            exp: server::auth::unix_now().saturating_add(ttl),
            sid: None,
        };
        println!("{}", mint_with_key(secret.as_bytes(), &claims));
        return Ok(());
    }
    config.validate()?;
    if cli.print_config {
        let config = config.in_force();
        let config = if cli.show_secrets {
            config
        } else {
            config.redacted()
        };
        print!("{}", config.to_toml());
        return Ok(());
    }
    init_tracing(&config);
    log_panics();
    let config_budget_ms = config.cluster.drain_budget_ms;
    let shard = server::start(config)?;
    // These two lines are a contract: tools and tests read the bound ports
    // from them. A closed stdout (the reader went away) must not stop the
    // shard, so write errors are ignored rather than panicking in println!.
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ws listening on {}", shard.ws_addr);
        let _ = writeln!(out, "http listening on {}", shard.http_addr);
        let _ = writeln!(out, "demo page: http://{}/", shard.http_addr);
        if let Some(peer) = shard.peer_addr {
            let _ = writeln!(out, "peer listening on {peer}");
        }
        if let Some(dir) = &shard.cluster {
            let _ = writeln!(out, "shard id {}", dir.shard());
        }
        let _ = out.flush();
    }

    let stopper = shard.stopper();
    let mut stopping = shard.stopping();
    let budget = Duration::from_millis(config_budget_ms);
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal runtime")?;
    // SIGINT stops; SIGTERM drains in cluster mode (players told to
    // reconnect elsewhere at once) and stops otherwise; a drain asked over
    // the admin API stops the shard by itself.
    let drained = signals.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let drained = tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT received");
                let _ = stopper.send(true);
                shard.is_draining()
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM received");
                if shard.drain() {
                    tracing::info!(budget_ms = budget.as_millis() as u64, "draining");
                    true
                } else {
                    let _ = stopper.send(true);
                    false
                }
            }
            _ = stopping.wait_for(|s| *s) => shard.is_draining(),
        };
        anyhow::Ok(drained)
    })?;
    if !drained {
        shard.join();
        return Ok(());
    }
    // A drain ends within its budget; past it the process exits anyway,
    // and not with 0, so the orchestrator knows it was cut short.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        shard.join();
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(budget) {
        Ok(()) => {
            tracing::info!("drained");
            Ok(())
        }
        Err(_) => anyhow::bail!("the drain did not end within cluster.drain_budget_ms"),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tessera-server: {err:#}");
            ExitCode::from(2)
        }
    }
}
