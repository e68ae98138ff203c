//! Live room migration: three real shards (each with its listeners,
//! store, directory handle and QUIC tunnel) over a real `redis-server`,
//! test clients over WebSocket, and `POST /admin/rooms/{room}/migrate`.
//! Every wait is for a condition, with a generous deadline.

mod cluster_support;
mod common;
mod peer_support;
mod redis_support;

use std::time::{Duration, Instant};

use cluster_support::{Cluster, ID};
use common::{Client, Event, TestShard};
use protocol::admin::RoomMigrated;
use protocol::msg::{EntityId, Joined};
use protocol::{NoticeCode, ServerMsg};
use redis_support::RedisServer;
use server::cluster::{Directory, ShardId};
use server::config::Config;
use server::ids::RoomId;

const OPERATOR: &str = "operator-token-for-migrations-01";
const VIEWER: &str = "viewer-token-for-migrations-0001";

/// Generous: these tests wait for conditions, never for fixed times.
const PATIENCE: Duration = Duration::from_secs(60);

fn config(redis: &RedisServer, prefix: &str, id: &str) -> Config {
    let mut config = cluster_support::shard_config(redis.url(), prefix, id);
    config.cluster.migrate_answer_ms = 5_000;
    config.cluster.migrate_pause_ms = 1_000;
    config.auth.secret = "a".repeat(48);
    config.admin.tokens = common::operator_and_viewer(OPERATOR, VIEWER);
    config.admin.fault_injection = true;
    // Stalls injected here are the test's, not the watchdog's to fix.
    config.supervision.stall_timeout_ms = 60_000;
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

impl Cluster {
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
    let cluster = start_cluster("mg1", |_| {}).await;
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

/// What a bot saw while it played.
#[derive(Debug, Default)]
struct Seen {
    updates: u64,
    /// The longest time between two of its updates.
    max_gap: Duration,
    /// The largest jump in tick numbers between two of its updates.
    max_tick_gap: u64,
    /// Anything a live migration must not show (see [`assert_quiet`]).
    noise: Vec<String>,
    closed: Option<Option<u16>>,
}

/// A bot: walks, turning every 100 ms, and records what it receives
/// until `stop` is set. Updates are counted from the first one after
/// `watch_from` is set (so joining is not counted as a gap).
fn play(
    mut client: Client,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(Client, Seen)> {
    use std::sync::atomic::Ordering;
    tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut seq = 0u32;
        let mut turn = tokio::time::interval(Duration::from_millis(100));
        let mut last: Option<(Instant, u64)> = None;
        while !stop.load(Ordering::Relaxed) {
            tokio::select! {
                _ = turn.tick() => {
                    seq += 1;
                    let (dx, dy) = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][(seq / 5 % 4) as usize];
                    client.walk(seq, dx, dy).await;
                }
                event = client.next_event(Duration::from_millis(200)) => match event {
                    Some(Event::Msg(ServerMsg::Update(u))) => {
                        let now = Instant::now();
                        if let Some((at, tick)) = last {
                            seen.max_gap = seen.max_gap.max(now - at);
                            seen.max_tick_gap = seen.max_tick_gap.max(u.tick.saturating_sub(tick));
                        }
                        last = Some((now, u.tick));
                        seen.updates += 1;
                    }
                    Some(Event::Msg(ServerMsg::Joined(j))) => seen.noise.push(format!("joined {}", j.you)),
                    Some(Event::Msg(ServerMsg::Notice(n))) => seen.noise.push(format!("notice {}", n.code)),
                    Some(Event::Msg(ServerMsg::Error(e))) => seen.noise.push(format!("error {}", e.code)),
                    Some(Event::Msg(_)) | None => {}
                    Some(Event::Closed(code)) => {
                        seen.closed = Some(code);
                        break;
                    }
                },
            }
        }
        (client, seen)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_and_forth_twenty_times_under_load_loses_nobody() {
    let cluster = start_cluster("mg2", |_| {}).await;
    // Two players on each shard, all in one room.
    let mut clients = Vec::new();
    for i in 0..6 {
        let (client, joined) =
            join_as(cluster.shard(i % 3).ws_addr, &format!("bot{i}"), "test").await;
        clients.push((client, joined.you));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let bots: Vec<_> = clients
        .into_iter()
        .map(|(c, id)| (play(c, stop.clone()), id))
        .collect();
    let (first, mut epoch) = cluster.owner("test").await;
    let other = (first + 1) % 3;
    let mut pauses = Vec::new();
    for n in 0..20 {
        let to = if n % 2 == 0 { other } else { first };
        let moved = cluster.moved("test", to).await;
        assert_eq!(moved.epoch, epoch + 1, "move {n}: the epoch rose by one");
        epoch = moved.epoch;
        pauses.push(moved.pause_ms);
        // Let the bots play a little on the new owner.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(cluster.owner("test").await, (first, epoch));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut report = Vec::new();
    for (bot, id) in bots {
        let (_client, seen) = bot.await.unwrap();
        assert_eq!(seen.closed, None, "bot {id} was disconnected: {seen:?}");
        assert!(
            seen.noise.is_empty(),
            "bot {id} noticed the moves: {seen:?}"
        );
        assert!(
            seen.updates > 20,
            "bot {id} kept receiving updates: {seen:?}"
        );
        report.push((id, seen.max_gap, seen.max_tick_gap));
    }
    pauses.sort_by(f64::total_cmp);
    eprintln!("migration pauses (ms), sorted: {pauses:?}");
    for (id, gap, ticks) in report {
        eprintln!("member {id}: longest gap between updates {gap:?}, {ticks} ticks");
    }
    // The room runs on one shard only, under the last epoch.
    assert!(runs_on(&cluster, first, "test").await);
    assert!(!runs_on(&cluster, other, "test").await);
    cluster.close().await;
}

/// Arm the fault point `migrate_in` for `room` on shard `on`: its next
/// migration offer is dropped unanswered, as by a target that died.
async fn kill_next_offer(cluster: &Cluster, on: usize, room: &str) {
    let url = format!("http://{}/admin/faults/room", cluster.shard(on).http_addr);
    let body = format!(r#"{{"map": "{room}", "kind": "panic", "at": "migrate_in"}}"#);
    let (status, body) = common::http("POST", &url, Some(OPERATOR), &body).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_whose_target_dies_resumes_on_the_source_and_runs_once() {
    let cluster = start_cluster("mg3", |_| {}).await;
    let (mut ann, ann_joined) = join_as(cluster.shard(0).ws_addr, "ann", "test").await;
    let (owner, epoch) = cluster.owner("test").await;
    let target = (owner + 1) % 3;
    let watcher_shard = (owner + 2) % 3;
    let (mut bob, _) = join_as(cluster.shard(watcher_shard).ws_addr, "bob", "test").await;
    kill_next_offer(&cluster, target, "test").await;
    let (status, body) = cluster
        .migrate(owner, "test", Some(ID[target]), OPERATOR)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("resumed"), "{body}");
    // The source took the lease back (epoch + 1 by the same
    // compare-and-set), and it alone runs the room.
    assert_eq!(cluster.owner("test").await, (owner, epoch + 1));
    assert!(runs_on(&cluster, owner, "test").await);
    assert!(!runs_on(&cluster, target, "test").await);
    // The room goes on: ann's moves reach bob.
    ann.walk(1, 1.0, 0.0).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match bob.next_event(left).await {
            Some(Event::Msg(m)) if seen_at(&m, ann_joined.you).is_some_and(|(_, _, s)| s == 1) => {
                break
            }
            Some(Event::Msg(_)) => {}
            other => panic!("bob lost the room: {:?}", other.is_some()),
        }
    }
    // A second try, with the target healthy again, moves it.
    let moved = cluster.moved("test", target).await;
    assert_eq!(moved.epoch, epoch + 2);
    assert!(!runs_on(&cluster, owner, "test").await);
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_checks_roles_rooms_and_targets() {
    let cluster = start_cluster("mg4", |_| {}).await;
    let (_ann, _) = join_as(cluster.shard(0).ws_addr, "ann", "test").await;
    let (owner, _) = cluster.owner("test").await;
    let other = (owner + 1) % 3;
    // A viewer may look, not move rooms.
    let (status, body) = cluster.migrate(owner, "test", None, VIEWER).await;
    assert_eq!(status, 403, "{body}");
    // No such map; a room that runs nowhere.
    let (status, body) = cluster.migrate(owner, "nowhere", None, OPERATOR).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = cluster.migrate(owner, "other", None, OPERATOR).await;
    assert_eq!(status, 404, "{body}");
    // Asked of a shard that does not run it: forwarded to the owner (see
    // `a_migration_asked_of_any_shard_is_forwarded_to_its_owner`), whose
    // refusals come back as they are.
    let (status, body) = cluster
        .migrate(other, "test", Some(ID[owner]), OPERATOR)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains(&format!("forwarded to shard {}", ID[owner])),
        "{body}"
    );
    // Bad targets: itself, unknown, not a shard id.
    let (status, body) = cluster
        .migrate(owner, "test", Some(ID[owner]), OPERATOR)
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = cluster.migrate(owner, "test", Some("zed"), OPERATOR).await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("no shard zed"), "{body}");
    let (status, body) = cluster.migrate(owner, "test", Some("a:b"), OPERATOR).await;
    assert_eq!(status, 400, "{body}");
    // Without a target the placement picks one of the other two.
    let (status, body) = cluster.migrate(owner, "test", None, OPERATOR).await;
    assert_eq!(status, 200, "{body}");
    let moved: RoomMigrated = serde_json::from_str(&body).unwrap();
    assert_ne!(moved.to, ID[owner]);
    // The move is audited and in the cluster's events stream.
    let url = format!("http://{}/admin/events", cluster.shard(owner).http_addr);
    let (_, events) = common::http("GET", &url, Some(VIEWER), "").await;
    assert!(events.contains("migrate_room"), "{events}");
    let stream = cluster.dir.events_tail(50).await.unwrap();
    let entry = stream
        .iter()
        .find(|e| e.kind == server::cluster::directory::EventKind::RoomMoved)
        .expect("a room_moved event");
    assert!(
        entry
            .detail
            .contains(&format!("from {} to {}", ID[owner], moved.to))
            && entry.detail.contains(&format!("epoch {}", moved.epoch))
            && entry.detail.contains("pause"),
        "{entry:?}"
    );
    cluster.close().await;
}

/// An operator's tool need not know which shard runs a room: a migration
/// asked of another shard is forwarded to the owner over
/// `/tessera/admin/1` (one hop) and its answer passed on; an owner that
/// cannot be reached is a 409 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_asked_of_any_shard_is_forwarded_to_its_owner() {
    let cluster = start_cluster("mg9", |_| {}).await;
    let (mut ann, ann_joined) = join_as(cluster.shard(0).ws_addr, "ann", "test").await;
    let (owner, epoch) = cluster.owner("test").await;
    let asked = (owner + 1) % 3;
    let target = (owner + 2) % 3;
    let (mut bob, _) = join_as(cluster.shard(asked).ws_addr, "bob", "test").await;

    // Asked of a shard that does not own it: moved by the owner.
    let (status, body) = cluster
        .migrate(asked, "test", Some(ID[target]), OPERATOR)
        .await;
    assert_eq!(status, 200, "{body}");
    let moved: RoomMigrated = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (moved.from.as_str(), moved.to.as_str()),
        (ID[owner], ID[target])
    );
    assert!(moved.epoch > epoch, "{moved:?}");
    assert_eq!(cluster.owner("test").await, (target, moved.epoch));
    assert!(runs_on(&cluster, target, "test").await);
    assert!(!runs_on(&cluster, owner, "test").await);
    // Nobody noticed: ann's moves reach bob, quietly.
    ann.walk(1, 1.0, 0.0).await;
    sees_seq(
        &mut bob,
        ann_joined.you,
        1,
        "ann's move after the forwarded move",
    )
    .await;

    // Asked again of the old owner (not the owner now), to where it runs:
    // the new owner's refusal, passed on.
    let (status, body) = cluster
        .migrate(owner, "test", Some(ID[target]), OPERATOR)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains(&format!("forwarded to shard {}", ID[target])),
        "{body}"
    );

    // An owner that cannot be reached (a lease held under an id no shard
    // runs): nothing to forward to, a 409 naming it.
    let ghost =
        Directory::new(cluster.dir.settings().clone(), ShardId::new("zed").unwrap()).unwrap();
    let other: RoomId = "other".parse().unwrap();
    ghost.acquire_room(&other, 0).await.unwrap();
    let (status, body) = cluster.migrate(asked, "other", None, OPERATOR).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("shard zed owns it") && body.contains("could not be reached"),
        "{body}"
    );
    // A viewer is refused before anything is forwarded.
    let (status, body) = cluster.migrate(asked, "test", None, VIEWER).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(cluster.owner("test").await, (target, moved.epoch));
    cluster.close().await;
}

