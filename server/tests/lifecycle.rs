//! Identity and lifecycle: tokens in production mode, resume tokens, the
//! `token` subcommand, configuration errors, and graceful shutdown of the
//! real binary on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{start, test_config, Client};
use protocol::msg::*;
use protocol::{ClientMsg, CloseCode, ErrorCode, ServerMsg, PROTOCOL_VERSION};
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
    client.expect_error(code).await;
    assert_eq!(
        client.expect_close().await,
        Some(CloseCode::AuthFailed.as_u16())
    );
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
    let welcome = client
        .expect("welcome", |m| match m {
            ServerMsg::Welcome(w) => Some(w.clone()),
            _ => None,
        })
        .await;
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
    let welcome = client
        .expect("welcome", |m| match m {
            ServerMsg::Welcome(w) => Some(w.clone()),
            _ => None,
        })
        .await;
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
    let back = again
        .expect("welcome", |m| match m {
            ServerMsg::Welcome(w) => Some(w.clone()),
            _ => None,
        })
        .await;
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
        .expect("announce", |m| match m {
            ServerMsg::Announce(a) => Some(a.text.clone()),
            _ => None,
        })
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
