//! Bad input: every malformed or illegal message gets an error code, abuse
//! closes the socket, and none of it disturbs other players.

mod common;

use std::time::Duration;

use common::{own_move, start, test_config, Client};
use futures_util::{SinkExt, StreamExt};
use protocol::msg::*;
use protocol::{ClientMsg, CloseCode, ErrorCode, ServerMsg, Version, PROTOCOL_VERSION};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

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
    bob.expect("pong", msg!(ServerMsg::Pong(p) if p.t == 5))
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
    client
        .expect_refusal(ErrorCode::VersionMismatch, CloseCode::VersionMismatch)
        .await;
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
        alice.expect("pong", msg!(ServerMsg::Pong)).await;
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
    c.expect_refusal(protocol::ErrorCode::ServerBusy, CloseCode::TryAgainLater)
        .await;
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
    good.expect("own move", own_move(g.you, 1)).await;
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
        .expect("chat", msg!(ServerMsg::Chat(c) => c.text.clone()))
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
        .expect("pong", msg!(ServerMsg::Pong(p) if p.t == u64::MAX))
        .await;
}

/// Lifecycle rule 7 after a frame over the limit: the server keeps reading
/// (and dropping) what the client sent after it, so the error frame and the
/// close frame reach a client that reads only later, instead of being
/// thrown away by a connection reset.
#[tokio::test]
async fn an_oversize_frame_followed_by_more_input_still_gets_the_error_and_the_close() {
    let mut config = test_config();
    config.server.max_frame_bytes = 1024;
    let shard = start(config);
    for round in 0..3 {
        let (mut alice, _) = Client::welcomed(shard.ws_addr, "alice").await;
        // Far more than the server's read buffer: most of it is still
        // unread in the kernel when the server decides to close.
        let _ = alice
            .ws
            .send(Message::Binary(vec![0x90; 512 * 1024].into()))
            .await;
        for t in 0..50 {
            if alice
                .ws
                .send(Message::Binary(
                    protocol::encode_client(&ClientMsg::Ping(Ping { t })).into(),
                ))
                .await
                .is_err()
            {
                break;
            }
        }
        // Read only once the server has long decided.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut events = Vec::new();
        loop {
            match alice.next_event(common::WAIT).await {
                Some(common::Event::Msg(msg)) => events.push(msg),
                Some(common::Event::Closed(code)) => {
                    assert_eq!(
                        code,
                        Some(CloseCode::MessageTooBig.as_u16()),
                        "round {round}: {events:?}"
                    );
                    break;
                }
                None => panic!("round {round}: no close"),
            }
        }
        assert!(
            events.iter().any(|m| matches!(
                m,
                ServerMsg::Error(e) if e.code == ErrorCode::FrameTooLarge.as_u16()
            )),
            "round {round}: {events:?}"
        );
        // After the close frame the connection ends with a FIN, not a
        // reset: the server read what was pending before closing the
        // socket (a reset would also discard whatever it had not sent yet,
        // which is how clients lose the error and the close).
        let end = tokio::time::timeout(common::WAIT, alice.ws.next())
            .await
            .expect("the server ends the connection");
        match end {
            None => {}
            Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {}
            other => panic!("round {round}: connection not ended cleanly: {other:?}"),
        }
    }
}

/// A float64 direction beyond f32's range is an ordinary (if long)
/// direction: clamped to length 1, not refused.
#[tokio::test]
async fn a_move_beyond_f32_range_is_clamped_not_refused() {
    let shard = start(test_config());
    let (mut alice, joined) = Client::joined(shard.ws_addr, "alice", "test").await;
    // {"move": {"seq": 1, "dx": -1e300 (float64), "dy": 0.0 (float64)}}
    let mut frame = vec![0x81, 0xa4];
    frame.extend_from_slice(b"move");
    frame.extend_from_slice(&[0x83, 0xa3]);
    frame.extend_from_slice(b"seq");
    frame.extend_from_slice(&[0x01, 0xa2]);
    frame.extend_from_slice(b"dx");
    frame.push(0xcb);
    frame.extend_from_slice(&(-1e300f64).to_be_bytes());
    frame.push(0xa2);
    frame.extend_from_slice(b"dy");
    frame.push(0xcb);
    frame.extend_from_slice(&0.0f64.to_be_bytes());
    alice.send_raw(Message::Binary(frame.into())).await;
    let m = alice
        .expect("own move applied", |m| match m {
            ServerMsg::Error(e) => panic!("refused: {e:?}"),
            ServerMsg::Update(u) => u
                .moved
                .iter()
                .find(|m| m.id == joined.you && m.seq == 1)
                .copied(),
            _ => None,
        })
        .await;
    // Left, at most one step of a tick.
    assert!(m.x < 500.0 && m.x >= 500.0 - 1_000.0 / 20.0 - 0.01, "{m:?}");
    assert_eq!(m.y, 500.0, "{m:?}");
}
