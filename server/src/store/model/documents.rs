//! The stored documents: players (profile, volatile state, inventory),
//! rooms (ground items, pick-ups in flight), the volatile writes that
//! coalesce on them, and the two ledgers (trades, ops).

use std::collections::BTreeMap;

use mongodb::bson::{self, doc, Bson, Document};
use serde::{Deserialize, Serialize};

use super::{
    Adjust, Bundle, Trade, OP_SCHEMA, PLAYERS, PLAYER_SCHEMA, ROOMS, ROOM_SCHEMA, TRADE_SCHEMA,
};

/// A player's profile: identity, volatile state and durable state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerProfile {
    #[serde(rename = "_id")]
    pub id: String,
    /// Schema version.
    pub v: i32,
    pub name: String,
    /// Volatile: where the player is and how they are. Written behind.
    pub state: PlayerState,
    /// The revision of `state`: a volatile write with a revision not above
    /// it is skipped (stale), so a late write never replaces a newer one.
    #[serde(default)]
    pub state_rev: u64,
    /// Durable: written through.
    pub inventory: Inventory,
    /// Durable: quest steps, levels, unlocks; any named counter.
    #[serde(default)]
    pub progress: BTreeMap<String, i64>,
    /// Legacy (before the op ledger): ids of the last 64 adjustments
    /// applied. Still honoured as "applied", never written any more.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recent_ops: Vec<String>,
    /// Adjustments recently applied to this document (Mongo's two-step
    /// ops, kept until their ledger row has been done for the recovery
    /// age; always empty in the embedded store).
    #[serde(default)]
    pub pending_ops: Vec<String>,
    /// Trades that have debited this player and not yet finished (Mongo's
    /// two-phase trades; always empty in the embedded store).
    #[serde(default)]
    pub pending_trades: Vec<String>,
}

impl PlayerProfile {
    /// A new player: empty inventory, at no map yet.
    pub fn new(id: &str, name: &str) -> PlayerProfile {
        PlayerProfile {
            id: id.to_string(),
            v: PLAYER_SCHEMA,
            name: name.to_string(),
            state: PlayerState::default(),
            state_rev: 0,
            inventory: Inventory::default(),
            progress: BTreeMap::new(),
            recent_ops: Vec::new(),
            pending_ops: Vec::new(),
            pending_trades: Vec::new(),
        }
    }
}

/// The volatile part of a player: last map, position, facing, stats that
/// regenerate. Written behind, coalesced per player.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PlayerState {
    /// Last map, empty before the first join.
    pub map: String,
    pub x: f32,
    pub y: f32,
    /// Radians.
    pub facing: f32,
    pub stats: Stats,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub hp: i32,
    pub max_hp: i32,
    pub energy: i32,
    pub max_energy: i32,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            hp: 100,
            max_hp: 100,
            energy: 100,
            max_energy: 100,
        }
    }
}

/// Durable possessions. Item counts are never negative; an item whose count
/// reaches 0 is not listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub currency: i64,
    #[serde(default)]
    pub items: BTreeMap<String, i64>,
}

impl Inventory {
    pub(super) fn normalize(&mut self) {
        self.items.retain(|_, n| *n != 0);
    }
}

/// Room state worth keeping across restarts: the items lying on the map
/// and the pick-ups in flight. Written as a whole document, behind or
/// through, and only over an older `rev` (so a stale write-behind flushed
/// after a newer write-through never brings back a picked item).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomState {
    /// The map name.
    #[serde(rename = "_id")]
    pub map: String,
    pub v: i32,
    /// Bumped by the room on every change; a write with a `rev` not above
    /// the stored one is skipped.
    #[serde(default)]
    pub rev: u64,
    /// The id the next item will get: ids are never reused within a map.
    #[serde(default = "first_item")]
    pub next_item: u64,
    /// A nonce drawn when the document was created (or rebuilt after it was
    /// lost), part of every pick-up op id: item ids start again at 1 in a
    /// rebuilt document, and must not meet their namesakes in the op
    /// ledger. Empty in documents from before it (their op ids have none).
    #[serde(default)]
    pub epoch: String,
    /// The fencing epoch of the shard that owns the room (its directory
    /// lease's epoch); 0: a single shard, unfenced. The store refuses a
    /// write of this document, and a durable op the room causes, whose
    /// owner epoch is older than the stored one: two shards can never
    /// both write a room. (Not [`RoomState::epoch`], the pick-up nonce.)
    #[serde(default)]
    pub owner_epoch: u64,
    #[serde(default)]
    pub items: Vec<GroundItem>,
    /// Items taken off the ground whose credit to the picker is not
    /// confirmed yet; re-driven (same op id) when the room loads.
    #[serde(default)]
    pub pending: Vec<PendingPickup>,
}

fn first_item() -> u64 {
    1
}

