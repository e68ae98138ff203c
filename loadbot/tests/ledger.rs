//! The acknowledged-action ledger against a real shard: bots give coins to
//! each other while they churn, the check reads every player's inventory
//! from the shard's store through the admin API and finds nothing lost;
//! then a tampered ledger (an acknowledged give the store never saw) is
//! read against the same store and reported, so the check can fail.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::Shard;
use loadbot::config::Scenario;
use loadbot::ledger::{check, Book, Op, Outcome};
use loadbot::Config;

const TOKEN: &str = "ledger-test-admin-token-0123456789";

fn tmp(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("{}-{name}", std::process::id()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_give_and_the_store_holds_every_acknowledged_give() {
    let shard = Shard::start_with(&[], &[("TESSERA_ADMIN__TOKEN", TOKEN)]);
    let admin = shard.http.to_string();
    let ledger_path = tmp("ledger.json");
    let events_path = tmp("events.txt");

    let mut cfg = Config::new(&shard.url()).expect("a valid default config");
    cfg.bots = 8;
    cfg.rooms = 2;
    cfg.ramp = Duration::from_millis(500);
    cfg.duration = Duration::from_secs(5);
    cfg.scenario = Scenario::Churn;
    cfg.churn_interval = Duration::from_secs(2);
    cfg.durable.rate = 3.0;
    cfg.durable.verify_admin = Some(admin.clone());
    cfg.durable.admin_token = Some(TOKEN.into());
    cfg.durable.ledger = Some(ledger_path.clone());
    cfg.durable.events = Some(events_path.clone());
    cfg.validate().expect("valid");
    let summary = loadbot::run(cfg).await.expect("the run completes");

    let report = summary.ledger.clone().expect("a ledger report");
    let log = shard.log_tail();
    assert!(report.verified, "{report:?}");
    assert!(report.acked > 10, "the bots gave: {report:?}\n{log}");
    assert_eq!(report.players_checked, 8, "{report:?}");
    assert_eq!(report.lost_acks, 0, "{report:?}\n{log}");
    assert_eq!(report.duplicated, 0, "{report:?}\n{log}");
    assert!(report.clean() && summary.thresholds.passed, "{report:?}");

    // The ledger file holds what the report counted.
    let book: Book =
        serde_json::from_str(&std::fs::read_to_string(&ledger_path).expect("the ledger file"))
            .expect("the ledger parses");
    let done = book
        .ops
        .iter()
        .filter(|o| o.outcome == Outcome::Done)
        .count();
    assert_eq!(done as u64, report.acked);

    // Every bot's joins and first updates are in the event log.
    let events = std::fs::read_to_string(&events_path).expect("the event log");
    for bot in 0..8 {
        for kind in ["joined", "full"] {
            assert!(
                events
                    .lines()
                    .any(|l| l.split(' ').nth(1) == Some(&bot.to_string())
                        && l.split(' ').nth(2) == Some(kind)),
                "bot {bot} has no {kind} event:\n{events}"
            );
        }
    }

    // Tampered: an acknowledged give the store never saw. Read against the
    // same store, the check reports it.
    let mut tampered = book.clone();
    let first = &book.ops[0];
    tampered.ops.push(Op {
        bot: first.bot,
        req: u32::MAX,
        giver: first.giver.clone(),
        receiver: first.receiver.clone(),
        amount: 1,
        outcome: Outcome::Done,
    });
    let players = check::players(&tampered);
    let token = Some(TOKEN.to_string());
    let stored =
        tokio::task::spawn_blocking(move || check::read_stored(&admin, token.as_deref(), &players))
            .await
            .expect("the reader");
    assert!(stored.values().all(Result::is_ok), "{stored:?}");
    let honest = check::reconcile(&book, &stored);
    assert!(
        honest.clean(),
        "the untouched ledger still checks: {honest:?}"
    );
    let caught = check::reconcile(&tampered, &stored);
    assert_eq!(caught.lost_acks, 1, "{caught:?}");
    assert!(!caught.clean());
    assert!(caught
        .mismatches
        .iter()
        .any(|m| m.player == first.receiver && m.stored == m.lowest - 1));
}

#[tokio::test]
async fn a_player_the_store_does_not_know_is_unreadable() {
    let shard = Shard::start_with(&[], &[("TESSERA_ADMIN__TOKEN", TOKEN)]);
    let admin = shard.http.to_string();
    let book = Book {
        starting: BTreeMap::from([("g-nobody".to_string(), 100)]),
        ops: Vec::new(),
    };
    let players = check::players(&book);
    let stored =
        tokio::task::spawn_blocking(move || check::read_stored(&admin, Some(TOKEN), &players))
            .await
            .expect("the reader");
    let why = stored["g-nobody"].as_ref().expect_err("not in the store");
    assert!(why.contains("404"), "{why}");
    let report = check::reconcile(&book, &stored);
    assert_eq!(report.players_unreadable, 1);
    assert!(!report.clean());
}
