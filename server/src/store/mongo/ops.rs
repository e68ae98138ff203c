//! Adjustments through the op ledger (`ops`): insert the row `pending`,
//! apply it to the player while pushing its id to `pending_ops`, mark the
//! row `done`; recovery settles rows a crash left behind. Exactly once for
//! as long as the row is kept, without transactions.

use std::time::Duration;

use mongodb::bson::{doc, Bson, DateTime, Document};

use super::{bad, classify, holds, is_duplicate_key, stuck_rows, MongoStore, MAX_ATTEMPTS};
use crate::store::model::{
    self, decode_inventory, decode_op, to_bson, to_document, Adjust, DurableAck, Inventory,
    OpRecord, OpState, Rejection, OPS, PLAYER_SCHEMA,
};
use crate::store::{unix_ms, OpError, StoreError};

impl MongoStore {
    pub(super) async fn load_op_record(&self, id: &str) -> Result<Option<OpRecord>, StoreError> {
        match self.find_raw(OPS, id).await? {
            Some(doc) => decode_op(doc).map(Some).map_err(bad),
            None => Ok(None),
        }
    }

    /// An adjustment through the op ledger (see the module doc): exactly
    /// once for as long as its row is kept, without transactions.
    pub(super) async fn adjust(&self, op: Adjust) -> Result<DurableAck, OpError> {
        self.check_fence(op.fence.as_ref())
            .await
            .map_err(|e| match e {
                StoreError::Fenced(f) => OpError::Rejected(Rejection::Fenced(f)),
                other => OpError::Store(other),
            })?;
        let record = OpRecord::new(&op, OpState::Pending, unix_ms());
        match self.ops().insert_one(to_document(&record)).await {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => {
                let existing = self
                    .load_op_record(&op.op_id)
                    .await?
                    .ok_or_else(|| StoreError::Backend(format!("op {} vanished", op.op_id)))?;
                if !existing.matches(&op) {
                    return Err(OpError::Rejected(Rejection::OpIdReused(op.op_id)));
                }
                if existing.state == OpState::Done {
                    let p = self.read_player(&op.player).await?.ok_or_else(|| {
                        OpError::Rejected(Rejection::NoSuchPlayer(op.player.clone()))
                    })?;
                    return Ok(Self::ack(vec![(p.id, p.inventory)], true));
                }
                // Pending: an earlier attempt stopped half-way; the steps
                // below are conditional, carry on.
            }
            Err(e) => return Err(OpError::Store(classify(e))),
        }
        let (inventory, replayed) = match self.apply_to_player(&op).await {
            Ok(applied) => applied,
            Err(OpError::Rejected(why)) => {
                // Nothing was applied: forget the row, so that the same op
                // may succeed later (a refusal is not remembered).
                self.ops()
                    .delete_one(doc! { "_id": &op.op_id, "state": to_bson(&OpState::Pending) })
                    .await
                    .map_err(classify)?;
                return Err(OpError::Rejected(why));
            }
            Err(e) => return Err(e),
        };
        // Applied (the player holds the id in `pending_ops`): the rest is
        // bookkeeping that recovery finishes should it fail now.
        if let Err(e) = self.finish_op(&op.op_id).await {
            tracing::warn!(op = %op.op_id, error = %e, "op applied; its ledger row is left to recovery");
        }
        Ok(Self::ack(vec![(op.player.clone(), inventory)], replayed))
    }

