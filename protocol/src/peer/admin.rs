//! The `/tessera/admin/1` stream: what one shard asks of another about a
//! player whose socket that shard holds. One stream per pair of shards
//! and direction, opened by the asking shard; every message is one-way
//! (fire and forget, reliable and in order), and the receiver never
//! forwards one further, so nothing loops.
//!
//! - [`Replace`]: the player signed in on the sending shard; the
//!   receiver closes the named session with 2005 / 4006, exactly as a
//!   local takeover does.
//! - [`Kick`]: an operator kicked the player through the sender's admin
//!   API; the receiver removes it (2006 / 4007).
//! - [`BanPlayer`] / [`Unban`]: a ban made or lifted on the sender; the
//!   receiver updates its table of bans in force (and removes the player,
//!   2007 / 4007, if it is connected there).
//! - [`InventoryPush`]: a durable action made on the sender (a `give`)
//!   changed the inventory of a player whose socket the receiver holds;
//!   the receiver pushes `inventory` to that player's session.
//! - [`MigrateRoom`] / [`MigrateAnswer`]: the one request with an answer.
//!   An operator asked the sender to move a room the receiver owns; the
//!   sender opens a stream of its own for it, and the receiver moves the
//!   room (never forwarding the request further: one hop) and answers on
//!   that stream.

use serde::{Deserialize, Serialize};

/// Close the player's session `session` (its session id string, as the
/// cluster directory records it): a newer login elsewhere replaced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replace {
    pub player: String,
    pub session: String,
    /// The newer session takes this one's seat over (its join resumes
    /// it), so the seat is held rather than left. Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub seat_taken: bool,
}

/// An operator kicked the player; `text` is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kick {
    pub player: String,
    pub text: String,
}

/// A ban made on the sending shard (already in the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanPlayer {
    pub player: String,
    pub reason: String,
    /// Who banned (the admin token's name).
    pub by: String,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Unix milliseconds; absent: for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until_ms: Option<u64>,
}

/// A ban lifted on the sending shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unban {
    pub player: String,
}

/// A player's inventory after a durable action made on the sending shard
/// (already in the store): pushed to its session, if it is here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryPush {
    pub player: String,
    pub inventory: crate::msg::Inventory,
}

/// Move `room`, which the receiver owns, to `to` (absent: the placement's
/// pick among the other ready shards). Sent on a stream opened for it
/// alone; answered by [`MigrateAnswer`] on the same stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateRoom {
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
}

/// What became of a [`MigrateRoom`], as the receiver's own
/// `POST /admin/rooms/{room}/migrate` would have answered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateAnswer {
    /// The HTTP status: 200 moved (then `moved` is set), else the
    /// refusal's (404, 409, 503).
    pub status: u16,
    /// Why it was refused; absent when it moved.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved: Option<RoomMoved>,
}

/// A room that moved, as `protocol::admin::RoomMigrated` says it (the
/// pause in whole microseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMoved {
    pub room: String,
    pub from: String,
    pub to: String,
    pub epoch: u64,
    pub pause_us: u64,
}

/// What travels on `/tessera/admin/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminMsg {
    Replace(Replace),
    Kick(Kick),
    Ban(BanPlayer),
    Unban(Unban),
    /// Added in 1.0 (appended).
    Inventory(InventoryPush),
    /// Added in 1.2 (appended; a 1.1 peer does not know it and ends the
    /// stream, and the asker answers that no answer came).
    Migrate(MigrateRoom),
    /// Added in 1.2 (appended), with `migrate`.
    MigrateAnswer(MigrateAnswer),
}
