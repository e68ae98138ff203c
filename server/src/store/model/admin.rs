//! The operators' documents: `bans` (one per banned player, `_id` the
//! player id) and `audit` (one per admin action, `_id` sortable by time:
//! `<at_ms, 13 digits>:<shard>:<seq, 12 digits>`). Both are the admin
//! API's own types ([`protocol::admin::Ban`], [`protocol::admin::Event`])
//! with `_id` and a schema version `v` added.

use mongodb::bson::{self, Bson, Document};
use protocol::admin::{Ban, Event};

use super::DecodeError;

pub const BANS: &str = "bans";
pub const AUDIT: &str = "audit";

/// Current schema of `bans` and `audit` documents.
pub const ADMIN_SCHEMA: i32 = 1;

/// The `_id` of an audit row: ordered by time, unique per shard and event.
pub fn audit_id(event: &Event) -> String {
    format!("{:013}:{}:{:012}", event.at_ms, event.shard, event.seq)
}

fn with_id(id: String, value: &impl serde::Serialize) -> Document {
    // Both types are plain structs of strings and integers below 2^63
    // (milliseconds since 1970): they always encode.
    let mut doc = bson::to_document(value).expect("admin documents encode as BSON");
    doc.insert("_id", Bson::String(id));
    doc.insert("v", ADMIN_SCHEMA);
    doc
}

pub fn ban_document(ban: &Ban) -> Document {
    with_id(ban.player.clone(), ban)
}

pub fn audit_document(event: &Event) -> Document {
    with_id(audit_id(event), event)
}

fn decode<T: serde::de::DeserializeOwned>(
    collection: &'static str,
    mut doc: Document,
) -> Result<T, DecodeError> {
    let id = match doc.remove("_id") {
        Some(Bson::String(id)) => id,
        other => format!("{other:?}"),
    };
    let error = |reason: String| DecodeError {
        collection,
        id: id.clone(),
        reason,
    };
    match doc.remove("v") {
        None => {}
        Some(v) if v.as_i32() == Some(ADMIN_SCHEMA) => {}
        Some(v) => return Err(error(format!("schema version {v} is not {ADMIN_SCHEMA}"))),
    }
    bson::from_document(doc).map_err(|e| error(e.to_string()))
}

pub fn decode_ban(doc: Document) -> Result<Ban, DecodeError> {
    decode(BANS, doc)
}

pub fn decode_audit(doc: Document) -> Result<Event, DecodeError> {
    decode(AUDIT, doc)
}
