//! Configuration: one `#[serde(default)]` struct, read from an optional TOML
//! file, overridden by `TESSERA_*` environment variables and then by flags,
//! validated once at start.
//!
//! Environment overrides name a field by its path with `__` between levels:
//! `TESSERA_LIMITS__CHAT_MAX_CHARS=100`, `TESSERA_SERVER__WS_ADDR=0.0.0.0:7350`.
//! A variable naming no field is an error, so a typo does not go unnoticed.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub rooms: RoomsConfig,
    /// The maps of this shard. When empty, the built-in demo maps
    /// (`lobby`, `arena`, `plains`) are used.
    pub maps: Vec<MapConfig>,
    pub supervision: SupervisionConfig,
    pub store: crate::store::StoreConfig,
    pub economy: EconomyConfig,
    pub admin: AdminConfig,
    pub tls: TlsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Game WebSocket listener. Port 0 picks a free port.
    pub ws_addr: SocketAddr,
    /// HTTP listener: demo page, health, metrics, admin.
    pub http_addr: SocketAddr,
    /// actix Arbiters (threads) hosting sessions; 0 = one per core.
    pub workers: usize,
    /// Open game connections at most; more are closed with 1013.
    pub max_connections: usize,
    /// WebSocket upgrade plus `hello` must complete within this.
    pub handshake_timeout_ms: u64,
    /// A session that receives nothing for this long is closed (4004).
    pub idle_timeout_ms: u64,
    /// The server sends a WebSocket ping this often.
    pub heartbeat_interval_ms: u64,
    /// Largest client frame (and message) read; larger closes with 1009.
    pub max_frame_bytes: usize,
    /// tungstenite read buffer per connection, allocated up front: the main
    /// cost of an idle connection.
    pub read_buffer_bytes: usize,
    /// tungstenite write buffer target per connection.
    pub write_buffer_bytes: usize,
    /// Bytes queued for one client at most. Over it, state updates are
    /// dropped (and a full update follows); reliable messages close the
    /// socket with 4005.
    pub outbound_budget_bytes: usize,
    /// One socket write taking longer than this ends the session.
    pub write_timeout_ms: u64,
    /// On SIGTERM/SIGINT, sessions get this long to close before exit.
    pub shutdown_grace_ms: u64,
    /// Open game connections from one IP address (an IPv6 /64) at most;
    /// more are answered with error 5002 and close 1013. 0: no per-IP cap.
    pub per_ip_max_connections: usize,
    /// New game connections (TCP accepts, refused ones included) one IP
    /// address may open per second, on average; a token bucket of
    /// `per_ip_handshake_burst`. Over it: error 5002 and close 1013. 0: no
    /// per-IP rate. Fractions are allowed (0.5 = one every two seconds).
    pub per_ip_handshakes_per_sec: f64,
    pub per_ip_handshake_burst: u32,
    /// Addresses or networks (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`) the
    /// per-IP limits do not apply to. Loopback by default: a reverse proxy
    /// or the loadbot on the same host speaks for many clients from one
    /// address. Empty it when clients connect over loopback directly and
    /// should be capped.
    pub per_ip_exempt: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// A hello without a token gets a guest identity.
    Dev,
    /// Only signed, unexpired tokens are accepted.
    Production,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// HMAC-SHA256 key for session and resume tokens. Required (at least 16
    /// bytes) in production mode; in dev mode an empty secret means a random
    /// one per process.
    pub secret: String,
    /// Lifetime of the resume token handed out in `welcome`.
    pub resume_ttl_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub move_per_sec: u32,
    pub move_burst: u32,
    pub chat_per_sec: u32,
    pub chat_burst: u32,
    /// join, leave, ping, hello.
    pub control_per_sec: u32,
    pub control_burst: u32,
    pub chat_max_chars: u32,
    /// Strikes (malformed frames, text frames, rate-limit hits) within
    /// `abuse_window_ms` that close the socket with 1008.
    pub abuse_strikes: u32,
    pub abuse_window_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// actix Arbiters (threads) hosting rooms, apart from the sessions' so a
    /// stalled room cannot freeze sessions; 0 = one per core.
    pub arbiters: usize,
    /// Default tick rate of a map that sets none.
    pub tick_hz: u32,
    /// Default view radius of a map that sets none.
    pub view_radius: f32,
    /// Default player cap of a map that sets none.
    pub max_players: usize,
    /// An empty room stops after this long.
    pub idle_stop_ms: u64,
    /// Messages queued to one room at most (joins, leaves, chat,
    /// pick-ups); a chat or pick-up into a full room is refused and
    /// counted. Moves do not use the mailbox: they go through each
    /// member's shared input queue.
    pub mailbox_capacity: usize,
    /// How long a session waits for a room to answer a join.
    pub call_timeout_ms: u64,
    /// How close (in map units) a player's entity must stand to a ground
    /// item to pick it up.
    pub pickup_radius: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapConfig {
    pub name: String,
    pub width: f32,
    pub height: f32,
    /// Where players appear, and how far around it they are scattered.
    pub spawn: [f32; 2],
    pub spawn_radius: f32,
    /// Units per second at full stick.
    pub speed: f32,
    pub tick_hz: Option<u32>,
    pub view_radius: Option<f32>,
    pub max_players: Option<usize>,
    /// Item spawners: what appears lying on this map, and how often.
    pub items: Vec<SpawnerConfig>,
    /// `"one"` (the default): one room runs the map, and a join past
    /// `max_players` is refused. `"auto"`: a join of the map goes to an
    /// instance with room, starting one when all are full (see
    /// [`crate::ids::RoomId`]).
    pub instances: Instances,
    /// How long an empty room of this map runs before it stops (extra
    /// instances included); `rooms.idle_stop_ms` when absent.
    pub idle_stop_ms: Option<u64>,
}

