//! Playing: joining, seeing each other move, interest radius, leaving, chat,
//! announcements. Real shard, real sockets.

mod common;

use std::time::Duration;

use common::{http_get as get, http_post, own_move, start, test_config, Client, View};
use protocol::msg::*;
use protocol::{ClientMsg, ErrorCode, ServerMsg};

#[tokio::test]
async fn a_move_is_seen_by_the_other_player_within_a_few_ticks() {
    let shard = start(test_config());
    let (mut alice, a_joined) = Client::joined(shard.ws_addr, "alice", "test").await;
    let (mut bob, b_joined) = Client::joined(shard.ws_addr, "bob", "test").await;
    assert_eq!(a_joined.map.name, "test");
    assert_ne!(a_joined.you, b_joined.you);
    // Bob sees alice from the start (same spawn point).
    assert!(b_joined
        .entities
        .iter()
        .any(|e| e.id == a_joined.you && e.name == "alice"));
    // Alice learns of bob through an update.
    alice
        .expect(
            "bob entering",
            msg!(ServerMsg::Update(u) if u.entered.iter().any(|e| e.id == b_joined.you)),
        )
        .await;

    let start_x = b_joined
        .entities
        .iter()
        .find(|e| e.id == a_joined.you)
        .unwrap()
        .x;
    let sent = std::time::Instant::now();
    alice.walk(1, 0.0, 1.0).await;
    let moved = bob
        .expect("alice moving", |m| match m {
            ServerMsg::Update(u) => u.moved.iter().find(|m| m.id == a_joined.you).copied(),
            _ => None,
        })
        .await;
    // Within a few ticks (50 ms each) on an idle machine; generous here.
    assert!(
        sent.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(moved.seq, 1, "the applied input is acknowledged");
    assert!(moved.y > 500.0 && moved.x == start_x, "{moved:?}");
    // Alice sees her own input applied too.
    alice
        .expect("own move acked", own_move(a_joined.you, 1))
        .await;
}

#[tokio::test]
async fn inputs_apply_in_sequence_order_and_stay_inside_the_map() {
    let shard = start(test_config());
    let (mut alice, joined) = Client::joined(shard.ws_addr, "alice", "test").await;
    // seq 3 then a stale seq 2: the stale one is ignored.
    alice.walk(3, -1.0, 0.0).await;
    alice.walk(2, 1.0, 0.0).await;
    let mut view = View::from_joined(&joined);
    // At 1000 units/s from x=500 the left edge is reached in 0.5 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        if let ServerMsg::Update(u) = alice
            .expect("update", |m| {
                matches!(m, ServerMsg::Update(_)).then(|| m.clone())
            })
            .await
        {
            view.apply(&u);
        }
        if view.entities[&joined.you].0 == 0.0 {
            break;
        }
    }
    let (x, _, seq) = view.entities[&joined.you];
    assert_eq!(x, 0.0, "clamped at the map's edge");
    assert_eq!(seq, 3);
    // A huge vector is clamped to the map speed, never a teleport.
    alice.walk(4, 1.0e6, 0.0).await;
    let m = alice
        .expect("update after clamp", |m| match m {
            ServerMsg::Update(u) => u.moved.iter().find(|m| m.seq == 4 && m.x > 0.0).copied(),
            _ => None,
        })
        .await;
    assert!(m.x <= 1_000.0 / 20.0 + 0.01, "moved {} in one tick", m.x);
}

