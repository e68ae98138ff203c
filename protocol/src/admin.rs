//! The shard's HTTP API (`/healthz`, `/client-config.json`, `/admin/*`):
//! every request and reply body as a serde type, shared by the server that
//! answers them and `tessera-ops` that calls them, so the two cannot drift.
//!
//! These are JSON documents over HTTP, not MessagePack frames: they are no
//! part of the game protocol and its version. Field names and shapes are
//! the API (the README documents them); a `None` is written as `null`,
//! as the shard always has.
//!
//! | route | request | reply |
//! |---|---|---|
//! | `GET /healthz` | | [`Health`] |
//! | `GET /client-config.json` | | [`ClientConfig`] |
//! | `POST /admin/announce` | [`AnnounceRequest`] | [`AnnounceReply`] |
//! | `POST /admin/faults/room` | [`RoomFaultRequest`] | [`RoomFaultReply`] |
//! | `POST /admin/faults/session` | [`SessionFaultRequest`] | [`SessionFaultReply`] |
//! | `POST /admin/faults/task?name=` | [`TaskFaultQuery`] | [`TaskFaultReply`] |
//! | `GET /admin/peers` | | [`Peers`] |
//! | `GET /healthz/ready` | | [`Health`] (200 ready, 503 not) |
//! | `GET /admin/whoami` | | [`WhoAmI`] |
//! | `GET /admin/shard` | | [`ShardInfo`] |
//! | `GET /admin/rooms` | | [`RoomsReply`] |
//! | `GET /admin/rooms/{room}` | | [`RoomDetail`] |
//! | `POST /admin/rooms/{room}/restart` | | [`ActionReply`] |
//! | `POST /admin/rooms/{room}/migrate?to=` | [`MigrateQuery`] | [`RoomMigrated`] |
//! | `GET /admin/players?q=` | [`PlayersQuery`] | [`PlayersReply`] |
//! | `POST /admin/players/{player}/kick` | [`KickRequest`] | [`ActionReply`] |
//! | `POST /admin/players/{player}/ban` | [`BanRequest`] | [`ActionReply`] |
//! | `POST /admin/players/{player}/unban` | | [`ActionReply`] |
//! | `GET /admin/dispatcher` | | [`DispatcherReply`] |
//! | `GET /admin/events?since=` | [`EventsQuery`] | [`EventsReply`] |
//!
//! Any refusal (4xx, 5xx) carries an [`ErrorReply`].

use std::collections::BTreeMap;

mod views;

pub use views::*;

use serde::{Deserialize, Serialize};

use crate::Version;

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    /// Sessions connected.
    pub sessions: usize,
    /// Rooms running.
    pub rooms: usize,
    /// Every supervised task by name.
    pub tasks: BTreeMap<String, TaskState>,
    /// Why `/healthz/ready` says 503, when it does: starting, shutting
    /// down, or draining (then: reconnect elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Ok,
    /// A supervised task was given up: the shard is not whole.
    Degraded,
}

/// Where a supervised task stands (the server's `ChildState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Running.
    Up,
    /// Ended; waiting out its backoff before the next start.
    Restarting,
    /// Ended and not restarted.
    Stopped,
    /// A temporary task that panicked: by its type it stays down.
    Crashed,
    /// Given up: restarted too often within the window.
    Failed,
}

/// `GET /client-config.json`: where the demo page connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientConfig {
    pub ws_port: u16,
}

/// `POST /admin/announce`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceRequest {
    /// 1 to `4 * limits.chat_max_chars` characters.
    pub text: String,
    /// Only this map's players; every player when `None`.
    #[serde(default)]
    pub map: Option<String>,
}

/// `POST /admin/announce`'s reply: sessions reached and skipped (full
/// queues).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceReply {
    pub delivered: usize,
    pub dropped: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomFaultKind {
    Panic,
    Stall,
}

/// `POST /admin/faults/room`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomFaultRequest {
    pub map: String,
    pub kind: RoomFaultKind,
    /// How long a stall lasts.
    #[serde(default)]
    pub ms: Option<u64>,
    /// Arm a panic at this point instead of panicking now.
    #[serde(default)]
    pub at: Option<String>,
}

/// `POST /admin/faults/room`'s reply, one shape per kind of request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RoomFaultReply {
    /// A panic now: whether the room crashed (false: it was already gone).
    Crashed { crashed: bool },
    /// A stall, begun.
    Stalling { stalling_ms: u64 },
    /// A panic armed at a point (`at`).
    Armed(Armed),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionFaultKind {
    Panic,
    Drop,
}

