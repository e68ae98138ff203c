//! A room's snapshot to and from its `/tessera/migrate/1` form: members
//! keep their entity, position, direction and last input; their links
//! (sessions, queues) stay behind on the source, so the target seats each
//! member as a held, migrated seat that its shard re-joins quietly.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use protocol::peer::migrate::{MovingGround, MovingItem, MovingMember, MovingPickup, RoomState};

use crate::auth::Identity;
use crate::outbound::Outbound;
use crate::room::{GroundSnapshot, Inputs, MemberLink, MemberState, RoomEvent, RoomSnapshot};
use crate::store::{GroundItem, PendingPickup};

/// A snapshot as it crosses to the target. Inputs of remote members that
/// reached this shard during the pause are carried (and left in their
/// queues too, should the room resume here); local members' inputs stay
/// in their queues, which this shard's link to the target sends on.
pub(super) fn to_wire(snapshot: &RoomSnapshot, next_tick: Option<Instant>) -> RoomState {
    let mut pending = Vec::new();
    let members = snapshot
        .members
        .iter()
        .map(|(id, m)| {
            pending.clear();
            if m.link.remote.is_some() {
                m.link.inputs.drain_into(&mut pending);
                for &(seq, dx, dy) in &pending {
                    m.link.inputs.push(seq, dx, dy);
                }
            }
            MovingMember {
                entity: *id,
                player: m.link.identity.player_id.clone(),
                name: m.link.identity.name.clone(),
                x: m.x,
                y: m.y,
                dir: [m.dir.0, m.dir.1],
                seq: m.seq,
                held: m.disconnected_at.is_some(),
                pending: pending.clone(),
            }
        })
        .collect();
    let g = &snapshot.ground;
    RoomState {
        tick: snapshot.tick,
        next_tick_us: next_tick.map_or(0, |t| {
            (t.saturating_duration_since(Instant::now()).as_micros() as u64).max(1)
        }),
        next_entity: snapshot.next_entity,
        members,
        ground: MovingGround {
            loaded: g.loaded,
            rev: g.rev,
            next_item: g.next_item,
            epoch: g.epoch.clone(),
            owner_epoch: g.owner_epoch,
            items: g.items.iter().map(item_to_wire).collect(),
            pending: g
                .pending
                .iter()
                .map(|p| MovingPickup {
                    op_id: p.op_id.clone(),
                    player: p.player.clone(),
                    item: item_to_wire(&p.item),
                })
                .collect(),
        },
    }
}

fn item_to_wire(i: &GroundItem) -> MovingItem {
    MovingItem {
        id: i.id,
        kind: i.kind.clone(),
        count: i.count,
        x: i.x,
        y: i.y,
    }
}

fn item_from_wire(i: MovingItem) -> GroundItem {
    GroundItem {
        id: i.id,
        kind: i.kind,
        count: i.count,
        x: i.x,
        y: i.y,
    }
}

/// Where a migrated seat's room events go until its shard re-joins it:
/// nowhere (nobody is connected to it here yet).
struct Unclaimed;

impl Actor for Unclaimed {
    type Context = Context<Self>;
}

impl Handler<RoomEvent> for Unclaimed {
    type Result = ();

    fn handle(&mut self, _: RoomEvent, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// The target's snapshot of a migrated room: every member a held seat
/// (its shard re-joins it), with the inputs that waited during the move
/// in its queue. `first_session` numbers the seats (owner-local ids).
pub(super) fn from_wire(
    state: RoomState,
    input_queue: usize,
    mut next_session: impl FnMut() -> u64,
) -> RoomSnapshot {
    let events = Unclaimed.start().recipient::<RoomEvent>();
    let now = Instant::now();
    let members = state
        .members
        .into_iter()
        .map(|m| {
            let inputs = Arc::new(Inputs::new(input_queue));
            for (seq, dx, dy) in m.pending {
                inputs.push(seq, dx, dy);
            }
            let out = Outbound::new(0);
            let epoch = out.begin_room();
            let link = MemberLink {
                session: next_session(),
                identity: Arc::new(Identity {
                    player_id: m.player,
                    name: m.name,
                }),
                out,
                inputs,
                epoch,
                events: events.clone(),
                remote: None,
            };
            let state = MemberState {
                link: Arc::new(link),
                x: m.x,
                y: m.y,
                dir: if m.held {
                    (0.0, 0.0)
                } else {
                    (m.dir[0], m.dir[1])
                },
                seq: m.seq,
                disconnected_at: Some(now),
                migrated: !m.held,
            };
            (m.entity, state)
        })
        .collect();
    let g = state.ground;
    RoomSnapshot {
        tick: state.tick,
        next_entity: state.next_entity,
        members,
        ground: Arc::new(GroundSnapshot {
            loaded: g.loaded,
            rev: g.rev,
            next_item: g.next_item,
            epoch: g.epoch,
            owner_epoch: g.owner_epoch,
            items: g.items.into_iter().map(item_from_wire).collect(),
            pending: g
                .pending
                .into_iter()
                .map(|p| PendingPickup {
                    op_id: p.op_id,
                    player: p.player,
                    item: item_from_wire(p.item),
                })
                .collect(),
        }),
    }
}
