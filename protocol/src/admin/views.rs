//! The admin API's read views and operator actions: what the ops console
//! and `tessera-ops` show and do. One type per document, shared by the
//! shard that builds it and the console that reads it.

use serde::{Deserialize, Serialize};

/// What an admin token may do. A `viewer` reads every `GET /admin/*`; an
/// `operator` also acts (every `POST`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
        }
    }
}

/// `GET /admin/whoami`: the caller's token, by its configured name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub name: String,
    pub role: Role,
}

/// Where a shard stands in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    /// Listening, not yet accepting players.
    Starting,
    /// Accepting players.
    Ready,
    /// Moving its rooms away before it stops (cluster mode only).
    Draining,
    /// Shutting down: no new players.
    Stopping,
}

/// `GET /admin/shard`: one shard at a glance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// The shard's id (its HTTP address until the cluster names shards).
    pub id: String,
    /// The server's version (its crate version).
    pub version: String,
    pub uptime_s: u64,
    pub state: ShardState,
    /// Whether the shard runs in a cluster (migrate and drain exist only
    /// then).
    pub cluster: bool,
    pub sessions: usize,
    pub rooms: usize,
    /// Client messages received per second, over the last sampling window.
    pub msgs_in_per_s: f64,
    /// Frames sent per second, over the last sampling window.
    pub msgs_out_per_s: f64,
    /// The 99th percentile of room tick time, milliseconds (recent window).
    pub tick_p99_ms: f64,
    /// Room restarts since the shard started (every reason).
    pub restarts: u64,
    /// Dispatcher messages dropped since start (full subscriber queues).
    pub dispatch_dropped: u64,
    /// Whether the store answers.
    pub store_healthy: bool,
}

/// One running room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// The room id: `lobby` (a map's first instance), `lobby#2`.
    pub id: String,
    pub map: String,
    pub instance: u32,
    /// Members, held seats included (remote ones too).
    pub members: usize,
    /// Of `members`, those whose socket is on another shard (cluster
    /// mode; 0 on a single shard).
    pub members_remote: usize,
    /// The shard that owns the room: this one (the admin API lists the
    /// rooms this shard runs).
    pub owner: String,
    /// The owner's lease epoch (cluster mode; 0 on a single shard).
    pub epoch: u64,
    /// How long the last tick took, milliseconds.
    pub tick_ms: f64,
    /// Restarts of this room since the shard started.
    pub restarts: u64,
    /// Age of the snapshot a restart would start from, milliseconds.
    pub snapshot_age_ms: Option<u64>,
    /// Since the room last handed its state to the store, milliseconds.
    pub store_age_ms: Option<u64>,
}

/// `GET /admin/rooms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomsReply {
    pub rooms: Vec<RoomInfo>,
}

/// A member of a room, as the inspector shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub entity: u32,
    pub player: String,
    pub name: String,
    pub x: f32,
    pub y: f32,
    /// Since the player's session signed in, seconds (`None`: unknown).
    pub session_age_s: Option<u64>,
    /// `false` while the seat is held for a resume.
    pub connected: bool,
    /// Cluster mode: the shard holding the member's socket, when it is
    /// not this one. Absent for local members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<String>,
}

/// `GET /admin/rooms/{room}`: the room inspector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomDetail {
    pub room: RoomInfo,
    pub width: f32,
    pub height: f32,
    pub members: Vec<MemberInfo>,
}

/// Whether a player is here now or has a seat held for a resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Connected,
    /// Disconnected; its resume token still works.
    ResumeSeat,
}

/// One player found by `GET /admin/players?q=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerInfo {
    pub player: String,
    pub name: String,
    pub shard: String,
    pub room: Option<String>,
    pub session_age_s: u64,
    pub presence: Presence,
}

/// `GET /admin/players?q=` (by id or name, case-insensitive substring).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayersReply {
    pub players: Vec<PlayerInfo>,
    /// More matched than `admin.search_limit`.
    pub truncated: bool,
}

/// `GET /admin/players/{player}/inventory`: the player's durable
/// possessions as the store holds them now (read from the store, not from a
/// session), for audits and the loadbot's acknowledged-action ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredInventory {
    pub player: String,
    pub name: String,
    pub currency: i64,
    #[serde(default)]
    pub items: std::collections::BTreeMap<String, i64>,
}

/// `GET /admin/players`'s query.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PlayersQuery {
    #[serde(default)]
    pub q: Option<String>,
}

/// One dispatcher topic (nsqadmin's topic view).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicInfo {
    pub topic: String,
    pub subscribers: usize,
    /// Messages queued in subscribers' mailboxes now.
    pub depth: i64,
    pub published_total: u64,
    pub published_per_s: f64,
    pub dropped_total: u64,
}

/// `GET /admin/dispatcher`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DispatcherReply {
    pub topics: Vec<TopicInfo>,
}

/// What happened, in the events stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ShardStarted,
    ShardStopping,
    RoomRestarted,
    RoomFailed,
    /// An operator's action (also in the store's `audit` collection).
    AdminAction,
}

/// One event. An admin action carries who (`actor`, the token's name), what
/// (`action`, `subject`) and the `result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing per shard; `since` pages on it.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub shard: String,
    pub kind: EventKind,
    /// The room, player or shard it is about.
    pub subject: String,
    pub detail: String,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub action: Option<String>,
    /// `ok`, or the refusal.
    #[serde(default)]
    pub result: Option<String>,
}

/// `GET /admin/events?since=`: events after `since` (oldest first), and
/// the `next` value to ask with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventsReply {
    pub events: Vec<Event>,
    pub next: u64,
}

/// `GET /admin/events`'s query.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    pub since: Option<u64>,
}

/// `POST /admin/players/{player}/kick`'s body (it may be empty).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KickRequest {
    #[serde(default)]
    pub reason: Option<String>,
    /// Act only on a player whose socket is on this shard (404 otherwise),
    /// never relaying the kick to the shard the directory names. For a
    /// caller that asks every shard itself (the ops console): one shard
    /// then answers `kicked`, instead of a relayed kick racing the direct
    /// one to the player's shard.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local_only: bool,
}

/// `POST /admin/players/{player}/ban`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRequest {
    /// 1 to `admin.ban_reason_max_chars` characters; the player sees it.
    pub reason: String,
    /// How long; forever when `None`.
    #[serde(default)]
    pub duration_s: Option<u64>,
}

/// A ban as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    pub player: String,
    pub reason: String,
    /// Who banned (the token's name).
    pub by: String,
    pub at_ms: u64,
    /// Milliseconds since the Unix epoch; forever when `None`.
    pub until_ms: Option<u64>,
}

/// `POST /admin/rooms/{room}/migrate?to=SHARD`: where to move the room
/// (absent: the placement picks a ready shard other than the owner).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MigrateQuery {
    #[serde(default)]
    pub to: Option<String>,
}

/// The reply of a live migration: the room runs on `to` now, under lease
/// epoch `epoch`, after a pause of `pause_ms` (from the pause on `from`
/// to its shards being told where it runs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomMigrated {
    pub room: String,
    pub from: String,
    pub to: String,
    pub epoch: u64,
    pub pause_ms: f64,
}

/// The reply of an action: what was done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionReply {
    pub action: String,
    pub subject: String,
    /// What came of it, e.g. `kicked`, `not connected`, `restarted`.
    pub result: String,
}
