//! Durable operations: what they are ([`DurableOp`]: an [`Adjust`] or a
//! [`Trade`]), how they are checked, how the store applies them to a
//! profile, and why one is refused ([`Rejection`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Inventory, PlayerProfile};

/// A durable write. The caller is answered only once the store has
/// acknowledged it (or with an error, and then nothing changed, except for
/// [`crate::store::DurableError::InDoubt`]).
#[derive(Debug, Clone, PartialEq)]
pub enum DurableOp {
    Adjust(Adjust),
    Trade(Trade),
}

/// Change one player's durable state: add `currency` and `items` (negative
/// takes away; refused if anything would go below 0) and set `progress`
/// counters. Idempotent by `op_id`: the op ledger remembers every applied
/// id (for `store.ledger_retention_ms`), so a retried op is applied once
/// however many ops came between; an id reused for a different op is
/// refused ([`Rejection::OpIdReused`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Adjust {
    pub op_id: String,
    pub player: String,
    pub currency: i64,
    pub items: BTreeMap<String, i64>,
    pub progress: BTreeMap<String, i64>,
    /// The room that causes this op (a pick-up) and the owner epoch it
    /// runs under: refused ([`Rejection::Fenced`]) when the room's stored
    /// document has a newer owner epoch. Not part of the op's identity: a
    /// new owner re-driving a pending pick-up replays the same op.
    pub fence: Option<RoomFence>,
}

/// Which room a durable op comes from, and at which owner epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomFence {
    /// The room document's key ([`super::RoomState::map`]).
    pub room: String,
    pub owner_epoch: u64,
}

/// A write refused by the epoch fence: the store holds `stored` for
/// `room`, the writer had `ours` (older).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("room {room:?} is owned at epoch {stored} now; this write is from epoch {ours}")]
pub struct Fenced {
    pub room: String,
    pub stored: u64,
    pub ours: u64,
}

/// What one side of a trade hands over. Amounts are 0 or more.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Bundle {
    pub currency: i64,
    #[serde(default)]
    pub items: BTreeMap<String, i64>,
}

/// `a` gives `a_gives` to `b` and `b` gives `b_gives` to `a`: both or
/// neither. Idempotent by `id`: a retried trade with the same id has the
/// outcome of the first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trade {
    pub id: String,
    pub a: String,
    pub b: String,
    pub a_gives: Bundle,
    pub b_gives: Bundle,
}

/// The store's answer to a durable op: each affected player's inventory
/// after it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DurableAck {
    pub inventories: Vec<(String, Inventory)>,
    /// The op had been applied before (a retry with the same id); nothing
    /// was applied again.
    pub replayed: bool,
}

impl DurableAck {
    pub fn inventory(&self, player: &str) -> Option<&Inventory> {
        self.inventories
            .iter()
            .find(|(p, _)| p == player)
            .map(|(_, inv)| inv)
    }
}

/// Why a durable op was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no player {0:?}")]
    NoSuchPlayer(String),
    #[error("player {player:?} does not have enough {what}")]
    Insufficient { player: String, what: String },
    #[error("trade id {0:?} was already used for a different trade")]
    TradeIdReused(String),
    #[error("op id {0:?} was already used for a different operation")]
    OpIdReused(String),
    /// A retried trade that had been refused the first time.
    #[error("trade was cancelled: {0}")]
    TradeCancelled(String),
    /// The room that caused the op has a newer owner (epoch fence).
    #[error("fenced: {0}")]
    Fenced(Fenced),
}

/// Item kinds and progress keys become Mongo field names, so they are kept
/// to a safe alphabet.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 256
}

impl Adjust {
    pub fn validate(&self) -> Result<(), String> {
        if !valid_id(&self.op_id) {
            return Err("op_id must be 1-256 bytes".into());
        }
        if !valid_id(&self.player) {
            return Err("player must be 1-256 bytes".into());
        }
        for key in self.items.keys().chain(self.progress.keys()) {
            if !valid_key(key) {
                return Err(format!(
                    "{key:?} must be 1-64 characters of a-z, A-Z, 0-9, _ or -"
                ));
            }
        }
        Ok(())
    }
}

impl Bundle {
    pub fn validate(&self) -> Result<(), String> {
        if self.currency < 0 {
            return Err("a bundle's currency must be 0 or more".into());
        }
        for (key, n) in &self.items {
            if !valid_key(key) {
                return Err(format!(
                    "{key:?} must be 1-64 characters of a-z, A-Z, 0-9, _ or -"
                ));
            }
            if *n <= 0 {
                return Err(format!("item {key:?}: a bundle's counts must be positive"));
            }
        }
        Ok(())
    }
}

impl Trade {
    pub fn validate(&self) -> Result<(), String> {
        if !valid_id(&self.id) || !valid_id(&self.a) || !valid_id(&self.b) {
            return Err("trade id and players must be 1-256 bytes".into());
        }
        if self.a == self.b {
            return Err("a player cannot trade with themselves".into());
        }
        self.a_gives.validate()?;
        self.b_gives.validate()
    }
}

impl DurableOp {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            DurableOp::Adjust(a) => a.validate(),
            DurableOp::Trade(t) => t.validate(),
        }
    }
}

/// Apply an adjustment to a profile in memory, as the store does: checks
/// that nothing goes below zero. Whether the op was applied before is the
/// ledger's business (see [`OpRecord`](super::OpRecord)), not this function's.
pub fn apply_adjust(p: &mut PlayerProfile, op: &Adjust) -> Result<(), Rejection> {
    let mut inv = p.inventory.clone();
    inv.currency = inv
        .currency
        .checked_add(op.currency)
        .filter(|c| *c >= 0)
        .ok_or_else(|| Rejection::Insufficient {
            player: p.id.clone(),
            what: "currency".into(),
        })?;
    for (item, delta) in &op.items {
        let n = inv.items.entry(item.clone()).or_insert(0);
        *n = n
            .checked_add(*delta)
            .filter(|n| *n >= 0)
            .ok_or_else(|| Rejection::Insufficient {
                player: p.id.clone(),
                what: item.clone(),
            })?;
    }
    inv.normalize();
    p.inventory = inv;
    for (k, v) in &op.progress {
        p.progress.insert(k.clone(), *v);
    }
    Ok(())
}

/// Take `bundle` out of `p`'s inventory, refusing if it does not hold it.
pub fn debit(p: &mut PlayerProfile, bundle: &Bundle) -> Result<(), Rejection> {
    let insufficient = |what: &str| Rejection::Insufficient {
        player: p.id.clone(),
        what: what.to_string(),
    };
    if p.inventory.currency < bundle.currency {
        return Err(insufficient("currency"));
    }
    for (item, n) in &bundle.items {
        if p.inventory.items.get(item).copied().unwrap_or(0) < *n {
            return Err(insufficient(item));
        }
    }
    p.inventory.currency -= bundle.currency;
    for (item, n) in &bundle.items {
        if let Some(have) = p.inventory.items.get_mut(item) {
            *have -= n;
        }
    }
    p.inventory.normalize();
    Ok(())
}

/// Add `bundle` to `inv`.
pub fn credit(inv: &mut Inventory, bundle: &Bundle) {
    inv.currency = inv.currency.saturating_add(bundle.currency);
    for (item, n) in &bundle.items {
        let have = inv.items.entry(item.clone()).or_insert(0);
        *have = have.saturating_add(*n);
    }
    inv.normalize();
}
