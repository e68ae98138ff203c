//! The epoch fence on redb: a room document's `owner_epoch` decides,
//! inside the caller's write transaction, whether a room write or a
//! durable op the room causes may go through.

use mongodb::bson::{doc, Bson};
use redb::{ReadableTable, Table};

use super::{backend, get, parse, put, rev_of, Db, ROOMS_T};
use crate::store::model::{to_document, Fenced, RoomFence, RoomState, ROOMS, ROOM_SCHEMA};
use crate::store::StoreError;

/// What writing a room document did.
pub(super) enum RoomWrite {
    Written,
    /// The stored document is as new or newer (same owner).
    Stale,
    /// The stored document has a newer owner.
    Fenced(Fenced),
}

/// The stored owner epoch and revision of a room document: 0 and none
/// when there is none, or it is unreadable (then it is overwritten).
fn stored(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    room: &str,
) -> Result<(u64, Option<u64>), StoreError> {
    let Some(bytes) = get(table, room)? else {
        return Ok((0, None));
    };
    let Ok(doc) = parse(ROOMS, room, &bytes) else {
        return Ok((0, None));
    };
    Ok((
        rev_of(&doc, "owner_epoch").unwrap_or(0),
        rev_of(&doc, "rev"),
    ))
}

/// Write `room` under the fence and then the revision rule (see
/// [`crate::store::Store::write_room`]).
pub(super) fn put_room_checked(
    table: &mut Table<&str, &[u8]>,
    room: &RoomState,
) -> Result<RoomWrite, StoreError> {
    let (epoch, rev) = stored(table, &room.map)?;
    if epoch > room.owner_epoch {
        return Ok(RoomWrite::Fenced(Fenced {
            room: room.map.clone(),
            stored: epoch,
            ours: room.owner_epoch,
        }));
    }
    if epoch == room.owner_epoch && rev.is_some_and(|stored| stored >= room.rev) {
        return Ok(RoomWrite::Stale);
    }
    put(table, &room.map, &to_document(room))?;
    Ok(RoomWrite::Written)
}

/// Refuse an op whose room has a newer owner than the op's.
pub(super) fn check(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    fence: Option<&RoomFence>,
) -> Result<(), Fenced> {
    let Some(fence) = fence else {
        return Ok(());
    };
    // A store error reading the room is not a refusal: the op's own
    // transaction meets it again and reports it.
    let (epoch, _) = stored(table, &fence.room).unwrap_or((0, None));
    if epoch > fence.owner_epoch {
        return Err(Fenced {
            room: fence.room.clone(),
            stored: epoch,
            ours: fence.owner_epoch,
        });
    }
    Ok(())
}

/// Raise the stored owner epoch of `room` to `epoch`, never lower it.
pub(super) fn claim(db: &Db, room: String, epoch: u64) -> Result<u64, StoreError> {
    let txn = db.write()?;
    let before = {
        let mut rooms = txn.open_table(ROOMS_T).map_err(backend)?;
        let existing = match get(&rooms, &room)? {
            Some(bytes) => parse(ROOMS, &room, &bytes).ok(),
            None => None,
        };
        let before = existing
            .as_ref()
            .and_then(|d| rev_of(d, "owner_epoch"))
            .unwrap_or(0);
        if before > epoch {
            return Err(StoreError::Fenced(Fenced {
                room,
                stored: before,
                ours: epoch,
            }));
        }
        // A room never stored gets a document holding only its owner: it
        // reads as a new room (no items, no nonce yet).
        let mut doc = existing.unwrap_or_else(|| doc! { "_id": &room, "v": ROOM_SCHEMA });
        doc.insert(
            "owner_epoch",
            Bson::Int64(i64::try_from(epoch).unwrap_or(i64::MAX)),
        );
        put(&mut rooms, &room, &doc)?;
        before
    };
    txn.commit().map_err(backend)?;
    Ok(before)
}
