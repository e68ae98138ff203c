//! Items lying on a map, end to end: spawners, the durable `pick_up` (done
//! only once stored, item_gone, out_of_reach), the ground kept across a
//! graceful restart, a SIGKILL right after `done`, a room panic, and a
//! MongoDB outage (SecantusDB). Real shards on real stores; players walk
//! to items like a client would.

mod common;
mod store_support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{http_post, start, start_on, test_config, Client, Event, ServerProcess, View};
use protocol::msg::*;
use protocol::{ClientMsg, ErrorCode, NoticeCode, ServerMsg};
use server::config::{MapConfig, SpawnerConfig};
use server::store::embedded::EmbeddedStore;
use server::store::Store;

const SECRET: &str = "items-test-secret-0123456789";
const ADMIN: &str = "items-test-admin-token-0123";
const MAP: &str = "field";
/// Items of the field's spawner at most on the ground.
const MAX_ON_GROUND: usize = 3;
const PICKUP_RADIUS: f32 = 30.0;
/// How long a player may take to walk anywhere on the field and more.
const PATIENCE: Duration = Duration::from_secs(10);

/// The field: 400 × 400, 200 units/s (10 a tick), gems every 50 ms up to 3.
fn field() -> MapConfig {
    MapConfig {
        name: MAP.into(),
        width: 400.0,
        height: 400.0,
        spawn: [200.0, 200.0],
        spawn_radius: 0.0,
        speed: 200.0,
        view_radius: Some(1_000.0),
        items: vec![SpawnerConfig {
            kind: "gem".into(),
            count: 1,
            max_on_ground: MAX_ON_GROUND as u32,
            every_ms: 50,
        }],
        ..MapConfig::default()
    }
}

fn config() -> server::Config {
    let mut config = test_config();
    config.auth.secret = SECRET.into();
    config.admin.token = ADMIN.into();
    config.admin.fault_injection = true;
    config.rooms.pickup_radius = PICKUP_RADIUS;
    config.maps.push(field());
    config
}

/// A player as a game client sees it: its view, the ground, and the
/// answers to its requests, kept from every message it reads.
struct Player {
    client: Client,
    you: EntityId,
    view: View,
    ground: BTreeMap<ItemId, GroundItem>,
    inventory: Option<Inventory>,
    done: BTreeMap<u32, Done>,
    errors: Vec<ErrorMsg>,
    /// Every item id some `items.removed` named.
    removed: Vec<ItemId>,
    seq: u32,
}

impl Player {
    /// Log in with a stable identity and join the field.
    async fn join(addr: SocketAddr, name: &str) -> Player {
        let mut client = Client::connect(addr).await;
        client
            .hello_with(Some(common::token(SECRET, name)), name)
            .await;
        client.send(ClientMsg::Join(Join { map: MAP.into() })).await;
        let mut player = Player {
            client,
            you: 0,
            view: View::default(),
            ground: BTreeMap::new(),
            inventory: None,
            done: BTreeMap::new(),
            errors: Vec::new(),
            removed: Vec::new(),
            seq: 0,
        };
        player.pump("joined", |p| p.you != 0).await;
        player
    }

    fn apply(&mut self, msg: ServerMsg) {
        match msg {
            ServerMsg::Joined(j) => {
                self.you = j.you;
                self.view = View::from_joined(&j);
                self.ground = j.items.into_iter().map(|i| (i.id, i)).collect();
            }
            ServerMsg::Update(u) => self.view.apply(&u),
            ServerMsg::Items(items) => {
                for i in items.added {
                    self.ground.insert(i.id, i);
                }
                for id in items.removed {
                    self.ground.remove(&id);
                    self.removed.push(id);
                }
            }
            ServerMsg::Inventory(i) => self.inventory = Some(i),
            ServerMsg::Done(d) => {
                self.inventory = Some(d.inventory.clone());
                self.done.insert(d.req, d);
            }
            ServerMsg::Error(e) => self.errors.push(e),
            _ => {}
        }
    }

