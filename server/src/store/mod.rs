//! Persistence: state lives in memory, owned by the actor that uses it, and
//! is persisted asynchronously through a [`Store`].
//!
//! ```text
//! Room / Session ──volatile(doc) (sync, never blocks)──▶ dirty map (latest per key)
//!        │                                                   │ every flush_interval_ms,
//!        │                                                   │ on request_flush / flush / shutdown
//!        │                                                   ▼
//!        └──durable(op).await (timeout, circuit)──▶ Persister thread ("tessera-store",
//!                                                    own tokio runtime) ──▶ dyn Store
//!                                                        ├─ EmbeddedStore (redb, default)
//!                                                        └─ MongoStore (official driver)
//! ```
//!
//! - [`model`]: the documents (`documents.rs`), their schema versions and
//!   migrations (`migrations.rs`), and the durable operations
//!   (`operations.rs`).
//! - [`persister`]: the write-behind queue, write-through calls, retries,
//!   health, metrics and shutdown flush. This is what rooms and sessions
//!   hold (a [`PersisterHandle`], in `handle.rs`); the flusher loop is in
//!   `flusher.rs`, the health flag (a circuit breaker) in `breaker.rs`.
//! - [`embedded`]: redb under `store.embedded.dir`, the zero-setup default
//!   (durable ops in `ledger.rs`).
//! - [`mongo`]: MongoDB through the `mongodb` crate, for production (the
//!   two-phase trade below in `trade.rs`, adjustments in `ops.rs`).
//!
//! Both backends pass one conformance suite (`server/tests/store_conformance.rs`).
//!
//! # Trades without multi-document transactions
//!
//! A trade moves goods between two player documents, both or neither.
//! The embedded store does it in one redb write transaction. Mongo
//! transactions need a replica set, so [`mongo::MongoStore`] uses a
//! two-phase pattern with a trade ledger (`trades`), every step a
//! single-document conditional update and therefore idempotent:
//!
//! 1. insert the ledger row `{_id: trade id, state: pending}` (a duplicate
//!    id resumes or replays the earlier attempt);
//! 2. debit each side: `{_id: p, pending_trades: {$ne: t}, <has enough>}`
//!    → `$inc` minus what it gives, `$push pending_trades: t`. Debits only:
//!    nothing is credited before the commit, so a rollback can never drive
//!    anyone below zero. A refused debit cancels: re-credit any side that
//!    holds `t` in `pending_trades` and mark the row `cancelled`;
//! 3. commit: the row goes `pending → applied` (conditional). This is the
//!    point of no return;
//! 4. credit each side: `{_id: p, pending_trades: t}` → `$inc` what it
//!    receives, `$pull pending_trades: t`; mark the row `done`.
//!
//! A crash or outage between steps leaves a row in `pending` or `applied`;
//! [`Store::recover_trades`] (at start and every minute, for rows older
//! than `store.trade_recovery_age_ms`, so that another shard's trade in
//! progress is left alone) rolls `pending` back and `applied` forward. The
//! caller is told "done" after step 4, or after step 3 when step 4 fails
//! (recovery completes it).
//!
//! # Exactly once, and never backwards
//!
//! - Every durable op is idempotent by an id the store remembers in a
//!   ledger (`trades`, `ops`) for `store.ledger_retention_ms`; a replay is
//!   recognised only for the same content (else `TradeIdReused` /
//!   `OpIdReused`). An adjustment on Mongo is two-step like a trade: insert
//!   the `ops` row `pending`, apply it with the id pushed to the player's
//!   `pending_ops` (the filter `pending_ops: {$ne: id}` makes this happen
//!   once), mark the row `done`. Recovery settles rows left `pending`
//!   (done if the player holds the id, deleted if not) and pulls ids whose
//!   row has been done for `store.trade_recovery_age_ms`: until then a late
//!   copy of the update (sent, timed out, run later) still meets the id.
//! - Op ids are minted unique across restarts and shards ([`ids`]).
//! - Every volatile write is conditional on a revision (`state_rev` for a
//!   player's state, `rev` for a room document): an older or equal one is
//!   skipped, so a batch that timed out and lands late changes nothing.
//!
//! # What "acknowledged" means
//!
//! A volatile write is never acknowledged to anyone: it is the latest
//! state, written within about one flush interval, retried until the store
//! takes it, and flushed at shutdown. A durable op is acknowledged when the
//! store has it: redb committed with `Durability::Immediate` (fsync), Mongo
//! answered with `store.mongodb.write_concern` (default `majority`, with
//! `journal = true`). A durable op that fails with anything but
//! [`DurableError::InDoubt`] changed nothing; one that timed out in flight
//! is in doubt and is safe to retry with the same id.

