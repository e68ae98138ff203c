//! Fencing with real shard processes: three `tessera-server` binaries in
//! cluster mode over a real `redis-server`, sharing one MongoDB
//! (SecantusDB). An owner frozen past its lease (SIGSTOP) is replaced at a
//! higher epoch; when it wakes (SIGCONT) the store refuses its writes and
//! its copy of the room stops. Every wait is for a condition, with a
//! generous deadline.

mod cluster_support;
mod common;
mod redis_support;
mod store_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Client, Event};
use protocol::msg::{ItemId, PickUp};
use protocol::{ClientMsg, ErrorCode, NoticeCode, ServerMsg};
use redis_support::RedisServer;
use server::cluster::directory::rendezvous;
use server::cluster::{Directory, DirectorySettings, ShardId};
use server::config::{Config, MapConfig, SpawnerConfig};
use server::ids::RoomId;
use server::store::Store;
use store_support::Secantus;

const SECRET: &str = "cluster-fencing-auth-secret-0123456789abcdef";
const ADMIN: &str = "admin-token-for-cluster-fencing-01";
const PATIENCE: Duration = Duration::from_secs(90);
const FIELD: &str = "field";
const IDS: [&str; 3] = ["a", "b", "c"];

fn config(redis: &RedisServer, mongo: &Secantus, prefix: &str, id: &str) -> Config {
    let mut config = cluster_support::shard_config(redis.url(), prefix, id);
    config.cluster.failover_budget_ms = 60_000;
    // The edges learn of a frozen owner from the failure detector, not
    // from a tunnel timing out.
    config.cluster.tunnel.idle_timeout_ms = 600_000;
    config.server.idle_timeout_ms = 300_000;
    config.auth.secret = SECRET.into();
    config.admin.token = ADMIN.into();
    config.rooms.pickup_radius = 1_000.0;
    config.maps.push(MapConfig {
        name: FIELD.into(),
        width: 200.0,
        height: 200.0,
        spawn: [100.0, 100.0],
        spawn_radius: 0.0,
        view_radius: Some(1_000.0),
        items: vec![SpawnerConfig {
            kind: "gem".into(),
            count: 1,
            max_on_ground: 3,
            every_ms: 50,
        }],
        ..MapConfig::default()
    });
    common::use_mongo(&mut config, mongo.uri(), prefix);
    config.store.mongodb.server_selection_timeout_ms = 3_000;
    config.store.durable_timeout_ms = 5_000;
    config
}

/// A `tessera-server` process, SIGKILLed when dropped.
struct Shard {
    child: Child,
    ws: SocketAddr,
    http: SocketAddr,
}

