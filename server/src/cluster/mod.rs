//! The cluster: one world over many shards. This module holds the
//! foundation every other cluster part stands on: the directory in Redis
//! (who is in the cluster, which shard owns which room at which epoch,
//! where each player is, what happened) and the per-shard task that keeps
//! this shard's entries alive.
//!
//! # Layout
//!
//! - [`directory`]: [`Directory`], the handle over Redis: shards
//!   (`shards.rs`), room leases and placement (`rooms.rs`, scripts in
//!   `scripts.rs`), players (`players.rs`), the events stream
//!   (`events.rs`); its errors and metrics.
//! - [`agent`]: the supervised task "directory": registers the shard,
//!   heartbeats with its load, renews every held lease in one batch per
//!   period, re-asserts leases and record when Redis returns, and tells
//!   the room side (through [`Directory::notices`]) which leases expired
//!   or were lost; on shutdown it drains, releases and says goodbye.
//! - [`tunnel`]: the authenticated QUIC connection between each pair of
//!   shards, its streams by protocol name, registries and heartbeats.
//! - [`peering`]: cluster mode's tunnel: [`tunnel::TunnelSettings`] from
//!   `[cluster]`, the supervised task "peers", and the [`tunnel::Resolver`]
//!   backed by the directory (shard id -> the shard record's peer address).
//!
//! ```text
//! RoomSupervisor (after the merge) ──acquire_room(room, floor)──▶ Directory ──▶ Redis
//!        ▲                                                          ▲  {prefix}:room:R = "shard:epoch" PX lease_ms
//!        │ LeaseNotice (Expiring / Lost / Reasserted)               │  {prefix}:epoch:R  (only rises)
//!        └──────────────── agent task "directory" ──renew batch─────┘  {prefix}:rooms:S (set)
//!                            every cluster.renew_ms
//! ```
//!
//! Without `cluster.redis` nothing here runs: the shard has no directory
//! and behaves exactly as a single shard always has.

pub mod agent;
pub mod directory;
pub mod peering;
pub mod tunnel;

pub use agent::{leave, run_agent, LoadSource};
pub use directory::{
    Directory, DirectoryError, DirectorySettings, Event, EventKind, Lease, LeaseNotice,
    PlayerEntry, PreviousHolder, RenewReport, ShardId, ShardInfo, ShardLoad, ShardRecord,
    ShardState,
};

/// Metric names of the directory.
pub mod metric {
    /// Directory operations that failed, by `op`.
    pub const DIRECTORY_ERRORS: &str = "tessera_directory_errors_total";
    /// Leases this shard holds now.
    pub const LEASES_HELD: &str = "tessera_leases_held";
    /// Leases this shard lost (another shard holds the room now, or it
    /// could not be re-asserted).
    pub const LEASES_LOST: &str = "tessera_leases_lost_total";
    /// Duration of one directory operation, by `op`.
    pub const DIRECTORY_OP_SECONDS: &str = "tessera_directory_op_seconds";
}