pub mod embedded;
pub mod ids;
pub mod model;
pub mod mongo;
pub mod persister;

use std::sync::Arc;
use std::time::Duration;

pub use crate::config::{
    Backend, EmbeddedConfig, MongoConfig, StoreConfig, MIN_LEDGER_RETENTION_MS,
};
use futures_util::future::BoxFuture;
use mongodb::bson::Document;
use protocol::admin::{Ban, Event};

pub use model::{
    Adjust, Bundle, DecodeError, DurableAck, DurableOp, Fenced, GroundItem, Inventory, OpRecord,
    OpState, PendingPickup, PlayerProfile, PlayerState, Rejection, RoomFence, RoomState, Stats,
    Trade, TradeRecord, TradeState, Volatile, VolatileKey,
};
pub use persister::{
    DurableError, FlushError, Landed, Persister, PersisterHandle, PersisterStats, ShutdownReport,
};

/// Metric names of the persistence layer.
pub mod metric {
    /// Keys with a volatile write not yet in the store (the queue depth).
    pub const DIRTY_KEYS: &str = "tessera_store_dirty_keys";
    /// Age of the oldest volatile write not yet in the store.
    pub const FLUSH_LAG_SECONDS: &str = "tessera_store_flush_lag_seconds";
    /// Volatile writes handed to the persister (before coalescing).
    pub const VOLATILE_UPDATES: &str = "tessera_store_volatile_updates_total";
    /// Volatile documents written to the store (after coalescing).
    pub const VOLATILE_WRITTEN: &str = "tessera_store_volatile_written_total";
    /// Batches written to the store.
    pub const FLUSH_BATCHES: &str = "tessera_store_flush_batches_total";
    /// Documents per batch.
    pub const FLUSH_BATCH_SIZE: &str = "tessera_store_flush_batch_size";
    /// Batches the store refused or did not answer (retried with backoff).
    pub const FLUSH_FAILURES: &str = "tessera_store_flush_failures_total";
    /// Durable ops by `result`: ok, replayed, rejected, invalid,
    /// unavailable, in_doubt, failed.
    pub const DURABLE_OPS: &str = "tessera_store_durable_ops_total";
    pub const DURABLE_SECONDS: &str = "tessera_store_durable_seconds";
    /// 1 when the store answers, 0 while it is down (durable writes then
    /// fail fast).
    pub const HEALTHY: &str = "tessera_store_healthy";
    /// Documents that could not be read or written, reported and skipped.
    pub const BAD_DOCUMENTS: &str = "tessera_store_bad_documents_total";
    /// Durable ops answered in doubt (no answer within
    /// `store.durable_timeout_ms`) that went on in the background to
    /// settle.
    pub const DURABLE_SETTLED_LATE: &str = "tessera_store_durable_settled_late_total";
    /// Trades finished or rolled back by recovery.
    pub const TRADES_RECOVERED: &str = "tessera_store_trades_recovered_total";
    /// Volatile documents skipped because the store holds a newer revision.
    pub const STALE_SKIPPED: &str = "tessera_store_stale_skipped_total";
    /// Finished ledger rows (trades and ops) pruned after the retention.
    pub const LEDGER_PRUNED: &str = "tessera_store_ledger_pruned_total";
    /// Room documents written behind that the store refused because the
    /// room has a newer owner (epoch fence); dropped, never retried.
    pub const FENCED: &str = "tessera_store_fenced_total";
}

