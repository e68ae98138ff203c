//! The two-phase trade over the trade ledger (`trades`), without
//! transactions (so no replica set): the ledger row goes `pending`, each
//! side is debited with the trade id pushed to its `pending_trades`, the
//! row goes `applied` (the commit point), each side is credited and the id
//! pulled, the row goes `done`. Recovery rolls a `pending` trade back and
//! an `applied` one forward (see [`crate::store`]).

use std::time::Duration;

use mongodb::bson::{doc, DateTime, Document};

use super::{bad, classify, holds, is_duplicate_key, stuck_rows, MongoStore, MAX_ATTEMPTS};
use crate::store::model::{
    self, credit, decode_inventory, decode_trade, to_bson, to_document, Bundle, DurableAck,
    Inventory, Rejection, Trade, TradeRecord, TradeState, PLAYER_SCHEMA, TRADES,
};
use crate::store::{metric, report_bad, unix_ms, OpError, StoreError};

/// `$inc` of `sign` × a bundle, or None when it changes nothing.
fn inc_bundle(bundle: &Bundle, sign: i64) -> Option<Document> {
    let mut inc = Document::new();
    if bundle.currency != 0 {
        inc.insert("inventory.currency", sign * bundle.currency);
    }
    for (item, n) in &bundle.items {
        inc.insert(format!("inventory.items.{item}"), sign * n);
    }
    (!inc.is_empty()).then_some(inc)
}

impl MongoStore {
    /// Phase 2 of a trade: take what `player` gives, mark the trade pending
    /// on them. Returns their inventory after the debit.
    async fn debit_side(
        &self,
        tid: &str,
        player: &str,
        gives: &Bundle,
    ) -> Result<Inventory, OpError> {
        for _ in 0..MAX_ATTEMPTS {
            let mut filter = doc! {
                "_id": player,
                "v": PLAYER_SCHEMA,
                "pending_trades": { "$ne": tid },
            };
            holds(
                &mut filter,
                gives.currency,
                gives.items.iter().map(|(k, n)| (k.clone(), *n)),
            );
            let mut update = doc! { "$push": { "pending_trades": tid } };
            if let Some(inc) = inc_bundle(gives, -1) {
                update.insert("$inc", inc);
            }
            let updated = self.update_player(filter, update).await?;
            if let Some(doc) = updated {
                return Ok(decode_inventory(doc).map_err(bad)?);
            }
            let mut p = self
                .read_player(player)
                .await?
                .ok_or_else(|| OpError::Rejected(Rejection::NoSuchPlayer(player.to_string())))?;
            if p.pending_trades.iter().any(|t| t == tid) {
                return Ok(p.inventory);
            }
            model::debit(&mut p, gives).map_err(OpError::Rejected)?;
        }
        Err(OpError::Store(StoreError::Backend(format!(
            "trade {tid} on {player}: the document kept changing"
        ))))
    }

    /// Give `player` what they receive and clear the trade from them, if it
    /// is still pending on them. Returns their inventory when it did.
    async fn credit_side(
        &self,
        tid: &str,
        player: &str,
        receives: &Bundle,
    ) -> Result<Option<Inventory>, StoreError> {
        let mut update = doc! { "$pull": { "pending_trades": tid } };
        if let Some(inc) = inc_bundle(receives, 1) {
            update.insert("$inc", inc);
        }
        let updated = self
            .update_player(doc! { "_id": player, "pending_trades": tid }, update)
            .await?;
        match updated {
            // Applied either way; a damaged inventory is only reported.
            Some(doc) => Ok(decode_inventory(doc).map_err(|e| report_bad(&e)).ok()),
            None => Ok(None),
        }
    }

    async fn set_trade_state(
        &self,
        tid: &str,
        from: TradeState,
        to: TradeState,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut set = doc! {
            "state": to_bson(&to),
            "updated_ms": unix_ms(),
        };
        if matches!(to, TradeState::Done | TradeState::Cancelled) {
            set.insert("finished_at", DateTime::now());
        }
        if !reason.is_empty() {
            set.insert("reason", reason);
        }
        let r = self
            .trades()
            .update_one(
                doc! { "_id": tid, "state": to_bson(&from) },
                doc! { "$set": set },
            )
            .await
            .map_err(classify)?;
        Ok(r.matched_count == 1)
    }