/// How many rooms a map runs as (`maps[].instances`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Instances {
    /// One room; joins past `max_players` are refused.
    #[default]
    One,
    /// As many rooms as the players need, each up to `max_players`.
    Auto,
}

/// One item spawner of a map: every `every_ms`, while fewer than
/// `max_on_ground` items of `kind` lie on the map, one more (a stack of
/// `count`) appears at a random spot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpawnerConfig {
    /// Item kind, as it appears in inventories: 1-32 characters of a-z,
    /// A-Z, 0-9, _ or -, once per map.
    pub kind: String,
    /// Items in one stack.
    pub count: i64,
    /// No more spawns while this many of `kind` lie on the map.
    pub max_on_ground: u32,
    pub every_ms: u64,
}

impl Default for SpawnerConfig {
    fn default() -> Self {
        SpawnerConfig {
            kind: String::new(),
            count: 1,
            max_on_ground: 8,
            every_ms: 5_000,
        }
    }
}

/// The demo economy behind the durable `give` action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EconomyConfig {
    /// Currency a player is granted once, on its first login (a durable,
    /// idempotent adjustment), so there is something to give.
    pub starter_currency: i64,
    /// Most item kinds one `give` may carry.
    pub max_give_kinds: usize,
}

impl Default for EconomyConfig {
    fn default() -> Self {
        EconomyConfig {
            starter_currency: 100,
            max_give_kinds: 16,
        }
    }
}

/// The longest restart backoff a task may be given: past it, a task is as
/// good as given up, without saying so.
const MAX_CHILD_BACKOFF_MS: u64 = 3_600_000;

/// Extra room threads are a stop-gap while others are stuck, not a pool.
const MAX_EXTRA_ARBITERS: usize = 64;

/// Let it crash: how rooms and long-lived tasks are restarted and players
/// kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisionConfig {
    /// A room restarted more than `max_restarts` times within
    /// `restart_window_ms` is marked failed (OTP's MaxR in MaxT).
    pub max_restarts: u32,
    pub restart_window_ms: u64,
    /// Where the players of a failed room are moved; empty: to no map.
    pub fallback_map: String,
    /// A room whose tick is this late is handled as crashed (stalled) and
    /// restarted on another thread.
    pub stall_timeout_ms: u64,
    /// How often the watchdog looks.
    pub watchdog_interval_ms: u64,
    /// Room Arbiters (threads) the watchdog may start, at most at a time,
    /// when every room thread is blocked; each is retired once a stuck
    /// thread answers again. 0: never (a stalled room then waits for a
    /// live thread).
    pub max_extra_arbiters: usize,
    /// A disconnected player keeps its seat this long, for a resume.
    pub resume_grace_ms: u64,
    /// Long-lived tasks (gateway, HTTP, sampler, watchdog, persister): the
    /// first restart waits `child_backoff_min_ms`, each next one twice as
    /// long up to `child_backoff_max_ms` (with jitter).
    pub child_backoff_min_ms: u64,
    pub child_backoff_max_ms: u64,
    /// A task that ran this long before it ended restarts at the minimum
    /// backoff again.
    pub child_backoff_reset_ms: u64,
    /// A task restarted more than `child_max_restarts` times within
    /// `child_restart_window_ms` is given up (logged, counted, and
    /// `/healthz` says `degraded`). 0: given up at its first crash.
    pub child_max_restarts: u32,
    pub child_restart_window_ms: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            max_restarts: 3,
            restart_window_ms: 5_000,
            fallback_map: "lobby".into(),
            stall_timeout_ms: 1_000,
            watchdog_interval_ms: 100,
            max_extra_arbiters: 2,
            resume_grace_ms: 30_000,
            child_backoff_min_ms: 100,
            child_backoff_max_ms: 10_000,
            child_backoff_reset_ms: 30_000,
            child_max_restarts: 5,
            child_restart_window_ms: 60_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token for `/admin/*` on the HTTP listener. Empty turns the
    /// admin endpoints off.
    pub token: String,
    /// Allow `/admin/faults/*` (panic or stall a room, kill a session) for
    /// tests and drills. Off by default; needs `token` too. Game clients can
    /// never reach it.
    pub fault_injection: bool,
}

