//! Shards in cluster mode: a real `redis-server` (the directory) and real
//! `tessera-server` binaries on loopback port 0. The shards find each
//! other in the directory and connect their peer tunnels (the lower shard
//! id dials every higher one it finds there, no stream needed); a shard
//! with the wrong secret is refused. The console and `shards ls` find the
//! shards in the same directory.

#[path = "../../server/tests/redis_support/mod.rs"]
mod redis_support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ops::Shard;
use protocol::admin::PeerState;
use protocol::peer::MemberState;
use redis_support::RedisServer;

const OPS: &str = env!("CARGO_BIN_EXE_tessera-ops");
const TOKEN: &str = "cluster-test-admin-token-01";
const SECRET: &str = "cluster-test-secret-0123456789abcdef";
const PREFIX: &str = "itest";
/// Generous: the two cores are shared with other builds and benchmarks.
const DEADLINE: Duration = Duration::from_secs(60);

fn server_bin() -> PathBuf {
    Path::new(OPS).with_file_name(format!("tessera-server{}", std::env::consts::EXE_SUFFIX))
}

/// A shard process, killed when dropped; its addresses from its stdout.
struct ShardProc {
    child: Child,
    ws: String,
    http: String,
    peer: String,
    _data: tempfile::TempDir,
}

impl Drop for ShardProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ShardProc {
    fn client(&self) -> Shard {
        Shard::new(&self.http, Some(TOKEN.into()), Duration::from_secs(10))
    }

    /// Its HTTP address as the console names it in action outcomes.
    fn url(&self) -> String {
        format!("http://{}", self.http)
    }
}

fn start_shard(redis: &RedisServer, id: &str, secret: &str) -> ShardProc {
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(server_bin());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TESSERA_") {
            command.env_remove(name);
        }
    }
    command
        .env("TESSERA_STORE__EMBEDDED__DIR", data.path().join("data"))
        .env("TESSERA_ADMIN__TOKEN", TOKEN)
        .env("TESSERA_CLUSTER__REDIS", redis.url())
        .env("TESSERA_CLUSTER__SECRET", secret)
        .env("TESSERA_CLUSTER__SHARD_ID", id)
        .env("TESSERA_CLUSTER__KEY_PREFIX", PREFIX)
        .env("TESSERA_CLUSTER__PEER_ADDR", "127.0.0.1:0")
        .env("TESSERA_CLUSTER__REDIS_TIMEOUT_MS", "800")
        .env("RUST_LOG", "warn")
        .args(["--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .stdout(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e} (cargo build --workspace --bins)"));
    let (mut ws, mut http, mut peer) = (None, None, None);
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.take(10) {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ws listening on ") {
            ws = Some(rest.trim().to_string());
        }
        if let Some(rest) = line.strip_prefix("http listening on ") {
            http = Some(rest.trim().to_string());
        }
        if let Some(rest) = line.strip_prefix("peer listening on ") {
            peer = Some(rest.trim().to_string());
        }
        if http.is_some() && peer.is_some() {
            break;
        }
    }
    ShardProc {
        child,
        ws: ws.expect("a 'ws listening on' line"),
        http: http.expect("an 'http listening on' line"),
        peer: peer.expect("a 'peer listening on' line in cluster mode"),
        _data: data,
    }
}

/// Poll `check` until it returns `Some`, or panic with `what`.
fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Shards `{prefix}-a` and `{prefix}-b`, once their tunnel is up both ways.
fn connected_pair(redis: &RedisServer, prefix: &str) -> (ShardProc, ShardProc) {
    let (ida, idb) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let a = start_shard(redis, &ida, SECRET);
    let b = start_shard(redis, &idb, SECRET);
    wait_for(&format!("the tunnel between {ida} and {idb}"), || {
        (connected(&a, &idb) && connected(&b, &ida)).then_some(())
    });
    (a, b)
}

fn connected(shard: &ShardProc, peer: &str) -> bool {
    shard.client().peers().is_ok_and(|p| {
        p.peers
            .iter()
            .any(|i| i.shard_id == peer && i.state == PeerState::Connected)
    })
}