/// A room owned by a peer of tunnel 1.1, which has no `migrate` on its
/// admin stream: a migration asked of another shard is refused at once
/// (409, saying why) with nothing asked of that peer, instead of a wait
/// of `cluster.migrate_forward_ms` for an answer that cannot come. The
/// peer is built by hand from PEER.md: it holds the room's lease in the
/// directory, dials shard `b` as shard `old` saying tunnel 1.1, and
/// accepts the admin stream `b` opens to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_is_not_forwarded_to_a_peer_of_tunnel_1_1() {
    use protocol::peer::{Accept, AdminMsg, StreamHead, ADMIN_PROTOCOL, PEER_VERSION};

    const PREFIX: &str = "mg11";
    // Long: the refusal cannot be a wait for an answer that ran out.
    let cluster = start_cluster(PREFIX, |c| c.cluster.migrate_forward_ms = 120_000).await;
    let asked = 1;
    let old = protocol::Version {
        major: PEER_VERSION.major,
        minor: 1,
    };
    let conn = peer_support::raw::connect(cluster.shard(asked).peer_addr.unwrap()).await;
    let exporter = peer_support::exporter(&conn);
    let secret = cluster_support::SECRET.as_bytes();
    let _control = peer_support::raw_handshake(&conn, exporter, secret, PREFIX, "old", old)
        .await
        .expect("a peer of an older minor is admitted");
    let ghost =
        Directory::new(cluster.dir.settings().clone(), ShardId::new("old").unwrap()).unwrap();
    let room: RoomId = "other".parse().unwrap();
    ghost.acquire_room(&room, 0).await.unwrap();

    // The old peer: accept the stream shard b opens and read what comes
    // on it: the stream's end, or a message (then it hangs up, so that a
    // wrong ask fails the test at once rather than after the wait).
    let peer = tokio::spawn(async move {
        let (mut send, mut recv) = conn.accept_bi().await.expect("b opens a stream");
        let head: Option<StreamHead> = peer_support::read_msg(&mut recv).await;
        let accept = protocol::peer::encode_frame(&StreamHead::Accept(Accept {}), 1 << 20).unwrap();
        send.write_all(&accept).await.unwrap();
        let ask: Option<AdminMsg> = peer_support::read_msg(&mut recv).await;
        (head, ask, conn)
    });

    let (status, body) = cluster.migrate(asked, "other", None, OPERATOR).await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body.contains("shard old owns it") && body.contains("speaks tunnel 1.1"),
        "{body}"
    );
    let (head, ask, _conn) = tokio::time::timeout(PATIENCE, peer)
        .await
        .expect("b ended the admin stream")
        .unwrap();
    assert_eq!(
        head,
        Some(StreamHead::Open(protocol::peer::Open {
            protocol: ADMIN_PROTOCOL.into()
        }))
    );
    assert_eq!(ask, None, "nothing was asked of the 1.1 peer");
    // The room was never b's to move, and is still the old peer's.
    assert_eq!(
        cluster
            .dir
            .owner(&room)
            .await
            .unwrap()
            .map(|(s, _)| s.to_string()),
        Some("old".to_string())
    );
    cluster.close().await;
}

