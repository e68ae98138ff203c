//! Bad input: every malformed or illegal message gets an error code, abuse
//! closes the socket, and none of it disturbs other players.

mod common;

use std::time::Duration;

use common::{start, test_config, Client};
use protocol::msg::*;
use protocol::{ClientMsg, CloseCode, ErrorCode, ServerMsg, Version, PROTOCOL_VERSION};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn malformed_and_text_frames_get_error_codes_and_the_session_goes_on() {
    let shard = start(test_config());
    let (mut alice, _) = Client::welcomed(shard.ws_addr, "alice").await;
    for junk in [
        vec![0xc1],                               // never-used MessagePack marker
        vec![0x81, 0xa4, b'm', b'o', b'v'],       // truncated
        vec![0x81, 0xa3, b'f', b'l', b'y', 0x80], // unknown message
        vec![],                                   // empty
    ] {
        alice.send_raw(Message::Binary(junk.into())).await;
        let err = alice.expect_error(ErrorCode::Malformed).await;
        assert!(!err.text.is_empty());
    }
    alice.send_raw(Message::Text("{\"hello\":{}}".into())).await;
    alice.expect_error(ErrorCode::TextFrame).await;
    // Still alive and usable.
    let joined = alice.join("test").await;
    assert_eq!(joined.map.name, "test");
}

