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
//!
//! # Layout
//!
//! - this file: [`MongoStore`], error classification, the conditional
//!   filters, volatile bulk upserts, reads, and `impl Store`.
//! - `connect.rs`: building the client; indexes and the ledgers' TTL.
//! - `ops.rs`: adjustments through the op ledger, and their recovery.
//! - `trade.rs`: the two-phase trade over the trade ledger, and its
//!   recovery.
//! - `admin.rs`: bans and the audit trail.

use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::ReturnDocument;
use mongodb::{Client, Collection, Database};
use protocol::admin::{Ban, Event};

mod admin;
mod connect;
mod fence;
mod ops;
mod trade;

use super::model::{
    self, decode_player, decode_room, player_defaults, rev_i64, to_bson, to_document, DurableAck,
    DurableOp, Inventory, OpRecord, PlayerProfile, RoomState, TradeRecord, TradeState, Volatile,
    VolatileKey, OPS, PLAYERS, ROOMS, TRADES,
};
use super::{metric, report_bad, unix_ms, BatchReport, OpError, Store, StoreError, StoreFuture};
use fence::room_filter;

/// How often a conditional update that lost a race is tried again.
const MAX_ATTEMPTS: usize = 4;

/// Ledger rows left unfinished: at most 1,000 documents of `collection`
/// matching `filter`, decoded; a row that does not decode is reported and
/// skipped (recovery goes on with the others).
async fn stuck_rows<R>(
    collection: Collection<Document>,
    filter: Document,
    decode: impl Fn(Document) -> Result<R, model::DecodeError>,
) -> Result<Vec<R>, StoreError> {
    let mut cursor = collection
        .find(filter)
        .limit(1_000)
        .await
        .map_err(classify)?;
    let mut stuck = Vec::new();
    while cursor.advance().await.map_err(classify)? {
        let doc: Document = cursor.deserialize_current().map_err(classify)?;
        match decode(doc) {
            Ok(r) => stuck.push(r),
            Err(e) => report_bad(&e),
        }
    }
    Ok(stuck)
}

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

/// The filter of a player state write, the same way as a room's
/// (`fence.rs`) without the owner epoch:
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

impl MongoStore {
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

    /// One `update` command with many statements; per-statement errors are
    /// mapped back to their keys.
    async fn bulk_upsert(
        &self,
        collection: &str,
        keys: Vec<VolatileKey>,
        statements: Vec<Document>,
        report: &mut BatchReport,
    ) -> Result<Vec<usize>, StoreError> {
        let mut newer = Vec::new();
        if statements.is_empty() {
            return Ok(newer);
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
                    // this document is stored (stale, skipped; for a room,
                    // perhaps of a newer owner: the caller looks).
                    newer.push(index);
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
        Ok(newer)
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

    /// `(player, id)` for every id in the array `field` (`pending_ops`,
    /// `pending_trades`) of up to 1,000 players that have one: the marks
    /// recovery settles.
    async fn marked_players(&self, field: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut cursor = self
            .players()
            .find(doc! { format!("{field}.0"): { "$exists": true } })
            .projection(doc! { field: 1 })
            .limit(1_000)
            .await
            .map_err(classify)?;
        let mut marks = Vec::new();
        while cursor.advance().await.map_err(classify)? {
            let doc: Document = cursor.deserialize_current().map_err(classify)?;
            let player = doc.get_str("_id").unwrap_or_default().to_string();
            for id in doc.get_array(field).into_iter().flatten() {
                if let Bson::String(id) = id {
                    marks.push((player.clone(), id.clone()));
                }
            }
        }
        Ok(marks)
    }

    fn ack(inventories: Vec<(String, Inventory)>, replayed: bool) -> DurableAck {
        DurableAck {
            inventories,
            replayed,
        }
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
            let mut room_docs = Vec::new();
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
                        room_keys.push(VolatileKey::Room(room.map.clone()));
                        room_docs.push(room);
                    }
                }
            }
            let mut report = BatchReport::default();
            let stale = self
                .bulk_upsert(PLAYERS, player_keys, players, &mut report)
                .await?;
            metrics::counter!(metric::STALE_SKIPPED).increment(stale.len() as u64);
            let newer = self
                .bulk_upsert(ROOMS, room_keys, rooms, &mut report)
                .await?;
            for index in newer {
                let Some(room) = room_docs.get(index) else {
                    continue;
                };
                match self.stale_or_fenced(room).await {
                    Ok(()) => metrics::counter!(metric::STALE_SKIPPED).increment(1),
                    Err(f) => {
                        metrics::counter!(metric::FENCED).increment(1);
                        tracing::warn!(room = %f.room, stored = f.stored, ours = f.ours, "room write fenced: the room has a newer owner");
                        report.written = report.written.saturating_sub(1);
                        report
                            .rejected
                            .push((VolatileKey::Room(room.map.clone()), f.to_string()));
                    }
                }
            }
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
                Err(e) if is_duplicate_key(&e) => match self.stale_or_fenced(&room).await {
                    Ok(()) => Ok(false),
                    Err(f) => Err(StoreError::Fenced(f)),
                },
                Err(e) => Err(classify(e)),
            }
        }
        .boxed()
    }

    fn claim_room(&self, room: String, epoch: u64) -> StoreFuture<'_, u64> {
        async move { self.claim(room, epoch).await }.boxed()
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

    fn put_ban(&self, ban: Ban) -> StoreFuture<'_, ()> {
        self.put_ban_doc(ban).boxed()
    }

    fn delete_ban(&self, player: String) -> StoreFuture<'_, bool> {
        self.delete_ban_doc(player).boxed()
    }

    fn load_bans(&self) -> StoreFuture<'_, Vec<Ban>> {
        self.load_ban_docs().boxed()
    }

    fn append_audit(&self, event: Event) -> StoreFuture<'_, ()> {
        self.append_audit_doc(event).boxed()
    }

    fn load_audit(&self, limit: usize) -> StoreFuture<'_, Vec<Event>> {
        self.load_audit_docs(limit).boxed()
    }
}