#[tokio::test]
async fn a_player_outside_the_view_radius_is_not_seen() {
    let shard = start(test_config());
    let (mut alice, a) = Client::joined(shard.ws_addr, "alice", "test").await;
    let (mut bob, _) = Client::joined(shard.ws_addr, "bob", "test").await;
    // Alice walks right, past bob's 100-unit radius.
    alice.walk(1, 1.0, 0.0).await;
    bob.expect(
        "alice leaving view",
        msg!(ServerMsg::Update(u) if u.left.contains(&a.you)),
    )
    .await;
    // She keeps walking; bob hears nothing more of her.
    let later = bob.drain(Duration::from_millis(400)).await;
    for msg in &later {
        if let ServerMsg::Update(u) = msg {
            assert!(
                !u.moved.iter().any(|m| m.id == a.you),
                "bob saw alice move: {u:?}"
            );
            assert!(!u.entered.iter().any(|e| e.id == a.you), "{u:?}");
        }
    }
    // Coming back into range, she enters bob's view again.
    alice.walk(2, -1.0, 0.0).await;
    bob.expect(
        "alice re-entering",
        msg!(ServerMsg::Update(u) if u.entered.iter().any(|e| e.id == a.you)),
    )
    .await;
}

#[tokio::test]
async fn leaving_and_disconnecting_remove_the_entity_for_others() {
    let mut config = test_config();
    config.supervision.resume_grace_ms = 300;
    let shard = start(config);
    let (mut alice, _) = Client::joined(shard.ws_addr, "alice", "test").await;
    let (mut bob, b) = Client::joined(shard.ws_addr, "bob", "test").await;
    let (carol, c) = Client::joined(shard.ws_addr, "carol", "test").await;
    let mut seen = View::default();
    while seen.entities.len() < 2 {
        let u = alice
            .expect("bob and carol entering", msg!(ServerMsg::Update))
            .await;
        seen.apply(&u);
    }
    assert!(seen.entities.contains_key(&b.you) && seen.entities.contains_key(&c.you));

    bob.send(ClientMsg::Leave(Leave {})).await;
    bob.expect("left", msg!(ServerMsg::Left(l) if l.map == "test"))
        .await;
    alice
        .expect(
            "bob gone",
            msg!(ServerMsg::Update(u) if u.left.contains(&b.you)),
        )
        .await;

    // A dropped connection keeps its seat for the resume grace period
    // (300 ms here), then the entity goes.
    drop(carol);
    let dropped = std::time::Instant::now();
    alice
        .expect(
            "carol gone",
            msg!(ServerMsg::Update(u) if u.left.contains(&c.you)),
        )
        .await;
    assert!(
        dropped.elapsed() >= Duration::from_millis(250),
        "{:?}",
        dropped.elapsed()
    );
    // Bob, now in no map, may not move.
    bob.walk(1, 1.0, 0.0).await;
    bob.expect_error(ErrorCode::IllegalState).await;
}

#[tokio::test]
async fn chat_reaches_members_of_that_room_only() {
    let shard = start(test_config());
    let (mut alice, a) = Client::joined(shard.ws_addr, "alice", "test").await;
    let (mut bob, _) = Client::joined(shard.ws_addr, "bob", "test").await;
    let (mut zed, _) = Client::joined(shard.ws_addr, "zed", "other").await;
    let (mut lobby, _) = Client::welcomed(shard.ws_addr, "nobody").await;

    alice.chat("hello room").await;
    for client in [&mut alice, &mut bob] {
        let chat = client.expect("chat", msg!(ServerMsg::Chat)).await;
        assert_eq!(chat.text, "hello room");
        assert_eq!(chat.from, a.you);
        assert_eq!(chat.name, "alice");
    }
    for client in [&mut zed, &mut lobby] {
        let got = client.drain(Duration::from_millis(300)).await;
        assert!(
            !got.iter().any(|m| matches!(m, ServerMsg::Chat(_))),
            "{got:?}"
        );
    }
    // Too long, empty, or with control characters: refused.
    alice.chat(&"x".repeat(201)).await;
    alice.expect_error(ErrorCode::InvalidInput).await;
    alice.chat("").await;
    alice.expect_error(ErrorCode::InvalidInput).await;
}

