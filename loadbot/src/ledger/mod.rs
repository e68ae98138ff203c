//! The acknowledged-action ledger: bots do durable actions (`give` of one
//! coin to another bot of the same room, `--durable-rate` per second), and
//! every answer is recorded here with its op: `done` (acknowledged: the
//! store has it), error 5004 (in doubt: it may or may not have landed),
//! any other error (refused: nothing changed), or no answer before the
//! socket went (unanswered: in doubt too). At the end, [`check`] reads every
//! involved player's inventory from the store through a shard's admin API
//! (`GET /admin/players/{player}/inventory`) and reports lost acks and
//! duplicated effects.
//!
//! Also here: the per-bot event log (`--events FILE`), wall-clock lines the
//! failover benchmark joins with its kill times (see [`events`]).
//!
//! Why a coin at a time: every acknowledged give moves exactly one unit, so
//! a player's stored balance can be checked against the sum of the gives
//! it took part in, and a mismatch counts ops, not amounts.

pub mod check;
pub mod events;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::bail;
use parking_lot::Mutex;
use serde::Serialize;

pub use check::{LedgerReport, PlayerMismatch};
pub use events::EventLog;

/// Highest `--durable-rate`: the server's control class allows 10 messages
/// a second (pings are in it too).
pub const MAX_DURABLE_RATE: f64 = 5.0;

/// The ledger's flags (flattened into [`crate::Args`]).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DurableArgs {
    /// Durable actions per second per bot (a `give` of 1 coin to another
    /// bot standing in the same room, wherever either's socket is), 0 for
    /// none. Shards with a store each refuse a give between players
    /// connected to different shards (3010, counted as refused).
    #[arg(long, default_value_t = 0.0)]
    pub durable_rate: f64,
    /// After the run, read every involved player's inventory from the store
    /// through this shard's admin API (`HOST:PORT` or `http://HOST:PORT`,
    /// any shard sharing the store) and report lost acks.
    #[arg(long)]
    pub verify_admin: Option<String>,
    /// A `viewer` admin token for --verify-admin.
    #[arg(
        long,
        env = "LOADBOT_ADMIN_TOKEN",
        hide_env_values = true,
        requires = "verify_admin"
    )]
    pub admin_token: Option<String>,
    /// Write every recorded op (and the players' starting balances) here
    /// as JSON at the end.
    #[arg(long)]
    pub ledger: Option<PathBuf>,
    /// Write per-bot events (joined, first update of a room, notices,
    /// drops) with wall-clock times here, one line each.
    #[arg(long)]
    pub events: Option<PathBuf>,
}

/// The validated ledger settings.
#[derive(Debug, Clone, Default)]
pub struct DurableConfig {
    pub rate: f64,
    pub verify_admin: Option<String>,
    pub admin_token: Option<String>,
    pub ledger: Option<PathBuf>,
    pub events: Option<PathBuf>,
}

impl DurableArgs {
    pub fn into_config(self) -> anyhow::Result<DurableConfig> {
        let cfg = DurableConfig {
            rate: self.durable_rate,
            verify_admin: self.verify_admin,
            admin_token: self.admin_token,
            ledger: self.ledger,
            events: self.events,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl DurableConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(0.0..=MAX_DURABLE_RATE).contains(&self.rate) {
            bail!(
                "--durable-rate must be in [0, {MAX_DURABLE_RATE}] per second, got {}",
                self.rate
            );
        }
        if self.verify_admin.as_deref().is_some_and(str::is_empty) {
            bail!("--verify-admin must not be empty");
        }
        Ok(())
    }
}

/// How a durable op ended, as the bot saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Sent, no answer yet (at the end: the socket went before one came).
    Unanswered,
    /// `done`: acknowledged, the store has it.
    Done,
    /// Error 5004: may or may not have landed.
    InDoubt,
    /// Any other error: nothing changed.
    Refused(u16),
}

/// One durable op: a give of `amount` coins from `giver` to `receiver`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Op {
    pub bot: u32,
    pub req: u32,
    pub giver: String,
    pub receiver: String,
    pub amount: i64,
    pub outcome: Outcome,
}

/// Everything recorded, as written by `--ledger` and read by the check.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Book {
    /// Each player's currency in the first inventory the bot saw after its
    /// first welcome (before any give could touch it).
    pub starting: BTreeMap<String, i64>,
    pub ops: Vec<Op>,
}

