//! What the admin API sees of the rooms and asks of them: a view of each
//! running room, an operator's restart, and the events the supervisor
//! records (restarts, failures).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use protocol::admin::EventKind;

use super::{RestartReason, RoomSupervisor};
use crate::events::NewEvent;
use crate::ids::RoomId;
use crate::room::{Handover, RoomSnapshot};

/// A running room as the admin API sees it.
pub struct RoomView {
    pub id: RoomId,
    pub members: usize,
    /// Of `members`, those on other shards (cluster mode).
    pub members_remote: usize,
    /// The lease epoch this shard runs the room under (cluster; 0 alone).
    pub epoch: u64,
    pub tick_us: u64,
    pub restarts: u64,
    pub snapshot_age_ms: Option<u64>,
    pub saved_age_ms: Option<u64>,
    pub snapshot: Arc<RoomSnapshot>,
    pub width: f32,
    pub height: f32,
}

impl RoomSupervisor {
    /// Restarts since start, every room and reason.
    pub fn restarts_total(&self) -> u64 {
        self.restarts_total.load(Ordering::Relaxed)
    }

    /// Every running room as the admin API shows it, sorted by id.
    pub fn views(&self) -> Vec<RoomView> {
        let now = self.now_ms();
        let age = |at: u64| (at != 0).then(|| now.saturating_sub(at));
        let restarts = self.restarts.lock().clone();
        let epochs = self.epochs.lock().clone();
        let mut views: Vec<RoomView> = self
            .rooms
            .lock()
            .iter()
            .map(|(id, e)| {
                let def = self.maps.get(id.map().as_ref());
                RoomView {
                    id: id.clone(),
                    members: e.slot.members.load(Ordering::Acquire),
                    members_remote: e.slot.remote_members.load(Ordering::Acquire),
                    epoch: epochs.get(id).copied().unwrap_or(0),
                    tick_us: e.slot.tick_us.load(Ordering::Relaxed),
                    restarts: restarts.get(id).copied().unwrap_or(0),
                    snapshot_age_ms: age(e.slot.snapshot_ms.load(Ordering::Relaxed)),
                    saved_age_ms: age(e.slot.saved_ms.load(Ordering::Relaxed)),
                    snapshot: e.slot.snapshot.lock().clone(),
                    width: def.map_or(0.0, |d| d.width),
                    height: def.map_or(0.0, |d| d.height),
                }
            })
            .collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }

    /// Restart room `id` for an operator, as after a crash but not counted
    /// against its restart intensity: the room takes a snapshot, stops,
    /// and a new incarnation goes on from it (members get a full update
    /// and notice 6001). `false`: no such room runs, or its mailbox is full.
    pub fn restart_for_operator(&self, id: &RoomId) -> bool {
        self.send(id, Handover(RestartReason::Operator)).is_ok()
    }

    pub(super) fn record_event(&self, kind: EventKind, id: &RoomId, detail: String) {
        if let Some(events) = &self.events {
            events.record(NewEvent::plain(kind, id.to_string(), detail));
        }
    }
}
