//! A room's members: their state (what survives a restart), their
//! pre-encoded update entries, and joining, leaving and saving them.

use std::cell::{self, OnceCell};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use protocol::msg::{Entity, EntityId, Joined, Moved, Notice};
use protocol::{assemble, NoticeCode, ServerMsg};

use super::grid::Cell;
use super::messages::{JoinError, JoinOk, JoinRoom, MemberLink};
use super::view::encode_frame;
use super::Room;
use crate::ids::SessionId;
use crate::metrics as m;
use crate::store::{PlayerState, Stats};

/// The part of a member that survives a restart.
#[derive(Clone)]
pub struct MemberState {
    /// Shared with the room's snapshots: a snapshot (every other tick) is
    /// then plain numbers and a refcount per member, where cloning the
    /// link itself meant three `Arc`s and an allocating actix `Recipient`.
    /// Never changed in place: a takeover puts in a new one.
    pub link: Arc<MemberLink>,
    pub x: f32,
    pub y: f32,
    pub dir: (f32, f32),
    /// Last input applied.
    pub seq: u32,
    /// When the connection went away; the seat is held until the grace
    /// period runs out.
    pub disconnected_at: Option<Instant>,
    /// The seat came with a live migration and waits for its shard to
    /// re-join it: that join goes on quietly (no `joined`, no notice, the
    /// direction and view kept), as if the room had never moved.
    pub migrated: bool,
}

pub(super) struct Member {
    pub(super) state: MemberState,
    pub(super) name: Arc<str>,
    pub(super) cell: Cell,
    pub(super) pending: Vec<(u32, f32, f32)>,
    /// Moved or had an input applied this tick.
    pub(super) changed: bool,
    /// Moved since its position was last handed to the persister.
    pub(super) unsaved: bool,
    /// What this member saw at the end of the last tick, ascending ids.
    pub(super) visible: Vec<EntityId>,
    /// Its entries of `update.moved` and `update.entered` as of its last
    /// change, encoded once for every member that sees it.
    pub(super) wire: Encoded,
}

/// A member's pre-encoded update entries (see [`protocol::assemble`]).
/// The `moved` entry is encoded at every change, since everyone who sees
/// the member needs it; the `entered` entry only when someone's view
/// takes the member in that tick, which is rare once players have met
/// (it was 2 % of a loaded shard's CPU when encoded at every move).
#[derive(Default)]
pub(super) struct Encoded {
    pub(super) moved: Vec<u8>,
    /// Encoded on first use after a change, while the room's members are
    /// borrowed shared (the tick's view pass).
    entity: OnceCell<Vec<u8>>,
    /// The buffer of the last `entity`, reused by the next encoding.
    spare: cell::Cell<Vec<u8>>,
}

impl Member {
    pub(super) fn entity(&self, id: EntityId) -> Entity {
        Entity {
            id,
            name: self.name.to_string(),
            x: self.state.x,
            y: self.state.y,
            seq: self.state.seq,
        }
    }

    pub(super) fn moved(&self, id: EntityId) -> Moved {
        Moved {
            id,
            x: self.state.x,
            y: self.state.y,
            seq: self.state.seq,
        }
    }

    pub(super) fn connected(&self) -> bool {
        self.state.disconnected_at.is_none()
    }

    /// Re-encode its update entries after a change (or when never encoded);
    /// the `entered` one waits until it is asked for ([`Member::entity_entry`]).
    pub(super) fn encode(&mut self, id: EntityId) {
        let moved = self.moved(id);
        let wire = &mut self.wire;
        wire.moved.clear();
        assemble::encode_moved(&moved, &mut wire.moved);
        if let Some(old) = wire.entity.take() {
            wire.spare.set(old);
        }
    }

