//! Redis stopped for ten seconds under play, with three shards (in this
//! process, each with its own store and tunnel) and players of all three
//! in one room: nobody is disconnected, the room keeps running on exactly
//! one shard, what needs Redis (a login that must check presence, a join
//! that must place a room) fails with 5005 and works again once Redis is
//! back. Every wait is for a condition, with a generous deadline.

mod cluster_support;
mod common;
mod redis_support;

use std::time::{Duration, Instant};

use common::{Client, Event, TestShard};
use protocol::msg::{EntityId, Hello, Join, Ping};
use protocol::{ClientMsg, CloseCode, ErrorCode, ServerMsg, PROTOCOL_VERSION};
use redis_support::RedisServer;
use server::config::Config;
use server::ids::RoomId;

const SECRET: &str = "cluster-outage-auth-secret-0123456789abcdef";
const ADMIN: &str = "admin-token-for-cluster-outage-01";
const PATIENCE: Duration = Duration::from_secs(60);
/// How long a shard waits for Redis before answering 5005.
const REDIS_WAIT_MS: u64 = 2_000;
const IDS: [&str; 3] = ["a", "b", "c"];

fn config(redis: &RedisServer, id: &str) -> Config {
    let mut config = cluster_support::shard_config(redis.url(), "xo1", id);
    config.cluster.redis_wait_ms = REDIS_WAIT_MS;
    config.auth.secret = SECRET.into();
    config.admin.token = ADMIN.into();
    config
}

fn hello(player: &str) -> ClientMsg {
    ClientMsg::Hello(Hello {
        version: PROTOCOL_VERSION,
        token: Some(common::token(SECRET, player)),
        resume: None,
        name: Some(player.into()),
    })
}

/// A signed-in player of `shard` in map `test`, and its entity.
async fn player(shard: &TestShard, name: &str) -> (Client, EntityId) {
    common::signed_in_player(shard.ws_addr, SECRET, name, "test", PATIENCE).await
}

async fn answers_ping(client: &mut Client, t: u64) -> bool {
    client.send(ClientMsg::Ping(Ping { t })).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_event(left).await {
            Some(Event::Msg(ServerMsg::Pong(p))) if p.t == t => return true,
            Some(Event::Msg(_)) => continue,
            Some(Event::Closed(_)) | None => return false,
        }
    }
}

/// Which shards run `room` now, by their admin API.
async fn running(shards: &[TestShard], room: &str) -> Vec<&'static str> {
    let mut on = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        let url = format!("http://{}/admin/rooms", shard.http_addr);
        let (status, body) = common::http("GET", &url, Some(ADMIN), "").await;
        assert_eq!(status, 200, "{body}");
        let reply: protocol::admin::RoomsReply = serde_json::from_str(&body).unwrap();
        if reply.rooms.iter().any(|r| r.id == room) {
            on.push(IDS[i]);
        }
    }
    on
}

