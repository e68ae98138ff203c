//! Snapshots: a room as it stood after its last tick, membership or
//! ground change, kept in the supervisor's slot so that a crashed or stuck
//! incarnation can be replaced by one that goes on from it.

use std::sync::Arc;
use std::time::Instant;

use protocol::msg::EntityId;

use super::ground::GroundSnapshot;
use super::member::{Encoded, Member, MemberState};
use super::Room;

/// A room as it stood after its last tick, membership or ground change.
#[derive(Clone, Default)]
pub struct RoomSnapshot {
    pub tick: u64,
    pub next_entity: EntityId,
    pub members: Vec<(EntityId, MemberState)>,
    /// Ground items, pick-ups in flight, revision (shared: it changes far
    /// less often than positions).
    pub ground: Arc<GroundSnapshot>,
}

/// Movement alone is snapshotted every this many ticks (100 ms at 20 Hz);
/// joins, leaves and disconnects at once. A restart replays at most this
/// much movement; the players get a full resync either way.
pub(super) const SNAPSHOT_EVERY_TICKS: u64 = 2;

/// How a new incarnation came to be.
pub struct Restored {
    pub snapshot: Arc<RoomSnapshot>,
    /// When the crash was detected, for the time-to-restore metric.
    pub crashed_at: Instant,
    /// A migrated room: when its first tick is due, in step with the
    /// ticks it had on its old owner (`None`: one period after start).
    pub first_tick: Option<Instant>,
}

impl Room {
    /// Take the members of a snapshot back. A member whose session ended its
    /// membership meanwhile (a leave that was lost with the crash) is not
    /// re-attached; one whose connection closed is kept as disconnected.
    pub(super) fn load(&mut self, snapshot: &RoomSnapshot) {
        self.tick = snapshot.tick;
        self.entity_ids.resume_at(snapshot.next_entity);
        for (id, state) in &snapshot.members {
            if !state.link.out.is_member(state.link.epoch) {
                continue;
            }
            let mut state = state.clone();
            if state.link.out.is_closing() && state.disconnected_at.is_none() {
                state.disconnected_at = Some(Instant::now());
            }
            let cell = self.grid.insert(*id, state.x, state.y);
            self.sessions.insert(state.link.session, *id);
            self.members.insert(
                *id,
                Member {
                    name: Arc::from(state.link.identity.name.as_str()),
                    state,
                    cell,
                    pending: Vec::new(),
                    changed: false,
                    unsaved: false,
                    visible: Vec::new(),
                    wire: Encoded::default(),
                },
            );
        }
        if !self.members.is_empty() {
            self.empty_since = None;
        }
        self.count_members();
    }

    /// Every other tick while anyone moves: per member an id, its numbers
    /// and a refcount on its shared link. The previous snapshot's vector is
    /// refilled in place when nobody else holds it (a restore or a
    /// migration in progress does, and then gets a fresh one).
    pub(super) fn snapshot(&mut self) {
        self.moved_since_snapshot = false;
        let members = self.members.iter().map(|(id, m)| (*id, m.state.clone()));
        let mut slot = self.slot.snapshot.lock();
        match Arc::get_mut(&mut slot) {
            Some(snapshot) => {
                snapshot.tick = self.tick;
                snapshot.next_entity = self.entity_ids.next();
                snapshot.members.clear();
                snapshot.members.extend(members);
                snapshot.ground = self.ground_snapshot.clone();
            }
            None => {
                *slot = Arc::new(RoomSnapshot {
                    tick: self.tick,
                    next_entity: self.entity_ids.next(),
                    members: members.collect(),
                    ground: self.ground_snapshot.clone(),
                });
            }
        }
        drop(slot);
        self.slot.mark(&self.slot.snapshot_ms, &self.supervisor);
    }
}
