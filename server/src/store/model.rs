//! What is stored: documents, their schema versions and migrations, and the
//! operations that change durable state.
//!
//! Three collections (Mongo) or tables (redb), keyed by `_id`:
//!
//! | collection | `_id` | written by |
//! |---|---|---|
//! | `players` | player id | `state` + `state_rev`: volatile writes, each written only if its `state_rev` is newer than the stored one; `inventory`, `progress`, `pending_ops`, `pending_trades`: durable ops only |
//! | `rooms` | map name | whole documents, volatile (write-behind) or write-through, each written only if its `rev` is newer than the stored one |
//! | `trades` | trade id | the trade ledger (durable) |
//! | `ops` | op id | the op ledger: every applied [`Adjust`], so a re-driven one is recognised however many ops came after it |
//!
//! Both ledgers keep a finished row for `store.ledger_retention_ms` (7 days
//! by default), then prune it: an op must not be re-driven later than that.
//!
//! A player document is split by write class on purpose: a volatile flush
//! sets `state` and nothing else, so a late position update can never undo
//! a currency change, and durable ops are *deltas with conditions* applied
//! by the store (not snapshots of a session's memory), so two writers
//! cannot lose each other's updates.
//!
//! Every document carries `v`, its schema version. Reading goes through
//! [`decode_player`] / [`decode_room`] / [`decode_trade`]: the raw document
//! is migrated step by step up to the current version (the hook is
//! [`migrate_player`] and friends; a document without `v` is version 1),
//! then typed. A document from a newer server (`v` above ours) or one that
//! does not fit the model is a [`DecodeError`]: reported with its id and
//! skipped, never fatal, never overwritten.

use std::collections::BTreeMap;

use mongodb::bson::{self, doc, Bson, Document};
use serde::{Deserialize, Serialize};

/// Current schema of `players` documents.
pub const PLAYER_SCHEMA: i32 = 2;
/// Current schema of `rooms` documents.
pub const ROOM_SCHEMA: i32 = 2;
/// Current schema of `trades` documents.
pub const TRADE_SCHEMA: i32 = 1;

/// Current schema of `ops` documents.
pub const OP_SCHEMA: i32 = 1;

