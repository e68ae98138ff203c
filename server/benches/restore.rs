//! Time from a room's panic to its players' resync, in a room of 100
//! players on real sockets (issue: let it crash, "measure").
//!
//!     cargo bench -p server --bench restore
//!     cargo bench -p server --bench restore -- --players 100 --rounds 300
//!
//! Each round injects a panic through the admin API and waits until every
//! player has received the restart notice that follows its full resync.
//! Reported: per player (panic request sent -> that player's notice) and per
//! room (-> the last player's notice), as percentiles. Loopback only; the
//! shard runs in this process, so its CPU is shared with the 100 clients.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use protocol::msg::{Hello, Join};
use protocol::{decode_server, encode_client, ClientMsg, NoticeCode, ServerMsg, PROTOCOL_VERSION};
use server::config::{Config, MapConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const ADMIN: &str = "restore-bench-admin-token";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Shared {
    notices: AtomicUsize,
    round_start: Mutex<Instant>,
    per_player: Mutex<Histogram<u64>>,
    wake: tokio::sync::Notify,
}

async fn player(
    addr: std::net::SocketAddr,
    i: usize,
    shared: Arc<Shared>,
    ready: Arc<AtomicUsize>,
) {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .expect("connect");
    let send = |msg: ClientMsg| Message::Binary(encode_client(&msg).into());
    ws.send(send(ClientMsg::Hello(Hello {
        version: PROTOCOL_VERSION,
        token: None,
        resume: None,
        name: Some(format!("p{i}")),
    })))
    .await
    .expect("hello");
    ws.send(send(ClientMsg::Join(Join {
        map: "bench".into(),
    })))
    .await
    .expect("join");
    while let Some(Ok(frame)) = ws.next().await {
        let Message::Binary(bytes) = frame else {
            continue;
        };
        match decode_server(&bytes, 1 << 20).expect("server frames decode") {
            ServerMsg::Joined(_) => {
                ready.fetch_add(1, Ordering::SeqCst);
            }
            ServerMsg::Notice(n) if n.code == NoticeCode::RoomRestarted.as_u16() => {
                let took = shared.round_start.lock().elapsed();
                shared
                    .per_player
                    .lock()
                    .record(took.as_micros() as u64)
                    .expect("latency in range");
                shared.notices.fetch_add(1, Ordering::SeqCst);
                shared.wake.notify_one();
            }
            _ => {}
        }
    }
}

async fn panic_room(http: std::net::SocketAddr) {
    let body = r#"{"map":"bench","kind":"panic"}"#;
    let request = format!(
        "POST /admin/faults/room HTTP/1.1\r\nHost: {http}\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut stream = tokio::net::TcpStream::connect(http)
        .await
        .expect("admin connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("admin write");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("admin read");
    assert!(response.contains(r#""crashed":true"#), "{response}");
}

fn report(name: &str, h: &Histogram<u64>) {
    let ms = |v: u64| v as f64 / 1000.0;
    println!(
        "{name:<28} n={:<6} p50={:>7.2} ms  p90={:>7.2} ms  p99={:>7.2} ms  max={:>7.2} ms",
        h.len(),
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.9)),
        ms(h.value_at_quantile(0.99)),
        ms(h.max()),
    );
}

fn main() {
    // Hundreds of injected panics would each print a backtrace; keep the
    // output to the figures (other panics still print).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"injected fault") {
            default_hook(info);
        }
    }));
    let players = arg("--players", 100);
    let rounds = arg("--rounds", 200);
    let mut config = Config::default();
    config.server.ws_addr = "127.0.0.1:0".parse().expect("addr");
    config.server.http_addr = "127.0.0.1:0".parse().expect("addr");
    config.admin.token = ADMIN.into();
    config.admin.fault_injection = true;
    config.supervision.max_restarts = u32::MAX;
    config.limits.control_per_sec = 1_000;
    config.maps = vec![MapConfig {
        name: "bench".into(),
        spawn_radius: 200.0,
        ..MapConfig::default()
    }];
    config.supervision.fallback_map = "bench".into();
    let data = tempfile::tempdir().expect("temp dir");
    config.store.embedded.dir = data.path().to_path_buf();
    let shard = server::start(config).expect("shard starts");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("client runtime");
    runtime.block_on(async {
        let shared = Arc::new(Shared {
            notices: AtomicUsize::new(0),
            round_start: Mutex::new(Instant::now()),
            per_player: Mutex::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
            ),
            wake: tokio::sync::Notify::new(),
        });
        let ready = Arc::new(AtomicUsize::new(0));
        for i in 0..players {
            tokio::spawn(player(shard.ws_addr, i, shared.clone(), ready.clone()));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while ready.load(Ordering::SeqCst) < players {
            assert!(Instant::now() < deadline, "players did not all join");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut per_room = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
        for round in 1..=rounds {
            let start = Instant::now();
            *shared.round_start.lock() = start;
            panic_room(shard.http_addr).await;
            let want = round * players;
            let deadline = start + Duration::from_secs(10);
            while shared.notices.load(Ordering::SeqCst) < want {
                let left = deadline.saturating_duration_since(Instant::now());
                assert!(
                    !left.is_zero(),
                    "round {round}: not every player was resynced"
                );
                let _ = tokio::time::timeout(left, shared.wake.notified()).await;
            }
            per_room
                .record(start.elapsed().as_micros() as u64)
                .expect("latency in range");
            // Let the room tick once before the next crash.
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        println!("room restore: {players} players, {rounds} panics (release build, one process)");
        report("panic -> each player resynced", &shared.per_player.lock());
        report("panic -> whole room resynced", &per_room);
    });
    shard.shutdown();
}