#[test]
fn shards_connect_through_the_directory_and_a_wrong_secret_is_refused() {
    let redis = RedisServer::start();
    let a = start_shard(&redis, "shard-a", SECRET);
    let b = start_shard(&redis, "shard-b", SECRET);
    assert!(a.peer.starts_with("127.0.0.1:") && !a.peer.ends_with(":0"));

    // shard-a dials shard-b (the lower id dials), found in the directory.
    wait_for("shard-a to show shard-b connected", || {
        connected(&a, "shard-b").then_some(())
    });
    wait_for("shard-b to show shard-a connected", || {
        connected(&b, "shard-a").then_some(())
    });
    let doc = a.client().peers().unwrap();
    assert!(doc.cluster);
    assert_eq!(doc.shard_id.as_deref(), Some("shard-a"));
    assert_eq!(doc.listen.as_deref(), Some(a.peer.as_str()));
    let b_seen = doc.peers.iter().find(|p| p.shard_id == "shard-b").unwrap();
    assert_eq!(b_seen.address.as_deref(), Some(b.peer.as_str()));
    assert!(b_seen.dialled, "shard-a dialled shard-b");

    // A third shard with another secret: in the directory, but refused.
    let wrong = "another-secret-0123456789abcdefghijkl";
    let c = start_shard(&redis, "shard-c", wrong);
    let refusal = wait_for("shard-a to record refusing shard-c", || {
        let doc = a.client().peers().ok()?;
        doc.refusals
            .into_iter()
            .find(|r| r.peer.as_deref() == Some("shard-c") || r.address == c.peer)
    });
    assert!(!refusal.reason.is_empty());
    let doc = a.client().peers().unwrap();
    assert!(
        !doc.peers
            .iter()
            .any(|p| p.shard_id == "shard-c" && p.state == PeerState::Connected),
        "shard-c must not be connected: {:?}",
        doc.peers
    );
    // The pair with the right secret is unaffected.
    assert!(connected(&a, "shard-b"));
    // Both are SWIM members of each other, alive at a real incarnation.
    wait_for("shard-a to see shard-b alive over swim", || {
        let doc = a.client().peers().ok()?;
        doc.incarnation?;
        doc.members
            .iter()
            .any(|m| m.shard_id == "shard-b" && m.state == MemberState::Alive && m.incarnation > 0)
            .then_some(())
    });
    let (ok, text) = ops(&["--http", &a.http, "--token", TOKEN, "peers"]);
    assert!(
        ok && text.contains("members (") && text.contains("shard-b"),
        "{text}"
    );
}

