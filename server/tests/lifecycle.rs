//! Identity and lifecycle: tokens in production mode, resume tokens, the
//! `token` subcommand, configuration errors, and graceful shutdown of the
//! real binary on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use std::time::Duration;

use common::{start, test_config, Client, View};
use protocol::msg::*;
use protocol::{ClientMsg, CloseCode, ErrorCode, NoticeCode, ServerMsg, PROTOCOL_VERSION};
use server::auth::{mint_with_key, unix_now, Claims};
use server::config::AuthMode;

const SECRET: &str = "a-test-secret-long-enough";
const BIN: &str = env!("CARGO_BIN_EXE_tessera-server");

fn production() -> server::Config {
    let mut config = test_config();
    config.auth.mode = AuthMode::Production;
    config.auth.secret = SECRET.into();
    config
}

fn hello(token: Option<String>, resume: Option<String>) -> ClientMsg {
    ClientMsg::Hello(Hello {
        version: PROTOCOL_VERSION,
        token,
        resume,
        name: Some("ignored".into()),
    })
}

async fn refused(addr: std::net::SocketAddr, msg: ClientMsg, code: ErrorCode) {
    let mut client = Client::connect(addr).await;
    client.send(msg).await;
    client.expect_refusal(code, CloseCode::AuthFailed).await;
}

#[tokio::test]
async fn production_mode_accepts_only_valid_unexpired_tokens() {
    let shard = start(production());
    let claims = |exp| Claims {
        sub: "player-7".into(),
        name: "Seven".into(),
        exp,
        sid: None,
    };
    refused(shard.ws_addr, hello(None, None), ErrorCode::AuthRequired).await;
    let expired = mint_with_key(SECRET.as_bytes(), &claims(unix_now() - 10));
    refused(
        shard.ws_addr,
        hello(Some(expired), None),
        ErrorCode::AuthExpired,
    )
    .await;
    let forged = mint_with_key(b"some-other-secret-entirely", &claims(unix_now() + 60));
    refused(
        shard.ws_addr,
        hello(Some(forged), None),
        ErrorCode::AuthInvalid,
    )
    .await;
    refused(
        shard.ws_addr,
        hello(Some("not.a-token".into()), None),
        ErrorCode::AuthInvalid,
    )
    .await;

    let good = mint_with_key(SECRET.as_bytes(), &claims(unix_now() + 60));
    let mut client = Client::connect(shard.ws_addr).await;
    client.send(hello(Some(good), None)).await;
    let welcome = client.expect("welcome", msg!(ServerMsg::Welcome)).await;
    assert_eq!(welcome.player_id, "player-7");
    assert_eq!(welcome.name, "Seven");
}

