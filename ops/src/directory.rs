//! The cluster's directory, read-only: which shards are registered, where
//! they listen and whether they are alive. `tessera-ops shards ls --redis`
//! and the console's `--redis` source read it.
//!
//! Read straight from Redis rather than through a shard: no shard serves
//! the directory's shard list over HTTP, and the console must find the
//! shards before it can ask any of them. The layout is the server's
//! (`server::cluster::directory`, which `ops` does not link): the set
//! `{prefix}:shards` of ids, a hash `{prefix}:shard:{id}` per shard (`ws`,
//! `http`, `peer`, `version`, `state`, `sessions`, `rooms`, `updated_at`)
//! and the key `{prefix}:alive:{id}`, which expires when the shard misses
//! its heartbeats (dead to the cluster).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::console::ShardSource;

/// One shard as the directory records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DirectoryShard {
    pub id: String,
    /// `ready`, `draining`, ... as the shard last wrote it.
    pub state: String,
    /// False once its alive key expired: the shard is dead.
    pub alive: bool,
    pub ws: String,
    pub http: String,
    pub peer: String,
    pub version: String,
    pub sessions: u64,
    pub rooms: u64,
    /// Unix milliseconds of its last heartbeat.
    pub updated_at: u64,
}

impl DirectoryShard {
    /// `dead` for a shard whose alive key is gone, else its state.
    pub fn shown_state(&self) -> &str {
        if self.alive {
            &self.state
        } else {
            "dead"
        }
    }
}

/// A cluster's directory in Redis.
pub struct ShardDirectory {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
}

impl ShardDirectory {
    /// `url` is `redis://HOST:PORT/DB` (the shards' `cluster.redis`),
    /// `prefix` their `cluster.key_prefix`; every Redis call gives up
    /// after `timeout`.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> anyhow::Result<ShardDirectory> {
        let client = redis::Client::open(url).with_context(|| format!("--redis {url:?}"))?;
        anyhow::ensure!(!prefix.is_empty(), "--key-prefix must not be empty");
        Ok(ShardDirectory {
            client,
            prefix: prefix.to_string(),
            timeout,
        })
    }

    /// Every registered shard, alive or dead, by id.
    pub fn shards(&self) -> anyhow::Result<Vec<DirectoryShard>> {
        let mut con = self
            .client
            .get_connection_with_timeout(self.timeout)
            .context("connecting to the directory's Redis")?;
        con.set_read_timeout(Some(self.timeout))?;
        con.set_write_timeout(Some(self.timeout))?;
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}:shards", self.prefix))
            .query(&mut con)
            .context("reading the shard set")?;
        ids.sort();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL")
                .arg(format!("{}:shard:{id}", self.prefix));
            pipe.cmd("EXISTS")
                .arg(format!("{}:alive:{id}", self.prefix));
        }
        let answers: Vec<redis::Value> =
            pipe.query(&mut con).context("reading the shard records")?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, pair) in ids.into_iter().zip(answers.chunks(2)) {
            let [hash, alive] = pair else { continue };
            let hash: HashMap<String, String> = redis::from_redis_value(hash).unwrap_or_default();
            if hash.is_empty() {
                continue;
            }
            let alive: bool = redis::from_redis_value(alive).unwrap_or(false);
            out.push(record(id, &hash, alive));
        }
        Ok(out)
    }
}

fn record(id: String, h: &HashMap<String, String>, alive: bool) -> DirectoryShard {
    let text = |k: &str| h.get(k).cloned().unwrap_or_default();
    let num = |k: &str| h.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
    DirectoryShard {
        id,
        state: text("state"),
        alive,
        ws: text("ws"),
        http: text("http"),
        peer: text("peer"),
        version: text("version"),
        sessions: num("sessions"),
        rooms: num("rooms"),
        updated_at: num("updated_at"),
    }
}

/// The console's shards from the directory: every registered shard's HTTP
/// address, dead ones included (the console shows a shard that does not
/// answer as dead). Read again at every refresh, so shards that join or
/// leave appear and disappear; a directory that does not answer shows no
/// shards for that refresh (and is logged).
pub struct DirectorySource(pub ShardDirectory);

impl ShardSource for DirectorySource {
    fn shards(&self) -> Vec<String> {
        match self.0.shards() {
            Ok(shards) => shards
                .into_iter()
                .filter(|s| !s.http.is_empty())
                .map(|s| format!("http://{}", s.http))
                .collect(),
            Err(e) => {
                eprintln!("console: the directory did not answer: {e:#}");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_its_fields_and_a_dead_shard_shows_dead() {
        let h: HashMap<String, String> = [
            ("state", "ready"),
            ("http", "127.0.0.1:1"),
            ("sessions", "3"),
            ("rooms", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let alive = record("a".into(), &h, true);
        assert_eq!(alive.shown_state(), "ready");
        assert_eq!((alive.sessions, alive.rooms), (3, 0));
        assert_eq!(record("a".into(), &h, false).shown_state(), "dead");
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(ShardDirectory::new("http://x", "p", Duration::from_secs(1)).is_err());
        assert!(ShardDirectory::new("redis://127.0.0.1:1/0", "", Duration::from_secs(1)).is_err());
    }
}