    /// Read and apply messages until `until` holds, at most [`PATIENCE`].
    async fn pump(&mut self, what: &str, until: impl Fn(&Player) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !until(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            match self.client.next_event(left).await {
                Some(Event::Msg(msg)) => self.apply(msg),
                Some(Event::Closed(code)) => panic!("closed ({code:?}) waiting for {what}"),
                None => panic!("timed out waiting for {what}"),
            }
        }
    }

    fn position(&self) -> (f32, f32) {
        let (x, y, _) = self.view.entities[&self.you];
        (x, y)
    }

    fn distance_to(&self, item: &GroundItem) -> f32 {
        let (x, y) = self.position();
        (item.x - x).hypot(item.y - y)
    }

    /// Walk to `(tx, ty)`, slowing down near it, and stop there.
    async fn walk_to(&mut self, tx: f32, ty: f32) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            assert!(Instant::now() < deadline, "never reached ({tx}, {ty})");
            let (x, y) = self.position();
            let (dx, dy) = (tx - x, ty - y);
            let dist = dx.hypot(dy);
            if dist < 3.0 {
                break;
            }
            // Full speed far away, slower close by: never overshoots much.
            let scale = dist.max(40.0);
            self.seq += 1;
            let seq = self.seq;
            self.client.walk(seq, dx / scale, dy / scale).await;
            let you = self.you;
            self.pump("own move applied", |p| p.view.entities[&you].2 >= seq)
                .await;
            // Let it walk a tick or two before steering again.
            let before = self.position();
            self.pump("own move", |p| p.position() != before).await;
        }
        self.seq += 1;
        let seq = self.seq;
        self.client.walk(seq, 0.0, 0.0).await;
        let you = self.you;
        self.pump("stop applied", |p| p.view.entities[&you].2 >= seq)
            .await;
    }

    /// Send `pick_up` and wait for its `done` or error.
    async fn pick_up(&mut self, req: u32, item: ItemId) -> Result<Done, ErrorMsg> {
        self.client
            .send(ClientMsg::PickUp(PickUp { req, item }))
            .await;
        self.pick_up_answer(req).await
    }

    /// Wait for the answer to a `pick_up` already sent (each test uses a
    /// request number once per player).
    async fn pick_up_answer(&mut self, req: u32) -> Result<Done, ErrorMsg> {
        let tag = format!("pick_up {req}:");
        self.pump("pick_up answer", |p| {
            p.done.contains_key(&req) || p.errors.iter().any(|e| e.text.starts_with(&tag))
        })
        .await;
        match self.done.remove(&req) {
            Some(done) => Ok(done),
            None => Err(self
                .errors
                .iter()
                .find(|e| e.text.starts_with(&tag))
                .cloned()
                .expect("an error for the request")),
        }
    }

    /// Wait for a full ground, walk to the nearest item and pick it up.
    async fn fetch_nearest(&mut self, req: u32) -> (GroundItem, Done) {
        self.pump("a full ground", |p| p.ground.len() >= MAX_ON_GROUND)
            .await;
        let item = self
            .ground
            .values()
            .min_by(|a, b| self.distance_to(a).total_cmp(&self.distance_to(b)))
            .cloned()
            .expect("items on the ground");
        self.walk_to(item.x, item.y).await;
        let done = self
            .pick_up(req, item.id)
            .await
            .unwrap_or_else(|e| panic!("picking up {item:?}: {e:?}"));
        (item, done)
    }
}

fn gems(inventory: &Inventory) -> i64 {
    inventory.items.get("gem").copied().unwrap_or(0)
}