/// An address or a network in CIDR notation (`server.per_ip_exempt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// `ADDR` or `ADDR/PREFIX`; the address's bits past the prefix are
    /// ignored.
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| "not an IP address or network (ADDR or ADDR/PREFIX)".to_string())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("the prefix must be 0 to {max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }

    /// Whether `ip` lies in the network (an IPv4-mapped IPv6 address as
    /// its IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        /// The top `prefix` bits of a `width`-bit address.
        fn top(bits: u128, width: u32, prefix: u8) -> u128 {
            let keep = u32::from(prefix).min(width);
            if keep == 0 {
                0
            } else {
                bits >> (width - keep)
            }
        }
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                top(u32::from(net).into(), 32, self.prefix)
                    == top(u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                top(net.into(), 128, self.prefix) == top(ip.into(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// Optional TLS (rustls) on the listeners, for deployments with no
/// terminating proxy in front: `wss://` on the game listener, `https://` on
/// the HTTP one. PEM files; every path empty (the default) means plain TCP.
/// `cert_path`/`key_path` serve both listeners; the `ws_`/`http_` pairs
/// override them for one listener.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM, leaf first) for both listeners.
    pub cert_path: String,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) for `cert_path`.
    pub key_path: String,
    /// Game listener only; overrides `cert_path`/`key_path` there.
    pub ws_cert_path: String,
    pub ws_key_path: String,
    /// HTTP listener only; overrides `cert_path`/`key_path` there.
    pub http_cert_path: String,
    pub http_key_path: String,
}

/// One listener's certificate and key paths, with their field names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_field: &'static str,
    pub cert_path: String,
    pub key_field: &'static str,
    pub key_path: String,
}

impl TlsConfig {
    /// The files for the game listener, `None` for plain TCP.
    pub fn ws_files(&self) -> Option<TlsFiles> {
        self.files(
            "tls.ws_cert_path",
            "tls.ws_key_path",
            &self.ws_cert_path,
            &self.ws_key_path,
        )
    }

    /// The files for the HTTP listener, `None` for plain TCP.
    pub fn http_files(&self) -> Option<TlsFiles> {
        self.files(
            "tls.http_cert_path",
            "tls.http_key_path",
            &self.http_cert_path,
            &self.http_key_path,
        )
    }

    fn files(
        &self,
        cert_field: &'static str,
        key_field: &'static str,
        cert: &str,
        key: &str,
    ) -> Option<TlsFiles> {
        if !cert.is_empty() || !key.is_empty() {
            return Some(TlsFiles {
                cert_field,
                cert_path: cert.to_string(),
                key_field,
                key_path: key.to_string(),
            });
        }
        (!self.cert_path.is_empty() || !self.key_path.is_empty()).then(|| TlsFiles {
            cert_field: "tls.cert_path",
            cert_path: self.cert_path.clone(),
            key_field: "tls.key_path",
            key_path: self.key_path.clone(),
        })
    }

    fn validate(&self, errors: &mut Vec<String>) {
        let pairs = [
            (
                "tls.cert_path",
                &self.cert_path,
                "tls.key_path",
                &self.key_path,
            ),
            (
                "tls.ws_cert_path",
                &self.ws_cert_path,
                "tls.ws_key_path",
                &self.ws_key_path,
            ),
            (
                "tls.http_cert_path",
                &self.http_cert_path,
                "tls.http_key_path",
                &self.http_key_path,
            ),
        ];
        for (cert_field, cert, key_field, key) in pairs {
            if cert.is_empty() != key.is_empty() {
                let (set, unset) = if cert.is_empty() {
                    (key_field, cert_field)
                } else {
                    (cert_field, key_field)
                };
                errors.push(format!("{unset} must be set when {set} is"));
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `server=debug,info`. `RUST_LOG`
    /// wins when set.
    pub level: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            ws_addr: SocketAddr::from(([127, 0, 0, 1], 7350)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 7380)),
            workers: 0,
            max_connections: 20_000,
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 30_000,
            heartbeat_interval_ms: 10_000,
            max_frame_bytes: 4 * 1024,
            read_buffer_bytes: 4 * 1024,
            write_buffer_bytes: 16 * 1024,
            outbound_budget_bytes: 256 * 1024,
            write_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            per_ip_max_connections: 64,
            per_ip_handshakes_per_sec: 10.0,
            per_ip_handshake_burst: 20,
            per_ip_exempt: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Dev,
            secret: String::new(),
            resume_ttl_s: 3_600,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            move_per_sec: 30,
            move_burst: 60,
            chat_per_sec: 2,
            chat_burst: 5,
            control_per_sec: 10,
            control_burst: 20,
            chat_max_chars: 200,
            abuse_strikes: 10,
            abuse_window_ms: 10_000,
        }
    }
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            arbiters: 0,
            tick_hz: 20,
            view_radius: 400.0,
            max_players: 1_000,
            idle_stop_ms: 30_000,
            mailbox_capacity: 4_096,
            call_timeout_ms: 2_000,
            pickup_radius: 48.0,
        }
    }
}

