//! The persister: write-behind for volatile state, write-through for
//! durable state, retries, health, metrics and the shutdown flush.
//!
//! ```text
//! any thread ──volatile(doc)──▶ 16 × Mutex<HashMap<key, latest>> ◀──take── flusher ─┐
//!            ──request_flush / flush().await (generation + Notify) ───────▶   loop   │
//!            ──durable(op).await ─▶ spawned on the store runtime ─▶ dyn Store ◀──────┘
//!                                   (semaphore, timeout, health flag)
//! thread "tessera-store": tokio current-thread runtime + blocking pool (redb)
//! ├─ task Supervisor ─▶ "persister" (Permanent): the flusher loop, rebuilt
//! │                     from `Inner` (store handle, dirty map, health)
//! └─ then, at shutdown: the final flush, exactly once, within the deadline
//! ```
//!
//! # Supervision
//!
//! The flusher loop is a permanent child of a task supervisor
//! ([`crate::supervise`]) on the store runtime. Everything it works with
//! lives in `Inner`, not in the loop: a panic (or an injected fault) drops
//! the incarnation, a batch it had taken goes back to the dirty map (newer
//! states win), and the next incarnation, after a backoff, reuses the
//! connected store and flushes it. Durable ops do not go through the
//! flusher and carry on meanwhile. Past the restart intensity the flusher
//! is given up (`/healthz` says `degraded`); the shutdown flush, which runs
//! after the supervisor has stopped, still writes what is dirty.
//!
//! # Why a thread with its own tokio runtime, not an actix actor
//!
//! - The store outlives rooms and sessions: rooms stop, restart and crash;
//!   the actix System stops at shutdown before the last flush is done. A
//!   runtime of its own is torn down only after the final flush.
//! - The `mongodb` driver spawns its connection pool workers and monitors
//!   on the runtime that first uses it; they must not live on a room's
//!   Arbiter. redb's blocking calls run on this runtime's blocking pool, not
//!   on a worker thread that ticks rooms.
//! - Nothing a room does can queue up here: a volatile write is an insert
//!   into a sharded map (latest wins), so memory is bounded by the number of
//!   dirty keys, not by the number of updates, and there is no mailbox that
//!   could fill or block. Durable calls are bounded by a semaphore
//!   (`store.durable_max_in_flight`) and fail fast when it is exhausted.
//! - Every future returned by [`PersisterHandle`] is `Send + 'static` and
//!   completes through a tokio `JoinHandle` or `watch`, which work from any
//!   runtime: an actix actor awaits it with `ctx.spawn(fut.into_actor(self))`
//!   and never blocks its Arbiter.
//!
//! # Revisions
//!
//! Every volatile document carries a revision: a room's `rev` (the room
//! bumps it), a player's state one from a hybrid logical clock
//! (`RevClock`), issued when the state is handed over. The dirty map keeps
//! the highest revision of a key, and
//! the store writes a document only over an older revision; so a batch
//! that timed out (the store frozen) and is applied later can never undo a
//! newer write, and a failed flush needs no knowledge of whether it landed.
//!
//! # Health
//!
//! The health flag goes down when a flush or a durable op finds the store
//! unavailable or times out, and up again when a later flush (or, with
//! nothing to flush, a ping) succeeds; the flusher retries with exponential
//! backoff and jitter meanwhile. While it is down, durable ops fail at once
//! with [`DurableError::Unavailable`]: nothing was sent, nothing changed.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::BuildHasher;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch, Notify, Semaphore};

use super::embedded::EmbeddedStore;
use super::model::{
    DecodeError, DurableAck, DurableOp, PlayerProfile, PlayerState, Rejection, RoomState, Volatile,
    VolatileKey,
};
use super::{metric, Backend, OpError, Store, StoreConfig, StoreError};
use crate::supervise::{self, Backoff, Child, Restart, Supervisor, Tasks};

/// Lock shards of the dirty map, so that rooms on different Arbiters rarely
/// contend.
const SHARDS: usize = 16;

/// How often half-done trades are looked for (see [`Store::recover_trades`])
/// and expired ledger rows pruned (see [`Store::prune_ledger`]).
const RECOVERY_EVERY: Duration = Duration::from_secs(60);

/// Index creation and trade recovery may take longer than one op.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a durable op (or a load) failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurableError {
    /// The op itself is malformed. Nothing was sent.
    #[error("invalid durable op: {0}")]
    Invalid(String),
    /// The store refused it (not enough currency, no such player, ...).
    /// Nothing changed.
    #[error("refused: {0}")]
    Rejected(Rejection),
    /// The store is down, not ready yet, or overloaded. Nothing was sent,
    /// nothing changed; try again later.
    #[error("store unavailable, nothing was written: {0}")]
    Unavailable(String),
    /// Sent, but no answer in time (or the connection broke): it may or may
    /// not have been applied. Retrying the same op (same id) is safe: it is
    /// applied at most once. A caller that must know reloads the profile.
    #[error("no acknowledgement, the write may or may not have been applied: {0}")]
    InDoubt(String),
    /// A stored document cannot be read (reported with its id).
    #[error("bad document {0}")]
    BadDocument(DecodeError),
    /// The store answered with an error. Nothing changed.
    #[error("store error: {0}")]
    Failed(String),
    /// The persister has shut down.
    #[error("the persister has shut down")]
    ShutDown,
}

impl DurableError {
    fn label(&self) -> &'static str {
        match self {
            DurableError::Invalid(_) => "invalid",
            DurableError::Rejected(_) => "rejected",
            DurableError::Unavailable(_) => "unavailable",
            DurableError::InDoubt(_) => "in_doubt",
            DurableError::BadDocument(_) => "bad_document",
            DurableError::Failed(_) => "failed",
            DurableError::ShutDown => "shut_down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlushError {
    #[error("flush not done within {after:?} ({dirty_keys} keys waiting; last store error: {last_error})")]
    Timeout {
        after: Duration,
        dirty_keys: usize,
        last_error: String,
    },
    #[error("the persister has shut down")]
    ShutDown,
}

/// Counters for tests, benchmarks and the admin API (serializes to JSON).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PersisterStats {
    /// `volatile` calls (before coalescing).
    pub volatile_updates: u64,
    /// Volatile documents written to the store (after coalescing).
    pub volatile_written: u64,
    /// Store calls that wrote a batch.
    pub batches: u64,
    pub largest_batch: u64,
    /// Batches that failed and were retried.
    pub flush_failures: u64,
    /// Volatile documents the store refused (bad documents), dropped.
    pub rejected: u64,
    pub dirty_keys: usize,
    pub durable_ok: u64,
    pub durable_failed: u64,
    pub healthy: bool,
    pub ready: bool,
}

