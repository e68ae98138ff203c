//! The live-migration benchmark (ignored by default: it measures, it does
//! not check): three shards in this process over a real `redis-server`,
//! one room of `MIGRATE_BENCH_PLAYERS` (100) bots spread over the three
//! shards plus background rooms, every bot a real WebSocket client moving
//! at 10 Hz, and `MIGRATE_BENCH_MOVES` (50) migrations of the big room
//! from shard to shard through the admin API.
//!
//! For every migration and every bot of the big room it takes the longest
//! interval between two consecutive updates that bot received around the
//! migration (from the request to 300 ms after the answer; the room ticks
//! at 20 Hz and everyone moves, so 50 ms is no pause at all) and the tick
//! numbers between them, then prints p50 / p99 / max of both, and of the
//! server's own `pause_ms`:
//!
//! ```text
//! cargo test --release -p server --test migrate_bench -- --ignored --nocapture
//! ```

mod common;
mod redis_support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Client, Event, TestShard};
use protocol::admin::{Role, RoomMigrated};
use protocol::{ClientMsg, ServerMsg};
use redis_support::RedisServer;
use server::config::{AdminToken, Config, MapConfig};
use server::ids::RoomId;

const OPERATOR: &str = "operator-token-for-the-benchmark";
const ID: [&str; 3] = ["a", "b", "c"];

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(redis: &RedisServer, id: &str) -> Config {
    let mut config = common::test_config();
    config.cluster.redis = redis.url();
    config.cluster.secret = "s".repeat(32);
    config.cluster.key_prefix = "mbench".into();
    config.cluster.shard_id = id.into();
    config.cluster.peer_addr = "127.0.0.1:0".parse().unwrap();
    config.cluster.redis_timeout_ms = 400;
    config.server.idle_timeout_ms = 120_000;
    config.auth.secret = "a".repeat(48);
    config.admin.tokens = vec![AdminToken {
        token: OPERATOR.into(),
        role: Role::Operator,
        name: "bench".into(),
    }];
    config.maps.push(MapConfig {
        name: "big".into(),
        width: 300.0,
        height: 300.0,
        spawn: [150.0, 150.0],
        spawn_radius: 100.0,
        speed: 10.0,
        view_radius: Some(60.0),
        max_players: Some(500),
        ..MapConfig::default()
    });
    for i in 0..4 {
        config.maps.push(MapConfig {
            name: format!("bg{i}"),
            width: 300.0,
            height: 300.0,
            spawn: [150.0, 150.0],
            spawn_radius: 100.0,
            speed: 10.0,
            view_radius: Some(60.0),
            ..MapConfig::default()
        });
    }
    config
}

/// What one bot received: when each update came and its tick.
type Trace = Vec<(Instant, u64)>;

/// A bot: joins `map` on `addr`, then walks (turning every half second)
/// and records its updates until `stop`.
async fn bot(
    addr: std::net::SocketAddr,
    name: String,
    map: String,
    stop: Arc<AtomicBool>,
    joined: tokio::sync::mpsc::Sender<()>,
) -> (Trace, usize) {
    let (mut client, _) = Client::welcomed(addr, &name).await;
    client
        .send(ClientMsg::Join(protocol::msg::Join { map: map.clone() }))
        .await;
    loop {
        match client.next_event(Duration::from_secs(60)).await {
            Some(Event::Msg(ServerMsg::Joined(_))) => break,
            Some(Event::Msg(_)) => {}
            _ => panic!("{name} did not join {map}"),
        }
    }
    let _ = joined.send(()).await;
    let mut trace = Trace::new();
    let mut noise = 0;
    let mut seq = 0u32;
    let mut moves = tokio::time::interval(Duration::from_millis(100));
    let phase = name.len() as u32;
    while !stop.load(Ordering::Relaxed) {
        tokio::select! {
            _ = moves.tick() => {
                seq += 1;
                let turn = (seq / 5 + phase) % 4;
                let (dx, dy) = [(1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0)][turn as usize];
                client.walk(seq, dx, dy).await;
            }
            event = client.next_event(Duration::from_millis(250)) => match event {
                Some(Event::Msg(ServerMsg::Update(u))) => trace.push((Instant::now(), u.tick)),
                Some(Event::Msg(ServerMsg::Joined(_) | ServerMsg::Notice(_) | ServerMsg::Error(_))) => noise += 1,
                Some(Event::Msg(_)) | None => {}
                Some(Event::Closed(code)) => panic!("{name} was disconnected ({code:?})"),
            },
        }
    }
    (trace, noise)
}

