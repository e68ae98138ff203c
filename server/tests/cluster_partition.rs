//! An owner cut off from Redis while the other shards are not: three
//! shards in this process, each reaching the one real `redis-server`
//! through its own TCP proxy, so a test can cut one shard's path to Redis
//! and leave its tunnels to the others alone.
//!
//! - Cut for longer than the lease: the owner freezes the room (its
//!   players see no tick), then hands it over; another shard runs it at a
//!   higher epoch, the players of the other shards are seated there, and
//!   the cut-off shard's own player gets the room-failed path. When the path
//!   comes back, the old owner does not take the room back.
//! - Cut with the handover off (`partition_handover_ms = 0`): frozen while
//!   cut, thawed with a full update once the lease is re-asserted, and the
//!   room never left its owner.
//!
//! (Redis down for everyone, where no room freezes for long and nobody
//! is disconnected, is `cluster_outage.rs`.) Every wait is for a
//! condition, with a generous deadline.

mod cluster_support;
mod common;
mod redis_support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cluster_support::{Cluster, ID};
use common::{Client, Event};
use protocol::msg::{EntityId, Update};
use protocol::{ErrorCode, ServerMsg};
use redis_support::RedisServer;
use server::cluster::{Directory, ShardId};
use server::config::Config;
use server::ids::RoomId;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const SECRET: &str = "cluster-partition-auth-secret-0123456789ab";
const ADMIN: &str = "admin-token-for-cluster-partition-1";
const PATIENCE: Duration = Duration::from_secs(60);

/// A loopback TCP proxy to Redis that a test can cut: while cut, every
/// connection through it is dropped and new ones are closed at once, as
/// if the network between one shard and Redis had failed.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<watch::Sender<bool>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(watch::channel(false).0);
        let state = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *state.borrow() {
                    continue;
                }
                let mut cut_rx = state.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut_rx.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Proxy { addr, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// A proxy per shard id, in front of `redis`.
async fn proxies(redis: &RedisServer) -> HashMap<&'static str, Proxy> {
    let target: SocketAddr = format!("127.0.0.1:{}", redis.port()).parse().unwrap();
    let mut out = HashMap::new();
    for id in ID {
        out.insert(id, Proxy::start(target).await);
    }
    out
}

fn config(redis: SocketAddr, prefix: &str, id: &str, handover_ms: u64) -> Config {
    let mut config = cluster_support::shard_config(format!("redis://{redis}/0"), prefix, id);
    config.cluster.partition_handover_ms = handover_ms;
    config.auth.secret = SECRET.into();
    config.admin.token = ADMIN.into();
    config
}

/// Three shards under key prefix `prefix`, each reaching Redis through
/// its own proxy.
async fn start(prefix: &str, handover_ms: u64) -> (Cluster, HashMap<&'static str, Proxy>) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    // The cluster's RedisServer is started by `Cluster::start`; the
    // proxies need its port first, so they point at a server started here
    // and handed in.
    let redis = RedisServer::start();
    let proxies = proxies(&redis).await;
    let addrs: HashMap<&str, SocketAddr> = proxies.iter().map(|(id, p)| (*id, p.addr)).collect();
    let prefix = prefix.to_string();
    let cluster = Cluster::start_on(
        redis,
        move |_, id| config(addrs[id], &prefix, id, handover_ms),
        PATIENCE,
    )
    .await;
    (cluster, proxies)
}

/// Whether `update` shows `walker` at input `seq` or later: moved, or
/// entered (a full view, or the walker coming back into view).
fn saw(update: &Update, walker: EntityId, seq: u32) -> bool {
    update
        .moved
        .iter()
        .any(|mv| mv.id == walker && mv.seq >= seq)
        || update
            .entered
            .iter()
            .any(|e| e.id == walker && e.seq >= seq)
}

/// `walker` takes step `seq`, and `watcher` sees it within `within`. A
/// step is one `move` with a new `seq` and no direction: the room applies
/// it (a newer `seq`) and shows it as moved, and the walker stays where it
/// is however long a freeze lasts. One move a step keeps the walker far
/// under the session's move rate limit (`limits.move_per_sec`), which two
/// a step (a walk, then a stop) went over in a long freeze loop.
async fn seen(
    walker: &mut (Client, EntityId),
    watcher: &mut Client,
    seq: u32,
    within: Duration,
) -> bool {
    walker.0.walk(seq, 0.0, 0.0).await;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match watcher.next_event(left).await {
            Some(Event::Msg(ServerMsg::Update(u))) if saw(&u, walker.1, seq) => return true,
            Some(Event::Msg(_)) => continue,
            Some(Event::Closed(_)) | None => return false,
        }
    }
}

/// Which shards run `test` now, by their admin API (which needs no
/// Redis).
async fn running(cluster: &Cluster) -> Vec<&'static str> {
    let mut on = Vec::new();
    for (i, id) in ID.iter().enumerate() {
        let url = format!("http://{}/admin/rooms", cluster.shard(i).http_addr);
        let (status, body) = common::http("GET", &url, Some(ADMIN), "").await;
        assert_eq!(status, 200, "{body}");
        let reply: protocol::admin::RoomsReply = serde_json::from_str(&body).unwrap();
        if reply.rooms.iter().any(|r| r.id == "test") {
            on.push(*id);
        }
    }
    on
}

/// A directory handle straight to Redis (not through any proxy), to read
/// who owns the room whoever is cut off.
fn observer(cluster: &Cluster) -> Directory {
    let settings = server::cluster::DirectorySettings {
        redis: cluster.redis.url(),
        ..cluster.dir.settings().clone()
    };
    Directory::new(settings, ShardId::new("observer").unwrap()).unwrap()
}

