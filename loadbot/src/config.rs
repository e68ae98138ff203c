//! Command-line flags ([`Args`]) and the validated run configuration
//! ([`Config`]) the rest of the crate reads.
//!
//! Flags are parsed by clap; [`Args::into_config`] checks them once (URL
//! scheme, ranges, the idle ping bound) so that a bot never has to. Tests build
//! a [`Config`] directly with [`Config::new`] and adjust its public fields.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

use crate::ledger::{DurableArgs, DurableConfig};

/// Longest run the loadbot accepts: keeps every loop and the per-second
/// timeline bounded.
pub const MAX_RUN: Duration = Duration::from_secs(24 * 3600);
/// Most bots one process will start.
pub const MAX_BOTS: u32 = 200_000;
/// The idle scenario must ping at least this often so the server's idle
/// timeout (30 s by default) never drops a quiet bot.
pub const IDLE_PING_MAX: Duration = Duration::from_secs(10);

/// What the bots do once they stand in a map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    /// Wander inside the map, sending a move intent at `--move-hz`.
    Move,
    /// Move, plus a chat line at `--chat-hz`.
    Chat,
    /// Move, and every `--churn-interval` (on average) either drop the
    /// connection and come back with the resume token, or hop to another map.
    Churn,
    /// Connect, join, and stay quiet except for the ping.
    Idle,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Move => "move",
            Scenario::Chat => "chat",
            Scenario::Churn => "churn",
            Scenario::Idle => "idle",
        }
    }

    pub fn moves(self) -> bool {
        match self {
            Scenario::Move | Scenario::Chat | Scenario::Churn => true,
            Scenario::Idle => false,
        }
    }
}

/// How live progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressMode {
    /// A live bar when stdout is a terminal, plain lines otherwise.
    Auto,
    /// Always the live bar.
    Bar,
    /// Always plain periodic lines.
    Lines,
    /// Nothing while running (the library default: tests stay quiet).
    Off,
}

/// `loadbot`: drive a Tessera shard with a swarm of scripted bots.
#[derive(Debug, Clone, Parser)]
#[command(name = "loadbot", version, about, long_about = None)]
pub struct Args {
    /// A shard's game address, `ws://HOST:PORT`. Repeat for several shards:
    /// the bots are spread over them and the report gives figures per URL.
    /// All traffic goes to these addresses only.
    #[arg(long, required = true)]
    pub url: Vec<String>,
    /// Share (0.0-1.0) of each room's bots that connect to a shard other
    /// than the room's owner (needs --redis and at least two --url).
    #[arg(long, default_value_t = 0.0)]
    pub remote_share: f64,
    /// The cluster's Redis (the shards' `cluster.redis`), read-only: which
    /// shard owns each room. With it, bots go to their room's owner (or,
    /// for --remote-share, elsewhere) instead of round robin. Needs --maps.
    #[arg(long)]
    pub redis: Option<String>,
    /// The shards' `cluster.key_prefix`.
    #[arg(long, default_value = "tessera", requires = "redis")]
    pub cluster_prefix: String,
    /// Number of bots.
    #[arg(long, default_value_t = 100)]
    pub bots: u32,
    /// Number of rooms the bots are spread over: bot b goes to room b % R,
    /// room i is map `maps[i % maps.len()]`.
    #[arg(long, default_value_t = 1)]
    pub rooms: u32,
    /// Map names to use, comma separated (default: the welcome's `maps`).
    #[arg(long, value_delimiter = ',')]
    pub maps: Vec<String>,
    /// How long the full swarm runs after the ramp (e.g. 60s, 2m, 500ms).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Bots start evenly spread over this time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub ramp: Duration,
    /// Move intents per second per bot (move, chat, churn).
    #[arg(long, default_value_t = 10.0)]
    pub move_hz: f64,
    /// Chat lines per second per bot (chat scenario).
    #[arg(long, default_value_t = 0.2)]
    pub chat_hz: f64,
    /// Time between a bot's pings (RTT samples); at most 10s in idle.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub ping_interval: Duration,
    /// Send each ping in a write of its own. By default a bot that moves
    /// sends a due ping in the same write as its next move (two frames, one
    /// TCP segment), as the floor's client does (BENCHMARKS.md, issue 12).
    #[arg(long)]
    pub ping_apart: bool,
    /// Mean time between a churning bot's drop-or-hop events.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub churn_interval: Duration,
    /// What the bots do.
    #[arg(long, value_enum, default_value_t = Scenario::Move)]
    pub scenario: Scenario,
    /// Tokio worker threads for the bots (the rest of the CPU is the server's).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Write the JSON summary here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report here.
    #[arg(long)]
    pub html: Option<PathBuf>,
    /// Fail (exit status 3) when the overall RTT p99 is above this many ms.
    #[arg(long)]
    pub max_p99_ms: Option<f64>,
    /// Fail (exit status 3) when the error rate (see README) is above this.
    #[arg(long)]
    pub max_error_rate: Option<f64>,
    /// A session token every bot presents (production-mode shard).
    #[arg(long, conflicts_with = "secret")]
    pub token: Option<String>,
    /// Mint one token per bot with this HMAC secret (sub `bot-<i>`).
    #[arg(long, env = "LOADBOT_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Lifetime of minted tokens (default: the run's length plus one hour).
    #[arg(long, value_parser = parse_duration)]
    pub token_ttl: Option<Duration>,
    /// Prefix of the bots' player ids (minted tokens) and display names.
    #[arg(long, default_value = "bot-")]
    pub name_prefix: String,
    /// Timeout for TCP connect + WebSocket handshake + welcome, and for join.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// tungstenite read buffer per bot, bytes (small keeps 10k bots cheap).
    #[arg(long, default_value_t = 4096)]
    pub read_buffer: usize,
    /// Seed of the bots' random walks and churn decisions.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Live progress: auto (bar on a terminal, lines otherwise), bar, lines, off.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Interval of the plain progress lines.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub progress_every: Duration,
    /// Durable actions and their ledger (see [`crate::ledger`]).
    #[command(flatten)]
    pub durable: DurableArgs,
}

