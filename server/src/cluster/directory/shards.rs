//! Shards: a hash per shard plus an alive key that heartbeats renew.

use std::collections::HashMap;

use super::metric;
use super::scripts::REAP_SHARD;
use super::ShardState;
use super::{
    unix_ms, Directory, DirectoryError, EventKind, Result, ShardId, ShardInfo, ShardLoad,
    ShardRecord,
};

impl Directory {
    /// At start, before serving: refuse this shard id when another live
    /// process heartbeats as it (two processes with one id take each
    /// other's rooms in turn). `started_at` tells this process's record
    /// apart from theirs. A record whose heartbeat is fresh is watched
    /// until its next heartbeat is due: one that comes means a live
    /// process ([`DirectoryError::IdInUse`]); none means one that died (or
    /// is frozen) within its TTL, which this process replaces as before.
    /// Redis unreachable: nothing can be told; the start goes on (the
    /// heartbeat still notices a duplicate later, see
    /// [`Directory::heartbeat`]).
    pub async fn ensure_id_free(&self, started_at: u64) -> Result<()> {
        let heartbeat = self.settings().heartbeat;
        let first = match self.other_record(started_at).await {
            Ok(Some(record)) => record,
            Ok(None) => return Ok(()),
            Err(e) if e.is_unavailable() => {
                tracing::warn!(error = %e, "cannot check that this shard id is free");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        // Its next heartbeat is due one period after its last, with half
        // a period of slack; one older than that is already late.
        let due = first.updated_at + heartbeat.as_millis() as u64 * 3 / 2;
        // Bounded: its clock may be ahead of ours.
        let wait = due
            .saturating_sub(unix_ms())
            .min(heartbeat.as_millis() as u64 * 2);
        if wait == 0 {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        match self.other_record(started_at).await {
            Ok(Some(now))
                if now.started_at == first.started_at && now.updated_at > first.updated_at =>
            {
                Err(DirectoryError::IdInUse {
                    shard: self.shard().clone(),
                    started_at: now.started_at,
                    ws: now.ws,
                })
            }
            Ok(_) => Ok(()),
            Err(e) if e.is_unavailable() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// This shard id's record when it is alive and another process's
    /// (`started_at` differs).
    async fn other_record(&self, started_at: u64) -> Result<Option<OtherRecord>> {
        let id = self.shard().to_string();
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(self.key(&["shard", &id]))
            .arg(&["started_at", "updated_at", "ws"])
            .cmd("EXISTS")
            .arg(self.key(&["alive", &id]));
        let (fields, alive): (Vec<Option<String>>, bool) =
            self.run("shard_id_check", &pipe).await?;
        let number = |i: usize| fields.get(i)?.as_deref()?.parse::<u64>().ok();
        Ok(match (alive, number(0), number(1)) {
            (true, Some(theirs), Some(updated_at)) if theirs != started_at => Some(OtherRecord {
                started_at: theirs,
                updated_at,
                ws: fields.get(2).cloned().flatten().unwrap_or_default(),
            }),
            _ => None,
        })
    }

    /// Register this shard (state `starting`, no load yet) and tell the
    /// events stream. The record is kept and re-asserted by every
    /// heartbeat, so a Redis that lost its data learns it again.
    pub async fn register(&self, record: ShardRecord) -> Result<()> {
        *self.inner.record.lock() = Some(record.clone());
        // Replacing a former process's record is what registering does.
        self.write_record(ShardLoad::default(), false).await?;
        self.emit(EventKind::ShardUp, self.shard().as_str(), &record.version)
            .await
    }

    /// Write this shard's whole record with `load`, and renew its alive
    /// key. What the heartbeat does every `cluster.heartbeat_ms`.
    ///
    /// The record it replaces should be this process's own: one written
    /// by another process (started at another time) means two live
    /// processes share this shard id (one started while Redis was down,
    /// so [`Directory::ensure_id_free`] could not tell). That is logged as
    /// an error and counted (`tessera_shard_id_conflicts_total`) at every
    /// heartbeat that finds it, on both processes, for an operator to stop
    /// one; the leases' epochs keep the rooms' state safe meanwhile.
    pub async fn heartbeat(&self, load: ShardLoad) -> Result<()> {
        self.write_record(load, true).await
    }

    async fn write_record(&self, load: ShardLoad, check: bool) -> Result<()> {
        let Some(record) = self.inner.record.lock().clone() else {
            return Ok(());
        };
        let state = *self.inner.state.lock();
        let id = self.shard().to_string();
        let hash = self.key(&["shard", &id]);
        let alive = self.key(&["alive", &id]);
        let all = self.key(&["shards"]);
        let ttl = self.settings().shard_ttl.as_millis() as u64;
        let fields: Vec<(&str, String)> = vec![
            ("id", id.clone()),
            ("ws", record.ws_addr),
            ("http", record.http_addr),
            ("peer", record.peer_addr),
            ("version", record.version),
            ("state", state.name().to_string()),
            ("sessions", load.sessions.to_string()),
            ("rooms", load.rooms.to_string()),
            ("cpu", format!("{:.3}", load.cpu)),
            ("started_at", record.started_at.to_string()),
            ("updated_at", unix_ms().to_string()),
        ];
        let mut pipe = redis::pipe();
        pipe.cmd("HGET")
            .arg(&hash)
            .arg("started_at")
            .cmd("HSET")
            .arg(&hash)
            .arg(fields)
            .ignore()
            .cmd("HDEL")
            .arg(&hash)
            .arg("down")
            .ignore()
            .cmd("SET")
            .arg(&alive)
            .arg(unix_ms())
            .arg("PX")
            .arg(ttl)
            .ignore()
            .cmd("SADD")
            .arg(&all)
            .arg(&id)
            .ignore();
        let (before,): (Option<String>,) = self.run("heartbeat", &pipe).await?;
        let ours = record.started_at.to_string();
        if let Some(theirs) = before.filter(|theirs| check && *theirs != ours) {
            metrics::counter!(metric::SHARD_ID_CONFLICTS).increment(1);
            tracing::error!(
                shard = %id,
                ours = %ours,
                theirs = %theirs,
                "another live process heartbeats as this shard id: stop one of them"
            );
        }
        Ok(())
    }

    /// Report this shard's load now (the heartbeat reports it anyway).
    pub async fn set_load(&self, load: ShardLoad) -> Result<()> {
        self.heartbeat(load).await
    }

    /// Change this shard's state (`ready` once listening, `draining` at
    /// shutdown). Remembered for every later heartbeat.
    pub async fn set_state(&self, state: ShardState) -> Result<()> {
        *self.inner.state.lock() = state;
        let key = self.key(&["shard", self.shard().as_str()]);
        self.run::<()>(
            "set_state",
            redis::cmd("HSET").arg(key).arg("state").arg(state.name()),
        )
        .await?;
        if state == ShardState::Draining {
            self.emit(EventKind::ShardDraining, self.shard().as_str(), "")
                .await?;
        }
        Ok(())
    }

    /// This shard's state as it last set it.
    pub fn state(&self) -> ShardState {
        *self.inner.state.lock()
    }

    /// Leave the cluster: delete the alive key (the shard is dead at once,
    /// not after its TTL) and tell the events stream. The record stays,
    /// marked dead (and `down`, so no other shard reports the death
    /// again), for the console until [`Directory::reap_dead_shards`]
    /// removes it.
    pub async fn deregister(&self) -> Result<()> {
        let id = self.shard().as_str();
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.key(&["alive", id]))
            .ignore()
            .cmd("HSET")
            .arg(self.key(&["shard", id]))
            .arg("down")
            .arg(unix_ms())
            .ignore();
        self.run::<()>("deregister", &pipe).await?;
        self.emit(EventKind::ShardDown, self.shard().as_str(), "shutdown")
            .await
    }

    /// Look at every other shard's alive key: a shard that died without
    /// leaving (killed, or cut off from Redis) is reported once in the
    /// events stream (`shard_down`, "no heartbeat"), by whichever shard
    /// sees it first; a record dead for longer than
    /// `cluster.dead_shard_keep_ms` is removed, so the directory does not
    /// grow with every shard that ever ran. A shard that comes back
    /// re-registers with its next heartbeat.
    pub async fn reap_dead_shards(&self) -> Result<Reaped> {
        let mut reaped = Reaped::default();
        let keep = self.settings().dead_shard_keep.as_millis() as u64;
        for id in self.shard_ids().await? {
            if id == *self.shard() {
                continue;
            }
            let mut script = REAP_SHARD.prepare_invoke();
            script
                .key(self.key(&["alive", id.as_str()]))
                .key(self.key(&["shard", id.as_str()]))
                .key(self.key(&["shards"]))
                .arg(id.as_str())
                .arg(unix_ms())
                .arg(keep);
            match self.run::<i64>("reap_shard", &script).await? {
                1 => {
                    self.emit(EventKind::ShardDown, id.as_str(), "no heartbeat")
                        .await?;
                    reaped.down.push(id);
                }
                2 => reaped.removed.push(id),
                _ => {}
            }
        }
        Ok(reaped)
    }

    /// Every shard id registered.
    pub async fn shard_ids(&self) -> Result<Vec<ShardId>> {
        let key = self.key(&["shards"]);
        let ids: Vec<String> = self
            .run("shard_ids", redis::cmd("SMEMBERS").arg(key))
            .await?;
        let mut ids: Vec<ShardId> = ids.iter().filter_map(|i| ShardId::new(i).ok()).collect();
        ids.sort();
        Ok(ids)
    }

    /// Every known shard, alive or dead (`alive` says which), by id.
    pub async fn shards(&self) -> Result<Vec<ShardInfo>> {
        let ids = self.shard_ids().await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HGETALL").arg(self.key(&["shard", id.as_str()]));
            pipe.cmd("EXISTS").arg(self.key(&["alive", id.as_str()]));
        }
        let answers: Vec<redis::Value> = self.run("shards", &pipe).await?;
        let mut out = Vec::with_capacity(ids.len());
        for (id, pair) in ids.into_iter().zip(answers.chunks(2)) {
            let [hash, alive] = pair else { continue };
            let hash: HashMap<String, String> = redis::from_redis_value(hash).unwrap_or_default();
            if hash.is_empty() {
                continue;
            }
            let alive: bool = redis::from_redis_value(alive).unwrap_or(false);
            out.push(ShardInfo::from_hash(id, &hash, alive));
        }
        Ok(out)
    }
}

/// Another process's record of this shard id ([`Directory::ensure_id_free`]).
struct OtherRecord {
    started_at: u64,
    updated_at: u64,
    ws: String,
}

/// What one [`Directory::reap_dead_shards`] round found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Reaped {
    /// Shards newly found dead (reported in the events stream by this
    /// shard).
    pub down: Vec<ShardId>,
    /// Records removed: dead for longer than the keep.
    pub removed: Vec<ShardId>,
}
