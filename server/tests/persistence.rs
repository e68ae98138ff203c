//! Persistence end to end: the durable `give`, returning players, a SIGKILL
//! right after an acknowledged write, on the embedded store. (The store
//! layer's own conformance suite, against both backends, is
//! `store_conformance.rs`; the MongoDB outage with players is
//! `persistence_mongo.rs`.)

mod common;

use std::time::Duration;

use common::{start, start_on, test_config, Client, ServerProcess, View};
use protocol::msg::*;
use protocol::{ErrorCode, ServerMsg};

const SECRET: &str = "persistence-test-secret-0123";

fn token(player: &str) -> String {
    common::token(SECRET, player)
}

fn config() -> server::Config {
    let mut config = test_config();
    config.auth.secret = SECRET.into();
    config
}

/// Log in with a stable identity, take the starter purse, join `map`.
async fn player(addr: std::net::SocketAddr, name: &str, map: &str) -> (Client, Welcome, Joined) {
    let mut client = Client::connect(addr).await;
    let welcome = client.hello_with(Some(token(name)), name).await;
    client.expect_currency(100).await;
    let joined = client.join(map).await;
    (client, welcome, joined)
}

#[tokio::test]
async fn give_is_done_only_when_stored_both_sides_or_neither() {
    let shard = start(config());
    let (mut alice, _, _) = player(shard.ws_addr, "alice", "test").await;
    let (mut bob, _, b) = player(shard.ws_addr, "bob", "test").await;

    alice.give(1, b.you, 30).await;
    let done = alice.expect_done(1).await;
    assert_eq!(done.inventory.currency, 70);
    bob.expect_currency(130).await;

    // More than she has: refused, nothing changed on either side.
    alice.give(2, b.you, 1_000).await;
    alice.expect_error(ErrorCode::Insufficient).await;
    // Nobody there, herself, nothing, negative: refused.
    alice.give(3, 9_999, 1).await;
    alice.expect_error(ErrorCode::NoSuchTarget).await;
    alice.give(4, b.you, 0).await;
    alice.expect_error(ErrorCode::InvalidInput).await;
    alice.give(5, b.you, -5).await;
    alice.expect_error(ErrorCode::InvalidInput).await;

    // A retry of req 1 is answered but not applied again.
    alice.give(1, b.you, 30).await;
    assert_eq!(alice.expect_done(1).await.inventory.currency, 70);
    alice.give(6, b.you, 70).await;
    assert_eq!(alice.expect_done(6).await.inventory.currency, 0);
    bob.expect_currency(200).await;
}

#[tokio::test]
async fn a_returning_player_gets_back_its_map_position_and_inventory() {
    let data = tempfile::tempdir().unwrap();
    let (spot, you) = {
        let shard = start_on(config(), data.path());
        let (mut alice, _, a) = player(shard.ws_addr, "alice", "test").await;
        let (_bob, _, b) = player(shard.ws_addr, "bob", "test").await;
        alice.give(1, b.you, 10).await;
        alice.expect_done(1).await;
        // Walk a bit, stop, and note where she stands.
        let mut view = View::from_joined(&a);
        alice.walk(1, 0.3, 0.2).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        alice.walk(2, 0.0, 0.0).await;
        while view.entities[&a.you].2 != 2 {
            let u = alice.expect("update", msg!(ServerMsg::Update)).await;
            view.apply(&u);
        }
        let (x, y, _) = view.entities[&a.you];
        drop(alice);
        // Graceful shutdown flushes everything dirty.
        shard.shutdown();
        ((x, y), a.you)
    };
    let shard = start_on(config(), data.path());
    let mut alice = Client::connect(shard.ws_addr).await;
    let welcome = alice.hello_with(Some(token("alice")), "alice").await;
    assert_eq!(welcome.last_map.as_deref(), Some("test"));
    let inventory = alice.expect("inventory", msg!(ServerMsg::Inventory)).await;
    assert_eq!(inventory.currency, 90, "the starter purse is granted once");
    let joined = alice.join("test").await;
    let me = joined.entities.iter().find(|e| e.id == joined.you).unwrap();
    assert_eq!(
        (me.x, me.y),
        spot,
        "back where she stood (entity {you} before)"
    );
}

fn spawn_server(data: &std::path::Path) -> (ServerProcess, std::net::SocketAddr) {
    ServerProcess::spawn(&[
        ("TESSERA_STORE__EMBEDDED__DIR", data.as_os_str()),
        ("TESSERA_AUTH__SECRET", SECRET.as_ref()),
    ])
}

/// SIGKILL right after a durable ack: the acknowledged change survives, and
/// the position is at most about one flush interval (1 s) old.
#[tokio::test]
async fn sigkill_right_after_a_durable_ack_keeps_it_and_recent_positions() {
    let data = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_server(data.path());
    let (mut alice, _, a) = player(addr, "alice", "lobby").await;
    let (_bob, _, b) = player(addr, "bob", "lobby").await;
    // Walk right at a quarter of the lobby's 200 units/s.
    alice.walk(1, 0.25, 0.0).await;
    let mut view = View::from_joined(&a);
    let walk_until = std::time::Instant::now() + Duration::from_millis(2_500);
    while std::time::Instant::now() < walk_until {
        if let Some(common::Event::Msg(ServerMsg::Update(u))) =
            alice.next_event(Duration::from_millis(100)).await
        {
            view.apply(&u);
        }
    }
    alice.give(1, b.you, 42).await;
    alice.expect_done(1).await;
    let last_x = view.entities[&a.you].0;
    child.kill_hard();

    let (_child, addr) = spawn_server(data.path());
    let mut alice = Client::connect(addr).await;
    let welcome = alice.hello_with(Some(token("alice")), "alice").await;
    assert_eq!(welcome.last_map.as_deref(), Some("lobby"));
    alice.expect_currency(58).await;
    let joined = alice.join("lobby").await;
    let x = joined
        .entities
        .iter()
        .find(|e| e.id == joined.you)
        .unwrap()
        .x;
    // 50 units/s; one flush interval plus the save cadence (half a flush
    // interval): at most 1.5 s behind.
    assert!(
        x <= last_x + 0.01 && x >= last_x - 75.0,
        "saved x {x}, last seen {last_x}"
    );
}