/// Production-mode authentication of the bots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    /// Dev mode: no token, the server hands out guest identities.
    Guest,
    /// One token for every bot.
    Token(String),
    /// Mint a token per bot: sub and name `<prefix><index>`.
    Mint { secret: String, ttl: Duration },
}

/// Where the shard listens, taken apart from `ws://HOST:PORT[/PATH]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as given, used for the WebSocket request.
    pub url: String,
    /// `HOST:PORT`, resolved once before the first bot starts.
    pub authority: String,
}

impl Target {
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = match url.strip_prefix("ws://") {
            Some(rest) => rest,
            None if url.starts_with("wss://") => {
                bail!("wss:// is not supported: the loadbot speaks plain ws:// to its shards")
            }
            None => bail!("--url must start with ws://, got {url:?}"),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        if authority.is_empty() {
            bail!("--url {url:?} has no host");
        }
        let has_port = match authority.rsplit_once(':') {
            // An IPv6 literal `[::1]` without port has its last colon inside brackets.
            Some((host, port)) => !host.is_empty() && !port.contains(']') && !port.is_empty(),
            None => false,
        };
        let authority = if has_port {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Target {
            url: url.to_string(),
            authority,
        })
    }
}

/// The cluster's directory, read to find each room's owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryArgs {
    pub redis: String,
    pub prefix: String,
}

/// The validated configuration of one run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The shards, in `--url` order (at least one).
    pub targets: Vec<Target>,
    /// See `--remote-share`; 0 unless a directory is given.
    pub remote_share: f64,
    /// `--redis` and `--cluster-prefix`.
    pub directory: Option<DirectoryArgs>,
    pub bots: u32,
    pub rooms: u32,
    /// Empty: use the maps of the first welcome.
    pub maps: Vec<String>,
    pub duration: Duration,
    pub ramp: Duration,
    pub move_hz: f64,
    pub chat_hz: f64,
    pub ping_interval: Duration,
    /// Pings in writes of their own, never with a move.
    pub ping_apart: bool,
    pub churn_interval: Duration,
    pub scenario: Scenario,
    pub threads: usize,
    pub json: Option<PathBuf>,
    pub html: Option<PathBuf>,
    pub max_p99_ms: Option<f64>,
    pub max_error_rate: Option<f64>,
    pub auth: Auth,
    pub name_prefix: String,
    pub connect_timeout: Duration,
    pub read_buffer: usize,
    pub seed: u64,
    pub progress: ProgressMode,
    pub progress_every: Duration,
    /// `--durable-rate`, the ledger's check and the event log.
    pub durable: DurableConfig,
}

impl Config {
    /// A configuration with the flags' defaults, for tests and embedders.
    pub fn new(url: &str) -> anyhow::Result<Config> {
        Config::with_urls(&[url])
    }

    /// The flags' defaults with several shards (`--url` once per entry).
    pub fn with_urls(urls: &[&str]) -> anyhow::Result<Config> {
        let mut argv = vec!["loadbot"];
        for url in urls {
            argv.extend(["--url", url]);
        }
        Args::try_parse_from(argv)
            .context("default flags")?
            .into_config()
            .map(|mut cfg| {
                cfg.progress = ProgressMode::Off;
                cfg
            })
    }

    /// Ramp plus steady state: when the bots are told to stop.
    pub fn run_length(&self) -> Duration {
        self.ramp + self.duration
    }