/// The owner's index and epoch, read straight from Redis.
async fn owner(dir: &Directory) -> Option<(usize, u64)> {
    let room: RoomId = "test".parse().unwrap();
    let (shard, epoch) = dir.owner(&room).await.ok()??;
    let i = ID.iter().position(|id| *id == shard.as_str())?;
    Some((i, epoch))
}

/// Three players, one per shard, in `test`; returns them with the owner's
/// index and epoch: `[owner's own player, walker, watcher]`, the walker
/// and the watcher on the two other shards.
async fn three_players(cluster: &Cluster) -> (Vec<(Client, EntityId)>, usize, u64) {
    let mut players = Vec::new();
    for (i, name) in ["ann", "bob", "cat"].iter().enumerate() {
        players.push(
            common::signed_in_player(cluster.shard(i).ws_addr, SECRET, name, "test", PATIENCE)
                .await,
        );
    }
    let (owner, epoch) = cluster.owner("test").await;
    // Put the owner's own player first.
    players.swap(0, owner);
    (players, owner, epoch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_cut_off_from_redis_freezes_its_room_then_hands_it_over() {
    let (cluster, proxies) = start("xp1", 4_000).await;
    let dir = observer(&cluster);
    let (mut players, owner_i, epoch) = three_players(&cluster).await;
    let (mut local, mut rest) = (players.remove(0), players);
    let mut watcher = rest.pop().unwrap();
    let mut walker = rest.pop().unwrap();
    assert!(seen(&mut walker, &mut watcher.0, 1, PATIENCE).await);

    proxies[ID[owner_i]].set_cut(true);
    // Another shard runs the room at a higher epoch, and the cut-off one
    // does not any more: one copy, whatever the old owner's clocks say.
    let (new_owner, new_epoch) = common::found(PATIENCE, "a new owner", || async {
        owner(&dir)
            .await
            .filter(|&(i, e)| i != owner_i && e > epoch)
    })
    .await;
    common::eventually(PATIENCE, "the room runs only on its new owner", || async {
        running(&cluster).await == vec![ID[new_owner]]
    })
    .await;
    // The players of the other shards are seated again by the new owner
    // and served by it: a full view each, then each other's moves.
    for (who, client) in [("walker", &mut walker), ("watcher", &mut watcher)] {
        client.1 = common::wait_for(PATIENCE, &mut client.0, who, |m| match m {
            ServerMsg::Joined(j) => Some(j.you),
            _ => None,
        })
        .await;
        let me = client.1;
        common::wait_for(
            PATIENCE,
            &mut client.0,
            "a full view from the new owner",
            |m| match m {
                ServerMsg::Update(u) if u.full && u.entered.iter().any(|e| e.id == me) => Some(()),
                _ => None,
            },
        )
        .await;
    }
    assert!(seen(&mut walker, &mut watcher.0, 2, PATIENCE).await);
    // The cut-off shard's own player cannot follow (its shard cannot
    // look the room up): the room-failed path, told so.
    common::wait_for(PATIENCE, &mut local.0, "room failed", |m| match m {
        ServerMsg::Error(e) if e.code == ErrorCode::RoomFailed.as_u16() => Some(()),
        _ => None,
    })
    .await;
    let metrics = common::metrics(cluster.shard(owner_i)).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tessera_room_handovers_total") && !l.ends_with(" 0")),
        "a handover counted: {metrics}"
    );

    // The path comes back: the old owner registers again and does not
    // take the room back (it forgot the lease it handed over).
    proxies[ID[owner_i]].set_cut(false);
    let back = ShardId::new(ID[owner_i]).unwrap();
    common::eventually(PATIENCE, "the old owner alive again", || async {
        dir.shards()
            .await
            .map(|s| s.iter().any(|s| s.id == back && s.alive))
            .unwrap_or(false)
    })
    .await;
    // Past two renewal rounds of the old owner.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(owner(&dir).await, Some((new_owner, new_epoch)));
    assert_eq!(running(&cluster).await, vec![ID[new_owner]]);
    cluster.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_room_thaws_with_full_views_when_its_lease_is_reasserted() {
    let (cluster, proxies) = start("xp2", 0).await;
    let dir = observer(&cluster);
    let (mut players, owner_i, epoch) = three_players(&cluster).await;
    let mut watcher = players.pop().unwrap();
    let mut walker = players.pop().unwrap();
    assert!(seen(&mut walker, &mut watcher.0, 1, PATIENCE).await);

    proxies[ID[owner_i]].set_cut(true);
    // Frozen: a step of the walker (on a shard that reaches Redis, and
    // the owner through its tunnel) is not shown to anyone for seconds.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut seq = 10;
    while seen(&mut walker, &mut watcher.0, seq, Duration::from_secs(3)).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the room never froze"
        );
        seq += 1;
    }
    // Nobody took it (the handover is off): the lease expired in Redis,
    // the room runs on its owner alone, frozen.
    assert_eq!(running(&cluster).await, vec![ID[owner_i]]);

    proxies[ID[owner_i]].set_cut(false);
    // Re-asserted at the same epoch: the room thaws, and the watcher gets
    // a full view before the ticks go on.
    common::wait_for(PATIENCE, &mut watcher.0, "a full update", |m| match m {
        ServerMsg::Update(u) if u.full => Some(()),
        _ => None,
    })
    .await;
    // A step the walker has not taken yet (steps of a lower number are
    // stale and ignored by the room).
    assert!(seen(&mut walker, &mut watcher.0, seq + 1, PATIENCE).await);
    assert_eq!(owner(&dir).await, Some((owner_i, epoch)));
    assert_eq!(running(&cluster).await, vec![ID[owner_i]]);
    cluster.close().await;
}
