//! The epoch fence on MongoDB: room writes carry it in their filter (one
//! conditional single-document write, so no older owner can slip in
//! between check and write); a durable op the room causes is checked
//! against the room document first.
//!
//! The op check is a read before the op's own writes, not one atomic step
//! (Mongo without a replica set has no multi-document transactions): an
//! owner change that lands between the two lets that one op through. That
//! op is a pick-up's credit, and the item's removal that precedes it was a
//! room write that did pass the fence, so the credit is owed; the next op
//! of the fenced owner is refused.

use mongodb::bson::{doc, Bson, Document};

use super::{classify, is_duplicate_key, MongoStore};
use crate::store::model::{rev_i64, Fenced, RoomFence, RoomState, ROOMS, ROOM_SCHEMA};
use crate::store::StoreError;

/// The filter of a room write (write-through or behind, always an upsert):
/// the document if its owner epoch is older than ours, or the same and
/// its `rev` older. A stored document that is newer fails the upsert's
/// insert with a duplicate `_id`; [`MongoStore::stale_or_fenced`] tells
/// which. A missing `owner_epoch` (documents from before the fence) reads
/// as 0; a missing or non-numeric `rev` is overwritten, as before.
pub(super) fn room_filter(room: &RoomState) -> Document {
    let epoch = rev_i64(room.owner_epoch);
    let rev = doc! { "$not": { "$gte": rev_i64(room.rev) } };
    if epoch == 0 {
        return doc! {
            "_id": &room.map,
            "owner_epoch": { "$not": { "$gt": 0_i64 } },
            "rev": rev,
        };
    }
    doc! {
        "_id": &room.map,
        "$or": [
            { "owner_epoch": epoch, "rev": rev },
            { "owner_epoch": { "$not": { "$gte": epoch } } },
        ],
    }
}

fn owner_epoch(doc: &Document) -> u64 {
    match doc.get("owner_epoch") {
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        _ => 0,
    }
}

impl MongoStore {
    /// The stored owner epoch of `room` (0: none stored).
    async fn stored_owner_epoch(&self, room: &str) -> Result<u64, StoreError> {
        Ok(self
            .find_raw(ROOMS, room)
            .await?
            .map_or(0, |d| owner_epoch(&d)))
    }

    /// A room write matched nothing and met a stored document: newer by
    /// owner (fenced) or by revision (stale, `Ok`).
    pub(super) async fn stale_or_fenced(&self, room: &RoomState) -> Result<(), Fenced> {
        let stored = self.stored_owner_epoch(&room.map).await.unwrap_or(0);
        if stored > room.owner_epoch {
            return Err(Fenced {
                room: room.map.clone(),
                stored,
                ours: room.owner_epoch,
            });
        }
        Ok(())
    }

    /// Refuse an op whose room has a newer owner (see the module doc).
    pub(super) async fn check_fence(&self, fence: Option<&RoomFence>) -> Result<(), StoreError> {
        let Some(fence) = fence else {
            return Ok(());
        };
        let stored = self.stored_owner_epoch(&fence.room).await?;
        if stored > fence.owner_epoch {
            return Err(StoreError::Fenced(Fenced {
                room: fence.room.clone(),
                stored,
                ours: fence.owner_epoch,
            }));
        }
        Ok(())
    }

    /// [`crate::store::Store::claim_room`]: raise, never lower.
    pub(super) async fn claim(&self, room: String, epoch: u64) -> Result<u64, StoreError> {
        let before = self.stored_owner_epoch(&room).await?;
        let e = rev_i64(epoch);
        let fenced = |stored| {
            StoreError::Fenced(Fenced {
                room: room.clone(),
                stored,
                ours: epoch,
            })
        };
        if before > epoch {
            return Err(fenced(before));
        }
        let result = self
            .db
            .collection::<Document>(ROOMS)
            .update_one(
                doc! { "_id": &room, "owner_epoch": { "$not": { "$gt": e } } },
                doc! {
                    "$set": { "owner_epoch": e },
                    "$setOnInsert": { "v": ROOM_SCHEMA },
                },
            )
            .upsert(true)
            .await;
        match result {
            Ok(_) => Ok(before),
            Err(err) if is_duplicate_key(&err) => {
                Err(fenced(self.stored_owner_epoch(&room).await?))
            }
            Err(err) => Err(classify(err)),
        }
    }
}