pub const PLAYERS: &str = "players";
pub const ROOMS: &str = "rooms";
pub const TRADES: &str = "trades";
pub const OPS: &str = "ops";

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
    fn normalize(&mut self) {
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

/// A durable write. The caller is answered only once the store has
/// acknowledged it (or with an error, and then nothing changed, except for
/// [`super::DurableError::InDoubt`]).
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

/// A document that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{collection}/{id}: {reason}")]
pub struct DecodeError {
    pub collection: &'static str,
    pub id: String,
    pub reason: String,
}

fn id_of(doc: &Document) -> String {
    match doc.get("_id") {
        Some(Bson::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => "<no _id>".into(),
    }
}

fn version_of(doc: &Document) -> Result<i32, String> {
    match doc.get("v") {
        None => Ok(1),
        Some(Bson::Int32(v)) => Ok(*v),
        Some(Bson::Int64(v)) => i32::try_from(*v).map_err(|_| format!("schema version {v}")),
        Some(other) => Err(format!("schema version is not a number: {other}")),
    }
}

/// Migrate a raw document of `collection` up to `current` with `step`
/// (which upgrades from the given version by one), then type it.
fn decode<T: serde::de::DeserializeOwned>(
    collection: &'static str,
    mut doc: Document,
    current: i32,
    step: fn(&mut Document, i32) -> Result<(), String>,
) -> Result<(T, bool), DecodeError> {
    let id = id_of(&doc);
    let err = |reason: String| DecodeError {
        collection,
        id: id.clone(),
        reason,
    };
    let mut version = version_of(&doc).map_err(err)?;
    if version > current {
        return Err(err(format!(
            "schema version {version} is newer than this server's {current}"
        )));
    }
    if version < 1 {
        return Err(err(format!("schema version {version}")));
    }
    let migrated = version < current;
    while version < current {
        step(&mut doc, version).map_err(|e| err(format!("migrating from v{version}: {e}")))?;
        version += 1;
        doc.insert("v", version);
    }
    let value = bson::from_document(doc).map_err(|e| err(e.to_string()))?;
    Ok((value, migrated))
}

/// Read a `players` document, migrating it if it is old. The flag says it
/// was migrated (so the caller may write it back).
pub fn decode_player(doc: Document) -> Result<(PlayerProfile, bool), DecodeError> {
    let (mut p, migrated): (PlayerProfile, bool) =
        decode(PLAYERS, doc, PLAYER_SCHEMA, migrate_player)?;
    p.inventory.normalize();
    Ok((p, migrated))
}

/// Read only the `inventory` of a `players` document (what a durable op
/// returns), so that a damaged field elsewhere does not turn an applied op
/// into an error.
pub fn decode_inventory(mut doc: Document) -> Result<Inventory, DecodeError> {
    let id = id_of(&doc);
    let err = |reason: String| DecodeError {
        collection: PLAYERS,
        id: id.clone(),
        reason,
    };
    let inventory = match doc.remove("inventory") {
        Some(Bson::Document(inv)) => inv,
        Some(other) => return Err(err(format!("inventory is not a document: {other}"))),
        None => return Err(err("no inventory".into())),
    };
    let mut inv: Inventory =
        bson::from_document(inventory).map_err(|e| err(format!("inventory: {e}")))?;
    inv.normalize();
    Ok(inv)
}

pub fn decode_room(doc: Document) -> Result<(RoomState, bool), DecodeError> {
    decode(ROOMS, doc, ROOM_SCHEMA, migrate_room)
}

pub fn decode_trade(doc: Document) -> Result<TradeRecord, DecodeError> {
    decode(TRADES, doc, TRADE_SCHEMA, migrate_trade).map(|(t, _)| t)
}

pub fn decode_op(doc: Document) -> Result<OpRecord, DecodeError> {
    decode(OPS, doc, OP_SCHEMA, migrate_op).map(|(t, _)| t)
}

/// The migration hook for `players`: upgrade `doc` from `from` to
/// `from + 1`.
///
/// v1 (the prototype's format): `gold` and a list of item names at the top
/// level, position as `map` + `pos: {x, y}`. v2 moves them into
/// `inventory` (items counted) and `state`.
pub fn migrate_player(doc: &mut Document, from: i32) -> Result<(), String> {
    match from {
        1 => {
            let gold = match doc.remove("gold") {
                None => 0,
                Some(Bson::Int32(n)) => i64::from(n),
                Some(Bson::Int64(n)) => n,
                Some(other) => return Err(format!("gold is not an integer: {other}")),
            };
            let mut items = Document::new();
            match doc.remove("items") {
                None => {}
                Some(Bson::Array(list)) => {
                    for item in list {
                        let Bson::String(name) = item else {
                            return Err(format!("items holds a non-string: {item}"));
                        };
                        let n = match items.get(&name) {
                            Some(Bson::Int64(n)) => *n,
                            _ => 0,
                        };
                        items.insert(name, n + 1);
                    }
                }
                Some(other) => return Err(format!("items is not a list: {other}")),
            }
            if !doc.contains_key("inventory") {
                doc.insert("inventory", doc! { "currency": gold, "items": items });
            }
            let pos = doc.remove("pos");
            let map = doc.remove("map");
            if !doc.contains_key("state") {
                let mut state = bson::to_document(&PlayerState::default())
                    .map_err(|e| format!("default state: {e}"))?;
                if let Some(Bson::String(map)) = map {
                    state.insert("map", map);
                }
                if let Some(Bson::Document(pos)) = pos {
                    for axis in ["x", "y"] {
                        if let Some(v) = pos.get(axis) {
                            let v = match v {
                                Bson::Double(v) => *v,
                                Bson::Int32(v) => f64::from(*v),
                                Bson::Int64(v) => *v as f64,
                                other => {
                                    return Err(format!("pos.{axis} is not a number: {other}"))
                                }
                            };
                            state.insert(axis, v);
                        }
                    }
                }
                doc.insert("state", state);
            }
            if !doc.contains_key("name") {
                doc.insert("name", "");
            }
            Ok(())
        }
        other => Err(format!("no migration from v{other}")),
    }
}

/// The migration hook for `rooms`.
///
/// v1 (before any room used it): `items` with string ids and nothing
/// else. v2 numbers the items (a numeric string keeps its number, others
/// get fresh ones after the largest), and adds `rev`, `next_item` and
/// `pending`.
pub fn migrate_room(doc: &mut Document, from: i32) -> Result<(), String> {
    match from {
        1 => {
            let items = match doc.remove("items") {
                None => Vec::new(),
                Some(Bson::Array(items)) => items,
                Some(other) => return Err(format!("items is not a list: {other}")),
            };
            let mut numbered = Vec::with_capacity(items.len());
            let mut unnumbered = Vec::new();
            for item in items {
                let Bson::Document(mut item) = item else {
                    return Err(format!("items holds a non-document: {item}"));
                };
                let id = match item.get("id") {
                    Some(Bson::String(s)) => {
                        s.parse::<u64>().ok().filter(|n| *n <= i64::MAX as u64)
                    }
                    Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
                    Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
                    _ => None,
                };
                match id {
                    Some(id) => {
                        item.insert("id", id as i64);
                        numbered.push((id, item));
                    }
                    None => unnumbered.push(item),
                }
            }
            let mut next = numbered.iter().map(|(id, _)| id + 1).max().unwrap_or(1);
            let mut out: Vec<Bson> = numbered
                .into_iter()
                .map(|(_, d)| Bson::Document(d))
                .collect();
            for mut item in unnumbered {
                item.insert("id", next as i64);
                next += 1;
                out.push(Bson::Document(item));
            }
            doc.insert("items", out);
            doc.insert("rev", 0_i64);
            doc.insert("next_item", next as i64);
            doc.insert("pending", Bson::Array(Vec::new()));
            Ok(())
        }
        other => Err(format!("no migration from v{other}")),
    }
}

/// The migration hook for `trades` (only v1 exists so far).
pub fn migrate_trade(_doc: &mut Document, from: i32) -> Result<(), String> {
    Err(format!("no migration from v{from}"))
}

/// The migration hook for `ops` (only v1 exists so far).
pub fn migrate_op(_doc: &mut Document, from: i32) -> Result<(), String> {
    Err(format!("no migration from v{from}"))
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
/// ledger's business (see [`OpRecord`]), not this function's.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_round_trip_through_bson() {
        let mut p = PlayerProfile::new("p1", "ada");
        p.state.map = "lobby".into();
        p.state.x = 12.5;
        p.inventory.currency = 7;
        p.inventory.items.insert("sword".into(), 2);
        p.progress.insert("quest-1".into(), 3);
        let (back, migrated) = decode_player(to_document(&p)).unwrap();
        assert_eq!(back, p);
        assert!(!migrated);
    }

    #[test]
    fn version_1_players_migrate() {
        let v1 = doc! {
            "_id": "old", "name": "bob", "gold": 42_i32,
            "items": ["potion", "potion", "sword"],
            "map": "arena", "pos": { "x": 3.0, "y": 4_i32 },
        };
        let (p, migrated) = decode_player(v1).unwrap();
        assert!(migrated);
        assert_eq!(p.v, PLAYER_SCHEMA);
        assert_eq!(p.inventory.currency, 42);
        assert_eq!(p.inventory.items["potion"], 2);
        assert_eq!(p.inventory.items["sword"], 1);
        assert_eq!(p.state.map, "arena");
        assert_eq!((p.state.x, p.state.y), (3.0, 4.0));
    }

    #[test]
    fn version_1_rooms_migrate() {
        let v1 = doc! {
            "_id": "arena", "v": 1,
            "items": [
                { "id": "7", "kind": "gem", "count": 1_i64, "x": 1.0, "y": 2.0 },
                { "id": "old-sword", "kind": "sword", "count": 1_i64, "x": 3.0, "y": 4.0 },
            ],
        };
        let (room, migrated) = decode_room(v1).unwrap();
        assert!(migrated);
        assert_eq!(room.v, ROOM_SCHEMA);
        assert_eq!(room.rev, 0);
        let ids: Vec<u64> = room.items.iter().map(|i| i.id).collect();
        assert_eq!(ids, vec![7, 8]);
        assert_eq!(room.next_item, 9);
        assert!(room.pending.is_empty());
        let (back, migrated) = decode_room(to_document(&room)).unwrap();
        assert_eq!(back, room);
        assert!(!migrated);
    }

    #[test]
    fn bad_and_future_documents_name_their_id() {
        let err = decode_player(doc! { "_id": "x", "v": 99 }).unwrap_err();
        assert_eq!(err.id, "x");
        assert!(err.reason.contains("newer"), "{err}");
        let err = decode_player(doc! { "_id": "y", "v": 2, "name": 5 }).unwrap_err();
        assert_eq!(err.id, "y");
        let err = decode_player(doc! { "_id": "z", "gold": "lots" }).unwrap_err();
        assert!(err.reason.contains("gold"), "{err}");
    }

    #[test]
    fn adjust_refuses_to_go_negative() {
        let mut p = PlayerProfile::new("p", "");
        let op = |id: &str, c: i64| Adjust {
            op_id: id.into(),
            player: "p".into(),
            currency: c,
            ..Adjust::default()
        };
        assert_eq!(apply_adjust(&mut p, &op("a", 10)), Ok(()));
        assert!(apply_adjust(&mut p, &op("b", -11)).is_err());
        assert_eq!(p.inventory.currency, 10);
        let record = OpRecord::new(&op("a", 10), OpState::Done, 0);
        assert!(record.matches(&op("a", 10)));
        assert!(!record.matches(&op("a", 11)));
        let (back, _) = decode(OPS, to_document(&record), OP_SCHEMA, migrate_op).unwrap();
        assert_eq!(record, back);
    }

    #[test]
    fn keys_are_checked() {
        assert!(valid_key("sword_2-x"));
        assert!(!valid_key("a.b"));
        assert!(!valid_key("$set"));
        assert!(!valid_key(""));
        let t = Trade {
            id: "t".into(),
            a: "p".into(),
            b: "p".into(),
            a_gives: Bundle::default(),
            b_gives: Bundle::default(),
        };
        assert!(t.validate().is_err());
    }
}
