//! What is stored: documents, their schema versions and migrations, and the
//! operations that change durable state.
//!
//! Three collections (Mongo) or tables (redb), keyed by `_id`:
//!
//! | collection | `_id` | written by |
//! |---|---|---|
//! | `players` | player id | `state` + `state_rev`: volatile writes, each written only if its `state_rev` is newer than the stored one; `inventory`, `progress`, `pending_ops`, `pending_trades`: durable ops only |
//! | `rooms` | map name | whole documents, volatile (write-behind) or write-through, each written only if its `rev` is newer than the stored one |
//! | `trades` | trade id | the trade ledger (durable) |
//! | `ops` | op id | the op ledger: every applied [`Adjust`], so a re-driven one is recognised however many ops came after it |
//! | `bans` | player id | the admin API's ban and unban (see `admin.rs`) |
//! | `audit` | time, shard, sequence | every admin action: who, what, when, result |
//!
//! Both ledgers keep a finished row for `store.ledger_retention_ms` (7 days
//! by default), then prune it: an op must not be re-driven later than that.
//!
//! A player document is split by write class on purpose: a volatile flush
//! sets `state` and nothing else, so a late position update can never undo
//! a currency change, and durable ops are *deltas with conditions* applied
//! by the store (not snapshots of a session's memory), so two writers
//! cannot lose each other's updates.
//!
//! Every document carries `v`, its schema version. Reading goes through
//! [`decode_player`] / [`decode_room`] / [`decode_trade`]: the raw document
//! is migrated step by step up to the current version (the hook is
//! [`migrate_player`] and friends; a document without `v` is version 1),
//! then typed. A document from a newer server (`v` above ours) or one that
//! does not fit the model is a [`DecodeError`]: reported with its id and
//! skipped, never fatal, never overwritten.
//!
//! # Layout
//!
//! - `documents.rs`: the documents and the ledger rows.
//! - `operations.rs`: durable ops, their checks and how they apply.
//! - `migrations.rs`: schema versions up to the current one, and decoding.
//! - `admin.rs`: bans and the audit trail.

mod admin;
mod documents;
mod migrations;
mod operations;
#[cfg(test)]
mod tests;

pub use admin::*;
pub use documents::*;
pub use migrations::*;
pub use operations::*;

/// Current schema of `players` documents.
pub const PLAYER_SCHEMA: i32 = 2;
/// Current schema of `rooms` documents.
pub const ROOM_SCHEMA: i32 = 2;
/// Current schema of `trades` documents.
pub const TRADE_SCHEMA: i32 = 1;

/// Current schema of `ops` documents.
pub const OP_SCHEMA: i32 = 1;

pub const PLAYERS: &str = "players";
pub const ROOMS: &str = "rooms";
pub const TRADES: &str = "trades";
pub const OPS: &str = "ops";