/// What the shutdown flush achieved.
#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownReport {
    /// Documents written by the final flush.
    pub flushed: u64,
    /// Keys still dirty when the deadline hit (lost).
    pub left_dirty: usize,
    pub deadline_hit: bool,
    pub elapsed: Duration,
}

struct Pending {
    doc: Volatile,
    since: Instant,
}

#[derive(Default)]
struct Counters {
    volatile_updates: AtomicU64,
    volatile_written: AtomicU64,
    batches: AtomicU64,
    largest_batch: AtomicU64,
    flush_failures: AtomicU64,
    rejected: AtomicU64,
    durable_ok: AtomicU64,
    durable_failed: AtomicU64,
}

struct Inner {
    config: StoreConfig,
    runtime: tokio::runtime::Handle,
    store: OnceLock<Arc<dyn Store>>,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<VolatileKey, Pending>>>,
    wake: Notify,
    flush_requested: AtomicU64,
    flushed_tx: watch::Sender<u64>,
    healthy: AtomicBool,
    ready_tx: watch::Sender<bool>,
    last_error: Mutex<String>,
    durable_slots: Arc<Semaphore>,
    closed: AtomicBool,
    counters: Counters,
    /// Issues the revisions of player states (see [`RevClock`]).
    clock: RevClock,
    /// The health flag went down since the store was first reached, so
    /// its coming back is news worth a log line.
    was_down: AtomicBool,
}

/// A hybrid logical clock for the revisions of volatile player states:
/// each revision is above every one this process issued or saw in a loaded
/// profile, and at least the wall clock in microseconds. So a state taken
/// later always carries a higher revision than one taken earlier, in this
/// process or (clocks roughly in step, or the profile loaded first, as every
/// session does) in an earlier one or another shard; and a stored state is
/// replaced only by a newer one.
#[derive(Default)]
struct RevClock {
    last: AtomicU64,
}

impl RevClock {
    fn next(&self) -> u64 {
        let wall = super::unix_ms().max(0) as u64 * 1_000;
        let prev = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(wall.max(last + 1))
            })
            .unwrap_or_else(|last| last);
        wall.max(prev + 1)
    }

    /// A revision read from the store: issue only later ones from now on.
    fn observe(&self, rev: u64) {
        self.last.fetch_max(rev, Ordering::AcqRel);
    }
}

/// The cloneable handle rooms and sessions hold. Every method returns at
/// once or returns a `Send + 'static` future bounded by a timeout.
#[derive(Clone)]
pub struct PersisterHandle {
    inner: Arc<Inner>,
}

/// The owner: starts the store thread and shuts it down. Dereferences to
/// its [`PersisterHandle`]. Dropping it without [`Persister::shutdown`]
/// runs the shutdown flush with `store.shutdown_flush_deadline_ms`,
/// blocking the dropping thread until then.
pub struct Persister {
    handle: PersisterHandle,
    stop_tx: watch::Sender<Option<Instant>>,
    report_rx: Option<oneshot::Receiver<ShutdownReport>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Deref for Persister {
    type Target = PersisterHandle;
    fn deref(&self) -> &PersisterHandle {
        &self.handle
    }
}

impl Persister {
    /// Start with the configured backend. The embedded store is opened
    /// here (an error, e.g. the file held by another process, is returned);
    /// MongoDB is connected in the background, retried with a log line
    /// until it answers: meanwhile volatile writes queue and durable ones
    /// fail as unavailable.
    pub fn start(config: StoreConfig) -> Result<Persister, StoreError> {
        let settings = default_supervision(&config);
        Self::start_supervised(config, &Tasks::default(), settings)
    }

    /// [`Persister::start`], with the flusher listed in `tasks` (as
    /// "persister") and restarted by `settings`.
    pub fn start_supervised(
        config: StoreConfig,
        tasks: &Tasks,
        settings: supervise::Settings,
    ) -> Result<Persister, StoreError> {
        let mut errors = Vec::new();
        config.validate(&mut errors);
        if !errors.is_empty() {
            return Err(StoreError::Config(errors.join("; ")));
        }
        let store: Option<Arc<dyn Store>> = match config.backend {
            Backend::Embedded => Some(Arc::new(EmbeddedStore::open(&config.embedded.dir)?)),
            Backend::Mongodb => None,
        };
        Self::spawn(config, store, tasks, settings)
    }

    /// Start over a store built elsewhere (tests, tools, wrappers).
    pub fn with_store(config: StoreConfig, store: Arc<dyn Store>) -> Result<Persister, StoreError> {
        let settings = default_supervision(&config);
        Self::spawn(config, Some(store), &Tasks::default(), settings)
    }

