//! The persister's two faces: [`Persister`], the owner that starts the
//! store thread and shuts it down, and [`PersisterHandle`], the cloneable
//! handle rooms and sessions hold. Durable calls go through
//! `Inner::call`, under the [`Breaker`]'s rules.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::future::Future;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{oneshot, watch, Notify, Semaphore};

use super::breaker::Breaker;
use super::flusher::{default_supervision, run};
use super::{
    Counters, DurableError, FlushError, Inner, Pending, PersisterStats, RevClock, ShutdownReport,
    SHARDS,
};
use crate::store::embedded::EmbeddedStore;
use crate::store::model::{
    DurableAck, DurableOp, PlayerProfile, PlayerState, RoomState, Volatile, VolatileKey,
};
use crate::store::{metric, Backend, OpError, Store, StoreConfig, StoreError};
use crate::supervise::{self, Tasks};

/// Called with the answer of an op that was answered in doubt (no
/// answer within `store.durable_timeout_ms`) and landed afterwards. Runs
/// on the store runtime: it should only hand the answer on.
pub type Landed<T> = Box<dyn FnOnce(T) + Send + 'static>;

/// The cloneable handle rooms and sessions hold. Every method returns at
/// once or returns a `Send + 'static` future bounded by a timeout.
#[derive(Clone)]
pub struct PersisterHandle {
    pub(super) inner: Arc<Inner>,
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
            Backend::Embedded => Some(Arc::new(EmbeddedStore::open_with(&config.embedded)?)),
            Backend::Mongodb => None,
        };
        Self::spawn(config, store, tasks, settings)
    }

    /// Start over a store built elsewhere (tests, tools, wrappers).
    pub fn with_store(config: StoreConfig, store: Arc<dyn Store>) -> Result<Persister, StoreError> {
        let settings = default_supervision(&config);
        Self::spawn(config, Some(store), &Tasks::default(), settings)
    }

    pub(super) fn spawn(
        config: StoreConfig,
        store: Option<Arc<dyn Store>>,
        tasks: &Tasks,
        settings: supervise::Settings,
    ) -> Result<Persister, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("tessera-store-io")
            .max_blocking_threads(config.io_threads)
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
            health: Breaker::new(),
            ready_tx: watch::channel(false).0,
            closed: AtomicBool::new(false),
            counters: Counters::default(),
            clock: RevClock::default(),
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
                    last_error: inner.health.last_error(),
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
        self.durable_or_late(op, None)
    }

    /// As [`PersisterHandle::durable`]; and should the op be answered in
    /// doubt for want of an answer in time, yet land afterwards (it goes
    /// on in the background, see [`Inner::run`]), `landed` gets its ack
    /// then, on the store runtime: whoever the op changed can be told.
    pub fn durable_or_late(
        &self,
        op: DurableOp,
        landed: Option<Landed<DurableAck>>,
    ) -> impl Future<Output = Result<DurableAck, DurableError>> + Send + 'static {
        let inner = self.inner.clone();
        async move {
            op.validate().map_err(DurableError::Invalid)?;
            let started = Instant::now();
            let result = inner
                .call_or_late(move |store| async move { store.apply(op).await }, landed)
                .await;
            let label = match &result {
                Ok(ack) if ack.replayed => "replayed",
                Ok(_) => "ok",
                Err(e) => e.label(),
            };
            inner.count_durable(result.is_ok(), label, started);
            result
        }
    }

    /// A player's profile, created if new; its `state` is the latest one
    /// handed to [`PersisterHandle::volatile`] even if not yet flushed.
    /// Same timeout and health rules as durable ops, except that a load
    /// finding every durable slot taken waits for one (up to the durable
    /// timeout) rather than failing at once.
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
                .call_queued(move |store| async move {
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
            inner.count_durable(result.is_ok(), label, started);
            if result.is_ok() {
                inner.drop_room_older_than(&key, rev);
            }
            result
        }
    }

    /// This shard took room `room` at owner epoch `epoch` (its directory
    /// lease): raise the stored document's owner epoch so that every
    /// write of an older owner is refused from now on. Never lowers it (a
    /// newer stored owner: [`DurableError::Rejected`] with
    /// [`crate::store::Rejection::Fenced`]). Returns the stored epoch
    /// before, which is also the floor for the next lease on the room.
    pub fn claim_room(
        &self,
        room: &str,
        epoch: u64,
    ) -> impl Future<Output = Result<u64, DurableError>> + Send + 'static {
        let inner = self.inner.clone();
        let room = room.to_string();
        async move {
            let started = Instant::now();
            let result = inner
                .call(move |store| async move {
                    store.claim_room(room, epoch).await.map_err(OpError::Store)
                })
                .await;
            let label = match &result {
                Ok(_) => "ok",
                Err(e) => e.label(),
            };
            inner.count_durable(result.is_ok(), label, started);
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

    /// An operator's store call (bans, the audit trail), run on the store
    /// runtime under the durable rules: timeout, health, fail fast while
    /// the store is down.
    pub fn admin_call<T, F, Fut>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<T, DurableError>> + Send + 'static
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let inner = self.inner.clone();
        async move {
            inner
                .call(move |store| async move { f(store).await.map_err(OpError::Store) })
                .await
        }
    }

    /// Whether the store answers (durable ops are attempted).
    pub fn healthy(&self) -> bool {
        self.inner.health.healthy()
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
    /// Count a finished durable call (the counters, and the metrics by
    /// `result` label).
    fn count_durable(&self, ok: bool, label: &'static str, started: Instant) {
        let counter = if ok {
            &self.counters.durable_ok
        } else {
            &self.counters.durable_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(metric::DURABLE_OPS, "result" => label).increment(1);
        metrics::histogram!(metric::DURABLE_SECONDS).record(started.elapsed().as_secs_f64());
    }

    /// The store, if a durable call may go to it now: not shut down,
    /// connected, and admitted by the [`Breaker`].
    fn admit(&self) -> Result<Arc<dyn Store>, DurableError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(DurableError::ShutDown);
        }
        let Some(store) = self.store.get().cloned() else {
            return Err(DurableError::Unavailable(format!(
                "store not reachable yet: {}",
                self.health.last_error()
            )));
        };
        self.health.admit()?;
        Ok(store)
    }

    /// Run one store call on the store runtime, under the durable rules:
    /// fail fast when shut down, down or overloaded; time out; let the
    /// [`Breaker`] judge the answer.
    async fn call<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, DurableError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, OpError>> + Send + 'static,
    {
        self.call_or_late(f, None).await
    }

    /// As [`Inner::call`], with `landed` for an answer that comes after
    /// the op was answered in doubt (see [`Inner::run`]).
    async fn call_or_late<T, F, Fut>(
        self: &Arc<Self>,
        f: F,
        landed: Option<Landed<T>>,
    ) -> Result<T, DurableError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, OpError>> + Send + 'static,
    {
        let store = self.admit()?;
        let Ok(permit) = self.durable_slots.clone().try_acquire_owned() else {
            return Err(DurableError::Unavailable(format!(
                "{} durable writes already in flight",
                self.config.durable_max_in_flight
            )));
        };
        self.run(store, permit, f, landed).await
    }

    /// As [`Inner::call`], but a call that finds every slot taken waits
    /// for one, up to the durable timeout, instead of failing at once. For
    /// loading a profile at login: a burst of logins (every player coming
    /// back after a restart) queues for the store rather than sending a
    /// share of the players in without their durable state.
    async fn call_queued<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, DurableError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, OpError>> + Send + 'static,
    {
        let store = self.admit()?;
        let timeout = self.config.durable_timeout();
        let slot = tokio::time::timeout(timeout, self.durable_slots.clone().acquire_owned());
        let Ok(Ok(permit)) = slot.await else {
            return Err(DurableError::Unavailable(format!(
                "no durable slot free within {} ms ({} in flight)",
                timeout.as_millis(),
                self.config.durable_max_in_flight
            )));
        };
        self.run(store, permit, f, None).await
    }

    /// Run `f` holding `permit`, on the store runtime; the [`Breaker`]
    /// judges its answer, or its silence past the durable timeout (in
    /// doubt). A silent op is not dropped: every step of a durable op is
    /// conditional and idempotent (a retry with the same id may run beside
    /// it), so it goes on, holding its slot, until it ends or for at most
    /// `store.trade_recovery_age_ms`. A trade that was slow to commit is
    /// then finished now, not left half-done for recovery to settle a
    /// minute or two later while its receiver waits for the coins. If it
    /// lands then, `landed` gets its answer.
    async fn run<T, F, Fut>(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        permit: tokio::sync::OwnedSemaphorePermit,
        f: F,
        landed: Option<Landed<T>>,
    ) -> Result<T, DurableError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Store>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, OpError>> + Send + 'static,
    {
        let timeout = self.config.durable_timeout();
        let settle = Duration::from_millis(self.config.trade_recovery_age_ms);
        let inner = self.clone();
        let (answer_tx, answer_rx) = oneshot::channel();
        self.runtime.spawn(async move {
            let _permit = permit;
            let backend = store.backend();
            let work = f(store);
            tokio::pin!(work);
            let answer = tokio::time::timeout(timeout, &mut work).await.ok();
            let silent = answer.is_none();
            let _ = answer_tx.send(inner.health.judge(answer, timeout, backend));
            if silent {
                metrics::counter!(metric::DURABLE_SETTLED_LATE).increment(1);
                if let Ok(Ok(answer)) = tokio::time::timeout(settle, work).await {
                    if let Some(landed) = landed {
                        landed(answer);
                    }
                }
            }
        });
        answer_rx.await.unwrap_or(Err(DurableError::ShutDown))
    }
}