/// Everyone walks one step (`seq`) and `watcher` sees `walker` take it:
/// the room runs and its members on every shard reach it.
async fn step(players: &mut [(Client, EntityId)], seq: u32) {
    for (client, _) in players.iter_mut() {
        // Slowly, back and forth: everyone stays in everyone's view.
        client
            .walk(seq, if seq % 2 == 0 { 0.01 } else { -0.01 }, 0.0)
            .await;
    }
    let walker = players[1].1;
    common::wait_for(
        PATIENCE,
        &mut players[0].0,
        "the other shard's move",
        |m| match m {
            ServerMsg::Update(u) => u
                .moved
                .iter()
                .any(|mv| mv.id == walker && mv.seq >= seq)
                .then_some(()),
            _ => None,
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_ten_seconds_under_play_on_three_shards_disconnects_no_one() {
    let mut redis = RedisServer::start();
    let mut shards = Vec::new();
    for id in IDS {
        let config = config(&redis, id);
        shards.push(
            tokio::task::spawn_blocking(move || common::start(config))
                .await
                .unwrap(),
        );
    }
    let dir = shards[0].cluster.clone().unwrap();
    common::eventually(PATIENCE, "three shards ready", || async {
        dir.shards()
            .await
            .map(|s| s.iter().filter(|s| s.alive && s.placeable()).count() == 3)
            .unwrap_or(false)
    })
    .await;
    let mut players = Vec::new();
    for (i, name) in ["ann", "bob", "cat"].iter().enumerate() {
        players.push(player(&shards[i], name).await);
    }
    let room: RoomId = "test".parse().unwrap();
    let (owner, epoch) = dir.owner(&room).await.unwrap().expect("leased");
    // ann watches a player of another shard than her own.
    let ann_shard = 0;
    let other = (0..3)
        .find(|&i| i != ann_shard && IDS[i] != owner.as_str())
        .unwrap_or(1);
    players.swap(1, other);
    step(&mut players, 1).await;

    redis.stop();
    let down_since = Instant::now();
    // A login that must check presence: 5005 and close 1013.
    let mut late = Client::connect(shards[1].ws_addr).await;
    late.send(hello("dan")).await;
    late.expect_error(ErrorCode::DirectoryUnavailable).await;
    assert_eq!(
        late.expect_close().await,
        Some(CloseCode::TryAgainLater.as_u16())
    );
    // A join that must place a room (nobody runs `other`): 5005, and the
    // player stays connected in the lobby.
    let mut guest = Client::connect(shards[2].ws_addr).await;
    guest.hello("gus").await;
    guest
        .send(ClientMsg::Join(Join {
            map: "other".into(),
        }))
        .await;
    guest.expect_error(ErrorCode::DirectoryUnavailable).await;
    // Ten seconds without Redis: everyone plays on, through the tunnels,
    // and the room runs on its owner alone.
    let mut seq = 2;
    while down_since.elapsed() < Duration::from_secs(10) {
        step(&mut players, seq).await;
        seq += 1;
        assert_eq!(running(&shards, "test").await, vec![owner.as_str()]);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for (i, (client, _)) in players.iter_mut().enumerate() {
        assert!(answers_ping(client, i as u64).await, "player {i} connected");
    }
    assert!(answers_ping(&mut guest, 9).await, "the guest is connected");

    redis.restart();
    // Logins and placements work again.
    common::eventually(PATIENCE, "a login on b works again", || async {
        let mut c = Client::connect(shards[1].ws_addr).await;
        c.send(hello("dan")).await;
        matches!(
            c.next_event(Duration::from_secs(10)).await,
            Some(Event::Msg(ServerMsg::Welcome(_)))
        )
    })
    .await;
    let mut placed = false;
    for attempt in 0..60 {
        guest
            .send(ClientMsg::Join(Join {
                map: "other".into(),
            }))
            .await;
        let answer = common::wait_for(PATIENCE, &mut guest, "the join's answer", |m| match m {
            ServerMsg::Joined(j) => Some(Ok(j.map.name.clone())),
            ServerMsg::Error(e) => Some(Err(e.code)),
            _ => None,
        })
        .await;
        if answer == Ok("other".to_string()) {
            placed = true;
            break;
        }
        assert_eq!(
            answer,
            Err(ErrorCode::DirectoryUnavailable.as_u16()),
            "attempt {attempt}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(placed, "the join placed `other` once Redis was back");
    // Redis came back empty: the owner re-asserted its lease (same shard,
    // same epoch), and every room runs on one shard.
    common::eventually(PATIENCE, "the lease re-asserted", || async {
        dir.owner(&room).await.ok().flatten() == Some((owner.clone(), epoch))
    })
    .await;
    assert_eq!(running(&shards, "test").await, vec![owner.as_str()]);
    assert_eq!(running(&shards, "other").await.len(), 1);
    step(&mut players, seq).await;
    drop(players);
    drop(guest);
    for shard in shards {
        tokio::task::spawn_blocking(move || drop(shard))
            .await
            .unwrap();
    }
}