#[tokio::test]
async fn a_picked_item_is_done_once_stored_everyone_sees_it_go_and_no_one_takes_it_twice() {
    let shard = start(config());
    let mut alice = Player::join(shard.ws_addr, "alice").await;
    let mut bob = Player::join(shard.ws_addr, "bob").await;

    let (item, done) = alice.fetch_nearest(1).await;
    assert_eq!(done.inventory.items.get("gem"), Some(&1));
    assert_eq!(
        done.inventory.currency, 100,
        "the starter purse is untouched"
    );
    alice
        .pump("the inventory update", |p| {
            p.inventory.as_ref().is_some_and(|i| gems(i) == 1)
        })
        .await;
    assert!(!alice.ground.contains_key(&item.id));
    bob.pump("items.removed", |p| p.removed.contains(&item.id))
        .await;
    assert!(!bob.ground.contains_key(&item.id));

    // Taken: a second pick-up (by anyone) finds nothing.
    let again = alice.pick_up(2, item.id).await.unwrap_err();
    assert_eq!(again.error_code(), Some(ErrorCode::ItemGone));
    let never = alice.pick_up(3, 999_999).await.unwrap_err();
    assert_eq!(never.error_code(), Some(ErrorCode::ItemGone));

    // Bob stands at the spawn point: an item far from him is out of reach,
    // and stays on the ground.
    bob.pump("a full ground", |p| p.ground.len() >= MAX_ON_GROUND)
        .await;
    let far = bob
        .ground
        .values()
        .find(|i| bob.distance_to(i) > PICKUP_RADIUS + 1.0)
        .cloned()
        .expect("an item away from the spawn point");
    let refused = bob.pick_up(1, far.id).await.unwrap_err();
    assert_eq!(refused.error_code(), Some(ErrorCode::OutOfReach));
    assert!(bob.ground.contains_key(&far.id));
    // Nothing was credited to Bob.
    assert_eq!(bob.inventory.as_ref().map(gems), Some(0));

    // Both walk to the same item: exactly one of them gets it.
    alice
        .pump("the ground", |p| p.ground.contains_key(&far.id))
        .await;
    bob.walk_to(far.x, far.y).await;
    alice.walk_to(far.x, far.y).await;
    bob.client
        .send(ClientMsg::PickUp(PickUp {
            req: 2,
            item: far.id,
        }))
        .await;
    alice
        .client
        .send(ClientMsg::PickUp(PickUp {
            req: 4,
            item: far.id,
        }))
        .await;
    let bob_got = bob.pick_up_answer(2).await;
    let alice_got = alice.pick_up_answer(4).await;
    assert!(
        bob_got.is_ok() != alice_got.is_ok(),
        "one winner: bob {bob_got:?}, alice {alice_got:?}"
    );
    let loser = if bob_got.is_ok() { alice_got } else { bob_got };
    assert_eq!(loser.unwrap_err().error_code(), Some(ErrorCode::ItemGone));
}

#[tokio::test]
async fn the_ground_survives_a_graceful_restart_and_a_picked_item_stays_gone() {
    let data = tempfile::tempdir().unwrap();
    let (picked, lying) = {
        let shard = start_on(config(), data.path());
        let mut alice = Player::join(shard.ws_addr, "alice").await;
        let (picked, _) = alice.fetch_nearest(1).await;
        // The spawner fills the gap; then the ground stays as it is.
        alice
            .pump("the gap refilled", |p| p.ground.len() >= MAX_ON_GROUND)
            .await;
        let lying = alice.ground.clone();
        drop(alice);
        shard.shutdown();
        (picked, lying)
    };
    assert!(!lying.contains_key(&picked.id));

    let shard = start_on(config(), data.path());
    let mut alice = Player::join(shard.ws_addr, "alice").await;
    // The ground loads right after the room starts (joined may come first).
    alice
        .pump("the ground loaded", |p| p.ground.len() >= lying.len())
        .await;
    assert_eq!(alice.ground, lying, "same items, same places");
    assert!(!alice.ground.contains_key(&picked.id));
    alice.pump("the inventory", |p| p.inventory.is_some()).await;
    assert_eq!(alice.inventory.as_ref().map(gems), Some(1));
    // Ids are never reused: the next spawn gets a new one.
    let (next, _) = alice.fetch_nearest(2).await;
    alice
        .pump("a spawn after the pick-up", |p| {
            p.ground.len() >= MAX_ON_GROUND
        })
        .await;
    let newest = *alice.ground.keys().max().unwrap();
    assert!(newest > lying.keys().max().copied().unwrap().max(next.id));
    assert!(newest > picked.id);
}

