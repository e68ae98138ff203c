//! Hardening over real sockets: refusals (error 5002, close 1013, the
//! linger of lifecycle rule 7) for the connection cap and the per-IP
//! limits, TLS on both listeners, the admin status rule, and
//! `--print-config`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use protocol::msg::Hello;
use protocol::{decode_server, encode_client, ClientMsg, CloseCode, ErrorCode, ServerMsg};
use server::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "hardening-admin-token-0123";

/// A raw WebSocket over any stream: what a refused client sees, frame by
/// frame, without the test helper's skipping.
async fn expect_refusal<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("an answer in time")
        .expect("a frame")
        .expect("a readable frame");
    let Message::Binary(bytes) = first else {
        panic!("expected error 5002 first, got {first:?}");
    };
    match decode_server(&bytes, 1 << 16).expect("decodes") {
        ServerMsg::Error(e) => assert_eq!(e.code, ErrorCode::ServerBusy.as_u16(), "{e:?}"),
        other => panic!("expected error 5002, got {other:?}"),
    }
    let second = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("a close in time")
        .expect("a frame")
        .expect("a readable frame");
    match second {
        Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), CloseCode::TryAgainLater.as_u16())
        }
        other => panic!("expected close 1013, got {other:?}"),
    }
}

async fn raw_connect(addr: std::net::SocketAddr) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("tcp connects");
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/"), tcp)
        .await
        .expect("websocket upgrade");
    ws
}

fn hello(name: &str) -> Message {
    Message::Binary(
        encode_client(&ClientMsg::Hello(Hello {
            version: protocol::PROTOCOL_VERSION,
            token: None,
            name: Some(name.into()),
            resume: None,
        }))
        .into(),
    )
}