    /// Checks ranges. Called by [`Args::into_config`]; call it again after
    /// changing fields by hand.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.targets.is_empty() {
            bail!("--url is required");
        }
        if self.targets.len() > usize::from(u16::MAX) {
            bail!("at most {} --url values", u16::MAX);
        }
        for (i, t) in self.targets.iter().enumerate() {
            if self.targets[..i].iter().any(|o| o.authority == t.authority) {
                bail!(
                    "--url {:?} is given twice (same address {})",
                    t.url,
                    t.authority
                );
            }
        }
        if !(0.0..=1.0).contains(&self.remote_share) {
            bail!(
                "--remote-share must be a number in [0, 1], got {}",
                self.remote_share
            );
        }
        if self.remote_share > 0.0 && self.directory.is_none() {
            bail!("--remote-share needs --redis: a room's owner is read from the directory");
        }
        if self.remote_share > 0.0 && self.targets.len() < 2 {
            bail!("--remote-share needs at least two --url: remote bots go to another shard");
        }
        if let Some(dir) = &self.directory {
            if dir.prefix.is_empty() {
                bail!("--cluster-prefix must not be empty");
            }
            if self.maps.is_empty() {
                bail!(
                    "--redis needs --maps: the rooms' owners are looked up before the first \
                     bot connects"
                );
            }
        }
        if self.bots == 0 || self.bots > MAX_BOTS {
            bail!("--bots must be 1..={MAX_BOTS}, got {}", self.bots);
        }
        if self.rooms == 0 {
            bail!("--rooms must be at least 1");
        }
        if self.maps.iter().any(|m| m.is_empty()) {
            bail!("--maps has an empty name");
        }
        if self.run_length() > MAX_RUN {
            bail!("--ramp + --duration must be at most {}s", MAX_RUN.as_secs());
        }
        if self.duration.is_zero() {
            bail!("--duration must be more than zero");
        }
        if !(self.move_hz > 0.0 && self.move_hz <= 1000.0) {
            bail!("--move-hz must be in (0, 1000], got {}", self.move_hz);
        }
        if !(self.chat_hz > 0.0 && self.chat_hz <= 100.0) {
            bail!("--chat-hz must be in (0, 100], got {}", self.chat_hz);
        }
        if self.ping_interval < Duration::from_millis(10) {
            bail!("--ping-interval must be at least 10ms");
        }
        if self.scenario == Scenario::Idle && self.ping_interval > IDLE_PING_MAX {
            bail!(
                "--ping-interval must be at most {}s in the idle scenario, so the \
                 server's idle timeout does not drop the bots",
                IDLE_PING_MAX.as_secs()
            );
        }
        if self.churn_interval < Duration::from_millis(100) {
            bail!("--churn-interval must be at least 100ms");
        }
        if self.threads == 0 || self.threads > 256 {
            bail!("--threads must be 1..=256");
        }
        if let Some(ms) = self.max_p99_ms {
            if ms.is_nan() || ms < 0.0 {
                bail!("--max-p99-ms must be a non-negative number");
            }
        }
        if let Some(rate) = self.max_error_rate {
            if !(0.0..=1.0).contains(&rate) {
                bail!("--max-error-rate must be in [0, 1]");
            }
        }
        if self.connect_timeout.is_zero() {
            bail!("--connect-timeout must be more than zero");
        }
        if !(256..=1 << 20).contains(&self.read_buffer) {
            bail!("--read-buffer must be 256..=1048576 bytes");
        }
        self.durable.validate()
    }
}

