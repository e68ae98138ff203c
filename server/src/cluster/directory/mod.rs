//! The directory: the cluster's shared state in Redis, through one
//! [`Directory`] handle per shard.
//!
//! Every key is under `{cluster.key_prefix}:`:
//!
//! | key | type | what |
//! |---|---|---|
//! | `shards` | set | every shard id ever registered (dead ones too, until forgotten) |
//! | `shard:{id}` | hash | addresses, version, state, load, started_at, updated_at |
//! | `alive:{id}` | string, PX `shard_ttl_ms` | present while the shard heartbeats |
//! | `room:{room}` | string, PX `lease_ms` | the lease: `shard:epoch` |
//! | `epoch:{room}` | integer | the room's last epoch; only rises |
//! | `rooms:{id}` | set | rooms whose lease shard `id` took |
//! | `player:{id}` | hash, PX | shard, session, room, resume, updated_at |
//! | `players_marker:{id}` | string, PX player TTL | set by shard `id`'s player-entry task; gone: Redis lost its entries, re-assert them |
//! | `events` | stream | shard and room events, trimmed to ~`events_max_len` |
//!
//! Every operation has a timeout (`cluster.redis_timeout_ms`) and fails
//! with [`DirectoryError::Unavailable`] when Redis does not answer in
//! time; operations that must succeed for a caller to go on (placing and
//! acquiring a room, claiming a player) retry for up to
//! `cluster.redis_wait_ms` first. The connection is made lazily and
//! remade after a failure, at most once per [`RECONNECT_GAP`], so a
//! Redis that is down costs no tight loop.

mod events;
mod moves;
mod players;
mod rooms;
mod scripts;
mod shards;
mod types;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, ScriptInvocation};
use tokio::sync::broadcast;

use super::metric;
use crate::config::{ms, Config};
use crate::ids::RoomId;

pub use players::{Claim, PreviousHolder};
pub use protocol::peer::rendezvous;
pub use rooms::RenewReport;
pub use shards::Reaped;
pub use types::{
    Event, EventKind, Lease, LeaseNotice, PlayerEntry, ShardId, ShardInfo, ShardLoad, ShardRecord,
    ShardState,
};

/// After a failed connection attempt, the next one waits this long; ops
/// in between fail at once as unavailable.
pub const RECONNECT_GAP: Duration = Duration::from_millis(200);

/// Lease notices buffered for a slow listener; one that falls further
/// behind reconciles with [`Directory::held`].
const NOTICE_CAPACITY: usize = 1024;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DirectoryError {
    /// Redis did not answer in time, or the connection is down. Retry
    /// later; nothing is known to have changed.
    #[error("cluster directory unavailable: {0}")]
    Unavailable(String),
    /// Another shard holds the room's lease.
    #[error("room {room} is held by shard {shard} at epoch {epoch}")]
    Held {
        room: RoomId,
        shard: ShardId,
        epoch: u64,
    },
    /// This shard does not hold the lease it tried to renew or release.
    #[error("shard {shard} does not own room {room}")]
    NotOwner { room: RoomId, shard: ShardId },
    /// No shard is alive and ready to take a room.
    #[error("no ready shard to place room {0} on")]
    NoShard(RoomId),
    /// Redis answered something this version does not understand (a
    /// script error, a malformed entry).
    #[error("cluster directory answered unexpectedly: {0}")]
    Protocol(String),
    /// Another live process heartbeats as this shard id.
    #[error(
        "cluster.shard_id: shard id {shard} is in use by a live process (started at unix ms \
         {started_at}, ws {ws}): give each shard its own --shard-id"
    )]
    IdInUse {
        shard: ShardId,
        started_at: u64,
        ws: String,
    },
}

impl DirectoryError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DirectoryError::Unavailable(_))
    }
}

pub type Result<T> = std::result::Result<T, DirectoryError>;

fn from_redis(e: redis::RedisError) -> DirectoryError {
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.kind() == redis::ErrorKind::BusyLoadingError
        || e.kind() == redis::ErrorKind::TryAgain
    {
        DirectoryError::Unavailable(e.to_string())
    } else {
        DirectoryError::Protocol(e.to_string())
    }
}

/// The directory's timings and names, from `[cluster]`.
#[derive(Debug, Clone)]
pub struct DirectorySettings {
    pub redis: String,
    pub prefix: String,
    pub lease: Duration,
    pub renew: Duration,
    pub shard_ttl: Duration,
    pub heartbeat: Duration,
    pub op_timeout: Duration,
    pub wait: Duration,
    pub events_max_len: u64,
    /// A player's entry outlives its last refresh by this much: longer
    /// than a resume token and the seat's grace, so a resume anywhere
    /// still finds where the player was.
    pub player_ttl: Duration,
    /// A dead shard's record is removed this long after its last
    /// heartbeat (`cluster.dead_shard_keep_ms`).
    pub dead_shard_keep: Duration,
}