/// Inputs a room applied on map `map`, as the shards' metrics say (the
/// test shards share one process, so one shard's page shows them all).
async fn applied(cluster: &Cluster, map: &str) -> u64 {
    let url = format!("http://{}/metrics", cluster.shard(0).http_addr);
    let text = common::http_get(&url).await;
    let series = format!("tessera_room_inputs_applied_total{{map=\"{map}\"}}");
    text.lines()
        .filter(|l| l.starts_with(&series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// No input is lost to a live move under steady input: a batch on its way
/// to the old owner when the room paused may arrive after the room's state
/// left; the edge sends its members' recent inputs again to the new owner,
/// which applies each `seq` once. The drill `migrate_hold` makes that
/// window certain (the hold reaches the edge too late, and the offer waits
/// until an input arrived after the state left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_input_is_lost_over_a_migration_under_steady_input() {
    const STEADY: &str = "steady";
    const INPUTS: u32 = 60;
    let cluster = start_cluster("mg8", |config| {
        // A map of its own: the metric counts this test's inputs only.
        let mut steady = config.maps[0].clone();
        steady.name = STEADY.into();
        config.maps.push(steady);
    })
    .await;
    let (_first, _) = join_as(cluster.shard(0).ws_addr, "first", STEADY).await;
    let (owner, epoch) = cluster.owner(STEADY).await;
    let edge = (owner + 1) % 3;
    let target = (owner + 2) % 3;
    let (mut ann, _) = join_as(cluster.shard(edge).ws_addr, "ann", STEADY).await;
    let url = format!(
        "http://{}/admin/faults/room",
        cluster.shard(owner).http_addr
    );
    let body = format!(r#"{{"map": "{STEADY}", "kind": "panic", "at": "migrate_hold"}}"#);
    let (status, body) = common::http("POST", &url, Some(OPERATOR), &body).await;
    assert_eq!(status, 200, "{body}");
    let before = applied(&cluster, STEADY).await;

    // Ann moves steadily (each input a new seq, within the rate limit)
    // while the room moves.
    let steady = tokio::spawn(async move {
        for seq in 1..=INPUTS {
            let turn = seq as f32 * 0.7;
            ann.walk(seq, turn.cos(), turn.sin()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        ann
    });
    common::eventually(PATIENCE, "ann's first inputs applied", || async {
        applied(&cluster, STEADY).await >= before + 5
    })
    .await;
    let (status, body) = cluster
        .migrate(owner, STEADY, Some(ID[target]), OPERATOR)
        .await;
    assert_eq!(status, 200, "{body}");
    let moved: RoomMigrated = serde_json::from_str(&body).unwrap();
    assert!(moved.epoch > epoch);
    let _ann = steady.await.unwrap();
    // Every input applied once, on one owner or the other.
    common::eventually(PATIENCE, "every input applied", || async {
        applied(&cluster, STEADY).await >= before + u64::from(INPUTS)
    })
    .await;
    assert_eq!(applied(&cluster, STEADY).await, before + u64::from(INPUTS));
    assert_eq!(cluster.owner(STEADY).await, (target, moved.epoch));
    let text = common::http_get(&format!("http://{}/metrics", cluster.shard(edge).http_addr)).await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("tessera_migration_inputs_resent_total") && !l.ends_with(" 0")),
        "the edge sent nothing again"
    );
    cluster.close().await;
}

/// Drain shard `i` through the admin API and wait until it has ended.
async fn drain(cluster: &mut Cluster, i: usize) -> tokio::task::JoinHandle<()> {
    let url = format!("http://{}/admin/shards/drain", cluster.shard(i).http_addr);
    let (status, body) = common::http("POST", &url, Some(OPERATOR), "").await;
    assert_eq!(status, 200, "{body}");
    let shard = cluster.shards[i].take().expect("shard running");
    tokio::task::spawn_blocking(move || {
        let TestShard { shard, data } = shard;
        shard.join();
        drop(data);
    })
}

/// `client` gets updates showing `entity` at seq `seq`, quietly.
async fn sees_seq(client: &mut Client, entity: EntityId, seq: u32, what: &str) {
    wait_for(client, what, |m| {
        seen_at(m, entity).and_then(|(_, _, s)| (s == seq).then_some(()))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_its_rooms_live_and_its_players_resume_elsewhere() {
    let mut cluster = start_cluster("mg6", |_| {}).await;
    let (_first, _) = join_as(cluster.shard(0).ws_addr, "first", "test").await;
    let (owner, epoch) = cluster.owner("test").await;
    let edge = (owner + 1) % 3;
    let (mut ann, ann_joined) = join_as(cluster.shard(edge).ws_addr, "ann", "test").await;
    let (mut cat, cat_welcome) = Client::welcomed(cluster.shard(owner).ws_addr, "cat").await;
    cat.send(protocol::ClientMsg::Join(protocol::msg::Join {
        map: "test".into(),
    }))
    .await;
    let cat_joined = loop {
        match cat.next_event(PATIENCE).await {
            Some(Event::Msg(ServerMsg::Joined(j))) => break j,
            Some(Event::Msg(_)) => {}
            _ => panic!("cat did not join"),
        }
    };
    cat.walk(1, 1.0, 0.0).await;
    sees_seq(&mut ann, cat_joined.you, 1, "cat walking").await;

    let ended = drain(&mut cluster, owner).await;
    // The owner's own player is told to reconnect (6004, close 4008),
    // after its room moved.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut told = false;
    let code = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match cat.next_event(left).await {
            Some(Event::Msg(ServerMsg::Notice(n))) => {
                told |= n.code == NoticeCode::ShardDraining.as_u16();
            }
            Some(Event::Msg(_)) => {}
            Some(Event::Closed(code)) => break code,
            None => panic!("cat was not closed"),
        }
    };
    assert!(told, "notice 6004 before the close");
    assert_eq!(code, Some(protocol::CloseCode::Draining.as_u16()));
    // The drained shard ends by itself.
    tokio::time::timeout(PATIENCE, ended)
        .await
        .expect("the drained shard ends")
        .unwrap();
    // The room runs on another shard at epoch + 1; the player on the
    // edge saw no restart, no move notice, and plays on.
    let (now, new_epoch) = cluster.owner("test").await;
    assert_ne!(now, owner);
    assert_eq!(new_epoch, epoch + 1, "moved live, not failed over");
    ann.walk(2, 0.0, 1.0).await;
    sees_seq(
        &mut ann,
        ann_joined.you,
        2,
        "ann's own turn after the drain",
    )
    .await;
    // cat resumes on another shard and gets its seat back.
    let mut again = Client::connect(cluster.shard(edge).ws_addr).await;
    again.send_resume(cat_welcome.resume_token.clone()).await;
    again.expect("welcome", msg!(ServerMsg::Welcome)).await;
    again
        .send(protocol::ClientMsg::Join(protocol::msg::Join {
            map: "test".into(),
        }))
        .await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let back = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match again.next_event(left).await {
            Some(Event::Msg(ServerMsg::Joined(j))) => break j,
            Some(Event::Msg(_)) => {}
            other => panic!("cat did not get its seat back: {:?}", other.is_some()),
        }
    };
    assert_eq!(back.you, cat_joined.you, "the held seat, not a new entity");
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_with_a_stuck_room_restarts_it_on_the_target_from_its_snapshot() {
    let mut cluster = start_cluster("mg7", |_| {}).await;
    let (_first, _) = join_as(cluster.shard(0).ws_addr, "first", "test").await;
    let (owner, epoch) = cluster.owner("test").await;
    let edge = (owner + 1) % 3;
    let (mut ann, ann_joined) = join_as(cluster.shard(edge).ws_addr, "ann", "test").await;
    ann.walk(1, 1.0, 0.0).await;
    let x = sees_past(&mut ann, ann_joined.you, 0.0, "ann walking").await;
    // The room's thread is blocked for longer than it has to answer the
    // pause (cluster.migrate_pause_ms, 1 s here).
    let url = format!(
        "http://{}/admin/faults/room",
        cluster.shard(owner).http_addr
    );
    let (status, body) = common::http(
        "POST",
        &url,
        Some(OPERATOR),
        r#"{"map": "test", "kind": "stall", "ms": 4000}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ended = drain(&mut cluster, owner).await;
    // Not waited for: the room runs on another shard from its last
    // snapshot, and ann, who never left, walks on from where she was.
    let dir = cluster.dir.clone();
    let room: RoomId = "test".parse().unwrap();
    common::eventually(PATIENCE, "the stuck room runs elsewhere", || {
        let (dir, room) = (dir.clone(), room.clone());
        async move {
            dir.owner(&room)
                .await
                .ok()
                .flatten()
                .is_some_and(|(s, e)| s.as_str() != ID[owner] && e == epoch + 1)
        }
    })
    .await;
    // (She walks at 1000 units/s: by now she may stand at the map's
    // edge, so she turns back and her turn shows on the new owner.)
    ann.walk(2, -1.0, 0.0).await;
    let back = wait_for(&mut ann, "ann's turn, on the new owner", |m| {
        seen_at(m, ann_joined.you).and_then(|(x, _, s)| (s == 2).then_some(x))
    })
    .await;
    // Her entity and place are kept: the snapshot is at most 2 ticks
    // old (100 units at her speed), then she walked on and turned.
    assert!(
        (back - x).abs() <= 250.0,
        "she went on from her snapshot: {back} near {x}"
    );
    tokio::time::timeout(PATIENCE, ended)
        .await
        .expect("the drained shard ends")
        .unwrap();
    cluster.close().await;
}
