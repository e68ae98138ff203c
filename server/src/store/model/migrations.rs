//! Reading stored documents: each is migrated step by step from its
//! schema version (`v`) up to the current one, then typed; what cannot be
//! read is a [`DecodeError`] naming the document.

use mongodb::bson::{self, doc, Bson, Document};

use super::{
    Inventory, OpRecord, PlayerProfile, PlayerState, RoomState, TradeRecord, OPS, OP_SCHEMA,
    PLAYERS, PLAYER_SCHEMA, ROOMS, ROOM_SCHEMA, TRADES, TRADE_SCHEMA,
};

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
pub(super) fn decode<T: serde::de::DeserializeOwned>(
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
