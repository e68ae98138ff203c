//! `[store]`: where state is persisted and how the persister behaves.
//! (The store reads it; it lives here with the rest of the configuration,
//! so configuration depends on nothing above it.)

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// redb files under `store.embedded.dir`: nothing to set up.
    Embedded,
    /// A MongoDB deployment at `store.mongodb.uri`.
    Mongodb,
}

/// `[store]`: where state is persisted and how the persister behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub backend: Backend,
    pub embedded: EmbeddedConfig,
    pub mongodb: MongoConfig,
    /// Volatile writes are flushed this often (and on demand).
    pub flush_interval_ms: u64,
    /// Documents per store call when flushing.
    pub flush_batch_max: usize,
    /// How long `flush().await` waits for the store.
    pub flush_timeout_ms: u64,
    /// A durable op not acknowledged within this fails (in doubt if it was
    /// sent) and marks the store down, so the next ones fail fast.
    pub durable_timeout_ms: u64,
    /// Durable ops in flight at most; more fail fast as unavailable.
    pub durable_max_in_flight: usize,
    /// Threads the store may block at once (its runtime's blocking pool:
    /// every embedded-store transaction runs on one). redb writes one
    /// transaction at a time, so more threads only wait on its lock, each
    /// holding a stack and an allocator cache: a login burst of 256
    /// profile loads once started 248 of them.
    pub io_threads: usize,
    /// Backoff between retries after a failure: doubles from min to max,
    /// with jitter.
    pub retry_min_ms: u64,
    pub retry_max_ms: u64,
    /// Shutdown waits this long for the final flush, then logs what is
    /// left and exits.
    pub shutdown_flush_deadline_ms: u64,
    /// Half-done trades (Mongo) older than this are settled by recovery.
    pub trade_recovery_age_ms: u64,
    /// Finished rows of the trade and op ledgers are kept this long, then
    /// pruned (same on both backends). An op retried or re-driven later
    /// than this would be applied again, so it must exceed the longest
    /// time a client may retry or a room may stay unloaded with a pick-up
    /// pending.
    pub ledger_retention_ms: u64,
}

/// The most `store.io_threads` accepted.
pub const MAX_STORE_IO_THREADS: usize = 512;

/// At least an hour of ledger: a shorter one would forget ops that are
/// still being retried.
pub const MIN_LEDGER_RETENTION_MS: u64 = 3_600_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Directory of the redb file (`tessera.redb`); created if missing.
    pub dir: PathBuf,
    /// redb's page cache, in MiB. Every player document written leaves its
    /// pages in it (about 0.7-0.9 KiB a player), so without a cap a
    /// long-running shard's memory follows the number of players it has
    /// ever seen (redb's own default cap is 1 GiB).
    pub cache_mb: u64,
}

/// The largest `store.embedded.cache_mb` accepted (64 GiB).
pub const MAX_EMBEDDED_CACHE_MB: u64 = 65_536;

impl EmbeddedConfig {
    /// The page cache in bytes.
    pub fn cache_bytes(&self) -> usize {
        usize::try_from(self.cache_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MongoConfig {
    /// `mongodb://` or `mongodb+srv://` connection string. Options in it
    /// (TLS, credentials, replicaSet, ...) are honoured; the fields below
    /// win over the same options in it.
    pub uri: String,
    pub database: String,
    pub max_pool_size: u32,
    pub min_pool_size: u32,
    pub connect_timeout_ms: u64,
    /// How long an operation waits for a usable server before failing as
    /// unavailable. Below `store.durable_timeout_ms`, so an unreachable
    /// store is reported as such and not as in doubt.
    pub server_selection_timeout_ms: u64,
    /// `w` for every write: "majority" or a number of nodes.
    pub write_concern: String,
    /// `j` for every write: acknowledged only once in the journal.
    pub journal: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Backend::Embedded,
            embedded: EmbeddedConfig::default(),
            mongodb: MongoConfig::default(),
            flush_interval_ms: 1_000,
            flush_batch_max: 500,
            flush_timeout_ms: 5_000,
            durable_timeout_ms: 2_000,
            durable_max_in_flight: 256,
            io_threads: 4,
            retry_min_ms: 100,
            retry_max_ms: 10_000,
            shutdown_flush_deadline_ms: 5_000,
            trade_recovery_age_ms: 60_000,
            ledger_retention_ms: 7 * 24 * 3_600_000,
        }
    }
}

impl Default for EmbeddedConfig {
    fn default() -> Self {
        EmbeddedConfig {
            dir: PathBuf::from("tessera-data"),
            cache_mb: 64,
        }
    }
}

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig {
            uri: "mongodb://127.0.0.1:27017".into(),
            database: "tessera".into(),
            max_pool_size: 16,
            min_pool_size: 0,
            connect_timeout_ms: 2_000,
            server_selection_timeout_ms: 1_000,
            write_concern: "majority".into(),
            journal: true,
        }
    }
}