    fn spawn(
        config: StoreConfig,
        store: Option<Arc<dyn Store>>,
        tasks: &Tasks,
        settings: supervise::Settings,
    ) -> Result<Persister, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("tessera-store-io")
            .build()
            .map_err(|e| StoreError::Backend(format!("cannot build the store runtime: {e}")))?;
        let inner = Arc::new(Inner {
            durable_slots: Arc::new(Semaphore::new(config.durable_max_in_flight)),
            config,
            runtime: runtime.handle().clone(),
            store: OnceLock::new(),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            wake: Notify::new(),
            flush_requested: AtomicU64::new(0),
            flushed_tx: watch::channel(0).0,
            healthy: AtomicBool::new(false),
            ready_tx: watch::channel(false).0,
            last_error: Mutex::new("not connected yet".into()),
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            clock: RevClock::default(),
            was_down: AtomicBool::new(false),
        });
        let (stop_tx, stop_rx) = watch::channel(None);
        let (report_tx, report_rx) = oneshot::channel();
        let flusher = inner.clone();
        let tasks = tasks.clone();
        let thread = std::thread::Builder::new()
            .name("tessera-store".into())
            .spawn(move || {
                let report = runtime.block_on(run(flusher, store, stop_rx, tasks, settings));
                let _ = report_tx.send(report);
                // Blocking tasks (redb) that outlived the deadline are not
                // waited for.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the store thread: {e}")))?;
        Ok(Persister {
            handle: PersisterHandle { inner },
            stop_tx,
            report_rx: Some(report_rx),
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> PersisterHandle {
        self.handle.clone()
    }

    /// Flush everything dirty, waiting at most `deadline` (a warning is
    /// logged with what was left if it is hit), then stop. Durable ops in
    /// flight get until the deadline to finish; new ones fail with
    /// [`DurableError::ShutDown`].
    pub async fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        let started = Instant::now();
        let _ = self.stop_tx.send(Some(started + deadline));
        let report = match self.report_rx.take() {
            // The flusher answers within the deadline plus the store
            // runtime's own bounded teardown.
            Some(rx) => rx.await.ok(),
            None => None,
        };
        // The thread has sent its report and only tears down its runtime.
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        report.unwrap_or(ShutdownReport {
            flushed: 0,
            left_dirty: self.handle.dirty_keys(),
            deadline_hit: true,
            elapsed: started.elapsed(),
        })
    }

    /// [`Persister::shutdown`] for threads without a runtime.
    pub fn shutdown_blocking(mut self, deadline: Duration) -> ShutdownReport {
        let started = Instant::now();
        let _ = self.stop_tx.send(Some(started + deadline));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let report = self.report_rx.take().and_then(|mut rx| rx.try_recv().ok());
        report.unwrap_or(ShutdownReport {
            flushed: 0,
            left_dirty: self.handle.dirty_keys(),
            deadline_hit: true,
            elapsed: started.elapsed(),
        })
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let deadline = self.handle.inner.config.shutdown_flush_deadline();
            let _ = self.stop_tx.send(Some(Instant::now() + deadline));
            let _ = thread.join();
        }
    }
}

impl PersisterHandle {
    /// Record the latest volatile state of a key. Never blocks (a short
    /// uncontended lock), never fails; the write reaches the store within
    /// about `store.flush_interval_ms`, or when the store is back.
    pub fn volatile(&self, doc: Volatile) {
        let key = doc.key();
        let shard = &self.inner.shards[self.inner.shard_of(&key)];
        match shard.lock().entry(key) {
            // Latest by revision, as the store decides, not by arrival: two
            // threads may hand over states in the other order.
            Entry::Occupied(mut e) => {
                if doc.rev() >= e.get().doc.rev() {
                    e.get_mut().doc = doc;
                }
            }
            Entry::Vacant(e) => {
                e.insert(Pending {
                    doc,
                    since: Instant::now(),
                });
            }
        }
        self.inner
            .counters
            .volatile_updates
            .fetch_add(1, Ordering::Relaxed);
    }

    /// [`PersisterHandle::volatile`] for a player's state, under a new
    /// revision: it replaces any state handed over before it, and the
    /// store never lets an earlier one overwrite it.
    pub fn player_state(&self, id: &str, state: PlayerState) {
        self.volatile(Volatile::Player {
            id: id.to_string(),
            state,
            rev: self.inner.clock.next(),
        });
    }

    /// [`PersisterHandle::volatile`] for a room's state.
    pub fn room_state(&self, room: RoomState) {
        self.volatile(Volatile::Room(room));
    }

    /// Flush soon (on leave, room stop) without waiting.
    pub fn request_flush(&self) {
        self.inner.wake.notify_one();
    }

    /// Flush everything dirty now and wait until it is in the store, at
    /// most `store.flush_timeout_ms`.
    pub fn flush(&self) -> impl Future<Output = Result<(), FlushError>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            if inner.closed.load(Ordering::Acquire) {
                return Err(FlushError::ShutDown);
            }
            let mut done_rx = inner.flushed_tx.subscribe();
            let generation = inner.flush_requested.fetch_add(1, Ordering::SeqCst) + 1;
            inner.wake.notify_one();
            let after = Duration::from_millis(inner.config.flush_timeout_ms);
            let done = tokio::time::timeout(after, done_rx.wait_for(|done| *done >= generation))
                .await
                .map(|r| r.is_ok());
            match done {
                Ok(true) => Ok(()),
                Ok(false) => Err(FlushError::ShutDown),
                Err(_) => Err(FlushError::Timeout {
                    after,
                    dirty_keys: inner.dirty_keys(),
                    last_error: inner.last_error.lock().clone(),
                }),
            }
        }
    }

    /// Apply a durable op; resolves once the store acknowledged it, or with
    /// an error within `store.durable_timeout_ms` (at once while the store
    /// is down).
    pub fn durable(
        &self,
        op: DurableOp,
    ) -> impl Future<Output = Result<DurableAck, DurableError>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            op.validate().map_err(DurableError::Invalid)?;
            let started = Instant::now();
            let result = inner
                .call(move |store| async move { store.apply(op).await })
                .await;
            let label = match &result {
                Ok(ack) if ack.replayed => "replayed",
                Ok(_) => "ok",
                Err(e) => e.label(),
            };
            let counter = if result.is_ok() {
                &inner.counters.durable_ok
            } else {
                &inner.counters.durable_failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(metric::DURABLE_OPS, "result" => label).increment(1);
            metrics::histogram!(metric::DURABLE_SECONDS).record(started.elapsed().as_secs_f64());
            result
        }
    }