    pub(super) async fn load_trade_record(
        &self,
        tid: &str,
    ) -> Result<Option<TradeRecord>, StoreError> {
        match self.find_raw(TRADES, tid).await? {
            Some(doc) => decode_trade(doc).map(Some).map_err(bad),
            None => Ok(None),
        }
    }

    /// Roll a pending trade back: mark it cancelled, then re-credit
    /// whoever was debited. The mark comes first and only a pending trade
    /// takes it: the row's state is the one decision both the trading
    /// shard (committing: pending to applied) and recovery (cancelling)
    /// race for, so a trade its shard committed meanwhile is never undone
    /// on one side (a debit refunded while the credit was already
    /// skipped). False when the trade is committed (not ours to undo);
    /// already cancelled by someone else, the re-credits are done again
    /// (each is conditional on the side's mark, so at most once).
    async fn cancel(&self, r: &TradeRecord, reason: &str) -> Result<bool, StoreError> {
        let marked = self
            .set_trade_state(&r.id, TradeState::Pending, TradeState::Cancelled, reason)
            .await?;
        if !marked {
            let now = self.load_trade_record(&r.id).await?.map(|r| r.state);
            if now != Some(TradeState::Cancelled) {
                return Ok(false);
            }
        }
        self.credit_side(&r.id, &r.a, &r.a_gives).await?;
        self.credit_side(&r.id, &r.b, &r.b_gives).await?;
        Ok(true)
    }

    /// Roll trade `id` back if it is still pending, as recovery does to a
    /// trade it judges abandoned: true if it is cancelled (now or
    /// before), false if it was committed meanwhile (applied or done: left
    /// alone) or is unknown. Whatever state the trade was last read in,
    /// the decision is the row's.
    pub async fn cancel_trade(&self, id: &str) -> Result<bool, StoreError> {
        match self.load_trade_record(id).await? {
            Some(r) => self.cancel(&r, "interrupted before commit").await,
            None => Ok(false),
        }
    }

    /// Roll a committed trade forward: credit both sides, mark it done.
    async fn finish(&self, r: &TradeRecord) -> Result<[Option<Inventory>; 2], StoreError> {
        let a = self.credit_side(&r.id, &r.a, &r.b_gives).await?;
        let b = self.credit_side(&r.id, &r.b, &r.a_gives).await?;
        self.set_trade_state(&r.id, TradeState::Applied, TradeState::Done, "")
            .await?;
        Ok([a, b])
    }

    async fn inventories_of(
        &self,
        players: [&str; 2],
    ) -> Result<Vec<(String, Inventory)>, StoreError> {
        let mut out = Vec::new();
        for id in players {
            if let Some(p) = self.read_player(id).await? {
                out.push((p.id, p.inventory));
            }
        }
        Ok(out)
    }

