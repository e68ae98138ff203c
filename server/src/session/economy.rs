//! `give` and `pick_up`: durable actions, answered with `done` or an
//! error echoing the request number.

use actix::prelude::*;
use protocol::msg::{Done, Give, Inventory, PickUp};
use protocol::peer::{AdminMsg, InventoryPush};
use protocol::{ErrorCode, ServerMsg};

use std::sync::Arc;

use super::{InventoryChanged, MapGuarded, Session, Sessions, State};
use crate::cluster::Relay;
use crate::config::ms;
use crate::room::CallError;
use crate::store::{Bundle, DurableAck, DurableError, DurableOp, Landed, Rejection, Trade};
use crate::wire;

/// Tells a player's session its inventory changed, wherever it is
/// connected: on this shard through the presence table, on another
/// through the relay. Cheap to clone, and callable off the actor (a trade
/// that lands after its answer tells both players from the store runtime).
#[derive(Clone)]
struct InventoryNotices {
    presence: Arc<Sessions>,
    relay: Option<Relay>,
}

impl InventoryNotices {
    /// `shard`: the shard holding the player's socket, if not this one.
    fn tell(&self, player: &str, shard: Option<&str>, inventory: Inventory) {
        if let (Some(shard), Some(relay)) = (shard, &self.relay) {
            relay.admin(
                shard,
                &AdminMsg::Inventory(InventoryPush {
                    player: player.to_string(),
                    inventory,
                }),
            );
            return;
        }
        if let Some(session) = self.presence.player_session(player) {
            // A full mailbox loses only this notice; the next login or
            // action shows the right inventory.
            let _ = session.try_send(InventoryChanged(inventory));
        }
    }

    /// A trade answered in doubt that landed afterwards: both players get
    /// their new inventory, as the `done` and the push would have given
    /// them. The giver's client may also retry with the same `req`; that
    /// is answered `done` from the stored trade, changing nothing.
    fn on_late_trade(
        self,
        giver: String,
        target: String,
        shard: Option<String>,
    ) -> Landed<DurableAck> {
        Box::new(move |ack: DurableAck| {
            tracing::info!(giver = %giver, target = %target, "a give answered in doubt landed; both inventories pushed");
            if let Some(mine) = ack.inventory(&giver) {
                self.tell(&giver, None, wire::inventory(mine));
            }
            if let Some(theirs) = ack.inventory(&target) {
                self.tell(&target, shard.as_deref(), wire::inventory(theirs));
            }
        })
    }
}

/// Why a `give` was not done.
enum GiveError {
    NoTarget,
    /// Cluster mode with a store per shard: the target's profile is in
    /// another shard's store (see `on_give`).
    Elsewhere(String),
    /// The room is not running (answered like a cast to it).
    RoomGone,
    RoomBusy,
    Store(DurableError),
}

impl GiveError {
    fn describe(&self) -> (ErrorCode, String) {
        match self {
            GiveError::NoTarget => (
                ErrorCode::NoSuchTarget,
                "no other player with that entity id in your map".into(),
            ),
            GiveError::Elsewhere(shard) => (
                ErrorCode::TargetElsewhere,
                format!("that player is connected to shard {shard}, and each shard keeps its own store here: a give between shards needs a shared store (MongoDB); nothing changed"),
            ),
            GiveError::RoomBusy => (
                ErrorCode::RoomUnavailable,
                "the room did not answer; nothing changed".into(),
            ),
            GiveError::RoomGone => (ErrorCode::RoomUnavailable, "room is not running".into()),
            GiveError::Store(DurableError::Rejected(Rejection::Insufficient { what, .. })) => (
                ErrorCode::Insufficient,
                format!("not enough {what}; nothing changed"),
            ),
            GiveError::Store(DurableError::Rejected(r)) => {
                (ErrorCode::InvalidInput, format!("{r}; nothing changed"))
            }
            GiveError::Store(DurableError::Invalid(r)) => (ErrorCode::InvalidInput, r.clone()),
            GiveError::Store(DurableError::InDoubt(_)) => (
                ErrorCode::InDoubt,
                "the store did not confirm in time; retry with the same req".into(),
            ),
            GiveError::Store(
                e @ (DurableError::Unavailable(_)
                | DurableError::Failed(_)
                | DurableError::BadDocument(_)
                | DurableError::ShutDown),
            ) => (ErrorCode::StoreUnavailable, format!("{e}; nothing changed")),
        }
    }
}

