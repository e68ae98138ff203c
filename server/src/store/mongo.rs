//! MongoDB through the official `mongodb` crate, for production.
//!
//! - Volatile batches go out as one `update` command per collection with
//!   many statements (`ordered: false`, upserts): a bulk upsert that every
//!   server version speaks (the client-level `bulkWrite` needs 8.0).
//!   Player statements `$set` only `state` and `state_rev` (and
//!   `$setOnInsert` a whole default profile), so they never touch durable
//!   fields; every statement is conditional on its revision being newer
//!   than the stored one (see `player_filter`, `room_filter`), so a batch
//!   that timed out and is applied late changes nothing.
//! - Durable ops are conditional single-document updates
//!   (`findAndModify`). An adjustment goes through the op ledger (`ops`):
//!   insert the row `pending`, apply it to the player while pushing its id
//!   to `pending_ops` (the filter `pending_ops: {$ne: id}` makes that step
//!   happen once), mark the row `done`; recovery pulls the id once the
//!   row has been done for `store.trade_recovery_age_ms` (a late copy of
//!   the update still finds it there). Trades use the
//!   two-phase ledger described in [`super`] (no transactions, so no
//!   replica set needed). Finished rows of both ledgers expire after
//!   `store.ledger_retention_ms` (a TTL index, and [`Store::prune_ledger`]).
//! - Every write uses `store.mongodb.write_concern` and `journal`.
//! - Errors that mean "the store did not answer" (I/O, server selection,
//!   pool cleared, not primary, shutting down, write concern) are
//!   [`StoreError::Unavailable`]; the persister backs off and trips its
//!   health flag on them. Anything else the server said is
//!   [`StoreError::Backend`].

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, DatabaseOptions, IndexOptions, ReturnDocument, WriteConcern,
};
use mongodb::{Client, Collection, Database, IndexModel};

use super::model::{
    self, credit, decode_inventory, decode_op, decode_player, decode_room, decode_trade,
    player_defaults, rev_i64, to_bson, to_document, Adjust, Bundle, DurableAck, DurableOp,
    Inventory, OpRecord, OpState, PlayerProfile, Rejection, RoomState, Trade, TradeRecord,
    TradeState, Volatile, VolatileKey, OPS, PLAYERS, PLAYER_SCHEMA, ROOMS, TRADES,
};
use super::{
    metric, report_bad, unix_ms, BatchReport, MongoConfig, OpError, Store, StoreError, StoreFuture,
};

/// Server error codes of an index that exists with other options (the TTL
/// index, after `store.ledger_retention_ms` changed).
const INDEX_CONFLICT_CODES: &[i32] = &[85, 86];

/// How often a conditional update that lost a race is tried again.
const MAX_ATTEMPTS: usize = 4;

/// Server error codes that mean "not now" rather than "not this".
const TRANSIENT_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    189,   // PrimarySteppedDown
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
];

pub struct MongoStore {
    client: Client,
    db: Database,
    write_concern: Document,
    /// How long finished ledger rows are kept (the TTL index).
    ledger_retention: Duration,
}