#[tokio::test]
async fn joining_another_map_leaves_the_first_and_unknown_maps_are_refused() {
    let shard = start(test_config());
    let (mut alice, _) = Client::joined(shard.ws_addr, "alice", "test").await;
    alice
        .send(ClientMsg::Join(Join {
            map: "nowhere".into(),
        }))
        .await;
    alice.expect_error(ErrorCode::UnknownMap).await;
    // The map she stands in: `joined` again (see
    // joining_the_map_you_stand_in_answers_joined_for_the_same_entity).
    assert_eq!(alice.join("test").await.map.name, "test");
    alice
        .send(ClientMsg::Join(Join {
            map: "other".into(),
        }))
        .await;
    alice
        .expect("left test", msg!(ServerMsg::Left(l) if l.map == "test"))
        .await;
    let joined = alice.expect("joined other", msg!(ServerMsg::Joined)).await;
    assert_eq!(joined.map.name, "other");
}

#[tokio::test]
async fn ping_is_answered_with_the_same_value() {
    let shard = start(test_config());
    let (mut alice, _) = Client::welcomed(shard.ws_addr, "alice").await;
    alice.send(ClientMsg::Ping(Ping { t: 987_654_321 })).await;
    let pong = alice.expect("pong", msg!(ServerMsg::Pong)).await;
    assert_eq!(pong.t, 987_654_321);
    assert!(pong.server_ms > 1_600_000_000_000);
}

#[tokio::test]
async fn players_with_the_same_view_get_identical_update_bytes() {
    let shard = start(test_config());
    let (mut alice, _) = Client::joined(shard.ws_addr, "alice", "other").await;
    let (mut bob, _) = Client::joined(shard.ws_addr, "bob", "other").await;
    let (mut carol, c) = Client::joined(shard.ws_addr, "carol", "other").await;
    // Let the joins settle, then carol walks: alice and bob see the same change.
    alice.drain(Duration::from_millis(200)).await;
    bob.drain(Duration::from_millis(200)).await;
    carol.walk(1, 1.0, 0.0).await;
    let pick = msg!(ServerMsg::Update(u) if u.moved.iter().any(|m| m.id == c.you && m.seq == 1));
    let a = alice.expect("carol moves (alice)", pick).await;
    let b = bob.expect("carol moves (bob)", pick).await;
    assert_eq!(a.tick, b.tick);
    assert_eq!(
        protocol::encode_server(&ServerMsg::Update(a)),
        protocol::encode_server(&ServerMsg::Update(b))
    );
}