    /// Its `update.entered` entry as of its last change, encoded now if
    /// this is the first time it is asked for since.
    pub(super) fn entity_entry(&self, id: EntityId) -> &[u8] {
        self.wire.entity.get_or_init(|| {
            let mut out = self.wire.spare.take();
            out.clear();
            let entity = assemble::EntityRef {
                id,
                name: &self.name,
                x: self.state.x,
                y: self.state.y,
                seq: self.state.seq,
            };
            assemble::encode_entity_ref(&entity, &mut out);
            out
        })
    }

    /// The volatile state the persister keeps for this player.
    pub(super) fn saved_state(&self, map: &str) -> PlayerState {
        let (dx, dy) = self.state.dir;
        PlayerState {
            map: map.to_string(),
            x: self.state.x,
            y: self.state.y,
            facing: if dx == 0.0 && dy == 0.0 {
                0.0
            } else {
                dy.atan2(dx)
            },
            stats: Stats::default(),
        }
    }
}

impl Room {
    pub(super) fn remove(&mut self, session: SessionId) -> Option<Member> {
        let id = self.sessions.remove(&session)?;
        let member = self.members.remove(&id)?;
        self.grid.remove(id, member.cell);
        self.count_members();
        self.dirty = true;
        self.save(&member);
        self.supervisor.persister().request_flush();
        if self.members.is_empty() {
            self.empty_since = Some(Instant::now());
        }
        Some(member)
    }

    /// Tell the supervisor how many members (held seats included) the room
    /// has, for placing `instances = "auto"` joins.
    pub(super) fn count_members(&self) {
        self.slot
            .members
            .store(self.members.len(), Ordering::Release);
        let remote = self
            .members
            .values()
            .filter(|m| m.state.link.remote.is_some())
            .count();
        self.slot.remote_members.store(remote, Ordering::Release);
        let local = self.members.len() - remote;
        for (place, n) in [("local", local), ("remote", remote)] {
            metrics::gauge!(
                m::ROOM_MEMBERS,
                m::room_labels(&self.id, &[("where", place)])
            )
            .set(n as f64);
        }
    }

    pub(super) fn member_of(&mut self, session: SessionId) -> Option<&mut Member> {
        let id = self.sessions.get(&session)?;
        self.members.get_mut(id)
    }

    /// Hand a member's position to the persister (write-behind, coalesced).
    pub(super) fn save(&self, member: &Member) {
        self.slot.mark(&self.slot.saved_ms, &self.supervisor);
        self.supervisor.persister().player_state(
            &member.state.link.identity.player_id,
            member.saved_state(&self.map.name),
        );
    }

    /// Hand every member that moved since its last save to the persister.
    pub(super) fn save_moved(&mut self) {
        for member in self.members.values() {
            if member.unsaved {
                self.save(member);
            }
        }
        for member in self.members.values_mut() {
            member.unsaved = false;
        }
    }

    /// Drop seats whose grace period ran out.
    pub(super) fn expire_seats(&mut self) {
        let grace = self.supervisor.resume_grace();
        let expired: Vec<SessionId> = self
            .members
            .values()
            .filter(|m| {
                m.state
                    .disconnected_at
                    .is_some_and(|t| t.elapsed() >= grace)
            })
            .map(|m| m.state.link.session)
            .collect();
        for session in expired {
            self.remove(session);
        }
    }