/// `tessera-ops` with `args`, its stdout (and whether it succeeded).
fn ops(args: &[&str]) -> (bool, String) {
    let out = Command::new(OPS)
        .args(args)
        .env_remove("TESSERA_SERVER__HTTP_ADDR")
        .env_remove("TESSERA_ADMIN__TOKEN")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn overview(console: &str) -> serde_json::Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let body = agent
        .get(&format!("http://{console}/api/overview"))
        .header("authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

fn state_of(overview: &serde_json::Value, http: &str) -> Option<String> {
    overview["shards"]
        .as_array()?
        .iter()
        .find(|s| s["url"] == format!("http://{http}"))
        .map(|s| s["state"].as_str().unwrap_or_default().to_string())
}

#[test]
fn the_console_and_shards_ls_find_the_shards_in_the_directory() {
    let redis = RedisServer::start();
    let a = start_shard(&redis, "dir-a", SECRET);
    let mut b = Some(start_shard(&redis, "dir-b", SECRET));
    let b_http = b.as_ref().unwrap().http.clone();

    let url = redis.url();
    let ls = || ops(&["shards", "ls", "--redis", &url, "--key-prefix", PREFIX]);
    let line = |text: &str, id: &str| text.lines().find(|l| l.starts_with(id)).map(str::to_string);
    let text = wait_for("shards ls to list both shards ready", || {
        let (ok, text) = ls();
        let both = [("dir-a", &a.http), ("dir-b", &b_http)]
            .iter()
            .all(|(id, http)| {
                line(&text, id).is_some_and(|l| l.contains(" ready ") && l.contains(http.as_str()))
            });
        (ok && both).then_some(text)
    });
    assert!(line(&text, "dir-a").unwrap().contains(&a.peer), "{text}");

    // The console, with the directory as its source.
    let mut command = Command::new(OPS);
    command
        .args(["console", "--listen", "127.0.0.1:0", "--redis", &url])
        .args(["--key-prefix", PREFIX, "--refresh-ms", "200"])
        .stdout(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let console = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("console listening on ").map(str::to_string))
        .expect("a 'console listening on' line");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _console = Kill(child);

    wait_for("the console to show both shards ready", || {
        let o = overview(&console);
        (state_of(&o, &a.http)? == "ready" && state_of(&o, &b_http)? == "ready").then_some(())
    });

    // A shard killed stays in the directory: dead in both views.
    drop(b.take());
    wait_for("the console to show the killed shard dead", || {
        let o = overview(&console);
        (state_of(&o, &b_http)? == "dead" && state_of(&o, &a.http)? == "ready").then_some(())
    });
    wait_for("shards ls to show the killed shard dead", || {
        let (_, text) = ls();
        line(&text, "dir-b")
            .is_some_and(|l| l.contains(" dead "))
            .then_some(())
    });
}

#[test]
fn a_directory_that_does_not_answer_is_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let (ok, _) = ops(&["--timeout", "2", "shards", "ls", "--redis", &url]);
    assert!(!ok, "shards ls must fail when Redis does not answer");
    let (ok, _) = ops(&["shards", "ls", "--redis", "http://nope"]);
    assert!(!ok, "a bad --redis URL is refused");
}

/// Starts `tessera-ops console` on the directory; its address, and the
/// guard that stops it.
fn console_on(redis_url: &str) -> (String, impl Drop) {
    console(&["--redis", redis_url, "--key-prefix", PREFIX])
}

/// Starts `tessera-ops console` with `source` (`--redis ...` or
/// `--shard ...`); its address, and the guard that stops it.
fn console(source: &[&str]) -> (String, impl Drop) {
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new(OPS)
        .args(["console", "--listen", "127.0.0.1:0"])
        .args(source)
        .args(["--refresh-ms", "200"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("console listening on ").map(str::to_string))
        .expect("a 'console listening on' line");
    (addr, Kill(child))
}

fn link<'a>(o: &'a serde_json::Value, from: &str, to: &str) -> Option<&'a serde_json::Value> {
    o["tunnels"]
        .as_array()?
        .iter()
        .find(|l| l["from"] == from && l["to"] == to)
}