    /// A player's profile, created if new; its `state` is the latest one
    /// handed to [`PersisterHandle::volatile`] even if not yet flushed.
    /// Same timeout and health rules as durable ops.
    pub fn load_profile(
        &self,
        id: &str,
        name: &str,
    ) -> impl Future<Output = Result<PlayerProfile, DurableError>> + Send + 'static {
        let inner = self.inner.clone();
        let (id, name) = (id.to_string(), name.to_string());
        async move {
            let key = VolatileKey::Player(id.clone());
            let mut profile = inner
                .call(move |store| async move {
                    store
                        .load_or_create_player(id, name)
                        .await
                        .map_err(OpError::Store)
                })
                .await?;
            inner.clock.observe(profile.state_rev);
            if let Some(Volatile::Player { state, rev, .. }) = inner.pending(&key) {
                profile.state = state;
                profile.state_rev = rev;
            }
            Ok(profile)
        }
    }

    /// Write a room document through: resolves once the store has it (or
    /// has a newer one: `Ok(false)`, stale), under the same timeout, health
    /// and fail-fast rules as [`PersisterHandle::durable`]. A write-behind
    /// of an older revision still waiting in the dirty map is dropped; it
    /// would be skipped by the store anyway.
    pub fn durable_room(
        &self,
        room: RoomState,
    ) -> impl Future<Output = Result<bool, DurableError>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            let key = VolatileKey::Room(room.map.clone());
            let rev = room.rev;
            let started = Instant::now();
            let result =
                inner
                    .call(move |store| async move {
                        store.write_room(room).await.map_err(OpError::Store)
                    })
                    .await;
            let label = match &result {
                Ok(true) => "ok",
                Ok(false) => "stale",
                Err(e) => e.label(),
            };
            let counter = if result.is_ok() {
                &inner.counters.durable_ok
            } else {
                &inner.counters.durable_failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(metric::DURABLE_OPS, "result" => label).increment(1);
            metrics::histogram!(metric::DURABLE_SECONDS).record(started.elapsed().as_secs_f64());
            if result.is_ok() {
                inner.drop_room_older_than(&key, rev);
            }
            result
        }
    }

    /// A room's saved state: the newer (by `rev`) of the stored document
    /// and one still waiting to be flushed. Same timeout and health rules
    /// as durable ops: while the store is down this fails rather than
    /// guess, since a write-through may have gone past the waiting one.
    pub fn load_room(
        &self,
        map: &str,
    ) -> impl Future<Output = Result<Option<RoomState>, DurableError>> + Send + 'static {
        let inner = self.inner.clone();
        let map = map.to_string();
        async move {
            let key = VolatileKey::Room(map.clone());
            let stored = inner
                .call(
                    move |store| async move { store.load_room(map).await.map_err(OpError::Store) },
                )
                .await?;
            let waiting = match inner.pending(&key) {
                Some(Volatile::Room(room)) => Some(room),
                _ => None,
            };
            Ok(match (stored, waiting) {
                (Some(s), Some(w)) => Some(if s.rev > w.rev { s } else { w }),
                (s, w) => w.or(s),
            })
        }
    }

    /// Whether the store answers (durable ops are attempted).
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire)
    }

    /// Whether the store has been reached and prepared once.
    pub fn ready(&self) -> bool {
        *self.inner.ready_tx.borrow()
    }

    /// Wait until the store is ready, at most `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> impl Future<Output = bool> + Send + 'static {
        let mut rx = self.inner.ready_tx.subscribe();
        async move {
            matches!(
                tokio::time::timeout(timeout, rx.wait_for(|ready| *ready)).await,
                Ok(Ok(_))
            )
        }
    }

    pub fn dirty_keys(&self) -> usize {
        self.inner.dirty_keys()
    }

    /// The store, once connected (for tools and tests).
    pub fn store(&self) -> Option<Arc<dyn Store>> {
        self.inner.store.get().cloned()
    }

    pub fn stats(&self) -> PersisterStats {
        let c = &self.inner.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PersisterStats {
            volatile_updates: load(&c.volatile_updates),
            volatile_written: load(&c.volatile_written),
            batches: load(&c.batches),
            largest_batch: load(&c.largest_batch),
            flush_failures: load(&c.flush_failures),
            rejected: load(&c.rejected),
            dirty_keys: self.inner.dirty_keys(),
            durable_ok: load(&c.durable_ok),
            durable_failed: load(&c.durable_failed),
            healthy: self.healthy(),
            ready: self.ready(),
        }
    }
}

impl Inner {
    fn shard_of(&self, key: &VolatileKey) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    fn dirty_keys(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    fn pending(&self, key: &VolatileKey) -> Option<Volatile> {
        self.shards[self.shard_of(key)]
            .lock()
            .get(key)
            .map(|p| p.doc.clone())
    }

    /// Forget a waiting room write older than `rev` (a newer one is in the
    /// store).
    fn drop_room_older_than(&self, key: &VolatileKey, rev: u64) {
        let mut shard = self.shards[self.shard_of(key)].lock();
        let stale = matches!(
            shard.get(key),
            Some(Pending { doc: Volatile::Room(room), .. }) if room.rev <= rev
        );
        if stale {
            shard.remove(key);
        }
    }

    /// Everything dirty, oldest first, leaving the map empty.
    fn take_all(&self) -> Vec<(VolatileKey, Pending)> {
        let mut all = Vec::new();
        for shard in &self.shards {
            let taken = std::mem::take(&mut *shard.lock());
            all.extend(taken);
        }
        all.sort_unstable_by_key(|(_, p)| p.since);
        all
    }

    /// Put back what could not be written; newer states that arrived
    /// meanwhile win, but keep the older `since` for the lag.
    fn restore(&self, failed: impl IntoIterator<Item = (VolatileKey, Pending)>) {
        for (key, pending) in failed {
            let mut shard = self.shards[self.shard_of(&key)].lock();
            match shard.entry(key) {
                Entry::Occupied(mut e) => {
                    let since = e.get().since.min(pending.since);
                    e.get_mut().since = since;
                }
                Entry::Vacant(e) => {
                    e.insert(pending);
                }
            }
        }
    }

    fn set_healthy(&self, healthy: bool, error: Option<&str>) {
        if let Some(error) = error {
            *self.last_error.lock() = error.to_string();
        }
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        if was != healthy {
            let backend = self.store.get().map_or("store", |s| s.backend());
            if healthy {
                // The first "healthy" is the store being reached at start
                // (logged as "store ready"), not a recovery.
                if self.was_down.swap(false, Ordering::AcqRel) {
                    tracing::info!(backend, "store is answering again");
                }
            } else {
                self.was_down.store(true, Ordering::Release);
                tracing::warn!(
                    backend,
                    error = error.unwrap_or(""),
                    "store is down: durable writes fail fast, volatile writes queue"
                );
            }
        }
        metrics::gauge!(metric::HEALTHY).set(if healthy { 1.0 } else { 0.0 });
    }

    /// Run one store call on the store runtime, under the durable rules:
    /// fail fast when down or overloaded, time out, trip the health flag.
    async fn call<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, DurableError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, OpError>> + Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(DurableError::ShutDown);
        }
        let Some(store) = self.store.get().cloned() else {
            return Err(DurableError::Unavailable(format!(
                "store not reachable yet: {}",
                self.last_error.lock()
            )));
        };
        if !self.healthy.load(Ordering::Acquire) {
            return Err(DurableError::Unavailable(format!(
                "store is down, retrying in the background: {}",
                self.last_error.lock()
            )));
        }
        let Ok(permit) = self.durable_slots.clone().try_acquire_owned() else {
            return Err(DurableError::Unavailable(format!(
                "{} durable writes already in flight",
                self.config.durable_max_in_flight
            )));
        };
        let timeout = self.config.durable_timeout();
        let inner = self.clone();
        let task = self.runtime.spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(timeout, f(store)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(OpError::Rejected(why))) => Err(DurableError::Rejected(why)),
                Ok(Err(OpError::InDoubt(e))) => {
                    inner.set_healthy(false, Some(&e));
                    Err(DurableError::InDoubt(e))
                }
                Ok(Err(OpError::Store(e))) => match e {
                    StoreError::Unavailable(m) => {
                        inner.set_healthy(false, Some(&m));
                        Err(DurableError::Unavailable(m))
                    }
                    StoreError::Interrupted(m) => {
                        inner.set_healthy(false, Some(&m));
                        Err(DurableError::InDoubt(m))
                    }
                    StoreError::BadDocument(d) => Err(DurableError::BadDocument(d)),
                    StoreError::Backend(m) | StoreError::Config(m) => Err(DurableError::Failed(m)),
                },
                Err(_) => {
                    let e = format!("no answer within {timeout:?}");
                    inner.set_healthy(false, Some(&e));
                    Err(DurableError::InDoubt(e))
                }
            }
        });
        task.await.unwrap_or(Err(DurableError::ShutDown))
    }
}

