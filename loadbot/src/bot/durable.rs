//! Durable actions (`--durable-rate`) and the event log (`--events`) from a
//! bot's side: who in the room a `give` can go to (from the last `joined`),
//! sending one, and recording every answer in the run's
//! [`crate::ledger::Ledger`].
//!
//! A give goes only to another bot (a name `<prefix><index>` in the
//! `joined`'s entities) whose player id and starting balance are known, so
//! the check can account for both sides. The targets are the entity ids
//! of the last `joined`: a give sent after the room moved but before the
//! new `joined` arrived names an id of the old incarnation, which names
//! nobody now (3007, counted as refused).

use protocol::msg::{Give, Joined};
use protocol::{ClientMsg, ErrorCode, NoticeCode, ServerMsg};

use super::Bot;
use crate::ledger::Outcome;

/// Coins per give: one, so a balance mismatch counts ops (see the check).
const GIVE_AMOUNT: i64 = 1;

impl Bot {
    fn durable(&self) -> bool {
        self.shared.cfg.durable.rate > 0.0
    }

    /// A `joined`: the room's other bots become the give targets; logged.
    pub(super) fn durable_joined(&mut self, joined: &Joined) {
        if let Some(events) = &self.shared.events {
            events.write(
                self.index,
                "joined",
                format_args!("{} {}", self.shard, joined.map.name),
            );
        }
        if !self.durable() {
            return;
        }
        let prefix = &self.shared.cfg.name_prefix;
        self.targets.clear();
        for e in &joined.entities {
            let bot = e
                .name
                .strip_prefix(prefix.as_str())
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(bot) = bot.filter(|&b| b != self.index && e.id != joined.you) {
                self.targets.push((e.id, bot));
            }
        }
    }

    /// The first update of a room (after a `joined`): logged with the last
    /// update the bot saw before it, the gap it ends.
    pub(super) fn first_update(&self) {
        if let Some(events) = &self.shared.events {
            let before = match self.last_update_us {
                0 => 0,
                us => events.wall_ms(us),
            };
            events.write(self.index, "full", before);
        }
    }

    /// A message the ledger or the event log wants (`inventory`, `done`,
    /// an error answering a `req`, a notice), wherever it arrives.
    pub(super) fn durable_message(&mut self, msg: &ServerMsg) {
        match msg {
            ServerMsg::Notice(notice) => {
                if let Some(events) = &self.shared.events {
                    events.write(self.index, "notice", notice.code);
                }
                if notice.code == NoticeCode::RoomRestarted as u16 {
                    // Entity ids may have changed, and no `joined` tells.
                    self.targets.clear();
                }
            }
            _ if !self.durable() => {}
            ServerMsg::Inventory(inventory) => {
                if let Some(me) = self.shared.ledger.player_of(self.index) {
                    self.shared.ledger.inventory(&me, inventory.currency);
                }
            }
            ServerMsg::Done(done) => {
                self.shared
                    .ledger
                    .answered(self.index, done.req, Outcome::Done);
            }
            ServerMsg::Error(e) => {
                if let Some(req) = e.req {
                    let outcome = if e.code == ErrorCode::InDoubt as u16 {
                        Outcome::InDoubt
                    } else {
                        Outcome::Refused(e.code)
                    };
                    self.shared.ledger.answered(self.index, req, outcome);
                }
            }
            _ => {}
        }
    }

    /// The durable clock ticked: a give of one coin to a random other bot
    /// of the room, recorded before it is sent; None when there is none.
    pub(super) fn next_give(&mut self) -> Option<ClientMsg> {
        if self.targets.is_empty() {
            return None;
        }
        let ledger = &self.shared.ledger;
        let me = ledger.player_of(self.index)?;
        let pick = self.rng.below(self.targets.len() as u32) as usize;
        let (entity, bot) = self.targets[pick];
        let them = ledger.player_of(bot)?;
        if them == me || !ledger.has_start(&me) || !ledger.has_start(&them) {
            return None;
        }
        self.req = self.req.wrapping_add(1);
        ledger.sent(self.index, self.req, &me, &them, GIVE_AMOUNT);
        Some(ClientMsg::Give(Give {
            req: self.req,
            to: entity,
            currency: GIVE_AMOUNT,
            items: Default::default(),
        }))
    }
}