impl RoomState {
    pub fn new(map: &str) -> RoomState {
        RoomState {
            map: map.to_string(),
            v: ROOM_SCHEMA,
            rev: 0,
            next_item: first_item(),
            epoch: String::new(),
            owner_epoch: 0,
            items: Vec::new(),
            pending: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundItem {
    /// Unique within the map, never reused.
    pub id: u64,
    /// Item kind, as in [`Inventory::items`].
    pub kind: String,
    pub count: i64,
    pub x: f32,
    pub y: f32,
}

/// A pick-up between its two writes: the item is off the ground (the room
/// document says so) and the player's credit, an idempotent [`Adjust`]
/// with `op_id`, is not confirmed yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingPickup {
    /// `pickup:<map>:<room epoch>:<item id>` (`pickup:<map>:<item id>` in
    /// documents from before epochs).
    pub op_id: String,
    pub player: String,
    pub item: GroundItem,
}

/// A volatile write: the latest state of one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Volatile {
    /// `rev` orders the writes of one player's state (see
    /// [`PlayerProfile::state_rev`]); the persister assigns it.
    Player {
        id: String,
        state: PlayerState,
        rev: u64,
    },
    Room(RoomState),
}

/// What volatile writes coalesce on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VolatileKey {
    Player(String),
    Room(String),
}

impl Volatile {
    /// The revision the store orders writes of this key by.
    pub fn rev(&self) -> u64 {
        match self {
            Volatile::Player { rev, .. } => *rev,
            Volatile::Room(room) => room.rev,
        }
    }

    pub fn key(&self) -> VolatileKey {
        match self {
            Volatile::Player { id, .. } => VolatileKey::Player(id.clone()),
            Volatile::Room(room) => VolatileKey::Room(room.map.clone()),
        }
    }
}

impl std::fmt::Display for VolatileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VolatileKey::Player(id) => write!(f, "{PLAYERS}/{id}"),
            VolatileKey::Room(map) => write!(f, "{ROOMS}/{map}"),
        }
    }
}

/// Where a trade stands in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TradeState {
    /// Debits in progress (Mongo only): rolled back by recovery.
    Pending,
    /// Committed; credits in progress (Mongo only): rolled forward by recovery.
    Applied,
    /// Finished: both sides hold what they traded for.
    Done,
    /// Refused or rolled back: nobody gave anything.
    Cancelled,
}

/// One row of the trade ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TradeRecord {
    #[serde(rename = "_id")]
    pub id: String,
    pub v: i32,
    pub state: TradeState,
    pub a: String,
    pub b: String,
    pub a_gives: Bundle,
    pub b_gives: Bundle,
    /// Why it was cancelled, when it was.
    #[serde(default)]
    pub reason: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl TradeRecord {
    pub fn new(trade: &Trade, now_ms: i64) -> TradeRecord {
        TradeRecord {
            id: trade.id.clone(),
            v: TRADE_SCHEMA,
            state: TradeState::Pending,
            a: trade.a.clone(),
            b: trade.b.clone(),
            a_gives: trade.a_gives.clone(),
            b_gives: trade.b_gives.clone(),
            reason: String::new(),
            created_ms: now_ms,
            updated_ms: now_ms,
        }
    }

    /// Whether this record is for `trade` (same parties and bundles).
    pub fn matches(&self, trade: &Trade) -> bool {
        self.a == trade.a
            && self.b == trade.b
            && self.a_gives == trade.a_gives
            && self.b_gives == trade.b_gives
    }
}

/// Where an op stands in the op ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    /// Being applied (Mongo only): the player document holds the id in
    /// `pending_ops` once it is applied; recovery settles the row.
    Pending,
    /// Applied to the player.
    Done,
}

/// One row of the op ledger: an [`Adjust`] and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpRecord {
    #[serde(rename = "_id")]
    pub id: String,
    pub v: i32,
    pub state: OpState,
    pub player: String,
    pub currency: i64,
    #[serde(default)]
    pub items: BTreeMap<String, i64>,
    #[serde(default)]
    pub progress: BTreeMap<String, i64>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

impl OpRecord {
    pub fn new(op: &Adjust, state: OpState, now_ms: i64) -> OpRecord {
        OpRecord {
            id: op.op_id.clone(),
            v: OP_SCHEMA,
            state,
            player: op.player.clone(),
            currency: op.currency,
            items: op.items.clone(),
            progress: op.progress.clone(),
            created_ms: now_ms,
            updated_ms: now_ms,
        }
    }

    /// Whether this record is for `op` (the same logical request): a replay
    /// is recognised only then.
    pub fn matches(&self, op: &Adjust) -> bool {
        self.player == op.player
            && self.currency == op.currency
            && self.items == op.items
            && self.progress == op.progress
    }
}

/// The fields a volatile player write creates when the profile does not
/// exist yet, so that the document is always a whole profile.
pub fn player_defaults(id: &str) -> Document {
    let mut d = bson::to_document(&PlayerProfile::new(id, ""))
        .expect("a default profile is plain data and serializes to BSON");
    d.remove("_id");
    d.remove("state");
    d.remove("state_rev");
    d
}

/// Revisions are stored as BSON's i64 (a revision past `i64::MAX` is
/// clamped; at one per microsecond that is 290,000 years away).
pub fn rev_i64(rev: u64) -> i64 {
    i64::try_from(rev).unwrap_or(i64::MAX)
}

pub fn to_document<T: Serialize>(value: &T) -> Document {
    // Every model type is plain data (strings, numbers, maps with string
    // keys), which BSON always represents.
    bson::to_document(value).expect("model types serialize to BSON")
}

pub fn to_bson<T: Serialize>(value: &T) -> Bson {
    bson::to_bson(value).expect("model types serialize to BSON")
}
