//! The durable pick-up, step by step (drawn in the parent module), as pure
//! transitions of [`Ground`]: take the item off the ground (the room
//! document is written through), credit the picker by an idempotent op,
//! and put the item back or retry when a step fails.
//!
//! Each step mutates only the ground and returns the [`Effect`]s that
//! follow, in order; the room carries them out (`room/effects.rs`) and
//! feeds each store result back into the next step.

use std::time::Duration;

use protocol::ErrorCode;

use super::{backoff, Ground, Picker, Take};
use crate::ids::SessionId;
use crate::metrics as m;
use crate::store::{Adjust, DurableAck, DurableError, DurableOp};
use crate::wire;

/// What a ground transition asks the room to do, in order.
#[derive(Debug)]
pub(in crate::room) enum Effect {
    /// The ground changed (its revision is already bumped): refresh the
    /// snapshot (before anyone hears of it), then store the document.
    Store(Write),
    /// Tell every member which items appeared and went.
    Items {
        added: Vec<protocol::msg::GroundItem>,
        removed: Vec<u64>,
    },
    /// Start the credit of pick-up `item` (feed the result to
    /// [`Ground::on_credited`]).
    Credit { item: u64, op: DurableOp },
    /// After `delay`, feed [`Ground::on_retry`] for pick-up `item`.
    Retry {
        item: u64,
        delay: Duration,
        error: String,
    },
    /// Answer request `req` of `session` with an error.
    Error {
        session: SessionId,
        req: u32,
        code: ErrorCode,
        text: String,
    },
    /// `done` (to the waiter, if any) and the new inventory, to the
    /// waiter's member or else the picker's member, if here.
    Done {
        waiter: Option<(SessionId, u32)>,
        player: String,
        inventory: protocol::msg::Inventory,
    },
    /// Load the room's document (feed the result to
    /// [`Ground::on_loaded`]).
    Load,
    /// The document was not read: [`Effect::Load`] again after `delay`.
    LoadLater { delay: Duration, error: String },
    /// The document was read and installed (what it holds, for the log):
    /// into the snapshot.
    Loaded {
        items: usize,
        pending: usize,
        rev: u64,
    },
    /// A restart's snapshot was installed: the ground's part of the
    /// snapshot is refreshed.
    Restored,
    /// The restored document was not written through: [`Ground::secure`]
    /// again after `delay`.
    SecureLater { delay: Duration, error: String },
    /// `pending` pick-ups in flight when the last incarnation ended are
    /// credited again (for the log; the credits follow).
    Redrive { pending: usize },
}

/// How the room document is stored after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::room) enum Write {
    /// Write-through: the result goes to [`Ground::on_taken`] of `item`.
    Through { taken: u64 },
    /// Write-behind (the persister's room state).
    Behind,
    /// Write-through of a restored ground: the result goes to
    /// [`Ground::on_secured`].
    Secure,
}

impl Ground {
    /// A `pick_up` of item `id` by `picker`: [`Ground::take`], and what
    /// follows from its decision.
    pub(in crate::room) fn pick_up(
        &mut self,
        id: u64,
        picker: Picker,
        radius: f32,
        room: &str,
    ) -> Vec<Effect> {
        let (session, req) = picker.waiter;
        let error = |code, text| Effect::Error {
            session,
            req,
            code,
            text,
        };
        match self.take(id, picker, radius, room) {
            Take::Loading => vec![error(
                ErrorCode::RoomUnavailable,
                format!("pick_up {req}: ground items loading; try again"),
            )],
            Take::AskedAgain { credit: true } => self.credit(id),
            Take::AskedAgain { credit: false } => Vec::new(),
            Take::Gone => {
                metrics::counter!(m::PICKUPS, "result" => "item_gone").increment(1);
                vec![error(
                    ErrorCode::ItemGone,
                    format!("pick_up {req}: no item {id} on the ground"),
                )]
            }
            Take::OutOfReach { distance } => {
                metrics::counter!(m::PICKUPS, "result" => "out_of_reach").increment(1);
                vec![error(
                    ErrorCode::OutOfReach,
                    format!(
                        "pick_up {req}: item {id} is {distance:.0} away, farther than {radius}"
                    ),
                )]
            }
            // Step 1 done (the item is pending): the document first (in the
            // snapshot before anyone hears of it), then tell everyone.
            Take::Taken => {
                self.rev += 1;
                vec![
                    Effect::Store(Write::Through { taken: id }),
                    Effect::Items {
                        added: Vec::new(),
                        removed: vec![id],
                    },
                ]
            }
        }
    }

