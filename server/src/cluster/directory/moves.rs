//! Leases moved by a live migration: compare-and-set from the source's
//! `shard:epoch` to the target at epoch + 1 (see `scripts::MOVE`), so a
//! room never has two owners: whichever of the target (taking the room)
//! and the source (taking it back after a failed migration) runs the
//! script first wins, and the other's compare fails.

use std::time::Instant;

use super::scripts::MOVE;
use super::{Directory, DirectoryError, Lease, Result, ShardId};
use crate::ids::RoomId;

impl Directory {
    /// Move `room`'s lease from `from` at `epoch` to this shard, at a new
    /// epoch above it. `Held` (naming the holder now) when the lease is
    /// not `from:epoch` any more; `NotOwner` when nobody holds it.
    pub async fn take_over_room(&self, room: &RoomId, from: &ShardId, epoch: u64) -> Result<Lease> {
        let name = room.to_string();
        let mut script = MOVE.prepare_invoke();
        script
            .key(self.key(&["room", &name]))
            .key(self.key(&["epoch", &name]))
            .key(self.key(&["rooms", from.as_str()]))
            .key(self.key(&["rooms", self.shard().as_str()]))
            .arg(format!("{from}:{epoch}"))
            .arg(self.shard().as_str())
            .arg(self.settings().lease.as_millis() as u64)
            .arg(&name);
        let sent = Instant::now();
        let (moved, value): (i64, String) = self.run("take_over_room", &script).await?;
        if moved != 1 {
            if value.is_empty() {
                return Err(DirectoryError::NotOwner {
                    room: room.clone(),
                    shard: from.clone(),
                });
            }
            let (shard, epoch) = super::rooms::parse_lease(&value)?;
            return Err(DirectoryError::Held {
                room: room.clone(),
                shard,
                epoch,
            });
        }
        self.granted(room, &value, "move", sent)
    }

    /// This shard's lease on `room` at `epoch` moved to another shard (a
    /// migration): stop renewing it, without a lost-lease notice (the room
    /// already stopped here). A lease held at another epoch is kept.
    pub fn forget_moved(&self, room: &RoomId, epoch: u64) {
        let mut held = self.inner.held.lock();
        if held.get(room).is_some_and(|h| h.epoch == epoch) {
            held.remove(room);
        }
        self.held_changed(&held);
    }
}