    pub(super) fn join(&mut self, msg: JoinRoom) -> Result<JoinOk, JoinError> {
        // A held seat of the resumed session, or of this session (joining
        // again), is taken over rather than duplicated. A resume that names
        // no seat here (the player dropped on another shard: session ids
        // are per shard) takes over the seat held for the player's id.
        let player = &msg.link.identity.player_id;
        let seat = msg
            .resume
            .and_then(|old| self.sessions.get(&old).copied().map(|id| (old, id)))
            .or_else(|| {
                msg.resume?;
                self.members
                    .iter()
                    .find(|(_, m)| m.state.link.identity.player_id == *player)
                    .map(|(id, m)| (m.state.link.session, *id))
            });
        if let Some((old, id)) = seat {
            self.sessions.remove(&old);
            self.sessions.insert(msg.link.session, id);
            let member = self
                .members
                .get_mut(&id)
                .expect("sessions and members hold the same entities");
            let migrated = std::mem::take(&mut member.state.migrated);
            if migrated {
                // Inputs that reached the old owner during the move wait
                // in the seat's own queue: applied first, in order.
                member.state.link.inputs.drain_into(&mut member.pending);
            }
            // The seat's entity and identity stay; the session's ends are
            // the new one's.
            member.state.link = Arc::new(MemberLink {
                identity: member.state.link.identity.clone(),
                ..msg.link
            });
            member.state.disconnected_at = None;
            if migrated {
                let (x, y) = (member.state.x, member.state.y);
                let mut view = Vec::new();
                self.grid.query(x, y, self.map.view_radius, &mut view);
                if let Some(member) = self.members.get_mut(&id) {
                    member.visible = view;
                }
                self.snapshot();
                return Ok(JoinOk {
                    entity: id,
                    resumed: true,
                });
            }
            member.state.dir = (0.0, 0.0);
            // A session joining the map it stands in gets `joined` again,
            // with no notice: nothing was restored.
            let notice = (old != msg.link.session).then_some(NoticeCode::SeatRestored);
            self.send_joined(id, notice);
            self.snapshot();
            return Ok(JoinOk {
                entity: id,
                resumed: true,
            });
        }
        if msg.seat_only {
            return Err(JoinError::SeatGone);
        }
        let session = msg.link.session;
        self.remove(session);
        if self.members.len() >= self.map.max_players {
            return Err(JoinError::Full);
        }
        let members = &self.members;
        let id = self.entity_ids.allocate(|id| members.contains_key(&id));
        let (x, y) = match msg.spawn_at {
            Some((x, y)) if x.is_finite() && y.is_finite() => {
                (x.clamp(0.0, self.map.width), y.clamp(0.0, self.map.height))
            }
            _ => self.spawn_point(),
        };
        let cell = self.grid.insert(id, x, y);
        let member = Member {
            name: Arc::from(msg.link.identity.name.as_str()),
            state: MemberState {
                link: Arc::new(msg.link),
                x,
                y,
                dir: (0.0, 0.0),
                seq: 0,
                disconnected_at: None,
                migrated: false,
            },
            cell,
            pending: Vec::new(),
            changed: false,
            unsaved: true,
            visible: Vec::new(),
            wire: Encoded::default(),
        };
        self.members.insert(id, member);
        self.sessions.insert(session, id);
        self.count_members();
        self.empty_since = None;
        self.dirty = true;
        self.send_joined(id, None);
        self.snapshot();
        tracing::debug!(room = %self.id, entity = id, session, "joined");
        Ok(JoinOk {
            entity: id,
            resumed: false,
        })
    }

    /// Send `joined` (everything in view) to member `id`, and a notice.
    pub(super) fn send_joined(&mut self, id: EntityId, notice: Option<NoticeCode>) {
        let mut view = Vec::new();
        let me = &self.members[&id];
        self.grid
            .query(me.state.x, me.state.y, self.map.view_radius, &mut view);
        let joined = Joined {
            map: self.info.clone(),
            you: id,
            tick: self.tick,
            entities: view.iter().map(|e| self.members[e].entity(*e)).collect(),
            items: self.ground.wire_items(),
            instance: self.id.instance(),
        };
        let frame = encode_frame(&ServerMsg::Joined(joined));
        let me = self
            .members
            .get_mut(&id)
            .expect("send_joined is called for a present member");
        me.visible = view;
        me.state.link.push_reliable(frame);
        if let Some(code) = notice {
            let text = format!("back in {}", self.map.name);
            let frame = encode_frame(&ServerMsg::Notice(Notice::new(code, text)));
            me.state.link.push_reliable(frame);
        }
    }
}
