//! The embedded store: one redb file, `<store.embedded.dir>/tessera.redb`,
//! the zero-setup default.
//!
//! Documents are stored as BSON bytes under their `_id` in one table per
//! collection, so both backends share one model, one codec and one
//! migration path. redb is synchronous: every call runs on tokio's blocking
//! pool. Each durable op is one write transaction committed with
//! `Durability::Immediate` (fsync), so a trade is atomic without a ledger
//! protocol; the ledgers still record each trade id and each op id for
//! idempotent retries (pruned by [`Store::prune_ledger`] after
//! `store.ledger_retention_ms`, as Mongo's TTL index does). A volatile batch
//! is one transaction too (one fsync per flush); each document in it is
//! compared with the stored revision inside that transaction.
//!
//! The file is opened in redb's `SingleWriter` mode: this process writes,
//! and other handles ([`EmbeddedStore::open_read_only`], e.g. a tool or the
//! conformance suite's "fresh handle" check) may read alongside and see
//! every commit.
//!
//! Layout: this file opens the database and implements [`Store`];
//! `ledger.rs` holds the durable ops (adjustments, trades) and the ledger
//! pruning; `admin.rs` bans and the audit trail; `fence.rs` the owner-epoch fence.

mod admin;
mod fence;
mod ledger;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use mongodb::bson::raw::{RawBsonRef, RawDocument, RawDocumentBuf};
use mongodb::bson::{self as bson, Bson, Document};
use protocol::admin::{Ban, Event};
use redb::{
    ConcurrencyMode, Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    Table, TableDefinition, WriteTransaction,
};

use super::model::{
    self, decode_player, decode_room, decode_trade, rev_i64, to_bson, to_document, DurableAck,
    DurableOp, OpRecord, PlayerProfile, PlayerState, RoomState, TradeRecord, Volatile, VolatileKey,
    OPS, PLAYERS, ROOMS, TRADES,
};
use super::{metric, report_bad, BatchReport, OpError, Store, StoreError, StoreFuture};
use crate::config::EmbeddedConfig;
use fence::{claim, put_room_checked, RoomWrite};
use ledger::{adjust, prune, read_op, trade};

const PLAYERS_T: TableDefinition<&str, &[u8]> = TableDefinition::new(PLAYERS);
const ROOMS_T: TableDefinition<&str, &[u8]> = TableDefinition::new(ROOMS);
const TRADES_T: TableDefinition<&str, &[u8]> = TableDefinition::new(TRADES);
const OPS_T: TableDefinition<&str, &[u8]> = TableDefinition::new(OPS);

/// The file inside `store.embedded.dir`.
pub const FILE_NAME: &str = "tessera.redb";

enum Db {
    Writer(Database),
    Reader(ReadOnlyDatabase),
}

impl Db {
    fn read(&self) -> Result<ReadTransaction, StoreError> {
        match self {
            Db::Writer(db) => db.begin_read(),
            Db::Reader(db) => db.begin_read(),
        }
        .map_err(backend)
    }

    fn write(&self) -> Result<WriteTransaction, StoreError> {
        match self {
            Db::Writer(db) => db.begin_write().map_err(backend),
            Db::Reader(_) => Err(StoreError::Backend(
                "this embedded store handle is read-only".into(),
            )),
        }
    }
}

pub struct EmbeddedStore {
    db: Arc<Db>,
    path: PathBuf,
}

fn backend(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Backend(format!("redb: {}", e.into()))
}

fn encode(doc: &Document) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(256);
    // Writing a Document into a Vec cannot fail: the bytes go to memory and
    // every Document is valid BSON.
    doc.to_writer(&mut bytes)
        .expect("a BSON document encodes into a Vec");
    bytes
}

fn parse(collection: &'static str, id: &str, bytes: &[u8]) -> Result<Document, model::DecodeError> {
    Document::from_reader(&mut &bytes[..]).map_err(|e| model::DecodeError {
        collection,
        id: id.to_string(),
        reason: format!("not a BSON document: {e}"),
    })
}

fn get(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(table.get(id).map_err(backend)?.map(|g| g.value().to_vec()))
}

fn read_player(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
) -> Result<Option<(PlayerProfile, bool)>, StoreError> {
    let Some(bytes) = get(table, id)? else {
        return Ok(None);
    };
    let decoded = parse(PLAYERS, id, &bytes).and_then(decode_player);
    match decoded {
        Ok(p) => Ok(Some(p)),
        Err(e) => {
            report_bad(&e);
            Err(StoreError::BadDocument(e))
        }
    }
}

