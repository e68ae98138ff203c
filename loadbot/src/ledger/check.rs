//! The ledger's check: what the store really holds against what the bots
//! were told.
//!
//! For each player, the acknowledged gives it took part in fix its balance
//! exactly (starting balance, plus what it received, minus what it gave);
//! each op in doubt (error 5004, or no answer before the socket went) may
//! or may not have landed, so it widens the allowed range by its amount on
//! one side. The stored balance must lie in that range:
//!
//! - below it (`short`): an acknowledged effect is missing from the store,
//!   a **lost ack** (or a debit applied twice);
//! - above it (`over`): an effect is in the store twice, a **duplicated
//!   effect** (or an acknowledged debit missing).
//!
//! Every give moves one coin, so units short or over count ops. A give is
//! one trade (both sides or neither), so a lost give shows as its receiver
//! one short *and* its giver one over; either way the check fails.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Book, Outcome};

/// At most this many mismatching players are listed in the report.
const LISTED: usize = 20;
/// Timeout of one admin read.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Reads that fail (store down, shard not up yet) are retried this long in
/// all, this often; a 404 (no such player) is final.
const RETRY_FOR: Duration = Duration::from_secs(60);
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// What the check found (the `ledger` object of the JSON summary).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LedgerReport {
    /// Whether the store was read (`--verify-admin`); without it only the
    /// counts of answers are filled in.
    pub verified: bool,
    /// Gives answered `done`.
    pub acked: u64,
    /// Gives answered 5004.
    pub in_doubt: u64,
    /// Gives never answered (the socket went first): in doubt as well.
    pub unanswered: u64,
    /// Gives refused, by error code (nothing changed).
    pub refused_by_code: BTreeMap<u16, u64>,
    /// Players whose stored inventory was read and compared.
    pub players_checked: u64,
    /// Players that could not be read (the reason of the first is kept).
    pub players_unreadable: u64,
    pub first_unreadable: Option<String>,
    /// Units (one per give) below what the acknowledged gives guarantee.
    pub lost_acks: i64,
    /// Units above what the acknowledged and in-doubt gives allow.
    pub duplicated: i64,
    /// The first mismatching players.
    pub mismatches: Vec<PlayerMismatch>,
}

impl LedgerReport {
    /// Nothing lost, nothing duplicated, every player read.
    pub fn clean(&self) -> bool {
        self.lost_acks == 0 && self.duplicated == 0 && self.players_unreadable == 0
    }
}

/// A player whose stored balance is outside what its gives allow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayerMismatch {
    pub player: String,
    pub stored: i64,
    /// The range the recorded gives allow.
    pub lowest: i64,
    pub highest: i64,
}

/// The balance range each player's recorded gives allow: (lowest, highest).
pub fn allowed(book: &Book) -> BTreeMap<String, (i64, i64)> {
    let mut range: BTreeMap<String, (i64, i64)> = book
        .starting
        .iter()
        .map(|(p, &start)| (p.clone(), (start, start)))
        .collect();
    for op in &book.ops {
        let sides = [(&op.giver, -op.amount), (&op.receiver, op.amount)];
        for (player, delta) in sides {
            let Some((lo, hi)) = range.get_mut(player.as_str()) else {
                continue;
            };
            match op.outcome {
                Outcome::Done => {
                    *lo += delta;
                    *hi += delta;
                }
                Outcome::InDoubt | Outcome::Unanswered => {
                    *lo += delta.min(0);
                    *hi += delta.max(0);
                }
                Outcome::Refused(_) => {}
            }
        }
    }
    range
}

/// Compares what the store holds (`stored`: player -> currency, or why it
/// could not be read) with the book.
pub fn reconcile(book: &Book, stored: &BTreeMap<String, Result<i64, String>>) -> LedgerReport {
    let mut report = LedgerReport {
        verified: true,
        ..LedgerReport::default()
    };
    for op in &book.ops {
        match op.outcome {
            Outcome::Done => report.acked += 1,
            Outcome::InDoubt => report.in_doubt += 1,
            Outcome::Unanswered => report.unanswered += 1,
            Outcome::Refused(code) => *report.refused_by_code.entry(code).or_default() += 1,
        }
    }
    for (player, (lowest, highest)) in allowed(book) {
        let stored = match stored.get(&player) {
            Some(Ok(currency)) => *currency,
            Some(Err(why)) => {
                report.players_unreadable += 1;
                report.first_unreadable.get_or_insert_with(|| why.clone());
                continue;
            }
            None => {
                report.players_unreadable += 1;
                report
                    .first_unreadable
                    .get_or_insert_with(|| format!("{player}: not read"));
                continue;
            }
        };
        report.players_checked += 1;
        let short = (lowest - stored).max(0);
        let over = (stored - highest).max(0);
        report.lost_acks += short;
        report.duplicated += over;
        if (short > 0 || over > 0) && report.mismatches.len() < LISTED {
            report.mismatches.push(PlayerMismatch {
                player,
                stored,
                lowest,
                highest,
            });
        }
    }
    report
}

