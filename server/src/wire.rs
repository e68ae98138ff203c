//! Conversions between the store's types and the protocol's, in one place,
//! so that neither the session nor the room imports the other for them.

use protocol::msg::Inventory;

/// A stored inventory as the client sees it.
pub fn inventory(inventory: &crate::store::Inventory) -> Inventory {
    Inventory {
        currency: inventory.currency,
        items: inventory.items.clone(),
    }
}

/// An item lying on the ground as the client sees it.
pub fn ground_item(item: &crate::store::GroundItem) -> protocol::msg::GroundItem {
    protocol::msg::GroundItem {
        id: item.id,
        kind: item.kind.clone(),
        count: item.count,
        x: item.x,
        y: item.y,
    }
}
