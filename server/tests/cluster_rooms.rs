//! Rooms reachable from any shard: three real shards (each with its own
//! listeners, store, directory handle and QUIC tunnel) over a real
//! `redis-server`, and test clients over WebSocket on each. The room runs
//! on whichever shard the directory places it; the others reach it
//! through their tunnel to it.

mod cluster_support;
mod common;
mod redis_support;

use std::time::Duration;

use cluster_support::Cluster;
use common::Client;
use futures_util::StreamExt;
use protocol::msg::{EntityId, Joined, Update};
use protocol::{decode_server, ErrorCode, NoticeCode, ServerMsg};
use redis_support::RedisServer;
use server::cluster::{Directory, ShardId};
use server::config::Config;
use server::ids::RoomId;
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "admin-token-for-cluster-rooms-01";

/// Generous: these tests wait for conditions, never for fixed times.
const PATIENCE: Duration = Duration::from_secs(60);

fn config(redis: &RedisServer, prefix: &str, id: &str) -> Config {
    let mut config = cluster_support::shard_config(redis.url(), prefix, id);
    // One identity across shards: a resume token from one works on all.
    config.auth.secret = "a".repeat(48);
    config.admin.token = ADMIN.into();
    config
}

/// The three shards of `cluster_support`, configured by [`config`] under
/// the key prefix `prefix`, then `tune`d.
async fn start_cluster(prefix: &str, tune: impl Fn(&mut Config)) -> Cluster {
    let shard_config = |redis: &RedisServer, id: &str| {
        let mut config = config(redis, prefix, id);
        tune(&mut config);
        config
    };
    Cluster::start(shard_config, PATIENCE).await
}

/// Connect to `addr`, say hello as `name` and join `map`: the join may
/// go through the directory and a tunnel, so it is given PATIENCE.
async fn join_as(addr: std::net::SocketAddr, name: &str, map: &str) -> (Client, Joined) {
    let (mut client, _) = Client::welcomed(addr, name).await;
    let joined = join(&mut client, map).await;
    (client, joined)
}

async fn join(client: &mut Client, map: &str) -> Joined {
    client
        .send(protocol::ClientMsg::Join(protocol::msg::Join {
            map: map.into(),
        }))
        .await;
    common::wait_for(PATIENCE, client, "joined", msg!(ServerMsg::Joined)).await
}

/// The raw bytes of the first `update` frame that shows `entity`'s move
/// `seq`, and its tick.
async fn raw_update_with(client: &mut Client, entity: EntityId, seq: u32) -> (u64, Vec<u8>) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let frame = tokio::time::timeout_at(deadline, client.ws.next())
            .await
            .expect("an update in time")
            .expect("socket open")
            .expect("a frame");
        let Message::Binary(bytes) = frame else {
            continue;
        };
        if let Ok(ServerMsg::Update(u)) = decode_server(&bytes, 1 << 20) {
            if u.moved.iter().any(|m| m.id == entity && m.seq == seq) {
                return (u.tick, bytes.to_vec());
            }
        }
    }
}

/// Where `entity` stands in `update` once its input `seq` is applied
/// (moved, or entered with it).
fn position(update: &Update, entity: EntityId, seq: u32) -> Option<(f32, f32)> {
    update
        .moved
        .iter()
        .find(|m| m.id == entity && m.seq == seq)
        .map(|m| (m.x, m.y))
        .or_else(|| {
            update
                .entered
                .iter()
                .find(|e| e.id == entity && e.seq == seq)
                .map(|e| (e.x, e.y))
        })
}

fn sees(update: &Update, entity: EntityId, seq: u32) -> bool {
    update.moved.iter().any(|m| m.id == entity && m.seq == seq)
        || update
            .entered
            .iter()
            .any(|e| e.id == entity && e.seq == seq)
}

