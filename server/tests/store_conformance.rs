//! One conformance suite, run against both store backends: the embedded
//! store (redb) and MongoDB (SecantusDB on an ephemeral loopback port,
//! started and stopped by each test; `scripts/secantus.sh` installs it).
//!
//! Every check of what was stored reads through a *fresh* handle (a new
//! Mongo client, a read-only redb handle), never the persister's memory.

mod store_support;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use std::sync::Arc;

use server::store::model::{OPS, PLAYERS, PLAYER_SCHEMA, ROOMS, ROOM_SCHEMA, TRADES};
use server::store::{
    Adjust, Bundle, DurableError, DurableOp, GroundItem, OpState, PendingPickup, PlayerState,
    Rejection, RoomFence, RoomState, Stats, Store, Trade, TradeState, Volatile,
};
use store_support::{init_tracing, Fixture, Kind};

/// A case that runs longer than this fails (every wait inside is bounded
/// too; this is the backstop).
const CASE_LIMIT: Duration = Duration::from_secs(120);

fn run<F, Fut>(kind: Kind, case: F)
where
    F: FnOnce(Fixture) -> Fut,
    Fut: Future<Output = ()>,
{
    init_tracing();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let fx = Fixture::new(kind);
        tokio::time::timeout(CASE_LIMIT, case(fx))
            .await
            .expect("the case finished within its time limit");
    });
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(#[test]
            fn $case() {
                super::run(super::Kind::Embedded, super::cases::$case)
            })*
        }
        mod mongo {
            $(#[test]
            fn $case() {
                super::run(super::Kind::Mongo, super::cases::$case)
            })*
        }
    };
}

conformance!(
    round_trips,
    migrations_and_bad_documents,
    coalescing,
    write_through,
    trades,
    outage,
    shutdown_flush,
    shutdown_deadline,
    rooms_round_trip_with_items_and_pending,
    stale_room_writes_are_skipped,
    old_rooms_migrate_and_bad_ones_read_as_none,
    idempotency_is_exact,
    stale_player_writes_are_skipped,
    a_late_batch_never_replaces_newer_state,
    the_ledgers_are_pruned_after_the_retention,
    bans_and_the_audit_trail,
    the_owner_epoch_fences_room_writes_and_pickups,
);

fn state(map: &str, x: f32) -> PlayerState {
    PlayerState {
        map: map.into(),
        x,
        y: -x / 2.0,
        facing: 1.25,
        stats: Stats {
            hp: 80,
            max_hp: 100,
            energy: 5,
            max_energy: 50,
        },
    }
}

fn adjust(op_id: &str, player: &str, currency: i64) -> DurableOp {
    DurableOp::Adjust(Adjust {
        op_id: op_id.into(),
        player: player.into(),
        currency,
        ..Adjust::default()
    })
}

fn gem(id: u64, x: f32) -> GroundItem {
    GroundItem {
        id,
        kind: "gem".into(),
        count: 1,
        x,
        y: x / 2.0,
    }
}

/// A room at revision `rev` with `ground` items and one pick-up in flight.
fn room_at(map: &str, rev: u64, ground: &[u64]) -> RoomState {
    RoomState {
        rev,
        next_item: 100,
        items: ground.iter().map(|id| gem(*id, *id as f32)).collect(),
        pending: vec![PendingPickup {
            op_id: format!("pickup:{map}:99"),
            player: "ada".into(),
            item: gem(99, 9.5),
        }],
        ..RoomState::new(map)
    }
}

