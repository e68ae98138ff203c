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
//! its heartbeats (dead to the cluster). Room leases are the string
//! `{prefix}:room:{room}` = `shard:epoch` (PX `cluster.lease_ms`, renewed
//! every `cluster.renew_ms`) and the set `{prefix}:rooms:{id}` of the
//! rooms shard `id` took a lease on.
//!
//! The loadbot links this module too (its `--redis`: which shard owns each
//! room), so the directory's layout is read in one place outside the
//! server.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use protocol::peer::rendezvous;
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
        let mut con = self.connection()?;
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

    fn connection(&self) -> anyhow::Result<redis::Connection> {
        let con = self
            .client
            .get_connection_with_timeout(self.timeout)
            .context("connecting to the directory's Redis")?;
        con.set_read_timeout(Some(self.timeout))?;
        con.set_write_timeout(Some(self.timeout))?;
        Ok(con)
    }

    /// The lease of each room in `rooms` (a room id as the server prints
    /// it: `lobby`, `lobby#2`), `None` where nobody holds one.
    pub fn leases_of(&self, rooms: &[String]) -> anyhow::Result<Vec<Option<RoomLease>>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        self.read_leases(&mut self.connection()?, rooms)
    }

    fn read_leases(
        &self,
        con: &mut redis::Connection,
        rooms: &[String],
    ) -> anyhow::Result<Vec<Option<RoomLease>>> {
        let mut pipe = redis::pipe();
        for room in rooms {
            let key = format!("{}:room:{room}", self.prefix);
            pipe.cmd("GET").arg(&key);
            pipe.cmd("PTTL").arg(&key);
        }
        let answers: Vec<redis::Value> = pipe.query(con).context("reading room leases")?;
        Ok(rooms
            .iter()
            .zip(answers.chunks(2))
            .map(|(room, pair)| {
                let [value, ttl] = pair else { return None };
                let value: Option<String> = redis::from_redis_value(value).ok()?;
                let ttl: i64 = redis::from_redis_value(ttl).unwrap_or(-2);
                RoomLease::parse(room, &value?, ttl)
            })
            .collect())
    }

    /// Every lease held now: the rooms in each registered shard's room
    /// set whose lease is still there, sorted by room. A room in a set
    /// whose lease expired or went to another shard is not counted twice:
    /// the lease's value names its holder.
    pub fn leases(&self) -> anyhow::Result<Vec<RoomLease>> {
        let mut con = self.connection()?;
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}:shards", self.prefix))
            .query(&mut con)
            .context("reading the shard set")?;
        let mut rooms: Vec<String> = Vec::new();
        if !ids.is_empty() {
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("SMEMBERS")
                    .arg(format!("{}:rooms:{id}", self.prefix));
            }
            let sets: Vec<Vec<String>> = pipe.query(&mut con).context("reading room sets")?;
            rooms = sets.into_iter().flatten().collect();
        }
        rooms.sort();
        rooms.dedup();
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let mut out: Vec<RoomLease> = self
            .read_leases(&mut con, &rooms)?
            .into_iter()
            .flatten()
            .collect();
        out.sort_by(|a, b| a.room.cmp(&b.room));
        Ok(out)
    }
}

/// An event of the directory's stream (`{prefix}:events`): shard up and
/// down, rooms placed, moved, failed over, released, admin actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ClusterEvent {
    /// The stream entry id.
    pub id: String,
    pub at_ms: u64,
    pub shard: String,
    /// `shard_up`, `room_placed`, ... as the server names them.
    pub kind: String,
    pub subject: String,
    pub detail: String,
}

impl ShardDirectory {
    /// The last `count` events of the directory's stream, oldest first.
    pub fn events_tail(&self, count: usize) -> anyhow::Result<Vec<ClusterEvent>> {
        let mut con = self.connection()?;
        let reply: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(format!("{}:events", self.prefix))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count)
            .query(&mut con)
            .context("reading the events stream")?;
        let mut events: Vec<ClusterEvent> = reply
            .ids
            .into_iter()
            .map(|entry| {
                let field = |k: &str| -> String {
                    entry
                        .map
                        .get(k)
                        .and_then(|v| redis::from_redis_value::<String>(v).ok())
                        .unwrap_or_default()
                };
                ClusterEvent {
                    at_ms: field("time").parse().unwrap_or(0),
                    shard: field("shard"),
                    kind: field("kind"),
                    subject: field("subject"),
                    detail: field("detail"),
                    id: entry.id,
                }
            })
            .collect();
        events.reverse();
        Ok(events)
    }
}

/// `shards ls --redis`'s line for one shard: id, state, version,
/// addresses, load, then its leases: how many, the stalest one's age since
/// renewal and the closest expiry (`-` without leases).
pub fn shard_line(s: &DirectoryShard, leases: &[RoomLease], lease_ms: u64) -> String {
    let held: Vec<&RoomLease> = leases.iter().filter(|l| l.shard == s.id).collect();
    let ttl_min = held.iter().filter_map(|l| l.ttl_ms).min();
    let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
    format!(
        "{:<24} {:<9} v{} ws {} http {} peer {} sessions {:>5} rooms {:>4} leases {:>4} oldest {:>8} expires in {:>8}\n",
        s.id,
        s.shown_state(),
        s.version,
        s.ws,
        s.http,
        s.peer,
        s.sessions,
        s.rooms,
        held.len(),
        ms(ttl_min.map(|t| lease_ms.saturating_sub(t))),
        ms(ttl_min)
    )
}

