//! The loadbot against several real shards: bots spread over `--url`s
//! with figures per shard (two dev-mode shards), and, with a real
//! `redis-server` and two cluster-mode shards, bots sent to their room's
//! owner (predicted by rendezvous, or read from a lease) or, with
//! `--remote-share 1`, away from it. Bad flag combinations are refused by
//! the binary with a message naming the flag.

mod common;

#[path = "../../server/tests/redis_support/mod.rs"]
mod redis_support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Shard;
use loadbot::placement::OwnerSource;
use loadbot::Config;
use redis_support::RedisServer;

const SECRET: &str = "loadbot-cluster-test-secret-0123456789";
const PREFIX: &str = "lbtest";
/// Generous: two cores shared with builds and benchmarks.
const DEADLINE: Duration = Duration::from_secs(40);

fn short_run(cfg: &mut Config, bots: u32, rooms: u32) {
    cfg.bots = bots;
    cfg.rooms = rooms;
    cfg.duration = Duration::from_secs(2);
    cfg.ramp = Duration::from_millis(300);
    cfg.move_hz = 5.0;
    cfg.ping_interval = Duration::from_millis(200);
}

/// Hellos the shard counted: one per session the loadbot opened there.
fn hellos(shard: &Shard) -> u64 {
    shard.client_messages().get("hello").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_are_spread_over_the_urls_with_figures_per_shard() {
    let a = Shard::start();
    let b = Shard::start();
    let mut cfg = Config::with_urls(&[&a.url(), &b.url()]).expect("valid");
    short_run(&mut cfg, 7, 2);
    let s = loadbot::run(cfg).await.expect("the run completes");

    assert_eq!(
        s.bots_joined,
        7,
        "{s:#?}\n{}\n{}",
        a.log_tail(),
        b.log_tail()
    );
    assert_eq!(s.config.placement, "round_robin");
    assert_eq!(s.config.urls, vec![a.url(), b.url()]);
    assert_eq!(s.shards.len(), 2);
    // Bot i on URL i % 2: 4 bots on the first, 3 on the second.
    assert_eq!(s.shards[0].bots, 4);
    assert_eq!(s.shards[1].bots, 3);
    for (shard, figures) in [&a, &b].into_iter().zip(&s.shards) {
        assert_eq!(figures.url, shard.url());
        assert_eq!(figures.connects_ok, u64::from(figures.bots), "{figures:?}");
        // The shard itself saw exactly the sessions counted for it.
        assert_eq!(hellos(shard), figures.connects_ok, "{}", shard.log_tail());
        assert!(figures.updates_received > 0, "{figures:?}");
        assert!(figures.rtt_ms.count > 0, "{figures:?}");
        assert!(figures.move_visible_ms.count > 0, "{figures:?}");
        assert_eq!(figures.errors(), 0, "{figures:?}");
        assert_eq!(figures.remote_bots, 0);
    }
    // The shards' figures add up to the totals.
    let rtt: u64 = s.shards.iter().map(|f| f.rtt_ms.count).sum();
    assert_eq!(rtt, s.rtt_ms.count);
    let updates: u64 = s.shards.iter().map(|f| f.updates_received).sum();
    assert_eq!(updates, s.msgs_received_by_kind["update"]);
    let text = loadbot::report::table::render(&s);
    assert!(text.contains("2 shards (round_robin)"), "{text}");
    assert!(text.contains(&b.url()), "{text}");
}

/// A shard in cluster mode with id `id`, registered in `redis`.
fn cluster_shard(redis: &RedisServer, id: &str) -> Shard {
    let url = redis.url();
    Shard::start_with(
        &[],
        &[
            ("TESSERA_CLUSTER__REDIS", url.as_str()),
            ("TESSERA_CLUSTER__SECRET", SECRET),
            ("TESSERA_CLUSTER__SHARD_ID", id),
            ("TESSERA_CLUSTER__KEY_PREFIX", PREFIX),
            ("TESSERA_CLUSTER__PEER_ADDR", "127.0.0.1:0"),
        ],
    )
}

/// Waits until the directory lists `n` ready shards; their ids by ws
/// address.
fn wait_ready(redis: &RedisServer, n: usize) -> BTreeMap<String, String> {
    let dir = ops::directory::ShardDirectory::new(&redis.url(), PREFIX, Duration::from_secs(2))
        .expect("a directory");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let shards = dir.shards().unwrap_or_default();
        let ready: BTreeMap<String, String> = shards
            .iter()
            .filter(|s| s.alive && s.state == "ready")
            .map(|s| (s.ws.clone(), s.id.clone()))
            .collect();
        if ready.len() == n {
            return ready;
        }
        assert!(Instant::now() < deadline, "shards not ready: {shards:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn cluster_config(redis: &RedisServer, shards: [&Shard; 2], map: &str, share: f64) -> Config {
    let mut cfg = Config::with_urls(&[&shards[0].url(), &shards[1].url()]).expect("valid");
    short_run(&mut cfg, 6, 1);
    cfg.maps = vec![map.to_string()];
    cfg.directory = Some(loadbot::config::DirectoryArgs {
        redis: redis.url(),
        prefix: PREFIX.into(),
    });
    cfg.remote_share = share;
    cfg.validate().expect("a valid cluster config");
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_directory_bots_go_to_the_owner_or_away_from_it() {
    let redis = RedisServer::start();
    let a = cluster_shard(&redis, "lb-a");
    let b = cluster_shard(&redis, "lb-b");
    let ids = wait_ready(&redis, 2);
    let id_of = |s: &Shard| ids[&s.ws.to_string()].clone();

    // No lease for "lobby" yet: the owner is the rendezvous choice.
    let owner_id = ["lb-a", "lb-b"]
        .into_iter()
        .max_by_key(|id| (protocol::peer::rendezvous("lobby", id), id.to_string()))
        .expect("two ids");
    let (owner, other) = if id_of(&a) == owner_id {
        (&a, &b)
    } else {
        (&b, &a)
    };

    let s = loadbot::run(cluster_config(&redis, [&a, &b], "lobby", 0.0))
        .await
        .expect("the all-local run completes");
    assert_eq!(s.config.placement, "owners");
    assert_eq!(s.config.owners_from, vec![OwnerSource::Rendezvous]);
    assert_eq!(s.bots_joined, 6, "{s:#?}\n{}", owner.log_tail());
    let on = |s: &loadbot::Summary, shard: &Shard| {
        s.shards
            .iter()
            .find(|f| f.url == shard.url())
            .cloned()
            .expect("listed")
    };
    assert_eq!(on(&s, owner).bots, 6);
    assert_eq!(on(&s, other).bots, 0);
    assert_eq!(hellos(owner), 6, "{}", owner.log_tail());
    assert_eq!(hellos(other), 0);

    // Every bot remote: all on the other shard, counted as remote.
    let s = loadbot::run(cluster_config(&redis, [&a, &b], "lobby", 1.0))
        .await
        .expect("the all-remote run completes");
    assert_eq!(on(&s, other).bots, 6);
    assert_eq!(on(&s, other).remote_bots, 6);
    assert_eq!(on(&s, other).connects_ok, 6);
    assert_eq!(hellos(other), 6, "{}", other.log_tail());
    assert_eq!(hellos(owner), 6, "no new session on the owner");

    // A lease, where there is one, says who owns the room: "arena" leased
    // to one shard (as a shard that took it would write it).
    let leased_to = other;
    let mut con = redis::Client::open(redis.url())
        .expect("a client")
        .get_connection()
        .expect("a connection");
    let _: () = redis::cmd("SET")
        .arg(format!("{PREFIX}:room:arena"))
        .arg(format!("{}:7", id_of(leased_to)))
        .arg("PX")
        .arg(60_000)
        .query(&mut con)
        .expect("SET the lease");
    let before = hellos(leased_to);
    let s = loadbot::run(cluster_config(&redis, [&a, &b], "arena", 0.0))
        .await
        .expect("the leased run completes");
    assert_eq!(s.config.owners_from, vec![OwnerSource::Lease]);
    assert_eq!(on(&s, leased_to).bots, 6);
    assert_eq!(hellos(leased_to) - before, 6);
}

/// The binary with `args`: (exit code, stderr).
fn loadbot(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadbot"))
        .args(args)
        .env_remove("LOADBOT_SECRET")
        .output()
        .expect("run loadbot");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_cluster_flags_are_refused_with_the_flag_named() {
    let two = ["--url", "ws://127.0.0.1:1", "--url", "ws://127.0.0.1:2"];
    let cases: [(&[&str], &str); 6] = [
        (&["--remote-share", "1.5"], "--remote-share must be"),
        (&["--remote-share=-0.1"], "--remote-share must be"),
        (&["--remote-share", "0.5"], "--remote-share needs --redis"),
        (
            &["--redis", "redis://127.0.0.1:1/0"],
            "--redis needs --maps",
        ),
        (
            &[
                "--redis",
                "redis://127.0.0.1:1/0",
                "--maps",
                "lobby",
                "--cluster-prefix",
                "",
            ],
            "--cluster-prefix",
        ),
        (&["--url", "ws://127.0.0.1:1"], "given twice"),
    ];
    for (extra, want) in cases {
        let mut args = two.to_vec();
        args.extend_from_slice(extra);
        let (code, stderr) = loadbot(&args);
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    // One URL: remote bots need another shard.
    let (code, stderr) = loadbot(&[
        "--url",
        "ws://127.0.0.1:1",
        "--redis",
        "redis://127.0.0.1:1/0",
        "--maps",
        "lobby",
        "--remote-share",
        "0.5",
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("at least two --url"), "{stderr}");
    // Not a number: clap's own refusal (exit 2).
    let (code, stderr) = loadbot(&["--url", "ws://127.0.0.1:1", "--remote-share", "half"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--remote-share"), "{stderr}");
    // A directory that does not answer: the run cannot start (exit 1).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let redis = format!("redis://127.0.0.1:{port}/0");
    let mut args = two.to_vec();
    args.extend([
        "--redis",
        &redis,
        "--maps",
        "lobby",
        "--connect-timeout",
        "2s",
    ]);
    let (code, stderr) = loadbot(&args);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("directory"), "{stderr}");
}

/// A plain HTTP/1.0 POST with the admin token on loopback; the status line.
fn admin_post(addr: std::net::SocketAddr, path: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .expect("connect to the shard");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.lines().next().unwrap_or_default().to_string()
}

/// A shard drained mid-run closes its bots' sessions with 4008: each bot
/// resumes at once, with its token, on the other shard (the next
/// `--url`), as the same player; none backs off, none is left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_of_a_draining_shard_resume_at_once_on_the_next_url() {
    const TOKEN: &str = "loadbot-drain-test-admin-token";
    let redis = RedisServer::start();
    let url = redis.url();
    let cluster = |id: &str| {
        Shard::start_with(
            &[],
            &[
                ("TESSERA_CLUSTER__REDIS", url.as_str()),
                ("TESSERA_CLUSTER__SECRET", SECRET),
                ("TESSERA_CLUSTER__SHARD_ID", id),
                ("TESSERA_CLUSTER__KEY_PREFIX", PREFIX),
                ("TESSERA_CLUSTER__PEER_ADDR", "127.0.0.1:0"),
                ("TESSERA_ADMIN__TOKEN", TOKEN),
            ],
        )
    };
    let (a, b) = (cluster("drain-a"), cluster("drain-b"));
    wait_ready(&redis, 2);
    let mut cfg = Config::with_urls(&[&a.url(), &b.url()]).expect("valid");
    short_run(&mut cfg, 6, 2);
    cfg.duration = Duration::from_secs(8);
    let http = a.http;
    let drain = std::thread::spawn(move || {
        // Once every bot played a while (the ramp is 0.3 s).
        std::thread::sleep(Duration::from_secs(3));
        admin_post(http, "/admin/shards/drain", TOKEN)
    });
    let s = loadbot::run(cfg).await.expect("the run completes");
    let status = drain.join().expect("the drain request");
    assert!(status.contains(" 200"), "drain: {status}\n{}", a.log_tail());

    // Bots 0, 2, 4 were on a: each told to move once, each back as itself.
    assert_eq!(s.moved, 3, "{s:#?}\n{}", a.log_tail());
    assert_eq!(s.disconnects_by_close_code.get("4008"), Some(&3), "{s:#?}");
    assert_eq!(s.resumed_same_player, 3, "{s:#?}\n{}", b.log_tail());
    assert_eq!(s.resumed_new_player, 0, "{s:#?}");
    assert_eq!(s.resumes_unfinished, 0, "{s:#?}");
    assert_eq!(s.connect_failures, 0, "{s:#?}");
    // The three moved bots opened their second session on b.
    assert_eq!(hellos(&b), 6, "{}", b.log_tail());
}
