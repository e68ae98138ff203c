//! Bans and the audit trail in redb: one table each, BSON values, like
//! every other collection.

use protocol::admin::{Ban, Event};
use redb::{ReadableTable, TableDefinition};

use super::{backend, parse, put, Db};
use crate::store::model::{
    audit_document, audit_id, ban_document, decode_audit, decode_ban, AUDIT, BANS,
};
use crate::store::{report_bad, StoreError};

pub(super) const BANS_T: TableDefinition<&str, &[u8]> = TableDefinition::new(BANS);
pub(super) const AUDIT_T: TableDefinition<&str, &[u8]> = TableDefinition::new(AUDIT);

pub(super) fn put_ban(db: &Db, ban: Ban) -> Result<(), StoreError> {
    let txn = db.write()?;
    {
        let mut bans = txn.open_table(BANS_T).map_err(backend)?;
        put(&mut bans, &ban.player, &ban_document(&ban))?;
    }
    txn.commit().map_err(backend)
}

pub(super) fn delete_ban(db: &Db, player: String) -> Result<bool, StoreError> {
    let txn = db.write()?;
    let existed = {
        let mut bans = txn.open_table(BANS_T).map_err(backend)?;
        let removed = bans.remove(player.as_str()).map_err(backend)?;
        removed.is_some()
    };
    txn.commit().map_err(backend)?;
    Ok(existed)
}

pub(super) fn load_bans(db: &Db) -> Result<Vec<Ban>, StoreError> {
    let txn = db.read()?;
    let bans = txn.open_table(BANS_T).map_err(backend)?;
    let mut out = Vec::new();
    for entry in bans.iter().map_err(backend)? {
        let (key, value) = entry.map_err(backend)?;
        match parse(BANS, key.value(), value.value()).and_then(decode_ban) {
            Ok(ban) => out.push(ban),
            Err(e) => report_bad(&e),
        }
    }
    Ok(out)
}

pub(super) fn append_audit(db: &Db, event: Event) -> Result<(), StoreError> {
    let txn = db.write()?;
    {
        let mut audit = txn.open_table(AUDIT_T).map_err(backend)?;
        put(&mut audit, &audit_id(&event), &audit_document(&event))?;
    }
    txn.commit().map_err(backend)
}

pub(super) fn load_audit(db: &Db, limit: usize) -> Result<Vec<Event>, StoreError> {
    let txn = db.read()?;
    let audit = txn.open_table(AUDIT_T).map_err(backend)?;
    let mut out = Vec::new();
    // Keys sort by time: read the newest `limit` backwards.
    for entry in audit.iter().map_err(backend)?.rev().take(limit) {
        let (key, value) = entry.map_err(backend)?;
        match parse(AUDIT, key.value(), value.value()).and_then(decode_audit) {
            Ok(event) => out.push(event),
            Err(e) => report_bad(&e),
        }
    }
    out.reverse();
    Ok(out)
}