impl Default for MapConfig {
    fn default() -> Self {
        MapConfig {
            name: String::new(),
            width: 1_000.0,
            height: 1_000.0,
            spawn: [500.0, 500.0],
            spawn_radius: 50.0,
            speed: 200.0,
            tick_hz: None,
            view_radius: None,
            max_players: None,
            items: Vec::new(),
            instances: Instances::One,
            idle_stop_ms: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// The built-in demo maps, used when the configuration names none.
pub fn builtin_maps() -> Vec<MapConfig> {
    vec![
        MapConfig {
            name: "lobby".into(),
            items: vec![SpawnerConfig {
                kind: "gem".into(),
                count: 1,
                max_on_ground: 8,
                every_ms: 5_000,
            }],
            ..MapConfig::default()
        },
        MapConfig {
            name: "arena".into(),
            width: 600.0,
            height: 600.0,
            spawn: [300.0, 300.0],
            spawn_radius: 100.0,
            speed: 250.0,
            items: vec![SpawnerConfig {
                kind: "potion".into(),
                count: 1,
                max_on_ground: 4,
                every_ms: 8_000,
            }],
            ..MapConfig::default()
        },
        MapConfig {
            name: "plains".into(),
            width: 4_000.0,
            height: 4_000.0,
            spawn: [2_000.0, 2_000.0],
            spawn_radius: 1_500.0,
            speed: 300.0,
            items: vec![SpawnerConfig {
                kind: "wood".into(),
                count: 3,
                max_on_ground: 40,
                every_ms: 2_000,
            }],
            ..MapConfig::default()
        },
    ]
}

/// A map with every default resolved: what a room runs.
#[derive(Debug, Clone, PartialEq)]
pub struct MapDef {
    pub name: String,
    pub width: f32,
    pub height: f32,
    pub spawn: [f32; 2],
    pub spawn_radius: f32,
    pub speed: f32,
    pub tick_hz: u32,
    pub view_radius: f32,
    pub max_players: usize,
    pub items: Vec<SpawnerConfig>,
    /// `rooms.pickup_radius`.
    pub pickup_radius: f32,
    pub instances: Instances,
    /// How long an empty room of this map runs before it stops.
    pub idle_stop_ms: u64,
}

impl Config {
    /// Read `path` (if any), then apply `TESSERA_*` variables from `env`.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut value = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                let parsed: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })?;
                toml::Value::try_from(parsed)
            }
            None => toml::Value::try_from(Config::default()),
        }
        .map_err(|e| ConfigError::Invalid(vec![e.to_string()]))?;
        for (var, raw) in env {
            let Some(path) = var.strip_prefix("TESSERA_") else {
                continue;
            };
            if path == "CONFIG" {
                continue;
            }
            apply_env(&mut value, &var, path, &raw)?;
        }
        value
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Env {
                var: "TESSERA_*".into(),
                message: e.to_string(),
            })
    }

    /// Every map with defaults resolved.
    pub fn map_defs(&self) -> Vec<MapDef> {
        let maps = if self.maps.is_empty() {
            builtin_maps()
        } else {
            self.maps.clone()
        };
        maps.into_iter()
            .map(|m| MapDef {
                tick_hz: m.tick_hz.unwrap_or(self.rooms.tick_hz),
                view_radius: m.view_radius.unwrap_or(self.rooms.view_radius),
                max_players: m.max_players.unwrap_or(self.rooms.max_players),
                name: m.name,
                width: m.width,
                height: m.height,
                spawn: m.spawn,
                spawn_radius: m.spawn_radius,
                speed: m.speed,
                items: m.items,
                pickup_radius: self.rooms.pickup_radius,
                instances: m.instances,
                idle_stop_ms: m.idle_stop_ms.unwrap_or(self.rooms.idle_stop_ms),
            })
            .collect()
    }

    /// Session Arbiters in force.
    pub fn workers(&self) -> usize {
        or_cores(self.server.workers)
    }

    /// Room Arbiters in force.
    pub fn room_arbiters(&self) -> usize {
        or_cores(self.rooms.arbiters)
    }

    /// Check every field; the error lists each problem with its field path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut positive = |name: &str, value: u64| {
            if value == 0 {
                errors.push(format!("{name} must be greater than 0"));
            }
        };
        let s = &self.server;
        positive("server.max_connections", s.max_connections as u64);
        positive("server.handshake_timeout_ms", s.handshake_timeout_ms);
        positive("server.idle_timeout_ms", s.idle_timeout_ms);
        positive("server.heartbeat_interval_ms", s.heartbeat_interval_ms);
        positive("server.max_frame_bytes", s.max_frame_bytes as u64);
        positive("server.read_buffer_bytes", s.read_buffer_bytes as u64);
        positive(
            "server.outbound_budget_bytes",
            s.outbound_budget_bytes as u64,
        );
        positive("server.write_timeout_ms", s.write_timeout_ms);
        let l = &self.limits;
        positive("limits.move_per_sec", l.move_per_sec.into());
        positive("limits.move_burst", l.move_burst.into());
        positive("limits.chat_per_sec", l.chat_per_sec.into());
        positive("limits.chat_burst", l.chat_burst.into());
        positive("limits.control_per_sec", l.control_per_sec.into());
        positive("limits.control_burst", l.control_burst.into());
        positive("limits.chat_max_chars", l.chat_max_chars.into());
        positive("limits.abuse_strikes", l.abuse_strikes.into());
        positive("limits.abuse_window_ms", l.abuse_window_ms);
        let r = &self.rooms;
        positive("rooms.tick_hz", r.tick_hz.into());
        positive("rooms.max_players", r.max_players as u64);
        positive("rooms.mailbox_capacity", r.mailbox_capacity as u64);
        positive("rooms.call_timeout_ms", r.call_timeout_ms);
        positive("rooms.idle_stop_ms", r.idle_stop_ms);
        let sv = &self.supervision;
        positive("supervision.restart_window_ms", sv.restart_window_ms);
        positive("supervision.stall_timeout_ms", sv.stall_timeout_ms);
        positive("supervision.watchdog_interval_ms", sv.watchdog_interval_ms);
        positive("supervision.resume_grace_ms", sv.resume_grace_ms);
        positive("supervision.child_backoff_min_ms", sv.child_backoff_min_ms);
        positive(
            "supervision.child_backoff_reset_ms",
            sv.child_backoff_reset_ms,
        );
        positive(
            "supervision.child_restart_window_ms",
            sv.child_restart_window_ms,
        );
        if s.max_frame_bytes < 256 {
            errors.push("server.max_frame_bytes must be at least 256".into());
        }
        if !(s.per_ip_handshakes_per_sec.is_finite() && s.per_ip_handshakes_per_sec >= 0.0) {
            errors.push(
                "server.per_ip_handshakes_per_sec must be 0 (off) or a positive number".into(),
            );
        }
        if s.per_ip_handshakes_per_sec > 0.0 && s.per_ip_handshake_burst == 0 {
            errors.push(
                "server.per_ip_handshake_burst must be greater than 0 when per_ip_handshakes_per_sec is set"
                    .into(),
            );
        }
        for (i, net) in s.per_ip_exempt.iter().enumerate() {
            if let Err(message) = IpNet::parse(net) {
                errors.push(format!("server.per_ip_exempt[{i}] {net:?}: {message}"));
            }
        }
        self.tls.validate(&mut errors);
        if s.outbound_budget_bytes < 4 * 1024 {
            errors.push("server.outbound_budget_bytes must be at least 4096".into());
        }
        if !(r.view_radius.is_finite() && r.view_radius > 0.0) {
            errors.push("rooms.view_radius must be a positive number".into());
        }
        if !(r.pickup_radius.is_finite() && r.pickup_radius > 0.0) {
            errors.push("rooms.pickup_radius must be a positive number".into());
        }
        if r.tick_hz > 1_000 {
            errors.push("rooms.tick_hz must be at most 1000".into());
        }
        if self.auth.mode == AuthMode::Production && self.auth.secret.len() < 16 {
            errors.push("auth.secret must be at least 16 bytes in production mode".into());
        }
        if sv.child_backoff_max_ms < sv.child_backoff_min_ms {
            errors.push(
                "supervision.child_backoff_max_ms must be at least child_backoff_min_ms".into(),
            );
        }
        if sv.child_backoff_max_ms > MAX_CHILD_BACKOFF_MS {
            errors.push(format!(
                "supervision.child_backoff_max_ms must be at most {MAX_CHILD_BACKOFF_MS} (one hour)"
            ));
        }
        if sv.max_extra_arbiters > MAX_EXTRA_ARBITERS {
            errors.push(format!(
                "supervision.max_extra_arbiters must be at most {MAX_EXTRA_ARBITERS}"
            ));
        }
        if sv.watchdog_interval_ms >= sv.stall_timeout_ms {
            errors.push("supervision.watchdog_interval_ms must be below stall_timeout_ms".into());
        }
        let map_names: Vec<String> = self.map_defs().into_iter().map(|m| m.name).collect();
        if !sv.fallback_map.is_empty() && !map_names.contains(&sv.fallback_map) {
            errors.push(format!(
                "supervision.fallback_map {:?} names no map (maps: {})",
                sv.fallback_map,
                map_names.join(", ")
            ));
        }
        self.store.validate(&mut errors);
        if self.economy.starter_currency < 0 {
            errors.push("economy.starter_currency must be 0 or more".into());
        }
        if self.economy.max_give_kinds == 0 {
            errors.push("economy.max_give_kinds must be greater than 0".into());
        }
        if self.admin.fault_injection && self.admin.token.is_empty() {
            errors.push("admin.fault_injection needs admin.token".into());
        }
        if self.auth.resume_ttl_s == 0 {
            errors.push("auth.resume_ttl_s must be greater than 0".into());
        }
        if !self.admin.token.is_empty() && self.admin.token.len() < 16 {
            errors.push("admin.token must be empty (admin off) or at least 16 bytes".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            errors.push(format!(
                "log.level {:?} is not a valid filter",
                self.log.level
            ));
        }
        let mut names = BTreeSet::new();
        for (i, m) in self.maps.iter().enumerate() {
            let at = format!("maps[{i}]");
            validate_map(&at, m, &mut errors);
            if !names.insert(m.name.clone()) {
                errors.push(format!("{at}.name {:?} is used twice", m.name));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    pub fn to_toml(&self) -> String {
        // Config is plain data; serializing it to TOML cannot fail.
        toml::to_string_pretty(self).expect("config serializes to TOML")
    }

    /// The configuration as the shard runs it: with no `maps` configured,
    /// the built-in ones it serves. What `--print-config` shows; reading
    /// it back gives the same shard.
    pub fn in_force(&self) -> Config {
        let mut config = self.clone();
        if config.maps.is_empty() {
            config.maps = builtin_maps();
        }
        config
    }
}

fn or_cores(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        n
    }
}

fn validate_map(at: &str, m: &MapConfig, errors: &mut Vec<String>) {
    let valid_name = !m.name.is_empty()
        && m.name.len() <= 64
        && m.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        errors.push(format!(
            "{at}.name {:?} must be 1-64 characters of a-z, 0-9, - or _",
            m.name
        ));
    }
    let positive = |v: f32| v.is_finite() && v > 0.0;
    if !positive(m.width) || !positive(m.height) {
        errors.push(format!("{at}.width and .height must be positive numbers"));
    }
    if !positive(m.speed) {
        errors.push(format!("{at}.speed must be a positive number"));
    }
    let [x, y] = m.spawn;
    if !(x.is_finite()
        && y.is_finite()
        && (0.0..=m.width).contains(&x)
        && (0.0..=m.height).contains(&y))
    {
        errors.push(format!("{at}.spawn must lie inside the map"));
    }
    if !(m.spawn_radius.is_finite() && m.spawn_radius >= 0.0) {
        errors.push(format!("{at}.spawn_radius must be 0 or more"));
    }
    if m.tick_hz.is_some_and(|t| t == 0 || t > 1_000) {
        errors.push(format!("{at}.tick_hz must be 1 to 1000"));
    }
    if m.view_radius.is_some_and(|r| !positive(r)) {
        errors.push(format!("{at}.view_radius must be a positive number"));
    }
    if m.max_players == Some(0) {
        errors.push(format!("{at}.max_players must be greater than 0"));
    }
    if m.idle_stop_ms == Some(0) {
        errors.push(format!("{at}.idle_stop_ms must be greater than 0"));
    }
    let mut kinds = BTreeSet::new();
    for (j, sp) in m.items.iter().enumerate() {
        let at = format!("{at}.items[{j}]");
        let valid_kind = !sp.kind.is_empty()
            && sp.kind.len() <= 32
            && sp
                .kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_kind {
            errors.push(format!(
                "{at}.kind {:?} must be 1-32 characters of a-z, A-Z, 0-9, _ or -",
                sp.kind
            ));
        } else if !kinds.insert(sp.kind.as_str()) {
            errors.push(format!(
                "{at}.kind {:?} has another spawner on this map",
                sp.kind
            ));
        }
        if !(1..=1_000_000).contains(&sp.count) {
            errors.push(format!("{at}.count must be 1 to 1000000"));
        }
        if !(1..=1_000).contains(&sp.max_on_ground) {
            errors.push(format!("{at}.max_on_ground must be 1 to 1000"));
        }
        if sp.every_ms < 10 {
            errors.push(format!("{at}.every_ms must be at least 10"));
        }
    }
}