/// Both players walk the same way (staying in each other's view) and
/// stop; where each stands, as its own updates say.
async fn walk_and_stop(players: [(&mut Client, EntityId); 2]) -> Vec<(f32, f32)> {
    let [(a, a_id), (b, b_id)] = players;
    a.walk(1, 1.0, 0.0).await;
    b.walk(1, 1.0, 0.0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.walk(2, 0.0, 0.0).await;
    b.walk(2, 0.0, 0.0).await;
    let mut at = Vec::new();
    for (c, me) in [(a, a_id), (b, b_id)] {
        let pos = common::wait_for(PATIENCE, c, "own stop", |m| match m {
            ServerMsg::Update(u) => position(u, me, 2),
            _ => None,
        })
        .await;
        at.push(pos);
    }
    at
}

/// After a failover: the new owner seats the member again (`joined`,
/// maybe under a new entity id), then notice 6003, then a full update
/// holding it where it stood (`at`). Its entity id now.
async fn moved_and_kept_its_place(c: &mut Client, at: (f32, f32)) -> EntityId {
    let joined = common::wait_for(
        PATIENCE,
        c,
        "joined from the new owner",
        msg!(ServerMsg::Joined),
    )
    .await;
    common::wait_for(PATIENCE, c, "notice 6003", |m| match m {
        ServerMsg::Notice(n) if n.code == NoticeCode::RoomMoved.as_u16() => Some(()),
        _ => None,
    })
    .await;
    let full = common::wait_for(PATIENCE, c, "a full update", |m| match m {
        ServerMsg::Update(u) if u.full => Some(u.clone()),
        _ => None,
    })
    .await;
    let me = full
        .entered
        .iter()
        .find(|e| e.id == joined.you)
        .expect("its own entity in the full update");
    let (x, y) = at;
    assert!(
        (me.x - x).abs() < 0.5 && (me.y - y).abs() < 0.5,
        "kept its place: {:?} vs {:?}",
        (me.x, me.y),
        (x, y)
    );
    joined.you
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_on_three_shards_see_each_other_move_and_chat_in_one_room() {
    let cluster = start_cluster("cr1", |_| {}).await;
    let (mut ann, ann_joined) = join_as(cluster.shard(0).ws_addr, "ann", "test").await;
    let (mut bob, bob_joined) = join_as(cluster.shard(1).ws_addr, "bob", "test").await;
    let (mut cat, cat_joined) = join_as(cluster.shard(2).ws_addr, "cat", "test").await;
    let ids = [ann_joined.you, bob_joined.you, cat_joined.you];
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "one room, one entity each: {ids:?}"
    );
    // Exactly one shard runs the room; the other two reach it. Its admin
    // view counts the two remote members and names their shards.
    let owner = cluster.owner("test").await.0;
    let url = format!("http://{}/admin/rooms/test", cluster.shard(owner).http_addr);
    let (status, body) = common::http("GET", &url, Some(ADMIN), "").await;
    assert_eq!(status, 200, "{body}");
    let detail: protocol::admin::RoomDetail = serde_json::from_str(&body).unwrap();
    assert_eq!((detail.room.members, detail.room.members_remote), (3, 2));
    assert!(detail.room.epoch >= 1, "leased: {}", detail.room.epoch);
    let mut edges: Vec<_> = detail
        .members
        .iter()
        .filter_map(|m| m.edge.clone())
        .collect();
    edges.sort();
    let mut others: Vec<String> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != owner)
        .map(|(_, s)| s.to_string())
        .collect();
    others.sort();
    assert_eq!(edges, others);

    // Each player's move reaches the other two, whichever shard runs it.
    let clients = [&mut ann, &mut bob, &mut cat];
    for mover in 0..3 {
        let seq = 1 + mover as u32;
        clients[mover].walk(seq, 1.0, 0.0).await;
        for watcher in (0..3).filter(|w| *w != mover) {
            let entity = ids[mover];
            common::wait_for(
                PATIENCE,
                clients[watcher],
                &format!("player {watcher} sees {mover}'s move"),
                |m| match m {
                    ServerMsg::Update(u) if sees(u, entity, seq) => Some(()),
                    _ => None,
                },
            )
            .await;
        }
        clients[mover].walk(seq + 10, 0.0, 0.0).await;
    }

    // A chat line from a remote member reaches everyone, named.
    bob.chat("hello from b").await;
    for c in [&mut ann, &mut cat, &mut bob] {
        let chat = common::wait_for(PATIENCE, c, "bob's chat", |m| match m {
            ServerMsg::Chat(c) if c.text == "hello from b" => Some(c.clone()),
            _ => None,
        })
        .await;
        assert_eq!((chat.from, chat.name.as_str()), (bob_joined.you, "bob"));
    }
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_member_gets_the_same_update_bytes_as_a_local_one() {
    let cluster = start_cluster("cr2", |_| {}).await;
    // The first join places the room; then a local and a remote watcher.
    let (mut mover, joined) = join_as(cluster.shard(0).ws_addr, "mover", "test").await;
    let owner = cluster.owner("test").await.0;
    let remote = (owner + 1) % 3;
    let (mut local, _) = join_as(cluster.shard(owner).ws_addr, "local", "test").await;
    let (mut far, _) = join_as(cluster.shard(remote).ws_addr, "far", "test").await;
    // Everyone stands on the spawn point and sees everyone: from now on
    // both watchers' views change the same way.
    tokio::time::sleep(Duration::from_millis(300)).await;
    mover.walk(7, 0.0, 1.0).await;
    let (tick_local, bytes_local) = raw_update_with(&mut local, joined.you, 7).await;
    let (tick_far, bytes_far) = raw_update_with(&mut far, joined.you, 7).await;
    assert_eq!(tick_local, tick_far, "the same tick of the same room");
    assert_eq!(
        bytes_local, bytes_far,
        "the frame a remote member gets is byte for byte a local member's"
    );
    cluster.close().await;
}

/// Every `update` frame `client` gets, by tick, until `done` says so of
/// one (that frame included).
async fn updates_until(
    client: &mut Client,
    mut done: impl FnMut(&Update) -> bool,
) -> std::collections::BTreeMap<u64, (Update, Vec<u8>)> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut frames = std::collections::BTreeMap::new();
    loop {
        let frame = tokio::time::timeout_at(deadline, client.ws.next())
            .await
            .expect("the update in time")
            .expect("socket open")
            .expect("a frame");
        let Message::Binary(bytes) = frame else {
            continue;
        };
        if let Ok(ServerMsg::Update(u)) = decode_server(&bytes, 1 << 20) {
            let stop = done(&u);
            frames.insert(u.tick, (u, bytes.to_vec()));
            if stop {
                return frames;
            }
        }
    }
}

