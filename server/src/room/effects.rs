//! The room carries out what the [`Ground`](super::ground) decides: each
//! [`Effect`] becomes an answer, a broadcast, a timer or a store call whose
//! result comes back behind the panic boundary ([`Room::guarded`]), under
//! the fault point of its step (`pickup_taken`, `pickup_credited`,
//! `pickup_retry`), and is fed to the next ground transition.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use protocol::msg::{Done, ErrorMsg};
use protocol::{ErrorCode, ServerMsg};

use super::ground::{items_frame, Effect, PickUp, Picker, Write};
use super::view::encode_frame;
use super::Room;
use crate::ids::SessionId;
use crate::metrics as m;
use crate::store::{DurableError, DurableOp, RoomFence, RoomState};

impl Room {
    /// Start the ground: from a restart's snapshot, or by loading the
    /// room's document from the store.
    pub(super) fn start_ground(
        &mut self,
        restored: Option<&super::GroundSnapshot>,
        ctx: &mut Context<Self>,
    ) {
        let effects = self.ground.start(&self.map.items, Instant::now(), restored);
        self.apply(effects, ctx);
    }

    /// After a restart, members see the whole ground again (anything they
    /// missed while the room was down).
    pub(super) fn resync_ground(&mut self, ctx: &mut Context<Self>) {
        let effects = self.ground.resync();
        self.apply(effects, ctx);
    }

    /// Run due spawners (at most one item each per tick).
    pub(super) fn spawn_items(&mut self, ctx: &mut Context<Self>) {
        let size = (self.map.width, self.map.height);
        let effects = self
            .ground
            .spawn_items(&self.map.items, size, Instant::now());
        self.apply(effects, ctx);
    }

    /// Hand the room document to the persister (room stop).
    pub(super) fn save_ground(&self) {
        if let Some(doc) = self.ground.document_at_stop(&self.label) {
            self.supervisor.persister().room_state(doc);
        }
    }

    /// The ground changed and its revision was bumped (by a ground
    /// transition): into the snapshot before anyone hears of it (so a
    /// restart never forgets what members were told). Returns the
    /// document to write.
    fn ground_published(&mut self) -> RoomState {
        self.ground_snapshot = Arc::new(self.ground.snapshot());
        self.snapshot();
        self.ground.document(&self.label)
    }

    pub(super) fn pick_up(&mut self, msg: PickUp, ctx: &mut Context<Self>) {
        let Some(&entity) = self.sessions.get(&msg.session) else {
            return;
        };
        let member = &self.members[&entity];
        let picker = Picker {
            player: member.state.link.identity.player_id.clone(),
            at: (member.state.x, member.state.y),
            waiter: (msg.session, msg.req),
        };
        let effects = self
            .ground
            .pick_up(msg.item, picker, self.map.pickup_radius, &self.label);
        self.apply(effects, ctx);
    }