fn put(table: &mut Table<&str, &[u8]>, id: &str, doc: &Document) -> Result<(), StoreError> {
    table.insert(id, encode(doc).as_slice()).map_err(backend)?;
    Ok(())
}

impl EmbeddedStore {
    /// Open (or create) the store in `dir` with the default page cache
    /// (`store.embedded.cache_mb`). Fails if another process has it open
    /// for writing.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(&EmbeddedConfig {
            dir: dir.to_path_buf(),
            ..EmbeddedConfig::default()
        })
    }

    /// Open (or create) the store `config` describes: in `config.dir`, with
    /// a page cache of `config.cache_mb`.
    pub fn open_with(config: &EmbeddedConfig) -> Result<EmbeddedStore, StoreError> {
        let dir = config.dir.as_path();
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Backend(format!(
                "cannot create store.embedded.dir {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(FILE_NAME);
        let db = redb::Builder::new()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .set_cache_size(config.cache_bytes())
            .create(&path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        // Create the tables, so that readers never meet a missing one.
        let txn = db.begin_write().map_err(backend)?;
        for table in [
            PLAYERS_T,
            ROOMS_T,
            TRADES_T,
            OPS_T,
            admin::BANS_T,
            admin::AUDIT_T,
        ] {
            txn.open_table(table).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(EmbeddedStore {
            db: Arc::new(Db::Writer(db)),
            path,
        })
    }

    /// A read-only handle on a store another handle (or process) writes.
    pub fn open_read_only(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let path = dir.join(FILE_NAME);
        let db = redb::Builder::new()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .open_read_only(&path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        Ok(EmbeddedStore {
            db: Arc::new(Db::Reader(db)),
            path,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn run<T, E>(
        &self,
        f: impl FnOnce(&Db) -> Result<T, E> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, E>>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let db = self.db.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .unwrap_or_else(|e| {
                    Err(StoreError::Backend(format!("embedded store task failed: {e}")).into())
                })
        }
        .boxed()
    }
}

fn write_batch(db: &Db, batch: Vec<Volatile>) -> Result<BatchReport, StoreError> {
    let txn = db.write()?;
    let mut report = BatchReport::default();
    {
        let mut players = txn.open_table(PLAYERS_T).map_err(backend)?;
        let mut rooms = txn.open_table(ROOMS_T).map_err(backend)?;
        for doc in batch {
            match doc {
                Volatile::Player { id, state, rev } => {
                    // Like Mongo's `$set: {state, state_rev}` under a
                    // revision filter: only the state changes, whatever
                    // else the document holds, and only to a newer one.
                    let spliced = match players.get(id.as_str()).map_err(backend)? {
                        Some(stored) => set_state(stored.value(), &state, rev),
                        None => {
                            let mut d = Document::new();
                            d.insert("_id", id.clone());
                            d.extend(model::player_defaults(&id));
                            d.insert("state", to_bson(&state));
                            d.insert("state_rev", Bson::Int64(rev_i64(rev)));
                            Ok(Some(encode(&d)))
                        }
                    };
                    match spliced {
                        Ok(Some(bytes)) => {
                            players
                                .insert(id.as_str(), bytes.as_slice())
                                .map_err(backend)?;
                        }
                        Ok(None) => metrics::counter!(metric::STALE_SKIPPED).increment(1),
                        Err(reason) => {
                            let e = model::DecodeError {
                                collection: PLAYERS,
                                id: id.clone(),
                                reason,
                            };
                            report_bad(&e);
                            report
                                .rejected
                                .push((VolatileKey::Player(id), e.reason.clone()));
                            continue;
                        }
                    }
                }
                Volatile::Room(room) => match put_room_checked(&mut rooms, &room)? {
                    RoomWrite::Written => {}
                    RoomWrite::Stale => metrics::counter!(metric::STALE_SKIPPED).increment(1),
                    RoomWrite::Fenced(f) => {
                        metrics::counter!(metric::FENCED).increment(1);
                        tracing::warn!(room = %f.room, stored = f.stored, ours = f.ours, "room write fenced: the room has a newer owner");
                        report
                            .rejected
                            .push((VolatileKey::Room(room.map), f.to_string()));
                        continue;
                    }
                },
            }
            report.written += 1;
        }
    }
    txn.commit().map_err(backend)?;
    Ok(report)
}

/// A stored player document with `state` and `state_rev` replaced (appended
/// at the end), or `None` when it already holds `rev` or a newer state.
///
/// The document is copied element by element as raw BSON, never decoded
/// into a [`Document`]: a flush writes every moving player's state, and
/// decoding and re-encoding each whole document was most of a flush's CPU.
/// A document that is not valid BSON is an error (the reason), as a failed
/// parse was.
fn set_state(stored: &[u8], state: &PlayerState, rev: u64) -> Result<Option<Vec<u8>>, String> {
    let bad = |e: bson::raw::Error| format!("not a BSON document: {e}");
    let doc = RawDocument::from_bytes(stored).map_err(bad)?;
    let mut out = RawDocumentBuf::new();
    for element in doc {
        let (key, value) = element.map_err(bad)?;
        match key {
            "state" => {}
            "state_rev" => {
                let have = match value {
                    RawBsonRef::Int64(n) => u64::try_from(n).ok(),
                    RawBsonRef::Int32(n) => u64::try_from(n).ok(),
                    _ => None,
                };
                if have.is_some_and(|have| have >= rev) {
                    return Ok(None);
                }
            }
            _ => out.append_ref(key, value),
        }
    }
    let state = bson::to_raw_document_buf(state).expect("model types serialize to BSON");
    out.append_ref("state", &state);
    out.append("state_rev", rev_i64(rev));
    Ok(Some(out.into_bytes()))
}

/// A revision field of a stored document; none when missing or not a
/// number (such a document is overwritten, as Mongo's `$not: {$gte}` does).
fn rev_of(doc: &Document, field: &str) -> Option<u64> {
    match doc.get(field) {
        Some(Bson::Int64(n)) => u64::try_from(*n).ok(),
        Some(Bson::Int32(n)) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn write_room(db: &Db, room: RoomState) -> Result<bool, StoreError> {
    let txn = db.write()?;
    let outcome = {
        let mut rooms = txn.open_table(ROOMS_T).map_err(backend)?;
        put_room_checked(&mut rooms, &room)?
    };
    match outcome {
        RoomWrite::Written => {
            txn.commit().map_err(backend)?;
            Ok(true)
        }
        RoomWrite::Stale => Ok(false),
        RoomWrite::Fenced(f) => Err(StoreError::Fenced(f)),
    }
}

fn load_or_create(db: &Db, id: String, name: String) -> Result<PlayerProfile, StoreError> {
    if let Some((p, false)) = read_player(&db.read()?.open_table(PLAYERS_T).map_err(backend)?, &id)?
    {
        return Ok(p);
    }
    let txn = db.write()?;
    let profile = {
        let mut players = txn.open_table(PLAYERS_T).map_err(backend)?;
        match read_player(&players, &id)? {
            Some((p, false)) => return Ok(p),
            Some((p, true)) => {
                put(&mut players, &id, &to_document(&p))?;
                p
            }
            None => {
                let p = PlayerProfile::new(&id, &name);
                put(&mut players, &id, &to_document(&p))?;
                p
            }
        }
    };
    txn.commit().map_err(backend)?;
    Ok(profile)
}

impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn prepare(&self) -> StoreFuture<'_, ()> {
        self.ping()
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        self.run(|db| db.read().map(drop))
    }

    fn write_volatile(&self, batch: Vec<Volatile>) -> StoreFuture<'_, BatchReport> {
        self.run(move |db| write_batch(db, batch))
    }

    fn write_room(&self, room: RoomState) -> StoreFuture<'_, bool> {
        self.run(move |db| write_room(db, room))
    }

    fn claim_room(&self, room: String, epoch: u64) -> StoreFuture<'_, u64> {
        self.run(move |db| claim(db, room, epoch))
    }

    fn apply(&self, op: DurableOp) -> BoxFuture<'_, Result<DurableAck, OpError>> {
        self.run(move |db| match op {
            DurableOp::Adjust(op) => adjust(db, op),
            DurableOp::Trade(t) => trade(db, t),
        })
    }

    fn load_or_create_player(&self, id: String, name: String) -> StoreFuture<'_, PlayerProfile> {
        self.run(move |db| load_or_create(db, id, name))
    }

    fn load_player(&self, id: String) -> StoreFuture<'_, Option<PlayerProfile>> {
        self.run(move |db| {
            let txn = db.read()?;
            let players = txn.open_table(PLAYERS_T).map_err(backend)?;
            Ok(read_player(&players, &id)?.map(|(p, _)| p))
        })
    }

    fn load_room(&self, map: String) -> StoreFuture<'_, Option<RoomState>> {
        self.run(move |db| {
            let txn = db.read()?;
            let rooms = txn.open_table(ROOMS_T).map_err(backend)?;
            let Some(bytes) = get(&rooms, &map)? else {
                return Ok(None);
            };
            match parse(ROOMS, &map, &bytes).and_then(decode_room) {
                Ok((room, _)) => Ok(Some(room)),
                Err(e) => {
                    report_bad(&e);
                    Ok(None)
                }
            }
        })
    }

    fn load_rooms(&self) -> StoreFuture<'_, Vec<RoomState>> {
        self.run(move |db| {
            let txn = db.read()?;
            let rooms = txn.open_table(ROOMS_T).map_err(backend)?;
            let mut out = Vec::new();
            for entry in rooms.iter().map_err(backend)? {
                let (key, value) = entry.map_err(backend)?;
                match parse(ROOMS, key.value(), value.value()).and_then(decode_room) {
                    Ok((room, _)) => out.push(room),
                    Err(e) => report_bad(&e),
                }
            }
            Ok(out)
        })
    }

    fn load_trade(&self, id: String) -> StoreFuture<'_, Option<TradeRecord>> {
        self.run(move |db| {
            let txn = db.read()?;
            let trades = txn.open_table(TRADES_T).map_err(backend)?;
            let Some(bytes) = get(&trades, &id)? else {
                return Ok(None);
            };
            parse(TRADES, &id, &bytes)
                .and_then(decode_trade)
                .map(Some)
                .map_err(|e| {
                    report_bad(&e);
                    StoreError::BadDocument(e)
                })
        })
    }

    fn load_op(&self, id: String) -> StoreFuture<'_, Option<OpRecord>> {
        self.run(move |db| {
            let txn = db.read()?;
            let ops = txn.open_table(OPS_T).map_err(backend)?;
            read_op(&ops, &id)
        })
    }

    fn recover_trades(&self, _older_than: Duration) -> StoreFuture<'_, usize> {
        // Trades and ops commit in one transaction: none is ever left
        // half-done.
        async { Ok(0) }.boxed()
    }

    fn prune_ledger(&self, retention: Duration) -> StoreFuture<'_, usize> {
        self.run(move |db| prune(db, retention))
    }

    fn put_raw(&self, collection: &'static str, doc: Document) -> StoreFuture<'_, ()> {
        self.run(move |db| {
            let table = match collection {
                PLAYERS => PLAYERS_T,
                ROOMS => ROOMS_T,
                TRADES => TRADES_T,
                OPS => OPS_T,
                model::BANS => admin::BANS_T,
                model::AUDIT => admin::AUDIT_T,
                other => return Err(StoreError::Backend(format!("no collection {other:?}"))),
            };
            let id = match doc.get("_id") {
                Some(Bson::String(id)) => id.clone(),
                _ => return Err(StoreError::Backend("put_raw needs a string _id".into())),
            };
            let txn = db.write()?;
            {
                let mut t = txn.open_table(table).map_err(backend)?;
                put(&mut t, &id, &doc)?;
            }
            txn.commit().map_err(backend)
        })
    }

    fn put_ban(&self, ban: Ban) -> StoreFuture<'_, ()> {
        self.run(move |db| admin::put_ban(db, ban))
    }

    fn delete_ban(&self, player: String) -> StoreFuture<'_, bool> {
        self.run(move |db| admin::delete_ban(db, player))
    }

    fn load_bans(&self) -> StoreFuture<'_, Vec<Ban>> {
        self.run(admin::load_bans)
    }

    fn append_audit(&self, event: Event) -> StoreFuture<'_, ()> {
        self.run(move |db| admin::append_audit(db, event))
    }

    fn load_audit(&self, limit: usize) -> StoreFuture<'_, Vec<Event>> {
        self.run(move |db| admin::load_audit(db, limit))
    }
}

#[cfg(test)]
mod tests;