/// A local and a remote watcher standing on one spot see the same
/// entities, so every tick's frame must be the same bytes for both: the
/// mover walks out of their view (`left`), back in (`entered`) and stops
/// in it (`moved`).
async fn watchers_get_equal_frames_across_entered_moved_and_left(prefix: &str, implied: bool) {
    let cluster = start_cluster(prefix, |c| c.cluster.implied_moved = implied).await;
    let (mut mover, joined) = join_as(cluster.shard(0).ws_addr, "mover", "test").await;
    let me = joined.you;
    let owner = cluster.owner("test").await.0;
    let (mut local, _) = join_as(cluster.shard(owner).ws_addr, "local", "test").await;
    let (mut far, far_joined) =
        join_as(cluster.shard((owner + 1) % 3).ws_addr, "far", "test").await;
    // From the tick the local watcher sees the remote one, both see the
    // same three entities.
    let far_id = far_joined.you;
    updates_until(&mut local, |u| u.entered.iter().any(|e| e.id == far_id)).await;
    // Slowly (10 then 5 units a tick at 20 Hz; the view is 100 units), so
    // the stop lands while the mover is back in view.
    mover.walk(1, 0.2, 0.0).await;
    let gone = |u: &Update| u.left.contains(&me);
    let mut a = updates_until(&mut local, gone).await;
    mover.walk(2, -0.1, 0.0).await;
    let back = |u: &Update| u.entered.iter().any(|e| e.id == me);
    a.append(&mut updates_until(&mut local, back).await);
    mover.walk(3, 0.0, 0.0).await;
    let stopped = |u: &Update| sees(u, me, 3);
    a.append(&mut updates_until(&mut local, stopped).await);
    // The remote watcher's frames waited in its socket meanwhile.
    let mut b = updates_until(&mut far, gone).await;
    b.append(&mut updates_until(&mut far, back).await);
    b.append(&mut updates_until(&mut far, stopped).await);
    // Ticks one of them missed (a socket that shed an update) are passed
    // over; every other tick's frame must be the same bytes.
    let (mut left, mut entered, mut moved) = (0, 0, 0);
    for (tick, (u, bytes)) in &b {
        let Some((_, local_bytes)) = a.get(tick) else {
            continue;
        };
        assert_eq!(
            bytes, local_bytes,
            "tick {tick}: the remote watcher's frame is byte for byte the local one's"
        );
        left += usize::from(gone(u));
        entered += usize::from(back(u));
        moved += usize::from(u.moved.iter().any(|m| m.id == me));
    }
    assert!(
        left > 0 && entered > 0 && moved > 0,
        "frames compared with the mover leaving ({left}), entering ({entered}) and moving ({moved})"
    );
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_frames_equal_local_ones_across_entered_moved_and_left_with_implied_moved() {
    watchers_get_equal_frames_across_entered_moved_and_left("cr-im", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_room_restart_remote_frames_still_equal_local_ones_with_implied_moved() {
    // The restarted room sends each member a full update as a reliable
    // frame: the edge's tracked views must follow it, or the implied
    // `moved` after it would differ from a local member's.
    let cluster = start_cluster("cr-rs", |c| c.admin.fault_injection = true).await;
    let (mut mover, joined) = join_as(cluster.shard(0).ws_addr, "mover", "test").await;
    let me = joined.you;
    let owner = cluster.owner("test").await.0;
    let (mut local, _) = join_as(cluster.shard(owner).ws_addr, "local", "test").await;
    let (mut far, far_joined) =
        join_as(cluster.shard((owner + 1) % 3).ws_addr, "far", "test").await;
    let far_id = far_joined.you;
    updates_until(&mut local, |u| u.entered.iter().any(|e| e.id == far_id)).await;
    let url = format!(
        "http://{}/admin/faults/room",
        cluster.shard(owner).http_addr
    );
    let (status, body) =
        common::http_post(&url, Some(ADMIN), r#"{"map":"test","kind":"panic"}"#).await;
    assert_eq!((status, body.as_str()), (200, r#"{"crashed":true}"#));
    let full = |u: &Update| u.full;
    let (a, b) = (
        updates_until(&mut local, full).await,
        updates_until(&mut far, full).await,
    );
    let (a, b) = (a.values().last().unwrap(), b.values().last().unwrap());
    assert_eq!(a.1, b.1, "the full update after the restart, byte for byte");
    // Then the mover leaves their view, comes back and stops.
    mover.walk(1, 0.2, 0.0).await;
    let gone = |u: &Update| u.left.contains(&me);
    let mut a = updates_until(&mut local, gone).await;
    mover.walk(2, -0.1, 0.0).await;
    let back = |u: &Update| u.entered.iter().any(|e| e.id == me);
    a.append(&mut updates_until(&mut local, back).await);
    mover.walk(3, 0.0, 0.0).await;
    let stopped = |u: &Update| sees(u, me, 3);
    a.append(&mut updates_until(&mut local, stopped).await);
    let mut b = updates_until(&mut far, gone).await;
    b.append(&mut updates_until(&mut far, back).await);
    b.append(&mut updates_until(&mut far, stopped).await);
    let mut moved = 0;
    for (tick, (u, bytes)) in &b {
        let Some((_, local_bytes)) = a.get(tick) else {
            continue;
        };
        assert_eq!(bytes, local_bytes, "tick {tick} after the restart");
        moved += usize::from(u.moved.iter().any(|m| m.id == me));
    }
    assert!(moved > 0, "frames with the mover's moves were compared");
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_frames_equal_local_ones_for_an_edge_that_does_not_imply_moved() {
    // The edge does not announce `implied_moved` (a shard from before it):
    // the owner lists `moved` per view, as it always did.
    watchers_get_equal_frames_across_entered_moved_and_left("cr-ex", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaving_or_dropping_on_an_edge_leaves_the_room_on_its_owner() {
    let cluster = start_cluster("cr3", |c| c.supervision.resume_grace_ms = 1_000).await;
    let (mut ann, ann_joined) = join_as(cluster.shard(0).ws_addr, "ann", "test").await;
    let owner = cluster.owner("test").await.0;
    let edges: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    let (mut watcher, _) = join_as(cluster.shard(owner).ws_addr, "watch", "test").await;
    let (mut bob, bob_joined) = join_as(cluster.shard(edges[0]).ws_addr, "bob", "test").await;
    let (cat, cat_joined) = join_as(cluster.shard(edges[1]).ws_addr, "cat", "test").await;
    // The watcher sees both arrive (else a join and a leave between two
    // of its ticks would show it nothing at all).
    let mut arrived = Vec::new();
    while arrived.len() < 2 {
        let entered = common::wait_for(PATIENCE, &mut watcher, "bob and cat arrive", |m| match m {
            ServerMsg::Update(u) => Some(u.entered.iter().map(|e| e.id).collect::<Vec<_>>()),
            _ => None,
        })
        .await;
        arrived.extend(
            entered
                .into_iter()
                .filter(|id| *id == bob_joined.you || *id == cat_joined.you),
        );
        arrived.sort();
        arrived.dedup();
    }
    // bob leaves on purpose: gone from the owner's room at once.
    bob.send(protocol::ClientMsg::Leave(protocol::msg::Leave {}))
        .await;
    bob.expect("left", msg!(ServerMsg::Left)).await;
    common::wait_for(PATIENCE, &mut watcher, "bob's entity leaves", |m| match m {
        ServerMsg::Update(u) if u.left.contains(&bob_joined.you) => Some(()),
        _ => None,
    })
    .await;
    // cat's socket drops: its seat is held for the grace, then it goes.
    drop(cat);
    common::wait_for(
        PATIENCE,
        &mut watcher,
        "cat's held seat expires",
        |m| match m {
            ServerMsg::Update(u) if u.left.contains(&cat_joined.you) => Some(()),
            _ => None,
        },
    )
    .await;
    // ann (wherever) still plays.
    ann.walk(1, 1.0, 0.0).await;
    common::wait_for(PATIENCE, &mut watcher, "ann still moves", |m| match m {
        ServerMsg::Update(u) if sees(u, ann_joined.you, 1) => Some(()),
        _ => None,
    })
    .await;
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_who_dropped_on_one_shard_takes_its_seat_back_through_another() {
    let cluster = start_cluster("cr4", |_| {}).await;
    let (mut first, _) = join_as(cluster.shard(0).ws_addr, "first", "test").await;
    let owner = cluster.owner("test").await.0;
    let edges: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    let (mut dan, welcome) = Client::welcomed(cluster.shard(edges[0]).ws_addr, "dan").await;
    let joined = join(&mut dan, "test").await;
    dan.walk(1, 1.0, 0.0).await;
    dan.walk(2, 0.0, 0.0).await;
    let (x, y) = common::wait_for(PATIENCE, &mut first, "dan stops", |m| match m {
        ServerMsg::Update(u) => position(u, joined.you, 2),
        _ => None,
    })
    .await;
    drop(dan);
    // Back through the other edge, with the resume token.
    let mut again = Client::connect(cluster.shard(edges[1]).ws_addr).await;
    again.send_resume(welcome.resume_token.clone()).await;
    let back = again.expect("welcome", msg!(ServerMsg::Welcome)).await;
    assert_eq!(back.player_id, welcome.player_id);
    let rejoined = join(&mut again, "test").await;
    assert_eq!(rejoined.you, joined.you, "the held seat, not a new entity");
    common::wait_for(PATIENCE, &mut again, "notice 6002", |m| match m {
        ServerMsg::Notice(n) if n.code == NoticeCode::SeatRestored.as_u16() => Some(()),
        _ => None,
    })
    .await;
    let me = rejoined
        .entities
        .iter()
        .find(|e| e.id == joined.you)
        .expect("its own entity in view");
    assert_eq!((me.x, me.y), (x, y), "where it stood");
    cluster.close().await;
}

/// A resume on another shard needs no `join`: the directory's player
/// entry says which room the seat is in, and the new shard takes it over
/// there by itself (`joined` with the same entity, then notice 6002).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_another_shard_gets_the_seat_back_without_a_join() {
    let cluster = start_cluster("cr10", |_| {}).await;
    let (_first, _) = join_as(cluster.shard(0).ws_addr, "first", "test").await;
    let owner = cluster.owner("test").await.0;
    let edges: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    let (mut eve, welcome) = Client::welcomed(cluster.shard(edges[0]).ws_addr, "eve").await;
    let joined = join(&mut eve, "test").await;
    // Once the directory records eve's room, she drops.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while cluster
        .dir
        .player(&welcome.player_id)
        .await
        .ok()
        .flatten()
        .map(|e| e.room)
        .as_deref()
        != Some("test")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "eve's room never recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(eve);
    let mut again = Client::connect(cluster.shard(edges[1]).ws_addr).await;
    again.send_resume(welcome.resume_token.clone()).await;
    let back = again.expect("welcome", msg!(ServerMsg::Welcome)).await;
    assert_eq!(back.player_id, welcome.player_id);
    let rejoined = again
        .expect("joined, unasked", msg!(ServerMsg::Joined))
        .await;
    assert_eq!(rejoined.you, joined.you, "the held seat, not a new entity");
    assert_eq!(rejoined.map.name, "test");
    common::wait_for(PATIENCE, &mut again, "notice 6002", |m| match m {
        ServerMsg::Notice(n) if n.code == NoticeCode::SeatRestored.as_u16() => Some(()),
        _ => None,
    })
    .await;
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_owner_shuts_down_the_room_moves_and_members_elsewhere_keep_their_place() {
    let mut cluster = start_cluster("cr5", |_| {}).await;
    let (mut starter, _) = join_as(cluster.shard(0).ws_addr, "starter", "test").await;
    let owner = cluster.owner("test").await.0;
    let edges: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    if edges.contains(&0) {
        starter.walk(1, 0.0, 0.0).await;
    }
    let (mut ann, ann_joined) = join_as(cluster.shard(edges[0]).ws_addr, "ann", "test").await;
    let (mut bob, bob_joined) = join_as(cluster.shard(edges[1]).ws_addr, "bob", "test").await;
    let at = walk_and_stop([(&mut ann, ann_joined.you), (&mut bob, bob_joined.you)]).await;
    drop(starter);
    cluster.stop(owner).await;
    let mut new_ids = Vec::new();
    for (i, c) in [&mut ann, &mut bob].into_iter().enumerate() {
        new_ids.push(moved_and_kept_its_place(c, at[i]).await);
    }
    // The room runs on one of the two shards left, and both still play.
    let new_owner = cluster.owner("test").await.0;
    assert_ne!(new_owner, owner);
    ann.walk(3, 0.0, 1.0).await;
    common::wait_for(
        PATIENCE,
        &mut bob,
        "ann's move in the moved room",
        |m| match m {
            ServerMsg::Update(u) if sees(u, new_ids[0], 3) => Some(()),
            _ => None,
        },
    )
    .await;
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_whose_lease_is_lost_stops_on_its_old_owner() {
    let cluster = start_cluster("cr6", |c| c.cluster.failover_budget_ms = 10_000).await;
    let (mut first, _) = join_as(cluster.shard(0).ws_addr, "first", "test").await;
    let owner = cluster.owner("test").await.0;
    let edge = (owner + 1) % 3;
    let (mut local, _) = join_as(cluster.shard(owner).ws_addr, "local", "test").await;
    let (mut remote, _) = join_as(cluster.shard(edge).ws_addr, "remote", "test").await;
    // Another shard takes the lease (as after the owner stalled past it):
    // the lease key is dropped and re-taken at a higher epoch.
    let room: RoomId = "test".parse().unwrap();
    let redis = redis::Client::open(cluster.redis.url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg("cr6:room:test")
        .query_async(&mut conn)
        .await
        .unwrap();
    // The thief holds it for longer than the test: it never serves it.
    let settings = server::cluster::DirectorySettings {
        lease: Duration::from_secs(120),
        ..cluster.dir.settings().clone()
    };
    let thief = Directory::new(settings, ShardId::new("thief").unwrap()).unwrap();
    let lease = thief.acquire_room(&room, 0).await.unwrap();
    assert!(lease.epoch >= 2);
    // The old owner stops the room at its next renewal: its local member
    // gets the room-failed path (3005, then the fallback map).
    common::wait_for(
        PATIENCE,
        &mut local,
        "room failed on the old owner",
        |m| match m {
            ServerMsg::Error(e) if e.code == ErrorCode::RoomFailed.as_u16() => Some(()),
            _ => None,
        },
    )
    .await;
    common::wait_for(
        PATIENCE,
        &mut local,
        "joined the fallback map",
        msg!(ServerMsg::Joined(j) if j.map.name == "other"),
    )
    .await;
    // The remote member's shard was told and looked for the room at the
    // thief, which never answers: past its budget, the same path.
    common::wait_for(
        PATIENCE,
        &mut remote,
        "room failed on the edge",
        |m| match m {
            ServerMsg::Error(e) if e.code == ErrorCode::RoomFailed.as_u16() => Some(()),
            _ => None,
        },
    )
    .await;
    drop(first.drain(Duration::from_millis(10)).await);
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_instances_fill_one_after_another_across_shards() {
    let cluster = start_cluster("cr7", |c| {
        c.maps.push(server::config::MapConfig {
            name: "crowd".into(),
            spawn_radius: 0.0,
            max_players: Some(1),
            instances: server::config::Instances::Auto,
            ..server::config::MapConfig::default()
        })
    })
    .await;
    let (mut first, joined) = join_as(cluster.shard(0).ws_addr, "first", "crowd").await;
    assert_eq!(joined.instance, 1);
    // From another shard, whether it runs instance 1 or reaches it over
    // the tunnel: instance 1 is full, so the join lands in instance 2.
    let (mut second, joined) = join_as(cluster.shard(1).ws_addr, "second", "crowd").await;
    assert_eq!(joined.instance, 2);
    // Each plays in its own instance.
    first.walk(1, 1.0, 0.0).await;
    second.walk(1, 1.0, 0.0).await;
    let me = joined.you;
    common::wait_for(PATIENCE, &mut second, "its own move", |m| match m {
        ServerMsg::Update(u) if sees(u, me, 1) => Some(()),
        _ => None,
    })
    .await;
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_room_stops_and_gives_its_lease_back() {
    let cluster = start_cluster("cr8", |c| c.rooms.idle_stop_ms = 300).await;
    let (mut ann, _) = join_as(cluster.shard(1).ws_addr, "ann", "test").await;
    let room: RoomId = "test".parse().unwrap();
    let (owner, epoch) = cluster.dir.owner(&room).await.unwrap().expect("leased");
    ann.send(protocol::ClientMsg::Leave(protocol::msg::Leave {}))
        .await;
    ann.expect("left", msg!(ServerMsg::Left)).await;
    let dir = cluster.dir.clone();
    common::eventually(PATIENCE, "the lease is released", || {
        let (dir, room) = (dir.clone(), room.clone());
        async move { matches!(dir.owner(&room).await, Ok(None)) }
    })
    .await;
    // The next join leases it again, at a higher epoch.
    let (_bob, _) = join_as(cluster.shard(2).ws_addr, "bob", "test").await;
    let (_, again) = cluster
        .dir
        .owner(&room)
        .await
        .unwrap()
        .expect("leased again");
    assert!(again > epoch, "{owner} had {epoch}, now {again}");
    cluster.close().await;
}

/// A shard id for a third shard that rendezvous hashing prefers over `a`
/// and `b` for `room`: the room is placed on it.
fn winning_id(room: &str) -> String {
    use server::cluster::directory::rendezvous;
    let best = rendezvous(room, "a").max(rendezvous(room, "b"));
    (0..1000)
        .map(|i| format!("p{i}"))
        .find(|id| rendezvous(room, id) > best)
        .expect("some id wins")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_is_replaced_and_players_on_other_shards_keep_their_place() {
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    // The owner is a process of its own, SIGKILLed below. The tunnels'
    // idle timeout is far beyond the test's patience: the edges learn of
    // the death from the failure detector (SWIM), not from a connection
    // timing out.
    let quiet = |mut config: Config| {
        config.cluster.tunnel.idle_timeout_ms = 600_000;
        config
    };
    let owner_id = winning_id("test");
    let mut owner_config = quiet(config(&redis, "cr9", &owner_id));
    owner_config.store.embedded.dir = data.path().join("store");
    let path = data.path().join("tessera.toml");
    std::fs::write(&path, owner_config.to_toml()).unwrap();
    let (owner, _) = common::ServerProcess::spawn(&[("TESSERA_CONFIG", path.as_os_str())]);
    let mut shards = Vec::new();
    for id in ["a", "b"] {
        let config = quiet(config(&redis, "cr9", id));
        shards.push(
            tokio::task::spawn_blocking(move || common::start(config))
                .await
                .unwrap(),
        );
    }
    let dir = shards[0].cluster.clone().unwrap();
    {
        let dir = dir.clone();
        common::eventually(PATIENCE, "three shards ready", move || {
            let dir = dir.clone();
            async move {
                dir.shards()
                    .await
                    .map(|s| s.iter().filter(|s| s.alive && s.placeable()).count() == 3)
                    .unwrap_or(false)
            }
        })
        .await;
    }
    let (mut ann, ann_joined) = join_as(shards[0].ws_addr, "ann", "test").await;
    let (mut bob, bob_joined) = join_as(shards[1].ws_addr, "bob", "test").await;
    let room: RoomId = "test".parse().unwrap();
    let (held_by, epoch) = dir.owner(&room).await.unwrap().expect("leased");
    assert_eq!(held_by.as_str(), owner_id, "placed on the process");
    let at = walk_and_stop([(&mut ann, ann_joined.you), (&mut bob, bob_joined.you)]).await;
    // The failure detector declares dead only a member it has heard from:
    // wait until both edges' SWIM tables know the owner's incarnation.
    let edges: Vec<&common::TestShard> = shards.iter().collect();
    cluster_support::heard_from(&edges, &owner_id, ADMIN, PATIENCE).await;
    owner.kill_hard();
    // Its lease expires; the room is placed on a or b, at a higher epoch,
    // and both players are seated again where they stood.
    let mut new_ids = Vec::new();
    for (i, c) in [&mut ann, &mut bob].into_iter().enumerate() {
        new_ids.push(moved_and_kept_its_place(c, at[i]).await);
    }
    // The new incarnation never hands out an id of the old one: an id a
    // client still holds from before its new `joined` names nobody, so a
    // give naming bob's old id is refused (3007), never given to whoever
    // took that number.
    let old_ids = [ann_joined.you, bob_joined.you];
    assert!(
        new_ids.iter().all(|id| !old_ids.contains(id)),
        "ids before {old_ids:?}, after {new_ids:?}"
    );
    ann.give(1, bob_joined.you, 1).await;
    let refused = common::wait_for(PATIENCE, &mut ann, "the give's answer", |m| match m {
        ServerMsg::Done(d) if d.req == 1 => Some(0),
        ServerMsg::Error(e) if e.req == Some(1) => Some(e.code),
        _ => None,
    })
    .await;
    assert_eq!(refused, ErrorCode::NoSuchTarget.as_u16());
    let (new_owner, new_epoch) = dir.owner(&room).await.unwrap().expect("leased again");
    assert!(["a", "b"].contains(&new_owner.as_str()));
    assert!(new_epoch > epoch);
    // How long the members waited is measured (the shards in this process
    // share one recorder: at least these two links' failovers).
    let text = common::metrics(&shards[0]).await;
    let count = text
        .lines()
        .find_map(|l| l.strip_prefix("tessera_room_failover_seconds_count "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(count >= 1.0, "failovers timed:\n{text}");
    for shard in shards {
        tokio::task::spawn_blocking(move || drop(shard))
            .await
            .unwrap();
    }
}
