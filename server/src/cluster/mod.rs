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
//! - [`relay`]: [`Relay`], what this shard tells other shards on the
//!   admin and chat streams (replace a session, kick, ban, unban,
//!   announcements and map broadcasts), one stream per peer and protocol.
//! - [`seats`]: [`Seats`], the task that keeps this shard's players'
//!   directory entries true (room on join and leave, release at logout,
//!   re-assertion after a Redis outage).
//! - [`membership`]: SWIM failure detection over the tunnels: direct and
//!   indirect probes, suspicion, incarnations, piggybacked gossip, and the
//!   [`membership::MemberEvent`] broadcast failover subscribes to.
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
pub mod membership;
pub mod peering;
pub mod relay;
pub mod seats;
pub mod tunnel;

pub use agent::{leave, run_agent, LoadSource};
pub use directory::{
    Claim, Directory, DirectoryError, DirectorySettings, Event, EventKind, Lease, LeaseNotice,
    PlayerEntry, PreviousHolder, Reaped, RenewReport, ShardId, ShardInfo, ShardLoad, ShardRecord,
    ShardState,
};
pub use relay::Relay;
pub use seats::Seats;

/// What cluster mode gives sessions and the admin API: the directory,
/// the relay to other shards, and the writer of this shard's player
/// entries.
#[derive(Clone)]
pub struct Link {
    pub directory: Directory,
    pub relay: Relay,
    pub seats: Seats,
}

/// Metric names of the directory.
pub mod metric {
    /// Directory operations that failed, by `op`.
    pub const DIRECTORY_ERRORS: &str = "tessera_directory_errors_total";
    /// Leases this shard holds now.
    pub const LEASES_HELD: &str = "tessera_leases_held";
    /// Leases this shard lost (another shard holds the room now, or it
    /// could not be re-asserted).
    pub const LEASES_LOST: &str = "tessera_leases_lost_total";
    /// Heartbeats that found this shard id's record written by another
    /// live process (two processes with one shard id).
    pub const SHARD_ID_CONFLICTS: &str = "tessera_shard_id_conflicts_total";
    /// Duration of one directory operation, by `op`.
    pub const DIRECTORY_OP_SECONDS: &str = "tessera_directory_op_seconds";
    /// Messages the relay sent to a peer, by `protocol`.
    pub const RELAY_SENT: &str = "tessera_relay_sent_total";
    /// Messages the relay could not send, by `protocol` and `reason`
    /// (`queue_full`, `peer_queue_full`, `unreachable`).
    pub const RELAY_DROPPED: &str = "tessera_relay_dropped_total";
    /// Messages received from peers on the admin and chat streams, by
    /// `protocol` and `msg`.
    pub const RELAY_RECEIVED: &str = "tessera_relay_received_total";
    /// Logins refused because the directory did not answer in time
    /// (error 5005).
    pub const LOGINS_UNAVAILABLE: &str = "tessera_logins_directory_unavailable_total";
}
