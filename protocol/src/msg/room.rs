//! Joining and leaving maps, moving, and the per-tick view updates.

use serde::{Deserialize, Serialize};

use super::items::GroundItem;

/// An entity's id within one room. Stable while the entity is in the room.
pub type EntityId = u32;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Join {
    pub map: String,
}

/// Leave the current map. (A body with no fields: `{"leave": {}}`.)
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Leave {}

/// A movement intent: walk in direction `(dx, dy)` from the next tick on,
/// until the next `move`. The server clamps the vector to length 1 and moves
/// the player at the map's speed, inside the map's bounds. `(0, 0)` stops.
///
/// `seq` numbers the client's inputs; inputs are applied in `seq` order, one
/// not greater than the last applied is ignored, and every update carries the
/// last applied `seq` of each entity so a client can reconcile its
/// prediction.
///
/// `dx` and `dy` go out as float32 but are read from any MessagePack number:
/// a direction with a component beyond `f32`'s range (a float64 such as
/// `-1e300`) is scaled down to length 1 in float64 first, so it keeps its
/// direction instead of turning infinite. Only NaN and infinities stay
/// non-finite (and are refused by the server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "MoveWire")]
pub struct Move {
    pub seq: u32,
    pub dx: f32,
    pub dy: f32,
}

/// A `move` as read from the wire: directions as float64.
#[derive(Deserialize)]
struct MoveWire {
    seq: u32,
    dx: f64,
    dy: f64,
}

impl From<MoveWire> for Move {
    fn from(w: MoveWire) -> Move {
        let (mut dx, mut dy) = (w.dx, w.dy);
        let big = dx.abs().max(dy.abs());
        // Only what an f32 cannot hold is scaled here (the server clamps
        // the rest), so every f32 direction reads back exactly as sent.
        if big.is_finite() && big > f64::from(f32::MAX) {
            // Divide by the larger component first, so that the length
            // cannot overflow even for components near f64::MAX.
            (dx, dy) = (dx / big, dy / big);
            let len = dx.hypot(dy);
            (dx, dy) = (dx / len, dy / len);
        }
        Move {
            seq: w.seq,
            dx: dx as f32,
            dy: dy as f32,
        }
    }
}

/// A map as the joining client needs to draw and predict it. Lengths are in
/// map units (the unit of `x` and `y`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapInfo {
    pub name: String,
    pub width: f32,
    pub height: f32,
    /// Ticks per second of this map's room.
    pub tick_hz: u32,
    /// Entities farther than this from the player are not sent to it.
    pub view_radius: f32,
    /// Units per second at full stick.
    pub speed: f32,
}

/// An entity as first seen: in `joined` and in `update.entered`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    pub id: EntityId,
    pub name: String,
    pub x: f32,
    pub y: f32,
    /// Last input `seq` applied to this entity.
    pub seq: u32,
}

/// Sent once the player stands in the map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Joined {
    pub map: MapInfo,
    /// The joining player's own entity.
    pub you: EntityId,
    pub tick: u64,
    /// Everything the player sees now, itself included.
    pub entities: Vec<Entity>,
    /// The items lying on the map (since 1.2; absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<GroundItem>,
    /// Which instance of the map the player stands in (since 1.4): 1, the
    /// map's first room, is absent on the wire; a map run as several
    /// instances (`instances = "auto"`) numbers the others from 2.
    #[serde(default = "first_instance", skip_serializing_if = "is_first_instance")]
    pub instance: u32,
}

/// The instance a `joined` without one (from a server before 1.4) means.
pub const FIRST_INSTANCE: u32 = 1;

fn first_instance() -> u32 {
    FIRST_INSTANCE
}

fn is_first_instance(instance: &u32) -> bool {
    *instance == FIRST_INSTANCE
}

/// Sent when the player is no longer in a map: after `leave`, or when the
/// server moved it out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Left {
    pub map: String,
}

/// An entity that moved (or had an input applied) this tick, as a compact
/// array `[id, x, y, seq]` on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "(EntityId, f32, f32, u32)", into = "(EntityId, f32, f32, u32)")]
pub struct Moved {
    pub id: EntityId,
    pub x: f32,
    pub y: f32,
    pub seq: u32,
}

impl From<(EntityId, f32, f32, u32)> for Moved {
    fn from((id, x, y, seq): (EntityId, f32, f32, u32)) -> Self {
        Moved { id, x, y, seq }
    }
}

impl From<Moved> for (EntityId, f32, f32, u32) {
    fn from(m: Moved) -> Self {
        (m.id, m.x, m.y, m.seq)
    }
}

/// What changed in the player's view during one tick. Sent only for ticks in
/// which something in view changed.
///
/// When `full` is true the update replaces the client's whole view: `entered`
/// lists everything visible and anything not in it is gone. The server sends
/// such an update after it had to drop state updates for a slow client
/// (latest state wins), so a client never needs the dropped ones.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Update {
    pub tick: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entered: Vec<Entity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moved: Vec<Moved>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left: Vec<EntityId>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
}