/// Set the field named by an environment variable's path in the TOML tree.
fn apply_env(root: &mut toml::Value, var: &str, path: &str, raw: &str) -> Result<(), ConfigError> {
    let env_err = |message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
    let (last, parents) = keys
        .split_last()
        .ok_or_else(|| env_err("names no field".into()))?;
    let mut node = root;
    for key in parents {
        node = node
            .get_mut(key.as_str())
            .filter(|v| v.is_table())
            .ok_or_else(|| env_err(format!("no config section {key:?}")))?;
    }
    let table = node
        .as_table_mut()
        .ok_or_else(|| env_err("names no field".into()))?;
    let current = table
        .get(last.as_str())
        .ok_or_else(|| env_err(format!("no config field {last:?} (see --print-config)")))?;
    let value = match current {
        toml::Value::Integer(_) => raw
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| env_err(format!("{raw:?} is not an integer")))?,
        toml::Value::Float(_) => raw
            .parse::<f64>()
            .map(toml::Value::Float)
            .map_err(|_| env_err(format!("{raw:?} is not a number")))?,
        toml::Value::Boolean(_) => raw
            .parse::<bool>()
            .map(toml::Value::Boolean)
            .map_err(|_| env_err(format!("{raw:?} is not true or false")))?,
        toml::Value::String(_) => toml::Value::String(raw.to_string()),
        _ => {
            return Err(env_err(
                "only plain fields can be set from the environment".into(),
            ))
        }
    };
    table.insert(last.clone(), value);
    Ok(())
}

