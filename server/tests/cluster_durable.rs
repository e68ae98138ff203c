//! Durable actions between shards: `give` and `pick_up` by players whose
//! socket is on one shard, in a room owned by another, keep their
//! all-or-nothing guarantee and get the answers a room on one shard
//! gives. Real shards in cluster mode over a real `redis-server`, sharing
//! one MongoDB (SecantusDB) unless a test says otherwise; real WebSocket
//! clients. Every wait is for a condition, with a generous deadline.

mod cluster_support;
mod common;
mod redis_support;
mod store_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Client, Event, TestShard};
use protocol::msg::{GroundItem, Inventory, ItemId, Joined, PickUp};
use protocol::{ClientMsg, ErrorCode, ServerMsg};
use redis_support::RedisServer;
use server::cluster::Directory;
use server::config::{Config, MapConfig, SpawnerConfig};
use server::ids::RoomId;
use server::store::Store;
use store_support::Secantus;

const SECRET: &str = "cluster-durable-auth-secret-0123456789abcdef";
const PATIENCE: Duration = Duration::from_secs(60);
const FIELD: &str = "field";
const ADMIN: &str = "admin-token-for-cluster-durable-01";

/// A field with gems (anywhere on it, all within the pick-up radius).
fn field() -> MapConfig {
    MapConfig {
        name: FIELD.into(),
        width: 200.0,
        height: 200.0,
        spawn: [100.0, 100.0],
        spawn_radius: 0.0,
        view_radius: Some(1_000.0),
        items: vec![SpawnerConfig {
            kind: "gem".into(),
            count: 2,
            max_on_ground: 3,
            every_ms: 50,
        }],
        ..MapConfig::default()
    }
}

fn config(redis: &RedisServer, prefix: &str, id: &str, mongo: Option<&Secantus>) -> Config {
    let mut config = cluster_support::shard_config(redis.url(), prefix, id);
    config.cluster.failover_budget_ms = 40_000;
    config.auth.secret = SECRET.into();
    config.rooms.pickup_radius = 1_000.0;
    config.maps.push(field());
    if let Some(mongo) = mongo {
        common::use_mongo(&mut config, mongo.uri(), prefix);
        // Slower than an outage test's: a shared store under three shards
        // on two busy cores.
        config.store.mongodb.server_selection_timeout_ms = 3_000;
        config.store.durable_timeout_ms = 5_000;
    }
    config
}

/// Three shards `a`, `b`, `c` in process, stopped by [`Cluster::close`].
struct Cluster {
    shards: Vec<TestShard>,
    dir: Directory,
    _redis: RedisServer,
}

impl Cluster {
    async fn start(prefix: &str, mongo: Option<&Secantus>) -> Cluster {
        store_support::init_tracing();
        let redis = RedisServer::start();
        let mut shards = Vec::new();
        for id in ["a", "b", "c"] {
            let config = config(&redis, prefix, id, mongo);
            shards.push(
                tokio::task::spawn_blocking(move || common::start(config))
                    .await
                    .unwrap(),
            );
        }
        let dir = shards[0].cluster.clone().unwrap();
        ready(&dir, 3).await;
        Cluster {
            shards,
            dir,
            _redis: redis,
        }
    }

    fn addr(&self, i: usize) -> SocketAddr {
        self.shards[i].ws_addr
    }

    /// The index of the shard that owns `room` now.
    async fn owner(&self, room: &str) -> usize {
        owner_of(&self.dir, room).await
    }

    async fn close(self) {
        for shard in self.shards {
            tokio::task::spawn_blocking(move || drop(shard))
                .await
                .unwrap();
        }
    }
}

async fn owner_of(dir: &Directory, room: &str) -> usize {
    let room: RoomId = room.parse().unwrap();
    let (shard, _) = dir.owner(&room).await.unwrap().expect("leased");
    ["a", "b", "c"]
        .iter()
        .position(|s| *s == shard.as_str())
        .expect("one of a, b, c")
}

