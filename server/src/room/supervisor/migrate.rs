//! The supervisor's part in a live migration (`room::cluster::migrate`):
//! pausing a room (its actor stops at a tick boundary and hands over its
//! snapshot; a room that does not answer in time is given up and its last
//! snapshot used), then either forgetting it (it runs on the target now)
//! or starting it again from the same snapshot (the move failed); and, on
//! the target, starting a room from a migrated snapshot.
//!
//! While a room is paused it is in `migrating`: `start` and `restart`
//! leave it alone, so it never runs here and on the target at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::RoomSupervisor;
use crate::ids::RoomId;
use crate::room::{MigrateOut, Restored, RoomSnapshot};

/// A paused room.
pub struct Paused {
    pub snapshot: Arc<RoomSnapshot>,
    /// The room did not answer the pause in time: `snapshot` is the last
    /// one it took (up to a few ticks old), and its incarnation is retired.
    pub stalled: bool,
    /// When its next tick was due (not known for a stalled room).
    pub next_tick: Option<Instant>,
}

/// Why a room could not be paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseError {
    /// It does not run here.
    NotRunning,
    /// It is being migrated already.
    Busy,
}

impl RoomSupervisor {
    /// Room `id` is paused for a live migration right now.
    pub fn is_migrating(&self, id: &RoomId) -> bool {
        self.migrating.lock().contains(id)
    }

    /// Pause room `id` for a migration. Its actor snapshots itself and
    /// stops between two ticks; one that does not answer within `wait`
    /// (stuck in a handler) is retired and its last snapshot is used.
    pub async fn pause_for_migration(
        self: &Arc<Self>,
        id: &RoomId,
        wait: Duration,
    ) -> Result<Paused, PauseError> {
        let (addr, slot) = {
            let rooms = self.rooms.lock();
            let entry = rooms.get(id).ok_or(PauseError::NotRunning)?;
            if !self.migrating.lock().insert(id.clone()) {
                return Err(PauseError::Busy);
            }
            (entry.addr.clone(), entry.slot.clone())
        };
        match tokio::time::timeout(wait, addr.send(MigrateOut)).await {
            Ok(Ok(Some((snapshot, next_tick)))) => Ok(Paused {
                snapshot,
                stalled: false,
                next_tick: Some(next_tick),
            }),
            // Stuck (no answer in time), or it crashed on the way (its
            // restart was refused above): the last snapshot it took.
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                slot.retired.store(true, Ordering::Release);
                let snapshot = slot.snapshot.lock().clone();
                tracing::warn!(room = %id, "room did not answer the pause: migrating its last snapshot");
                Ok(Paused {
                    snapshot,
                    stalled: true,
                    next_tick: None,
                })
            }
        }
    }

    /// Room `id` runs on another shard now: forgotten here, its lease
    /// neither released nor renewed (the target holds it).
    pub fn migrated_away(&self, id: &RoomId) {
        self.rooms.lock().remove(id);
        self.epochs.lock().remove(id);
        self.history.lock().remove(id);
        self.migrating.lock().remove(id);
    }

    /// The migration of room `id` failed: it goes on here from `snapshot`
    /// under lease epoch `epoch` (members get a full update and notice
    /// 6001, as after a restart).
    pub fn resume_after_migration(
        self: &Arc<Self>,
        id: &RoomId,
        snapshot: Arc<RoomSnapshot>,
        epoch: u64,
    ) {
        self.migrating.lock().remove(id);
        let Some(def) = self.maps.get(id.map().as_ref()).cloned() else {
            return;
        };
        self.set_epoch(id, epoch);
        let restored = Restored {
            snapshot,
            crashed_at: Instant::now(),
            first_tick: None,
        };
        let mut rooms = self.rooms.lock();
        if let Some(old) = rooms.get(id) {
            old.slot.retired.store(true, Ordering::Release);
        }
        let entry = self.start_incarnation(id.clone(), def, Some(restored), 0, None);
        rooms.insert(id.clone(), entry);
    }

    /// The migration of room `id` failed and it is not ours any more (the
    /// lease moved on regardless): forgotten here, as after a move.
    pub fn abandon_migration(&self, id: &RoomId) {
        self.migrated_away(id);
    }

    /// Target side: run room `id` from a migrated `snapshot` under lease
    /// epoch `epoch`. False when the map does not exist here or the room
    /// runs here already.
    pub fn start_migrated(
        self: &Arc<Self>,
        id: &RoomId,
        snapshot: Arc<RoomSnapshot>,
        epoch: u64,
        first_tick: Option<Instant>,
    ) -> bool {
        let Some(def) = self.maps.get(id.map().as_ref()).cloned() else {
            return false;
        };
        let mut rooms = self.rooms.lock();
        if rooms.get(id).is_some_and(|e| e.addr.connected()) || self.is_migrating(id) {
            return false;
        }
        self.set_epoch(id, epoch);
        let restored = Restored {
            snapshot,
            crashed_at: Instant::now(),
            first_tick,
        };
        let entry = self.start_incarnation(id.clone(), def, Some(restored), 0, None);
        rooms.insert(id.clone(), entry);
        true
    }

    /// Whether room `id` runs here now (a running incarnation).
    pub fn runs(&self, id: &RoomId) -> bool {
        self.rooms
            .lock()
            .get(id)
            .is_some_and(|e| e.addr.connected())
    }
}