/// The longest interval between two consecutive updates of `trace` that
/// overlaps `[from, to]`, and the ticks between them.
fn gap_around(trace: &Trace, from: Instant, to: Instant) -> Option<(Duration, u64)> {
    trace
        .windows(2)
        .filter(|w| w[1].0 >= from && w[0].0 <= to)
        .map(|w| (w[1].0 - w[0].0, w[1].1.saturating_sub(w[0].1)))
        .max()
}

fn percentiles<T: Copy + Ord>(mut v: Vec<T>) -> (T, T, T) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), v[v.len() - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a benchmark: run with --ignored --nocapture (release build)"]
async fn migrate_a_played_room_back_and_forth_and_report_the_pauses() {
    let players = env_or("MIGRATE_BENCH_PLAYERS", 100);
    let background = env_or("MIGRATE_BENCH_BACKGROUND", 10);
    let moves = env_or("MIGRATE_BENCH_MOVES", 50);
    let redis = RedisServer::start();
    let mut shards: Vec<TestShard> = Vec::new();
    for id in ID {
        let config = config(&redis, id);
        shards.push(
            tokio::task::spawn_blocking(move || common::start(config))
                .await
                .unwrap(),
        );
    }
    let dir = shards[0].cluster.clone().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while dir
        .shards()
        .await
        .map(|s| s.iter().filter(|s| s.placeable()).count())
        .unwrap_or(0)
        < 3
    {
        assert!(Instant::now() < deadline, "three shards ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::channel(1024);
    let mut big = Vec::new();
    let mut others = Vec::new();
    for i in 0..players {
        let addr = shards[i % 3].ws_addr;
        big.push(tokio::spawn(bot(
            addr,
            format!("p{i}"),
            "big".into(),
            stop.clone(),
            joined_tx.clone(),
        )));
    }
    for room in 0..4 {
        for i in 0..background {
            let addr = shards[(i + room) % 3].ws_addr;
            others.push(tokio::spawn(bot(
                addr,
                format!("bg{room}-{i}"),
                format!("bg{room}"),
                stop.clone(),
                joined_tx.clone(),
            )));
        }
    }
    for _ in 0..players + 4 * background {
        joined_rx.recv().await.expect("every bot joins");
    }
    // Steady state first.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let room: RoomId = "big".parse().unwrap();
    let mut windows = Vec::new();
    let mut pauses = Vec::new();
    for n in 0..moves {
        let (owner, _) = dir.owner(&room).await.unwrap().expect("big is leased");
        let from = ID.iter().position(|s| *s == owner.as_str()).unwrap();
        let to = ID[(from + 1 + n % 2) % 3];
        let url = format!(
            "http://{}/admin/rooms/big/migrate?to={to}",
            shards[from].http_addr
        );
        let started = Instant::now();
        let (status, body) = common::http("POST", &url, Some(OPERATOR), "").await;
        let answered = Instant::now();
        assert_eq!(status, 200, "move {n}: {body}");
        let moved: RoomMigrated = serde_json::from_str(&body).unwrap();
        pauses.push((moved.pause_ms * 1000.0) as u64);
        windows.push((started, answered + Duration::from_millis(300)));
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut gaps = Vec::new();
    let mut tick_gaps = Vec::new();
    let mut noise = 0;
    let mut normal = Vec::new();
    for bot in big {
        let (trace, heard) = bot.await.unwrap();
        noise += heard;
        for (from, to) in &windows {
            if let Some((gap, ticks)) = gap_around(&trace, *from, *to) {
                gaps.push(gap);
                tick_gaps.push(ticks);
            }
        }
        normal.extend(trace.windows(2).map(|w| w[1].0 - w[0].0));
    }
    for bot in others {
        noise += bot.await.unwrap().1;
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (g50, g99, gmax) = percentiles(gaps.clone());
    let (t50, t99, tmax) = percentiles(tick_gaps);
    let (p50, p99, pmax) = percentiles(pauses);
    let (n50, n99, nmax) = percentiles(normal);
    println!(
        "migrations: {moves}; room: {players} players on 3 shards; background: 4 rooms x {background}"
    );
    println!(
        "gap each player saw around a migration ({} samples): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        gaps.len(),
        ms(g50),
        ms(g99),
        ms(gmax)
    );
    println!("  in ticks (20 Hz): p50 {t50}, p99 {t99}, max {tmax}");
    println!(
        "server pause (pause_ms): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        p50 as f64 / 1000.0,
        p99 as f64 / 1000.0,
        pmax as f64 / 1000.0
    );
    println!(
        "all update intervals of the room's players: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(n50),
        ms(n99),
        ms(nmax)
    );
    println!("joined / notices / errors seen by any bot after joining: {noise}");
    for shard in shards {
        tokio::task::spawn_blocking(move || drop(shard))
            .await
            .unwrap();
    }
}