impl DirectorySettings {
    pub fn from_config(config: &Config) -> DirectorySettings {
        let c = &config.cluster;
        DirectorySettings {
            redis: c.redis.clone(),
            prefix: c.key_prefix.clone(),
            lease: ms(c.lease_ms),
            renew: ms(c.renew_ms),
            shard_ttl: ms(c.shard_ttl_ms),
            heartbeat: ms(c.heartbeat_ms),
            op_timeout: ms(c.redis_timeout_ms),
            wait: ms(c.redis_wait_ms),
            events_max_len: c.events_max_len,
            player_ttl: Duration::from_secs(config.auth.resume_ttl_s)
                + ms(config.supervision.resume_grace_ms),
            dead_shard_keep: ms(c.dead_shard_keep_ms),
        }
    }
}

/// A lease this shard holds, as the renewal task sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    pub epoch: u64,
    /// The lease is certainly ours until then (measured from when the
    /// last successful renewal was sent).
    pub valid_until: Instant,
    /// Past its deadline without a renewal: the room was told to stop
    /// acting as owner; a later re-assertion may give it back.
    pub expired: bool,
}

/// The handle over the directory, for one shard. Cheap to clone; every
/// clone shares the connection, the held leases and the notice channel.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

struct Inner {
    client: redis::Client,
    shard: ShardId,
    settings: DirectorySettings,
    conn: Mutex<Option<ConnectionManager>>,
    /// Serializes connection attempts; holds when the last one failed.
    connecting: tokio::sync::Mutex<Option<Instant>>,
    held: Mutex<BTreeMap<RoomId, Held>>,
    /// What this shard registered, re-asserted by every heartbeat.
    record: Mutex<Option<ShardRecord>>,
    state: Mutex<ShardState>,
    notices: broadcast::Sender<LeaseNotice>,
    /// Whether the last operation got an answer from Redis (see
    /// [`Directory::reachable`]).
    reachable: AtomicBool,
}

impl Directory {
    /// A handle for shard `shard`. Does not connect yet: the first
    /// operation does (so a shard starts while Redis is still down).
    pub fn new(settings: DirectorySettings, shard: ShardId) -> Result<Directory> {
        let client = redis::Client::open(settings.redis.as_str())
            .map_err(|e| DirectoryError::Protocol(format!("cluster.redis: {e}")))?;
        let (notices, _) = broadcast::channel(NOTICE_CAPACITY);
        Ok(Directory {
            inner: Arc::new(Inner {
                client,
                shard,
                settings,
                conn: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(None),
                held: Mutex::new(BTreeMap::new()),
                record: Mutex::new(None),
                state: Mutex::new(ShardState::Starting),
                notices,
                reachable: AtomicBool::new(false),
            }),
        })
    }

    /// This shard's id.
    pub fn shard(&self) -> &ShardId {
        &self.inner.shard
    }

    pub fn settings(&self) -> &DirectorySettings {
        &self.inner.settings
    }

    /// Lease notices: leases that expired before they could be renewed
    /// (stop acting as the room's owner), that another shard took, or
    /// that were re-asserted after an outage.
    pub fn notices(&self) -> broadcast::Receiver<LeaseNotice> {
        self.inner.notices.subscribe()
    }

    /// Whether Redis answered this shard's last operation (the heartbeat
    /// makes one every `cluster.heartbeat_ms`, so this is never older than
    /// that plus the op timeout). An error that is an answer (a script's
    /// refusal, a bad value) counts as reachable; only a timeout or a
    /// broken connection does not. Gossiped to the peers on the swim
    /// stream: an owner cut off from Redis freezes its rooms only while a
    /// peer still reaches it (`room::cluster::partition`).
    pub fn reachable(&self) -> bool {
        self.inner.reachable.load(Ordering::Relaxed)
    }

    /// Forget the lease on `room` here without telling Redis (which this
    /// shard cannot reach): the room was handed over; its key expires on
    /// its own, and a later renewal round must not re-assert it.
    pub(crate) fn abandon(&self, room: &RoomId) {
        let mut held = self.inner.held.lock();
        held.remove(room);
        self.held_changed(&held);
    }

    /// The leases this shard holds (epoch, and whether one is past its
    /// deadline waiting to be re-asserted).
    pub fn held(&self) -> Vec<(RoomId, u64, bool)> {
        self.inner
            .held
            .lock()
            .iter()
            .map(|(room, h)| (room.clone(), h.epoch, h.expired))
            .collect()
    }

