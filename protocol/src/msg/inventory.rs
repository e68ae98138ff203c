//! Durable state: a player's inventory and the `give` action (since 1.1).
//!
//! `give` is write-through: the server answers `done` only after the store
//! acknowledged the change, and an error (nothing changed) otherwise.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::EntityId;

/// Currency and item counts.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Inventory {
    pub currency: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub items: BTreeMap<String, i64>,
}

/// Give currency and items to the player of entity `to`, in the same map:
/// both inventories change, or neither.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Give {
    /// The client's request number, echoed in `done` or the error. Retrying
    /// with the same `req` in the same session never gives twice.
    pub req: u32,
    pub to: EntityId,
    #[serde(default)]
    pub currency: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub items: BTreeMap<String, i64>,
}

/// A durable action is in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    pub req: u32,
    /// The player's inventory after it.
    pub inventory: Inventory,
}