async fn ready(dir: &Directory, n: usize) {
    let dir = dir.clone();
    common::eventually(PATIENCE, "shards ready", || {
        let dir = dir.clone();
        async move {
            dir.shards()
                .await
                .map(|s| s.iter().filter(|s| s.alive && s.placeable()).count() == n)
                .unwrap_or(false)
        }
    })
    .await;
}

/// Sign in as `name` (a stable identity: a token of the shared secret)
/// once the shard's store answers (its persister connects in the
/// background: a login before that plays without a profile), take the
/// starter purse and join `map`.
async fn player(addr: SocketAddr, name: &str, map: &str) -> (Client, Joined) {
    common::signed_in_and_joined(addr, SECRET, name, map, PATIENCE).await
}

/// The answer to request `req`: `Ok(inventory)` for `done`, else the
/// error's code.
async fn answer(client: &mut Client, req: u32) -> Result<Inventory, u16> {
    common::wait_for(
        PATIENCE,
        client,
        &format!("the answer to {req}"),
        |m| match m {
            ServerMsg::Done(d) if d.req == req => Some(Ok(d.inventory.clone())),
            ServerMsg::Error(e) if e.req == Some(req) => Some(Err(e.code)),
            _ => None,
        },
    )
    .await
}

async fn inventory_push(client: &mut Client, currency: i64) {
    common::wait_for(
        PATIENCE,
        client,
        &format!("inventory {currency}"),
        |m| match m {
            ServerMsg::Inventory(i) if i.currency == currency => Some(()),
            _ => None,
        },
    )
    .await
}

/// The giver on one shard, the target on another, the room on the third:
/// both inventories change or neither, with the answers of one shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_give_between_three_shards_is_done_once_and_reaches_the_target() {
    let mongo = tokio::task::spawn_blocking(Secantus::start).await.unwrap();
    let cluster = Cluster::start("xg1", Some(&mongo)).await;
    // Someone on shard 0 places the room; the giver and the target join
    // from the two shards that do not own it.
    let (_host, _) = player(cluster.addr(0), "host", "test").await;
    let owner = cluster.owner("test").await;
    let (giver_at, target_at) = ((owner + 1) % 3, (owner + 2) % 3);
    let (mut giver, g) = player(cluster.addr(giver_at), "giver", "test").await;
    let (mut target, t) = player(cluster.addr(target_at), "target", "test").await;

    giver.give(1, t.you, 25).await;
    assert_eq!(answer(&mut giver, 1).await.map(|i| i.currency), Ok(75));
    inventory_push(&mut target, 125).await;

    // The same request again: answered, not applied again.
    giver.give(1, t.you, 25).await;
    assert_eq!(answer(&mut giver, 1).await.map(|i| i.currency), Ok(75));
    // Refusals with the codes of one shard; nothing changed.
    giver.give(2, t.you, 1_000).await;
    assert_eq!(answer(&mut giver, 2).await, Err(3006));
    giver.give(3, 999_999, 1).await;
    assert_eq!(answer(&mut giver, 3).await, Err(3007));
    // The next give lands on what the first one left: 75 - 5, 125 + 5.
    giver.give(4, t.you, 5).await;
    assert_eq!(answer(&mut giver, 4).await.map(|i| i.currency), Ok(70));
    inventory_push(&mut target, 130).await;

    // The target gives back from its shard (the room still elsewhere).
    // (Its own request numbers: shards in one test process share the
    // process nonce that op ids are scoped by.)
    target.give(101, g.you, 30).await;
    assert_eq!(answer(&mut target, 101).await.map(|i| i.currency), Ok(100));
    inventory_push(&mut giver, 100).await;
    // A player on the owner gives to the target: the room is local to the
    // giver, the target's push crosses to its shard.
    let (mut boss, _) = player(cluster.addr(owner), "boss", "test").await;
    boss.give(201, t.you, 10).await;
    assert_eq!(answer(&mut boss, 201).await.map(|i| i.currency), Ok(90));
    inventory_push(&mut target, 110).await;
    cluster.close().await;
    drop(mongo);
}