#[tokio::test]
async fn the_token_subcommand_mints_tokens_the_shard_accepts() {
    let output = Command::new(BIN)
        .args([
            "token", "--secret", SECRET, "--player", "p-42", "--name", "Ada", "--ttl", "60",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let shard = start(production());
    let mut client = Client::connect(shard.ws_addr).await;
    client.send(hello(Some(token), None)).await;
    let welcome = client.expect("welcome", msg!(ServerMsg::Welcome)).await;
    assert_eq!(welcome.player_id, "p-42");
    assert_eq!(welcome.name, "Ada");
}

#[tokio::test]
async fn a_resume_token_brings_back_the_same_player_and_forgeries_are_refused() {
    let shard = start(test_config());
    let (first, welcome) = Client::welcomed(shard.ws_addr, "alice").await;
    drop(first);
    let mut again = Client::connect(shard.ws_addr).await;
    again
        .send(hello(None, Some(welcome.resume_token.clone())))
        .await;
    let back = again.expect("welcome", msg!(ServerMsg::Welcome)).await;
    assert_eq!(back.player_id, welcome.player_id);
    assert_eq!(back.name, "alice");
    assert_ne!(back.session_id, welcome.session_id);

    let mut forged = welcome.resume_token.clone();
    forged.replace_range(0..1, if forged.starts_with('e') { "f" } else { "e" });
    refused(
        shard.ws_addr,
        hello(None, Some(forged)),
        ErrorCode::AuthInvalid,
    )
    .await;
}

fn token_exp(token: &str) -> u64 {
    use base64::Engine as _;
    let payload = token.split('.').next().unwrap();
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    let claims: Claims = serde_json::from_slice(&json).unwrap();
    claims.exp
}

#[test]
fn the_token_subcommand_takes_human_durations_and_plain_seconds() {
    let mint = |ttl: &str| {
        Command::new(BIN)
            .args(["token", "--secret", SECRET, "--player", "p-1", "--ttl", ttl])
            .output()
            .unwrap()
    };
    for (ttl, secs) in [
        ("1h", 3_600),
        ("30m", 1_800),
        ("90s", 90),
        ("1h 30m", 5_400),
        ("90", 90),
    ] {
        let before = unix_now();
        let output = mint(ttl);
        assert!(output.status.success(), "{ttl}: {output:?}");
        let token = String::from_utf8(output.stdout).unwrap();
        let exp = token_exp(token.trim());
        assert!(
            exp >= before + secs && exp <= unix_now() + secs,
            "{ttl}: exp {exp}, now {before}"
        );
    }
    for bad in ["soon", "0", "5 parsecs"] {
        let output = mint(bad);
        assert!(!output.status.success(), "{bad}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--ttl"), "{bad}: {stderr}");
    }
}

async fn welcome_of(client: &mut Client) -> Welcome {
    client.expect("welcome", msg!(ServerMsg::Welcome)).await
}

async fn joined_and_notice(client: &mut Client) -> Joined {
    let joined = client.expect("joined", msg!(ServerMsg::Joined)).await;
    client.expect_notice(NoticeCode::SeatRestored).await;
    joined
}

/// One player, one entity: a fresh login takes over a held seat, and a
/// login while another session of the player is open replaces that
/// session (2005, close 4006) and takes its seat.
#[tokio::test]
async fn a_new_login_takes_the_seat_over_and_replaces_an_open_session() {
    let mut config = test_config();
    config.auth.secret = SECRET.into();
    config.supervision.resume_grace_ms = 120_000;
    let shard = start(config);
    let ada = common::token(SECRET, "p-ada");
    let (mut bob, b) = Client::joined(shard.ws_addr, "bob", "test").await;

    let mut first = Client::connect(shard.ws_addr).await;
    first.hello_with(Some(ada.clone()), "ada").await;
    let a = first.join("test").await;
    let mut view = View::from_joined(&b);
    while !view.entities.contains_key(&a.you) {
        let u = bob.expect("ada entering", msg!(ServerMsg::Update)).await;
        view.apply(&u);
    }

    // The connection drops; a fresh login (not a resume) gets the seat.
    drop(first);
    let mut second = Client::connect(shard.ws_addr).await;
    second.hello_with(Some(ada.clone()), "ada").await;
    let joined = joined_and_notice(&mut second).await;
    assert_eq!(joined.you, a.you, "the same entity");

    // A third login while the second is open: the second is told and
    // closed, the third has the entity.
    let mut third = Client::connect(shard.ws_addr).await;
    third.hello_with(Some(ada.clone()), "ada").await;
    let err = second.expect_error(ErrorCode::SessionReplaced).await;
    assert!(err.text.contains("signed in"), "{err:?}");
    assert_eq!(
        second.expect_close().await,
        Some(CloseCode::Replaced.as_u16())
    );
    let joined = joined_and_notice(&mut third).await;
    assert_eq!(joined.you, a.you, "still the same entity");
    let adas = joined.entities.iter().filter(|e| e.name == "p-ada").count();
    assert_eq!(adas, 1, "{joined:?}");

    // Bob never saw ada leave or a second ada come, and sees her move.
    third.walk(7, 1.0, 0.0).await;
    loop {
        let u = bob.expect("ada moving", msg!(ServerMsg::Update)).await;
        assert!(!u.left.contains(&a.you), "{u:?}");
        assert!(u.entered.iter().all(|e| e.name != "p-ada"), "{u:?}");
        view.apply(&u);
        if u.moved.iter().any(|m| m.id == a.you && m.seq == 7) {
            break;
        }
    }
    assert_eq!(view.entities.len(), 2, "bob and one ada: {view:?}");
}

/// A resume token whose seat's grace is over gets a `welcome` and nothing
/// more (PROTOCOL.md); `last_map` says where the player was, and a `join`
/// of it brings the player back.
#[tokio::test]
async fn a_resume_after_the_grace_is_a_welcome_only() {
    let mut config = test_config();
    config.supervision.resume_grace_ms = 200;
    let shard = start(config);
    let (mut bob, _) = Client::joined(shard.ws_addr, "bob", "test").await;
    let (mut alice, welcome) = Client::welcomed(shard.ws_addr, "alice").await;
    let a = alice.join("test").await;
    drop(alice);
    bob.expect(
        "alice's seat expires",
        msg!(ServerMsg::Update(u) if u.left.contains(&a.you)),
    )
    .await;

    let mut again = Client::connect(shard.ws_addr).await;
    again.send_resume(welcome.resume_token.clone()).await;
    let back = welcome_of(&mut again).await;
    assert_eq!(back.player_id, welcome.player_id);
    let after = again.drain(Duration::from_millis(1_500)).await;
    assert!(
        !after
            .iter()
            .any(|m| matches!(m, ServerMsg::Joined(_) | ServerMsg::Notice(_))),
        "no seat, no join: {after:?}"
    );
    let joined = again.join(back.last_map.as_deref().unwrap_or("test")).await;
    assert_eq!(joined.map.name, "test");
}

#[test]
fn configuration_errors_name_the_field_and_print_config_shows_what_is_in_force() {
    let bad = Command::new(BIN)
        .arg("--print-config")
        .env("TESSERA_LIMITS__MOVE_PER_SEC", "0")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("limits.move_per_sec"), "{stderr}");

    let good = Command::new(BIN)
        .args(["--print-config", "--ws-addr", "127.0.0.1:9999"])
        .env("TESSERA_LIMITS__CHAT_MAX_CHARS", "77")
        .output()
        .unwrap();
    assert!(good.status.success(), "{good:?}");
    let printed = String::from_utf8(good.stdout).unwrap();
    assert!(
        printed.contains("ws_addr = \"127.0.0.1:9999\""),
        "{printed}"
    );
    assert!(printed.contains("chat_max_chars = 77"), "{printed}");
    let parsed: server::Config = toml::from_str(&printed).unwrap();
    assert_eq!(parsed.limits.chat_max_chars, 77);
}

