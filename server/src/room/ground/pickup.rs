//! The durable pick-up, step by step (drawn in the parent module): take
//! the item off the ground in the room document (write-through), credit
//! the picker by an idempotent op, and put the item back or retry when a
//! step fails.

use actix::prelude::*;
use protocol::msg::{Done, ErrorMsg};
use protocol::{ErrorCode, ServerMsg};

use super::{backoff, encode_frame, items_frame, PickUp, Picker, Pickup, Take};
use crate::ids::SessionId;
use crate::metrics as m;
use crate::room::Room;
use crate::store::{Adjust, DurableError, DurableOp};
use crate::wire;

impl Room {
    /// Answer request `req` of the member of `session` with an error, if
    /// the member is still here.
    pub(super) fn answer_error(&self, session: SessionId, req: u32, code: ErrorCode, text: String) {
        let Some(member) = self
            .sessions
            .get(&session)
            .and_then(|id| self.members.get(id))
        else {
            return;
        };
        metrics::counter!(m::CLIENT_ERRORS, "code" => code.name()).increment(1);
        let frame = encode_frame(&ServerMsg::Error(ErrorMsg::answering(req, code, text)));
        let _ = member
            .state
            .link
            .out
            .push_room_reliable(member.state.link.epoch, frame);
    }

    pub(in crate::room) fn pick_up(&mut self, msg: PickUp, ctx: &mut Context<Self>) {
        let Some(&entity) = self.sessions.get(&msg.session) else {
            return;
        };
        let req = msg.req;
        let member = &self.members[&entity];
        let picker = Picker {
            player: member.state.link.identity.player_id.clone(),
            at: (member.state.x, member.state.y),
            waiter: (msg.session, req),
        };
        let id = msg.item;
        match self
            .ground
            .take(id, picker, self.map.pickup_radius, &self.label)
        {
            Take::Loading => self.answer_error(
                msg.session,
                req,
                ErrorCode::RoomUnavailable,
                format!("pick_up {req}: ground items loading; try again"),
            ),
            Take::AskedAgain { credit } => {
                if credit {
                    self.credit(id, ctx);
                }
            }
            Take::Gone => {
                metrics::counter!(m::PICKUPS, "result" => "item_gone").increment(1);
                self.answer_error(
                    msg.session,
                    req,
                    ErrorCode::ItemGone,
                    format!("pick_up {req}: no item {id} on the ground"),
                );
            }
            Take::OutOfReach { distance } => {
                metrics::counter!(m::PICKUPS, "result" => "out_of_reach").increment(1);
                self.answer_error(
                    msg.session,
                    req,
                    ErrorCode::OutOfReach,
                    format!(
                        "pick_up {req}: item {id} is {distance:.0} away, farther than {}",
                        self.map.pickup_radius
                    ),
                );
            }
            Take::Taken => self.item_taken(id, ctx),
        }
    }

    /// Step 1 done (the item is pending): tell everyone it went, and write
    /// the room document through.
    fn item_taken(&mut self, id: u64, ctx: &mut Context<Self>) {
        let doc = self.ground_changed();
        self.to_all_members(items_frame(Vec::new(), vec![id]));
        let write = self.supervisor.persister().durable_room(doc);
        ctx.spawn(write.into_actor(self).map(move |written, room, ctx| {
            room.guarded(ctx, "pickup_taken", |room, ctx| {
                room.taken(id, written, ctx)
            });
        }));
    }

    /// Step 2 done: the store has the item off the ground (or a newer
    /// document, which has it too), or not.
    pub(super) fn taken(
        &mut self,
        id: u64,
        written: Result<bool, DurableError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(p) = self.ground.pending.get_mut(&id) else {
            return;
        };
        p.in_flight = false;
        match written {
            Ok(_) => self.credit(id, ctx),
            Err(e) => {
                tracing::warn!(room = %self.id, item = id, error = %e, "pick-up not stored; item back on the ground");
                self.put_back(
                    id,
                    ErrorCode::StoreUnavailable,
                    format!("{e}; the item is back"),
                );
            }
        }
    }

    /// Step 3: credit the picker, idempotently.
    pub(super) fn credit(&mut self, id: u64, ctx: &mut Context<Self>) {
        let Some(p) = self.ground.pending.get_mut(&id) else {
            return;
        };
        p.in_flight = true;
        let op = DurableOp::Adjust(Adjust {
            op_id: p.op_id.clone(),
            player: p.player.clone(),
            currency: 0,
            items: [(p.item.kind.clone(), p.item.count)].into(),
            progress: Default::default(),
        });
        let applied = self.supervisor.persister().durable(op);
        ctx.spawn(applied.into_actor(self).map(move |result, room, ctx| {
            room.guarded(ctx, "pickup_credited", |room, ctx| {
                room.credited(id, result, ctx)
            });
        }));
    }

