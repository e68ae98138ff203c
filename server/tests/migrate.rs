//! Live room migration: three real shards (each with its listeners,
//! store, directory handle and QUIC tunnel) over a real `redis-server`,
//! test clients over WebSocket, and `POST /admin/rooms/{room}/migrate`.
//! Every wait is for a condition, with a generous deadline.

mod common;
mod redis_support;

use std::time::{Duration, Instant};

use common::{Client, Event, TestShard};
use protocol::admin::{Role, RoomMigrated};
use protocol::msg::{EntityId, Joined};
use protocol::{NoticeCode, ServerMsg};
use redis_support::RedisServer;
use server::cluster::{Directory, ShardId};
use server::config::{AdminToken, Config};
use server::ids::RoomId;

const OPERATOR: &str = "operator-token-for-migrations-01";
const VIEWER: &str = "viewer-token-for-migrations-0001";

/// Generous: these tests wait for conditions, never for fixed times.
const PATIENCE: Duration = Duration::from_secs(60);

fn config(redis: &RedisServer, prefix: &str, id: &str) -> Config {
    let mut config = common::test_config();
    config.cluster.redis = redis.url();
    config.cluster.secret = "s".repeat(32);
    config.cluster.key_prefix = prefix.into();
    config.cluster.shard_id = id.into();
    config.cluster.peer_addr = "127.0.0.1:0".parse().unwrap();
    // Slower than the defaults: the tests share two cores with builds.
    config.cluster.lease_ms = 6_000;
    config.cluster.renew_ms = 2_000;
    config.cluster.shard_ttl_ms = 6_000;
    config.cluster.heartbeat_ms = 1_000;
    config.cluster.redis_timeout_ms = 1_500;
    config.cluster.redis_wait_ms = 5_000;
    config.cluster.failover_budget_ms = 30_000;
    config.cluster.migrate_answer_ms = 5_000;
    config.cluster.migrate_pause_ms = 1_000;
    config.server.idle_timeout_ms = 120_000;
    config.auth.secret = "a".repeat(48);
    config.admin.tokens = vec![
        AdminToken {
            token: OPERATOR.into(),
            role: Role::Operator,
            name: "olga".into(),
        },
        AdminToken {
            token: VIEWER.into(),
            role: Role::Viewer,
            name: "victor".into(),
        },
    ];
    config.admin.fault_injection = true;
    config.rooms.call_timeout_ms = 5_000;
    // Stalls injected here are the test's, not the watchdog's to fix.
    config.supervision.stall_timeout_ms = 60_000;
    config
}

struct Cluster {
    shards: Vec<Option<TestShard>>,
    dir: Directory,
    redis: RedisServer,
}

impl Cluster {
    /// Three shards, `a`, `b` and `c`, each registered and ready.
    async fn start(prefix: &str, tune: impl Fn(&mut Config)) -> Cluster {
        let redis = RedisServer::start();
        let mut shards = Vec::new();
        for id in ["a", "b", "c"] {
            let mut config = config(&redis, prefix, id);
            tune(&mut config);
            let shard = tokio::task::spawn_blocking(move || common::start(config))
                .await
                .unwrap();
            shards.push(Some(shard));
        }
        let dir = shards[0].as_ref().unwrap().cluster.clone().unwrap();
        let cluster = Cluster { shards, dir, redis };
        let dir = cluster.dir.clone();
        eventually("three shards ready", || {
            let dir = dir.clone();
            async move {
                dir.shards()
                    .await
                    .map(|s| s.iter().filter(|s| s.alive && s.placeable()).count() == 3)
                    .unwrap_or(false)
            }
        })
        .await;
        cluster
    }

    fn shard(&self, i: usize) -> &TestShard {
        self.shards[i].as_ref().expect("shard running")
    }

    /// The owner of `room` now and its epoch.
    async fn owner(&self, room: &str) -> (usize, u64) {
        let room: RoomId = room.parse().unwrap();
        let (shard, epoch) = self
            .dir
            .owner(&room)
            .await
            .unwrap()
            .expect("the room has an owner");
        let i = ["a", "b", "c"]
            .iter()
            .position(|s| *s == shard.as_str())
            .expect("one of a, b, c");
        (i, epoch)
    }

    /// `POST /admin/rooms/{room}/migrate` on shard `on`: status and body.
    async fn migrate(&self, on: usize, room: &str, to: Option<&str>, token: &str) -> (u16, String) {
        let query = to.map(|t| format!("?to={t}")).unwrap_or_default();
        let url = format!(
            "http://{}/admin/rooms/{room}/migrate{query}",
            self.shard(on).http_addr
        );
        common::http("POST", &url, Some(token), "").await
    }

    /// Migrate `room` from its owner to shard `to`, which must succeed.
    async fn moved(&self, room: &str, to: usize) -> RoomMigrated {
        let (from, _) = self.owner(room).await;
        let (status, body) = self.migrate(from, room, Some(ID[to]), OPERATOR).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }

    async fn stop(&mut self, i: usize) {
        let shard = self.shards[i].take().expect("shard running");
        tokio::task::spawn_blocking(move || drop(shard))
            .await
            .unwrap();
    }

    async fn close(mut self) {
        for i in 0..self.shards.len() {
            if self.shards[i].is_some() {
                self.stop(i).await;
            }
        }
    }
}

const ID: [&str; 3] = ["a", "b", "c"];

/// Poll `check` until it is true or PATIENCE ran out.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {PATIENCE:?}");
}