/// Milliseconds to a Duration, for the `_ms` fields.
pub fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let config = Config::default();
        config.validate().unwrap();
        let back: Config = toml::from_str(&config.to_toml()).unwrap();
        assert_eq!(back, config);
        assert_eq!(config.map_defs().len(), 3);
    }

    #[test]
    fn environment_overrides_fields_and_names_bad_ones() {
        let config = Config::load(
            None,
            env(&[
                ("TESSERA_LIMITS__CHAT_MAX_CHARS", "100"),
                ("TESSERA_SERVER__WS_ADDR", "0.0.0.0:9000"),
                ("TESSERA_AUTH__MODE", "production"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(config.limits.chat_max_chars, 100);
        assert_eq!(config.server.ws_addr.port(), 9000);
        assert_eq!(config.auth.mode, AuthMode::Production);

        let err = Config::load(None, env(&[("TESSERA_LIMITS__CHAT_MAX", "1")])).unwrap_err();
        assert!(
            err.to_string().contains("TESSERA_LIMITS__CHAT_MAX"),
            "{err}"
        );
        let err =
            Config::load(None, env(&[("TESSERA_LIMITS__CHAT_MAX_CHARS", "lots")])).unwrap_err();
        assert!(err.to_string().contains("not an integer"), "{err}");
    }

    #[test]
    fn validation_names_each_bad_field() {
        let mut config = Config::default();
        config.limits.move_per_sec = 0;
        config.auth.mode = AuthMode::Production;
        config.rooms.pickup_radius = f32::NAN;
        config.maps.push(MapConfig {
            name: "bad name".into(),
            spawn: [5_000.0, 0.0],
            ..MapConfig::default()
        });
        config.supervision.child_backoff_min_ms = 0;
        config.supervision.child_restart_window_ms = 0;
        config.maps.push(MapConfig {
            name: "ok".into(),
            ..MapConfig::default()
        });
        config.maps.push(MapConfig {
            name: "spawners".into(),
            items: vec![
                SpawnerConfig {
                    kind: "gem".into(),
                    every_ms: 0,
                    ..SpawnerConfig::default()
                },
                SpawnerConfig {
                    kind: "gem".into(),
                    count: 0,
                    max_on_ground: 0,
                    ..SpawnerConfig::default()
                },
                SpawnerConfig {
                    kind: "a.b".into(),
                    ..SpawnerConfig::default()
                },
            ],
            ..MapConfig::default()
        });
        let message = config.validate().unwrap_err().to_string();
        for field in [
            "supervision.child_backoff_min_ms",
            "supervision.child_restart_window_ms",
            "limits.move_per_sec",
            "auth.secret",
            "rooms.pickup_radius",
            "maps[0].name",
            "maps[0].spawn",
            "maps[2].items[0].every_ms",
            "maps[2].items[1].kind",
            "maps[2].items[1].count",
            "maps[2].items[1].max_on_ground",
            "maps[2].items[2].kind",
        ] {
            assert!(message.contains(field), "{field} missing in {message}");
        }
    }

    #[test]
    fn extra_room_arbiters_are_bounded() {
        let mut config = Config::default();
        assert_eq!(config.supervision.max_extra_arbiters, 2);
        config.supervision.max_extra_arbiters = 0;
        config.validate().unwrap();
        config.supervision.max_extra_arbiters = MAX_EXTRA_ARBITERS + 1;
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.contains("supervision.max_extra_arbiters must be at most 64"),
            "{message}"
        );
    }

    #[test]
    fn task_backoff_bounds_are_checked() {
        let mut config = Config::default();
        config.supervision.child_backoff_min_ms = 5_000;
        config.supervision.child_backoff_max_ms = 1_000;
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.contains("supervision.child_backoff_max_ms must be at least"),
            "{message}"
        );
        config.supervision.child_backoff_max_ms = u64::MAX;
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.contains("supervision.child_backoff_max_ms must be at most"),
            "{message}"
        );
        let env = env(&[("TESSERA_SUPERVISION__CHILD_MAX_RESTARTS", "0")]);
        let config = Config::load(None, env).unwrap();
        assert_eq!(config.supervision.child_max_restarts, 0);
        config.validate().unwrap();
    }

    #[test]
    fn spawners_read_from_toml() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.toml");
        std::fs::write(
            &path,
            "[rooms]\npickup_radius = 20.0\n\n[[maps]]\nname = \"lobby\"\nitems = [{ kind = \"gem\", count = 2, max_on_ground = 3, every_ms = 100 }]\n",
        )
        .unwrap();
        let config = Config::load(Some(&path), Vec::new()).unwrap();
        config.validate().unwrap();
        let def = &config.map_defs()[0];
        assert_eq!(def.pickup_radius, 20.0);
        assert_eq!(
            def.items,
            vec![SpawnerConfig {
                kind: "gem".into(),
                count: 2,
                max_on_ground: 3,
                every_ms: 100,
            }]
        );
        // Every built-in map has a spawner.
        assert!(Config::default()
            .map_defs()
            .iter()
            .all(|m| !m.items.is_empty()));
    }

    #[test]
    fn exempt_networks_parse_match_and_name_bad_entries() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.200.1.2".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("fd00::1".parse().unwrap()));
        let one = IpNet::parse("192.0.2.7").unwrap();
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.8".parse().unwrap()));
        let v6 = IpNet::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12:3456::1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        let mut config = Config::default();
        config.server.per_ip_exempt = vec!["10.0.0.0/33".into(), "nope".into()];
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("server.per_ip_exempt[0]"), "{message}");
        assert!(message.contains("server.per_ip_exempt[1]"), "{message}");
    }

    #[test]
    fn unknown_fields_in_a_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tessera.toml");
        std::fs::write(&path, "[server]\nws_adr = \"127.0.0.1:1\"\n").unwrap();
        let err = Config::load(Some(&path), Vec::new()).unwrap_err();
        assert!(err.to_string().contains("ws_adr"), "{err}");
    }
}