/// The players the check reads: every one with a starting balance.
pub fn players(book: &Book) -> Vec<String> {
    book.starting.keys().cloned().collect()
}

/// Reads each player's stored currency through a shard's admin API
/// (`GET /admin/players/{player}/inventory`). Blocking: call it off the
/// runtime's workers.
pub fn read_stored(
    admin: &str,
    token: Option<&str>,
    players: &[String],
) -> BTreeMap<String, Result<i64, String>> {
    let base = if admin.starts_with("http://") || admin.starts_with("https://") {
        admin.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", admin.trim_end_matches('/'))
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(READ_TIMEOUT))
        .http_status_as_error(false)
        .build()
        .into();
    // A store that was just overloaded fails fast for a while (the
    // shard's breaker): retry each read until the deadline.
    let deadline = std::time::Instant::now() + RETRY_FOR;
    players
        .iter()
        .map(|player| {
            let url = format!("{base}/admin/players/{}/inventory", escape(player));
            let mut result = read_one(&agent, &url, token);
            while result.as_ref().is_err_and(|e| !e.contains(" 404 "))
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(RETRY_EVERY);
                result = read_one(&agent, &url, token);
            }
            (player.clone(), result)
        })
        .collect()
}

fn read_one(agent: &ureq::Agent, url: &str, token: Option<&str>) -> Result<i64, String> {
    let mut request = agent.get(url);
    if let Some(token) = token {
        request = request.header("authorization", &format!("Bearer {token}"));
    }
    let mut response = request.call().map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    let text = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status}: {text}"));
    }
    let inventory: protocol::admin::StoredInventory =
        serde_json::from_str(&text).map_err(|e| format!("GET {url}: unexpected reply ({e})"))?;
    Ok(inventory.currency)
}

/// A path segment with everything but unreserved characters escaped.
fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Op;

    fn op(giver: &str, receiver: &str, outcome: Outcome) -> Op {
        Op {
            bot: 0,
            req: 0,
            giver: giver.into(),
            receiver: receiver.into(),
            amount: 1,
            outcome,
        }
    }

    fn book(ops: Vec<Op>) -> Book {
        Book {
            starting: [("a".to_string(), 100), ("b".to_string(), 100)].into(),
            ops,
        }
    }

    fn stored(a: i64, b: i64) -> BTreeMap<String, Result<i64, String>> {
        [("a".to_string(), Ok(a)), ("b".to_string(), Ok(b))].into()
    }

    #[test]
    fn acked_gives_fix_the_balance_and_doubts_widen_it() {
        let book = book(vec![
            op("a", "b", Outcome::Done),
            op("a", "b", Outcome::Done),
            op("b", "a", Outcome::InDoubt),
            op("a", "b", Outcome::Refused(3007)),
        ]);
        let range = allowed(&book);
        assert_eq!(range["a"], (98, 99));
        assert_eq!(range["b"], (101, 102));
        // The doubtful give landed, or not: both are fine.
        for (a, b) in [(98, 102), (99, 101)] {
            let report = reconcile(&book, &stored(a, b));
            assert!(report.clean(), "{a} {b}: {report:?}");
            assert_eq!(report.players_checked, 2);
        }
        let report = reconcile(&book, &stored(98, 102));
        assert_eq!((report.acked, report.in_doubt), (2, 1));
        assert_eq!(report.refused_by_code[&3007], 1);
    }

    #[test]
    fn a_missing_acked_give_is_a_lost_ack_and_a_double_one_a_duplicate() {
        let book = book(vec![op("a", "b", Outcome::Done)]);
        // Not applied at all: b short, a over.
        let lost = reconcile(&book, &stored(100, 100));
        assert_eq!((lost.lost_acks, lost.duplicated), (1, 1));
        assert!(!lost.clean());
        assert_eq!(lost.mismatches.len(), 2);
        // Applied twice: a short, b over.
        let twice = reconcile(&book, &stored(98, 102));
        assert_eq!((twice.lost_acks, twice.duplicated), (1, 1));
    }

    #[test]
    fn an_unreadable_player_fails_the_check() {
        let book = book(vec![]);
        let mut read = stored(100, 100);
        read.insert("b".into(), Err("503".into()));
        let report = reconcile(&book, &read);
        assert_eq!(report.players_unreadable, 1);
        assert!(!report.clean());
        assert_eq!(escape("g-1#x"), "g-1%23x");
    }
}