/// `POST /admin/faults/session`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFaultRequest {
    /// Required unless `at` arms a point for the next session to get there.
    #[serde(default)]
    pub player: Option<String>,
    pub kind: SessionFaultKind,
    /// Arm a panic at this point instead of panicking now.
    #[serde(default)]
    pub at: Option<String>,
}

/// `POST /admin/faults/session`'s reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SessionFaultReply {
    /// The fault was sent to the player's session.
    Sent { ok: bool },
    /// A panic armed at a point (`at`).
    Armed(Armed),
}

/// A fault point armed: the point, and the map or player it waits for
/// (`None`: the next one to get there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Armed {
    pub armed: String,
    pub target: Option<String>,
}

/// `POST /admin/faults/task`'s query string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFaultQuery {
    pub name: Option<String>,
}

/// `POST /admin/faults/task`'s reply: the task and the state it was in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFaultReply {
    pub task: String,
    pub state: TaskState,
}

/// `GET /admin/peers`: this shard's peer tunnels, like `ipfs p2p ls` and
/// `ipfs p2p stream ls` together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peers {
    /// False when this shard runs alone (no cluster): every list is empty
    /// and `note` says so.
    pub cluster: bool,
    #[serde(default)]
    pub shard_id: Option<String>,
    /// The tunnel listener's bound address.
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    /// The listener registry: the protocols this shard serves.
    pub listeners: Vec<String>,
    /// The peer table, by shard id.
    pub peers: Vec<PeerInfo>,
    /// The stream registry: every open stream.
    pub streams: Vec<StreamInfo>,
    /// The latest refusals, newest last (a bounded log).
    pub refusals: Vec<RefusalInfo>,
    /// Streams reset, by reason (`overflow`, ...), since start.
    pub stream_resets: BTreeMap<String, u64>,
    /// State frames replaced in a queue by a newer one for the same key,
    /// and dropped for want of budget, since start.
    pub state_coalesced: u64,
    pub state_dropped: u64,
    /// This shard's own SWIM incarnation (`None` before membership runs).
    #[serde(default)]
    pub incarnation: Option<u64>,
    /// SWIM membership: every other shard as this one sees it (alive,
    /// suspect, dead), by shard id. Suspicion is a hint: the directory's
    /// leases stay the authority over rooms.
    #[serde(default)]
    pub members: Vec<ClusterMember>,
}

/// One row of the SWIM membership table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    pub shard_id: String,
    pub state: crate::peer::MemberState,
    pub incarnation: u64,
    /// Milliseconds since the member entered this state.
    pub since_ms: u64,
}