/// The backoff between store retries (connecting, flushing): from
/// `retry_min_ms` doubling up to `retry_max_ms`, with jitter.
fn retry_backoff(config: &StoreConfig) -> Backoff {
    Backoff::new(
        Duration::from_millis(config.retry_min_ms),
        Duration::from_millis(config.retry_max_ms),
    )
}

/// The task name of the flusher, in `/healthz` and fault injection.
pub const FLUSHER_TASK: &str = "persister";

/// Supervision for a persister started on its own: `supervision.child_*`
/// defaults, and half the flush deadline for the flusher to stop.
fn default_supervision(config: &StoreConfig) -> supervise::Settings {
    supervise::Settings {
        shutdown: config.shutdown_flush_deadline() / 2,
        ..supervise::Settings::default()
    }
}

/// The store thread's life: the flusher under its supervisor until the
/// stop signal, then the final flush, exactly once.
async fn run(
    inner: Arc<Inner>,
    store: Option<Arc<dyn Store>>,
    stop_rx: watch::Receiver<Option<Instant>>,
    tasks: Tasks,
    settings: supervise::Settings,
) -> ShutdownReport {
    let started_at = Instant::now();
    // The supervisor and the flusher stop on a plain flag, set here when
    // the owner asks for shutdown.
    let (halt_tx, halt_rx) = watch::channel(false);
    let supervisor = Supervisor::new(&tasks, settings, halt_rx.clone());
    let flusher = {
        let inner = inner.clone();
        // Each incarnation starts from what lives in `Inner`: the store
        // once connected (else the one given at start), the dirty map, the
        // health flag.
        Child::new(FLUSHER_TASK, Restart::Permanent, move || {
            let store = inner.store.get().cloned().or_else(|| store.clone());
            flusher(inner.clone(), store, halt_rx.clone())
        })
    };
    let mut supervised = std::pin::pin!(supervisor.supervise(flusher));
    let mut stop = stop_rx.clone();
    tokio::select! {
        outcome = &mut supervised => {
            // Given up: nothing flushes until shutdown, which still does.
            tracing::error!(?outcome, "the flusher is gone; dirty state waits for the shutdown flush");
            stop_requested(&mut stop).await;
        }
        _ = stop_requested(&mut stop) => {
            halt_tx.send_replace(true);
            // The flusher finishes the store call it is in, within half of
            // what is left of the deadline; past that it is dropped. Either
            // way its batch is back in the dirty map for the final flush.
            let now = Instant::now();
            let deadline = stop_rx
                .borrow()
                .unwrap_or_else(|| now + inner.config.shutdown_flush_deadline());
            let halfway = now + deadline.saturating_duration_since(now) / 2;
            if tokio::time::timeout_at(halfway.into(), &mut supervised).await.is_err() {
                tracing::warn!("the flusher did not stop in time; dropped (its batch is back in the dirty map)");
            }
        }
    }
    let Some(store) = inner.store.get().cloned() else {
        let left = inner.dirty_keys();
        inner.closed.store(true, Ordering::Release);
        tracing::error!(
            keys = left,
            "shutting down before the store was ever reachable: {left} volatile keys not persisted"
        );
        return ShutdownReport {
            flushed: 0,
            left_dirty: left,
            deadline_hit: left > 0,
            elapsed: started_at.elapsed(),
        };
    };
    final_flush(&inner, &store, &stop_rx, started_at).await
}

/// Until the owner asks for shutdown (or is gone).
async fn stop_requested(stop_rx: &mut watch::Receiver<Option<Instant>>) {
    let _ = stop_rx.wait_for(Option::is_some).await;
}

/// The flusher, one incarnation: connect and prepare (unless an earlier
/// incarnation did), settle trades, then flush on every interval and
/// request until `halt_rx` is set.
async fn flusher(
    inner: Arc<Inner>,
    store: Option<Arc<dyn Store>>,
    mut halt_rx: watch::Receiver<bool>,
) {
    let store = match inner.store.get() {
        Some(store) => store.clone(),
        None => match connect(&inner, store, &mut halt_rx).await {
            Some(store) => store,
            None => return,
        },
    };
    recover_trades(&inner, &store).await;
    let mut next_recovery = Instant::now() + RECOVERY_EVERY;
    let period = inner.config.flush_interval();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = retry_backoff(&inner.config);
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retrying = retry_at.is_some();
        tokio::select! {
            _ = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => {
                        tick.tick().await;
                    }
                }
            } => {}
            // During a backoff, requests wait for the retry.
            _ = inner.wake.notified(), if !retrying => {}
            _ = halt_rx.wait_for(|halt| *halt) => break,
        }
        match flush_once(&inner, &store, None).await {
            Ok(_) => {
                backoff.reset();
                retry_at = None;
            }
            Err(e) => {
                let delay = backoff.delay();
                tracing::warn!(
                    backend = store.backend(),
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    dirty_keys = inner.dirty_keys(),
                    "volatile flush failed; retrying"
                );
                retry_at = Some(tokio::time::Instant::now() + delay);
            }
        }
        if retry_at.is_none() && Instant::now() >= next_recovery {
            recover_trades(&inner, &store).await;
            next_recovery = Instant::now() + RECOVERY_EVERY;
        }
    }
}

