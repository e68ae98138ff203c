//! What the directory stores and answers: shard records, leases,
//! player entries, events, and the notices the room side listens to.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::Serialize;

use crate::config::check_shard_id;
use crate::ids::RoomId;

/// A shard's id in the cluster: 1-64 characters of `[A-Za-z0-9_.-]` (no
/// `:`, which separates shard from epoch in a lease).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardId(Arc<str>);

impl Serialize for ShardId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl ShardId {
    pub fn new(id: &str) -> Result<ShardId, String> {
        check_shard_id(id).map_err(|m| format!("shard id {id:?} {m}"))?;
        Ok(ShardId(id.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ShardId {
    type Err = String;
    fn from_str(s: &str) -> Result<ShardId, String> {
        ShardId::new(s)
    }
}

/// A shard's life in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardState {
    /// Registered, not listening yet: never placed on.
    Starting,
    /// Takes players and rooms.
    Ready,
    /// Shutting down or being emptied: never placed on.
    Draining,
}

impl ShardState {
    pub fn name(self) -> &'static str {
        match self {
            ShardState::Starting => "starting",
            ShardState::Ready => "ready",
            ShardState::Draining => "draining",
        }
    }

    pub fn parse(text: &str) -> Option<ShardState> {
        match text {
            "starting" => Some(ShardState::Starting),
            "ready" => Some(ShardState::Ready),
            "draining" => Some(ShardState::Draining),
            _ => None,
        }
    }
}

/// How busy a shard is, as its heartbeat reports it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct ShardLoad {
    pub sessions: u64,
    pub rooms: u64,
    /// Process CPU over the last heartbeat period, in cores (1.0 = one
    /// core busy).
    pub cpu: f64,
}

/// What a shard registers about itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardRecord {
    pub ws_addr: String,
    pub http_addr: String,
    pub peer_addr: String,
    pub version: String,
    /// Unix milliseconds.
    pub started_at: u64,
}

/// A shard as the directory knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardInfo {
    pub id: ShardId,
    pub record: ShardRecord,
    pub state: ShardState,
    pub load: ShardLoad,
    /// Unix milliseconds of its last heartbeat.
    pub updated_at: u64,
    /// Its alive key is there: false once it missed heartbeats for
    /// `cluster.shard_ttl_ms` (dead to the cluster).
    pub alive: bool,
}

impl ShardInfo {
    /// Whether rooms may be placed on it.
    pub fn placeable(&self) -> bool {
        self.alive && self.state == ShardState::Ready
    }

    pub(super) fn from_hash(id: ShardId, h: &HashMap<String, String>, alive: bool) -> ShardInfo {
        let text = |k: &str| h.get(k).cloned().unwrap_or_default();
        let num = |k: &str| h.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ShardInfo {
            id,
            record: ShardRecord {
                ws_addr: text("ws"),
                http_addr: text("http"),
                peer_addr: text("peer"),
                version: text("version"),
                started_at: num("started_at"),
            },
            // A record without a known state is never placed on.
            state: h
                .get("state")
                .and_then(|s| ShardState::parse(s))
                .unwrap_or(ShardState::Draining),
            load: ShardLoad {
                sessions: num("sessions"),
                rooms: num("rooms"),
                cpu: h.get("cpu").and_then(|v| v.parse().ok()).unwrap_or(0.0),
            },
            updated_at: num("updated_at"),
            alive,
        }
    }
}

/// A room lease this shard took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub room: RoomId,
    pub shard: ShardId,
    /// The fencing epoch: every store write the room makes carries it.
    pub epoch: u64,
}

/// What the renewal task tells the room side about a held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseNotice {
    /// Not renewed before its deadline minus the margin (one renewal
    /// period): this shard can no longer be sure it owns the room, so the
    /// room must stop acting as its owner (stop writing). The lease stays
    /// on the books and is re-asserted when Redis answers again.
    Expiring { room: RoomId, epoch: u64 },
    /// Another shard holds the room now (or took it and let go: the epoch
    /// counter moved past ours). Stop the room; its writes are fenced.
    Lost { room: RoomId, epoch: u64 },
    /// An expiring lease was re-asserted (same epoch): nobody took the
    /// room in between, the room may act as owner again.
    Reasserted { room: RoomId, epoch: u64 },
}

/// Where a player is, cluster-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlayerEntry {
    pub shard: ShardId,
    pub session: String,
    /// The room the player is seated in; empty: none.
    pub room: String,
    /// The id of the player's current resume token; empty: none.
    pub resume: String,
    /// Unix milliseconds.
    pub updated_at: u64,
}

impl PlayerEntry {
    pub(super) fn from_hash(h: &HashMap<String, String>) -> Option<PlayerEntry> {
        let shard = ShardId::new(h.get("shard")?).ok()?;
        let text = |k: &str| h.get(k).cloned().unwrap_or_default();
        Some(PlayerEntry {
            shard,
            session: text("session"),
            room: text("room"),
            resume: text("resume"),
            updated_at: h
                .get("updated_at")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        })
    }
}

/// What an event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    ShardUp,
    ShardDown,
    ShardDraining,
    RoomPlaced,
    RoomMoved,
    RoomFailedOver,
    RoomReleased,
    AdminAction,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::ShardUp => "shard_up",
            EventKind::ShardDown => "shard_down",
            EventKind::ShardDraining => "shard_draining",
            EventKind::RoomPlaced => "room_placed",
            EventKind::RoomMoved => "room_moved",
            EventKind::RoomFailedOver => "room_failed_over",
            EventKind::RoomReleased => "room_released",
            EventKind::AdminAction => "admin_action",
        }
    }

    pub fn parse(text: &str) -> Option<EventKind> {
        [
            EventKind::ShardUp,
            EventKind::ShardDown,
            EventKind::ShardDraining,
            EventKind::RoomPlaced,
            EventKind::RoomMoved,
            EventKind::RoomFailedOver,
            EventKind::RoomReleased,
            EventKind::AdminAction,
        ]
        .into_iter()
        .find(|k| k.name() == text)
    }
}

/// One entry of the events stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    /// The stream id (`<ms>-<seq>`): pass it to `events_since` to read on.
    pub id: String,
    pub kind: EventKind,
    /// What it is about: a room id, a shard id, an admin target.
    pub subject: String,
    /// The shard that wrote it.
    pub shard: String,
    pub detail: String,
    /// Unix milliseconds.
    pub time: u64,
}