#[tokio::test]
async fn admin_announcements_reach_every_session_and_map_broadcasts_their_map() {
    let mut config = test_config();
    config.admin.token = "an-admin-token-of-some-length".into();
    let shard = start(config);
    let (mut alice, _) = Client::joined(shard.ws_addr, "alice", "test").await;
    let (mut bob, _) = Client::welcomed(shard.ws_addr, "bob").await;
    let url = format!("http://{}/admin/announce", shard.http_addr);

    let (status, _) = http_post(&url, None, r#"{"text":"hi"}"#).await;
    assert_eq!(status, 401);
    let (status, _) = http_post(&url, Some("an-admin-token-of-some-length"), "not json").await;
    assert_eq!(status, 400);
    let (status, _) = http_post(
        &url,
        Some("an-admin-token-of-some-length"),
        r#"{"text":"maintenance at 5"}"#,
    )
    .await;
    assert_eq!(status, 200);
    for client in [&mut alice, &mut bob] {
        let text = client
            .expect("announce", msg!(ServerMsg::Announce(a) => a.text.clone()))
            .await;
        assert_eq!(text, "maintenance at 5");
    }
    let (status, _) = http_post(
        &url,
        Some("an-admin-token-of-some-length"),
        r#"{"text":"boss spawned","map":"test"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let text = alice
        .expect(
            "map broadcast",
            msg!(ServerMsg::Announce(a) => a.text.clone()),
        )
        .await;
    assert_eq!(text, "boss spawned");
    let got = bob.drain(Duration::from_millis(300)).await;
    assert!(
        !got.iter().any(|m| matches!(m, ServerMsg::Announce(_))),
        "{got:?}"
    );
}

#[tokio::test]
async fn an_empty_room_stops_after_its_idle_period_and_comes_back_on_demand() {
    let mut config = test_config();
    config.rooms.idle_stop_ms = 300;
    let shard = start(config);
    let health = format!("http://{}/healthz", shard.http_addr);
    let rooms = |body: String| -> u64 {
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        doc["rooms"].as_u64().unwrap()
    };
    let (mut alice, _) = Client::joined(shard.ws_addr, "alice", "test").await;
    assert_eq!(rooms(get(&health).await), 1);
    alice.send(ClientMsg::Leave(Leave {})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while rooms(get(&health).await) != 0 {
        assert!(std::time::Instant::now() < deadline, "room never stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Joining again starts a fresh room.
    let joined = alice.join("test").await;
    assert_eq!(joined.entities.len(), 1);
    assert_eq!(rooms(get(&health).await), 1);
}

/// Updates `observer` gets until `entity` leaves its view.
async fn until_left(observer: &mut Client, entity: EntityId, what: &str) {
    observer
        .expect(what, msg!(ServerMsg::Update(u) if u.left.contains(&entity)))
        .await;
}

#[tokio::test]
async fn a_clean_close_or_leave_then_close_leaves_at_once_and_only_a_drop_holds_the_seat() {
    let mut config = test_config();
    // Far longer than the test waits: a held seat would never show as gone.
    config.supervision.resume_grace_ms = 120_000;
    let shard = start(config);
    let (mut alice, _) = Client::joined(shard.ws_addr, "alice", "test").await;
    let (mut bob, b) = Client::joined(shard.ws_addr, "bob", "test").await;
    let (mut carol, c) = Client::joined(shard.ws_addr, "carol", "test").await;
    let (dave, d) = Client::joined(shard.ws_addr, "dave", "test").await;
    let mut seen = View::default();
    while seen.entities.len() < 3 {
        match alice.next_event(common::WAIT).await {
            Some(common::Event::Msg(ServerMsg::Update(u))) => seen.apply(&u),
            Some(common::Event::Msg(_)) => {}
            _ => panic!("alice did not see the others enter"),
        }
    }

    // A close frame (1000): bob is gone for the others right away.
    bob.ws.close(None).await.expect("close frame sent");
    until_left(&mut alice, b.you, "bob gone after his close").await;

    // `leave`, then a close frame: the same.
    carol.send(ClientMsg::Leave(Leave {})).await;
    carol.ws.close(None).await.expect("close frame sent");
    until_left(&mut alice, c.you, "carol gone after leave and close").await;

    // A dropped connection (no close frame) keeps its seat: dave stands on.
    drop(dave);
    let after = alice.drain(Duration::from_millis(800)).await;
    assert!(
        !after
            .iter()
            .any(|m| matches!(m, ServerMsg::Update(u) if u.left.contains(&d.you))),
        "the dropped player's seat is held: {after:?}"
    );
}

#[tokio::test]
async fn joining_the_map_you_stand_in_answers_joined_for_the_same_entity() {
    let shard = start(test_config());
    let (mut alice, a) = Client::joined(shard.ws_addr, "alice", "test").await;
    let (mut bob, b) = Client::joined(shard.ws_addr, "bob", "test").await;
    alice
        .expect(
            "bob entering",
            msg!(ServerMsg::Update(u) if u.entered.iter().any(|e| e.id == b.you)),
        )
        .await;
    alice
        .send(ClientMsg::Join(Join { map: "test".into() }))
        .await;
    let mut got = Vec::new();
    let again = alice
        .expect("joined again", |m| {
            got.push(m.clone());
            msg!(ServerMsg::Joined)(m)
        })
        .await;
    assert_eq!(again.you, a.you, "the same entity");
    assert_eq!(again.map.name, "test");
    assert!(
        again.entities.iter().any(|e| e.id == b.you),
        "a fresh view: {again:?}"
    );
    assert!(
        !got.iter().any(|m| matches!(
            m,
            ServerMsg::Left(_) | ServerMsg::Error(_) | ServerMsg::Notice(_)
        )),
        "no left, error or notice before it: {got:?}"
    );
    // The others never saw alice go, and she plays on.
    alice.walk(1, 1.0, 0.0).await;
    let seen = bob.expect("alice moving", msg!(ServerMsg::Update)).await;
    assert!(!seen.left.contains(&a.you), "{seen:?}");
}

#[tokio::test]
async fn a_first_login_sends_one_inventory_holding_the_starter_purse() {
    let config = test_config();
    let starter = config.economy.starter_currency;
    assert!(starter > 0);
    let shard = start(config);
    let (mut alice, _) = Client::welcomed(shard.ws_addr, "alice").await;
    let got = alice.drain(Duration::from_millis(1_500)).await;
    let inventories: Vec<_> = got
        .iter()
        .filter_map(msg!(ServerMsg::Inventory(i) => i.currency))
        .collect();
    assert_eq!(inventories, vec![starter], "{got:?}");
}

#[tokio::test]
async fn errors_answering_a_give_or_pick_up_echo_its_req() {
    let shard = start(test_config());
    let (mut alice, _) = Client::welcomed(shard.ws_addr, "alice").await;
    // Not in a map yet: refused, and the refusal says which request.
    alice.give(41, 9, 5).await;
    let err = alice.expect_error(ErrorCode::IllegalState).await;
    assert_eq!(err.req, Some(41));
    alice.join("test").await;
    alice.give(42, 999, 5).await;
    let err = alice.expect_error(ErrorCode::NoSuchTarget).await;
    assert_eq!(err.req, Some(42));
    alice
        .send(ClientMsg::PickUp(PickUp {
            req: 43,
            item: 123_456,
        }))
        .await;
    let err = alice
        .expect(
            "pick_up error",
            msg!(ServerMsg::Error(e) if e.req == Some(43)),
        )
        .await;
    assert!(
        [ErrorCode::ItemGone, ErrorCode::RoomUnavailable]
            .map(ErrorCode::as_u16)
            .contains(&err.code),
        "{err:?}"
    );
    // Errors that answer no request carry none.
    alice.chat("").await;
    let err = alice.expect_error(ErrorCode::InvalidInput).await;
    assert_eq!(err.req, None);
}

/// `rooms.on_session_threads`: rooms run on the sessions' Arbiters and play
/// the same. Also: an entity entering a view is sent as it stands after
/// its latest input (its `entered` entry is encoded when first needed
/// after a change, not at every move).
#[tokio::test]
async fn rooms_on_the_session_threads_play_the_same_and_entered_entries_are_current() {
    let mut config = test_config();
    config.rooms.on_session_threads = true;
    let shard = start(config);
    let (mut alice, a) = Client::joined(shard.ws_addr, "alice", "test").await;
    let (mut bob, _) = Client::joined(shard.ws_addr, "bob", "test").await;
    alice.walk(1, 1.0, 0.0).await;
    let moved = bob
        .expect("alice moving", |m| match m {
            ServerMsg::Update(u) => u.moved.iter().find(|m| m.id == a.you).copied(),
            _ => None,
        })
        .await;
    assert_eq!(moved.seq, 1);
    bob.expect(
        "alice leaving view",
        msg!(ServerMsg::Update(u) if u.left.contains(&a.you)),
    )
    .await;
    alice.walk(2, -1.0, 0.0).await;
    let entered = bob
        .expect("alice re-entering", |m| match m {
            ServerMsg::Update(u) => u.entered.iter().find(|e| e.id == a.you).cloned(),
            _ => None,
        })
        .await;
    assert_eq!(entered.name, "alice");
    assert_eq!(
        entered.seq, 2,
        "the entry as of the latest input: {entered:?}"
    );
    // Alice, still walking left, keeps being seen moving from there on.
    let next = bob
        .expect("alice moving on", |m| match m {
            ServerMsg::Update(u) => u.moved.iter().find(|m| m.id == a.you).copied(),
            _ => None,
        })
        .await;
    assert!(next.x < entered.x, "{next:?} after {entered:?}");
}