/// Open and prepare the store, retrying with backoff until it answers or
/// shutdown is requested.
async fn connect(
    inner: &Arc<Inner>,
    mut store: Option<Arc<dyn Store>>,
    halt_rx: &mut watch::Receiver<bool>,
) -> Option<Arc<dyn Store>> {
    let mut backoff = retry_backoff(&inner.config);
    loop {
        let attempt = async {
            let s = match &store {
                Some(s) => s.clone(),
                None => {
                    let s = super::open(&inner.config).await?;
                    store = Some(s.clone());
                    s
                }
            };
            tokio::time::timeout(PREPARE_TIMEOUT, s.prepare())
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!("no answer within {PREPARE_TIMEOUT:?}"))
                })??;
            Ok::<_, StoreError>(s)
        };
        match attempt.await {
            Ok(s) => {
                let _ = inner.store.set(s.clone());
                inner.set_healthy(true, None);
                inner.ready_tx.send_replace(true);
                tracing::info!(backend = s.backend(), "store ready (indexes in place)");
                return Some(s);
            }
            Err(e) => {
                let delay = backoff.delay();
                let backend = match inner.config.backend {
                    Backend::Embedded => "embedded",
                    Backend::Mongodb => "mongodb",
                };
                *inner.last_error.lock() = e.to_string();
                tracing::warn!(
                    backend,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "store not reachable yet; retrying (volatile writes queue, durable writes fail fast)"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = halt_rx.wait_for(|halt| *halt) => return None,
                }
            }
        }
    }
}

async fn recover_trades(inner: &Inner, store: &Arc<dyn Store>) {
    let age = Duration::from_millis(inner.config.trade_recovery_age_ms);
    match tokio::time::timeout(PREPARE_TIMEOUT, store.recover_trades(age)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(trades = n, "settled half-done trades"),
        Ok(Err(e)) => tracing::warn!(error = %e, "trade recovery failed; trying again later"),
        Err(_) => tracing::warn!("trade recovery timed out; trying again later"),
    }
    let retention = inner.config.ledger_retention();
    match tokio::time::timeout(PREPARE_TIMEOUT, store.prune_ledger(retention)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => {
            metrics::counter!(metric::LEDGER_PRUNED).increment(n as u64);
            tracing::info!(rows = n, "pruned expired ledger rows");
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "ledger pruning failed; trying again later"),
        Err(_) => tracing::warn!("ledger pruning timed out; trying again later"),
    }
}

/// A batch taken from the dirty map. Whatever is still in it when it is
/// dropped (not written yet, failed, or abandoned by a panic or a cancelled
/// flush) goes back to the dirty map, newer states winning: a crash of the
/// flusher in the middle of a flush loses nothing.
struct Taken<'a> {
    inner: &'a Inner,
    items: VecDeque<(VolatileKey, Pending)>,
}

impl Taken<'_> {
    /// Forget the first `n` items for which `gone(i)` holds (written, or
    /// refused for good); the others stay, in order.
    fn forget_front(&mut self, n: usize, gone: impl Fn(usize) -> bool) {
        let head: Vec<(VolatileKey, Pending)> = self.items.drain(..n).collect();
        for (i, item) in head.into_iter().enumerate().rev() {
            if !gone(i) {
                self.items.push_front(item);
            }
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if !self.items.is_empty() {
            self.inner.restore(self.items.drain(..));
        }
    }
}

/// Write everything dirty. With `budget`, each store call gets at most that
/// long (the shutdown deadline). Returns how many documents were written.
async fn flush_once(
    inner: &Inner,
    store: &Arc<dyn Store>,
    budget: Option<Instant>,
) -> Result<u64, StoreError> {
    let generation = inner.flush_requested.load(Ordering::SeqCst);
    let mut taken = Taken {
        inner,
        items: inner.take_all().into(),
    };
    let now = Instant::now();
    let lag = taken
        .items
        .front()
        .map_or(Duration::ZERO, |(_, p)| now - p.since);
    metrics::gauge!(metric::FLUSH_LAG_SECONDS).set(lag.as_secs_f64());
    metrics::gauge!(metric::DIRTY_KEYS).set(taken.items.len() as f64);
    let c = &inner.counters;
    if taken.items.is_empty() {
        if !inner.healthy.load(Ordering::Acquire) {
            if let Err(e) = timed(inner, budget, store.ping()).await {
                inner.set_healthy(false, Some(&e.to_string()));
                return Err(e);
            }
            inner.set_healthy(true, None);
        }
        inner.flushed_tx.send_if_modified(|done| {
            let newer = generation > *done;
            *done = (*done).max(generation);
            newer
        });
        return Ok(0);
    }
    let mut written = 0;
    while !taken.items.is_empty() {
        let n = inner.config.flush_batch_max.min(taken.items.len());
        let docs: Vec<Volatile> = taken
            .items
            .iter()
            .take(n)
            .map(|(_, p)| p.doc.clone())
            .collect();
        let size = n as u64;
        match timed(inner, budget, store.write_volatile(docs)).await {
            Ok(report) => {
                taken.items.drain(..n);
                c.batches.fetch_add(1, Ordering::Relaxed);
                c.largest_batch.fetch_max(size, Ordering::Relaxed);
                c.volatile_written
                    .fetch_add(report.written as u64, Ordering::Relaxed);
                c.rejected
                    .fetch_add(report.rejected.len() as u64, Ordering::Relaxed);
                written += report.written as u64;
                metrics::histogram!(metric::FLUSH_BATCH_SIZE).record(size as f64);
            }
            Err(e) if !e.is_unavailable() && n > 1 => {
                // The store answered but refused the batch: find the
                // documents it refuses, so one bad document cannot hold
                // back the others forever.
                c.flush_failures.fetch_add(1, Ordering::Relaxed);
                written += isolate(inner, store, budget, &mut taken, n, e).await?;
            }
            Err(e) => {
                c.flush_failures.fetch_add(1, Ordering::Relaxed);
                if e.is_unavailable() {
                    inner.set_healthy(false, Some(&e.to_string()));
                } else {
                    *inner.last_error.lock() = e.to_string();
                }
                publish_counters(inner);
                // `taken` puts the batch back.
                return Err(e);
            }
        }
    }
    inner.set_healthy(true, None);
    inner.flushed_tx.send_if_modified(|done| {
        let newer = generation > *done;
        *done = (*done).max(generation);
        newer
    });
    publish_counters(inner);
    Ok(written)
}