    pub(super) fn credited(
        &mut self,
        id: u64,
        result: Result<crate::store::DurableAck, DurableError>,
        ctx: &mut Context<Self>,
    ) {
        let Some(p) = self.ground.pending.get_mut(&id) else {
            return;
        };
        p.in_flight = false;
        match result {
            Ok(ack) => {
                let Some(p) = self.ground.pending.remove(&id) else {
                    return;
                };
                metrics::counter!(m::PICKUPS, "result" => "done").increment(1);
                let doc = self.ground_changed();
                self.supervisor.persister().room_state(doc);
                let inventory = ack
                    .inventory(&p.player)
                    .map(wire::inventory)
                    .unwrap_or_default();
                self.tell_picker(&p, inventory);
            }
            Err(DurableError::InDoubt(e)) => {
                p.maybe_applied = true;
                self.retry_later(id, e, ctx);
            }
            Err(e @ (DurableError::Rejected(_) | DurableError::Invalid(_))) => {
                // Refused: this credit never applied, and (same op id) no
                // earlier one did either.
                tracing::warn!(room = %self.id, item = id, error = %e, "pick-up credit refused; item back on the ground");
                self.put_back(
                    id,
                    ErrorCode::StoreUnavailable,
                    format!("{e}; the item is back"),
                );
            }
            Err(e) if !p.maybe_applied => {
                // Not sent, and no earlier attempt was: nothing changed.
                self.put_back(
                    id,
                    ErrorCode::StoreUnavailable,
                    format!("{e}; the item is back"),
                );
            }
            // An earlier attempt may have landed: keep it reserved, retry.
            Err(e) => self.retry_later(id, e.to_string(), ctx),
        }
    }

    /// Keep the item reserved for its picker and credit again later; the
    /// waiting request, if any, is answered 5004 (in doubt) now.
    pub(super) fn retry_later(&mut self, id: u64, error: String, ctx: &mut Context<Self>) {
        let Some(p) = self.ground.pending.get_mut(&id) else {
            return;
        };
        let delay = backoff(p.failures);
        p.failures += 1;
        let waiter = p.waiter.take();
        tracing::warn!(room = %self.id, item = id, error = %error, retry_in_ms = delay.as_millis() as u64, "pick-up credit not confirmed; retrying with the same op id");
        metrics::counter!(m::PICKUPS, "result" => "retry").increment(1);
        if let Some((session, req)) = waiter {
            self.answer_error(
                session,
                req,
                ErrorCode::InDoubt,
                format!("pick_up {req}: not confirmed by the store ({error}); the item stays yours and is retried"),
            );
        }
        ctx.run_later(delay, move |room, ctx| {
            room.guarded(ctx, "pickup_retry", |room, ctx| {
                if room.ground.pending.get(&id).is_some_and(|p| !p.in_flight) {
                    room.credit(id, ctx);
                }
            });
        });
    }

    /// Undo step 2: the item lies on the ground again.
    pub(super) fn put_back(&mut self, id: u64, code: ErrorCode, text: String) {
        let Some(p) = self.ground.pending.remove(&id) else {
            return;
        };
        metrics::counter!(m::PICKUPS, "result" => "failed").increment(1);
        let wire = wire::ground_item(&p.item);
        self.ground.items.insert(id, p.item);
        let doc = self.ground_changed();
        self.supervisor.persister().room_state(doc);
        self.to_all_members(items_frame(vec![wire], Vec::new()));
        if let Some((session, req)) = p.waiter {
            self.answer_error(session, req, code, format!("pick_up {req}: {text}"));
        }
    }

    /// `done` and the new inventory to whoever waits; without a waiter, the
    /// picker's member (if here) gets the inventory alone.
    pub(super) fn tell_picker(&self, p: &Pickup, inventory: protocol::msg::Inventory) {
        let member = match p.waiter {
            Some((session, _)) => self
                .sessions
                .get(&session)
                .and_then(|e| self.members.get(e)),
            None => self
                .members
                .values()
                .find(|m| m.state.link.identity.player_id == p.player),
        };
        let Some(member) = member else {
            return;
        };
        let out = &member.state.link.out;
        let epoch = member.state.link.epoch;
        if let Some((_, req)) = p.waiter {
            let done = encode_frame(&ServerMsg::Done(Done {
                req,
                inventory: inventory.clone(),
            }));
            let _ = out.push_room_reliable(epoch, done);
        }
        let _ = out.push_room_reliable(epoch, encode_frame(&ServerMsg::Inventory(inventory)));
    }
}
