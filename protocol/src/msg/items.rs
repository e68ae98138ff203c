//! Items lying on a map and the durable `pick_up` action (since 1.2).
//!
//! Ground items are announced in `joined.items` and, when the ground
//! changes, in an `items` message to every member of the room. `pick_up` is
//! write-through like `give`: the answer is `done` only once the store has
//! the item out of the map and in the player's inventory.

use serde::{Deserialize, Serialize};

/// An item's id within its map. Never reused within a map.
pub type ItemId = u64;

/// An item lying on the map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundItem {
    pub id: ItemId,
    /// Item kind, as in [`super::Inventory::items`].
    pub kind: String,
    pub count: i64,
    pub x: f32,
    pub y: f32,
}

/// The ground changed: items appeared (spawned, or put back after a failed
/// pick-up) or went (picked up).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Items {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<GroundItem>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<ItemId>,
}

/// Pick up the item `item`, which must lie within the server's pick-up
/// radius of the player's entity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PickUp {
    /// The client's request number, echoed in `done` or the error.
    pub req: u32,
    pub item: ItemId,
}