    /// Apply `op` to its player unless the player already holds its id
    /// (applied by an earlier attempt: `replayed`).
    async fn apply_to_player(&self, op: &Adjust) -> Result<(Inventory, bool), OpError> {
        for _ in 0..MAX_ATTEMPTS {
            let mut filter = doc! {
                "_id": &op.player,
                "v": PLAYER_SCHEMA,
                "pending_ops": { "$ne": &op.op_id },
                "recent_ops": { "$ne": &op.op_id },
            };
            holds(
                &mut filter,
                -op.currency,
                op.items.iter().map(|(k, d)| (k.clone(), -d)),
            );
            let mut inc = Document::new();
            if op.currency != 0 {
                inc.insert("inventory.currency", op.currency);
            }
            for (item, d) in &op.items {
                if *d != 0 {
                    inc.insert(format!("inventory.items.{item}"), *d);
                }
            }
            let mut update = doc! { "$push": { "pending_ops": &op.op_id } };
            if !inc.is_empty() {
                update.insert("$inc", inc);
            }
            if !op.progress.is_empty() {
                let set: Document = op
                    .progress
                    .iter()
                    .map(|(k, v)| (format!("progress.{k}"), Bson::Int64(*v)))
                    .collect();
                update.insert("$set", set);
            }
            let updated = self.update_player(filter, update).await?;
            if let Some(doc) = updated {
                return Ok((decode_inventory(doc).map_err(bad)?, false));
            }
            // No match: find out why from the document itself.
            let mut p = self
                .read_player(&op.player)
                .await?
                .ok_or_else(|| OpError::Rejected(Rejection::NoSuchPlayer(op.player.clone())))?;
            if p.pending_ops.contains(&op.op_id) || p.recent_ops.contains(&op.op_id) {
                return Ok((p.inventory, true));
            }
            model::apply_adjust(&mut p, op).map_err(OpError::Rejected)?;
            // It would apply now: it was migrated or raced with another
            // writer. Try again.
        }
        Err(OpError::Store(StoreError::Backend(format!(
            "adjust {} on {}: the document kept changing",
            op.op_id, op.player
        ))))
    }

    /// Mark an applied op's row done. The id stays on the player for now:
    /// an earlier attempt's update may still be on its way to the server
    /// (sent, then timed out), and only the id on the player keeps it from
    /// applying again. Recovery takes it off once the row has been done for
    /// `store.trade_recovery_age_ms`, the age past which an attempt is
    /// taken for dead (as for trades).
    async fn finish_op(&self, op_id: &str) -> Result<(), StoreError> {
        self.ops()
            .update_one(
                doc! { "_id": op_id, "state": to_bson(&OpState::Pending) },
                doc! { "$set": {
                    "state": to_bson(&OpState::Done),
                    "updated_ms": unix_ms(),
                    "finished_at": DateTime::now(),
                } },
            )
            .await
            .map(drop)
            .map_err(classify)
    }

    /// Only once the row has been done for the recovery age: until then
    /// the id on the player is what keeps the op from being applied twice.
    async fn clear_pending_op(&self, op_id: &str, player: &str) -> Result<(), StoreError> {
        self.players()
            .update_one(
                doc! { "_id": player, "pending_ops": op_id },
                doc! { "$pull": { "pending_ops": op_id } },
            )
            .await
            .map(drop)
            .map_err(classify)
    }

    /// Settle op rows left pending for longer than `older_than`: done if
    /// the player holds the id (applied), deleted if not (never applied, so
    /// a retry applies it); and ids left on players whose row is done.
    pub(super) async fn recover_ops(&self, older_than: Duration) -> Result<usize, StoreError> {
        let cutoff = unix_ms() - older_than.as_millis() as i64;
        let mut settled = 0;
        let filter = doc! {
            "state": to_bson(&OpState::Pending),
            "updated_ms": { "$lt": cutoff },
        };
        for r in stuck_rows(self.ops(), filter, decode_op).await? {
            let applied = self
                .players()
                .find_one(doc! { "_id": &r.player, "pending_ops": &r.id })
                .projection(doc! { "_id": 1 })
                .await
                .map_err(classify)?
                .is_some();
            if applied {
                self.finish_op(&r.id).await?;
            } else {
                self.ops()
                    .delete_one(doc! { "_id": &r.id, "state": to_bson(&OpState::Pending) })
                    .await
                    .map_err(classify)?;
            }
            tracing::info!(op = %r.id, applied, "settled a half-done op");
            settled += 1;
        }
        let marks = self.marked_players("pending_ops").await?;
        for (player, id) in marks {
            // A row still pending is settled above once old enough; a
            // missing one (pruned, or lost to a race with recovery) leaves
            // the id on the player, where it still prevents a re-apply.
            if let Some(OpRecord {
                state: OpState::Done,
                updated_ms,
                ..
            }) = self.load_op_record(&id).await?
            {
                // Housekeeping, not a settled op: not counted.
                if updated_ms < cutoff {
                    self.clear_pending_op(&id, &player).await?;
                }
            }
        }
        Ok(settled)
    }
}