impl StoreConfig {
    /// Check every field, pushing one message per problem naming its path
    /// (`store.flush_interval_ms`, ...).
    pub fn validate(&self, errors: &mut Vec<String>) {
        let mut positive = |name: &str, value: u64| {
            if value == 0 {
                errors.push(format!("store.{name} must be greater than 0"));
            }
        };
        positive("flush_interval_ms", self.flush_interval_ms);
        positive("flush_batch_max", self.flush_batch_max as u64);
        positive("flush_timeout_ms", self.flush_timeout_ms);
        positive("durable_timeout_ms", self.durable_timeout_ms);
        positive("durable_max_in_flight", self.durable_max_in_flight as u64);
        positive("retry_min_ms", self.retry_min_ms);
        positive("retry_max_ms", self.retry_max_ms);
        positive("trade_recovery_age_ms", self.trade_recovery_age_ms);
        if !(1..=MAX_STORE_IO_THREADS).contains(&self.io_threads) {
            errors.push(format!(
                "store.io_threads must be between 1 and {MAX_STORE_IO_THREADS}"
            ));
        }
        if self.retry_min_ms > self.retry_max_ms {
            errors.push("store.retry_min_ms must not exceed store.retry_max_ms".into());
        }
        if self.ledger_retention_ms < MIN_LEDGER_RETENTION_MS {
            errors.push(format!(
                "store.ledger_retention_ms must be at least {MIN_LEDGER_RETENTION_MS} (one hour)"
            ));
        } else if self.ledger_retention_ms <= self.trade_recovery_age_ms {
            errors
                .push("store.ledger_retention_ms must be above store.trade_recovery_age_ms".into());
        }
        if self.flush_batch_max > 100_000 {
            errors.push("store.flush_batch_max must be at most 100000".into());
        }
        match self.backend {
            Backend::Embedded => {
                if self.embedded.dir.as_os_str().is_empty() {
                    errors.push("store.embedded.dir must not be empty".into());
                }
                if !(1..=MAX_EMBEDDED_CACHE_MB).contains(&self.embedded.cache_mb) {
                    errors.push(format!(
                        "store.embedded.cache_mb must be between 1 and {MAX_EMBEDDED_CACHE_MB}"
                    ));
                }
            }
            Backend::Mongodb => self.mongodb.validate(self.durable_timeout_ms, errors),
        }
    }

    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    pub fn durable_timeout(&self) -> Duration {
        Duration::from_millis(self.durable_timeout_ms)
    }

    pub fn shutdown_flush_deadline(&self) -> Duration {
        Duration::from_millis(self.shutdown_flush_deadline_ms)
    }

    pub fn ledger_retention(&self) -> Duration {
        Duration::from_millis(self.ledger_retention_ms)
    }
}

impl MongoConfig {
    fn validate(&self, durable_timeout_ms: u64, errors: &mut Vec<String>) {
        if !(self.uri.starts_with("mongodb://") || self.uri.starts_with("mongodb+srv://")) {
            errors.push("store.mongodb.uri must start with mongodb:// or mongodb+srv://".into());
        }
        let db_ok = !self.database.is_empty()
            && self.database.len() < 64
            && !self
                .database
                .chars()
                .any(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0'));
        if !db_ok {
            errors.push(format!(
                "store.mongodb.database {:?} must be 1-63 characters without / \\ . space \" $",
                self.database
            ));
        }
        if self.max_pool_size == 0 {
            errors.push("store.mongodb.max_pool_size must be greater than 0".into());
        }
        if self.min_pool_size > self.max_pool_size {
            errors.push(
                "store.mongodb.min_pool_size must not exceed store.mongodb.max_pool_size".into(),
            );
        }
        if self.connect_timeout_ms == 0 {
            errors.push("store.mongodb.connect_timeout_ms must be greater than 0".into());
        }
        if self.server_selection_timeout_ms == 0 {
            errors.push("store.mongodb.server_selection_timeout_ms must be greater than 0".into());
        } else if self.server_selection_timeout_ms >= durable_timeout_ms {
            errors.push(
                "store.mongodb.server_selection_timeout_ms must be below store.durable_timeout_ms, \
                 so that an unreachable store fails as unavailable rather than in doubt"
                    .into(),
            );
        }
        let w_ok = self.write_concern == "majority" || self.write_concern.parse::<u32>().is_ok();
        if !w_ok {
            errors.push(format!(
                "store.mongodb.write_concern {:?} must be \"majority\" or a number",
                self.write_concern
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_round_trip_through_toml() {
        let config = StoreConfig::default();
        let mut errors = Vec::new();
        config.validate(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let text = toml::to_string(&config).unwrap();
        let back: StoreConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, config);
        let mongo: StoreConfig = toml::from_str(
            "backend = \"mongodb\"\nflush_interval_ms = 250\n[mongodb]\nuri = \"mongodb://db:27017\"\n",
        )
        .unwrap();
        assert_eq!(mongo.backend, Backend::Mongodb);
        assert_eq!(mongo.flush_interval_ms, 250);
        assert_eq!(mongo.mongodb.database, "tessera");
        assert!(toml::from_str::<StoreConfig>("flush_intervl_ms = 1").is_err());
    }

    #[test]
    fn validation_names_each_bad_field() {
        let config = StoreConfig {
            backend: Backend::Mongodb,
            flush_interval_ms: 0,
            retry_min_ms: 500,
            retry_max_ms: 100,
            ledger_retention_ms: 1_000,
            mongodb: MongoConfig {
                uri: "http://x".into(),
                database: "a.b".into(),
                server_selection_timeout_ms: 5_000,
                write_concern: "most".into(),
                ..MongoConfig::default()
            },
            ..StoreConfig::default()
        };
        let mut errors = Vec::new();
        config.validate(&mut errors);
        let all = errors.join("\n");
        for field in [
            "store.flush_interval_ms",
            "store.retry_min_ms",
            "store.ledger_retention_ms",
            "store.mongodb.uri",
            "store.mongodb.database",
            "store.mongodb.server_selection_timeout_ms",
            "store.mongodb.write_concern",
        ] {
            assert!(all.contains(field), "{field} not named in:\n{all}");
        }
    }
}
