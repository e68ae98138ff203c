//! Configuration: one `#[serde(default)]` struct, read from an optional TOML
//! file, overridden by `TESSERA_*` environment variables and then by flags,
//! validated once at start.
//!
//! Environment overrides name a field by its path with `__` between levels:
//! `TESSERA_LIMITS__CHAT_MAX_CHARS=100`, `TESSERA_SERVER__WS_ADDR=0.0.0.0:7350`.
//! A variable naming no field is an error, so a typo does not go unnoticed.
//!
//! # Layout
//!
//! One file per group of sections, each with its types, defaults and
//! helpers; everything is re-exported here, so `config::X` names them all.
//!
//! - `mod.rs`: [`Config`], loading (file, then environment) and printing.
//! - `listeners`: `[server]` ([`ServerConfig`], [`IpNet`]) and `[tls]`.
//! - `access`: `[auth]`, `[limits]` (and [`Config::welcome_limits`], the
//!   one place they become the protocol's [`protocol::Limits`]), `[admin]`.
//! - `world`: `[rooms]`, `[[maps]]`, `[economy]`, the built-in maps and
//!   [`MapDef`].
//! - `supervision`: `[supervision]`.
//! - `store`: `[store]`, read by the store (which imports it from here).
//! - `log`: `[log]`.
//! - `cluster`: `[cluster]` ([`ClusterConfig`], [`Config::shard_id`]).
//! - `validate`: [`Config::validate`], every section at once.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod access;
mod cluster;
mod listeners;
mod log;
mod store;
mod supervision;
mod tunnel;
mod validate;
mod world;

#[cfg(test)]
mod tests;

pub use access::{AdminConfig, AdminToken, AuthConfig, AuthMode, LimitsConfig, ADMIN_TOKEN_NAME};
pub use cluster::{check_shard_id, derive_shard_id, host_name, ClusterConfig, MIN_CLUSTER_SECRET};
pub use listeners::{IpNet, ServerConfig, TlsConfig, TlsFiles};
pub use log::{LogConfig, LogFormat};
pub use store::{Backend, EmbeddedConfig, MongoConfig, StoreConfig, MIN_LEDGER_RETENTION_MS};
pub use supervision::SupervisionConfig;
pub use tunnel::TunnelConfig;
pub use world::{
    builtin_maps, EconomyConfig, Instances, MapConfig, MapDef, RoomsConfig, SpawnerConfig,
};

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
    pub store: StoreConfig,
    pub economy: EconomyConfig,
    pub admin: AdminConfig,
    pub tls: TlsConfig,
    pub log: LogConfig,
    /// Cluster mode (off unless `cluster.redis` is set).
    pub cluster: ClusterConfig,
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

    /// Session Arbiters in force.
    pub fn workers(&self) -> usize {
        or_cores(self.server.workers)
    }

    /// Room Arbiters in force.
    pub fn room_arbiters(&self) -> usize {
        or_cores(self.rooms.arbiters)
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

    /// This configuration with every secret replaced by [`REDACTED`]: the
    /// auth and cluster secrets, admin tokens, and the password in the
    /// MongoDB and Redis URLs. What `--print-config` prints unless
    /// `--show-secrets` is given, so a config printed into a log or a
    /// ticket gives nothing away (put the secrets back to read it in).
    pub fn redacted(&self) -> Config {
        let mut config = self.clone();
        let hide = |s: &mut String| {
            if !s.is_empty() {
                *s = REDACTED.to_string();
            }
        };
        hide(&mut config.auth.secret);
        hide(&mut config.cluster.secret);
        hide(&mut config.admin.token);
        for token in &mut config.admin.tokens {
            hide(&mut token.token);
        }
        config.store.mongodb.uri = redact_url_password(&config.store.mongodb.uri);
        config.cluster.redis = redact_url_password(&config.cluster.redis);
        config
    }
}

/// What a secret is printed as by [`Config::redacted`].
pub const REDACTED: &str = "<redacted>";

/// `url` with the password of its user info (`scheme://user:PASSWORD@host`)
/// replaced by [`REDACTED`]; anything else unchanged.
fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The user info ends at the last '@' before the first '/' (a password
    // may itself hold '@' only percent-encoded, but be lenient).
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_string();
    };
    match rest[..at].split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:{REDACTED}{}", &rest[at..]),
        None => url.to_string(),
    }
}

fn or_cores(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        n
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