/// Write the first `n` documents of a refused batch one at a time.
/// Documents refused alone while others go through are reported and
/// dropped; if none goes through, the fault is the store's, not the
/// documents': everything not written stays in `taken` for a retry.
async fn isolate(
    inner: &Inner,
    store: &Arc<dyn Store>,
    budget: Option<Instant>,
    taken: &mut Taken<'_>,
    n: usize,
    first_error: StoreError,
) -> Result<u64, StoreError> {
    let c = &inner.counters;
    let mut written = 0;
    // Per document: whether the store took it, and why it refused it.
    let mut taken_by_store = vec![false; n];
    let mut refused: Vec<(usize, StoreError)> = Vec::new();
    for i in 0..n {
        let doc = taken.items[i].1.doc.clone();
        match timed(inner, budget, store.write_volatile(vec![doc])).await {
            Ok(report) => {
                taken_by_store[i] = true;
                c.batches.fetch_add(1, Ordering::Relaxed);
                c.volatile_written
                    .fetch_add(report.written as u64, Ordering::Relaxed);
                written += report.written as u64;
            }
            Err(e) if e.is_unavailable() => {
                taken.forget_front(n, |i| taken_by_store[i]);
                inner.set_healthy(false, Some(&e.to_string()));
                return Err(e);
            }
            Err(e) => refused.push((i, e)),
        }
    }
    if written == 0 {
        *inner.last_error.lock() = first_error.to_string();
        taken.forget_front(n, |i| taken_by_store[i]);
        return Err(first_error);
    }
    for (i, e) in &refused {
        tracing::warn!(key = %taken.items[*i].0, error = %e, "store refused a volatile document; skipped");
        metrics::counter!(metric::BAD_DOCUMENTS).increment(1);
        c.rejected.fetch_add(1, Ordering::Relaxed);
    }
    // Written or refused for good: none of the first `n` stays.
    taken.items.drain(..n);
    Ok(written)
}

async fn timed<T>(
    inner: &Inner,
    budget: Option<Instant>,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let mut limit = Duration::from_millis(inner.config.flush_timeout_ms);
    if let Some(deadline) = budget {
        limit = limit.min(deadline.saturating_duration_since(Instant::now()));
    }
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| StoreError::Interrupted(format!("no answer within {limit:?}")))?
}

fn publish_counters(inner: &Inner) {
    let c = &inner.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    metrics::counter!(metric::VOLATILE_UPDATES).absolute(load(&c.volatile_updates));
    metrics::counter!(metric::VOLATILE_WRITTEN).absolute(load(&c.volatile_written));
    metrics::counter!(metric::FLUSH_BATCHES).absolute(load(&c.batches));
    metrics::counter!(metric::FLUSH_FAILURES).absolute(load(&c.flush_failures));
}

