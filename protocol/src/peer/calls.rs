//! Durable actions of remote members on `/tessera/room/1`: what an edge
//! asks a room's owner on behalf of one of its members, and the answers.
//! Appended to [`super::EdgeMsg`] and [`super::OwnerMsg`] in 1.0; older
//! peers end the stream on them (they do not decode), which the edge
//! treats as the room moving.
//!
//! - `give`: the giver's shard asks [`WhoIs`] (a correlation id `call`
//!   per question), the owner answers [`TargetIs`]: the target's player
//!   id and the shard holding its socket. The trade itself is one durable
//!   op the giver's shard makes in the (shared) store; the owner writes
//!   nothing for it.
//! - `pick_up`: [`RemotePickUp`] runs the whole pick-up on the owner,
//!   which owns the ground; its answers (`done`, `inventory`, errors) come
//!   back as the member's `reliable` frames, as for any other frame.

use serde::{Deserialize, Serialize};

use super::room::SessionId;
use crate::msg::EntityId;

/// Who is the player with entity `entity` in the room? Asked for member
/// `session` (a `give`); answered by [`TargetIs`] with the same `call`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoIs {
    /// Correlation id, unique per stream while the question is open.
    pub call: u64,
    pub session: SessionId,
    pub entity: EntityId,
}

/// The answer to [`WhoIs`] `call`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetIs {
    pub call: u64,
    /// The target's player id; absent: no player with that entity in the
    /// room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub player: Option<String>,
    /// The shard holding the target's socket (where its `inventory` push
    /// goes); absent with `player`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// The room did not answer the owner in time (or is not running
    /// there): nothing was looked up. The edge answers 3004.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unavailable: bool,
}

/// Member `session` picks up ground item `item`, its request `req`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemotePickUp {
    pub session: SessionId,
    pub req: u32,
    pub item: u64,
}