/// A room document that is lost (here damaged, so it is read as none and
/// rebuilt) numbers its items from 1 again. Picking up an item whose id an
/// earlier, already credited pick-up had is credited too: its op id names
/// the new document's epoch, so the op ledger does not take it for a
/// replay.
#[tokio::test]
async fn a_rebuilt_room_document_never_replays_an_old_pickup() {
    let data = tempfile::tempdir().unwrap();
    let picked = {
        let shard = start_on(config(), data.path());
        let mut alice = Player::join(shard.ws_addr, "alice").await;
        let (picked, done) = alice.fetch_nearest(1).await;
        assert_eq!(gems(&done.inventory), 1);
        drop(alice);
        shard.shutdown();
        picked
    };
    {
        let store = EmbeddedStore::open(data.path()).unwrap();
        store
            .put_raw(
                server::store::model::ROOMS,
                mongodb::bson::doc! { "_id": MAP, "v": 2, "items": "damaged" },
            )
            .await
            .unwrap();
    }
    let shard = start_on(config(), data.path());
    let mut alice = Player::join(shard.ws_addr, "alice").await;
    alice
        .pump("the old id spawned again", |p| {
            p.ground.contains_key(&picked.id)
        })
        .await;
    let again = alice.ground[&picked.id].clone();
    alice.walk_to(again.x, again.y).await;
    let done = alice
        .pick_up(2, again.id)
        .await
        .unwrap_or_else(|e| panic!("picking up {again:?}: {e:?}"));
    assert_eq!(
        gems(&done.inventory),
        2,
        "the pick-up was taken for a replay of the old one"
    );
}

