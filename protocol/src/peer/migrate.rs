//! The `/tessera/migrate/1` stream: a room moves, live, from the shard
//! that runs it (the source) to another (the target). One stream per
//! migration, opened by the source:
//!
//! ```text
//! source                                          target
//!   room paused at a tick boundary, snapshot
//!   ── offer {room, from, epoch, state} ──────────▶ lease moved by compare-and-set
//!                                                   (from:epoch → target:epoch+1),
//!                                                   room started from `state`
//!   ◀─ accepted {room, epoch} ─────────────────────
//!   (or ◀─ refused {room, code, reason}: the room resumes on the source)
//! ```
//!
//! [`RoomState`] is everything a restart of the room needs: members with
//! their positions, directions and last inputs (seats held until their
//! shards re-join them), the inputs that arrived during the pause, the
//! ground's items and pick-ups in flight, and the tick number.

use serde::{Deserialize, Serialize};

use crate::msg::EntityId;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One member of the moving room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovingMember {
    pub entity: EntityId,
    pub player: String,
    pub name: String,
    pub x: f32,
    pub y: f32,
    /// Its direction of movement (`[dx, dy]`): it keeps walking.
    pub dir: [f32; 2],
    /// The last input applied.
    pub seq: u32,
    /// Its socket was gone already: the seat waits out the resume grace.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
    /// Inputs that reached the source during the pause, not applied yet
    /// (`[seq, dx, dy]`, in arrival order): the target applies them first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<(u32, f32, f32)>,
}

/// An item lying on the map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovingItem {
    pub id: u64,
    pub kind: String,
    pub count: i64,
    pub x: f32,
    pub y: f32,
}

/// A pick-up between "off the ground" and "credited": the target drives
/// its credit to the end (idempotent by `op_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MovingPickup {
    pub op_id: String,
    pub player: String,
    pub item: MovingItem,
}

/// The room's ground: its document's state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct MovingGround {
    /// The document was loaded; when not, the target loads it.
    pub loaded: bool,
    pub rev: u64,
    pub next_item: u64,
    /// The room document's epoch string (pick-up op ids carry it).
    pub epoch: String,
    pub owner_epoch: u64,
    pub items: Vec<MovingItem>,
    pub pending: Vec<MovingPickup>,
}

/// A room as it stood when it was paused.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RoomState {
    pub tick: u64,
    /// Microseconds from the offer until the room's next tick was due on
    /// the source: the target's first tick comes then (at least a few
    /// milliseconds on, so its members are back by then), keeping the
    /// ticks' pace across the move. Absent (0): one period after start.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub next_tick_us: u64,
    pub next_entity: EntityId,
    pub members: Vec<MovingMember>,
    pub ground: MovingGround,
}

/// The source offers the room: the target is to take its lease from
/// `from` at `epoch` and run it from `state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Offer {
    /// The room (`lobby`, `lobby#2`).
    pub room: String,
    /// The source shard.
    pub from: String,
    /// The source's lease epoch: the compare in compare-and-set.
    pub epoch: u64,
    pub state: RoomState,
}

/// The target runs the room under lease epoch `epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub room: String,
    pub epoch: u64,
}

/// Why a target refuses a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrateRefusal {
    /// The target is draining or shutting down.
    Draining,
    /// The target has no such map.
    UnknownMap,
    /// The lease was not the source's at that epoch any more.
    LeaseMoved,
    /// The directory did not answer.
    Directory,
    /// The target runs that room already.
    Busy,
}

/// The target does not take the room; it resumes on the source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub room: String,
    pub code: MigrateRefusal,
    pub reason: String,
}

/// What travels on `/tessera/migrate/1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrateMsg {
    Offer(Offer),
    Accepted(Accepted),
    Refused(Refused),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{decode_frame, encode_frame};

    #[test]
    fn an_offer_round_trips_and_leaves_a_false_held_out() {
        let offer = MigrateMsg::Offer(Offer {
            room: "lobby#2".into(),
            from: "a".into(),
            epoch: 4,
            state: RoomState {
                tick: 9,
                next_tick_us: 0,
                next_entity: 3,
                members: vec![MovingMember {
                    entity: 1,
                    player: "p".into(),
                    name: "ada".into(),
                    x: 1.0,
                    y: 2.0,
                    dir: [1.0, 0.0],
                    seq: 5,
                    held: false,
                    pending: vec![],
                }],
                ground: MovingGround::default(),
            },
        });
        let frame = encode_frame(&offer, 1 << 20).unwrap();
        assert!(!frame.windows(4).any(|w| w == b"held"));
        let (back, _) = decode_frame::<MigrateMsg>(&frame, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(back, offer);
    }
}