fn items(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

/// Whether op `id` was applied to `player`, as the store says: its ledger
/// row is done, or (Mongo, between its steps) the player holds the id.
async fn op_applied(store: &Arc<dyn Store>, player: &str, id: &str) -> bool {
    let p = store.load_player(player.into()).await.unwrap().unwrap();
    if p.pending_ops.iter().any(|o| o == id) {
        return true;
    }
    matches!(
        store.load_op(id.into()).await.unwrap(),
        Some(r) if r.state == OpState::Done
    )
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

mod cases {
    pub use super::admin_docs::*;
    pub use super::exactness::*;
    use super::*;

    /// Every document type goes in and comes back the same.
    pub async fn round_trips(mut fx: Fixture) {
        let p = fx.persister(fx.config()).await;
        let fresh_profile = p.load_profile("ada", "Ada").await.unwrap();
        assert_eq!(fresh_profile.name, "Ada");
        assert_eq!(fresh_profile.v, PLAYER_SCHEMA);
        assert_eq!(fresh_profile.inventory.currency, 0);
        // Loading again does not reset anything.
        let again = p.load_profile("ada", "Someone else").await.unwrap();
        assert_eq!(again, fresh_profile);

        let ack = p
            .durable(DurableOp::Adjust(Adjust {
                op_id: "grant-1".into(),
                player: "ada".into(),
                currency: 250,
                items: items(&[("sword", 1), ("potion", 3)]),
                progress: items(&[("quest-intro", 2)]),
                fence: None,
            }))
            .await
            .unwrap();
        assert_eq!(ack.inventory("ada").unwrap().currency, 250);
        p.player_state("ada", state("arena", 42.5));
        let room = RoomState {
            items: vec![
                GroundItem {
                    id: 1,
                    kind: "potion".into(),
                    count: 2,
                    x: 10.0,
                    y: 20.5,
                },
                GroundItem {
                    id: 2,
                    kind: "sword".into(),
                    count: 1,
                    x: 0.0,
                    y: 999.0,
                },
            ],
            ..RoomState::new("arena")
        };
        p.room_state(room.clone());
        p.flush().await.unwrap();

        let fresh = fx.fresh().await;
        let stored = fresh.load_player("ada".into()).await.unwrap().unwrap();
        assert_eq!(stored.name, "Ada");
        assert_eq!(stored.state, state("arena", 42.5));
        assert_eq!(stored.inventory.currency, 250);
        assert_eq!(
            stored.inventory.items,
            items(&[("potion", 3), ("sword", 1)])
        );
        assert_eq!(stored.progress, items(&[("quest-intro", 2)]));
        let grant = fresh.load_op("grant-1".into()).await.unwrap().unwrap();
        assert_eq!(
            (grant.state, grant.player.as_str(), grant.currency),
            (OpState::Done, "ada", 250)
        );
        assert!(
            stored.recent_ops.is_empty(),
            "the old window is not written"
        );
        assert_eq!(
            fresh.load_room("arena".into()).await.unwrap(),
            Some(room.clone())
        );
        assert_eq!(fresh.load_rooms().await.unwrap(), vec![room]);
        assert_eq!(fresh.load_room("nowhere".into()).await.unwrap(), None);
        assert_eq!(fresh.load_player("nobody".into()).await.unwrap(), None);

        // A volatile write for a player never loaded creates a whole
        // profile (no partial documents).
        p.player_state("walker", state("plains", 1.0));
        p.flush().await.unwrap();
        let walker = fresh.load_player("walker".into()).await.unwrap().unwrap();
        assert_eq!(walker.state, state("plains", 1.0));
        assert_eq!(walker.inventory.currency, 0);

        // Indexes are created idempotently: preparing again is harmless.
        let store = p.store().unwrap();
        store.prepare().await.unwrap();
        store.prepare().await.unwrap();
        let report = p.shutdown(Duration::from_secs(5)).await;
        assert!(!report.deadline_hit, "{report:?}");
    }

    /// Old documents are migrated (and written back); bad and unknown ones
    /// are reported with their id and skipped.
    pub async fn migrations_and_bad_documents(mut fx: Fixture) {
        let p = fx.persister(fx.config()).await;
        let store = p.store().unwrap();
        store
            .put_raw(
                PLAYERS,
                doc! {
                    "_id": "old-timer", "name": "Bob", "gold": 42_i32,
                    "items": ["potion", "potion", "shield"],
                    "map": "lobby", "pos": { "x": 3.0, "y": 4.0 },
                },
            )
            .await
            .unwrap();
        store
            .put_raw(PLAYERS, doc! { "_id": "broken", "v": 2, "name": 7 })
            .await
            .unwrap();
        store
            .put_raw(
                PLAYERS,
                doc! { "_id": "from-the-future", "v": 99, "name": "x" },
            )
            .await
            .unwrap();
        store
            .put_raw(ROOMS, doc! { "_id": "junk", "v": 1, "items": "not a list" })
            .await
            .unwrap();
        store
            .put_raw(ROOMS, doc! { "_id": "future", "v": 7 })
            .await
            .unwrap();
        p.room_state(RoomState::new("lobby"));
        p.flush().await.unwrap();

        let bob = p.load_profile("old-timer", "ignored").await.unwrap();
        assert_eq!(bob.v, PLAYER_SCHEMA);
        assert_eq!(bob.name, "Bob");
        assert_eq!(bob.inventory.currency, 42);
        assert_eq!(bob.inventory.items, items(&[("potion", 2), ("shield", 1)]));
        assert_eq!(
            (bob.state.map.as_str(), bob.state.x, bob.state.y),
            ("lobby", 3.0, 4.0)
        );
        // Written back in the new schema: durable ops work on it.
        let ack = p.durable(adjust("spend", "old-timer", -40)).await.unwrap();
        assert_eq!(ack.inventory("old-timer").unwrap().currency, 2);
        let fresh = fx.fresh().await;
        assert_eq!(
            fresh
                .load_player("old-timer".into())
                .await
                .unwrap()
                .unwrap()
                .v,
            PLAYER_SCHEMA
        );

        for id in ["broken", "from-the-future"] {
            match p.load_profile(id, "x").await {
                Err(DurableError::BadDocument(e)) => assert_eq!(e.id, id),
                other => panic!("{id}: expected a bad document error, got {other:?}"),
            }
        }
        // A trade with a bad document fails and changes nothing.
        let with_broken = Trade {
            id: "bt".into(),
            a: "old-timer".into(),
            b: "broken".into(),
            a_gives: Bundle {
                currency: 1,
                items: BTreeMap::new(),
            },
            b_gives: Bundle::default(),
        };
        match p.durable(DurableOp::Trade(with_broken)).await {
            Err(DurableError::BadDocument(e)) => assert_eq!(e.id, "broken"),
            other => panic!("expected a bad document error, got {other:?}"),
        }
        let bob = fresh
            .load_player("old-timer".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(bob.inventory.currency, 2);
        assert!(bob.pending_trades.is_empty());
        assert!(p.healthy());
        // Bad rooms are skipped, the good one is read.
        let rooms = fresh.load_rooms().await.unwrap();
        assert_eq!(rooms, vec![RoomState::new("lobby")]);
        // Nothing crashed: the persister still works.
        p.player_state("old-timer", state("arena", 5.0));
        p.flush().await.unwrap();
        assert!(p.healthy());
        p.shutdown(Duration::from_secs(5)).await;
    }

    /// 1,000 updates of one key within an interval become at most a few
    /// writes, and the last one is what is stored.
    pub async fn coalescing(mut fx: Fixture) {
        let config = server::store::StoreConfig {
            flush_interval_ms: 1_000,
            ..fx.config()
        };
        let p = fx.persister(config).await;
        p.flush().await.unwrap();
        let before = p.stats();
        for i in 0..1_000 {
            p.player_state("hot", state("arena", i as f32));
        }
        p.flush().await.unwrap();
        let one_key = p.stats().volatile_written - before.volatile_written;
        assert!(
            (1..=3).contains(&one_key),
            "1,000 updates of one key took {one_key} writes"
        );
        // Many keys: the dirty map stays bounded by the number of keys.
        for round in 0..20 {
            for k in 0..50 {
                p.player_state(&format!("p{k}"), state("plains", round as f32));
            }
            assert!(p.dirty_keys() <= 51, "dirty keys {}", p.dirty_keys());
        }
        p.flush().await.unwrap();
        let after = p.stats();
        assert_eq!(after.volatile_updates - before.volatile_updates, 2_000);
        let writes = after.volatile_written - before.volatile_written;
        assert!(
            (51..=51 * 3).contains(&writes),
            "2,000 updates of 51 keys took {writes} writes"
        );
        let fresh = fx.fresh().await;
        let hot = fresh.load_player("hot".into()).await.unwrap().unwrap();
        assert_eq!(hot.state.x, 999.0);
        let p7 = fresh.load_player("p7".into()).await.unwrap().unwrap();
        assert_eq!(p7.state.x, 19.0);
        p.shutdown(Duration::from_secs(5)).await;
    }

    /// A durable op is acknowledged only once a fresh handle can read it; a
    /// refused one changes nothing; a retried one applies once.
    pub async fn write_through(mut fx: Fixture) {
        let config = server::store::StoreConfig {
            // No volatile flush can make the durable write visible.
            flush_interval_ms: 600_000,
            ..fx.config()
        };
        let p = fx.persister(config).await;
        p.load_profile("cara", "Cara").await.unwrap();
        let fresh = fx.fresh().await;

        let ack = p.durable(adjust("pay-1", "cara", 100)).await.unwrap();
        assert!(!ack.replayed);
        let stored = fresh.load_player("cara".into()).await.unwrap().unwrap();
        assert_eq!(
            stored.inventory.currency, 100,
            "acknowledged but not stored"
        );

        match p.durable(adjust("pay-2", "cara", -101)).await {
            Err(DurableError::Rejected(Rejection::Insufficient { player, what })) => {
                assert_eq!((player.as_str(), what.as_str()), ("cara", "currency"));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let take_missing = DurableOp::Adjust(Adjust {
            op_id: "take-sword".into(),
            player: "cara".into(),
            currency: 50,
            items: items(&[("sword", -1)]),
            ..Adjust::default()
        });
        assert!(matches!(
            p.durable(take_missing).await,
            Err(DurableError::Rejected(Rejection::Insufficient { .. }))
        ));
        let stored = fresh.load_player("cara".into()).await.unwrap().unwrap();
        assert_eq!(stored.inventory.currency, 100, "a refused op changed state");

        let replay = p.durable(adjust("pay-1", "cara", 100)).await.unwrap();
        assert!(replay.replayed);
        assert_eq!(replay.inventory("cara").unwrap().currency, 100);
        assert!(matches!(
            p.durable(adjust("x", "nobody", 1)).await,
            Err(DurableError::Rejected(Rejection::NoSuchPlayer(_)))
        ));
        assert!(matches!(
            p.durable(DurableOp::Adjust(Adjust {
                op_id: "bad".into(),
                player: "cara".into(),
                items: items(&[("a.b", 1)]),
                ..Adjust::default()
            }))
            .await,
            Err(DurableError::Invalid(_))
        ));

        // Concurrent ops on one player lose nothing.
        let ops: Vec<_> = (0..20)
            .map(|i| p.durable(adjust(&format!("c{i}"), "cara", 1)))
            .collect();
        for r in futures_util::future::join_all(ops).await {
            r.unwrap();
        }
        let stored = fresh.load_player("cara".into()).await.unwrap().unwrap();
        assert_eq!(stored.inventory.currency, 120);
        assert_eq!(p.stats().volatile_written, 0);
        p.shutdown(Duration::from_secs(5)).await;
    }

    /// A trade is both sides or neither, and idempotent by id.
    pub async fn trades(mut fx: Fixture) {
        let p = fx.persister(fx.config()).await;
        for (id, gold, item) in [("ann", 100, "gem"), ("ben", 10, "sword")] {
            p.load_profile(id, id).await.unwrap();
            p.durable(DurableOp::Adjust(Adjust {
                op_id: format!("seed-{id}"),
                player: id.into(),
                currency: gold,
                items: items(&[(item, 2)]),
                ..Adjust::default()
            }))
            .await
            .unwrap();
        }
        let trade = |id: &str, ann_gold: i64, ben_swords: i64| Trade {
            id: id.into(),
            a: "ann".into(),
            b: "ben".into(),
            a_gives: Bundle {
                currency: ann_gold,
                items: BTreeMap::new(),
            },
            b_gives: Bundle {
                currency: 0,
                items: items(&[("sword", ben_swords)]),
            },
        };
        let ack = p
            .durable(DurableOp::Trade(trade("t1", 30, 1)))
            .await
            .unwrap();
        let ann = ack.inventory("ann").unwrap();
        let ben = ack.inventory("ben").unwrap();
        assert_eq!((ann.currency, ann.items.get("sword")), (70, Some(&1)));
        assert_eq!((ben.currency, ben.items.get("sword")), (40, Some(&1)));

        let fresh = fx.fresh().await;
        let check = |want_ann: (i64, i64), want_ben: (i64, i64)| {
            let fresh = fresh.clone();
            async move {
                let a = fresh.load_player("ann".into()).await.unwrap().unwrap();
                let b = fresh.load_player("ben".into()).await.unwrap().unwrap();
                let swords = |p: &server::store::PlayerProfile| {
                    p.inventory.items.get("sword").copied().unwrap_or(0)
                };
                assert_eq!((a.inventory.currency, swords(&a)), want_ann);
                assert_eq!((b.inventory.currency, swords(&b)), want_ben);
                assert!(a.pending_trades.is_empty() && b.pending_trades.is_empty());
            }
        };
        check((70, 1), (40, 1)).await;
        let record = fresh.load_trade("t1".into()).await.unwrap().unwrap();
        assert_eq!(record.state, TradeState::Done);

        // Ben has one sword left: a trade for two fails on his side after
        // Ann's side could be taken. Neither side changes.
        match p.durable(DurableOp::Trade(trade("t2", 10, 2))).await {
            Err(DurableError::Rejected(Rejection::Insufficient { player, .. })) => {
                assert_eq!(player, "ben")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        check((70, 1), (40, 1)).await;
        // Retries of a trade get the first outcome.
        let replay = p
            .durable(DurableOp::Trade(trade("t1", 30, 1)))
            .await
            .unwrap();
        assert!(replay.replayed);
        assert!(matches!(
            p.durable(DurableOp::Trade(trade("t2", 10, 2))).await,
            Err(DurableError::Rejected(Rejection::TradeCancelled(_)))
        ));
        assert!(matches!(
            p.durable(DurableOp::Trade(trade("t1", 31, 1))).await,
            Err(DurableError::Rejected(Rejection::TradeIdReused(_)))
        ));
        check((70, 1), (40, 1)).await;
        assert!(matches!(
            p.durable(DurableOp::Trade(Trade {
                b: "nobody".into(),
                ..trade("t3", 1, 1)
            }))
            .await,
            Err(DurableError::Rejected(Rejection::NoSuchPlayer(_)))
        ));
        check((70, 1), (40, 1)).await;

        // Concurrent trades and adjustments keep the totals.
        let mut ops = Vec::new();
        for i in 0..10 {
            let t = Trade {
                b_gives: Bundle::default(),
                ..trade(&format!("c{i}"), 1, 1)
            };
            ops.push(p.durable(DurableOp::Trade(t)));
            ops.push(p.durable(adjust(&format!("tip{i}"), "ben", 1)));
        }
        for r in futures_util::future::join_all(ops).await {
            r.unwrap();
        }
        check((60, 1), (60, 1)).await;
        p.shutdown(Duration::from_secs(5)).await;
    }

    /// The store goes away (hangs, then refuses connections) while updates
    /// keep coming: nothing blocks, durable writes fail fast, and after it
    /// returns every acknowledged write and the latest volatile state are
    /// stored.
    pub async fn outage(mut fx: Fixture) {
        let config = fx.config();
        let durable_timeout = config.durable_timeout();
        let p = fx.persister(config).await;
        p.load_profile("dora", "Dora").await.unwrap();
        let mut acked = 0_i64;
        let mut in_doubt = Vec::new();
        let mut unsent = Vec::new();
        let mut next_op = 0;
        let mut latest = BTreeMap::new();
        let mut slowest_volatile = Duration::ZERO;

        let durable = |p: &server::store::Persister, next_op: &mut usize| {
            *next_op += 1;
            let id = format!("op{next_op}");
            (id.clone(), p.durable(adjust(&id, "dora", 1)))
        };

        // Healthy: a few acknowledged writes.
        for _ in 0..3 {
            let (_, op) = durable(&p, &mut next_op);
            op.await.unwrap();
            acked += 1;
        }
        type Switch = fn(&mut Fixture);
        let outages: [(&str, Switch, Switch); 2] = [
            ("hang", Fixture::outage_begin, Fixture::outage_end),
            ("crash", Fixture::crash_begin, Fixture::crash_end),
        ];
        for (outage, begin, end) in outages {
            tracing::info!("outage test: {outage}");
            begin(&mut fx);
            let down_at = Instant::now();
            let mut tick = 0_u32;
            // About 3 s of traffic with the store down.
            while down_at.elapsed() < Duration::from_secs(3) {
                tick += 1;
                let t0 = Instant::now();
                for k in 0..20 {
                    let x = (tick * 100 + k) as f32;
                    p.player_state(&format!("mover{k}"), state("plains", x));
                    latest.insert(format!("mover{k}"), x);
                }
                slowest_volatile = slowest_volatile.max(t0.elapsed());
                if tick % 10 == 0 {
                    let (id, op) = durable(&p, &mut next_op);
                    let t0 = Instant::now();
                    let result = op.await;
                    let took = t0.elapsed();
                    match result {
                        Ok(_) => acked += 1,
                        Err(DurableError::Unavailable(_)) => {
                            assert!(
                                took < durable_timeout + Duration::from_millis(500),
                                "a durable write took {took:?} to fail"
                            );
                            unsent.push(id);
                        }
                        Err(DurableError::InDoubt(_)) => {
                            assert!(
                                took < durable_timeout + Duration::from_millis(1_000),
                                "a durable write took {took:?} to time out"
                            );
                            in_doubt.push(id);
                        }
                        Err(other) => panic!("unexpected error in an outage: {other:?}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(!p.healthy(), "{outage}: the store should be marked down");
            // Fail fast now that it is known to be down.
            let (id, op) = durable(&p, &mut next_op);
            let t0 = Instant::now();
            let result = op.await;
            assert!(
                matches!(result, Err(DurableError::Unavailable(_))),
                "{outage}: {result:?}"
            );
            assert!(
                t0.elapsed() < Duration::from_millis(100),
                "{outage}: failing fast took {:?}",
                t0.elapsed()
            );
            unsent.push(id);
            // A flush cannot complete while the store is down.
            let flushed = tokio::time::timeout(Duration::from_millis(200), p.flush()).await;
            assert!(
                !matches!(flushed, Ok(Ok(()))),
                "{outage}: flushed while down"
            );
            end(&mut fx);
            tracing::info!("outage test: {outage} over");
            // Back: the persister notices within its backoff.
            let back_at = Instant::now();
            while !p.healthy() {
                assert!(
                    back_at.elapsed() < Duration::from_secs(20),
                    "{outage}: the store never came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracing::info!(
                "outage test: {outage}: healthy again {:?} after the store returned",
                back_at.elapsed()
            );
            let (_, op) = durable(&p, &mut next_op);
            op.await.unwrap();
            acked += 1;
        }
        assert!(
            slowest_volatile < Duration::from_millis(50),
            "volatile writes blocked for {slowest_volatile:?}"
        );
        assert!(!unsent.is_empty());
        p.flush().await.unwrap();
        assert_eq!(p.dirty_keys(), 0);
        assert!(p.stats().flush_failures > 0);
        // Ops answered in doubt go on in the background: shutting down
        // waits for them, so what is read below is final.
        p.shutdown(Duration::from_secs(5)).await;

        let fresh = fx.fresh().await;
        let dora = fresh.load_player("dora".into()).await.unwrap().unwrap();
        let mut doubtful_applied = 0;
        for id in &in_doubt {
            if op_applied(&fresh, "dora", id).await {
                doubtful_applied += 1;
            }
        }
        for id in &unsent {
            assert!(
                !op_applied(&fresh, "dora", id).await,
                "{id} failed as unavailable but was applied"
            );
        }
        assert_eq!(
            dora.inventory.currency,
            acked + doubtful_applied,
            "acknowledged {acked}, in doubt {in_doubt:?}, applied of those {doubtful_applied}"
        );
        for (id, x) in &latest {
            let stored = fresh.load_player(id.clone()).await.unwrap().unwrap();
            assert_eq!(stored.state.x, *x, "{id}: latest state lost");
        }
    }

    /// Shutdown writes everything dirty before it returns.
    pub async fn shutdown_flush(mut fx: Fixture) {
        let config = server::store::StoreConfig {
            flush_interval_ms: 600_000,
            ..fx.config()
        };
        let p = fx.persister(config).await;
        for round in 0..5 {
            for k in 0..200 {
                p.player_state(&format!("s{k}"), state("lobby", (round * 1_000 + k) as f32));
            }
        }
        p.room_state(RoomState::new("lobby"));
        assert_eq!(p.stats().volatile_written, 0);
        let report = p.shutdown(Duration::from_secs(10)).await;
        assert!(!report.deadline_hit, "{report:?}");
        assert_eq!(report.left_dirty, 0);
        assert_eq!(report.flushed, 201);
        let fresh = fx.fresh().await;
        for k in [0, 99, 199] {
            let s = fresh.load_player(format!("s{k}")).await.unwrap().unwrap();
            assert_eq!(s.state.x, (4_000 + k) as f32);
        }
        assert!(fresh.load_room("lobby".into()).await.unwrap().is_some());
    }

    /// A room document with ground items and a pick-up in flight comes back
    /// the same, written behind or through.
    pub async fn rooms_round_trip_with_items_and_pending(mut fx: Fixture) {
        let p = fx.persister(fx.config()).await;
        let fresh = fx.fresh().await;
        let behind = room_at("meadow", 3, &[1, 2, 5]);
        p.room_state(behind.clone());
        p.flush().await.unwrap();
        assert_eq!(
            fresh.load_room("meadow".into()).await.unwrap(),
            Some(behind)
        );

        let through = room_at("meadow", 4, &[1, 5]);
        assert_eq!(p.durable_room(through.clone()).await, Ok(true));
        // Acknowledged means stored: a fresh handle reads it at once.
        assert_eq!(
            fresh.load_room("meadow".into()).await.unwrap(),
            Some(through.clone())
        );
        assert_eq!(p.load_room("meadow").await.unwrap(), Some(through));
        assert_eq!(p.load_room("elsewhere").await.unwrap(), None);
        p.shutdown(Duration::from_secs(5)).await;
    }

    /// A room write not newer than the stored one is skipped: a write-behind
    /// flushed after a newer write-through never brings an item back.
    pub async fn stale_room_writes_are_skipped(mut fx: Fixture) {
        let config = server::store::StoreConfig {
            flush_interval_ms: 600_000,
            ..fx.config()
        };
        let p = fx.persister(config).await;
        let fresh = fx.fresh().await;
        // Revision 5 waits behind; revision 6 (item 2 picked) goes through.
        p.room_state(room_at("grove", 5, &[1, 2]));
        let newer = room_at("grove", 6, &[1]);
        assert_eq!(p.durable_room(newer.clone()).await, Ok(true));
        // The stale one is no longer what a load sees, flushed or not.
        assert_eq!(p.load_room("grove").await.unwrap(), Some(newer.clone()));
        p.room_state(room_at("grove", 5, &[1, 2]));
        assert_eq!(p.load_room("grove").await.unwrap(), Some(newer.clone()));
        p.flush().await.unwrap();
        assert_eq!(
            fresh.load_room("grove".into()).await.unwrap(),
            Some(newer.clone())
        );
        // Stale and equal revisions through: skipped, not errors.
        assert_eq!(
            p.durable_room(room_at("grove", 4, &[1, 2, 3])).await,
            Ok(false)
        );
        assert_eq!(p.durable_room(room_at("grove", 6, &[])).await, Ok(false));
        assert_eq!(fresh.load_room("grove".into()).await.unwrap(), Some(newer));
        // Newer ones win, either way.
        let seven = room_at("grove", 7, &[]);
        p.room_state(seven.clone());
        p.flush().await.unwrap();
        assert_eq!(
            fresh.load_room("grove".into()).await.unwrap(),
            Some(seven.clone())
        );
        let stats = p.stats();
        assert_eq!(stats.rejected, 0, "a stale write is not a bad document");
        assert!(p.healthy());
        p.shutdown(Duration::from_secs(5)).await;
    }

    /// The epoch fence: once a shard claimed a room at epoch E, writes of
    /// the room document and pick-up credits from an older epoch are
    /// refused (never retried); newer ones pass whatever their revision;
    /// a claim never lowers the stored epoch.
    pub async fn the_owner_epoch_fences_room_writes_and_pickups(mut fx: Fixture) {
        let config = server::store::StoreConfig {
            flush_interval_ms: 600_000,
            ..fx.config()
        };
        let p = fx.persister(config).await;
        let fresh = fx.fresh().await;
        let at = |owner_epoch: u64, rev: u64, ground: &[u64]| RoomState {
            owner_epoch,
            ..room_at("grove", rev, ground)
        };
        fn fenced<T>(r: Result<T, DurableError>) -> bool {
            matches!(r, Err(DurableError::Rejected(Rejection::Fenced(_))))
        }
        // A single shard's document (epoch 0), then a shard claims it at 2.
        assert_eq!(p.durable_room(at(0, 1, &[1, 2])).await, Ok(true));
        assert_eq!(p.claim_room("grove", 2).await, Ok(0));
        let claimed = fresh.load_room("grove".into()).await.unwrap().unwrap();
        assert_eq!((claimed.owner_epoch, claimed.rev), (2, 1));
        assert_eq!(claimed.items.len(), 2, "a claim keeps the document");

        // Older owners are refused, through or behind, whatever their rev.
        assert!(fenced(p.durable_room(at(1, 10, &[])).await));
        assert!(fenced(p.durable_room(at(0, 11, &[])).await));
        p.room_state(at(1, 12, &[]));
        p.flush().await.unwrap();
        assert_eq!(
            fresh.load_room("grove".into()).await.unwrap(),
            Some(claimed)
        );
        assert!(p.stats().rejected >= 1, "a fenced write-behind is dropped");

        // The owner writes by revision; a newer owner wins outright.
        assert_eq!(p.durable_room(at(2, 2, &[1])).await, Ok(true));
        assert_eq!(p.durable_room(at(2, 2, &[])).await, Ok(false));
        assert_eq!(p.durable_room(at(3, 1, &[7])).await, Ok(true));
        let now = fresh.load_room("grove".into()).await.unwrap().unwrap();
        assert_eq!((now.owner_epoch, now.rev, now.items.len()), (3, 1, 1));

        // A claim never goes down; the same epoch again is fine.
        assert!(fenced(p.claim_room("grove", 2).await));
        assert_eq!(p.claim_room("grove", 3).await, Ok(3));
        assert_eq!(p.claim_room("grove", 5).await, Ok(3));
        // A room never stored: its claim makes an empty document.
        assert_eq!(p.claim_room("meadow", 4).await, Ok(0));
        let meadow = fresh.load_room("meadow".into()).await.unwrap().unwrap();
        assert_eq!((meadow.owner_epoch, meadow.rev), (4, 0));
        assert!(meadow.items.is_empty() && meadow.pending.is_empty());
        assert!(
            meadow.epoch.is_empty(),
            "the pick-up nonce is drawn at load"
        );

        // Pick-up credits carry the room's epoch: an older one is refused
        // and nothing is applied; the owner's goes through.
        p.load_profile("ada", "Ada").await.unwrap();
        let credit = |op_id: &str, owner_epoch: u64| {
            DurableOp::Adjust(Adjust {
                op_id: op_id.into(),
                player: "ada".into(),
                items: items(&[("gem", 1)]),
                fence: Some(RoomFence {
                    room: "grove".into(),
                    owner_epoch,
                }),
                ..Adjust::default()
            })
        };
        assert!(fenced(p.durable(credit("pickup:grove:x:1", 3)).await));
        assert!(!op_applied(&fresh, "ada", "pickup:grove:x:1").await);
        let ack = p.durable(credit("pickup:grove:x:1", 5)).await.unwrap();
        assert_eq!(ack.inventory("ada").unwrap().items.get("gem"), Some(&1));
        // A re-drive by a later owner is the same op: a replay.
        let again = p.durable(credit("pickup:grove:x:1", 6)).await.unwrap();
        assert!(again.replayed);
        assert!(p.healthy(), "fencing is not an outage");
        p.shutdown(Duration::from_secs(5)).await;
    }

    /// A version 1 room document is migrated; a bad one is reported with its
    /// id and loads as none, so its room starts empty instead of failing,
    /// and the room's next write replaces it.
    pub async fn old_rooms_migrate_and_bad_ones_read_as_none(mut fx: Fixture) {
        let p = fx.persister(fx.config()).await;
        let store = p.store().unwrap();
        store
            .put_raw(
                ROOMS,
                doc! {
                    "_id": "ruins", "v": 1,
                    "items": [
                        { "id": "4", "kind": "gem", "count": 2_i64, "x": 1.5, "y": 2.5 },
                        { "id": "odd", "kind": "gem", "count": 1_i64, "x": 3.0, "y": 4.0 },
                    ],
                },
            )
            .await
            .unwrap();
        let bad = doc! { "_id": "swamp", "v": 2, "rev": 3_i64, "items": "not a list" };
        store.put_raw(ROOMS, bad.clone()).await.unwrap();

        let ruins = p.load_room("ruins").await.unwrap().unwrap();
        assert_eq!(ruins.v, ROOM_SCHEMA);
        assert_eq!(ruins.rev, 0);
        assert_eq!(
            ruins
                .items
                .iter()
                .map(|i| (i.id, i.count))
                .collect::<Vec<_>>(),
            vec![(4, 2), (5, 1)]
        );
        assert_eq!(ruins.next_item, 6);
        assert!(ruins.pending.is_empty());

        let err = server::store::model::decode_room(bad).unwrap_err();
        assert_eq!((err.collection, err.id.as_str()), (ROOMS, "swamp"));
        assert_eq!(p.load_room("swamp").await.unwrap(), None);
        let fresh = fx.fresh().await;
        assert_eq!(fresh.load_room("swamp".into()).await.unwrap(), None);
        // The bad document is kept until the room writes past its rev.
        assert_eq!(p.durable_room(room_at("swamp", 2, &[1])).await, Ok(false));
        let replaced = room_at("swamp", 4, &[1]);
        assert_eq!(p.durable_room(replaced.clone()).await, Ok(true));
        assert_eq!(
            fresh.load_room("swamp".into()).await.unwrap(),
            Some(replaced)
        );
        assert!(p.healthy());
        p.shutdown(Duration::from_secs(5)).await;
    }

    /// With the store down, shutdown gives up at its deadline and says so.
    pub async fn shutdown_deadline(mut fx: Fixture) {
        let p = fx.persister(fx.config()).await;
        p.player_state("late", state("lobby", 1.0));
        p.flush().await.unwrap();
        fx.outage_begin();
        p.player_state("late", state("lobby", 2.0));
        let t0 = Instant::now();
        let report = p.shutdown(Duration::from_millis(800)).await;
        let took = t0.elapsed();
        fx.outage_end();
        assert!(report.deadline_hit, "{report:?}");
        assert_eq!(report.left_dirty, 1);
        assert!(took < Duration::from_secs(4), "shutdown took {took:?}");
    }
}

mod exactness {
    use super::*;
    use server::store::StoreConfig;

    /// An op re-driven after 100 other durable changes of its player is
    /// credited once (no window of recent ids); the same id for a different
    /// op is refused; a refused op is not remembered (it may succeed later).
    pub async fn idempotency_is_exact(mut fx: Fixture) {
        let p = fx.persister(fx.config()).await;
        p.load_profile("finn", "Finn").await.unwrap();
        let pickup = |id: &str| {
            DurableOp::Adjust(Adjust {
                op_id: id.into(),
                player: "finn".into(),
                items: items(&[("gem", 1)]),
                ..Adjust::default()
            })
        };
        let first = p.durable(pickup("pickup:arena:e1:1")).await.unwrap();
        assert!(!first.replayed);
        for i in 0..100 {
            p.durable(adjust(&format!("other-{i}"), "finn", 1))
                .await
                .unwrap();
        }
        let again = p.durable(pickup("pickup:arena:e1:1")).await.unwrap();
        assert!(again.replayed, "a re-driven op was applied again");
        let fresh = fx.fresh().await;
        let finn = fresh.load_player("finn".into()).await.unwrap().unwrap();
        assert_eq!(finn.inventory.items, items(&[("gem", 1)]));
        assert_eq!(finn.inventory.currency, 100);
        assert!(op_applied(&fresh, "finn", "pickup:arena:e1:1").await);

        // The same id for another operation: refused, nothing changed.
        match p.durable(adjust("other-7", "finn", 5)).await {
            Err(DurableError::Rejected(Rejection::OpIdReused(id))) => assert_eq!(id, "other-7"),
            other => panic!("expected OpIdReused, got {other:?}"),
        }
        // A refused op leaves no trace: once affordable, it applies.
        assert!(matches!(
            p.durable(adjust("spend-200", "finn", -200)).await,
            Err(DurableError::Rejected(Rejection::Insufficient { .. }))
        ));
        assert!(!op_applied(&fresh, "finn", "spend-200").await);
        p.durable(adjust("top-up", "finn", 100)).await.unwrap();
        let spent = p.durable(adjust("spend-200", "finn", -200)).await.unwrap();
        assert!(!spent.replayed);
        assert_eq!(spent.inventory("finn").unwrap().currency, 0);
        let finn = fresh.load_player("finn".into()).await.unwrap().unwrap();
        assert_eq!(finn.inventory.currency, 0);

        // Ids applied before the ledger (the old window on the document)
        // still count as applied.
        let store = p.store().unwrap();
        let mut legacy = mongodb::bson::to_document(&finn).unwrap();
        legacy.insert("recent_ops", vec!["old-grant"]);
        store.put_raw(PLAYERS, legacy).await.unwrap();
        let old = p.durable(adjust("old-grant", "finn", 50)).await.unwrap();
        assert!(old.replayed);
        assert_eq!(old.inventory("finn").unwrap().currency, 0);
        p.shutdown(Duration::from_secs(5)).await;
    }

    /// An older revision of a player's state never replaces a newer one,
    /// whatever order the writes reach the store in; an equal one is
    /// stale too.
    pub async fn stale_player_writes_are_skipped(mut fx: Fixture) {
        let p = fx.persister(fx.config()).await;
        let store = p.store().unwrap();
        let write = |x: f32, rev: u64| {
            let store = store.clone();
            async move {
                store
                    .write_volatile(vec![Volatile::Player {
                        id: "gil".into(),
                        state: state("arena", x),
                        rev,
                    }])
                    .await
                    .unwrap()
            }
        };
        write(2.0, 20).await;
        write(1.0, 10).await;
        write(1.5, 20).await;
        let fresh = fx.fresh().await;
        let gil = fresh.load_player("gil".into()).await.unwrap().unwrap();
        assert_eq!((gil.state.x, gil.state_rev), (2.0, 20));
        write(3.0, 30).await;
        let gil = fresh.load_player("gil".into()).await.unwrap().unwrap();
        assert_eq!((gil.state.x, gil.state_rev), (3.0, 30));
        // A volatile write never touches durable fields, stale or not.
        p.durable(adjust("gil-pay", "gil", 9)).await.unwrap();
        write(0.5, 5).await;
        write(4.0, 40).await;
        let gil = fresh.load_player("gil".into()).await.unwrap().unwrap();
        assert_eq!((gil.state.x, gil.inventory.currency), (4.0, 9));

        // A stored revision ahead of this process's clock (another shard,
        // a clock that stepped back): once the profile is loaded, the
        // persister's next states are newer still.
        let ahead = (now_ms() as u64 + 86_400_000) * 1_000;
        write(5.0, ahead).await;
        let loaded = p.load_profile("gil", "Gil").await.unwrap();
        assert_eq!(loaded.state_rev, ahead);
        p.player_state("gil", state("arena", 6.0));
        p.flush().await.unwrap();
        let gil = fresh.load_player("gil".into()).await.unwrap().unwrap();
        assert_eq!(gil.state.x, 6.0);
        assert!(gil.state_rev > ahead);
        p.shutdown(Duration::from_secs(5)).await;
    }

    /// A flush that times out while the store is frozen (SIGSTOP for
    /// SecantusDB, a hang for the embedded store) and lands only after a
    /// newer state was written never replaces it. Each round freezes the
    /// store with one batch in flight, queues a newer state, lets the
    /// persister's retry go out on another pooled connection while still
    /// frozen, then thaws: the server runs both, in either order, and the
    /// persister sees the newer one acknowledged. Several rounds, so the
    /// late-old-batch order comes up.
    pub async fn a_late_batch_never_replaces_newer_state(mut fx: Fixture) {
        let mut config = StoreConfig {
            flush_interval_ms: 600_000,
            flush_timeout_ms: 2_000,
            retry_min_ms: 100,
            retry_max_ms: 200,
            ..fx.config()
        };
        // Idle connections ready, so a retry needs no handshake with the
        // frozen server.
        config.mongodb.min_pool_size = 4;
        let p = fx.persister(config).await;
        p.load_profile("hal", "Hal").await.unwrap();
        let fresh = fx.fresh().await;
        for round in 0..6 {
            let base = round as f32 * 1_000.0;
            p.player_state("hal", state("arena", base + 1.0));
            p.flush().await.unwrap();
            let warm: Vec<_> = (0..4).map(|_| p.load_room("arena")).collect();
            for r in futures_util::future::join_all(warm).await {
                r.unwrap();
            }
            fx.outage_begin();
            p.player_state("hal", state("arena", base + 417.4));
            // Sent, and no answer within the flush timeout.
            assert!(p.flush().await.is_err(), "flushed while frozen");
            p.player_state("hal", state("arena", base + 477.4));
            // The retry (after a 50-200 ms backoff) goes out while frozen.
            let retry = tokio::spawn(p.flush());
            tokio::time::sleep(Duration::from_millis(600)).await;
            fx.outage_end();
            let _ = retry.await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while p.dirty_keys() > 0 || !p.healthy() {
                assert!(Instant::now() < deadline, "never flushed after the thaw");
                let _ = p.flush().await;
            }
            // Give a batch still in the thawed server time to land.
            for _ in 0..5 {
                fresh.ping().await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let hal = fresh.load_player("hal".into()).await.unwrap().unwrap();
            assert_eq!(
                hal.state.x,
                base + 477.4,
                "round {round}: an older write replaced a newer one"
            );
        }
        p.shutdown(Duration::from_secs(5)).await;
    }

    /// Finished ledger rows (trades and ops) older than the retention are
    /// pruned, at the persister's start and then every minute; young ones
    /// and rows in progress stay.
    pub async fn the_ledgers_are_pruned_after_the_retention(mut fx: Fixture) {
        let p = fx.persister(fx.config()).await;
        p.load_profile("ivy", "Ivy").await.unwrap();
        p.load_profile("jon", "Jon").await.unwrap();
        p.durable(adjust("young-op", "ivy", 10)).await.unwrap();
        p.durable(DurableOp::Trade(Trade {
            id: "young-trade".into(),
            a: "ivy".into(),
            b: "jon".into(),
            a_gives: Bundle {
                currency: 1,
                items: BTreeMap::new(),
            },
            b_gives: Bundle::default(),
        }))
        .await
        .unwrap();
        let store = p.store().unwrap();
        let day = 86_400_000_i64;
        let old = now_ms() - 3 * day;
        for (collection, id, state) in [
            (OPS, "old-op", "done"),
            (OPS, "old-pending-op", "pending"),
            (TRADES, "old-trade", "done"),
            (TRADES, "old-cancelled", "cancelled"),
            (TRADES, "old-applied", "applied"),
        ] {
            let mut d = doc! {
                "_id": id, "v": 1, "state": state, "created_ms": old, "updated_ms": old,
            };
            if collection == OPS {
                d.extend(doc! { "player": "ivy", "currency": 1_i64, "items": {}, "progress": {} });
            } else {
                d.extend(doc! {
                    "a": "ivy", "b": "jon", "reason": "",
                    "a_gives": { "currency": 1_i64, "items": {} },
                    "b_gives": { "currency": 0_i64, "items": {} },
                });
            }
            store.put_raw(collection, d).await.unwrap();
        }
        // A retention longer than their age keeps everything.
        assert_eq!(
            store
                .prune_ledger(Duration::from_millis(4 * day as u64))
                .await
                .unwrap(),
            0
        );
        drop(store);
        p.shutdown(Duration::from_secs(5)).await;

        // Two days: the persister prunes at start.
        let config = StoreConfig {
            ledger_retention_ms: 2 * day as u64,
            ..fx.config()
        };
        let p = fx.persister(config).await;
        let fresh = fx.fresh().await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while fresh.load_op("old-op".into()).await.unwrap().is_some() {
            assert!(Instant::now() < deadline, "the expired op was never pruned");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(fresh
            .load_trade("old-trade".into())
            .await
            .unwrap()
            .is_none());
        assert!(fresh
            .load_trade("old-cancelled".into())
            .await
            .unwrap()
            .is_none());
        // In progress: kept, whatever its age (recovery settles it).
        // (Mongo's recovery finishes it meanwhile, which makes it young.)
        assert!(fresh
            .load_trade("old-applied".into())
            .await
            .unwrap()
            .is_some());
        // Young: kept, and still recognised as replays.
        assert!(fresh.load_op("young-op".into()).await.unwrap().is_some());
        assert!(fresh
            .load_trade("young-trade".into())
            .await
            .unwrap()
            .is_some());
        let replay = p.durable(adjust("young-op", "ivy", 10)).await.unwrap();
        assert!(replay.replayed);
        p.shutdown(Duration::from_secs(5)).await;
    }
}

/// The persister's own logic, over the embedded store behind a switch.
mod persister_logic {
    use super::*;
    use server::store::VolatileKey;

    /// A document the store refuses is reported and dropped; the others in
    /// its batch are written, and flushing goes on.
    #[test]
    fn a_refused_document_does_not_hold_back_its_batch() {
        run(Kind::Embedded, |mut fx| async move {
            let p = fx.persister(fx.config()).await;
            fx.faults
                .as_ref()
                .unwrap()
                .refuse(VolatileKey::Player("poison".into()));
            for k in 0..10 {
                p.player_state(&format!("ok{k}"), state("lobby", k as f32));
            }
            p.player_state("poison", state("lobby", 1.0));
            p.flush().await.unwrap();
            let stats = p.stats();
            assert_eq!(stats.rejected, 1);
            assert_eq!(stats.dirty_keys, 0);
            assert!(p.healthy());
            let fresh = fx.fresh().await;
            assert!(fresh.load_player("poison".into()).await.unwrap().is_none());
            let ok9 = fresh.load_player("ok9".into()).await.unwrap().unwrap();
            assert_eq!(ok9.state.x, 9.0);
            p.shutdown(Duration::from_secs(5)).await;
        });
    }

    /// A profile or room loaded while its latest state is still waiting to
    /// be flushed comes back with that state.
    #[test]
    fn loads_see_unflushed_state() {
        run(Kind::Embedded, |mut fx| async move {
            let config = server::store::StoreConfig {
                flush_interval_ms: 600_000,
                ..fx.config()
            };
            let p = fx.persister(config).await;
            p.load_profile("eve", "Eve").await.unwrap();
            p.player_state("eve", state("arena", 3.0));
            let mut room = RoomState::new("arena");
            room.items.push(GroundItem {
                id: 1,
                kind: "gem".into(),
                count: 1,
                x: 1.0,
                y: 2.0,
            });
            p.room_state(room.clone());
            assert_eq!(
                p.load_profile("eve", "Eve").await.unwrap().state,
                state("arena", 3.0)
            );
            assert_eq!(p.load_room("arena").await.unwrap(), Some(room));
            assert_eq!(p.stats().volatile_written, 0);
            p.shutdown(Duration::from_secs(5)).await;
        });
    }
}

mod mongodb_only {
    use super::*;
    use server::store::mongo::MongoStore;
    use server::store::{Persister, Store, StoreConfig};
    use store_support::{free_port, uri, Secantus};

    /// A prepared store holding players `a` and `b` with `gold` each.
    async fn players_a_and_b(config: &StoreConfig, gold: i64) -> MongoStore {
        let store = MongoStore::connect(&config.mongodb).await.unwrap();
        store.prepare().await.unwrap();
        for id in ["a", "b"] {
            store
                .load_or_create_player(id.into(), id.into())
                .await
                .unwrap();
            store
                .apply(adjust(&format!("seed-{id}"), id, gold))
                .await
                .unwrap();
        }
        store
    }

    /// A trade row `id` in `state` where `a` gives `b` `gold`, as a
    /// trading shard leaves it: each of `marked` carries the trade's mark,
    /// and `a` among them is debited.
    async fn stage_trade(
        db: &mongodb::Database,
        id: &str,
        state: &str,
        gold: i64,
        marked: &[&str],
    ) {
        db.collection::<mongodb::bson::Document>("trades")
            .insert_one(doc! {
                "_id": id, "v": 1, "state": state, "a": "a", "b": "b",
                "a_gives": { "currency": gold, "items": {} },
                "b_gives": { "currency": 0_i64, "items": {} },
                "reason": "", "created_ms": 0_i64, "updated_ms": 0_i64,
            })
            .await
            .unwrap();
        for &player in marked {
            let debit = if player == "a" { gold } else { 0 };
            db.collection::<mongodb::bson::Document>(PLAYERS)
                .update_one(
                    doc! { "_id": player },
                    doc! { "$inc": { "inventory.currency": -debit }, "$push": { "pending_trades": id } },
                )
                .await
                .unwrap();
        }
    }

    /// A store that is not up yet is retried, not fatal; meanwhile durable
    /// writes fail fast and volatile ones queue, then are written.
    #[test]
    fn starts_before_the_store_is_reachable() {
        run(Kind::Embedded, |fx| async move {
            let port = free_port();
            let mut config = StoreConfig {
                backend: server::store::Backend::Mongodb,
                ..fx.config()
            };
            config.mongodb.uri = uri(port);
            config.mongodb.database = "late_start".into();
            config.mongodb.server_selection_timeout_ms = 300;
            let p = Persister::start(config.clone()).unwrap();
            p.player_state("early", state("lobby", 7.0));
            tokio::time::sleep(Duration::from_millis(800)).await;
            assert!(!p.ready());
            let t0 = Instant::now();
            assert!(matches!(
                p.durable(adjust("e1", "early", 1)).await,
                Err(DurableError::Unavailable(_))
            ));
            assert!(t0.elapsed() < Duration::from_millis(100));
            let _db = Secantus::start_on(port);
            assert!(
                p.wait_ready(Duration::from_secs(20)).await,
                "never connected"
            );
            p.flush().await.unwrap();
            let fresh = MongoStore::connect(&config.mongodb).await.unwrap();
            let early = fresh.load_player("early".into()).await.unwrap().unwrap();
            assert_eq!(early.state.x, 7.0);
            p.shutdown(Duration::from_secs(5)).await;
        });
    }

    /// Half-done trades (a shard died between steps) are rolled back before
    /// the commit and forward after it.
    #[test]
    fn trade_recovery_settles_half_done_trades() {
        run(Kind::Mongo, |fx| async move {
            let config = fx.config();
            let store = players_a_and_b(&config, 50).await;
            let db = store.client().database(&config.mongodb.database);
            let players = db.collection::<mongodb::bson::Document>(PLAYERS);
            let trades = db.collection::<mongodb::bson::Document>("trades");
            let trade_doc = |id: &str, state: &str| {
                doc! {
                    "_id": id, "v": 1, "state": state, "a": "a", "b": "b",
                    "a_gives": { "currency": 10_i64, "items": {} },
                    "b_gives": { "currency": 5_i64, "items": {} },
                    "reason": "", "created_ms": 0_i64, "updated_ms": 0_i64,
                }
            };
            // Died after debiting a, before the commit.
            trades
                .insert_one(trade_doc("dead-1", "pending"))
                .await
                .unwrap();
            players
                .update_one(
                    doc! { "_id": "a" },
                    doc! { "$inc": { "inventory.currency": -10_i64 }, "$push": { "pending_trades": "dead-1" } },
                )
                .await
                .unwrap();
            // Died after the commit, before crediting.
            trades
                .insert_one(trade_doc("dead-2", "applied"))
                .await
                .unwrap();
            players
                .update_one(
                    doc! { "_id": "a" },
                    doc! { "$inc": { "inventory.currency": -10_i64 }, "$push": { "pending_trades": "dead-2" } },
                )
                .await
                .unwrap();
            players
                .update_one(
                    doc! { "_id": "b" },
                    doc! { "$inc": { "inventory.currency": -5_i64 }, "$push": { "pending_trades": "dead-2" } },
                )
                .await
                .unwrap();
            // A young pending trade (another shard may be running it) is left alone.
            let mut young = trade_doc("young", "pending");
            young.insert("updated_ms", server_now_ms());
            trades.insert_one(young).await.unwrap();

            let settled = store.recover_trades(Duration::from_secs(30)).await.unwrap();
            assert_eq!(settled, 2);
            let a = store.load_player("a".into()).await.unwrap().unwrap();
            let b = store.load_player("b".into()).await.unwrap().unwrap();
            // dead-1 rolled back; dead-2 completed: a 50-10+5, b 50-5+10.
            assert_eq!(a.inventory.currency, 45);
            assert_eq!(b.inventory.currency, 55);
            assert!(a.pending_trades.is_empty() && b.pending_trades.is_empty());
            let state = |id: &str| {
                let store = &store;
                let id = id.to_string();
                async move { store.load_trade(id).await.unwrap().unwrap().state }
            };
            assert_eq!(state("dead-1").await, TradeState::Cancelled);
            assert_eq!(state("dead-2").await, TradeState::Done);
            assert_eq!(state("young").await, TradeState::Pending);
            // Idempotent.
            assert_eq!(
                store.recover_trades(Duration::from_secs(30)).await.unwrap(),
                0
            );
        });
    }

    /// A cancel that comes after the trade committed (recovery read it
    /// pending, its shard committed it before recovery got to it) changes
    /// nothing: the debit stays and the credit is still made when the
    /// trade is finished. (Before, the cancel re-credited the giver
    /// first and pulled the receiver's mark, so the giver was refunded
    /// and the receiver never credited.)
    #[test]
    fn a_cancel_after_the_commit_changes_nothing() {
        run(Kind::Mongo, |fx| async move {
            let config = fx.config();
            let store = players_a_and_b(&config, 50).await;
            let db = store.client().database(&config.mongodb.database);
            // Debited both sides and committed, not yet credited.
            stage_trade(&db, "late", "applied", 10, &["a", "b"]).await;
            assert!(!store.cancel_trade("late").await.unwrap(), "committed");
            let a = store.load_player("a".into()).await.unwrap().unwrap();
            assert_eq!(a.inventory.currency, 40, "the giver was not refunded");
            assert_eq!(a.pending_trades, ["late"]);
            let b = store.load_player("b".into()).await.unwrap().unwrap();
            assert_eq!(b.pending_trades, ["late"], "the receiver's mark is kept");
            // Recovery finishes it: the receiver gets the coins.
            store.recover_trades(Duration::ZERO).await.unwrap();
            let b = store.load_player("b".into()).await.unwrap().unwrap();
            assert_eq!(b.inventory.currency, 60);
            assert!(b.pending_trades.is_empty());
            let state = store
                .load_trade("late".into())
                .await
                .unwrap()
                .unwrap()
                .state;
            assert_eq!(state, TradeState::Done);
            // A pending one is cancelled, once.
            stage_trade(&db, "early", "pending", 5, &["a"]).await;
            assert!(store.cancel_trade("early").await.unwrap());
            assert!(
                store.cancel_trade("early").await.unwrap(),
                "cancelled before"
            );
            let a = store.load_player("a".into()).await.unwrap().unwrap();
            assert_eq!(a.inventory.currency, 40, "refunded once");
            assert!(!store.cancel_trade("nobody").await.unwrap());
        });
    }

    /// Recovery racing live trades: with a recovery age of 0 every
    /// pending trade looks abandoned, so recovery runs beside each
    /// trade's own steps. Whatever the interleaving, a trade is in both
    /// inventories or in neither: every trade answered `done` ends done,
    /// and the balances are what the done trades make them.
    #[test]
    fn recovery_racing_live_trades_never_half_undoes_one() {
        run(Kind::Mongo, |fx| async move {
            let config = fx.config();
            let store = players_a_and_b(&config, 1_000).await;
            const TRADES: usize = 60;
            let trade = |i: usize| {
                let (a, b) = if i % 2 == 0 { ("a", "b") } else { ("b", "a") };
                Trade {
                    id: format!("race-{i}"),
                    a: a.into(),
                    b: b.into(),
                    a_gives: Bundle {
                        currency: 1 + i as i64 % 3,
                        items: BTreeMap::new(),
                    },
                    b_gives: Bundle::default(),
                }
            };
            let done = std::cell::Cell::new(false);
            let recovery = async {
                let mut passes = 0;
                while !done.get() {
                    store.recover_trades(Duration::ZERO).await.unwrap();
                    passes += 1;
                }
                passes
            };
            let trades = async {
                let answers = futures_util::future::join_all(
                    (0..TRADES).map(|i| store.apply(DurableOp::Trade(trade(i)))),
                )
                .await;
                done.set(true);
                answers
            };
            let (passes, answers) = tokio::join!(recovery, trades);
            assert!(passes > 0);
            // Settle whatever the race left half-done.
            store.recover_trades(Duration::ZERO).await.unwrap();
            let mut balance = BTreeMap::from([("a", 1_000_i64), ("b", 1_000_i64)]);
            let mut committed = 0;
            for (i, answer) in answers.iter().enumerate() {
                let t = trade(i);
                let state = store.load_trade(t.id.clone()).await.unwrap().unwrap().state;
                if answer.is_ok() {
                    assert_eq!(state, TradeState::Done, "{} was answered done", t.id);
                }
                assert!(
                    matches!(state, TradeState::Done | TradeState::Cancelled),
                    "{} left {state:?}",
                    t.id
                );
                if state == TradeState::Done {
                    committed += 1;
                    *balance.get_mut(t.a.as_str()).unwrap() -= t.a_gives.currency;
                    *balance.get_mut(t.b.as_str()).unwrap() += t.a_gives.currency;
                }
            }
            tracing::info!(committed, passes, "trades raced by recovery");
            for (id, want) in balance {
                let p = store.load_player(id.into()).await.unwrap().unwrap();
                assert_eq!(p.inventory.currency, want, "{id}");
                assert!(p.pending_trades.is_empty(), "{id}: {:?}", p.pending_trades);
            }
        });
    }

    /// Half-done adjustments (a shard died between the steps) are
    /// settled: one applied (the player holds its id) is marked done, one
    /// never applied is forgotten so that a retry applies it, a young one
    /// is left alone; an id stays on the player until its row has been done
    /// for the recovery age.
    #[test]
    fn op_recovery_settles_half_done_ops() {
        run(Kind::Mongo, |fx| async move {
            let config = fx.config();
            let store = MongoStore::connect(&config.mongodb).await.unwrap();
            store.prepare().await.unwrap();
            store
                .load_or_create_player("p".into(), "p".into())
                .await
                .unwrap();
            let db = store.client().database(&config.mongodb.database);
            let players = db.collection::<mongodb::bson::Document>(PLAYERS);
            let ops = db.collection::<mongodb::bson::Document>(OPS);
            let op_doc = |id: &str, state: &str, at: i64| {
                doc! {
                    "_id": id, "v": 1, "state": state, "player": "p",
                    "currency": 10_i64, "items": {}, "progress": {},
                    "created_ms": at, "updated_ms": at,
                }
            };
            // Died after applying, before marking the row done.
            ops.insert_one(op_doc("applied", "pending", 0))
                .await
                .unwrap();
            players
                .update_one(
                    doc! { "_id": "p" },
                    doc! { "$inc": { "inventory.currency": 10_i64 }, "$push": { "pending_ops": "applied" } },
                )
                .await
                .unwrap();
            // Died before applying.
            ops.insert_one(op_doc("unapplied", "pending", 0))
                .await
                .unwrap();
            // Young: another shard may be applying it right now.
            ops.insert_one(op_doc("young", "pending", server_now_ms()))
                .await
                .unwrap();
            // Done long ago, its id still on the player.
            ops.insert_one(op_doc("old-done", "done", 0)).await.unwrap();
            players
                .update_one(
                    doc! { "_id": "p" },
                    doc! { "$push": { "pending_ops": "old-done" } },
                )
                .await
                .unwrap();

            let settled = store.recover_trades(Duration::from_secs(30)).await.unwrap();
            assert_eq!(settled, 2);
            let state = |id: &str| {
                let store = &store;
                let id = id.to_string();
                async move { store.load_op(id).await.unwrap().map(|r| r.state) }
            };
            assert_eq!(state("applied").await, Some(OpState::Done));
            assert_eq!(state("unapplied").await, None);
            assert_eq!(state("young").await, Some(OpState::Pending));
            let p = store.load_player("p".into()).await.unwrap().unwrap();
            assert_eq!(p.inventory.currency, 10);
            // Just done: its id stays for now; the old one is gone.
            assert_eq!(p.pending_ops, vec!["applied".to_string()]);

            // Retries: the applied one is a replay, the other applies now.
            let again = store.apply(adjust("applied", "p", 10)).await.unwrap();
            assert!(again.replayed);
            let now = store.apply(adjust("unapplied", "p", 10)).await.unwrap();
            assert!(!now.replayed);
            assert_eq!(now.inventory("p").unwrap().currency, 20);
        });
    }

    fn server_now_ms() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }
}

mod admin_docs {
    use super::*;
    use protocol::admin::{Ban, Event, EventKind};

    fn audit_row(shard: &str, seq: u64, at_ms: u64, action: &str) -> Event {
        Event {
            seq,
            at_ms,
            shard: shard.into(),
            kind: EventKind::AdminAction,
            subject: "ada".into(),
            detail: "kicked".into(),
            actor: Some("alice".into()),
            action: Some(action.into()),
            result: Some("ok".into()),
        }
    }

    /// Bans go in, are replaced, come out and are lifted; audit rows are
    /// appended once per event (a retried append writes one row) and read
    /// back newest-last, through a fresh handle.
    pub async fn bans_and_the_audit_trail(mut fx: Fixture) {
        let p = fx.persister(fx.config()).await;
        let h = p.handle();
        let forever = Ban {
            player: "ada".into(),
            reason: "griefing".into(),
            by: "alice".into(),
            at_ms: 1_700_000_000_000,
            until_ms: None,
        };
        let timed = Ban {
            player: "bob".into(),
            reason: "spam".into(),
            by: "alice".into(),
            at_ms: 1_700_000_000_000,
            until_ms: Some(1_700_000_600_000),
        };
        for ban in [forever.clone(), timed.clone()] {
            h.admin_call(move |s| async move { s.put_ban(ban).await })
                .await
                .unwrap();
        }
        // Replacing a ban keeps one document per player.
        let longer = Ban {
            until_ms: Some(1_800_000_000_000),
            ..timed.clone()
        };
        let put = longer.clone();
        h.admin_call(move |s| async move { s.put_ban(put).await })
            .await
            .unwrap();
        let rows = [
            audit_row("s1", 1, 1_000, "kick"),
            audit_row("s1", 2, 2_000, "ban"),
            audit_row("s2", 1, 1_500, "unban"),
        ];
        for row in rows.iter().cloned().chain([rows[1].clone()]) {
            h.admin_call(move |s| async move { s.append_audit(row).await })
                .await
                .unwrap();
        }

        let fresh = fx.fresh().await;
        let mut bans = fresh.load_bans().await.unwrap();
        bans.sort_by(|a, b| a.player.cmp(&b.player));
        assert_eq!(bans, vec![forever.clone(), longer]);
        let audit = fresh.load_audit(10).await.unwrap();
        assert_eq!(
            audit,
            vec![rows[0].clone(), rows[2].clone(), rows[1].clone()],
            "one row per event, oldest first"
        );
        assert_eq!(
            fresh.load_audit(1).await.unwrap(),
            vec![rows[1].clone()],
            "the newest when limited"
        );

        let lifted = h
            .admin_call(|s| async move { s.delete_ban("bob".into()).await })
            .await
            .unwrap();
        assert!(lifted);
        let again = h
            .admin_call(|s| async move { s.delete_ban("bob".into()).await })
            .await
            .unwrap();
        assert!(!again, "nothing left to lift");
        let fresh = fx.fresh().await;
        assert_eq!(fresh.load_bans().await.unwrap(), vec![forever]);
    }
}