    /// Carry out `effects`, in order.
    pub(super) fn apply(&mut self, effects: Vec<Effect>, ctx: &mut Context<Self>) {
        for effect in effects {
            match effect {
                Effect::Store(write) => {
                    let doc = self.ground_published();
                    self.slot.mark(&self.slot.saved_ms, &self.supervisor);
                    match write {
                        Write::Behind => self.supervisor.persister().room_state(doc),
                        Write::Secure => {
                            let write = self.supervisor.persister().durable_room(doc);
                            ctx.spawn(write.into_actor(self).map(|written, room, ctx| {
                                room.guarded(ctx, "ground_secured", |room, ctx| {
                                    let next = room.ground.on_secured(written);
                                    room.apply(next, ctx);
                                });
                            }));
                        }
                        Write::Through { taken } => {
                            let write = self.supervisor.persister().durable_room(doc);
                            ctx.spawn(write.into_actor(self).map(move |written, room, ctx| {
                                room.guarded(ctx, "pickup_taken", |room, ctx| {
                                    if let Err(e) = &written {
                                        if room.ground.is_pending(taken) {
                                            tracing::warn!(room = %room.id, item = taken, error = %e, "pick-up not stored; item back on the ground");
                                        }
                                    }
                                    let next = room.ground.on_taken(taken, written);
                                    room.apply(next, ctx);
                                });
                            }));
                        }
                    }
                }
                Effect::Items { added, removed } => {
                    self.to_all_members(items_frame(added, removed))
                }
                Effect::Credit { item, mut op } => {
                    // The credit is refused if the room has a newer owner.
                    if let DurableOp::Adjust(adjust) = &mut op {
                        adjust.fence = Some(RoomFence {
                            room: self.label.to_string(),
                            owner_epoch: self.ground.owner_epoch(),
                        });
                    }
                    let applied = self.supervisor.persister().durable(op);
                    ctx.spawn(applied.into_actor(self).map(move |result, room, ctx| {
                        room.guarded(ctx, "pickup_credited", |room, ctx| {
                            if let Err(e @ (DurableError::Rejected(_) | DurableError::Invalid(_))) =
                                &result
                            {
                                if room.ground.is_pending(item) {
                                    tracing::warn!(room = %room.id, item, error = %e, "pick-up credit refused; item back on the ground");
                                }
                            }
                            let next = room.ground.on_credited(item, result);
                            room.apply(next, ctx);
                        });
                    }));
                }
                Effect::Retry { item, delay, error } => {
                    tracing::warn!(room = %self.id, item, error = %error, retry_in_ms = delay.as_millis() as u64, "pick-up credit not confirmed; retrying with the same op id");
                    ctx.run_later(delay, move |room, ctx| {
                        room.guarded(ctx, "pickup_retry", |room, ctx| {
                            let next = room.ground.on_retry(item);
                            room.apply(next, ctx);
                        });
                    });
                }
                Effect::Load => {
                    let load = self.supervisor.persister().load_room(&self.label);
                    ctx.spawn(load.into_actor(self).map(|loaded, room, ctx| {
                        room.guarded(ctx, "ground_loaded", |room, ctx| {
                            let next = room.ground.on_loaded(loaded, &room.label);
                            room.apply(next, ctx);
                        });
                    }));
                }
                Effect::LoadLater { delay, error } => {
                    tracing::warn!(room = %self.id, error = %error, retry_in_ms = delay.as_millis() as u64, "ground items not loaded; retrying");
                    ctx.run_later(delay, |room, ctx| {
                        room.guarded(ctx, "ground_load", |room, ctx| {
                            room.apply(vec![Effect::Load], ctx)
                        });
                    });
                }
                Effect::Loaded {
                    items,
                    pending,
                    rev,
                } => {
                    self.ground_snapshot = Arc::new(self.ground.snapshot());
                    self.snapshot();
                    tracing::info!(room = %self.id, items, pending, rev, "ground items loaded");
                }
                Effect::Restored => {
                    self.ground_snapshot = Arc::new(self.ground.snapshot());
                }
                Effect::SecureLater { delay, error } => {
                    tracing::warn!(room = %self.id, error = %error, retry_in_ms = delay.as_millis() as u64, "restored ground not stored; retrying before re-driving pick-ups");
                    ctx.run_later(delay, |room, ctx| {
                        room.guarded(ctx, "ground_secure", |room, ctx| {
                            let next = room.ground.secure();
                            room.apply(next, ctx);
                        });
                    });
                }
                Effect::Redrive { pending } => {
                    tracing::info!(room = %self.id, pending, "re-driving pick-ups in flight");
                }
                Effect::Error {
                    session,
                    req,
                    code,
                    text,
                } => self.answer_error(session, req, code, text),
                Effect::Done {
                    waiter,
                    player,
                    inventory,
                } => self.tell_picker(waiter, &player, inventory),
            }
        }
    }

    /// Answer request `req` of the member of `session` with an error, if
    /// the member is still here.
    fn answer_error(&self, session: SessionId, req: u32, code: ErrorCode, text: String) {
        let Some(member) = self
            .sessions
            .get(&session)
            .and_then(|id| self.members.get(id))
        else {
            return;
        };
        metrics::counter!(m::CLIENT_ERRORS, "code" => code.name()).increment(1);
        let frame = encode_frame(&ServerMsg::Error(ErrorMsg::answering(req, code, text)));
        member.state.link.push_reliable(frame);
    }

    /// `done` and the new inventory to whoever waits; without a waiter, the
    /// picker's member (if here) gets the inventory alone.
    fn tell_picker(
        &self,
        waiter: Option<(SessionId, u32)>,
        player: &str,
        inventory: protocol::msg::Inventory,
    ) {
        let member = match waiter {
            Some((session, _)) => self
                .sessions
                .get(&session)
                .and_then(|e| self.members.get(e)),
            None => self
                .members
                .values()
                .find(|m| m.state.link.identity.player_id == player),
        };
        let Some(member) = member else {
            return;
        };
        let link = &member.state.link;
        if let Some((_, req)) = waiter {
            let done = encode_frame(&ServerMsg::Done(Done {
                req,
                inventory: inventory.clone(),
            }));
            link.push_reliable(done);
        }
        link.push_reliable(encode_frame(&ServerMsg::Inventory(inventory)));
    }
}
