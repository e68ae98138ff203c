//! Tessera shard: the game server library. The `tessera-server` binary is a
//! thin wrapper over [`shard::start`]; the tests drive the same function.
//!
//! # Layout
//!
//! - [`cluster`]: one world over many shards (cluster mode, on when
//!   `cluster.redis` is set): the directory in Redis and the task that
//!   keeps this shard's entries alive, [`cluster::tunnel`], the
//!   authenticated QUIC peer hub between shards, and
//!   [`cluster::peering`], which starts the hub from `[cluster]` and keeps
//!   it connected to the shards in the directory; [`cluster::relay`] and
//!   [`cluster::seats`]: one player per cluster (takeovers, kicks, bans
//!   and announcements across shards; the player entries).
//! - [`shard`]: starts the actix System, listeners and workers; shutdown.
//! - [`gateway`]: accept loop, per-IP limits, connection cap, WebSocket
//!   upgrade; one session per socket on the next worker Arbiter.
//! - [`tls`]: optional TLS (rustls) on the game and HTTP listeners.
//! - [`session`]: the per-connection actor: decode, state check, rate
//!   limit, route to the room through its [`room::RoomRef`]; one file per
//!   message family.
//! - [`outbound`]: a session's bounded outbound queue and its writer task.
//! - [`peer_inbox`]: cluster mode: what other shards say on the admin and
//!   chat streams (replace a session, kick, ban, unban, announcements and
//!   map broadcasts), applied to this shard's sessions, dispatcher and
//!   bans; the sending side is [`cluster::relay`].
//! - [`room`]: the room actor, one per instance of a map (tick, movement,
//!   interest management, panic boundary, snapshots), its messages, members,
//!   views and snapshots, its spatial [`room::grid`], its ground items and
//!   durable pick-ups ([`room::ground`]), the [`room::RoomRef`] sessions
//!   hold, and the [`room::supervisor`] that places, restarts and watches
//!   rooms; in cluster mode [`room::cluster`] locates and leases rooms
//!   through the directory and plays rooms owned by other shards over the
//!   tunnel ([`room::remote`]: a member whose socket is elsewhere).
//!
//! A move through a room owned by another shard: socket -> `Session` ->
//! its `Inputs` -> this shard's link to the room drains every member's
//! queue into an `inputs` batch (twice per tick: `cluster.input_lead_ms`
//! and `input_late_lead_ms` before the owner's tick) -> tunnel -> the owner's
//! input queues -> the room's tick -> one `tick` per edge (entries encoded
//! once, equal views shared) -> tunnel -> each view laid out once -> the
//! same bytes pushed to each recipient's `Outbound`.
//! - [`presence`]: who is connected, with which session, seated in which
//!   room (resume tokens and takeovers are checked against it).
//! - [`ids`]: `SessionId` and `RoomId` (a map name plus an instance).
//! - [`wire`]: conversions from the store's types to the protocol's.
//! - [`dispatcher`]: typed topics for announcements and map broadcasts.
//! - [`events`]: the shard's recent events (a bounded ring, plus sinks):
//!   room restarts and failures, admin actions.
//! - [`bans`]: the bans in force, checked at `hello`.
//! - [`auth`]: signed tokens, resume tokens, dev-mode guests.
//! - [`ratelimit`]: token buckets and abuse strikes.
//! - [`config`]: the one configuration struct, its loading and validation.
//! - [`http`]: demo page, `/healthz`, `/healthz/ready`, `/metrics`, the
//!   admin API (roles, read views, actions, audit).
//! - [`metrics`]: metric names and the Prometheus recorder.
//! - [`supervise`]: the task supervisor that restarts the gateway, HTTP
//!   server, sampler, watchdog and persister flusher; the whole supervision
//!   tree is drawn there.
//! - [`cluster`]: cluster mode: the directory in Redis (shards, room
//!   leases with fencing epochs, players, events) and the shard's task that
//!   heartbeats and renews its leases. Off unless `cluster.redis` is set.
//! - [`store`]: persistence: the Store trait, its redb and MongoDB
//!   backends, and the persister (write-behind and write-through).
//!
//! A move, end to end: socket -> `Session` (size, decode, rate limit, state)
//! -> the member's shared input queue ([`room::Inputs`], no actor message)
//! -> applied at the room's next tick -> each member's view diffed against
//! the last -> one encoded frame per distinct diff, shared as `Bytes` ->
//! each member's `Outbound` -> writer task -> socket. Chat, joins, leaves
//! and pick-ups go to the room's mailbox through the session's `RoomRef`.
//!
//! Modules depend on the ones below them only; `tests/modules.rs` fails on
//! any import cycle.

pub mod auth;
pub mod bans;
pub mod cluster;
pub mod config;
pub mod dispatcher;
pub mod events;
pub mod gateway;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod outbound;
pub mod peer_inbox;
pub mod presence;
pub mod ratelimit;
pub mod room;
pub mod session;
pub mod shard;
pub mod store;
pub mod supervise;
pub mod tls;
pub mod wire;

pub use config::Config;
pub use shard::{start, ShardHandle};
