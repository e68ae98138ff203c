//! Let it crash: room restarts from snapshots, restart intensity and the
//! fallback map, the stall watchdog, session crashes, and resuming a seat.
//! Faults are injected through the admin API, as an operator's drill would.

mod common;

use std::time::{Duration, Instant};

use common::{http_get, http_post, own_move, start, test_config, Client, Event, View};
use protocol::msg::*;
use protocol::{ClientMsg, CloseCode, ErrorCode, NoticeCode, ServerMsg};
use server::auth::{mint_with_key, unix_now, Claims};
use server::config::MapConfig;

const ADMIN: &str = "supervision-test-admin-token";
const SECRET: &str = "supervision-test-secret-0123";

fn fault_config() -> server::Config {
    let mut config = test_config();
    config.admin.token = ADMIN.into();
    config.admin.fault_injection = true;
    config.auth.secret = SECRET.into();
    config.maps.push(MapConfig {
        name: "third".into(),
        spawn_radius: 0.0,
        ..MapConfig::default()
    });
    config
}

async fn fault(shard: &server::ShardHandle, path: &str, body: &str) -> (u16, String) {
    let url = format!("http://{}/admin/faults/{path}", shard.http_addr);
    http_post(&url, Some(ADMIN), body).await
}

async fn panic_room(shard: &server::ShardHandle, map: &str) {
    let (status, body) = fault(
        shard,
        "room",
        &format!(r#"{{"map":"{map}","kind":"panic"}}"#),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, r#"{"crashed":true}"#));
}

/// Wait for a full update and then the restart notice; returns the update.
async fn expect_resync(client: &mut Client) -> Update {
    let full = client
        .expect("full resync", msg!(ServerMsg::Update(u) if u.full))
        .await;
    client.expect_notice(NoticeCode::RoomRestarted).await;
    full
}

/// Walk `client` in direction `dx` for `ms`, then stop, and return its view
/// once its stop was applied.
async fn walk_and_stop(client: &mut Client, joined: &Joined, seq: u32, dx: f32, ms: u64) -> View {
    let mut view = View::from_joined(joined);
    client.walk(seq, dx, 0.0).await;
    tokio::time::sleep(Duration::from_millis(ms)).await;
    client.walk(seq + 1, 0.0, 0.0).await;
    loop {
        let update = client.expect("update", msg!(ServerMsg::Update)).await;
        view.apply(&update);
        if view.entities[&joined.you].2 == seq + 1 {
            return view;
        }
    }
}

#[tokio::test]
async fn a_panicking_room_restarts_from_its_snapshot_and_keeps_its_players() {
    let shard = start(fault_config());
    let (mut alice, a) = Client::joined(shard.ws_addr, "alice", "test").await;
    let (mut bob, b) = Client::joined(shard.ws_addr, "bob", "test").await;
    // Alice takes a few steps and stops, so the positions are settled.
    let before = walk_and_stop(&mut alice, &a, 1, 1.0, 60).await;
    let (ax, _, aseq) = before.entities[&a.you];
    assert!(ax > 500.0);
    bob.drain(Duration::from_millis(150)).await;

    panic_room(&shard, "test").await;
    for (client, name) in [(&mut alice, "alice"), (&mut bob, "bob")] {
        let full = expect_resync(client).await;
        let restored: Vec<_> = full
            .entered
            .iter()
            .map(|e| (e.id, e.x, e.y, e.seq))
            .collect();
        assert!(
            restored.contains(&(a.you, ax, 500.0, aseq)),
            "{name}: alice not where the snapshot had her: {restored:?}"
        );
        assert!(
            restored.iter().any(|e| e.0 == b.you),
            "{name}: {restored:?}"
        );
    }
    // Same seats, still playing: bob sees alice walk again.
    alice.walk(aseq + 1, -1.0, 0.0).await;
    bob.expect("alice moves after the restart", own_move(a.you, aseq + 1))
        .await;
    let metrics = common::metrics(&shard).await;
    assert!(
        metrics.contains("tessera_room_poison_messages_dropped_total"),
        "poison drop counted"
    );
}

#[tokio::test]
async fn a_room_past_its_restart_limit_fails_and_its_players_move_to_the_fallback() {
    let mut config = fault_config();
    config.supervision.max_restarts = 3;
    config.supervision.restart_window_ms = 5_000;
    let shard = start(config);
    let (mut alice, _) = Client::joined(shard.ws_addr, "alice", "test").await;
    let (mut bystander, by) = Client::joined(shard.ws_addr, "bystander", "third").await;

    for _ in 0..3 {
        panic_room(&shard, "test").await;
        expect_resync(&mut alice).await;
    }
    panic_room(&shard, "test").await;
    alice.expect_error(ErrorCode::RoomFailed).await;
    alice
        .expect(
            "left the failed map",
            msg!(ServerMsg::Left(l) if l.map == "test"),
        )
        .await;
    let fallback = alice
        .expect(
            "joined the fallback",
            msg!(ServerMsg::Joined(j) => j.map.name.clone()),
        )
        .await;
    assert_eq!(fallback, "other");

    // The room in another map never noticed.
    bystander.walk(1, 1.0, 0.0).await;
    let seen = bystander.drain(Duration::from_millis(300)).await;
    assert!(
        seen.iter()
            .all(|m| !matches!(m, ServerMsg::Notice(_) | ServerMsg::Error(_))),
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .any(|m| matches!(m, ServerMsg::Update(u) if u.moved.iter().any(|m| m.id == by.you))));

    // A failed room can be created again on demand.
    let (_carol, joined) = Client::joined(shard.ws_addr, "carol", "test").await;
    assert_eq!(joined.map.name, "test");
}

#[tokio::test]
async fn resuming_restores_the_seat_and_reused_forged_or_expired_tokens_are_refused() {
    let shard = start(fault_config());
    let (mut alice, welcome) = Client::welcomed(shard.ws_addr, "alice").await;
    let a = alice.join("test").await;
    let (mut bob, _) = Client::joined(shard.ws_addr, "bob", "test").await;
    let before = walk_and_stop(&mut alice, &a, 1, 1.0, 50).await;
    let (ax, ay, _) = before.entities[&a.you];

    // The connection drops (no close frame); bob keeps seeing alice stand.
    drop(alice);
    let seen = bob.drain(Duration::from_millis(300)).await;
    assert!(
        !seen
            .iter()
            .any(|m| matches!(m, ServerMsg::Update(u) if u.left.contains(&a.you))),
        "the seat is held: {seen:?}"
    );

    let mut again = Client::connect(shard.ws_addr).await;
    again.send_resume(welcome.resume_token.clone()).await;
    let back = again.expect("welcome", msg!(ServerMsg::Welcome)).await;
    assert_eq!(back.player_id, welcome.player_id);
    let joined = again.expect("joined", msg!(ServerMsg::Joined)).await;
    assert_eq!(joined.map.name, "test");
    assert_eq!(joined.you, a.you, "same entity");
    let me = joined.entities.iter().find(|e| e.id == a.you).unwrap();
    assert_eq!((me.x, me.y), (ax, ay), "same position");
    again.expect_notice(NoticeCode::SeatRestored).await;
    // The seat plays on.
    again.walk(10, 0.0, 1.0).await;
    bob.expect("alice moves again", own_move(a.you, 10)).await;

    let refused = |resume: String, code: ErrorCode| {
        let addr = shard.ws_addr;
        async move {
            let mut client = Client::connect(addr).await;
            client.send_resume(resume).await;
            client.expect_refusal(code, CloseCode::AuthFailed).await;
        }
    };
    // Reused: the first token was spent on the resume above.
    refused(welcome.resume_token.clone(), ErrorCode::ResumeRejected).await;
    // Forged: signed with another key.
    let claims = |exp| Claims {
        sub: welcome.player_id.clone(),
        name: "alice".into(),
        exp,
        sid: Some(back.session_id.clone()),
    };
    let forged = mint_with_key(b"not-the-server-secret", &claims(unix_now() + 60));
    refused(forged, ErrorCode::AuthInvalid).await;
    // Expired: the server's own key, but past its expiry.
    let expired = mint_with_key(SECRET.as_bytes(), &claims(unix_now() - 1));
    refused(expired, ErrorCode::AuthExpired).await;
}

#[tokio::test]
async fn a_session_panic_closes_only_that_connection_and_the_player_can_resume() {
    let shard = start(fault_config());
    let (mut alice, welcome) = Client::welcomed(shard.ws_addr, "alice").await;
    let a = alice.join("test").await;
    let (mut bob, _) = Client::joined(shard.ws_addr, "bob", "test").await;

    let body = format!(r#"{{"player":"{}","kind":"panic"}}"#, welcome.player_id);
    assert_eq!(fault(&shard, "session", &body).await.0, 200);
    assert_eq!(
        alice.expect_close().await,
        Some(CloseCode::InternalError.as_u16())
    );
    bob.send(ClientMsg::Ping(Ping { t: 1 })).await;
    bob.expect("pong", msg!(ServerMsg::Pong)).await;

    let mut again = Client::connect(shard.ws_addr).await;
    again.send_resume(welcome.resume_token).await;
    let joined = again.expect("joined", msg!(ServerMsg::Joined)).await;
    assert_eq!(joined.you, a.you);
}

#[tokio::test]
async fn a_stalled_room_is_moved_with_its_thread_mates_and_other_threads_never_notice() {
    let shard = start(fault_config());
    // Rooms go to the two room Arbiters in turn: test -> 0, other -> 1,
    // third -> 0. Stalling test's thread stalls third too.
    let (mut a, aj) = Client::joined(shard.ws_addr, "a", "test").await;
    let (mut b, bj) = Client::joined(shard.ws_addr, "b", "other").await;
    let (mut c, _) = Client::joined(shard.ws_addr, "c", "third").await;
    b.walk(1, 0.2, 0.0).await;
    b.drain(Duration::from_millis(200)).await;

    let (status, _) = fault(&shard, "room", r#"{"map":"test","kind":"stall","ms":2500}"#).await;
    assert_eq!(status, 200);
    let stalled = Instant::now();

    // b, on the other thread, keeps getting updates at tick rate meanwhile.
    let b_watch = tokio::spawn(async move {
        let mut last = Instant::now();
        let mut worst = Duration::ZERO;
        let end = Instant::now() + Duration::from_millis(2_000);
        while Instant::now() < end {
            match b.next_event(Duration::from_millis(500)).await {
                Some(Event::Msg(ServerMsg::Update(u))) => {
                    assert!(u.moved.iter().any(|m| m.id == bj.you));
                    worst = worst.max(last.elapsed());
                    last = Instant::now();
                }
                Some(Event::Msg(ServerMsg::Notice(n))) => panic!("b noticed: {n:?}"),
                Some(Event::Msg(_)) => {}
                other => panic!("b stopped hearing its room: {}", other.is_none()),
            }
        }
        worst
    });

    // The watchdog (1 s) restarts test and third on the healthy thread.
    expect_resync(&mut a).await;
    let detected = stalled.elapsed();
    expect_resync(&mut c).await;
    assert!(detected < Duration::from_millis(2_000), "took {detected:?}");

    let worst_gap = b_watch.await.unwrap();
    assert!(
        worst_gap < Duration::from_millis(400),
        "b's updates paused {worst_gap:?}"
    );

    // The moved room plays on, and the old incarnation, when it wakes, is
    // silent.
    a.walk(5, 1.0, 0.0).await;
    a.expect("own move after the move", own_move(aj.you, 5))
        .await;
    tokio::time::sleep(Duration::from_millis(2_600).saturating_sub(stalled.elapsed())).await;
    let after = a.drain(Duration::from_millis(300)).await;
    assert!(
        !after
            .iter()
            .any(|m| matches!(m, ServerMsg::Joined(_) | ServerMsg::Notice(_))),
        "{after:?}"
    );
    let metrics = common::metrics(&shard).await;
    assert!(
        metrics.contains("tessera_room_stalls_total{map=\"test\"}"),
        "stall counted"
    );
}

#[tokio::test]
async fn fault_injection_is_off_unless_configured() {
    let mut config = fault_config();
    config.admin.fault_injection = false;
    let shard = start(config);
    let (_alice, _) = Client::joined(shard.ws_addr, "alice", "test").await;
    let (status, body) = fault(&shard, "room", r#"{"map":"test","kind":"panic"}"#).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("fault_injection"), "{body}");
}

/// 1,000 panics at random across 50 rooms while 100 players move in them:
/// the shard survives, every player stays connected and in its seat, and
/// every restart is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_panics_across_fifty_rooms_lose_no_session() {
    const ROOMS: usize = 50;
    const PANICS: usize = 1_000;
    let mut config = fault_config();
    config.supervision.max_restarts = 1_000_000;
    config.maps = (0..ROOMS)
        .map(|i| MapConfig {
            name: format!("swarm{i}"),
            spawn_radius: 100.0,
            ..MapConfig::default()
        })
        .collect();
    config.supervision.fallback_map = "swarm0".into();
    let shard = start(config);

    let (storm_over_tx, storm_over) = tokio::sync::watch::channel(false);
    let mut players = Vec::new();
    for i in 0..ROOMS * 2 {
        let (client, joined) = Client::joined(
            shard.ws_addr,
            &format!("p{i}"),
            &format!("swarm{}", i % ROOMS),
        )
        .await;
        players.push(tokio::spawn(play(client, joined, storm_over.clone())));
    }
    // A small LCG: the same "random" rooms every run.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..PANICS {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let room = (seed >> 33) as usize % ROOMS;
        panic_room(&shard, &format!("swarm{room}")).await;
    }
    storm_over_tx.send(true).unwrap();
    let mut notices = 0;
    for player in players {
        notices += player
            .await
            .expect("every player finished its run connected");
    }
    // Each restart resyncs both players of its room.
    assert_eq!(notices, PANICS * 2);
    let metrics = common::metrics(&shard).await;
    let restarts: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("tessera_room_restarts_total{") && l.contains("map=\"swarm"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(restarts as usize, PANICS);
}

/// Move at 10 Hz and read everything until the storm is over, then prove
/// the seat still works; returns the restart notices seen.
async fn play(
    mut client: Client,
    joined: Joined,
    mut storm_over: tokio::sync::watch::Receiver<bool>,
) -> usize {
    let mut notices = 0;
    let mut seq = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut settle_until: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    // After the storm, keep reading a little for notices still in flight.
    while settle_until.is_none_or(|t| Instant::now() < t) {
        assert!(Instant::now() < deadline, "the swarm run never ended");
        tokio::select! {
            _ = storm_over.changed(), if settle_until.is_none() => {
                settle_until = Some(Instant::now() + Duration::from_millis(500));
            }
            _ = tick.tick() => {
                seq += 1;
                let dir = if seq % 20 < 10 { 1.0 } else { -1.0 };
                client.walk(seq, dir, 0.0).await;
            }
            event = client.next_event(Duration::from_millis(100)) => match event {
                Some(Event::Msg(ServerMsg::Notice(n))) => {
                    assert_eq!(n.code, NoticeCode::RoomRestarted.as_u16());
                    notices += 1;
                }
                Some(Event::Msg(ServerMsg::Error(e))) => panic!("error during the swarm: {e:?}"),
                Some(Event::Msg(_)) | None => {}
                Some(Event::Closed(code)) => panic!("session lost: {code:?}"),
            },
        }
    }
    client.send(ClientMsg::Ping(Ping { t: 7 })).await;
    client
        .expect("pong after the storm", msg!(ServerMsg::Pong))
        .await;
    seq += 1;
    client.walk(seq, 0.0, 1.0).await;
    client
        .expect("own move after the storm", own_move(joined.you, seq))
        .await;
    notices
}

// ---- Long-lived tasks under the task supervisor ----

async fn panic_task(shard: &server::ShardHandle, name: &str) {
    let (status, body) = fault(shard, &format!("task?name={name}"), "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!(r#""task":"{name}""#)), "{body}");
}

async fn health(shard: &server::ShardHandle) -> serde_json::Value {
    let body = http_get(&format!("http://{}/healthz", shard.http_addr)).await;
    serde_json::from_str(&body).expect("healthz is JSON")
}

/// Poll `/metrics` until `line` is in it (the recorder is shared by every
/// shard of this test binary: each task fault below targets a different
/// task).
async fn until_metric(shard: &server::ShardHandle, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = common::metrics(shard).await;
        if metrics.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no {line:?} in:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Poll `/healthz` until task `name` is up again.
async fn until_task_up(shard: &server::ShardHandle, name: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = health(shard).await;
        if doc["tasks"][name] == "up" {
            return doc;
        }
        assert!(Instant::now() < deadline, "{name} not up: {doc}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Alice's saved position, read through a separate handle on the store.
async fn saved_position(store: &dyn server::store::Store) -> Option<(f32, f32)> {
    let profile = store.load_player("alice".into()).await.expect("readable");
    profile.map(|p| (p.state.x, p.state.y))
}

async fn player(shard: &server::ShardHandle, name: &str) -> (Client, Joined) {
    let mut client = Client::connect(shard.ws_addr).await;
    client
        .hello_with(Some(common::token(SECRET, name)), name)
        .await;
    let joined = client.join("test").await;
    (client, joined)
}

#[tokio::test]
async fn a_panicking_persister_flusher_is_restarted_and_keeps_storing() {
    use server::store::embedded::EmbeddedStore;
    let data = tempfile::tempdir().unwrap();
    let mut config = fault_config();
    config.store.flush_interval_ms = 100;
    let shard = common::start_on(config, data.path());
    let (mut alice, a) = player(&shard, "alice").await;
    let (mut bob, _) = player(&shard, "bob").await;
    let before = walk_and_stop(&mut alice, &a, 1, 1.0, 50).await;

    panic_task(&shard, "persister").await;
    until_metric(
        &shard,
        r#"tessera_child_restarts_total{child="persister"} 1"#,
    )
    .await;
    let doc = until_task_up(&shard, "persister").await;
    assert_eq!(doc["status"], "ok", "{doc}");
    let (_, _, seq) = before.entities[&a.you];

    // A change made after the restart reaches the store through the
    // restarted flusher, while the shard runs (a read-only handle sees
    // every commit).
    let after = walk_and_stop(&mut alice, &a, seq + 1, -0.5, 80).await;
    let (x, y, _) = after.entities[&a.you];
    assert_ne!(x, before.entities[&a.you].0, "alice moved");
    let reader = EmbeddedStore::open_read_only(data.path()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while saved_position(&reader).await != Some((x, y)) {
        assert!(
            Instant::now() < deadline,
            "position never flushed: {:?}, want {:?}",
            saved_position(&reader).await,
            (x, y)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The game went on meanwhile: bob saw alice stop where she is saved.
    bob.expect("alice's stop after the restart", |m| match m {
        ServerMsg::Update(u) => u
            .moved
            .iter()
            .find(|m| m.id == a.you && m.seq == seq + 2)
            .map(|m| assert_eq!((m.x, m.y), (x, y))),
        _ => None,
    })
    .await;
    drop(reader);

    drop((alice, bob));
    shard.shutdown();
    let store = EmbeddedStore::open(data.path()).unwrap();
    assert_eq!(saved_position(&store).await, Some((x, y)));
}

#[tokio::test]
async fn a_panicking_gateway_keeps_its_connections_and_its_port() {
    let shard = start(fault_config());
    let (mut alice, a) = Client::joined(shard.ws_addr, "alice", "test").await;

    panic_task(&shard, "gateway").await;
    until_metric(&shard, r#"tessera_child_restarts_total{child="gateway"} 1"#).await;
    until_task_up(&shard, "gateway").await;

    // Alice's connection never noticed.
    alice.send(ClientMsg::Ping(Ping { t: 7 })).await;
    alice
        .expect("pong", msg!(ServerMsg::Pong(p) if p.t == 7))
        .await;
    // A newcomer gets in on the same port, and meets her.
    let (_bob, b) = Client::joined(shard.ws_addr, "bob", "test").await;
    assert!(b.entities.iter().any(|e| e.id == a.you), "{:?}", b.entities);
    let panics = common::metrics(&shard).await;
    assert!(
        panics.contains(r#"tessera_child_panics_total{child="gateway"}"#),
        "panic counted"
    );
}

#[tokio::test]
async fn a_panicking_http_server_answers_again_on_its_port() {
    let shard = start(fault_config());
    panic_task(&shard, "http").await;
    until_metric(&shard, r#"tessera_child_restarts_total{child="http"} 1"#).await;
    let doc = until_task_up(&shard, "http").await;
    assert_eq!(doc["status"], "ok", "{doc}");
}

#[tokio::test]
async fn healthz_lists_the_tasks_and_task_faults_need_a_known_name() {
    let shard = start(fault_config());
    let doc = health(&shard).await;
    assert_eq!(doc["status"], "ok", "{doc}");
    assert_eq!(doc["sessions"], 0, "{doc}");
    assert_eq!(doc["rooms"], 0, "{doc}");
    for task in ["gateway", "http", "persister", "sampler", "watchdog"] {
        assert_eq!(doc["tasks"][task], "up", "{task}: {doc}");
    }
    let (status, body) = fault(&shard, "task?name=directory", "").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("directory") && body.contains("gateway, http, persister"),
        "{body}"
    );
    let (status, body) = fault(&shard, "task", "").await;
    assert_eq!(status, 400, "{body}");
    let url = format!("http://{}/admin/faults/task?name=gateway", shard.http_addr);
    let (status, _) = http_post(&url, Some("not-the-admin-token-at-all"), "").await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn task_faults_are_forbidden_unless_fault_injection_is_on() {
    let mut config = fault_config();
    config.admin.fault_injection = false;
    let shard = start(config);
    let (status, body) = fault(&shard, "task?name=gateway", "").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("fault_injection"), "{body}");
    assert_eq!(health(&shard).await["tasks"]["gateway"], "up");
}

#[tokio::test]
async fn a_task_given_up_turns_healthz_degraded() {
    let mut config = fault_config();
    // No restart allowed: the first panic gives the sampler up.
    config.supervision.child_max_restarts = 0;
    let shard = start(config);
    panic_task(&shard, "sampler").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let doc = health(&shard).await;
        if doc["tasks"]["sampler"] == "failed" {
            assert_eq!(doc["status"], "degraded", "{doc}");
            assert_eq!(doc["tasks"]["gateway"], "up", "{doc}");
            break;
        }
        assert!(Instant::now() < deadline, "sampler never given up: {doc}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_metric(&shard, r#"tessera_child_failures_total{child="sampler"} 1"#).await;
    // The shard still serves players.
    let (_alice, joined) = Client::joined(shard.ws_addr, "alice", "test").await;
    assert_eq!(joined.entities.len(), 1);
}

// ---- Stalls on every room thread at once ----

/// The value of the metric line that starts with `series` (name and
/// labels), if there is one.
async fn metric(shard: &server::ShardHandle, series: &str) -> Option<f64> {
    let metrics = common::metrics(shard).await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Read until `pick` accepts a message; any error frame or close fails.
async fn expect_clean<T>(
    client: &mut Client,
    what: &str,
    mut pick: impl FnMut(&ServerMsg) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_event(left).await {
            Some(Event::Msg(ServerMsg::Error(e))) => {
                panic!("error while waiting for {what}: {e:?}")
            }
            Some(Event::Msg(msg)) => {
                if let Some(found) = pick(&msg) {
                    return found;
                }
            }
            Some(Event::Closed(code)) => panic!("closed ({code:?}) while waiting for {what}"),
            None => panic!("timed out waiting for {what}"),
        }
    }
}

/// A restart notice, then the player's own move `seq` applied: its room
/// runs again and still has its seat.
async fn moved_again(client: &mut Client, me: u32, seq: u32, what: &str) {
    expect_clean(
        client,
        &format!("{what}: restart notice"),
        msg!(ServerMsg::Notice(n) if n.code == NoticeCode::RoomRestarted.as_u16()),
    )
    .await;
    client.walk(seq, 0.5, 0.0).await;
    expect_clean(
        client,
        &format!("{what}: own move {seq}"),
        own_move(me, seq),
    )
    .await;
}

/// Issue 8, item 5: one room stalled on each of the two room threads at
/// once blocks every room thread. The watchdog must not bounce rooms
/// between blocked threads until their restart limit fails them: it starts
/// an extra Arbiter, every room (the fallback map's included) moves there
/// and ticks on while both threads sleep, nobody gets an error, and when
/// the threads wake the extra Arbiter is retired and the rooms go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_on_every_room_thread_fails_no_room_and_the_fallback_keeps_ticking() {
    // Long, so that "while both threads sleep" leaves the watchdog (1 s)
    // ample room on a busy machine.
    const STALL_MS: u64 = 12_000;
    let mut config = fault_config();
    config.maps = (0..6)
        .map(|i| MapConfig {
            name: format!("cascade{i}"),
            spawn_radius: 0.0,
            ..MapConfig::default()
        })
        .collect();
    config.supervision.fallback_map = "cascade5".into();
    assert_eq!(config.supervision.max_extra_arbiters, 2, "the default");
    let shard = start(config);
    // Rooms start on the two room threads in turn: cascade0, 2 and 4 on
    // one, cascade1, 3 and 5 (the fallback) on the other.
    let mut players = Vec::new();
    for i in 0..6 {
        let (client, joined) =
            Client::joined(shard.ws_addr, &format!("c{i}"), &format!("cascade{i}")).await;
        players.push((client, joined.you));
    }
    let stall = format!(r#"{{"map":"cascade0","kind":"stall","ms":{STALL_MS}}}"#);
    assert_eq!(fault(&shard, "room", &stall).await.0, 200);
    let stalled = Instant::now();
    let stall = stall.replace("cascade0", "cascade1");
    assert_eq!(fault(&shard, "room", &stall).await.0, 200);

    // Every room is restarted once (the two stalled ones, and their thread
    // mates moved off the blocked threads) and plays on.
    let runs: Vec<_> = players
        .into_iter()
        .enumerate()
        .map(|(i, (mut client, me))| {
            tokio::spawn(async move {
                moved_again(&mut client, me, 1, &format!("cascade{i} during the stall")).await;
                (client, me)
            })
        })
        .collect();
    let mut players = Vec::new();
    for run in runs {
        players.push(run.await.expect("every room plays on during the stall"));
    }
    // A newcomer gets into the fallback map meanwhile.
    let (mut newcomer, nj) = Client::joined(shard.ws_addr, "newcomer", "cascade5").await;
    assert_eq!(nj.map.name, "cascade5");
    newcomer.walk(1, 0.0, 0.5).await;
    expect_clean(&mut newcomer, "newcomer's move", own_move(nj.you, 1)).await;
    // All of that happened while both room threads still slept: on an
    // extra Arbiter (a generous bound, not a performance figure).
    assert!(
        stalled.elapsed() < Duration::from_millis(STALL_MS),
        "the rooms only came back after the stall ({:?}); nothing ran meanwhile",
        stalled.elapsed()
    );
    assert!(metric(&shard, "tessera_room_arbiters_started_total").await >= Some(1.0));

    // The threads wake: the extra Arbiter is retired and the rooms are
    // handed back, each a restart notice and a full resync, no error. One
    // handover panics (behind the room's boundary): that room is restarted
    // on a woken thread all the same.
    arm_room(&shard, "handover", "cascade2").await;
    let deadline = Instant::now() + Duration::from_millis(STALL_MS) + Duration::from_secs(20);
    while metric(&shard, "tessera_room_arbiters_retired_total").await < Some(1.0) {
        assert!(
            Instant::now() < deadline,
            "the extra Arbiter was never retired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, (client, me)) in players.iter_mut().enumerate() {
        moved_again(client, *me, 2, &format!("cascade{i} after the handover")).await;
    }
    for i in 0..6 {
        assert_eq!(
            metric(
                &shard,
                &format!("tessera_room_failures_total{{map=\"cascade{i}\"}}")
            )
            .await,
            None,
            "cascade{i} failed"
        );
    }
    let series = r#"tessera_room_poison_messages_dropped_total{map="cascade2",message="handover"}"#;
    assert_eq!(metric(&shard, series).await, Some(1.0), "{series}");
    // Only the two stalled rooms are blamed (counted towards their
    // restart limit); their thread mates were displaced.
    for (map, reason) in [
        ("cascade0", "stall"),
        ("cascade1", "stall"),
        ("cascade5", "displaced"),
    ] {
        let series = format!("tessera_room_restarts_total{{map=\"{map}\",reason=\"{reason}\"}}");
        assert_eq!(metric(&shard, &series).await, Some(1.0), "{series}");
    }
}

// ---- One panic boundary around every handler and continuation ----

/// Arm a panic at `at` in `player`'s session (`None`: the next session to
/// get there).
async fn arm_session(shard: &server::ShardHandle, at: &str, player: Option<&str>) {
    let body = match player {
        Some(p) => format!(r#"{{"player":"{p}","kind":"panic","at":"{at}"}}"#),
        None => format!(r#"{{"kind":"panic","at":"{at}"}}"#),
    };
    let (status, body) = fault(shard, "session", &body).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!(r#""armed":"{at}""#)), "{body}");
}

/// Arm a panic at `at` in `map`'s room.
async fn arm_room(shard: &server::ShardHandle, at: &str, map: &str) {
    let body = format!(r#"{{"map":"{map}","kind":"panic","at":"{at}"}}"#);
    let (status, body) = fault(shard, "room", &body).await;
    assert_eq!(status, 200, "{body}");
}

/// The connection ends with 1011, and the panic was caught at `at`.
async fn crashed_at(shard: &server::ShardHandle, client: &mut Client, at: &str) {
    assert_eq!(
        client.expect_close().await,
        Some(CloseCode::InternalError.as_u16()),
        "{at}"
    );
    let series = format!("tessera_session_panics_total{{at=\"{at}\"}}");
    assert!(metric(shard, &series).await >= Some(1.0), "{series}");
}

/// Resume with `token`: back in `map` on the same entity.
async fn resumes_seat(shard: &server::ShardHandle, token: String, map: &str, entity: u32) {
    let mut again = Client::connect(shard.ws_addr).await;
    again.send_resume(token).await;
    let joined = again
        .expect("joined after the resume", msg!(ServerMsg::Joined))
        .await;
    assert_eq!((joined.map.name.as_str(), joined.you), (map, entity));
}

/// The bystander's session and room are untouched.
async fn still_fine(bob: &mut Client, t: u64) {
    bob.send(ClientMsg::Ping(Ping { t })).await;
    expect_clean(
        bob,
        "bystander's pong",
        msg!(ServerMsg::Pong(p) if p.t == t),
    )
    .await;
}

/// Issue 8, item 6: a panic in any session handler, continuation or timer
/// closes that connection only (1011), and the seat is kept for a resume.
#[tokio::test]
async fn a_panic_in_any_session_handler_or_continuation_closes_only_that_connection() {
    let mut config = fault_config();
    config.server.handshake_timeout_ms = 1_000;
    // One panic fails a room: the room_event case needs a failed room.
    config.supervision.max_restarts = 0;
    let shard = start(config);
    let (mut bob, _) = Client::joined(shard.ws_addr, "bob", "test").await;

    // handshake_timeout: only a session still waiting for its hello gets
    // there (bob, welcomed, never does, however late his timer fires).
    arm_session(&shard, "handshake_timeout", None).await;
    let mut silent = Client::connect(shard.ws_addr).await;
    crashed_at(&shard, &mut silent, "handshake_timeout").await;
    still_fine(&mut bob, 1).await;

    // frame: a client frame.
    let (mut alice, aw) = Client::welcomed(shard.ws_addr, "alice").await;
    let aj = alice.join("test").await;
    arm_session(&shard, "frame", Some(&aw.player_id)).await;
    alice.send(ClientMsg::Ping(Ping { t: 1 })).await;
    crashed_at(&shard, &mut alice, "frame").await;
    resumes_seat(&shard, aw.resume_token, "test", aj.you).await;
    still_fine(&mut bob, 2).await;

    // welcome: the profile load that follows hello.
    arm_session(&shard, "welcome", None).await;
    let mut carol = Client::connect(shard.ws_addr).await;
    carol
        .send(ClientMsg::Hello(Hello {
            version: protocol::PROTOCOL_VERSION,
            token: None,
            resume: None,
            name: Some("carol".into()),
        }))
        .await;
    crashed_at(&shard, &mut carol, "welcome").await;
    let (_carol, _) = Client::welcomed(shard.ws_addr, "carol").await;
    still_fine(&mut bob, 3).await;

    // starter: the starter purse granted at a first login.
    // (For dave alone: other sessions' purses may still be on their way.)
    arm_session(&shard, "starter", Some("dave")).await;
    let mut dave = Client::connect(shard.ws_addr).await;
    dave.hello_with(Some(common::token(SECRET, "dave")), "dave")
        .await;
    crashed_at(&shard, &mut dave, "starter").await;
    still_fine(&mut bob, 4).await;

    // join_reply: the room's answer to a join.
    let (mut erin, ew) = Client::welcomed(shard.ws_addr, "erin").await;
    arm_session(&shard, "join_reply", Some(&ew.player_id)).await;
    erin.send(ClientMsg::Join(Join { map: "test".into() }))
        .await;
    let ej = erin
        .expect("joined before the crash", msg!(ServerMsg::Joined))
        .await;
    crashed_at(&shard, &mut erin, "join_reply").await;
    resumes_seat(&shard, ew.resume_token, "test", ej.you).await;
    still_fine(&mut bob, 5).await;

    // give_reply and inventory: a give's answer to the giver, and the
    // receiver's inventory notice.
    let (mut frank, fw) = Client::welcomed(shard.ws_addr, "frank").await;
    frank.expect_currency(100).await;
    let fj = frank.join("test").await;
    let (mut gina, gw) = Client::welcomed(shard.ws_addr, "gina").await;
    gina.expect_currency(100).await;
    let gj = gina.join("test").await;
    arm_session(&shard, "give_reply", Some(&fw.player_id)).await;
    frank.give(1, gj.you, 10).await;
    crashed_at(&shard, &mut frank, "give_reply").await;
    resumes_seat(&shard, fw.resume_token, "test", fj.you).await;
    arm_session(&shard, "inventory", Some(&gw.player_id)).await;
    let (mut hank, _) = Client::welcomed(shard.ws_addr, "hank").await;
    hank.expect_currency(100).await;
    hank.join("test").await;
    hank.give(1, gj.you, 5).await;
    hank.expect_done(1).await;
    crashed_at(&shard, &mut gina, "inventory").await;
    resumes_seat(&shard, gw.resume_token, "test", gj.you).await;
    still_fine(&mut bob, 6).await;

    // announcement: an announcement delivered through the dispatcher.
    let (mut ivy, iw) = Client::welcomed(shard.ws_addr, "ivy").await;
    arm_session(&shard, "announcement", Some(&iw.player_id)).await;
    let url = format!("http://{}/admin/announce", shard.http_addr);
    assert_eq!(
        http_post(&url, Some(ADMIN), r#"{"text":"hello all"}"#)
            .await
            .0,
        200
    );
    crashed_at(&shard, &mut ivy, "announcement").await;
    expect_clean(
        &mut bob,
        "the announcement",
        msg!(ServerMsg::Announce(a) if a.text == "hello all"),
    )
    .await;

    // housekeeping: the session's timer.
    let (mut kate, kw) = Client::welcomed(shard.ws_addr, "kate").await;
    arm_session(&shard, "housekeeping", Some(&kw.player_id)).await;
    crashed_at(&shard, &mut kate, "housekeeping").await;
    still_fine(&mut bob, 7).await;

    // room_event: the notice that a room failed (one panic fails "third").
    let (mut jack, jw) = Client::welcomed(shard.ws_addr, "jack").await;
    jack.join("third").await;
    arm_session(&shard, "room_event", Some(&jw.player_id)).await;
    panic_room(&shard, "third").await;
    crashed_at(&shard, &mut jack, "room_event").await;
    still_fine(&mut bob, 8).await;

    // replaced: a second login of the same player reaches the open session.
    let liam = common::token(SECRET, "p-liam");
    let mut first = Client::connect(shard.ws_addr).await;
    first.hello_with(Some(liam.clone()), "liam").await;
    arm_session(&shard, "replaced", Some("p-liam")).await;
    let mut second = Client::connect(shard.ws_addr).await;
    second.hello_with(Some(liam), "liam").await;
    crashed_at(&shard, &mut first, "replaced").await;
    still_fine(&mut bob, 9).await;

    // shutdown: the shard's request to close; this session ends with 1011
    // instead of 1001, the others as usual.
    let (mut lena, lw) = Client::welcomed(shard.ws_addr, "lena").await;
    arm_session(&shard, "shutdown", Some(&lw.player_id)).await;
    let stopping = tokio::task::spawn_blocking(move || drop(shard));
    assert_eq!(
        lena.expect_close().await,
        Some(CloseCode::InternalError.as_u16())
    );
    assert_eq!(
        bob.expect_close().await,
        Some(CloseCode::GoingAway.as_u16())
    );
    stopping.await.unwrap();
}

/// The room crashed at `at` (the message was dropped and counted there),
/// and `watcher`, a member, got the resync of its next incarnation.
///
/// The count is waited for first: it is made before the restart, so the
/// resync that follows is that crash's. Checked only after the first
/// resync, a restart of another cause on a loaded box (the stall
/// watchdog's, after a tick a second late) let the check run before the
/// armed panic had fired.
async fn room_crashed_at(shard: &server::ShardHandle, watcher: &mut Client, map: &str, at: &str) {
    let series =
        format!("tessera_room_poison_messages_dropped_total{{map=\"{map}\",message=\"{at}\"}}");
    common::eventually(Duration::from_secs(20), &series, || async {
        metric(shard, &series).await >= Some(1.0)
    })
    .await;
    expect_resync(watcher).await;
}

/// Issue 8, item 6, for rooms: a panic in any room handler or
/// continuation restarts that room from its snapshot and nothing else.
#[tokio::test]
async fn a_panic_in_any_room_handler_or_continuation_restarts_only_that_room() {
    let mut config = fault_config();
    config.supervision.max_restarts = 1_000;
    let shard = start(config);
    // Alice's profile is loaded (her purse came): her give and pick_up
    // reach the room.
    let (mut alice, _) = Client::welcomed(shard.ws_addr, "alice").await;
    alice.expect_currency(100).await;
    let aj = alice.join("test").await;
    let (mut bob, bj) = Client::joined(shard.ws_addr, "bob", "test").await;
    let (mut other, _) = Client::joined(shard.ws_addr, "bystander", "other").await;
    bob.drain(Duration::from_millis(100)).await;

    // tick: the room's own timer.
    arm_room(&shard, "tick", "test").await;
    room_crashed_at(&shard, &mut alice, "test", "tick").await;

    // chat, broadcast, who_is (a give asks it who the target is), pick_up.
    arm_room(&shard, "chat", "test").await;
    alice.chat("hello").await;
    room_crashed_at(&shard, &mut alice, "test", "chat").await;
    arm_room(&shard, "broadcast", "test").await;
    let url = format!("http://{}/admin/announce", shard.http_addr);
    let (status, _) = http_post(&url, Some(ADMIN), r#"{"text":"to test","map":"test"}"#).await;
    assert_eq!(status, 200);
    room_crashed_at(&shard, &mut alice, "test", "broadcast").await;
    arm_room(&shard, "who_is", "test").await;
    alice.give(1, bj.you, 1).await;
    room_crashed_at(&shard, &mut alice, "test", "who_is").await;
    arm_room(&shard, "pick_up", "test").await;
    alice
        .send(ClientMsg::PickUp(PickUp { req: 2, item: 1 }))
        .await;
    room_crashed_at(&shard, &mut alice, "test", "pick_up").await;

    // join (the joiner's session tries once more and gets in), leave,
    // disconnected.
    arm_room(&shard, "join", "test").await;
    let (mut carol, cj) = Client::joined(shard.ws_addr, "carol", "test").await;
    assert_eq!(cj.map.name, "test");
    room_crashed_at(&shard, &mut alice, "test", "join").await;
    arm_room(&shard, "leave", "test").await;
    carol.send(ClientMsg::Leave(Leave {})).await;
    room_crashed_at(&shard, &mut alice, "test", "leave").await;
    arm_room(&shard, "disconnected", "test").await;
    let (dave, _) = Client::joined(shard.ws_addr, "dave", "test").await;
    drop(dave);
    room_crashed_at(&shard, &mut alice, "test", "disconnected").await;

    // The start of an incarnation: laying out the ground and the resync
    // of a restored one (each panics the next incarnation once more).
    for at in ["ground_start", "restore"] {
        arm_room(&shard, at, "test").await;
        panic_room(&shard, "test").await;
        room_crashed_at(&shard, &mut alice, "test", at).await;
    }

    // ground_loaded: the store's answer with a new room's ground.
    arm_room(&shard, "ground_loaded", "third").await;
    let (mut erin, _) = Client::joined(shard.ws_addr, "erin", "third").await;
    room_crashed_at(&shard, &mut erin, "third", "ground_loaded").await;

    // Through all of it alice kept her seat and bob's room plays on, and
    // the room next door never noticed.
    alice.walk(1, 1.0, 0.0).await;
    bob.expect("alice moves", own_move(aj.you, 1)).await;
    let seen = other.drain(Duration::from_millis(200)).await;
    assert!(
        seen.iter()
            .all(|m| !matches!(m, ServerMsg::Notice(_) | ServerMsg::Error(_))),
        "{seen:?}"
    );

    // Unknown points are refused with the list.
    let (status, body) = fault(
        &shard,
        "room",
        r#"{"map":"test","kind":"panic","at":"nowhere"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("pickup_credited"), "{body}");
    let (status, body) = fault(&shard, "session", r#"{"kind":"panic","at":"nowhere"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("join_reply"), "{body}");
    for (path, body, want) in [
        ("room", r#"{"map":"test","kind":"stall","at":"tick"}"#, 400),
        (
            "room",
            r#"{"map":"nowhere","kind":"panic","at":"tick"}"#,
            404,
        ),
        ("session", r#"{"kind":"drop","at":"frame"}"#, 400),
        ("session", r#"{"kind":"panic"}"#, 400),
    ] {
        let (status, answer) = fault(&shard, path, body).await;
        assert_eq!(status, want, "{body}: {answer}");
    }
}

/// The issue's own drill: the two room threads stalled one after the other,
/// 2 s apart. The rooms first moved off the first thread must not be sent
/// back to it (still asleep) when the second stalls: they go to an extra
/// Arbiter with the rest, nothing fails, and all come back when the
/// threads wake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staggered_stalls_of_both_room_threads_fail_no_room() {
    const FIRST_MS: u64 = 14_000;
    const SECOND_MS: u64 = 12_000;
    let mut config = fault_config();
    config.maps = (0..6)
        .map(|i| MapConfig {
            name: format!("stagger{i}"),
            spawn_radius: 0.0,
            ..MapConfig::default()
        })
        .collect();
    config.supervision.fallback_map = "stagger5".into();
    let shard = start(config);
    // stagger0, 2 and 4 on one room thread; 1, 3 and 5 on the other.
    let mut players = Vec::new();
    for i in 0..6 {
        let (client, joined) =
            Client::joined(shard.ws_addr, &format!("s{i}"), &format!("stagger{i}")).await;
        players.push((client, joined.you));
    }
    let stall = |map: &str, ms: u64| format!(r#"{{"map":"{map}","kind":"stall","ms":{ms}}}"#);
    assert_eq!(
        fault(&shard, "room", &stall("stagger0", FIRST_MS)).await.0,
        200
    );
    // The first thread's rooms move to the second thread.
    for i in [0, 2, 4] {
        let (client, me) = &mut players[i];
        moved_again(client, *me, 1, &format!("stagger{i} after the first stall")).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        fault(&shard, "room", &stall("stagger1", SECOND_MS)).await.0,
        200
    );
    let second = Instant::now();
    // Now both threads sleep: every room moves (once more) and plays on.
    let runs: Vec<_> = players
        .into_iter()
        .enumerate()
        .map(|(i, (mut client, me))| {
            tokio::spawn(async move {
                let what = format!("stagger{i} after the second stall");
                moved_again(&mut client, me, 2, &what).await;
                (client, me)
            })
        })
        .collect();
    let mut players = Vec::new();
    for run in runs {
        players.push(
            run.await
                .expect("every room plays on while both threads sleep"),
        );
    }
    assert!(
        second.elapsed() < Duration::from_millis(SECOND_MS),
        "the rooms only came back after the stalls ({:?})",
        second.elapsed()
    );
    // The threads wake: handed back, still no error.
    for (i, (client, me)) in players.iter_mut().enumerate() {
        moved_again(
            client,
            *me,
            3,
            &format!("stagger{i} after the threads woke"),
        )
        .await;
    }
    for i in 0..6 {
        let series = format!("tessera_room_failures_total{{map=\"stagger{i}\"}}");
        assert_eq!(metric(&shard, &series).await, None, "{series}");
    }
}