    /// The epoch of a lease this shard holds.
    pub fn held_epoch(&self, room: &RoomId) -> Option<u64> {
        self.inner.held.lock().get(room).map(|h| h.epoch)
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.inner.settings.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    pub(crate) fn notify(&self, notice: LeaseNotice) {
        // No listener (yet): the room side reconciles with held().
        let _ = self.inner.notices.send(notice);
    }

    fn held_changed(&self, held: &BTreeMap<RoomId, Held>) {
        metrics::gauge!(metric::LEASES_HELD).set(held.len() as f64);
    }

    /// The connection, made if there is none (at most once per
    /// [`RECONNECT_GAP`] after a failure).
    async fn conn(&self) -> Result<ConnectionManager> {
        if let Some(conn) = self.inner.conn.lock().clone() {
            return Ok(conn);
        }
        let mut last_failure = self.inner.connecting.lock().await;
        if let Some(conn) = self.inner.conn.lock().clone() {
            return Ok(conn);
        }
        if last_failure.is_some_and(|at| at.elapsed() < RECONNECT_GAP) {
            return Err(DirectoryError::Unavailable("reconnecting to Redis".into()));
        }
        let timeout = self.inner.settings.op_timeout;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(1)
            .set_max_delay(RECONNECT_GAP.as_millis() as u64);
        let made = tokio::time::timeout(
            timeout,
            ConnectionManager::new_with_config(self.inner.client.clone(), config),
        )
        .await;
        match made {
            Ok(Ok(conn)) => {
                *last_failure = None;
                *self.inner.conn.lock() = Some(conn.clone());
                Ok(conn)
            }
            Ok(Err(e)) => {
                *last_failure = Some(Instant::now());
                Err(DirectoryError::Unavailable(e.to_string()))
            }
            Err(_) => {
                *last_failure = Some(Instant::now());
                Err(DirectoryError::Unavailable(
                    "connecting to Redis timed out".into(),
                ))
            }
        }
    }

    /// Send one request with the op timeout, timing and counting it. A
    /// request that finds the connection broken (Redis restarted, say) is
    /// sent once more on the connection being remade, within the same
    /// timeout: the first request after an outage need not fail.
    async fn run<T: FromRedisValue>(&self, op: &'static str, req: impl Into<Req<'_>>) -> Result<T> {
        let req = req.into();
        let started = Instant::now();
        let timeout = self.inner.settings.op_timeout;
        let attempt = async {
            let mut conn = self.conn().await?;
            match req.send(&mut conn).await {
                Err(e)
                    if e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_connection_refusal() =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    req.send(&mut conn).await.map_err(from_redis)
                }
                other => other.map_err(from_redis),
            }
        };
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(DirectoryError::Unavailable(format!(
                "{op}: no answer within {} ms",
                timeout.as_millis()
            ))),
        };
        metrics::histogram!(metric::DIRECTORY_OP_SECONDS, "op" => op)
            .record(started.elapsed().as_secs_f64());
        let answered = !matches!(&result, Err(e) if e.is_unavailable());
        self.inner.reachable.store(answered, Ordering::Relaxed);
        if let Err(e) = &result {
            metrics::counter!(metric::DIRECTORY_ERRORS, "op" => op).increment(1);
            tracing::debug!(op, error = %e, "directory operation failed");
        }
        result
    }

    /// Retry `attempt` while Redis is unavailable, for up to
    /// `cluster.redis_wait_ms`; other errors return at once.
    async fn waiting<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.inner.settings.wait;
        let mut pause = Duration::from_millis(50);
        loop {
            match attempt().await {
                Err(e) if e.is_unavailable() => {
                    let now = Instant::now();
                    if now + pause >= deadline {
                        return Err(e);
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RECONNECT_GAP * 2);
                }
                other => return other,
            }
        }
    }
}

/// One request to Redis, kept so it can be sent again.
pub(super) enum Req<'a> {
    Cmd(&'a redis::Cmd),
    Pipe(&'a redis::Pipeline),
    Script(&'a ScriptInvocation<'static>),
}

impl Req<'_> {
    async fn send<T: FromRedisValue>(&self, conn: &mut ConnectionManager) -> redis::RedisResult<T> {
        match self {
            Req::Cmd(cmd) => cmd.query_async(conn).await,
            Req::Pipe(pipe) => pipe.query_async(conn).await,
            Req::Script(script) => script.invoke_async(conn).await,
        }
    }
}

impl<'a> From<&'a redis::Cmd> for Req<'a> {
    fn from(cmd: &'a redis::Cmd) -> Self {
        Req::Cmd(cmd)
    }
}

impl<'a> From<&'a mut redis::Cmd> for Req<'a> {
    fn from(cmd: &'a mut redis::Cmd) -> Self {
        Req::Cmd(cmd)
    }
}

impl<'a> From<&'a redis::Pipeline> for Req<'a> {
    fn from(pipe: &'a redis::Pipeline) -> Self {
        Req::Pipe(pipe)
    }
}

impl<'a> From<&'a ScriptInvocation<'static>> for Req<'a> {
    fn from(script: &'a ScriptInvocation<'static>) -> Self {
        Req::Script(script)
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
