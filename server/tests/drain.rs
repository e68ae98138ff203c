//! Drain (a rolling deploy) over the admin API, on a shard in cluster
//! mode against a real `redis-server`: readiness 503 with a message, the
//! shard `draining` in the directory, the clients told to reconnect
//! (notice 6004, close 4008), its leases released, and the shard ending by
//! itself. Every wait is for a condition, with a generous deadline.

mod common;
mod redis_support;

use std::time::Duration;

use common::{http, start, test_config, Client};
use protocol::admin::{Health, Role};
use protocol::{CloseCode, NoticeCode};
use redis_support::RedisServer;
use server::cluster::{Directory, DirectorySettings, ShardId, ShardState};
use server::config::{AdminToken, Config};
use server::ids::RoomId;

const OPERATOR: &str = "operator-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789ab";
const PATIENCE: Duration = Duration::from_secs(30);

fn config(redis: &RedisServer, prefix: &str) -> Config {
    let mut config = test_config();
    config.admin.tokens = common::operator_and_viewer(OPERATOR, VIEWER);
    config.cluster.redis = redis.url();
    config.cluster.secret = "s".repeat(32);
    config.cluster.key_prefix = prefix.into();
    config.cluster.shard_id = "drainee".into();
    config.cluster.peer_addr = "127.0.0.1:0".parse().unwrap();
    // A client that has not answered the close keeps its session (and so
    // the HTTP server) up for this long: the window in which the test
    // looks at readiness and the directory.
    config.server.close_linger_ms = 30_000;
    config.server.shutdown_grace_ms = 30_000;
    config.cluster.drain_budget_ms = 120_000;
    config
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

async fn shard_state(dir: &Directory, id: &str) -> Option<(bool, ShardState)> {
    dir.shards()
        .await
        .ok()?
        .into_iter()
        .find(|s| s.id.as_str() == id)
        .map(|s| (s.alive, s.state))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_tells_clients_to_reconnect_releases_leases_and_ends_the_shard() {
    let redis = RedisServer::start();
    let prefix = "drain1";
    let cfg = config(&redis, prefix);
    let shard = tokio::task::spawn_blocking(move || start(cfg))
        .await
        .unwrap();
    let dir = observer(&redis, prefix);
    common::eventually(PATIENCE, "the shard is ready in the directory", || async {
        shard_state(&dir, "drainee").await == Some((true, ShardState::Ready))
    })
    .await;
    let (mut ann, _) = Client::joined(shard.ws_addr, "ann", "test").await;
    // The shard holds a room's lease (taken through its own directory
    // handle, so it renews and releases it like any of its leases).
    let room: RoomId = "test".parse().unwrap();
    let own = shard.cluster.clone().expect("cluster mode");
    own.acquire_room(&room, 0).await.expect("the lease is free");
    assert_eq!(
        dir.owner(&room)
            .await
            .unwrap()
            .map(|(s, _)| s.as_str().to_string()),
        Some("drainee".into())
    );

    let drain_url = format!("http://{}/admin/shards/drain", shard.http_addr);
    // A viewer may look, not drain.
    let (status, body) = http("POST", &drain_url, Some(VIEWER), "").await;
    assert_eq!(status, 403, "{body}");
    let ready_url = format!("http://{}/healthz/ready", shard.http_addr);
    assert_eq!(http("GET", &ready_url, None, "").await.0, 200);

    let (status, body) = http("POST", &drain_url, Some(OPERATOR), "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("draining"), "{body}");

    // The client is told first; its session lingers until it answers the
    // close, and the shard's HTTP server with it.
    let notice = ann.expect_notice(NoticeCode::ShardDraining).await;
    assert_eq!(notice.text, "shard draining, reconnect");
    let (status, body) = http("GET", &ready_url, None, "").await;
    assert_eq!(status, 503, "{body}");
    let health: Health = serde_json::from_str(&body).unwrap();
    assert!(
        health
            .message
            .as_deref()
            .is_some_and(|m| m.contains("draining")),
        "{body}"
    );
    assert_eq!(
        shard_state(&dir, "drainee").await,
        Some((true, ShardState::Draining))
    );
    // No room is placed on a draining shard.
    assert!(dir.place(&"elsewhere".parse().unwrap()).await.is_err());
    // The drain is audited.
    let events = http(
        "GET",
        &format!("http://{}/admin/events", shard.http_addr),
        Some(OPERATOR),
        "",
    )
    .await
    .1;
    assert!(
        events.contains("\"action\":\"drain\"") && events.contains("olga"),
        "{events}"
    );
    assert_eq!(ann.expect_close().await, Some(CloseCode::Draining.as_u16()));
    drop(ann);

    // The shard ends by itself: leases released, out of the directory.
    let common::TestShard { shard, data } = shard;
    tokio::time::timeout(PATIENCE, tokio::task::spawn_blocking(move || shard.join()))
        .await
        .expect("the drained shard ends")
        .unwrap();
    assert_eq!(dir.owner(&room).await.unwrap(), None);
    assert_ne!(
        shard_state(&dir, "drainee").await.map(|s| s.0),
        Some(true),
        "the drained shard left the cluster"
    );
    drop(data);
}

#[tokio::test]
async fn a_shard_outside_a_cluster_refuses_to_drain() {
    let mut cfg = test_config();
    cfg.admin.tokens = vec![AdminToken {
        token: OPERATOR.into(),
        role: Role::Operator,
        name: "olga".into(),
    }];
    let shard = start(cfg);
    let (status, body) = http(
        "POST",
        &format!("http://{}/admin/shards/drain", shard.http_addr),
        Some(OPERATOR),
        "",
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("not in cluster mode"), "{body}");
    let ready = format!("http://{}/healthz/ready", shard.http_addr);
    assert_eq!(http("GET", &ready, None, "").await.0, 200);
}

/// The binary: SIGTERM in cluster mode drains (the client is told to
/// reconnect, with 4008 rather than 1001) and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_in_cluster_mode_drains_and_exits_zero() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera-server"))
        .args(["--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--cluster-redis", &redis.url(), "--shard-id", "term-1"])
        .args(["--peer-addr", "127.0.0.1:0"])
        .env("TESSERA_CLUSTER__SECRET", "s".repeat(32))
        .env("TESSERA_CLUSTER__KEY_PREFIX", "drain3")
        .env("TESSERA_STORE__EMBEDDED__DIR", data.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the server binary starts");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut child = Kill(child);
    let first = BufReader::new(stdout)
        .lines()
        .next()
        .expect("the server prints its ws address")
        .unwrap();
    let ws: std::net::SocketAddr = first
        .strip_prefix("ws listening on ")
        .expect("the first line is the ws address")
        .parse()
        .unwrap();
    let (mut ann, _) = Client::welcomed(ws, "ann").await;
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    ann.expect_notice(NoticeCode::ShardDraining).await;
    assert_eq!(ann.expect_close().await, Some(CloseCode::Draining.as_u16()));
    drop(ann);
    let exit = tokio::task::spawn_blocking(move || {
        let give_up = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < give_up,
                "the drained server did not exit"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    assert_eq!(exit.code(), Some(0), "{exit:?}");
    let dir = observer(&redis, "drain3");
    assert_ne!(
        shard_state(&dir, "term-1").await.map(|s| s.0),
        Some(true),
        "the drained shard left the cluster"
    );
}
