//! Durable ops on redb: an adjustment or a trade is one write transaction
//! (fsync on commit) that also records its id in the op or trade ledger,
//! so a retry is recognised; finished ledger rows are pruned after the
//! retention.

use std::time::Duration;

use mongodb::bson::Bson;
use redb::ReadableTable;

use super::{backend, get, parse, put, read_player, Db, OPS_T, PLAYERS_T, ROOMS_T, TRADES_T};
use crate::store::model::{
    apply_adjust, credit, debit, decode_op, decode_trade, to_document, Adjust, DurableAck,
    OpRecord, OpState, Rejection, Trade, TradeRecord, TradeState, OPS, TRADES,
};
use crate::store::{report_bad, unix_ms, OpError, StoreError};

pub(super) fn read_op(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<OpRecord>, StoreError> {
    let Some(bytes) = get(table, id)? else {
        return Ok(None);
    };
    parse(OPS, id, &bytes)
        .and_then(decode_op)
        .map(Some)
        .map_err(|e| {
            report_bad(&e);
            StoreError::BadDocument(e)
        })
}

/// An adjustment and its ledger row, in one transaction: applied exactly
/// once for as long as the row is kept.
pub(super) fn adjust(db: &Db, op: Adjust) -> Result<DurableAck, OpError> {
    let txn = db.write()?;
    let ack = {
        let mut players = txn.open_table(PLAYERS_T).map_err(backend)?;
        let mut ops = txn.open_table(OPS_T).map_err(backend)?;
        let rooms = txn.open_table(ROOMS_T).map_err(backend)?;
        super::fence::check(&rooms, op.fence.as_ref())
            .map_err(|f| OpError::Rejected(Rejection::Fenced(f)))?;
        let seen = read_op(&ops, &op.op_id)?;
        if let Some(record) = &seen {
            if !record.matches(&op) {
                return Err(OpError::Rejected(Rejection::OpIdReused(op.op_id)));
            }
        }
        let (mut p, _) = read_player(&players, &op.player)?
            .ok_or_else(|| OpError::Rejected(Rejection::NoSuchPlayer(op.player.clone())))?;
        // The legacy window of recent ids, from before the ledger.
        let applied = seen.is_none() && !p.recent_ops.contains(&op.op_id);
        if applied {
            apply_adjust(&mut p, &op).map_err(OpError::Rejected)?;
            put(&mut players, &p.id, &to_document(&p))?;
            let record = OpRecord::new(&op, OpState::Done, unix_ms());
            put(&mut ops, &op.op_id, &to_document(&record))?;
        }
        DurableAck {
            inventories: vec![(p.id.clone(), p.inventory.clone())],
            replayed: !applied,
        }
    };
    if !ack.replayed {
        txn.commit().map_err(backend)?;
    }
    Ok(ack)
}

pub(super) fn trade(db: &Db, t: Trade) -> Result<DurableAck, OpError> {
    let txn = db.write()?;
    let outcome = {
        let mut players = txn.open_table(PLAYERS_T).map_err(backend)?;
        let mut trades = txn.open_table(TRADES_T).map_err(backend)?;
        if let Some(bytes) = get(&trades, &t.id)? {
            let record = parse(TRADES, &t.id, &bytes)
                .and_then(decode_trade)
                .map_err(|e| {
                    report_bad(&e);
                    StoreError::BadDocument(e)
                })?;
            if !record.matches(&t) {
                return Err(OpError::Rejected(Rejection::TradeIdReused(t.id)));
            }
            if record.state == TradeState::Cancelled {
                return Err(OpError::Rejected(Rejection::TradeCancelled(record.reason)));
            }
            // Done (the embedded store never leaves a trade half-done).
            let mut inventories = Vec::new();
            for id in [&t.a, &t.b] {
                if let Some((p, _)) = read_player(&players, id)? {
                    inventories.push((p.id, p.inventory));
                }
            }
            return Ok(DurableAck {
                inventories,
                replayed: true,
            });
        }
        let now = unix_ms();
        let mut record = TradeRecord::new(&t, now);
        let result = (|| {
            let (mut a, _) = read_player(&players, &t.a)?
                .ok_or_else(|| OpError::Rejected(Rejection::NoSuchPlayer(t.a.clone())))?;
            let (mut b, _) = read_player(&players, &t.b)?
                .ok_or_else(|| OpError::Rejected(Rejection::NoSuchPlayer(t.b.clone())))?;
            debit(&mut a, &t.a_gives).map_err(OpError::Rejected)?;
            debit(&mut b, &t.b_gives).map_err(OpError::Rejected)?;
            credit(&mut a.inventory, &t.b_gives);
            credit(&mut b.inventory, &t.a_gives);
            Ok::<_, OpError>((a, b))
        })();
        match result {
            Ok((a, b)) => {
                put(&mut players, &a.id, &to_document(&a))?;
                put(&mut players, &b.id, &to_document(&b))?;
                record.state = TradeState::Done;
                put(&mut trades, &t.id, &to_document(&record))?;
                Ok(DurableAck {
                    inventories: vec![(a.id, a.inventory), (b.id, b.inventory)],
                    replayed: false,
                })
            }
            Err(OpError::Rejected(why)) => {
                record.state = TradeState::Cancelled;
                record.reason = why.to_string();
                put(&mut trades, &t.id, &to_document(&record))?;
                Err(OpError::Rejected(why))
            }
            Err(other) => return Err(other),
        }
    };
    // A refusal is recorded too, so that a retry gets the same answer.
    txn.commit().map_err(backend)?;
    outcome
}

/// When a ledger row finished (`updated_ms` of a done or cancelled trade,
/// of a done op); none while it is in progress or unreadable.
fn finished_ms(collection: &'static str, id: &str, bytes: &[u8]) -> Option<i64> {
    let doc = parse(collection, id, bytes).ok()?;
    let finished = matches!(doc.get_str("state"), Ok("done" | "cancelled"));
    if !finished {
        return None;
    }
    match doc.get("updated_ms") {
        Some(Bson::Int64(ms)) => Some(*ms),
        Some(Bson::Int32(ms)) => Some(i64::from(*ms)),
        _ => None,
    }
}

/// Find the expired rows in a read transaction (which never blocks the
/// writer, so durable ops go on during the scan), then delete them in one
/// short write transaction, checking each again.
pub(super) fn prune(db: &Db, retention: Duration) -> Result<usize, StoreError> {
    let cutoff = unix_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let expired = |collection, bytes: &[u8], id: &str| {
        finished_ms(collection, id, bytes).is_some_and(|ms| ms < cutoff)
    };
    let mut candidates = Vec::new();
    {
        let txn = db.read()?;
        for (collection, table) in [(TRADES, TRADES_T), (OPS, OPS_T)] {
            let t = txn.open_table(table).map_err(backend)?;
            for entry in t.iter().map_err(backend)? {
                let (key, value) = entry.map_err(backend)?;
                if expired(collection, value.value(), key.value()) {
                    candidates.push((collection, table, key.value().to_string()));
                }
            }
        }
    }
    if candidates.is_empty() {
        return Ok(0);
    }
    let txn = db.write()?;
    let mut pruned = 0;
    for (collection, table, id) in &candidates {
        let mut t = txn.open_table(*table).map_err(backend)?;
        let still = get(&t, id)?.is_some_and(|bytes| expired(collection, &bytes, id));
        if still {
            t.remove(id.as_str()).map_err(backend)?;
            pruned += 1;
        }
    }
    txn.commit().map_err(backend)?;
    Ok(pruned)
}