impl Args {
    pub fn into_config(self) -> anyhow::Result<Config> {
        let targets = self
            .url
            .iter()
            .map(|u| Target::parse(u))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let directory = self.redis.map(|redis| DirectoryArgs {
            redis,
            prefix: self.cluster_prefix,
        });
        let auth = match (self.token, self.secret) {
            (Some(token), _) => Auth::Token(token),
            (None, Some(secret)) => Auth::Mint {
                secret,
                ttl: self
                    .token_ttl
                    .unwrap_or(self.ramp + self.duration + Duration::from_secs(3600)),
            },
            (None, None) => Auth::Guest,
        };
        let cfg = Config {
            targets,
            remote_share: self.remote_share,
            directory,
            bots: self.bots,
            rooms: self.rooms,
            maps: self.maps,
            duration: self.duration,
            ramp: self.ramp,
            move_hz: self.move_hz,
            chat_hz: self.chat_hz,
            ping_interval: self.ping_interval,
            ping_apart: self.ping_apart,
            churn_interval: self.churn_interval,
            scenario: self.scenario,
            threads: self.threads,
            json: self.json,
            html: self.html,
            max_p99_ms: self.max_p99_ms,
            max_error_rate: self.max_error_rate,
            auth,
            name_prefix: self.name_prefix,
            connect_timeout: self.connect_timeout,
            read_buffer: self.read_buffer,
            seed: self.seed,
            progress: self.progress,
            progress_every: self.progress_every,
            durable: self.durable.into_config()?,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Parses `60s`, `1.5s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 60s, 500ms, 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit {other:?} in {text:?} (ms, s, m, h)")),
    };
    if !seconds.is_finite() || seconds > MAX_RUN.as_secs_f64() * 10.0 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn target_parses_ws_urls_only() {
        let t = Target::parse("ws://127.0.0.1:7350").expect("valid");
        assert_eq!(t.authority, "127.0.0.1:7350");
        let t = Target::parse("ws://localhost:7350/game?x=1").expect("valid");
        assert_eq!(t.authority, "localhost:7350");
        let t = Target::parse("ws://[::1]:9000/").expect("valid");
        assert_eq!(t.authority, "[::1]:9000");
        assert_eq!(
            Target::parse("ws://example").expect("valid").authority,
            "example:80"
        );
        assert!(Target::parse("wss://x:1").is_err());
        assert!(Target::parse("http://x:1").is_err());
        assert!(Target::parse("ws://").is_err());
    }

    #[test]
    fn full_command_line_parses() {
        let args = Args::try_parse_from([
            "loadbot",
            "--url",
            "ws://127.0.0.1:1",
            "--bots",
            "500",
            "--rooms",
            "5",
            "--maps",
            "lobby,arena",
            "--duration",
            "30s",
            "--ramp",
            "2s",
            "--move-hz",
            "20",
            "--scenario",
            "churn",
            "--secret",
            "s3",
            "--max-p99-ms",
            "50",
            "--max-error-rate",
            "0.01",
        ])
        .expect("parses");
        let cfg = args.into_config().expect("valid");
        assert_eq!(cfg.bots, 500);
        assert_eq!(cfg.maps, vec!["lobby".to_string(), "arena".to_string()]);
        assert_eq!(cfg.scenario, Scenario::Churn);
        assert_eq!(cfg.run_length(), Duration::from_secs(32));
        match cfg.auth {
            Auth::Mint { secret, ttl } => {
                assert_eq!(secret, "s3");
                assert_eq!(ttl, Duration::from_secs(32 + 3600));
            }
            other => panic!("expected minting, got {other:?}"),
        }
    }

    #[test]
    fn several_urls_and_the_cluster_flags_parse() {
        let args = Args::try_parse_from([
            "loadbot",
            "--url",
            "ws://127.0.0.1:1",
            "--url",
            "ws://127.0.0.1:2",
            "--redis",
            "redis://127.0.0.1:6379/0",
            "--maps",
            "lobby",
            "--remote-share",
            "0.25",
        ])
        .expect("parses");
        let cfg = args.into_config().expect("valid");
        assert_eq!(cfg.targets.len(), 2);
        assert_eq!(cfg.targets[1].authority, "127.0.0.1:2");
        assert_eq!(cfg.remote_share, 0.25);
        let dir = cfg.directory.expect("a directory");
        assert_eq!(dir.prefix, "tessera", "the server's default key prefix");
        // One URL stays exactly as before: no directory, no share.
        let one = Config::new("ws://127.0.0.1:1").expect("valid");
        assert_eq!((one.targets.len(), one.remote_share), (1, 0.0));
        assert!(one.directory.is_none());
    }

    #[test]
    fn a_nan_share_or_a_prefix_without_redis_is_refused() {
        let mut cfg = Config::with_urls(&["ws://127.0.0.1:1", "ws://127.0.0.1:2"]).expect("valid");
        cfg.remote_share = f64::NAN;
        assert!(cfg.validate().is_err());
        let err = Args::try_parse_from(["loadbot", "--url", "ws://h:1", "--cluster-prefix", "x"]);
        assert!(err.is_err(), "--cluster-prefix requires --redis");
    }

    #[test]
    fn idle_needs_a_ping_within_ten_seconds() {
        let mut cfg = Config::new("ws://127.0.0.1:1").expect("defaults are valid");
        cfg.scenario = Scenario::Idle;
        cfg.ping_interval = Duration::from_secs(11);
        assert!(cfg.validate().is_err());
        cfg.ping_interval = Duration::from_secs(10);
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mut cfg = Config::new("ws://127.0.0.1:1").expect("defaults are valid");
        cfg.bots = 0;
        assert!(cfg.validate().is_err());
        cfg.bots = 1;
        cfg.move_hz = f64::NAN;
        assert!(cfg.validate().is_err());
        cfg.move_hz = 10.0;
        cfg.max_error_rate = Some(2.0);
        assert!(cfg.validate().is_err());
    }
}