/// The real binary, started on port 0, told to stop with SIGTERM while a
/// client plays: the client hears the announcement and a 1001 close, and
/// the process exits 0.
#[tokio::test]
async fn sigterm_announces_closes_sessions_with_1001_and_exits_0() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env("TESSERA_STORE__EMBEDDED__DIR", data.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ws_line = lines.next().unwrap().unwrap();
    let ws_addr: std::net::SocketAddr = ws_line
        .strip_prefix("ws listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {ws_line:?}"))
        .parse()
        .unwrap();
    let http_line = lines.next().unwrap().unwrap();
    assert!(
        http_line.starts_with("http listening on 127.0.0.1:"),
        "{http_line}"
    );

    let (mut alice, _) = Client::joined(ws_addr, "alice", "lobby").await;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let text = alice
        .expect("announce", msg!(ServerMsg::Announce(a) => a.text.clone()))
        .await;
    assert!(text.contains("shutting down"), "{text}");
    assert_eq!(
        alice.expect_close().await,
        Some(CloseCode::GoingAway.as_u16())
    );
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
}

/// PROTOCOL.md: a client that does not wait for its seat to come back and
/// joins its last map right after the resume's `welcome` gets the held
/// entity all the same, and never a second one.
#[tokio::test]
async fn a_join_of_the_last_map_right_after_a_resume_gets_the_held_entity() {
    let mut config = test_config();
    config.supervision.resume_grace_ms = 120_000;
    let shard = start(config);
    let (mut alice, welcome) = Client::welcomed(shard.ws_addr, "alice").await;
    let a = alice.join("test").await;
    drop(alice);
    let mut again = Client::connect(shard.ws_addr).await;
    again.send_resume(welcome.resume_token.clone()).await;
    welcome_of(&mut again).await;
    again
        .send(ClientMsg::Join(Join { map: "test".into() }))
        .await;
    let joined = again
        .expect("joined", |m| match m {
            ServerMsg::Error(e) => panic!("{e:?}"),
            ServerMsg::Joined(j) => Some(j.clone()),
            _ => None,
        })
        .await;
    assert_eq!(joined.you, a.you, "the held entity");
    let rest = again.drain(Duration::from_millis(500)).await;
    assert!(
        rest.iter().all(|m| match m {
            ServerMsg::Joined(j) => j.you == a.you,
            ServerMsg::Error(_) | ServerMsg::Left(_) => false,
            _ => true,
        }),
        "{rest:?}"
    );
}

/// Since 1.6: a `join` sent with the `hello`, before the welcome (one
/// round trip saved at login), is held and handled right after the
/// welcome; of several, the last one counts.
#[tokio::test]
async fn a_join_sent_with_the_hello_is_held_until_the_welcome() {
    let shard = start(test_config());
    let join = |map: &str| ClientMsg::Join(Join { map: map.into() });

    let mut ann = Client::connect(shard.ws_addr).await;
    ann.send_in_one_flight(&[hello(None, None), join("test")])
        .await;
    let (before, joined) = ann.until_joined(Duration::from_secs(10)).await;
    assert!(
        matches!(before.first(), Some(ServerMsg::Welcome(_))),
        "{before:?}"
    );
    assert_eq!(joined.map.name, "test");

    // A later join before the welcome replaces the held one: one joined.
    let mut bob = Client::connect(shard.ws_addr).await;
    bob.send_in_one_flight(&[hello(None, None), join("test"), join("other")])
        .await;
    let (_, joined) = bob.until_joined(Duration::from_secs(10)).await;
    assert_eq!(joined.map.name, "other");
    let after = bob.drain(Duration::from_millis(300)).await;
    assert!(
        after.iter().all(|m| !matches!(
            m,
            ServerMsg::Joined(_) | ServerMsg::Error(_) | ServerMsg::Left(_)
        )),
        "{after:?}"
    );
}