/// Log in again (the starter purse was granted before): expect the stored
/// `currency`, join `map`.
async fn back(
    addr: std::net::SocketAddr,
    name: &str,
    currency: i64,
    map: &str,
) -> (Client, Joined) {
    let mut client = Client::connect(addr).await;
    client.hello_with(Some(token(name)), name).await;
    client.expect_currency(currency).await;
    let joined = client.join(map).await;
    (client, joined)
}

/// Op ids are unique across restarts: the trade ledger outlives the
/// process, the session numbers do not. A give acknowledged before a
/// restart, then a give with the same req and amount by a new login after
/// it: both applied (the second is not mistaken for a replay of the first).
#[tokio::test]
async fn a_give_after_a_restart_reusing_a_req_is_applied() {
    let data = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_server(data.path());
    let (mut alice, _, _) = player(addr, "alice", "lobby").await;
    let (mut bob, _, b) = player(addr, "bob", "lobby").await;
    alice.give(1, b.you, 1).await;
    assert_eq!(alice.expect_done(1).await.inventory.currency, 99);
    bob.expect_currency(101).await;
    drop((alice, bob));
    child.kill_hard();

    let (child, addr) = spawn_server(data.path());
    let (mut alice, _) = back(addr, "alice", 99, "lobby").await;
    let (mut bob, b) = back(addr, "bob", 101, "lobby").await;
    alice.give(1, b.you, 1).await;
    assert_eq!(
        alice.expect_done(1).await.inventory.currency,
        98,
        "the acknowledged give was taken for a replay"
    );
    bob.expect_currency(102).await;
    // A third process sees both gives.
    drop((alice, bob));
    child.kill_hard();
    let (_child, addr) = spawn_server(data.path());
    back(addr, "bob", 102, "lobby").await;
}

/// A session resumed from another keeps its op scope: a give retried with
/// the same req after a reconnect (here across a restart, e.g. after an
/// in-doubt answer) is answered `done` and not applied twice, while new
/// reqs are applied.
#[tokio::test]
async fn a_give_retried_in_a_resumed_session_is_not_applied_twice() {
    let data = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_server(data.path());
    let (mut alice, welcome, _) = player(addr, "alice", "lobby").await;
    let (mut bob, _, b) = player(addr, "bob", "lobby").await;
    alice.give(7, b.you, 5).await;
    assert_eq!(alice.expect_done(7).await.inventory.currency, 95);
    bob.expect_currency(105).await;

    // A resume in the same process.
    drop(alice);
    let mut alice = Client::connect(addr).await;
    alice.send_resume(welcome.resume_token.clone()).await;
    let resumed = alice.expect("welcome", msg!(ServerMsg::Welcome)).await;
    assert_ne!(resumed.session_id, welcome.session_id);
    alice.expect_currency(95).await;
    alice.join("lobby").await;
    alice.give(7, b.you, 5).await;
    assert_eq!(
        alice.expect_done(7).await.inventory.currency,
        95,
        "a retried req was applied twice after a resume"
    );
    drop((alice, bob));
    child.kill_hard();

    // And across a restart: the resumed session's token still names the
    // first session's scope.
    let (_child, addr) = spawn_server(data.path());
    let mut alice = Client::connect(addr).await;
    alice.send_resume(resumed.resume_token.clone()).await;
    alice.expect("welcome", msg!(ServerMsg::Welcome)).await;
    alice.expect_currency(95).await;
    alice.join("lobby").await;
    let (mut bob, b) = back(addr, "bob", 105, "lobby").await;
    alice.give(7, b.you, 5).await;
    assert_eq!(alice.expect_done(7).await.inventory.currency, 95);
    alice.give(8, b.you, 5).await;
    assert_eq!(alice.expect_done(8).await.inventory.currency, 90);
    bob.expect_currency(110).await;
}

/// A clean start logs "store ready", not "store is answering again" (that
/// line means the store was failing and came back).
#[tokio::test]
async fn a_clean_start_does_not_log_a_store_recovery() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera-server"))
        .args(["--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env("TESSERA_STORE__EMBEDDED__DIR", data.path())
        .env("TESSERA_AUTH__SECRET", SECRET)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the server binary starts");
    let stdout = child.stdout.take().unwrap();
    let first = BufReader::new(stdout).lines().next().unwrap().unwrap();
    let addr: std::net::SocketAddr = first
        .strip_prefix("ws listening on ")
        .expect("the first line is the ws address")
        .parse()
        .unwrap();
    // Something that needs the store: a login with a profile and a purse.
    let (_alice, _, _) = player(addr, "alice", "lobby").await;
    child.kill().unwrap();
    child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("store ready"), "no \"store ready\" in:\n{log}");
    assert!(
        !log.contains("store is answering again"),
        "a clean start logged a recovery:\n{log}"
    );
}