/// Shards that each keep their own embedded store: a give to a player on
/// another shard is refused (3010) before any write; one to a player on
/// the giver's own shard (the room elsewhere) is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_store_per_shard_a_give_to_another_shard_is_refused_and_changes_nothing() {
    let cluster = Cluster::start("xg2", None).await;
    let (_host, _) = player(cluster.addr(0), "host", "test").await;
    let owner = cluster.owner("test").await;
    let (here, there) = ((owner + 1) % 3, (owner + 2) % 3);
    let (mut giver, _) = player(cluster.addr(here), "giver", "test").await;
    let (mut near, n) = player(cluster.addr(here), "near", "test").await;
    let (_far, f) = player(cluster.addr(there), "far", "test").await;

    giver.give(1, f.you, 10).await;
    assert_eq!(answer(&mut giver, 1).await, Err(3010));
    giver.give(2, n.you, 10).await;
    assert_eq!(answer(&mut giver, 2).await.map(|i| i.currency), Ok(90));
    inventory_push(&mut near, 110).await;
    cluster.close().await;
}

/// What a player of the field knows of the ground, from its frames.
#[derive(Default)]
struct Ground {
    items: BTreeMap<ItemId, GroundItem>,
    removed: Vec<ItemId>,
}

impl Ground {
    fn from_joined(joined: &Joined) -> Ground {
        Ground {
            items: joined.items.iter().map(|i| (i.id, i.clone())).collect(),
            removed: Vec::new(),
        }
    }

    fn apply(&mut self, msg: &ServerMsg) {
        if let ServerMsg::Items(items) = msg {
            for i in &items.added {
                self.items.insert(i.id, i.clone());
            }
            for id in &items.removed {
                self.items.remove(id);
                self.removed.push(*id);
            }
        }
    }
}

/// Read until `until` holds for `ground`; the messages read are handed
/// to `seen` too.
async fn pump(
    client: &mut Client,
    ground: &mut Ground,
    what: &str,
    mut seen: impl FnMut(&ServerMsg),
    until: impl Fn(&Ground) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    while !until(ground) {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_event(left).await {
            Some(Event::Msg(msg)) => {
                ground.apply(&msg);
                seen(&msg);
            }
            Some(Event::Closed(code)) => panic!("closed ({code:?}) waiting for {what}"),
            None => panic!("timed out waiting for {what}"),
        }
    }
}

fn gems(inventory: &Inventory) -> i64 {
    inventory.items.get("gem").copied().unwrap_or(0)
}