impl Session {
    /// `give`: check it, learn who the target is from the room, then apply
    /// it as one durable trade (both inventories or neither) and answer
    /// `done` only once the store acknowledged it.
    pub(super) fn on_give(&mut self, give: Give, ctx: &mut Context<Self>) {
        let req = Some(give.req);
        let (State::InRoom { room }, Some(identity)) = (&self.state, &self.identity) else {
            self.send_error_to(req, ErrorCode::IllegalState, "join a map before giving");
            return;
        };
        let max_kinds = self.deps.config.economy.max_give_kinds;
        let valid = give.currency >= 0
            && give.items.values().all(|n| *n >= 0)
            && (give.currency > 0 || give.items.values().any(|n| *n > 0))
            && give.items.len() <= max_kinds
            && give.items.keys().all(|k| !k.is_empty() && k.len() <= 32);
        if !valid {
            self.send_error_to(
                req,
                ErrorCode::InvalidInput,
                format!("give needs amounts of 0 or more, not all 0, at most {max_kinds} item kinds of 1-32 bytes"),
            );
            return;
        }
        if !self.profile_loaded {
            self.send_error_to(
                req,
                ErrorCode::StoreUnavailable,
                "your profile is not loaded; nothing changed",
            );
            return;
        }
        let room = room.clone();
        let me = identity.player_id.clone();
        let trade_id = self.op_id(give.req);
        let persister = self.deps.persister.clone();
        let timeout = ms(self.deps.config.rooms.call_timeout_ms);
        // A store per shard holds only the profiles of players who sign in
        // there: a give to a player connected elsewhere would be two
        // stores' writes, never one transaction. Refused instead (README,
        // "Cluster mode").
        let one_store = self.deps.cluster.is_none()
            || self.deps.config.store.backend == crate::config::Backend::Mongodb;
        let session = self.id;
        let notices = self.inventory_notices();
        let apply = async move {
            let found = match room.call_who_is(session, give.to, timeout).await {
                Ok(Some(found)) => found,
                Ok(None) => return Err(GiveError::NoTarget),
                Err(CallError::Closed) => return Err(GiveError::RoomGone),
                Err(CallError::Timeout) => return Err(GiveError::RoomBusy),
            };
            let (target, shard) = (found.player, found.shard);
            if target == me {
                return Err(GiveError::NoTarget);
            }
            if let (Some(shard), false) = (&shard, one_store) {
                return Err(GiveError::Elsewhere(shard.clone()));
            }
            let trade = Trade {
                id: trade_id,
                a: me.clone(),
                b: target.clone(),
                a_gives: Bundle {
                    currency: give.currency,
                    items: give.items.into_iter().filter(|(_, n)| *n > 0).collect(),
                },
                b_gives: Bundle::default(),
            };
            let landed = notices.on_late_trade(me.clone(), target.clone(), shard.clone());
            let ack = persister
                .durable_or_late(DurableOp::Trade(trade), Some(landed))
                .await
                .map_err(GiveError::Store)?;
            let mine = ack.inventory(&me).map(wire::inventory).unwrap_or_default();
            let theirs = ack.inventory(&target).map(wire::inventory);
            Ok((mine, target, shard, theirs))
        };
        let req = give.req;
        ctx.spawn(
            apply.into_actor(self).map_guarded(
                "give_reply",
                move |result, session, _| match result {
                    Ok((inventory, target, shard, theirs)) => {
                        session.send(&ServerMsg::Done(Done { req, inventory }));
                        if let Some(inventory) = theirs {
                            session.notify_inventory(&target, shard.as_deref(), inventory);
                        }
                    }
                    Err(GiveError::RoomGone) => {
                        session.send_error_to(
                            Some(req),
                            ErrorCode::RoomUnavailable,
                            "room is not running",
                        );
                    }
                    Err(err) => {
                        let (code, text) = err.describe();
                        session.send_error_to(Some(req), code, format!("give {req}: {text}"));
                    }
                },
            ),
        );
    }

    /// `pick_up`: the room owns the ground, so it checks, takes the item and
    /// answers (`done` or an error) through the outbound queue; see
    /// [`crate::room::ground`].
    pub(super) fn on_pick_up(&mut self, pick: PickUp) {
        let req = Some(pick.req);
        let State::InRoom { room } = &self.state else {
            self.send_error_to(req, ErrorCode::IllegalState, "join a map before picking up");
            return;
        };
        if !self.profile_loaded {
            self.send_error_to(
                req,
                ErrorCode::StoreUnavailable,
                format!(
                    "pick_up {}: your profile is not loaded; nothing changed",
                    pick.req
                ),
            );
            return;
        }
        let sent = room.cast_pick_up(self.id, pick.req, pick.item);
        self.after_room_cast(sent, req);
    }

    /// Tell `player`'s session its inventory changed: on this shard, or
    /// (`shard`) through the relay to the shard holding its socket.
    pub(super) fn notify_inventory(&self, player: &str, shard: Option<&str>, inventory: Inventory) {
        self.inventory_notices().tell(player, shard, inventory);
    }

    fn inventory_notices(&self) -> InventoryNotices {
        InventoryNotices {
            presence: self.deps.presence.clone(),
            relay: self.deps.cluster.as_ref().map(|c| c.relay.clone()),
        }
    }
}