/// Run the real binary on `data` with the field map (a config file: maps
/// cannot come from the environment).
fn spawn_server(data: &std::path::Path) -> (ServerProcess, SocketAddr) {
    let mut config = config();
    config.store.embedded.dir = data.join("store");
    let path = data.join("tessera.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    ServerProcess::spawn(&[("TESSERA_CONFIG", path.as_os_str())])
}

/// SIGKILL right after `done`: the player has the item once, and it is not
/// on the ground. (The kill usually lands before the write-behind that
/// drops the pending entry: the restarted room re-drives the credit, which
/// the store recognises by its op id.)
#[tokio::test]
async fn sigkill_right_after_done_neither_loses_nor_duplicates_the_item() {
    let data = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_server(data.path());
    let mut alice = Player::join(addr, "alice").await;
    let (picked, done) = alice.fetch_nearest(1).await;
    assert_eq!(done.inventory.items.get("gem"), Some(&1));
    child.kill_hard();
    drop(alice);

    let (_child, addr) = spawn_server(data.path());
    let mut alice = Player::join(addr, "alice").await;
    alice.pump("the inventory", |p| p.inventory.is_some()).await;
    assert_eq!(alice.inventory.as_ref().map(gems), Some(1));
    alice
        .pump("the ground loaded", |p| !p.ground.is_empty())
        .await;
    assert!(!alice.ground.contains_key(&picked.id));

    // What the store holds, read beside the running server: once the
    // restarted room has settled its pick-ups, nothing is pending, the item
    // is not on the ground, and the player holds it exactly once.
    let store = EmbeddedStore::open_read_only(&data.path().join("store")).unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let room = store.load_room(MAP.into()).await.unwrap().unwrap();
        let profile = store.load_player("alice".into()).await.unwrap().unwrap();
        assert!(!room.items.iter().any(|i| i.id == picked.id));
        assert_eq!(profile.inventory.items.get("gem"), Some(&1));
        if room.pending.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pick-ups still pending: {:?}",
            room.pending
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_room_panic_keeps_its_ground_items() {
    let shard = start(config());
    let mut alice = Player::join(shard.ws_addr, "alice").await;
    let (picked, _) = alice.fetch_nearest(1).await;
    alice
        .pump("a full ground", |p| p.ground.len() >= MAX_ON_GROUND)
        .await;
    let before = alice.ground.clone();

    let url = format!("http://{}/admin/faults/room", shard.http_addr);
    let (status, body) = http_post(
        &url,
        Some(ADMIN),
        &format!(r#"{{"map":"{MAP}","kind":"panic"}}"#),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"crashed":true}"#));
    // The full resync, then the restart notice.
    loop {
        match alice.client.next_event(PATIENCE).await {
            Some(Event::Msg(ServerMsg::Notice(n)))
                if n.notice_code() == Some(NoticeCode::RoomRestarted) =>
            {
                break
            }
            Some(Event::Msg(msg)) => alice.apply(msg),
            Some(Event::Closed(code)) => panic!("closed ({code:?}) before the restart notice"),
            None => panic!("no restart notice"),
        }
    }

    // A newcomer sees the same ground, straight from the restored room.
    let bob = Player::join(shard.ws_addr, "bob").await;
    assert_eq!(bob.ground, before);
    assert!(!bob.ground.contains_key(&picked.id));
    // And the restored room still does pick-ups.
    let (second, done) = alice.fetch_nearest(2).await;
    assert!(before.contains_key(&second.id));
    assert_eq!(done.inventory.items.get("gem"), Some(&2));
}

/// A MongoDB outage during a pick-up: the item comes back to the ground,
/// the picker gets 5003 and nothing changed; once the store is back the
/// same item can be picked up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pick_up_during_a_mongodb_outage_changes_nothing() {
    let mut mongo = tokio::task::spawn_blocking(store_support::Secantus::start)
        .await
        .unwrap();
    let mut config = config();
    common::use_mongo(&mut config, mongo.uri(), "items");
    let shard = start(config);

    // The persister connects in the background: log in until the profile
    // (and so durable actions) is there.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut alice = loop {
        let mut alice = Player::join(shard.ws_addr, "alice").await;
        let loaded = tokio::time::timeout(
            Duration::from_secs(1),
            alice.pump("the inventory", |p| p.inventory.is_some()),
        )
        .await;
        if loaded.is_ok() {
            break alice;
        }
        assert!(
            Instant::now() < deadline,
            "the store never answered a login"
        );
    };
    let (_, done) = alice.fetch_nearest(1).await;
    assert_eq!(done.inventory.items.get("gem"), Some(&1));
    alice
        .pump("a full ground", |p| p.ground.len() >= MAX_ON_GROUND)
        .await;
    let item = alice
        .ground
        .values()
        .min_by(|a, b| alice.distance_to(a).total_cmp(&alice.distance_to(b)))
        .cloned()
        .unwrap();
    alice.walk_to(item.x, item.y).await;

    tokio::task::block_in_place(|| mongo.stop());
    let refused = alice.pick_up(2, item.id).await.unwrap_err();
    assert_eq!(
        refused.error_code(),
        Some(ErrorCode::StoreUnavailable),
        "{refused:?}"
    );
    // Everyone saw it go and come back; it lies where it lay.
    alice
        .pump("the item back", |p| p.ground.contains_key(&item.id))
        .await;
    assert!(alice.removed.contains(&item.id));
    assert_eq!(alice.ground[&item.id], item);
    assert_eq!(alice.inventory.as_ref().map(gems), Some(1));

    tokio::task::block_in_place(|| mongo.restart());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut req = 3;
    let done = loop {
        match alice.pick_up(req, item.id).await {
            Ok(done) => break done,
            Err(e) => {
                assert_eq!(e.error_code(), Some(ErrorCode::StoreUnavailable), "{e:?}");
                assert!(Instant::now() < deadline, "the store never came back");
                alice
                    .pump("the item back", |p| p.ground.contains_key(&item.id))
                    .await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                req += 1;
            }
        }
    };
    assert_eq!(done.inventory.items.get("gem"), Some(&2));
    drop(alice);
    drop(shard);
    drop(mongo);
}