/// A member on another shard than the room's picks an item up: it leaves
/// the ground for everyone, the picker's inventory has it, `done` comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_member_picks_up_an_item_for_everyone_to_see() {
    let mongo = tokio::task::spawn_blocking(Secantus::start).await.unwrap();
    let cluster = Cluster::start("xp1", Some(&mongo)).await;
    let (mut host, h) = player(cluster.addr(0), "host", FIELD).await;
    let owner = cluster.owner(FIELD).await;
    let (mut local, l) = player(cluster.addr(owner), "local", FIELD).await;
    let (mut picker, p) = player(cluster.addr((owner + 1) % 3), "picker", FIELD).await;
    let mut ground = Ground::from_joined(&p);
    pump(
        &mut picker,
        &mut ground,
        "an item on the ground",
        |_| {},
        |g| !g.items.is_empty(),
    )
    .await;
    let item = *ground.items.keys().next().unwrap();
    let count = ground.items[&item].count;
    picker
        .send(ClientMsg::PickUp(PickUp { req: 7, item }))
        .await;
    let mut done = None;
    pump(
        &mut picker,
        &mut ground,
        "done 7",
        |m| match m {
            ServerMsg::Done(d) if d.req == 7 => done = Some(d.inventory.clone()),
            ServerMsg::Error(e) if e.req == Some(7) => panic!("pick_up refused: {e:?}"),
            _ => {}
        },
        |g| g.removed.contains(&item) && !g.items.contains_key(&item),
    )
    .await;
    let inventory = match done {
        Some(inventory) => inventory,
        None => answer(&mut picker, 7).await.expect("done 7"),
    };
    assert_eq!(gems(&inventory), count, "the picker has the item");
    // Everyone else sees it leave the ground: a member on the owner and
    // one on the third shard (or the owner).
    for (client, joined) in [(&mut local, &l), (&mut host, &h)] {
        let mut theirs = Ground::from_joined(joined);
        pump(
            client,
            &mut theirs,
            "the item gone",
            |_| {},
            |g| g.removed.contains(&item),
        )
        .await;
        assert!(!theirs.items.contains_key(&item));
    }
    // A second pick-up of the same item: gone, with the code of one shard.
    picker
        .send(ClientMsg::PickUp(PickUp { req: 8, item }))
        .await;
    assert_eq!(
        answer(&mut picker, 8).await,
        Err(ErrorCode::ItemGone.as_u16())
    );
    cluster.close().await;
    drop(mongo);
}

/// A shard id that rendezvous hashing prefers over `a` and `b` for
/// `room`: the room is placed on the shard with it.
fn winning_id(room: &str) -> String {
    use server::cluster::directory::rendezvous;
    let best = rendezvous(room, "a").max(rendezvous(room, "b"));
    (0..1000)
        .map(|i| format!("p{i}"))
        .find(|id| rendezvous(room, id) > best)
        .expect("some id wins")
}

