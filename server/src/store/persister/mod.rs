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
//!   on a worker thread that ticks rooms; the pool has at most
//!   `store.io_threads` threads (redb writes one transaction at a time).
//! - Nothing a room does can queue up here: a volatile write is an insert
//!   into a sharded map (latest wins), so memory is bounded by the number of
//!   dirty keys, not by the number of updates, and there is no mailbox that
//!   could fill or block. Durable calls are bounded by a semaphore
//!   (`store.durable_max_in_flight`) and fail fast when it is exhausted;
//!   only a profile load at login waits for a slot (up to
//!   `store.durable_timeout_ms`), so a login storm queues instead of
//!   letting players in without their durable state.
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
//!
//! # Layout
//!
//! - `handle.rs`: [`Persister`] (the owner: start, shutdown) and
//!   [`PersisterHandle`] (what rooms and sessions call).
//! - `flusher.rs`: the store thread's life: connect, the flusher loop
//!   under its supervisor, trade recovery, the final flush.
//! - `breaker.rs`: the health flag, a circuit breaker for durable calls.
//! - `errors.rs`: [`DurableError`], [`FlushError`].
//! - this file: the state they share (`Inner`: the dirty map, counters,
//!   the revision clock) and the reports.

mod breaker;
mod errors;
mod flusher;
mod handle;
#[cfg(test)]
mod tests;

pub use errors::{DurableError, FlushError};
pub use flusher::FLUSHER_TASK;
pub use handle::{Landed, Persister, PersisterHandle};

use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{watch, Notify, Semaphore};

use self::breaker::Breaker;
use super::model::{Volatile, VolatileKey};
use super::{Store, StoreConfig};

/// Lock shards of the dirty map, so that rooms on different Arbiters rarely
/// contend.
const SHARDS: usize = 16;

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
    /// The health flag: fail fast while the store is down.
    health: Breaker,
    ready_tx: watch::Sender<bool>,
    durable_slots: Arc<Semaphore>,
    closed: AtomicBool,
    counters: Counters,
    /// Issues the revisions of player states (see [`RevClock`]).
    clock: RevClock,
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

    /// Move the health flag (see [`Breaker::set`]).
    fn set_healthy(&self, healthy: bool, error: Option<&str>) {
        let backend = self.store.get().map_or("store", |s| s.backend());
        self.health.set(healthy, error, backend);
    }
}