#[test]
fn the_console_shows_the_tunnel_matrix_and_the_leases() {
    let redis = RedisServer::start();
    let (a, _b) = connected_pair(&redis, "mx");
    let url = redis.url();
    let (console, _console) = console_on(&url);

    // Both sides of the pair, connected, with a heartbeat RTT, the
    // streams count and (from the second reading on) bytes/s: the
    // heartbeats alone move some bytes every second.
    let o = wait_for("both links with RTT and rates", || {
        let o = overview(&console);
        let ok = [("mx-a", "mx-b"), ("mx-b", "mx-a")].iter().all(|(f, t)| {
            link(&o, f, t).is_some_and(|l| {
                l["state"] == "connected"
                    && l["rtt_ms"].as_f64().is_some_and(|ms| ms >= 0.0)
                    && l["bytes_out_per_s"].as_f64().is_some()
                    && l["bytes_in"].as_u64().is_some_and(|n| n > 0)
                    && l["streams"].is_u64()
                    && l["version"] == protocol::peer::PEER_VERSION.to_string()
            })
        });
        ok.then_some(o)
    });
    let ab = link(&o, "mx-a", "mx-b").unwrap();
    assert_eq!(ab["from_url"], format!("http://{}", a.http));

    // The directory's view: both ready, no lease held (rooms do not take
    // leases before remote rooms land) ...
    let dir = &o["directory"];
    assert!(dir["error"].is_null(), "{dir}");
    assert_eq!(dir["lease_ms"], 3000);
    let row = |o: &serde_json::Value, id: &str| {
        o["directory"]["shards"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["id"] == id).cloned())
    };
    assert_eq!(row(&o, "mx-a").unwrap()["state"], "ready");
    // ... until one is written the way a shard writes it: counted, aged.
    let mut con = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::pipe()
        .cmd("SET")
        .arg(format!("{PREFIX}:room:lobby"))
        .arg("mx-b:4")
        .arg("PX")
        .arg(60_000)
        .cmd("SADD")
        .arg(format!("{PREFIX}:rooms:mx-b"))
        .arg("lobby")
        .query(&mut con)
        .unwrap();
    let b_row = wait_for("mx-b's lease in the console", || {
        row(&overview(&console), "mx-b").filter(|r| r["leases"] == 1)
    });
    assert!(b_row["lease_ttl_min_ms"]
        .as_u64()
        .is_some_and(|t| t <= 60_000));
    assert_eq!(row(&overview(&console), "mx-a").unwrap()["leases"], 0);
    let (ok, text) = ops(&["shards", "ls", "--redis", &url, "--key-prefix", PREFIX]);
    assert!(ok, "{text}");
    let b_line = text.lines().find(|l| l.starts_with("mx-b")).unwrap();
    assert!(b_line.contains("leases    1"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("mx-a") && l.contains("leases    0")),
        "{text}"
    );

    // The directory's event stream reaches the events API (shard_up at
    // least: each shard announced itself).
    let events = get_json(&console, "/api/events");
    let kinds: Vec<&str> = events["cluster_events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(kinds.contains(&"shard_up"), "{events}");
}