/// The first message `pick` accepts within PATIENCE, skipping others
/// (each of them quiet: see [`assert_quiet`]).
async fn wait_for<T>(
    client: &mut Client,
    what: &str,
    mut pick: impl FnMut(&ServerMsg) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await {
            Some(Event::Msg(msg)) => {
                assert_quiet(&msg, what);
                if let Some(found) = pick(&msg) {
                    return found;
                }
            }
            Some(Event::Closed(code)) => panic!("closed ({code:?}) while waiting for {what}"),
            None => panic!("timed out waiting for {what}"),
        }
    }
}

/// A live migration is invisible to players: no second `joined`, no
/// notice that the room moved or restarted, no error.
fn assert_quiet(msg: &ServerMsg, what: &str) {
    match msg {
        ServerMsg::Joined(j) => panic!("a second joined ({}) while waiting for {what}", j.you),
        ServerMsg::Notice(n)
            if n.code == NoticeCode::RoomMoved.as_u16()
                || n.code == NoticeCode::RoomRestarted.as_u16() =>
        {
            panic!("notice {} while waiting for {what}", n.code)
        }
        ServerMsg::Error(e) => panic!("error {} while waiting for {what}", e.code),
        _ => {}
    }
}

async fn join_as(addr: std::net::SocketAddr, name: &str, map: &str) -> (Client, Joined) {
    let (mut client, _) = Client::welcomed(addr, name).await;
    client
        .send(protocol::ClientMsg::Join(protocol::msg::Join {
            map: map.into(),
        }))
        .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await {
            Some(Event::Msg(ServerMsg::Joined(joined))) => return (client, joined),
            Some(Event::Msg(_)) => {}
            other => panic!("{name} not joined: {:?}", other.is_some()),
        }
    }
}

/// Where `entity` stands in an update (moved or entered).
fn seen_at(msg: &ServerMsg, entity: EntityId) -> Option<(f32, f32, u32)> {
    let ServerMsg::Update(u) = msg else {
        return None;
    };
    u.moved
        .iter()
        .find(|m| m.id == entity)
        .map(|m| (m.x, m.y, m.seq))
        .or_else(|| {
            u.entered
                .iter()
                .find(|e| e.id == entity)
                .map(|e| (e.x, e.y, e.seq))
        })
}

/// `watcher` sees `entity` further right than `x` (it walks right).
async fn sees_past(watcher: &mut Client, entity: EntityId, x: f32, what: &str) -> f32 {
    wait_for(watcher, what, |m| {
        seen_at(m, entity).and_then(|(nx, _, _)| (nx > x).then_some(nx))
    })
    .await
}

/// Whether shard `i`'s admin API lists `room` as running there.
async fn runs_on(cluster: &Cluster, i: usize, room: &str) -> bool {
    let url = format!("http://{}/admin/rooms", cluster.shard(i).http_addr);
    let (status, body) = common::http("GET", &url, Some(VIEWER), "").await;
    assert_eq!(status, 200, "{body}");
    let rooms: protocol::admin::RoomsReply = serde_json::from_str(&body).unwrap();
    rooms.rooms.iter().any(|r| r.id == room && r.epoch > 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_played_on_two_shards_migrates_and_nobody_notices() {
    let cluster = Cluster::start("mg1", |_| {}).await;
    let (mut ann, ann_joined) = join_as(cluster.shard(0).ws_addr, "ann", "test").await;
    let (owner, epoch) = cluster.owner("test").await;
    let edge = (owner + 1) % 3;
    // ann plays on whichever shard she joined; bob on the edge, and cat
    // on the owner itself, so the owner has local and remote members.
    let (mut bob, bob_joined) = join_as(cluster.shard(edge).ws_addr, "bob", "test").await;
    let (mut cat, cat_joined) = join_as(cluster.shard(owner).ws_addr, "cat", "test").await;
    // Everyone walks right and keeps walking through the move.
    ann.walk(1, 1.0, 0.0).await;
    bob.walk(1, 1.0, 0.0).await;
    cat.walk(1, 1.0, 0.0).await;
    let x = sees_past(&mut bob, cat_joined.you, 0.0, "cat walking").await;
    let ax = sees_past(&mut cat, bob_joined.you, 0.0, "bob walking").await;

    // The room moves to the edge: bob's shard runs it from now on.
    let moved = cluster.moved("test", edge).await;
    assert_eq!(
        (moved.from.as_str(), moved.to.as_str()),
        (ID[owner], ID[edge])
    );
    assert_eq!(moved.epoch, epoch + 1, "the epoch rose by one");
    assert_eq!(cluster.owner("test").await, (edge, epoch + 1));
    assert!(
        !runs_on(&cluster, owner, "test").await,
        "the old owner stopped it"
    );
    assert!(
        runs_on(&cluster, edge, "test").await,
        "the new owner runs it"
    );

    // Nobody was disconnected or told anything; everyone keeps receiving
    // updates and positions go on from where they were.
    sees_past(
        &mut bob,
        cat_joined.you,
        x,
        "cat still walking, seen by bob",
    )
    .await;
    sees_past(
        &mut cat,
        bob_joined.you,
        ax,
        "bob still walking, seen by cat",
    )
    .await;
    sees_past(
        &mut ann,
        bob_joined.you,
        ax,
        "bob still walking, seen by ann",
    )
    .await;
    // New inputs reach the new owner from every shard.
    for (c, seq) in [(&mut ann, 2), (&mut bob, 2), (&mut cat, 2)] {
        c.walk(seq, 0.0, 1.0).await;
    }
    for (watcher, entity) in [
        (&mut bob, ann_joined.you),
        (&mut cat, bob_joined.you),
        (&mut ann, cat_joined.you),
    ] {
        wait_for(watcher, "a turn after the move", |m| {
            seen_at(m, entity).and_then(|(_, _, seq)| (seq == 2).then_some(()))
        })
        .await;
    }
    cluster.close().await;
}