/// A room's lease as the directory holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomLease {
    pub room: String,
    /// The shard holding it.
    pub shard: String,
    pub epoch: u64,
    /// Milliseconds until it expires unless renewed (Redis `PTTL`); `None`
    /// for a lease without expiry, which the server never writes.
    pub ttl_ms: Option<u64>,
}

impl RoomLease {
    /// `shard:epoch` with its `PTTL`; `None` when the value is not a lease.
    fn parse(room: &str, value: &str, pttl: i64) -> Option<RoomLease> {
        let (shard, epoch) = value.rsplit_once(':')?;
        if shard.is_empty() {
            return None;
        }
        Some(RoomLease {
            room: room.to_string(),
            shard: shard.to_string(),
            epoch: epoch.parse().ok()?,
            ttl_ms: u64::try_from(pttl).ok(),
        })
    }

    /// Milliseconds since the holder last took or renewed the lease, given
    /// the shards' `cluster.lease_ms` (a renewal resets the expiry to it).
    pub fn age_ms(&self, lease_ms: u64) -> Option<u64> {
        self.ttl_ms.map(|ttl| lease_ms.saturating_sub(ttl))
    }
}

/// Where a new room goes: the alive, ready shard with the highest
/// [`rendezvous`] weight (the server's `Directory::place`, which a room's
/// first join runs). `None` when no shard is ready.
pub fn placed_on<'a>(room: &str, shards: &'a [DirectoryShard]) -> Option<&'a DirectoryShard> {
    shards
        .iter()
        .filter(|s| s.alive && s.state == "ready")
        .max_by_key(|s| (rendezvous(room, &s.id), s.id.clone()))
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
pub struct DirectorySource {
    pub directory: ShardDirectory,
    /// The shards' `cluster.lease_ms`: lease ages are `lease_ms - PTTL`.
    pub lease_ms: u64,
}

/// The directory at one moment: its shard records and every lease.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub shards: Vec<DirectoryShard>,
    pub leases: Vec<RoomLease>,
    pub lease_ms: u64,
}

impl ShardSource for DirectorySource {
    fn shards(&self) -> Vec<String> {
        match self.directory.shards() {
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

    fn cluster(&self) -> bool {
        true
    }

    fn events(&self, count: usize) -> Option<Result<Vec<ClusterEvent>, String>> {
        Some(
            self.directory
                .events_tail(count)
                .map_err(|e| format!("{e:#}")),
        )
    }

    fn directory(&self) -> Option<Result<Snapshot, String>> {
        let read = || -> anyhow::Result<Snapshot> {
            Ok(Snapshot {
                shards: self.directory.shards()?,
                leases: self.directory.leases()?,
                lease_ms: self.lease_ms,
            })
        };
        Some(read().map_err(|e| format!("{e:#}")))
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

    fn shard(id: &str, state: &str, alive: bool) -> DirectoryShard {
        record(
            id.to_string(),
            &[("state".to_string(), state.to_string())].into(),
            alive,
        )
    }

    #[test]
    fn placement_skips_dead_and_draining_shards() {
        let all = [
            shard("shard-1", "ready", true),
            shard("shard-2", "ready", true),
            shard("shard-3", "ready", true),
        ];
        // shard-2 has the highest weight for "lobby" (values above).
        assert_eq!(
            placed_on("lobby", &all).map(|s| s.id.as_str()),
            Some("shard-2")
        );
        let drained = [
            shard("shard-1", "ready", true),
            shard("shard-2", "draining", true),
            shard("shard-3", "ready", true),
        ];
        assert_eq!(
            placed_on("lobby", &drained).map(|s| s.id.as_str()),
            Some("shard-3")
        );
        let dead = [shard("shard-2", "ready", false)];
        assert_eq!(placed_on("lobby", &dead), None);
    }

    #[test]
    fn a_lease_value_parses_and_ages() {
        let lease = RoomLease::parse("lobby", "shard-1:7", 2500).expect("a lease");
        assert_eq!((lease.shard.as_str(), lease.epoch), ("shard-1", 7));
        assert_eq!(lease.age_ms(3000), Some(500));
        assert_eq!(
            RoomLease::parse("lobby", "shard-1:7", -1).unwrap().ttl_ms,
            None
        );
        assert!(RoomLease::parse("lobby", "nocolon", 10).is_none());
        assert!(RoomLease::parse("lobby", ":3", 10).is_none());
        assert!(RoomLease::parse("lobby", "a:b", 10).is_none());
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(ShardDirectory::new("http://x", "p", Duration::from_secs(1)).is_err());
        assert!(ShardDirectory::new("redis://127.0.0.1:1/0", "", Duration::from_secs(1)).is_err());
    }
}