fn get_json(console: &str, path: &str) -> serde_json::Value {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let body = agent
        .get(&format!("http://{console}{path}"))
        .header("authorization", &format!("Bearer {TOKEN}"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&body).unwrap()
}

/// Named in `ops/grafana/tessera-cluster.json` but exported only once a
/// shard holds (or loses) a room lease, which rooms do not take before
/// remote rooms land.
const NEED_LEASES: &[&str] = &["tessera_leases_held", "tessera_leases_lost_total"];

/// Every `tessera_*` name in `text` (a metric, or a longer one's prefix).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tessera_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let before_ok = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        if before_ok && end > "tessera_".len() {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

fn exported(metrics: &str, name: &str) -> bool {
    metrics.lines().filter(|l| !l.starts_with('#')).any(|l| {
        l.strip_prefix(name).is_some_and(|rest| {
            rest.starts_with('{')
                || rest.starts_with(' ')
                || rest.starts_with("_sum")
                || rest.starts_with("_count")
        })
    })
}

#[test]
fn the_cluster_dashboard_names_only_metrics_a_cluster_shard_exports() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/tessera-cluster.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = String::new();
    for panel in doc["panels"].as_array().unwrap() {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for t in targets {
            exprs.push_str(t["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    let names = metric_names(&exprs);
    assert!(names.len() >= 8, "{names:?}");

    // Some life: a connected pair, a refused peer (wrong secret), and the
    // directory gone for a while (errors).
    let mut redis = RedisServer::start();
    let a = start_shard(&redis, "gf-a", SECRET);
    let _b = start_shard(&redis, "gf-b", SECRET);
    let _c = start_shard(&redis, "gf-c", "another-secret-0123456789abcdefghijkl");
    wait_for("gf-a connected to gf-b", || {
        connected(&a, "gf-b").then_some(())
    });
    redis.stop();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = a.client().metrics().unwrap_or_default();
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !NEED_LEASES.contains(&n.as_str()) && !exported(&text, n))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "named in ops/grafana/tessera-cluster.json but not exported in cluster mode: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    redis.restart();
}

/// A guest called ann who joins `map` on the shard at `ws` (after her
/// `welcome`: a `join` before it is illegal, error 1003) and stays until
/// her socket closes; `joined` hears each `joined`. An error frame is
/// printed, so that a test waiting for `joined` in vain says why.
async fn play(ws: String, map: &str, joined: std::sync::mpsc::Sender<()>) {
    use futures_util::{SinkExt, StreamExt};
    use protocol::msg::{Hello, Join};
    use protocol::{encode_client, ClientMsg, ServerMsg, PROTOCOL_VERSION};
    use tokio_tungstenite::tungstenite::Message;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{ws}/"))
        .await
        .expect("websocket connects");
    let hello = ClientMsg::Hello(Hello {
        version: PROTOCOL_VERSION,
        token: None,
        resume: None,
        name: Some("ann".into()),
    });
    socket
        .send(Message::Binary(encode_client(&hello).into()))
        .await
        .unwrap();
    while let Some(Ok(frame)) = socket.next().await {
        let Message::Binary(bytes) = frame else {
            continue;
        };
        match protocol::decode_server(&bytes, 1 << 20) {
            Ok(ServerMsg::Welcome(_)) => {
                let join = ClientMsg::Join(Join { map: map.into() });
                socket
                    .send(Message::Binary(encode_client(&join).into()))
                    .await
                    .unwrap();
            }
            Ok(ServerMsg::Joined(_)) => {
                let _ = joined.send(());
            }
            Ok(ServerMsg::Error(e)) => eprintln!("ann on {ws}: error frame {e:?}"),
            _ => {}
        }
    }
}

/// Guests called ann playing `lobby` ([`play`]), each kept connected
/// until this is dropped.
struct Anns {
    runtime: Option<tokio::runtime::Runtime>,
    joined: (std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>),
}

impl Anns {
    fn new() -> Anns {
        Anns {
            runtime: Some(tokio::runtime::Runtime::new().unwrap()),
            joined: std::sync::mpsc::channel(),
        }
    }

    /// One more ann on the shard at `ws`, once she has joined.
    fn join(&self, ws: &str) {
        let runtime = self.runtime.as_ref().expect("running until dropped");
        runtime.spawn(play(ws.to_string(), "lobby", self.joined.0.clone()));
        self.joined
            .1
            .recv_timeout(DEADLINE)
            .expect("ann joined lobby");
    }
}

impl Drop for Anns {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[test]
fn rooms_migrate_moves_a_played_room_to_the_other_shard() {
    let redis = RedisServer::start();
    let (a, b) = connected_pair(&redis, "mg");
    let anns = Anns::new();
    anns.join(&a.ws);
    let mut con = redis::Client::open(redis.url().as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let lease = |con: &mut redis::Connection| -> Option<String> {
        redis::cmd("GET")
            .arg(format!("{PREFIX}:room:lobby"))
            .query(con)
            .unwrap()
    };
    let before = lease(&mut con).expect("the room is leased");
    let (owner, epoch) = before.rsplit_once(':').unwrap();
    let epoch: u64 = epoch.parse().unwrap();
    let (from, to) = if owner == "mg-a" {
        (&a, "mg-b")
    } else {
        (&b, "mg-a")
    };
    let shard = from.http.clone();
    let (ok, text) = ops(&[
        "--http", &shard, "--token", TOKEN, "rooms", "migrate", "lobby", "--to", to,
    ]);
    assert!(ok, "{text}");
    let moved: protocol::admin::RoomMigrated = serde_json::from_str(&text).unwrap();
    assert_eq!((moved.from.as_str(), moved.to.as_str()), (owner, to));
    assert_eq!(moved.epoch, epoch + 1);
    assert_eq!(lease(&mut con), Some(format!("{to}:{}", epoch + 1)));
    // Asked again of the old owner, which no longer runs it: forwarded to
    // the owner now, which moves it to the only other ready shard (back).
    let (ok, text) = ops(&[
        "--http", &shard, "--token", TOKEN, "rooms", "migrate", "lobby",
    ]);
    assert!(ok, "forwarded to the owner: {text}");
    let back: protocol::admin::RoomMigrated = serde_json::from_str(&text).unwrap();
    assert_eq!((back.from.as_str(), back.to.as_str()), (to, owner));
    assert_eq!(lease(&mut con), Some(format!("{owner}:{}", back.epoch)));
}

/// The console's kick of `player`: each shard's (ok, result), by URL.
fn console_kick(console: &str, player: &str) -> Vec<(String, bool, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let body = agent
        .post(&format!("http://{console}/api/players/{player}/kick"))
        .header("authorization", &format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .send("{}")
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let outcomes: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    outcomes
        .iter()
        .map(|o| {
            (
                o["shard"].as_str().unwrap().to_string(),
                o["ok"].as_bool().unwrap(),
                o["result"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The holder of the player's socket answered `kicked`; `other`, asked to
/// act only on its own sockets, answered that she is not there.
fn assert_kicked_by_holder(
    outcomes: &[(String, bool, String)],
    holder: &ShardProc,
    other: &ShardProc,
) {
    assert!(
        outcomes.contains(&(holder.url(), true, "kicked".to_string())),
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|(u, ok, r)| *u == other.url()
            && !ok
            && r.contains("not connected to this shard")),
        "{outcomes:?}"
    );
}

/// The player called ann whom `console`'s search finds, other than `not`.
fn find_ann(console: &str, not: Option<&str>) -> String {
    wait_for("ann in the console's player search", || {
        let found = get_json(console, "/api/players?q=ann");
        found["players"]
            .as_array()?
            .iter()
            .filter_map(|p| p["player"].as_str())
            .find(|p| Some(*p) != not)
            .map(str::to_string)
    })
}

#[test]
fn a_console_on_a_static_list_kicks_through_the_holder_or_relays_when_it_is_not_listed() {
    let redis = RedisServer::start();
    let (a, b) = connected_pair(&redis, "ks");
    // A shard says it runs in a cluster: the console relays through it.
    assert!(b.client().info().unwrap().cluster);
    let (both, _both) = console(&["--shard", &a.http, "--shard", &b.http]);
    let (only_b, _only_b) = console(&["--shard", &b.http]);
    let anns = Anns::new();
    anns.join(&a.ws);
    let first = find_ann(&both, None);
    // The holder is listed: it kicks, and the other shard, asked to act
    // on its own sockets only, relays nothing that could reach her first.
    assert_kicked_by_holder(&console_kick(&both, &first), &a, &b);
    // The holder is not listed: the listed shard relays the kick through
    // the directory, and the player is gone.
    anns.join(&a.ws);
    let second = find_ann(&both, Some(&first));
    let outcomes = console_kick(&only_b, &second);
    assert_eq!(
        outcomes,
        [(b.url(), true, "kick sent to shard ks-a".to_string())],
        "{outcomes:?}"
    );
    for (player, how) in [(&first, "the kick"), (&second, "the relayed kick")] {
        wait_for(&format!("{how} to end her session"), || {
            // Kicked: not connected, at most a seat kept for a resume.
            let found = get_json(&both, "/api/players?q=ann");
            found["players"]
                .as_array()?
                .iter()
                .filter(|p| p["player"] == player.as_str())
                .all(|p| p["presence"] != "connected")
                .then_some(())
        });
    }
}

#[test]
fn the_consoles_kick_is_answered_by_the_players_shard_and_not_relayed() {
    let redis = RedisServer::start();
    let (a, b) = connected_pair(&redis, "kk");
    let anns = Anns::new();
    anns.join(&a.ws);
    let (console, _console) = console_on(&redis.url());
    let player = find_ann(&console, None);
    // The shard with her socket kicked her; the other one was asked to act
    // only on its own sockets (local_only), so it did not relay a kick of
    // its own ("kick sent to shard kk-a" before) that could reach her first.
    assert_kicked_by_holder(&console_kick(&console, &player), &a, &b);
}