    /// Step 2 done: the store has the item off the ground (or a newer
    /// document, which has it too), or not.
    pub(in crate::room) fn on_taken(
        &mut self,
        id: u64,
        written: Result<bool, DurableError>,
    ) -> Vec<Effect> {
        let Some(p) = self.pending.get_mut(&id) else {
            return Vec::new();
        };
        p.in_flight = false;
        match written {
            Ok(_) => self.credit(id),
            Err(e) => self.put_back(
                id,
                ErrorCode::StoreUnavailable,
                format!("{e}; the item is back"),
            ),
        }
    }

    /// Step 3: credit the picker, idempotently (the pick-up's op id).
    pub(in crate::room) fn credit(&mut self, id: u64) -> Vec<Effect> {
        let Some(p) = self.pending.get_mut(&id) else {
            return Vec::new();
        };
        p.in_flight = true;
        let op = DurableOp::Adjust(Adjust {
            op_id: p.op_id.clone(),
            player: p.player.clone(),
            currency: 0,
            items: [(p.item.kind.clone(), p.item.count)].into(),
            progress: Default::default(),
            // Stamped by the room, which knows its owner epoch.
            fence: None,
        });
        vec![Effect::Credit { item: id, op }]
    }

    /// Step 3 done: credited (the pick-up is over), refused (the item is
    /// back), or not known (retried with the same op id).
    pub(in crate::room) fn on_credited(
        &mut self,
        id: u64,
        result: Result<DurableAck, DurableError>,
    ) -> Vec<Effect> {
        let Some(p) = self.pending.get_mut(&id) else {
            return Vec::new();
        };
        p.in_flight = false;
        match result {
            Ok(ack) => {
                let Some(p) = self.pending.remove(&id) else {
                    return Vec::new();
                };
                metrics::counter!(m::PICKUPS, "result" => "done").increment(1);
                self.rev += 1;
                let inventory = ack
                    .inventory(&p.player)
                    .map(wire::inventory)
                    .unwrap_or_default();
                vec![
                    Effect::Store(Write::Behind),
                    Effect::Done {
                        waiter: p.waiter,
                        player: p.player,
                        inventory,
                    },
                ]
            }
            Err(DurableError::InDoubt(e)) => {
                p.maybe_applied = true;
                self.retry_later(id, e)
            }
            // Refused: this credit never applied, and (same op id) no
            // earlier one did either.
            Err(e @ (DurableError::Rejected(_) | DurableError::Invalid(_))) => self.put_back(
                id,
                ErrorCode::StoreUnavailable,
                format!("{e}; the item is back"),
            ),
            // Not sent, and no earlier attempt was: nothing changed.
            Err(e) if !p.maybe_applied => self.put_back(
                id,
                ErrorCode::StoreUnavailable,
                format!("{e}; the item is back"),
            ),
            // An earlier attempt may have landed: keep it reserved, retry.
            Err(e) => self.retry_later(id, e.to_string()),
        }
    }

    /// Keep the item reserved for its picker and credit again later; the
    /// waiting request, if any, is answered 5004 (in doubt) now.
    fn retry_later(&mut self, id: u64, error: String) -> Vec<Effect> {
        let Some(p) = self.pending.get_mut(&id) else {
            return Vec::new();
        };
        let delay = backoff(p.failures);
        p.failures += 1;
        metrics::counter!(m::PICKUPS, "result" => "retry").increment(1);
        let mut effects = Vec::new();
        if let Some((session, req)) = p.waiter.take() {
            effects.push(Effect::Error {
                session,
                req,
                code: ErrorCode::InDoubt,
                text: format!("pick_up {req}: not confirmed by the store ({error}); the item stays yours and is retried"),
            });
        }
        effects.push(Effect::Retry {
            item: id,
            delay,
            error,
        });
        effects
    }