    pub(super) async fn trade(&self, t: Trade) -> Result<DurableAck, OpError> {
        let record = TradeRecord::new(&t, unix_ms());
        match self.trades().insert_one(to_document(&record)).await {
            Ok(_) => {}
            Err(e) if is_duplicate_key(&e) => {
                let existing = self
                    .load_trade_record(&t.id)
                    .await?
                    .ok_or_else(|| StoreError::Backend(format!("trade {} vanished", t.id)))?;
                if !existing.matches(&t) {
                    return Err(OpError::Rejected(Rejection::TradeIdReused(t.id)));
                }
                match existing.state {
                    TradeState::Cancelled => {
                        return Err(OpError::Rejected(Rejection::TradeCancelled(
                            existing.reason,
                        )))
                    }
                    TradeState::Done => {
                        return Ok(Self::ack(self.inventories_of([&t.a, &t.b]).await?, true))
                    }
                    TradeState::Applied => {
                        self.finish(&existing).await.map_err(in_doubt)?;
                        return Ok(Self::ack(self.inventories_of([&t.a, &t.b]).await?, true));
                    }
                    // An earlier attempt stopped half-way: carry on, every
                    // step below is conditional.
                    TradeState::Pending => {}
                }
            }
            Err(e) => return Err(OpError::Store(classify(e))),
        }
        // From here on, a failure may leave the trade half-done (until
        // recovery settles it): report it as in doubt, not as "unchanged".
        let debits = async {
            let a = self.debit_side(&t.id, &t.a, &t.a_gives).await?;
            let b = self.debit_side(&t.id, &t.b, &t.b_gives).await?;
            Ok::<_, OpError>((a, b))
        };
        let (mut inv_a, mut inv_b) = match debits.await {
            Ok(debited) => debited,
            Err(OpError::Rejected(why)) => {
                self.cancel(&record, &why.to_string())
                    .await
                    .map_err(in_doubt)?;
                return Err(OpError::Rejected(why));
            }
            Err(OpError::Store(e)) if !e.is_unavailable() => {
                // The store answered (a bad document, a refused write):
                // undo what was done rather than leave it to recovery.
                self.cancel(&record, &e.to_string())
                    .await
                    .map_err(in_doubt)?;
                return Err(OpError::Store(e));
            }
            Err(e @ (OpError::Store(_) | OpError::InDoubt(_))) => return Err(in_doubt(e)),
        };
        let committed = self
            .set_trade_state(&t.id, TradeState::Pending, TradeState::Applied, "")
            .await
            .map_err(in_doubt)?;
        if !committed {
            let now = self.load_trade_record(&t.id).await.map_err(in_doubt)?;
            match now.map(|r| r.state) {
                Some(TradeState::Applied | TradeState::Done) => {}
                _ => {
                    // Recovery judged us dead and rolled the trade back;
                    // make sure our own debits are undone too.
                    self.cancel(&record, "rolled back by recovery")
                        .await
                        .map_err(in_doubt)?;
                    return Err(OpError::Store(StoreError::Backend(format!(
                        "trade {} was rolled back by recovery before it committed",
                        t.id
                    ))));
                }
            }
        }
        // Committed. Credits that fail now are finished by recovery; the
        // caller is told the trade is done either way.
        match self.finish(&record).await {
            Ok([a, b]) => {
                let a = a.unwrap_or_else(|| with_credit(inv_a.clone(), &t.b_gives));
                let b = b.unwrap_or_else(|| with_credit(inv_b.clone(), &t.a_gives));
                Ok(Self::ack(vec![(t.a, a), (t.b, b)], false))
            }
            Err(e) => {
                tracing::warn!(trade = %t.id, error = %e, "trade committed; crediting left to recovery");
                credit(&mut inv_a, &t.b_gives);
                credit(&mut inv_b, &t.a_gives);
                Ok(Self::ack(vec![(t.a, inv_a), (t.b, inv_b)], false))
            }
        }
    }

    pub(super) async fn recover(&self, older_than: Duration) -> Result<usize, StoreError> {
        let cutoff = unix_ms() - older_than.as_millis() as i64;
        let mut settled = self.recover_ops(older_than).await?;
        let filter = doc! {
            "state": { "$in": [to_bson(&TradeState::Pending), to_bson(&TradeState::Applied)] },
            "updated_ms": { "$lt": cutoff },
        };
        for r in stuck_rows(self.trades(), filter, decode_trade).await? {
            match r.state {
                TradeState::Pending => {
                    // Committed by its shard since it was read: that
                    // shard (or the next pass) finishes it.
                    if !self.cancel(&r, "interrupted before commit").await? {
                        continue;
                    }
                }
                TradeState::Applied => {
                    self.finish(&r).await?;
                }
                TradeState::Done | TradeState::Cancelled => continue,
            }
            tracing::info!(trade = %r.id, from = ?r.state, "settled a half-done trade");
            settled += 1;
        }
        // Players still marked with a trade the ledger has finished (an
        // attempt that lost a race with recovery): settle their side.
        let marks = self.marked_players("pending_trades").await?;
        for (player, tid) in marks {
            let Some(r) = self.load_trade_record(&tid).await? else {
                continue;
            };
            let gave = if player == r.a {
                &r.a_gives
            } else {
                &r.b_gives
            };
            let receives = if player == r.a {
                &r.b_gives
            } else {
                &r.a_gives
            };
            let done = match r.state {
                TradeState::Cancelled => self.credit_side(&tid, &player, gave).await?,
                TradeState::Done => self.credit_side(&tid, &player, receives).await?,
                TradeState::Pending | TradeState::Applied => None,
            };
            if done.is_some() {
                settled += 1;
            }
        }
        if settled > 0 {
            metrics::counter!(metric::TRADES_RECOVERED).increment(settled as u64);
        }
        Ok(settled)
    }
}

fn in_doubt(e: impl Into<OpError>) -> OpError {
    match e.into() {
        OpError::Store(e) => OpError::InDoubt(e.to_string()),
        other => other,
    }
}

fn with_credit(mut inv: Inventory, bundle: &Bundle) -> Inventory {
    credit(&mut inv, bundle);
    inv
}