impl Peers {
    /// The document of a shard that is not in cluster mode.
    pub fn standalone() -> Peers {
        Peers {
            cluster: false,
            shard_id: None,
            listen: None,
            note: Some("not in cluster mode: this shard has no peers".into()),
            listeners: Vec::new(),
            peers: Vec::new(),
            streams: Vec::new(),
            refusals: Vec::new(),
            stream_resets: BTreeMap::new(),
            state_coalesced: 0,
            state_dropped: 0,
            incarnation: None,
            members: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerState {
    /// Dialling (or waiting for the connection the peer dials).
    Connecting,
    /// Authenticated and up.
    Connected,
    /// The connection was lost or refused; dialling again after a backoff.
    Reconnecting,
}

/// One row of the peer table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    pub shard_id: String,
    #[serde(default)]
    pub address: Option<String>,
    pub state: PeerState,
    /// Whether this shard dialled the live connection.
    pub dialled: bool,
    /// The last heartbeat's round trip, in milliseconds.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub streams: usize,
    /// Milliseconds in the current state.
    pub state_age_ms: u64,
    /// The live connection's QUIC counters, since it was made (none while
    /// there is no connection).
    #[serde(default)]
    pub quic: Option<QuicCounters>,
    /// The tunnel version the peer said in its hello on the live
    /// connection (none while there is none).
    #[serde(default)]
    pub version: Option<Version>,
}

/// What QUIC did on a peer connection (quinn's counters): how many UDP
/// datagrams carried the tunnel's frames, and how many were ACKs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuicCounters {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Send system calls (one can carry several datagrams: GSO).
    pub sends: u64,
    /// ACK frames sent, alone in a datagram or riding on data.
    pub acks_out: u64,
    /// STREAM frames sent (several can share a datagram).
    pub stream_frames_out: u64,
    pub lost_packets: u64,
    /// The path's current maximum UDP payload, in bytes.
    pub mtu: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamDirection {
    /// This shard opened it.
    Outbound,
    /// The peer opened it.
    Inbound,
}

/// One row of the stream registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub id: u64,
    pub peer: String,
    pub protocol: String,
    pub direction: StreamDirection,
    pub age_ms: u64,
    /// Payload bytes and frames each way (length prefixes not counted).
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_in: u64,
    pub frames_out: u64,
    /// Frames and bytes waiting in the outgoing queue.
    pub queued_frames: usize,
    pub queued_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusedBy {
    /// This shard turned the peer away.
    Us,
    /// The peer turned this shard away.
    Them,
}

/// A connection refused, either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalInfo {
    /// The shard id the peer claimed or was dialled as, when known.
    #[serde(default)]
    pub peer: Option<String>,
    pub address: String,
    pub by: RefusedBy,
    /// The refusal code's number and name (PEER.md lists them).
    pub code: u16,
    pub name: String,
    pub reason: String,
    pub age_ms: u64,
}

/// The body of every refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(value: &T) -> String {
        serde_json::to_string(value).expect("admin types serialize")
    }

    /// The documents as the shard has always written them.
    #[test]
    fn replies_keep_their_json_shapes() {
        let health = Health {
            status: HealthStatus::Degraded,
            sessions: 2,
            rooms: 1,
            tasks: [("gateway".to_string(), TaskState::Failed)].into(),
            message: None,
        };
        assert_eq!(
            json(&health),
            r#"{"status":"degraded","sessions":2,"rooms":1,"tasks":{"gateway":"failed"}}"#
        );
        assert_eq!(json(&ClientConfig { ws_port: 7350 }), r#"{"ws_port":7350}"#);
        let announce = AnnounceReply {
            delivered: 3,
            dropped: 1,
        };
        assert_eq!(json(&announce), r#"{"delivered":3,"dropped":1}"#);
        assert_eq!(
            json(&RoomFaultReply::Crashed { crashed: true }),
            r#"{"crashed":true}"#
        );
        assert_eq!(
            json(&RoomFaultReply::Stalling { stalling_ms: 3000 }),
            r#"{"stalling_ms":3000}"#
        );
        let armed = Armed {
            armed: "tick".into(),
            target: None,
        };
        assert_eq!(
            json(&SessionFaultReply::Armed(armed)),
            r#"{"armed":"tick","target":null}"#
        );
        assert_eq!(
            json(&SessionFaultReply::Sent { ok: true }),
            r#"{"ok":true}"#
        );
        let task = TaskFaultReply {
            task: "gateway".into(),
            state: TaskState::Up,
        };
        assert_eq!(json(&task), r#"{"task":"gateway","state":"up"}"#);
        let error = ErrorReply { error: "no".into() };
        assert_eq!(json(&error), r#"{"error":"no"}"#);
    }

    /// Untagged replies read back as the variant that was written.
    #[test]
    fn replies_round_trip() {
        for reply in [
            RoomFaultReply::Crashed { crashed: false },
            RoomFaultReply::Stalling { stalling_ms: 10 },
            RoomFaultReply::Armed(Armed {
                armed: "tick".into(),
                target: Some("lobby".into()),
            }),
        ] {
            let back: RoomFaultReply = serde_json::from_str(&json(&reply)).unwrap();
            assert_eq!(back, reply);
        }
        let health: Health = serde_json::from_str(
            r#"{"status":"ok","sessions":0,"rooms":3,"tasks":{"gateway":"up","persister":"restarting"}}"#,
        )
        .unwrap();
        assert_eq!(health.status, HealthStatus::Ok);
        assert_eq!(health.tasks["persister"], TaskState::Restarting);
    }

    /// Optional request fields may be left out or `null`; unknown kinds are
    /// refused.
    #[test]
    fn requests_take_optional_fields_out_or_null() {
        let a: AnnounceRequest = serde_json::from_str(r#"{"text":"hi"}"#).unwrap();
        let b: AnnounceRequest = serde_json::from_str(r#"{"text":"hi","map":null}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.map, None);
        let room: RoomFaultRequest =
            serde_json::from_str(r#"{"map":"lobby","kind":"stall","ms":5}"#).unwrap();
        assert_eq!(room.kind, RoomFaultKind::Stall);
        assert_eq!(room.ms, Some(5));
        assert!(serde_json::from_str::<SessionFaultRequest>(r#"{"kind":"explode"}"#).is_err());
        let session: SessionFaultRequest =
            serde_json::from_str(r#"{"kind":"panic","at":"hello"}"#).unwrap();
        assert_eq!(session.player, None);
        assert_eq!(session.at.as_deref(), Some("hello"));
    }
}