/// The run's ledger, shared by every bot.
#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    book: Book,
    /// Bot index -> its player id now (a failed resume changes it).
    players: Vec<Option<String>>,
    /// (bot, req) -> index in `book.ops`, while unanswered.
    open: BTreeMap<(u32, u32), usize>,
}

impl Ledger {
    pub fn new(bots: u32) -> Ledger {
        Ledger {
            inner: Mutex::new(Inner {
                players: vec![None; bots as usize],
                ..Inner::default()
            }),
        }
    }

    /// Bot `bot` is player `player` now.
    pub fn welcomed(&self, bot: u32, player: &str) {
        let mut inner = self.inner.lock();
        if let Some(slot) = inner.players.get_mut(bot as usize) {
            if slot.as_deref() != Some(player) {
                *slot = Some(player.to_string());
            }
        }
    }

    /// The player of bot `bot`, if it has been welcomed.
    pub fn player_of(&self, bot: u32) -> Option<String> {
        self.inner
            .lock()
            .players
            .get(bot as usize)
            .cloned()
            .flatten()
    }

    /// An `inventory` for `player`: its starting balance if it is the
    /// first with coins. One without is not taken: a starter purse the
    /// store did not grant in time comes at a later login (the server
    /// retries it), an effect no give explains. Until then the player
    /// neither gives nor receives (so a later first inventory holds the
    /// purse alone).
    pub fn inventory(&self, player: &str, currency: i64) {
        let mut inner = self.inner.lock();
        if currency > 0 && !inner.book.starting.contains_key(player) {
            inner.book.starting.insert(player.to_string(), currency);
        }
    }

    /// Whether `player`'s starting balance is known (gives to or from a
    /// player without one could not be checked, so none are made).
    pub fn has_start(&self, player: &str) -> bool {
        self.inner.lock().book.starting.contains_key(player)
    }

    /// A give was sent.
    pub fn sent(&self, bot: u32, req: u32, giver: &str, receiver: &str, amount: i64) {
        let mut inner = self.inner.lock();
        let at = inner.book.ops.len();
        inner.book.ops.push(Op {
            bot,
            req,
            giver: giver.to_string(),
            receiver: receiver.to_string(),
            amount,
            outcome: Outcome::Unanswered,
        });
        inner.open.insert((bot, req), at);
    }

    /// The answer to bot `bot`'s request `req`; false when no such op is
    /// open (not ours, or answered before).
    pub fn answered(&self, bot: u32, req: u32, outcome: Outcome) -> bool {
        let mut inner = self.inner.lock();
        let Some(at) = inner.open.remove(&(bot, req)) else {
            return false;
        };
        inner.book.ops[at].outcome = outcome;
        true
    }

    /// A copy of everything recorded.
    pub fn book(&self) -> Book {
        self.inner.lock().book.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_are_recorded_and_answered_once() {
        let ledger = Ledger::new(2);
        ledger.welcomed(0, "g-a");
        ledger.welcomed(1, "g-b");
        assert_eq!(ledger.player_of(1).as_deref(), Some("g-b"));
        assert_eq!(ledger.player_of(5), None);
        ledger.inventory("g-a", 0);
        ledger.inventory("g-a", 100);
        ledger.inventory("g-a", 99);
        assert!(ledger.has_start("g-a") && !ledger.has_start("g-b"));
        ledger.sent(0, 1, "g-a", "g-b", 1);
        ledger.sent(0, 2, "g-a", "g-b", 1);
        assert!(ledger.answered(0, 1, Outcome::Done));
        assert!(!ledger.answered(0, 1, Outcome::InDoubt), "answered once");
        assert!(!ledger.answered(1, 2, Outcome::Done), "another bot's req");
        let book = ledger.book();
        assert_eq!(book.starting["g-a"], 100, "the first with coins counts");
        assert_eq!(book.ops[0].outcome, Outcome::Done);
        assert_eq!(book.ops[1].outcome, Outcome::Unanswered);
    }

    #[test]
    fn a_rate_out_of_range_is_refused() {
        let mut cfg = DurableConfig::default();
        assert!(cfg.validate().is_ok());
        for bad in [-1.0, 6.0, f64::NAN] {
            cfg.rate = bad;
            assert!(cfg.validate().is_err(), "{bad}");
        }
    }
}