/// Stop taking durable ops, let those in flight finish, and write
/// everything dirty, all before the deadline.
async fn final_flush(
    inner: &Arc<Inner>,
    store: &Arc<dyn Store>,
    stop_rx: &watch::Receiver<Option<Instant>>,
    started_at: Instant,
) -> ShutdownReport {
    let began = Instant::now();
    let deadline = stop_rx
        .borrow()
        .unwrap_or_else(|| began + inner.config.shutdown_flush_deadline());
    inner.closed.store(true, Ordering::Release);
    let all = inner.config.durable_max_in_flight as u32;
    let _ = tokio::time::timeout_at(deadline.into(), inner.durable_slots.acquire_many(all)).await;
    let mut flushed = 0;
    let mut backoff = retry_backoff(&inner.config);
    loop {
        match flush_once(inner, store, Some(deadline)).await {
            Ok(n) => {
                flushed += n;
                if inner.dirty_keys() == 0 {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, dirty_keys = inner.dirty_keys(), "shutdown flush failed; retrying until the deadline");
                let pause = backoff.delay();
                if Instant::now() + pause >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let left = inner.dirty_keys();
    let report = ShutdownReport {
        flushed,
        left_dirty: left,
        deadline_hit: left > 0,
        elapsed: began.elapsed(),
    };
    if left > 0 {
        tracing::error!(
            keys = left,
            flushed,
            deadline_ms = deadline.saturating_duration_since(began).as_millis() as u64,
            "shutdown flush deadline hit: {left} volatile keys were not persisted"
        );
    } else {
        tracing::info!(
            flushed,
            elapsed_ms = report.elapsed.as_millis() as u64,
            uptime_s = started_at.elapsed().as_secs(),
            "store flushed for shutdown"
        );
    }
    if left == 0 {
        // Everything asked for is in the store.
        inner.flushed_tx.send_replace(u64::MAX);
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BatchReport, StoreFuture, TradeRecord};
    use futures_util::future::BoxFuture;
    use futures_util::FutureExt;
    use mongodb::bson::Document;
    use std::sync::atomic::AtomicUsize;

    /// An embedded store whose first `panics` volatile writes panic, as a
    /// bug in a driver or in the flusher itself would.
    struct PanickyStore {
        inner: EmbeddedStore,
        panics: AtomicUsize,
    }

    impl Store for PanickyStore {
        fn backend(&self) -> &'static str {
            "panicky"
        }
        fn prepare(&self) -> StoreFuture<'_, ()> {
            self.inner.prepare()
        }
        fn ping(&self) -> StoreFuture<'_, ()> {
            self.inner.ping()
        }
        fn write_volatile(&self, batch: Vec<Volatile>) -> StoreFuture<'_, BatchReport> {
            async move {
                tokio::task::yield_now().await;
                let left = self.panics.load(Ordering::SeqCst);
                if left > 0 {
                    self.panics.store(left - 1, Ordering::SeqCst);
                    panic!("write_volatile breaks");
                }
                self.inner.write_volatile(batch).await
            }
            .boxed()
        }
        fn apply(&self, op: DurableOp) -> BoxFuture<'_, Result<DurableAck, OpError>> {
            self.inner.apply(op)
        }
        fn load_or_create_player(
            &self,
            id: String,
            name: String,
        ) -> StoreFuture<'_, PlayerProfile> {
            self.inner.load_or_create_player(id, name)
        }
        fn load_player(&self, id: String) -> StoreFuture<'_, Option<PlayerProfile>> {
            self.inner.load_player(id)
        }
        fn write_room(&self, room: RoomState) -> StoreFuture<'_, bool> {
            self.inner.write_room(room)
        }
        fn load_room(&self, map: String) -> StoreFuture<'_, Option<RoomState>> {
            self.inner.load_room(map)
        }
        fn load_rooms(&self) -> StoreFuture<'_, Vec<RoomState>> {
            self.inner.load_rooms()
        }
        fn load_trade(&self, id: String) -> StoreFuture<'_, Option<TradeRecord>> {
            self.inner.load_trade(id)
        }
        fn recover_trades(&self, older_than: Duration) -> StoreFuture<'_, usize> {
            self.inner.recover_trades(older_than)
        }
        fn prune_ledger(&self, retention: Duration) -> StoreFuture<'_, usize> {
            self.inner.prune_ledger(retention)
        }
        fn load_op(&self, id: String) -> StoreFuture<'_, Option<crate::store::OpRecord>> {
            self.inner.load_op(id)
        }
        fn put_raw(&self, collection: &'static str, doc: Document) -> StoreFuture<'_, ()> {
            self.inner.put_raw(collection, doc)
        }
    }

    fn quick_config(dir: &std::path::Path, flush_interval_ms: u64) -> StoreConfig {
        let mut config = StoreConfig {
            flush_interval_ms,
            ..StoreConfig::default()
        };
        config.embedded.dir = dir.to_path_buf();
        config
    }

    fn quick_supervision(max_restarts: usize) -> supervise::Settings {
        supervise::Settings {
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
            max_restarts,
            ..supervise::Settings::default()
        }
    }

    fn at(x: f32) -> PlayerState {
        PlayerState {
            map: "lobby".into(),
            x,
            y: 2.0,
            ..PlayerState::default()
        }
    }

    async fn stored_x(handle: &PersisterHandle, id: &str) -> Option<f32> {
        let store = handle.store().expect("connected");
        let profile = store.load_player(id.into()).await.expect("readable");
        profile.map(|p| p.state.x)
    }

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_flusher_that_panics_mid_flush_is_restarted_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // Ticks every 20 ms: the restarted flusher's first flush.
        let config = quick_config(dir.path(), 20);
        let store = PanickyStore {
            inner: EmbeddedStore::open(dir.path()).unwrap(),
            panics: AtomicUsize::new(1),
        };
        let tasks = Tasks::default();
        let store: Arc<dyn Store> = Arc::new(store);
        let p = Persister::spawn(config, Some(store), &tasks, quick_supervision(5)).unwrap();
        assert!(p.wait_ready(Duration::from_secs(5)).await);
        p.player_state("alice", at(1.0));
        p.player_state("bob", at(7.0));
        // The first flush panics with both documents taken from the dirty
        // map; the next incarnation writes them.
        p.flush().await.unwrap();
        assert_eq!(stored_x(&p, "alice").await, Some(1.0));
        assert_eq!(stored_x(&p, "bob").await, Some(7.0));
        assert_eq!(tasks.restarts(FLUSHER_TASK), Some(1));
        assert_eq!(tasks.report()[FLUSHER_TASK].panics, 1);
        assert_eq!(tasks.state(FLUSHER_TASK), Some(supervise::ChildState::Up));
        // And it keeps flushing.
        p.player_state("alice", at(3.0));
        p.flush().await.unwrap();
        assert_eq!(stored_x(&p, "alice").await, Some(3.0));
        let report = p.shutdown(Duration::from_secs(2)).await;
        assert!(!report.deadline_hit, "{report:?}");
    }

    /// A supervised persister (flushing only when asked, so a test knows
    /// what each flush wrote) whose flusher was just told to panic.
    async fn flusher_hit_by_a_fault(
        dir: &std::path::Path,
        max_restarts: usize,
    ) -> (Tasks, Persister) {
        let tasks = Tasks::default();
        let p = Persister::start_supervised(
            quick_config(dir, 60_000),
            &tasks,
            quick_supervision(max_restarts),
        )
        .unwrap();
        assert!(p.wait_ready(Duration::from_secs(5)).await);
        tasks.inject_panic(FLUSHER_TASK).unwrap();
        (tasks, p)
    }

    #[tokio::test]
    async fn an_injected_fault_restarts_the_flusher_and_shutdown_flushes_once() {
        let dir = tempfile::tempdir().unwrap();
        let (tasks, p) = flusher_hit_by_a_fault(dir.path(), 5).await;
        until("the flusher's restart", || {
            tasks.restarts(FLUSHER_TASK) == Some(1)
        })
        .await;
        p.player_state("alice", at(4.0));
        p.flush().await.unwrap();
        assert_eq!(stored_x(&p, "alice").await, Some(4.0));
        // Dirty at shutdown: written by the final flush, once.
        p.player_state("alice", at(5.0));
        let handle = p.handle();
        let written_before = handle.stats().volatile_written;
        let report = p.shutdown(Duration::from_secs(2)).await;
        assert_eq!((report.flushed, report.left_dirty), (1, 0), "{report:?}");
        assert_eq!(handle.stats().volatile_written, written_before + 1);
        assert_eq!(stored_x(&handle, "alice").await, Some(5.0));
        assert_eq!(
            tasks.state(FLUSHER_TASK),
            Some(supervise::ChildState::Stopped)
        );
        assert_eq!(tasks.restarts(FLUSHER_TASK), Some(1), "none at shutdown");
    }

    #[tokio::test]
    async fn a_flusher_given_up_still_gets_its_state_written_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let (tasks, p) = flusher_hit_by_a_fault(dir.path(), 0).await;
        until("the flusher given up", || {
            tasks.state(FLUSHER_TASK) == Some(supervise::ChildState::Failed)
        })
        .await;
        assert!(tasks.any_failed());
        p.player_state("alice", at(6.0));
        let handle = p.handle();
        let report = p.shutdown(Duration::from_secs(2)).await;
        assert_eq!((report.flushed, report.left_dirty), (1, 0), "{report:?}");
        assert_eq!(stored_x(&handle, "alice").await, Some(6.0));
    }

    #[tokio::test]
    async fn the_dirty_map_keeps_the_newest_revision_whatever_the_arrival_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = Persister::start(quick_config(dir.path(), 60_000)).unwrap();
        assert!(p.wait_ready(Duration::from_secs(5)).await);
        let state = |x: f32, rev: u64| Volatile::Player {
            id: "ann".into(),
            state: at(x),
            rev,
        };
        p.volatile(state(2.0, 20));
        p.volatile(state(1.0, 10));
        let loaded = p.load_profile("ann", "Ann").await.unwrap();
        assert_eq!((loaded.state.x, loaded.state_rev), (2.0, 20));
        p.flush().await.unwrap();
        assert_eq!(stored_x(&p, "ann").await, Some(2.0));
        // Revisions the persister issues go on from the highest it saw.
        p.player_state("ann", at(3.0));
        p.flush().await.unwrap();
        assert_eq!(stored_x(&p, "ann").await, Some(3.0));
        let report = p.shutdown(Duration::from_secs(2)).await;
        assert!(!report.deadline_hit, "{report:?}");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_max() {
        let config = StoreConfig {
            retry_min_ms: 100,
            retry_max_ms: 1_000,
            ..StoreConfig::default()
        };
        let mut b = retry_backoff(&config);
        let delays: Vec<Duration> = (0..8).map(|_| b.delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[3] >= Duration::from_millis(400) && delays[3] <= Duration::from_millis(800));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(1_000)));
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }
}