impl Shard {
    fn spawn(config: &Config, dir: &Path) -> Shard {
        let path = dir.join(format!("{}.toml", config.cluster.shard_id));
        std::fs::write(&path, config.to_toml()).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera-server"))
            .args(["--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .env("TESSERA_CONFIG", &path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the server binary starts");
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut addr = |prefix: &str| -> SocketAddr {
            let line = lines
                .next()
                .expect("the server prints its addresses")
                .expect("readable stdout");
            line.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{line:?} is not {prefix}ADDR"))
                .parse()
                .expect("a socket address")
        };
        let ws = addr("ws listening on ");
        let http = addr("http listening on ");
        Shard { child, ws, http }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("running kill(1)");
        assert!(status.success(), "kill -{sig} failed");
        if sig == "STOP" {
            // Frozen before anything is sent to it.
            store_support::wait_stopped(self.child.id(), Duration::from_secs(5));
        }
    }

    /// Writes the store refused by the fence: room documents written
    /// behind, and durable writes (a pick-up's write-through and credit).
    async fn fenced(&self) -> f64 {
        let text = common::http_get(&format!("http://{}/metrics", self.http)).await;
        text.lines()
            .filter(|l| {
                l.starts_with("tessera_store_fenced_total")
                    || l.starts_with("tessera_store_durable_ops_total{result=\"fenced\"}")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .fold(0.0, |a, b| a + b)
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        // A frozen process would not die of SIGKILL until continued.
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn observer(redis: &RedisServer, prefix: &str) -> Directory {
    let settings = DirectorySettings {
        redis: redis.url(),
        prefix: prefix.into(),
        op_timeout: Duration::from_secs(2),
        wait: Duration::from_secs(5),
        ..DirectorySettings::from_config(&Config::default())
    };
    Directory::new(settings, ShardId::new("observer").unwrap()).unwrap()
}

/// Sign in as `name` once the shard's store answers, and join the field.
async fn player(addr: SocketAddr, name: &str) -> (Client, protocol::msg::Joined) {
    common::signed_in_and_joined(addr, SECRET, name, FIELD, PATIENCE).await
}

/// SIGSTOP the owner of a room past its lease: another shard takes the
/// room at epoch + 1 (its remote member follows it there). SIGCONT: the
/// old owner's writes (here a pick-up its local member asked for while it
/// was frozen) are refused by the store's fence, and its copy of the room
/// stops (its member gets the room-failed path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_owner_is_replaced_and_after_waking_its_writes_are_refused_and_its_room_stops() {
    store_support::init_tracing();
    let mongo = tokio::task::spawn_blocking(Secantus::start).await.unwrap();
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let shards: Vec<Shard> = IDS
        .iter()
        .map(|id| Shard::spawn(&config(&redis, &mongo, "xf1", id), data.path()))
        .collect();
    let dir = observer(&redis, "xf1");
    common::found(PATIENCE, "three shards ready", || async {
        let s = dir.shards().await.ok()?;
        (s.iter().filter(|s| s.alive && s.placeable()).count() == 3).then_some(())
    })
    .await;
    // Rendezvous hashing places the field on `owner`; `local` plays there,
    // `remote` on another shard.
    let owner = (0..3)
        .max_by_key(|&i| rendezvous(FIELD, IDS[i]))
        .expect("three shards");
    let (mut local, l) = player(shards[owner].ws, "local").await;
    let (mut remote, _) = player(shards[(owner + 1) % 3].ws, "remote").await;
    let room: RoomId = FIELD.parse().unwrap();
    let (held_by, epoch) = dir.owner(&room).await.unwrap().expect("leased");
    assert_eq!(held_by.as_str(), IDS[owner]);

    // An item the local member will reach for, stored in the room
    // document; the edges have heard from the owner (the failure detector
    // declares dead only a member it has heard from).
    let store = server::store::mongo::MongoStore::connect(
        &config(&redis, &mongo, "xf1", "a").store.mongodb,
    )
    .await
    .expect("a Mongo client of the test's own");
    let mut seen: Vec<ItemId> = l.items.iter().map(|i| i.id).collect();
    let item = loop {
        let stored = store.load_room(FIELD.into()).await.ok().flatten();
        if let Some(item) = stored.and_then(|d| d.items.into_iter().find(|i| seen.contains(&i.id)))
        {
            break item;
        }
        if let Some(Event::Msg(ServerMsg::Items(items))) =
            local.next_event(Duration::from_millis(200)).await
        {
            seen.extend(items.added.iter().map(|i| i.id));
        }
    };
    for edge in [(owner + 1) % 3, (owner + 2) % 3] {
        let url = format!("http://{}/admin/peers", shards[edge].http);
        common::found(PATIENCE, "the edge has heard from the owner", || async {
            let (_, body) = common::http("GET", &url, Some(ADMIN), "").await;
            let peers: protocol::admin::Peers = serde_json::from_str(&body).ok()?;
            peers
                .members
                .iter()
                .any(|m| m.shard_id == IDS[owner] && m.incarnation > 0)
                .then_some(())
        })
        .await;
    }
    let fenced_before = shards[owner].fenced().await;

    // Frozen. The local member's pick-up waits in its socket meanwhile.
    shards[owner].signal("STOP");
    local
        .send(ClientMsg::PickUp(PickUp {
            req: 7,
            item: item.id,
        }))
        .await;
    // Past the lease another shard takes the room at a higher epoch, and
    // fences the store with it; the remote member is seated there.
    let (new_owner, new_epoch) = common::found(PATIENCE, "the room leased elsewhere", || async {
        let (shard, e) = dir.owner(&room).await.ok()??;
        (shard.as_str() != IDS[owner] && e > epoch).then_some((shard, e))
    })
    .await;
    common::wait_for(PATIENCE, &mut remote, "notice 6003", |m| match m {
        ServerMsg::Notice(n) if n.code == NoticeCode::RoomMoved.as_u16() => Some(()),
        _ => None,
    })
    .await;
    common::found(PATIENCE, "the store fenced at the new epoch", || async {
        let doc = store.load_room(FIELD.into()).await.ok()??;
        (doc.owner_epoch >= new_epoch).then_some(())
    })
    .await;

    // Awake: the old copy's pick-up is not done (refused by the fence, or
    // the room already stopped), and the room stops there.
    shards[owner].signal("CONT");
    let mut picked = None;
    common::wait_for(
        PATIENCE,
        &mut local,
        "the room failed on the old owner",
        |m| match m {
            ServerMsg::Done(d) if d.req == 7 => panic!("the stale owner's pick-up was done: {d:?}"),
            ServerMsg::Error(e) if e.req == Some(7) => {
                picked = Some(e.code);
                None
            }
            ServerMsg::Error(e) if e.code == ErrorCode::RoomFailed.as_u16() => Some(()),
            _ => None,
        },
    )
    .await;
    common::wait_for(PATIENCE, &mut local, "the fallback map", |m| match m {
        ServerMsg::Joined(j) if j.map.name == "other" => Some(()),
        _ => None,
    })
    .await;
    // The store took nothing from it: the document is the new owner's,
    // the local player has no gem, nothing of it is pending.
    let doc = store.load_room(FIELD.into()).await.unwrap().unwrap();
    assert!(
        doc.owner_epoch >= new_epoch,
        "{} < {new_epoch}",
        doc.owner_epoch
    );
    assert!(
        !doc.pending.iter().any(|p| p.player == "local"),
        "a stale pick-up is pending: {:?}",
        doc.pending
    );
    let profile = store.load_player("local".into()).await.unwrap().unwrap();
    assert_eq!(profile.inventory.items.get("gem"), None, "no gem for local");
    // If the stale room got as far as writing, the store refused it.
    let fenced = shards[owner].fenced().await;
    eprintln!(
        "epoch {epoch} -> {new_epoch}; the stale pick-up: {picked:?}; fenced writes {fenced_before} -> {fenced}"
    );
    if picked == Some(ErrorCode::StoreUnavailable.as_u16()) {
        assert!(fenced > fenced_before, "refused by the fence: {fenced}");
    }
    // One owner: the new one, still.
    let (still, e) = dir.owner(&room).await.unwrap().expect("leased");
    assert_eq!((still, e), (new_owner, new_epoch));
    drop(shards);
    drop(mongo);
}

/// A shard restarted within its lease with the same id (a new process
/// while the old one is frozen, as after a hang and a supervisor's
/// restart) takes its room at a new epoch, never the old one, and fences
/// the store with it; when the old process wakes, its renewal finds the
/// lease lost and its copy of the room stops (its member gets the
/// room-failed path). The new process keeps the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_restarted_with_its_id_takes_its_room_at_a_new_epoch_and_the_old_process_is_fenced()
{
    store_support::init_tracing();
    let mongo = tokio::task::spawn_blocking(Secantus::start).await.unwrap();
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let old = Shard::spawn(&config(&redis, &mongo, "xf2", "a"), data.path());
    let dir = observer(&redis, "xf2");
    common::found(PATIENCE, "the shard ready", || async {
        let s = dir.shards().await.ok()?;
        (s.iter().filter(|s| s.alive && s.placeable()).count() == 1).then_some(())
    })
    .await;
    let (mut first, _) = player(old.ws, "first").await;
    let room: RoomId = FIELD.parse().unwrap();
    let (held_by, epoch) = dir.owner(&room).await.unwrap().expect("leased");
    assert_eq!(held_by.as_str(), "a");

    // Frozen, and a new process with the same id starts within the lease.
    old.signal("STOP");
    let restarted = Shard::spawn(&config(&redis, &mongo, "xf2", "a"), data.path());
    let (_second, _) = player(restarted.ws, "second").await;
    let (shard, new_epoch) = dir.owner(&room).await.unwrap().expect("leased");
    assert_eq!(shard.as_str(), "a");
    assert!(
        new_epoch > epoch,
        "the restarted shard re-used epoch {new_epoch} (the old process's: {epoch})"
    );
    let store = server::store::mongo::MongoStore::connect(
        &config(&redis, &mongo, "xf2", "a").store.mongodb,
    )
    .await
    .expect("a Mongo client of the test's own");
    common::found(PATIENCE, "the store fenced at the new epoch", || async {
        let doc = store.load_room(FIELD.into()).await.ok()??;
        (doc.owner_epoch >= new_epoch).then_some(())
    })
    .await;

    // Awake: the old process's lease is lost at its next renewal and its
    // room stops; its member falls back.
    old.signal("CONT");
    common::wait_for(
        PATIENCE,
        &mut first,
        "the room failed on the old process",
        |m| match m {
            ServerMsg::Error(e) if e.code == ErrorCode::RoomFailed.as_u16() => Some(()),
            _ => None,
        },
    )
    .await;
    assert_eq!(
        dir.owner(&room).await.unwrap(),
        Some((shard, new_epoch)),
        "the new process keeps the room"
    );
    let doc = store.load_room(FIELD.into()).await.unwrap().unwrap();
    assert!(
        doc.owner_epoch >= new_epoch,
        "{} < {new_epoch}",
        doc.owner_epoch
    );
    drop((old, restarted));
    drop(mongo);
}

/// Two live processes with one shard id would take each other's rooms in
/// turn: the second refuses to start, naming the field, while the first
/// heartbeats; once the first is frozen (no heartbeat), a new process with
/// the id starts (a restart within the shard's TTL), as above.
#[tokio::test]
async fn a_second_live_process_with_a_shard_id_in_use_refuses_to_start() {
    store_support::init_tracing();
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let config = |store: &str| {
        let mut config = cluster_support::shard_config(redis.url(), "xf3", "dup");
        config.store.embedded.dir = data.path().join(store);
        config.auth.secret = SECRET.into();
        config
    };
    let first = Shard::spawn(&config("first"), data.path());
    let dir = observer(&redis, "xf3");
    common::found(PATIENCE, "the first process registered", || async {
        let s = dir.shards().await.ok()?;
        (s.iter().filter(|s| s.alive && s.placeable()).count() == 1).then_some(())
    })
    .await;

    let path = data.path().join("second.toml");
    std::fs::write(&path, config("second").to_toml()).unwrap();
    let second = Command::new(env!("CARGO_BIN_EXE_tessera-server"))
        .args(["--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env("TESSERA_CONFIG", &path)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the server binary starts");
    // Bounded: it decides within about two heartbeats.
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::task::spawn_blocking(move || second.wait_with_output()),
    )
    .await
    .expect("the second process exits")
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the second process started: {stderr}"
    );
    assert!(
        stderr.contains("cluster.shard_id") && stderr.contains("shard id dup is in use"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("ws listening"),
        "it never served"
    );

    // The first is frozen: its heartbeat stops, and a new process with the
    // id takes over within the TTL.
    first.signal("STOP");
    let restarted = Shard::spawn(&config("restarted"), data.path());
    let mut client = Client::connect(restarted.ws).await;
    let welcome = client
        .hello_with(Some(common::token(SECRET, "ada")), "ada")
        .await;
    assert_eq!(welcome.player_id, "ada", "the restarted process serves");
}