#[tokio::test]
async fn an_oversize_frame_closes_the_socket() {
    let mut config = test_config();
    config.server.max_frame_bytes = 1024;
    let shard = start(config);
    let (mut alice, _) = Client::welcomed(shard.ws_addr, "alice").await;
    let (mut bob, _) = Client::welcomed(shard.ws_addr, "bob").await;
    alice
        .send_raw(Message::Binary(vec![0x90; 4096].into()))
        .await;
    // The error frame may or may not get out before the socket closes;
    // the close code always does.
    assert_eq!(
        alice.expect_close().await,
        Some(CloseCode::MessageTooBig.as_u16())
    );
    // Bob is unaffected.
    bob.send(ClientMsg::Ping(Ping { t: 5 })).await;
    bob.expect("pong", |m| {
        matches!(m, ServerMsg::Pong(p) if p.t == 5).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_flood_over_the_rate_limit_gets_errors_then_a_close() {
    let mut config = test_config();
    config.limits.control_per_sec = 5;
    config.limits.control_burst = 5;
    config.limits.abuse_strikes = 10;
    let shard = start(config);
    let (mut alice, _) = Client::welcomed(shard.ws_addr, "alice").await;
    // The hello took one token; 4 pings pass, the rest are over the limit.
    for t in 0..40 {
        alice.send(ClientMsg::Ping(Ping { t })).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    let close = loop {
        match alice.next_event(common::WAIT).await {
            Some(common::Event::Msg(ServerMsg::Pong(_))) => pongs += 1,
            Some(common::Event::Msg(ServerMsg::Error(e))) => {
                assert_eq!(e.code, ErrorCode::RateLimited.as_u16(), "{e:?}");
                limited += 1;
            }
            Some(common::Event::Msg(ServerMsg::Inventory(_))) => {}
            Some(common::Event::Msg(other)) => panic!("unexpected {other:?}"),
            Some(common::Event::Closed(code)) => break code,
            None => panic!("no close after a flood"),
        }
    };
    assert_eq!(pongs, 4);
    assert_eq!(limited, 10, "errors until the strike limit");
    assert_eq!(close, Some(CloseCode::PolicyViolation.as_u16()));
}

#[tokio::test]
async fn messages_illegal_in_the_state_get_illegal_state() {
    let shard = start(test_config());
    let mut client = Client::connect(shard.ws_addr).await;
    // Before hello.
    client
        .send(ClientMsg::Join(Join { map: "test".into() }))
        .await;
    client.expect_error(ErrorCode::IllegalState).await;
    client.hello("alice").await;
    // Before joining.
    client.walk(1, 1.0, 0.0).await;
    client.expect_error(ErrorCode::IllegalState).await;
    client.chat("hi").await;
    client.expect_error(ErrorCode::IllegalState).await;
    client.send(ClientMsg::Leave(Leave {})).await;
    client.expect_error(ErrorCode::IllegalState).await;
    // A second hello.
    client
        .send(ClientMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            token: None,
            resume: None,
            name: None,
        }))
        .await;
    client.expect_error(ErrorCode::IllegalState).await;
    // Non-finite directions are refused.
    client.join("test").await;
    client.walk(1, f32::NAN, 0.0).await;
    client.expect_error(ErrorCode::InvalidInput).await;
}

#[tokio::test]
async fn a_wrong_major_version_gets_an_error_and_a_close() {
    let shard = start(test_config());
    let mut client = Client::connect(shard.ws_addr).await;
    client
        .send(ClientMsg::Hello(Hello {
            version: Version {
                major: PROTOCOL_VERSION.major + 1,
                minor: 0,
            },
            token: None,
            resume: None,
            name: None,
        }))
        .await;
    client.expect_error(ErrorCode::VersionMismatch).await;
    assert_eq!(
        client.expect_close().await,
        Some(CloseCode::VersionMismatch.as_u16())
    );
}

#[tokio::test]
async fn idle_clients_and_silent_connections_are_dropped() {
    let mut config = test_config();
    config.server.idle_timeout_ms = 600;
    config.server.handshake_timeout_ms = 400;
    let shard = start(config);
    let (mut idle, _) = Client::welcomed(shard.ws_addr, "idle").await;
    let mut silent = Client::connect(shard.ws_addr).await;
    let started = std::time::Instant::now();
    assert_eq!(
        silent.expect_close().await,
        Some(CloseCode::HandshakeTimeout.as_u16())
    );
    assert_eq!(
        idle.expect_close().await,
        Some(CloseCode::IdleTimeout.as_u16())
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn an_active_client_is_not_dropped_as_idle() {
    let mut config = test_config();
    config.server.idle_timeout_ms = 500;
    let shard = start(config);
    let (mut alice, _) = Client::welcomed(shard.ws_addr, "alice").await;
    for t in 0..8 {
        alice.send(ClientMsg::Ping(Ping { t })).await;
        alice
            .expect("pong", |m| matches!(m, ServerMsg::Pong(_)).then_some(()))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_with_try_again_later() {
    let mut config = test_config();
    config.server.max_connections = 2;
    let shard = start(config);
    let (_a, _) = Client::welcomed(shard.ws_addr, "a").await;
    let (_b, _) = Client::welcomed(shard.ws_addr, "b").await;
    let mut c = Client::connect(shard.ws_addr).await;
    c.expect_error(protocol::ErrorCode::ServerBusy).await;
    assert_eq!(
        c.expect_close().await,
        Some(CloseCode::TryAgainLater.as_u16())
    );
}

#[tokio::test]
async fn a_misbehaving_client_does_not_disturb_a_room() {
    let shard = start(test_config());
    let (mut good, g) = Client::joined(shard.ws_addr, "good", "test").await;
    let (mut bad, _) = Client::joined(shard.ws_addr, "bad", "test").await;
    for i in 0..50u8 {
        bad.send_raw(Message::Binary(vec![0xc1, i].into())).await;
    }
    // The bad client is closed for abuse...
    assert_eq!(
        bad.expect_close().await,
        Some(CloseCode::PolicyViolation.as_u16())
    );
    // ...and the good one keeps playing.
    good.walk(1, 1.0, 0.0).await;
    good.expect("own move", |m| match m {
        ServerMsg::Update(u) => u
            .moved
            .iter()
            .find(|m| m.id == g.you && m.seq == 1)
            .copied(),
        _ => None,
    })
    .await;
}

#[tokio::test]
async fn extreme_but_well_formed_values_are_handled() {
    let shard = start(test_config());
    let (mut alice, joined) = Client::joined(shard.ws_addr, "alice", "test").await;
    // The largest seq, then a wrapped-around small one (ignored as stale).
    alice.walk(u32::MAX, f32::MAX, f32::MIN).await;
    alice.walk(0, 1.0, 0.0).await;
    alice.walk(7, f32::INFINITY, 0.0).await;
    // The error comes from the session at once, the move with the next
    // tick: either may arrive first. The first update with alice's move is
    // the one step to check.
    let (mut errored, mut first_move) = (false, None);
    let m = alice
        .expect("error 3002 and own max seq applied", |m| {
            match m {
                ServerMsg::Error(e) if e.code == ErrorCode::InvalidInput.as_u16() => {
                    errored = true;
                }
                ServerMsg::Update(u) if first_move.is_none() => {
                    first_move = u.moved.iter().find(|m| m.id == joined.you).copied();
                }
                _ => {}
            }
            first_move.filter(|_| errored)
        })
        .await;
    assert_eq!(m.seq, u32::MAX);
    assert!(m.x.is_finite() && m.y.is_finite());
    // Direction kept (right and up), speed clamped to one step per tick.
    assert!(m.x > 500.0 && m.y < 500.0, "{m:?}");
    assert!(m.x - 500.0 <= 1_000.0 / 20.0 + 0.01, "{m:?}");
    // 200 characters of 4-byte UTF-8 is within the limit.
    alice.chat(&"🦀".repeat(200)).await;
    let chat = alice
        .expect("chat", |m| match m {
            ServerMsg::Chat(c) => Some(c.text.clone()),
            _ => None,
        })
        .await;
    assert_eq!(chat.chars().count(), 200);
    alice.chat("bell\u{7}").await;
    alice.expect_error(ErrorCode::InvalidInput).await;
    // A map name of control characters and a huge ping value.
    alice
        .send(ClientMsg::Join(Join {
            map: "\u{0}\u{1}".into(),
        }))
        .await;
    alice.expect_error(ErrorCode::UnknownMap).await;
    alice.send(ClientMsg::Ping(Ping { t: u64::MAX })).await;
    alice
        .expect("pong", |m| {
            matches!(m, ServerMsg::Pong(p) if p.t == u64::MAX).then_some(())
        })
        .await;
}