fn classify(e: MongoError) -> StoreError {
    match e.kind.as_ref() {
        // Nothing was sent: no server to send it to, or it refused to run it.
        ErrorKind::ServerSelection { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::Shutdown => StoreError::Unavailable(e.to_string()),
        ErrorKind::Command(c) if TRANSIENT_CODES.contains(&c.code) => {
            StoreError::Unavailable(e.to_string())
        }
        // Sent, answer lost; or applied on the primary but not confirmed.
        ErrorKind::Io(_) | ErrorKind::Write(WriteFailure::WriteConcernError(_)) => {
            StoreError::Interrupted(e.to_string())
        }
        _ if e.contains_label("RetryableWriteError") => StoreError::Interrupted(e.to_string()),
        _ => StoreError::Backend(e.to_string()),
    }
}

fn is_duplicate_key(e: &MongoError) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

fn bad(e: model::DecodeError) -> StoreError {
    report_bad(&e);
    StoreError::BadDocument(e)
}

/// The filter of a room write: the document, unless its `rev` is already
/// at least this one. An upsert that matches nothing then tries to insert
/// and meets the existing `_id`: that duplicate-key error means "stale,
/// skipped". `$not: {$gte}` also matches a document without a numeric
/// `rev` (damaged, or older than revs), which is overwritten.
fn room_filter(room: &RoomState) -> Document {
    doc! { "_id": &room.map, "rev": { "$not": { "$gte": rev_i64(room.rev) } } }
}

/// The filter of a player state write, the same way as [`room_filter`]:
/// the document unless its `state_rev` is already at least `rev`.
fn player_filter(id: &str, rev: u64) -> Document {
    doc! { "_id": id, "state_rev": { "$not": { "$gte": rev_i64(rev) } } }
}

/// Filter conditions "holds at least this much", for debits.
fn holds(filter: &mut Document, currency: i64, items: impl Iterator<Item = (String, i64)>) {
    if currency > 0 {
        filter.insert("inventory.currency", doc! { "$gte": currency });
    }
    for (item, n) in items {
        if n > 0 {
            filter.insert(format!("inventory.items.{item}"), doc! { "$gte": n });
        }
    }
}

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
    /// Build the client. This does not contact the server (the driver
    /// connects on first use), so it succeeds while the store is down; only
    /// a malformed URI (or an SRV record that cannot be resolved) fails.
    pub async fn connect(config: &MongoConfig) -> Result<MongoStore, StoreError> {
        let mut options = ClientOptions::parse(&config.uri).await.map_err(|e| {
            StoreError::Unavailable(format!("store.mongodb.uri {:?}: {e}", redact(&config.uri)))
        })?;
        options.app_name.get_or_insert_with(|| "tessera".into());
        options.max_pool_size = Some(config.max_pool_size);
        options.min_pool_size = Some(config.min_pool_size);
        options.connect_timeout = Some(Duration::from_millis(config.connect_timeout_ms));
        options.server_selection_timeout =
            Some(Duration::from_millis(config.server_selection_timeout_ms));
        let w = if config.write_concern == "majority" {
            Acknowledgment::Majority
        } else {
            Acknowledgment::Nodes(config.write_concern.parse().unwrap_or(1))
        };
        let wc = WriteConcern::builder()
            .w(w.clone())
            .journal(config.journal)
            .build();
        let client = Client::with_options(options).map_err(classify)?;
        let db = client.database_with_options(
            &config.database,
            DatabaseOptions::builder().write_concern(wc).build(),
        );
        let w_bson = match w {
            Acknowledgment::Nodes(n) => Bson::Int64(i64::from(n)),
            _ => Bson::String("majority".into()),
        };
        Ok(MongoStore {
            client,
            db,
            write_concern: doc! { "w": w_bson, "j": config.journal },
            ledger_retention: Duration::from_millis(
                super::StoreConfig::default().ledger_retention_ms,
            ),
        })
    }

    /// Keep finished ledger rows for `retention` (`store.ledger_retention_ms`).
    pub fn with_ledger_retention(mut self, retention: Duration) -> MongoStore {
        self.ledger_retention = retention;
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn players(&self) -> Collection<Document> {
        self.db.collection(PLAYERS)
    }

    /// findAndModify on one player: the document (its inventory only) after
    /// `update`, or `None` when `filter` matched nothing.
    async fn update_player(
        &self,
        filter: Document,
        update: Document,
    ) -> Result<Option<Document>, StoreError> {
        self.players()
            .find_one_and_update(filter, update)
            .projection(doc! { "inventory": 1 })
            .return_document(ReturnDocument::After)
            .await
            .map_err(classify)
    }

    fn trades(&self) -> Collection<Document> {
        self.db.collection(TRADES)
    }

    fn ops(&self) -> Collection<Document> {
        self.db.collection(OPS)
    }

    /// The TTL index on `finished_at` of a ledger, expiring after the
    /// configured retention; an existing one with another expiry is changed
    /// in place (`collMod`).
    async fn ensure_ttl(&self, collection: &str) -> Result<(), StoreError> {
        let ttl = IndexModel::builder()
            .keys(doc! { "finished_at": 1 })
            .options(
                IndexOptions::builder()
                    .name("finished_ttl".to_string())
                    .expire_after(self.ledger_retention)
                    .build(),
            )
            .build();
        let created = self
            .db
            .collection::<Document>(collection)
            .create_index(ttl)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.kind.as_ref(), ErrorKind::Command(c) if INDEX_CONFLICT_CODES.contains(&c.code)) => {
                self.db
                    .run_command(doc! {
                        "collMod": collection,
                        "index": {
                            "name": "finished_ttl",
                            "expireAfterSeconds": self.ledger_retention.as_secs() as i64,
                        },
                    })
                    .await
                    .map(drop)
                    .map_err(classify)
            }
            Err(e) => Err(classify(e)),
        }
    }

    async fn create_indexes(&self) -> Result<(), StoreError> {
        let index = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_string()).build())
                .build()
        };
        self.players()
            .create_indexes([
                index(doc! { "name": 1 }, "name"),
                index(doc! { "pending_trades": 1 }, "pending_trades"),
                index(doc! { "pending_ops": 1 }, "pending_ops"),
            ])
            .await
            .map_err(classify)?;
        for ledger in [self.trades(), self.ops()] {
            ledger
                .create_indexes([index(doc! { "state": 1, "updated_ms": 1 }, "state_updated")])
                .await
                .map_err(classify)?;
        }
        self.ensure_ttl(TRADES).await?;
        self.ensure_ttl(OPS).await
    }

    /// One `update` command with many statements; per-statement errors are
    /// mapped back to their keys.
    async fn bulk_upsert(
        &self,
        collection: &str,
        keys: Vec<VolatileKey>,
        statements: Vec<Document>,
        report: &mut BatchReport,
    ) -> Result<(), StoreError> {
        if statements.is_empty() {
            return Ok(());
        }
        let count = statements.len();
        let reply = self
            .db
            .run_command(doc! {
                "update": collection,
                "updates": statements,
                "ordered": false,
                "writeConcern": self.write_concern.clone(),
            })
            .await
            .map_err(classify)?;
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Err(StoreError::Interrupted(format!("write concern: {wce}")));
        }
        let mut failed = 0;
        if let Ok(errors) = reply.get_array("writeErrors") {
            for e in errors {
                let Bson::Document(e) = e else { continue };
                let index = match e.get("index") {
                    Some(Bson::Int32(i)) => *i as usize,
                    Some(Bson::Int64(i)) => *i as usize,
                    _ => continue,
                };
                let message = e.get_str("errmsg").unwrap_or("write error").to_string();
                let code = match e.get("code") {
                    Some(Bson::Int32(c)) => i64::from(*c),
                    Some(Bson::Int64(c)) => *c,
                    _ => 0,
                };
                if code == 11000 {
                    // Every statement is an upsert filtered on its
                    // revision: a duplicate `_id` means a newer revision of
                    // this document is stored (stale, skipped).
                    metrics::counter!(metric::STALE_SKIPPED).increment(1);
                    continue;
                }
                if let Some(key) = keys.get(index) {
                    tracing::warn!(key = %key, error = %message, "store refused a volatile document; skipped");
                    metrics::counter!(metric::BAD_DOCUMENTS).increment(1);
                    report.rejected.push((key.clone(), message));
                    failed += 1;
                }
            }
        }
        report.written += count - failed;
        Ok(())
    }

    async fn find_raw(&self, collection: &str, id: &str) -> Result<Option<Document>, StoreError> {
        self.db
            .collection::<Document>(collection)
            .find_one(doc! { "_id": id })
            .await
            .map_err(classify)
    }

    /// Read a player; an old document is migrated and written back (only if
    /// nobody changed its version meanwhile).
    async fn read_player(&self, id: &str) -> Result<Option<PlayerProfile>, StoreError> {
        let Some(raw) = self.find_raw(PLAYERS, id).await? else {
            return Ok(None);
        };
        let old_v = raw.get("v").cloned();
        let old_rev = raw.get("state_rev").cloned();
        let (profile, migrated) = decode_player(raw).map_err(bad)?;
        if migrated {
            // Only over the document as read: neither migrated meanwhile
            // nor given a newer state (which this write would undo).
            let mut filter = doc! { "_id": id };
            for (field, old) in [("v", old_v), ("state_rev", old_rev)] {
                match old {
                    Some(value) => filter.insert(field, value),
                    None => filter.insert(field, doc! { "$exists": false }),
                };
            }
            self.players()
                .replace_one(filter, to_document(&profile))
                .await
                .map_err(classify)?;
            tracing::info!(player = %id, v = profile.v, "migrated a player document");
        }
        Ok(Some(profile))
    }

    fn ack(inventories: Vec<(String, Inventory)>, replayed: bool) -> DurableAck {
        DurableAck {
            inventories,
            replayed,
        }
    }

    async fn load_op_record(&self, id: &str) -> Result<Option<OpRecord>, StoreError> {
        match self.find_raw(OPS, id).await? {
            Some(doc) => decode_op(doc).map(Some).map_err(bad),
            None => Ok(None),
        }
    }

    /// An adjustment through the op ledger (see the module doc): exactly
    /// once for as long as its row is kept, without transactions.
    async fn adjust(&self, op: Adjust) -> Result<DurableAck, OpError> {
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
    async fn recover_ops(&self, older_than: Duration) -> Result<usize, StoreError> {
        let cutoff = unix_ms() - older_than.as_millis() as i64;
        let mut settled = 0;
        let mut cursor = self
            .ops()
            .find(doc! {
                "state": to_bson(&OpState::Pending),
                "updated_ms": { "$lt": cutoff },
            })
            .limit(1_000)
            .await
            .map_err(classify)?;
        let mut stuck = Vec::new();
        while cursor.advance().await.map_err(classify)? {
            let doc: Document = cursor.deserialize_current().map_err(classify)?;
            match decode_op(doc) {
                Ok(r) => stuck.push(r),
                Err(e) => report_bad(&e),
            }
        }
        for r in stuck {
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
        let mut cursor = self
            .players()
            .find(doc! { "pending_ops.0": { "$exists": true } })
            .projection(doc! { "pending_ops": 1 })
            .limit(1_000)
            .await
            .map_err(classify)?;
        let mut marks = Vec::new();
        while cursor.advance().await.map_err(classify)? {
            let doc: Document = cursor.deserialize_current().map_err(classify)?;
            let player = doc.get_str("_id").unwrap_or_default().to_string();
            for id in doc.get_array("pending_ops").into_iter().flatten() {
                if let Bson::String(id) = id {
                    marks.push((player.clone(), id.clone()));
                }
            }
        }
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

    async fn load_trade_record(&self, tid: &str) -> Result<Option<TradeRecord>, StoreError> {
        match self.find_raw(TRADES, tid).await? {
            Some(doc) => decode_trade(doc).map(Some).map_err(bad),
            None => Ok(None),
        }
    }

    /// Roll a pending trade back: re-credit whoever was debited, then mark
    /// it cancelled.
    async fn cancel(&self, r: &TradeRecord, reason: &str) -> Result<(), StoreError> {
        self.credit_side(&r.id, &r.a, &r.a_gives).await?;
        self.credit_side(&r.id, &r.b, &r.b_gives).await?;
        self.set_trade_state(&r.id, TradeState::Pending, TradeState::Cancelled, reason)
            .await?;
        Ok(())
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

    async fn trade(&self, t: Trade) -> Result<DurableAck, OpError> {
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

    async fn recover(&self, older_than: Duration) -> Result<usize, StoreError> {
        let cutoff = unix_ms() - older_than.as_millis() as i64;
        let mut settled = self.recover_ops(older_than).await?;
        let mut cursor = self
            .trades()
            .find(doc! {
                "state": { "$in": [to_bson(&TradeState::Pending), to_bson(&TradeState::Applied)] },
                "updated_ms": { "$lt": cutoff },
            })
            .limit(1_000)
            .await
            .map_err(classify)?;
        let mut stuck = Vec::new();
        while cursor.advance().await.map_err(classify)? {
            let doc: Document = cursor.deserialize_current().map_err(classify)?;
            match decode_trade(doc) {
                Ok(r) => stuck.push(r),
                Err(e) => report_bad(&e),
            }
        }
        for r in stuck {
            match r.state {
                TradeState::Pending => self.cancel(&r, "interrupted before commit").await?,
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
        let mut cursor = self
            .players()
            .find(doc! { "pending_trades.0": { "$exists": true } })
            .projection(doc! { "pending_trades": 1 })
            .limit(1_000)
            .await
            .map_err(classify)?;
        let mut marks = Vec::new();
        while cursor.advance().await.map_err(classify)? {
            let doc: Document = cursor.deserialize_current().map_err(classify)?;
            let player = doc.get_str("_id").unwrap_or_default().to_string();
            for tid in doc.get_array("pending_trades").into_iter().flatten() {
                if let Bson::String(tid) = tid {
                    marks.push((player.clone(), tid.clone()));
                }
            }
        }
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

/// The URI without its password, for messages.
fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &uri[..scheme], &uri[at + 1..])
        }
        _ => uri.to_string(),
    }
}

impl Store for MongoStore {
    fn backend(&self) -> &'static str {
        "mongodb"
    }

    fn prepare(&self) -> StoreFuture<'_, ()> {
        async move {
            self.ping().await?;
            self.create_indexes().await
        }
        .boxed()
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        async move {
            self.db
                .run_command(doc! { "ping": 1 })
                .await
                .map(drop)
                .map_err(classify)
        }
        .boxed()
    }

    fn write_volatile(&self, batch: Vec<Volatile>) -> StoreFuture<'_, BatchReport> {
        async move {
            let (mut player_keys, mut players) = (Vec::new(), Vec::new());
            let (mut room_keys, mut rooms) = (Vec::new(), Vec::new());
            for v in batch {
                match v {
                    Volatile::Player { id, state, rev } => {
                        players.push(doc! {
                            "q": player_filter(&id, rev),
                            "u": {
                                "$set": { "state": to_bson(&state), "state_rev": rev_i64(rev) },
                                "$setOnInsert": player_defaults(&id),
                            },
                            "upsert": true,
                        });
                        player_keys.push(VolatileKey::Player(id));
                    }
                    Volatile::Room(room) => {
                        rooms.push(doc! {
                            "q": room_filter(&room),
                            "u": to_document(&room),
                            "upsert": true,
                        });
                        room_keys.push(VolatileKey::Room(room.map));
                    }
                }
            }
            let mut report = BatchReport::default();
            self.bulk_upsert(PLAYERS, player_keys, players, &mut report)
                .await?;
            self.bulk_upsert(ROOMS, room_keys, rooms, &mut report)
                .await?;
            Ok(report)
        }
        .boxed()
    }

    fn write_room(&self, room: RoomState) -> StoreFuture<'_, bool> {
        async move {
            let result = self
                .db
                .collection::<Document>(ROOMS)
                .replace_one(room_filter(&room), to_document(&room))
                .upsert(true)
                .await;
            match result {
                Ok(_) => Ok(true),
                Err(e) if is_duplicate_key(&e) => Ok(false),
                Err(e) => Err(classify(e)),
            }
        }
        .boxed()
    }

    fn apply(&self, op: DurableOp) -> BoxFuture<'_, Result<DurableAck, OpError>> {
        async move {
            match op {
                DurableOp::Adjust(op) => self.adjust(op).await,
                DurableOp::Trade(t) => self.trade(t).await,
            }
        }
        .boxed()
    }

    fn load_or_create_player(&self, id: String, name: String) -> StoreFuture<'_, PlayerProfile> {
        async move {
            if let Some(p) = self.read_player(&id).await? {
                return Ok(p);
            }
            let mut fresh = to_document(&PlayerProfile::new(&id, &name));
            fresh.remove("_id");
            // Upsert rather than insert: a concurrent creator (or volatile
            // write) may have got there first, and that document wins.
            self.players()
                .update_one(doc! { "_id": &id }, doc! { "$setOnInsert": fresh })
                .upsert(true)
                .await
                .map_err(classify)?;
            self.read_player(&id).await?.ok_or_else(|| {
                StoreError::Backend(format!("player {id} vanished right after it was created"))
            })
        }
        .boxed()
    }

    fn load_player(&self, id: String) -> StoreFuture<'_, Option<PlayerProfile>> {
        async move { self.read_player(&id).await }.boxed()
    }

    fn load_room(&self, map: String) -> StoreFuture<'_, Option<RoomState>> {
        async move {
            match self.find_raw(ROOMS, &map).await? {
                Some(doc) => match decode_room(doc) {
                    Ok((room, _)) => Ok(Some(room)),
                    Err(e) => {
                        report_bad(&e);
                        Ok(None)
                    }
                },
                None => Ok(None),
            }
        }
        .boxed()
    }

    fn load_rooms(&self) -> StoreFuture<'_, Vec<RoomState>> {
        async move {
            let mut cursor = self
                .db
                .collection::<Document>(ROOMS)
                .find(doc! {})
                .await
                .map_err(classify)?;
            let mut out = Vec::new();
            while cursor.advance().await.map_err(classify)? {
                let doc: Document = cursor.deserialize_current().map_err(classify)?;
                match decode_room(doc) {
                    Ok((room, _)) => out.push(room),
                    Err(e) => report_bad(&e),
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn load_trade(&self, id: String) -> StoreFuture<'_, Option<TradeRecord>> {
        async move { self.load_trade_record(&id).await }.boxed()
    }

    fn load_op(&self, id: String) -> StoreFuture<'_, Option<OpRecord>> {
        async move { self.load_op_record(&id).await }.boxed()
    }

    fn recover_trades(&self, older_than: Duration) -> StoreFuture<'_, usize> {
        async move { self.recover(older_than).await }.boxed()
    }

    fn prune_ledger(&self, retention: Duration) -> StoreFuture<'_, usize> {
        async move {
            // The TTL index does the same within a minute or so; this makes
            // the retention exact and works where TTL monitors do not run.
            let cutoff =
                unix_ms().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
            // Finished rows by when they finished, as the embedded store
            // does; rows in progress stay whatever their age.
            let finished = [to_bson(&TradeState::Done), to_bson(&TradeState::Cancelled)];
            let mut pruned = 0;
            for ledger in [self.trades(), self.ops()] {
                let r = ledger
                    .delete_many(doc! {
                        "state": { "$in": finished.to_vec() },
                        "updated_ms": { "$lt": cutoff },
                    })
                    .await
                    .map_err(classify)?;
                pruned += r.deleted_count as usize;
            }
            Ok(pruned)
        }
        .boxed()
    }

    fn put_raw(&self, collection: &'static str, doc: Document) -> StoreFuture<'_, ()> {
        async move {
            let id = doc
                .get("_id")
                .cloned()
                .ok_or_else(|| StoreError::Backend("put_raw needs an _id".into()))?;
            self.db
                .collection::<Document>(collection)
                .replace_one(doc! { "_id": id }, doc)
                .upsert(true)
                .await
                .map(drop)
                .map_err(classify)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_redacted() {
        assert_eq!(
            redact("mongodb://user:secret@db:27017/x"),
            "mongodb://***@db:27017/x"
        );
        assert_eq!(redact("mongodb://db:27017"), "mongodb://db:27017");
    }
}