    /// A retry is due: credit again, unless the pick-up is over or a
    /// credit is under way (the picker asked again meanwhile).
    pub(in crate::room) fn on_retry(&mut self, id: u64) -> Vec<Effect> {
        if self.pending.get(&id).is_some_and(|p| !p.in_flight) {
            self.credit(id)
        } else {
            Vec::new()
        }
    }

    /// Credit again every pending pick-up (the last incarnation ended with
    /// them in flight): the same op ids, so each lands at most once.
    pub(in crate::room) fn redrive(&mut self) -> Vec<Effect> {
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        let mut effects = Vec::new();
        if !ids.is_empty() {
            effects.push(Effect::Redrive { pending: ids.len() });
        }
        for id in ids {
            if let Some(p) = self.pending.get_mut(&id) {
                p.maybe_applied = true;
            }
            effects.extend(self.credit(id));
        }
        effects
    }

    /// Undo step 2: the item lies on the ground again; the waiter, if
    /// any, is answered `code`.
    fn put_back(&mut self, id: u64, code: ErrorCode, text: String) -> Vec<Effect> {
        let Some(p) = self.pending.remove(&id) else {
            return Vec::new();
        };
        metrics::counter!(m::PICKUPS, "result" => "failed").increment(1);
        let added = vec![wire::ground_item(&p.item)];
        self.items.insert(id, p.item);
        self.rev += 1;
        let mut effects = vec![
            Effect::Store(Write::Behind),
            Effect::Items {
                added,
                removed: Vec::new(),
            },
        ];
        if let Some((session, req)) = p.waiter {
            effects.push(Effect::Error {
                session,
                req,
                code,
                text: format!("pick_up {req}: {text}"),
            });
        }
        effects
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{GroundItem, Inventory, Rejection};

    const WAITER: (SessionId, u32) = (7, 1);

    /// A loaded ground with a gem (id 1) at the origin, taken by "p": the
    /// write-through is asked for and everyone hears the gem went.
    fn taken() -> Ground {
        let mut g = Ground::new();
        let gem = GroundItem {
            id: 1,
            kind: "gem".into(),
            count: 2,
            x: 0.0,
            y: 0.0,
        };
        g.install(3, 2, "ep", vec![gem], Vec::new());
        let picker = Picker {
            player: "p".into(),
            at: (1.0, 0.0),
            waiter: WAITER,
        };
        let effects = g.pick_up(1, picker, 10.0, "hall");
        assert!(matches!(
            effects.as_slice(),
            [
                Effect::Store(Write::Through { taken: 1 }),
                Effect::Items { added, removed },
            ] if added.is_empty() && removed == &[1]
        ));
        assert_eq!(g.rev, 4);
        assert!(g.is_pending(1) && g.items.is_empty());
        g
    }

    /// The op id of the one credit in `effects`.
    fn credit_op_id(effects: &[Effect]) -> String {
        let [Effect::Credit {
            item: 1,
            op: DurableOp::Adjust(adjust),
        }] = effects
        else {
            panic!("expected one credit of item 1, got {effects:?}");
        };
        assert_eq!(adjust.player, "p");
        assert_eq!(adjust.items, [("gem".to_string(), 2)].into());
        adjust.op_id.clone()
    }

    #[test]
    fn taken_then_credited_removes_the_item_and_answers_done() {
        let mut g = taken();
        let credit = g.on_taken(1, Ok(true));
        assert_eq!(credit_op_id(&credit), "pickup:hall:ep:1");
        let ack = DurableAck {
            inventories: vec![(
                "p".into(),
                Inventory {
                    currency: 5,
                    items: [("gem".to_string(), 2)].into(),
                },
            )],
            replayed: false,
        };
        let done = g.on_credited(1, Ok(ack));
        let [Effect::Store(Write::Behind), Effect::Done {
            waiter,
            player,
            inventory,
        }] = done.as_slice()
        else {
            panic!("expected the document stored and done, got {done:?}");
        };
        assert_eq!((*waiter, player.as_str()), (Some(WAITER), "p"));
        assert_eq!(inventory.currency, 5);
        assert_eq!(inventory.items.get("gem"), Some(&2));
        assert!(!g.is_pending(1) && g.items.is_empty());
        assert_eq!(g.rev, 5);
        let snap = g.snapshot();
        assert!(snap.items.is_empty() && snap.pending.is_empty());
        // A late result for a finished pick-up changes nothing.
        assert!(g
            .on_credited(1, Err(DurableError::InDoubt("late".into())))
            .is_empty());
    }

    #[test]
    fn a_credit_in_doubt_is_retried_with_the_same_op_id_and_never_put_back() {
        let mut g = taken();
        let first = credit_op_id(&g.on_taken(1, Ok(true)));
        let doubt = g.on_credited(1, Err(DurableError::InDoubt("timeout".into())));
        let [Effect::Error {
            session: 7,
            req: 1,
            code: ErrorCode::InDoubt,
            ..
        }, Effect::Retry { item: 1, delay, .. }] = doubt.as_slice()
        else {
            panic!("expected 5004 and a retry, got {doubt:?}");
        };
        assert_eq!(*delay, backoff(0));
        assert!(g.is_pending(1) && g.items.is_empty());
        // The retry credits again under the same op id; a second timer
        // while that credit is under way starts nothing.
        assert_eq!(credit_op_id(&g.on_retry(1)), first);
        assert!(g.on_retry(1).is_empty());
        // Now even "not sent" keeps it reserved (an earlier attempt may
        // have landed), with a longer wait and no second answer.
        let again = g.on_credited(1, Err(DurableError::Unavailable("down".into())));
        let [Effect::Retry { item: 1, delay, .. }] = again.as_slice() else {
            panic!("expected a retry alone, got {again:?}");
        };
        assert_eq!(*delay, backoff(1));
        assert_eq!(credit_op_id(&g.on_retry(1)), first);
        assert!(g.is_pending(1) && g.items.is_empty());
    }

    /// The effects of putting gem 1 back with the waiter answered 5003.
    fn assert_put_back(g: &Ground, effects: &[Effect]) {
        let [Effect::Store(Write::Behind), Effect::Items { added, removed }, Effect::Error {
            session: 7,
            req: 1,
            code: ErrorCode::StoreUnavailable,
            text,
        }] = effects
        else {
            panic!("expected the item put back, got {effects:?}");
        };
        assert!(removed.is_empty());
        assert_eq!(added.iter().map(|i| i.id).collect::<Vec<_>>(), [1]);
        assert!(text.starts_with("pick_up 1: ") && text.ends_with("; the item is back"));
        assert!(!g.is_pending(1) && g.items.contains_key(&1));
    }

    #[test]
    fn a_refusal_puts_the_item_back() {
        let mut g = taken();
        credit_op_id(&g.on_taken(1, Ok(true)));
        let refused = Rejection::NoSuchPlayer("p".into());
        let effects = g.on_credited(1, Err(DurableError::Rejected(refused)));
        assert_put_back(&g, &effects);
        assert_eq!(g.rev, 5);
    }

    #[test]
    fn a_failed_write_through_or_an_unsent_first_credit_puts_the_item_back() {
        let mut g = taken();
        let effects = g.on_taken(1, Err(DurableError::Unavailable("down".into())));
        assert_put_back(&g, &effects);

        let mut g = taken();
        credit_op_id(&g.on_taken(1, Ok(true)));
        let effects = g.on_credited(1, Err(DurableError::Unavailable("down".into())));
        assert_put_back(&g, &effects);
    }

    #[test]
    fn a_redrive_credits_every_pending_pick_up_as_maybe_applied() {
        let mut g = taken();
        let effects = g.redrive();
        let [Effect::Redrive { pending: 1 }, credit @ ..] = effects.as_slice() else {
            panic!("expected the redrive announced, got {effects:?}");
        };
        let op_id = credit_op_id(credit);
        assert_eq!(op_id, "pickup:hall:ep:1");
        // Maybe applied: "not sent" now retries instead of putting back.
        let effects = g.on_credited(1, Err(DurableError::Unavailable("down".into())));
        assert!(matches!(
            effects.as_slice(),
            [
                Effect::Error {
                    code: ErrorCode::InDoubt,
                    ..
                },
                Effect::Retry { item: 1, .. }
            ]
        ));
        assert!(g.is_pending(1));
    }
}
