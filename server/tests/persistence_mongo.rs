//! A MongoDB outage while players play (SecantusDB, a MongoDB-wire server,
//! started on a loopback port by the test): rooms keep their tick, durable
//! actions are refused at once with 5003, and afterwards every acknowledged
//! write and the latest positions are in the store.

mod common;
mod store_support;

use std::time::{Duration, Instant};

use common::{start, test_config, Client, Event, View};
use protocol::msg::*;
use protocol::{ErrorCode, ServerMsg};
use store_support::Secantus;

const SECRET: &str = "outage-test-secret-0123456";

fn token(player: &str) -> String {
    common::token(SECRET, player)
}

fn config(mongo: &Secantus) -> server::Config {
    let mut config = test_config();
    config.auth.secret = SECRET.into();
    common::use_mongo(&mut config, mongo.uri(), "outage");
    config
}

/// Log in with a stable identity once the store answers (the persister
/// connects in the background), returning the inventory it reported.
async fn login(addr: std::net::SocketAddr, name: &str) -> (Client, Inventory) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut client = Client::connect(addr).await;
        client.hello_with(Some(token(name)), name).await;
        let mut last = None;
        // The starter purse follows the first inventory for a new player.
        while let Some(Event::Msg(msg)) = client.next_event(Duration::from_millis(700)).await {
            if let ServerMsg::Inventory(inventory) = msg {
                last = Some(inventory);
            }
        }
        if let Some(inventory) = last {
            return (client, inventory);
        }
        assert!(
            Instant::now() < deadline,
            "the store never answered a login"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mongodb_outage_never_stalls_rooms_and_loses_nothing_acknowledged() {
    let mut mongo = tokio::task::spawn_blocking(Secantus::start).await.unwrap();
    let shard = start(config(&mongo));
    let (mut alice, inventory) = login(shard.ws_addr, "alice").await;
    assert_eq!(inventory.currency, 100);
    let (mut bob, _) = login(shard.ws_addr, "bob").await;
    // "other": 200 units/s and a 400-unit view, so bob sees alice all along.
    let a = alice.join("other").await;
    let b = bob.join("other").await;
    alice.give(1, b.you, 10).await;
    assert_eq!(alice.expect_done(1).await.inventory.currency, 90);

    // Alice walks slowly; bob watches her for the whole outage.
    alice.walk(1, 0.05, 0.0).await;
    let alice_id = a.you;
    let watch = tokio::spawn(async move {
        let mut last = Instant::now();
        let mut worst = Duration::ZERO;
        let mut seen = 0;
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Some(Event::Msg(ServerMsg::Update(u))) =
                bob.next_event(Duration::from_millis(500)).await
            {
                if u.moved.iter().any(|m| m.id == alice_id) {
                    worst = worst.max(last.elapsed());
                    last = Instant::now();
                    seen += 1;
                }
            }
        }
        (worst, seen)
    });

    let outage = Instant::now();
    // A quick SIGTERM and wait; bob's watcher runs on the other worker.
    mongo.stop();
    // Once the store is known down (a flush failed), durable actions fail
    // fast with 5003 and change nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = Instant::now();
    alice.give(2, b.you, 5).await;
    alice.expect_error(ErrorCode::StoreUnavailable).await;
    assert!(
        asked.elapsed() < Duration::from_millis(500),
        "{:?}",
        asked.elapsed()
    );

    let (worst_gap, updates) = watch.await.unwrap();
    assert!(updates >= 150, "only {updates} updates of alice in 10 s");
    assert!(
        worst_gap < Duration::from_millis(300),
        "the room stalled {worst_gap:?}"
    );

    // The store comes back after about 10 s; alice stops and is saved.
    mongo.restart();
    assert!(outage.elapsed() >= Duration::from_secs(10));
    let mut view = View::from_joined(&a);
    alice.walk(2, 0.0, 0.0).await;
    while view.entities[&a.you].2 != 2 {
        if let ServerMsg::Update(u) = alice
            .expect("update", |m| {
                matches!(m, ServerMsg::Update(_)).then(|| m.clone())
            })
            .await
        {
            view.apply(&u);
        }
    }
    let stood = view.entities[&a.you];
    drop(alice);
    // A graceful stop flushes what is dirty.
    drop(shard);

    let shard = start(config(&mongo));
    let (mut alice, inventory) = login(shard.ws_addr, "alice").await;
    assert_eq!(
        inventory.currency, 90,
        "the acknowledged give is stored, the refused one not"
    );
    let joined = alice.join("other").await;
    let me = joined.entities.iter().find(|e| e.id == joined.you).unwrap();
    assert_eq!(
        (me.x, me.y),
        (stood.0, stood.1),
        "the latest position is stored"
    );
    drop(mongo);
}

/// A give the store does not confirm within `store.durable_timeout_ms` is
/// answered 5004 (in doubt); it goes on, and when it lands both players are
/// told their new inventory without asking. A retry with the same `req`
/// is answered `done` from the stored trade and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_answered_in_doubt_that_lands_later_pushes_both_inventories() {
    let mut mongo = tokio::task::spawn_blocking(Secantus::start).await.unwrap();
    let shard = start(config(&mongo));
    let (mut alice, _) = login(shard.ws_addr, "alice").await;
    let (mut bob, _) = login(shard.ws_addr, "bob").await;
    alice.join("other").await;
    let b = bob.join("other").await;

    // The store freezes with the give's first write on its way to it.
    mongo.pause();
    alice.give(1, b.you, 10).await;
    alice.expect_error(ErrorCode::InDoubt).await;
    mongo.resume();

    let pushed = |m: &ServerMsg| match m {
        ServerMsg::Inventory(inventory) => Some(inventory.currency),
        _ => None,
    };
    assert_eq!(alice.expect("alice's inventory", pushed).await, 90);
    assert_eq!(bob.expect("bob's inventory", pushed).await, 110);

    alice.give(1, b.you, 10).await;
    assert_eq!(alice.expect_done(1).await.inventory.currency, 90);
    drop(shard);
    drop(mongo);
}