#[tokio::test]
async fn over_the_cap_a_client_gets_5002_then_1013_and_no_reset() {
    let mut config = test_config();
    config.server.max_connections = 1;
    let shard = start(config);
    let (_a, _) = Client::welcomed(shard.ws_addr, "a").await;

    let mut ws = raw_connect(shard.ws_addr).await;
    // Input the server never reads: without the linger, closing the socket
    // with it unread would reset the connection and lose the answer.
    for _ in 0..20 {
        ws.feed(hello("b")).await.unwrap();
    }
    ws.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    expect_refusal(&mut ws).await;
    // Our close completes the handshake; then the server ends the stream.
    let _ = ws.close(None).await;
    let end =
        tokio::time::timeout(WAIT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
    assert!(
        end.is_ok(),
        "the server ended the connection after our close"
    );
    let metrics = common::metrics(&shard).await;
    assert!(
        metrics.contains("tessera_connections_refused_total{reason=\"max_connections\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn per_ip_connection_cap_refuses_then_admits_after_a_close() {
    let mut config = test_config();
    config.server.per_ip_exempt = Vec::new();
    config.server.per_ip_max_connections = 2;
    config.server.per_ip_handshakes_per_sec = 0.0;
    let shard = start(config);
    let (a, _) = Client::welcomed(shard.ws_addr, "a").await;
    let (_b, _) = Client::welcomed(shard.ws_addr, "b").await;
    let mut c = raw_connect(shard.ws_addr).await;
    expect_refusal(&mut c).await;
    drop(c);

    // Once a's connection is gone, its slot is free again.
    drop(a);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut d = raw_connect(shard.ws_addr).await;
        d.send(hello("d")).await.unwrap();
        let answer = tokio::time::timeout(WAIT, d.next()).await.ok().flatten();
        if let Some(Ok(Message::Binary(bytes))) = answer {
            if let Ok(ServerMsg::Welcome(_)) = decode_server(&bytes, 1 << 16) {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a new connection was never admitted after one closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = common::metrics(&shard).await;
    assert!(
        metrics.contains("tessera_connections_refused_total{reason=\"per_ip_connections\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn per_ip_handshake_rate_refuses_past_the_burst() {
    let mut config = test_config();
    config.server.per_ip_exempt = Vec::new();
    config.server.per_ip_max_connections = 0;
    // One new token every 1000 s: nothing refills during the test.
    config.server.per_ip_handshakes_per_sec = 0.001;
    config.server.per_ip_handshake_burst = 3;
    let shard = start(config);
    let mut open = Vec::new();
    for name in ["a", "b", "c"] {
        open.push(Client::welcomed(shard.ws_addr, name).await.0);
    }
    // Closing does not give a handshake back.
    drop(open);
    let mut d = raw_connect(shard.ws_addr).await;
    expect_refusal(&mut d).await;
    let metrics = common::metrics(&shard).await;
    assert!(
        metrics.contains("tessera_connections_refused_total{reason=\"per_ip_rate\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn exempt_addresses_are_not_capped() {
    let mut config = test_config();
    // The default exempts loopback.
    assert!(config
        .server
        .per_ip_exempt
        .contains(&"127.0.0.0/8".to_string()));
    config.server.per_ip_max_connections = 1;
    config.server.per_ip_handshake_burst = 1;
    config.server.per_ip_handshakes_per_sec = 0.001;
    let shard = start(config);
    let (_a, _) = Client::welcomed(shard.ws_addr, "a").await;
    let (_b, _) = Client::welcomed(shard.ws_addr, "b").await;
    let (_c, _) = Client::welcomed(shard.ws_addr, "c").await;
}

#[test]
fn per_ip_limits_are_validated() {
    let mut config = Config::default();
    config.server.per_ip_handshakes_per_sec = f64::NAN;
    let message = config.validate().unwrap_err().to_string();
    assert!(
        message.contains("server.per_ip_handshakes_per_sec"),
        "{message}"
    );
    config.server.per_ip_handshakes_per_sec = 5.0;
    config.server.per_ip_handshake_burst = 0;
    let message = config.validate().unwrap_err().to_string();
    assert!(
        message.contains("server.per_ip_handshake_burst"),
        "{message}"
    );
}

// ---- TLS ----

struct Pki {
    dir: tempfile::TempDir,
    cert_der: rustls::pki_types::CertificateDer<'static>,
}

impl Pki {
    /// A self-signed certificate for `localhost` and 127.0.0.1, in PEM files.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        Pki {
            cert_der: cert.cert.der().clone(),
            dir,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// A client that trusts only this certificate.
    fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    async fn connect(
        &self,
        addr: std::net::SocketAddr,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        self.connector()
            .connect(name, tcp)
            .await
            .expect("tls handshake with the shard")
    }
}

#[tokio::test]
async fn tls_serves_wss_and_https_with_the_configured_certificate() {
    let pki = Pki::new();
    let mut config = test_config();
    config.tls.cert_path = pki.path("cert.pem");
    config.tls.key_path = pki.path("key.pem");
    let shard = start(config);

    // wss://: hello, welcome.
    let tls = pki.connect(shard.ws_addr).await;
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/", shard.ws_addr.port()), tls)
            .await
            .expect("websocket upgrade over tls");
    ws.send(hello("secure")).await.unwrap();
    let answer = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Message::Binary(bytes) = answer else {
        panic!("expected welcome, got {answer:?}");
    };
    assert!(matches!(
        decode_server(&bytes, 1 << 16).unwrap(),
        ServerMsg::Welcome(_)
    ));

    // https://: /healthz.
    let mut tls = pki.connect(shard.http_addr).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, tls.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"status\":\"ok\""), "{response}");

    // Plain text to a TLS listener gets no game session.
    let tcp = TcpStream::connect(shard.ws_addr).await.unwrap();
    let plain = tokio_tungstenite::client_async(format!("ws://{}/", shard.ws_addr), tcp).await;
    assert!(plain.is_err(), "a plain upgrade on the TLS port must fail");
}

#[tokio::test]
async fn tls_can_be_set_for_one_listener_only() {
    let pki = Pki::new();
    let mut config = test_config();
    config.tls.ws_cert_path = pki.path("cert.pem");
    config.tls.ws_key_path = pki.path("key.pem");
    let shard = start(config);
    // HTTP stays plain.
    let health = http_get(&format!("http://{}/healthz", shard.http_addr)).await;
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    // The game listener speaks TLS.
    let tls = pki.connect(shard.ws_addr).await;
    let (mut ws, _) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/", shard.ws_addr.port()), tls)
            .await
            .unwrap();
    ws.send(hello("one")).await.unwrap();
    assert!(matches!(
        tokio::time::timeout(WAIT, ws.next()).await.unwrap(),
        Some(Ok(Message::Binary(_)))
    ));
}

#[test]
fn tls_files_are_checked_at_start_naming_the_field() {
    let pki = Pki::new();
    let mut config = test_config();
    config.tls.cert_path = pki.path("cert.pem");
    let message = config.validate().unwrap_err().to_string();
    assert!(
        message.contains("tls.key_path must be set when tls.cert_path is"),
        "{message}"
    );

    let dir = tempfile::tempdir().unwrap();
    let check = |config: Config| {
        let mut config = config;
        config.store.embedded.dir = dir.path().to_path_buf();
        match server::start(config) {
            Ok(_) => panic!("a bad tls file must stop the start"),
            Err(err) => format!("{err:#}"),
        }
    };
    let mut config = test_config();
    config.tls.cert_path = pki.path("missing.pem");
    config.tls.key_path = pki.path("key.pem");
    let message = check(config);
    assert!(message.contains("tls.cert_path"), "{message}");

    std::fs::write(pki.path("junk.pem"), "not a key").unwrap();
    let mut config = test_config();
    config.tls.http_cert_path = pki.path("cert.pem");
    config.tls.http_key_path = pki.path("junk.pem");
    let message = check(config);
    assert!(message.contains("tls.http_key_path"), "{message}");
}

// ---- admin statuses ----

#[tokio::test]
async fn every_fault_endpoint_answers_403_when_fault_injection_is_off() {
    let mut config = test_config();
    config.admin.token = ADMIN.into();
    let shard = start(config);
    let (_a, _) = Client::joined(shard.ws_addr, "a", "test").await;
    for (path, body) in [
        ("room", r#"{"map":"test","kind":"panic"}"#),
        ("session", r#"{"player":"a","kind":"drop"}"#),
        ("task?name=gateway", ""),
    ] {
        let url = format!("http://{}/admin/faults/{path}", shard.http_addr);
        let (status, text) = http_post(&url, Some(ADMIN), body).await;
        assert_eq!(status, 403, "{path}: {text}");
        assert!(text.contains("admin.fault_injection"), "{path}: {text}");
        // A wrong token is still 401, whatever the switch.
        let (status, _) = http_post(&url, Some("wrong-token-wrong-token"), body).await;
        assert_eq!(status, 401, "{path}");
    }
}

// ---- --print-config ----

#[test]
fn print_config_lists_the_maps_in_force_and_reads_back() {
    let bin = env!("CARGO_BIN_EXE_tessera-server");
    let printed = std::process::Command::new(bin)
        .arg("--print-config")
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let text = String::from_utf8(printed.stdout).unwrap();
    assert!(!text.contains("maps = []"), "{text}");
    for map in ["lobby", "arena", "plains"] {
        assert!(text.contains(&format!("name = \"{map}\"")), "{map}: {text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("printed.toml");
    std::fs::write(&path, &text).unwrap();
    let back = Config::load(Some(&path), Vec::new()).unwrap();
    back.validate().unwrap();
    assert_eq!(back.map_defs(), Config::default().map_defs());
}

// ---- docs ----

fn repo_file(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_readme_documents_every_server_admin_and_tls_field() {
    let readme = repo_file("README.md");
    let config = toml::Value::try_from(Config::default()).unwrap();
    for section in ["server", "admin", "tls"] {
        let table = config[section].as_table().unwrap();
        for key in table.keys() {
            let full = format!("`{section}.{key}`");
            let in_a_row = readme.lines().any(|line| {
                line.starts_with(&format!("| `{section}."))
                    && (line.contains(&full) || line.contains(&format!("`{key}`")))
            });
            assert!(
                in_a_row,
                "{section}.{key} is not in the README's configuration table"
            );
        }
    }
    let token_row = readme
        .lines()
        .find(|l| l.starts_with("| `admin.token`"))
        .expect("admin.token row");
    assert!(token_row.contains("16 bytes"), "{token_row}");
}

#[test]
fn the_repo_carries_its_license_and_links_nothing_outside_it() {
    let license = repo_file("LICENSE");
    assert!(
        license.contains("Apache License"),
        "LICENSE is the Apache text"
    );
    assert!(license.contains("Version 2.0, January 2004"));
    assert!(license.contains("END OF TERMS AND CONDITIONS"));
    for doc in ["README.md", "protocol/PROTOCOL.md", "CHANGELOG.md"] {
        let text = repo_file(doc);
        assert!(
            !text.contains("../shared"),
            "{doc} links outside the repository"
        );
    }
}

/// Every admin refusal and reply reads as its `protocol::admin` type, and
/// the checks run in the one order the extractor gives them: admin off
/// (404), then the token (401), then the body (400), then the call.
#[tokio::test]
async fn admin_replies_and_refusals_are_the_typed_documents() {
    use protocol::admin::{AnnounceReply, ErrorReply, Health, HealthStatus, TaskFaultReply};
    fn read<T: serde::de::DeserializeOwned>(text: &str) -> T {
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    // No token configured: the admin API is off, whatever is sent.
    let off = start(test_config());
    let url = format!("http://{}/admin/announce", off.http_addr);
    let (status, text) = http_post(&url, Some(ADMIN), "not json").await;
    assert_eq!(status, 404, "{text}");
    assert!(read::<ErrorReply>(&text).error.contains("admin.token"));

    let mut config = test_config();
    config.admin.token = ADMIN.into();
    config.admin.fault_injection = true;
    let shard = start(config);
    let url = format!("http://{}/admin/announce", shard.http_addr);
    // The token is checked before the body.
    let (status, text) = http_post(&url, Some("wrong-token-wrong-token"), "not json").await;
    assert_eq!(status, 401, "{text}");
    assert_eq!(
        read::<ErrorReply>(&text).error,
        "missing or wrong bearer token"
    );
    let (status, text) = http_post(&url, Some(ADMIN), "not json").await;
    assert_eq!(status, 400, "{text}");
    assert!(read::<ErrorReply>(&text)
        .error
        .starts_with("body must be JSON"));
    let (status, text) = http_post(&url, Some(ADMIN), r#"{"text":""}"#).await;
    assert_eq!(status, 400, "{text}");
    assert!(read::<ErrorReply>(&text)
        .error
        .starts_with("text must be 1 to"));
    let (status, text) = http_post(&url, Some(ADMIN), r#"{"text":"hi"}"#).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        read::<AnnounceReply>(&text),
        AnnounceReply {
            delivered: 0,
            dropped: 0
        }
    );

    // A query, not a body: the same extractor.
    let task = format!("http://{}/admin/faults/task", shard.http_addr);
    let (status, text) = http_post(&task, Some(ADMIN), "").await;
    assert_eq!(status, 400, "{text}");
    assert!(read::<ErrorReply>(&text).error.contains("name the task"));
    let (status, text) = http_post(&format!("{task}?name=nothing"), Some(ADMIN), "").await;
    assert_eq!(status, 404, "{text}");
    read::<ErrorReply>(&text);
    let (status, text) = http_post(&format!("{task}?name=sampler"), Some(ADMIN), "").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(read::<TaskFaultReply>(&text).task, "sampler");

    let health = http_get(&format!("http://{}/healthz", shard.http_addr)).await;
    let health: Health = read(&health);
    assert_eq!(health.status, HealthStatus::Ok);
    assert!(health.tasks.contains_key("gateway"), "{health:?}");
}