/// What went wrong talking to a store.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer (connection, timeout, server selection,
    /// primary gone). Retrying later may succeed; it trips the health flag.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The connection failed after the request may have been sent, or the
    /// write was applied but not confirmed (write concern): the outcome is
    /// unknown. Trips the health flag like `Unavailable`.
    #[error("store connection interrupted: {0}")]
    Interrupted(String),
    /// A document that cannot be read (bad or from a newer schema).
    #[error("bad document {0}")]
    BadDocument(DecodeError),
    /// The store answered with an error.
    #[error("store error: {0}")]
    Backend(String),
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// The write comes from an older owner of the room than the stored
    /// document's (epoch fence). Nothing changed; never retried.
    #[error("{0}")]
    Fenced(Fenced),
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_) | StoreError::Interrupted(_)
        )
    }
}

/// A durable op's failure at the store level.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpError {
    #[error("{0}")]
    Rejected(Rejection),
    #[error("{0}")]
    Store(StoreError),
    /// The store failed part-way through a multi-step op (a Mongo trade):
    /// it may be partly applied until trade recovery settles it.
    #[error("interrupted part-way, settled by recovery: {0}")]
    InDoubt(String),
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Store(e)
    }
}

/// The outcome of writing one batch of volatile documents.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchReport {
    pub written: usize,
    /// Keys the store refused for their content (bad documents): reported
    /// and dropped, never retried.
    pub rejected: Vec<(VolatileKey, String)>,
}

pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// A backend. Object-safe (boxed futures), so the persister holds an
/// `Arc<dyn Store>` and tests can wrap one. Implementations must be safe to
/// call concurrently; the persister serializes volatile batches but runs
/// durable ops and loads concurrently with them.
pub trait Store: Send + Sync + 'static {
    /// "embedded" or "mongodb", for logs.
    fn backend(&self) -> &'static str;

    /// Check the store answers and create indexes. Idempotent; called at
    /// start (retried until it succeeds).
    fn prepare(&self) -> StoreFuture<'_, ()>;

    /// A cheap round trip, used to close the circuit after an outage.
    fn ping(&self) -> StoreFuture<'_, ()>;

    /// Upsert a batch of volatile documents (player `state` fields, whole
    /// room documents). Idempotent: a batch may be written again after a
    /// failure. One bad document does not fail the batch; it is reported in
    /// [`BatchReport::rejected`]. Every write is conditional: a room
    /// document whose `rev`, or a player state whose `rev`, is not above
    /// the stored one is skipped (stale), which is not an error. So a batch
    /// that timed out and lands late can never replace newer state.
    fn write_volatile(&self, batch: Vec<Volatile>) -> StoreFuture<'_, BatchReport>;

    /// Write a room document through, if its `rev` is above the stored one;
    /// return once the store acknowledged it. `Ok(false)`: the stored
    /// document is as new or newer (stale write, skipped).
    ///
    /// The epoch fence comes first: a document whose `owner_epoch` is
    /// below the stored one is refused with [`StoreError::Fenced`]; one
    /// above it is written whatever the revisions (a new owner); an equal
    /// one is compared by `rev`. The same holds for room documents in
    /// [`Store::write_volatile`], where a fenced one is reported in
    /// [`BatchReport::rejected`] and counted in `tessera_store_fenced_total`.
    fn write_room(&self, room: RoomState) -> StoreFuture<'_, bool>;

    /// A shard took room `room` at owner epoch `epoch`: raise the stored
    /// document's `owner_epoch` to it (creating a document that holds only
    /// that when there is none), so every write of an older owner is
    /// refused from now on. Never lowers it: a stored epoch above `epoch`
    /// is [`StoreError::Fenced`]. Returns the stored epoch before.
    fn claim_room(&self, room: String, epoch: u64) -> StoreFuture<'_, u64>;

    /// Apply a durable op; return once the store acknowledged it.
    fn apply(&self, op: DurableOp) -> BoxFuture<'_, Result<DurableAck, OpError>>;

    /// A player's profile, created (with `name` and an empty inventory) if
    /// there is none. An old document is migrated and written back.
    fn load_or_create_player(&self, id: String, name: String) -> StoreFuture<'_, PlayerProfile>;

    fn load_player(&self, id: String) -> StoreFuture<'_, Option<PlayerProfile>>;

    /// A map's room document. A bad one is reported with its id and read as
    /// none (the room starts empty rather than failing).
    fn load_room(&self, map: String) -> StoreFuture<'_, Option<RoomState>>;

    /// Every readable room document; bad ones are logged with their id,
    /// counted and skipped.
    fn load_rooms(&self) -> StoreFuture<'_, Vec<RoomState>>;

    fn load_trade(&self, id: String) -> StoreFuture<'_, Option<TradeRecord>>;

    /// A row of the op ledger: whether (and how) op `id` was applied.
    fn load_op(&self, id: String) -> StoreFuture<'_, Option<OpRecord>>;

    /// Finish or roll back trades (and ops) left half-done for longer than
    /// `older_than`. Returns how many were settled.
    fn recover_trades(&self, older_than: Duration) -> StoreFuture<'_, usize>;

    /// Delete ledger rows (trades and ops) finished more than `retention`
    /// ago; rows still in progress are kept. Returns how many went.
    fn prune_ledger(&self, retention: Duration) -> StoreFuture<'_, usize>;

    /// Write a document exactly as given, bypassing the model: for imports,
    /// tools and tests (old schema versions, damaged documents).
    fn put_raw(&self, collection: &'static str, doc: Document) -> StoreFuture<'_, ()>;

    /// Put (or replace) a player's ban (`bans`).
    fn put_ban(&self, ban: Ban) -> StoreFuture<'_, ()>;

    /// Lift a player's ban; whether there was one.
    fn delete_ban(&self, player: String) -> StoreFuture<'_, bool>;

    /// Every readable ban (expired ones too: the reader judges); bad
    /// documents are reported and skipped.
    fn load_bans(&self) -> StoreFuture<'_, Vec<Ban>>;

    /// Append an admin action to the audit trail (`audit`). Idempotent by
    /// the event's shard and sequence number.
    fn append_audit(&self, event: Event) -> StoreFuture<'_, ()>;

    /// The newest `limit` audit rows, oldest first.
    fn load_audit(&self, limit: usize) -> StoreFuture<'_, Vec<Event>>;
}

/// Open the configured backend. The embedded store opens (or fails, e.g.
/// when another process holds the file) at once; Mongo connects lazily, so
/// this succeeds while the server is still down.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    match config.backend {
        Backend::Embedded => {
            let embedded = config.embedded.clone();
            let store =
                tokio::task::spawn_blocking(move || embedded::EmbeddedStore::open_with(&embedded))
                    .await
                    .map_err(|e| {
                        StoreError::Backend(format!("opening the embedded store: {e}"))
                    })??;
            Ok(Arc::new(store))
        }
        Backend::Mongodb => Ok(Arc::new(
            mongo::MongoStore::connect(&config.mongodb)
                .await?
                .with_ledger_retention(config.ledger_retention()),
        )),
    }
}

/// Log and count a document that cannot be read; the caller skips it.
pub(crate) fn report_bad(err: &DecodeError) {
    tracing::warn!(
        collection = err.collection,
        id = %err.id,
        reason = %err.reason,
        "skipping a bad document"
    );
    metrics::counter!(metric::BAD_DOCUMENTS).increment(1);
}

/// Milliseconds since the Unix epoch, for ledger timestamps.
pub(crate) fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