/// The owner (a process of its own) is SIGKILLed with a remote member's
/// pick-up in flight (the store frozen, so the pick-up cannot finish):
/// the next owner finishes it from the store, crediting the item once, or
/// finds it still on the ground (the take never landed); never both,
/// never twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pick_up_in_flight_when_the_owner_is_killed_is_finished_by_the_next_owner() {
    let mut mongo = tokio::task::spawn_blocking(Secantus::start).await.unwrap();
    let redis = RedisServer::start();
    store_support::init_tracing();
    let data = tempfile::tempdir().unwrap();
    let owner_id = winning_id(FIELD);
    // The tunnels' idle timeout is far beyond the test: the edges learn of
    // the death from the failure detector.
    let tuned = |id: &str| {
        let mut config = config(&redis, "xp2", id, Some(&mongo));
        config.cluster.tunnel.idle_timeout_ms = 600_000;
        config.admin.token = ADMIN.into();
        config
    };
    let path = data.path().join("tessera.toml");
    std::fs::write(&path, tuned(&owner_id).to_toml()).unwrap();
    let (owner, _) = common::ServerProcess::spawn(&[("TESSERA_CONFIG", path.as_os_str())]);
    let mut shards = Vec::new();
    for id in ["a", "b"] {
        let config = tuned(id);
        shards.push(
            tokio::task::spawn_blocking(move || common::start(config))
                .await
                .unwrap(),
        );
    }
    let dir = shards[0].cluster.clone().unwrap();
    ready(&dir, 3).await;
    let (mut picker, p) = player(shards[0].ws_addr, "picker", FIELD).await;
    let room: RoomId = FIELD.parse().unwrap();
    let (held_by, epoch) = dir.owner(&room).await.unwrap().expect("leased");
    assert_eq!(held_by.as_str(), owner_id, "placed on the process");
    cluster_support::heard_from(&[&shards[0], &shards[1]], &owner_id, ADMIN, PATIENCE).await;

    // An item on the ground, and in the stored room document.
    let store = server::store::mongo::MongoStore::connect(&tuned("a").store.mongodb)
        .await
        .expect("a Mongo client of the test's own");
    let mut ground = Ground::from_joined(&p);
    pump(
        &mut picker,
        &mut ground,
        "an item on the ground",
        |_| {},
        |g| !g.items.is_empty(),
    )
    .await;
    let ids: Vec<ItemId> = ground.items.keys().copied().collect();
    let item = common::found(PATIENCE, "an item of the ground stored", || async {
        let doc = store.load_room(FIELD.into()).await.ok()??;
        doc.items.iter().find(|i| ids.contains(&i.id)).cloned()
    })
    .await;

    // The store freezes; the pick-up starts (the item leaves the ground at
    // once) and cannot finish; the owner dies; the store comes back.
    tokio::task::block_in_place(|| mongo.pause());
    picker
        .send(ClientMsg::PickUp(PickUp {
            req: 7,
            item: item.id,
        }))
        .await;
    pump(
        &mut picker,
        &mut ground,
        "the item taken",
        |_| {},
        |g| g.removed.contains(&item.id),
    )
    .await;
    owner.kill_hard();
    tokio::task::block_in_place(|| mongo.resume());
    // The frozen store may have taken the owner's write-through (the item
    // pending) or not. If not, the store gets the document that write
    // carried, as if the owner died right after it landed: the case the
    // next owner must finish (the other case, the item simply still on
    // the ground, needs nothing of it). Written long before the old lease
    // expires, with the old owner's epoch, as the owner would have.
    // (A late write of the dead owner may land meanwhile: read again.)
    common::found(PATIENCE, "the take stored", || async {
        let doc = store.load_room(FIELD.into()).await.ok()??;
        let Some(at) = doc.items.iter().position(|i| i.id == item.id) else {
            return Some(());
        };
        let mut taken = doc.clone();
        let gem = taken.items.remove(at);
        taken.pending.push(server::store::PendingPickup {
            op_id: format!("pickup:{FIELD}:{}:{}", doc.epoch, gem.id),
            player: "picker".into(),
            item: gem,
        });
        taken.rev += 1;
        store.write_room(taken).await.ok()?.then_some(())
    })
    .await;

    // The room is leased again elsewhere; the picker is seated there.
    common::wait_for(
        PATIENCE,
        &mut picker,
        "joined from the new owner",
        |m| match m {
            ServerMsg::Joined(j) => Some(j.clone()),
            _ => None,
        },
    )
    .await;
    let (new_owner, new_epoch) = dir.owner(&room).await.unwrap().expect("leased again");
    assert!(["a", "b"].contains(&new_owner.as_str()));
    assert!(new_epoch > epoch);
    // The next owner settled the pick-up: nothing pending for the item.
    let (doc, profile) = common::found(
        PATIENCE,
        "the pick-up settled by the next owner",
        || async {
            let doc = store.load_room(FIELD.into()).await.ok()??;
            if doc.owner_epoch < new_epoch || doc.pending.iter().any(|p| p.item.id == item.id) {
                return None;
            }
            let profile = store.load_player("picker".into()).await.ok()??;
            Some((doc, profile))
        },
    )
    .await;
    // Credited once (not twice: the re-drive replays the same op id),
    // and not on the ground.
    let credited = profile.inventory.items.get("gem").copied().unwrap_or(0);
    assert_eq!(credited, item.count, "credited once");
    assert!(!doc.items.iter().any(|i| i.id == item.id), "not back");
    // The picker, on its edge, is told.
    common::wait_for(
        PATIENCE,
        &mut picker,
        "the credited inventory",
        |m| match m {
            ServerMsg::Inventory(i) if gems(i) == item.count => Some(()),
            _ => None,
        },
    )
    .await;
    for shard in shards {
        tokio::task::spawn_blocking(move || drop(shard))
            .await
            .unwrap();
    }
    drop(mongo);
}
