//! Store benchmark, against both backends (MongoDB = SecantusDB on an
//! ephemeral loopback port; `scripts/secantus.sh` installs it):
//!
//! - volatile updates absorbed per second (one key set updated in a tight
//!   loop by several threads while the flusher runs), how many documents
//!   that became after coalescing, and the flush batch sizes;
//! - durable write latency (one `Adjust` at a time; p50, p99, max, with
//!   hdrhistogram), and throughput with 16 in flight;
//! - a bulk flush of 10,000 dirty keys.
//!
//! ```sh
//! cargo bench -p server --bench store                      # both backends
//! cargo bench -p server --bench store -- --backend embedded --seconds 3
//! cargo bench -p server --bench store -- --backend mongodb --w1   # w=1, j=false
//! ```

#[path = "../tests/store_support/mod.rs"]
mod store_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use server::store::{Adjust, DurableOp, Persister, PlayerState, StoreConfig};
use store_support::{Fixture, Kind};

struct Args {
    kinds: Vec<Kind>,
    seconds: u64,
    threads: usize,
    keys: usize,
    /// Mongo: w=1, j=false instead of the default majority + journal.
    fast_acks: bool,
}

fn args() -> Args {
    let mut a = Args {
        kinds: vec![Kind::Embedded, Kind::Mongo],
        seconds: 5,
        threads: 2,
        keys: 1_000,
        fast_acks: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--backend" => {
                a.kinds = match it.next().as_deref() {
                    Some("embedded") => vec![Kind::Embedded],
                    Some("mongodb") => vec![Kind::Mongo],
                    Some("both") => vec![Kind::Embedded, Kind::Mongo],
                    other => panic!("--backend embedded|mongodb|both, not {other:?}"),
                }
            }
            "--seconds" => a.seconds = it.next().and_then(|s| s.parse().ok()).expect("--seconds N"),
            "--threads" => a.threads = it.next().and_then(|s| s.parse().ok()).expect("--threads N"),
            "--keys" => a.keys = it.next().and_then(|s| s.parse().ok()).expect("--keys N"),
            "--w1" => a.fast_acks = true,
            // cargo bench passes --bench.
            _ => {}
        }
    }
    a
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    for kind in &args.kinds {
        rt.block_on(bench(*kind, &args));
    }
}

fn name(kind: Kind) -> &'static str {
    match kind {
        Kind::Embedded => "embedded (redb)",
        Kind::Mongo => "mongodb (SecantusDB 0.7.0b3, loopback)",
    }
}

async fn bench(kind: Kind, args: &Args) {
    let mut fx = Fixture::new(kind);
    let mut config = StoreConfig {
        flush_interval_ms: 1_000,
        durable_timeout_ms: 5_000,
        flush_timeout_ms: 30_000,
        ..fx.config()
    };
    if args.fast_acks {
        config.mongodb.write_concern = "1".into();
        config.mongodb.journal = false;
    }
    let p = fx.persister(config).await;
    println!("\n== {} ==", name(kind));

    volatile(&p, args).await;
    durable(&p, args).await;
    bulk_flush(&p).await;

    let report = p.shutdown(Duration::from_secs(30)).await;
    assert!(!report.deadline_hit, "{report:?}");
}

async fn volatile(p: &Persister, args: &Args) {
    p.flush().await.expect("flush");
    let before = p.stats();
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.threads)
        .map(|t| {
            let h = p.handle();
            let stop = stop.clone();
            let calls = calls.clone();
            let keys: Vec<String> = (0..args.keys).map(|k| format!("v{k}")).collect();
            std::thread::spawn(move || {
                let mut n = 0_u64;
                let mut state = PlayerState {
                    map: "plains".into(),
                    ..PlayerState::default()
                };
                while !stop.load(Ordering::Relaxed) {
                    for key in keys.iter().skip(t).step_by(2) {
                        state.x = n as f32;
                        h.player_state(key, state.clone());
                        n += 1;
                    }
                }
                calls.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a volatile worker");
    }
    let elapsed = started.elapsed();
    p.flush().await.expect("flush");
    let after = p.stats();
    let updates = after.volatile_updates - before.volatile_updates;
    let written = after.volatile_written - before.volatile_written;
    let batches = after.batches - before.batches;
    println!(
        "volatile: {:.2} M updates/s absorbed ({} threads, {} keys, {:.1} s); \
         {} written in {} batches = {:.0} updates per write; \
         batch mean {:.0}, largest {}",
        updates as f64 / elapsed.as_secs_f64() / 1e6,
        args.threads,
        args.keys,
        elapsed.as_secs_f64(),
        written,
        batches,
        updates as f64 / written.max(1) as f64,
        written as f64 / batches.max(1) as f64,
        after.largest_batch,
    );
}

async fn durable(p: &Persister, args: &Args) {
    p.load_profile("rich", "Rich").await.expect("profile");
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let started = Instant::now();
    let mut n = 0_u64;
    let budget = Duration::from_secs(args.seconds);
    while started.elapsed() < budget && n < 20_000 {
        n += 1;
        let t0 = Instant::now();
        p.durable(DurableOp::Adjust(Adjust {
            op_id: format!("seq{n}"),
            player: "rich".into(),
            currency: 1,
            ..Adjust::default()
        }))
        .await
        .expect("durable");
        hist.record(t0.elapsed().as_micros().max(1) as u64)
            .expect("in range");
    }
    let elapsed = started.elapsed();
    println!(
        "durable, one at a time: {n} ops, {:.0} ops/s; p50 {} µs, p99 {} µs, max {} µs",
        n as f64 / elapsed.as_secs_f64(),
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.99),
        hist.max(),
    );

    // 16 in flight, each on its own player (no contention on a document).
    for i in 0..16 {
        p.load_profile(&format!("c{i}"), "c")
            .await
            .expect("profile");
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let started = Instant::now();
    let mut done = 0_u64;
    let mut round = 0;
    while started.elapsed() < budget && done < 50_000 {
        round += 1;
        let ops: Vec<_> = (0..16)
            .map(|i| {
                let op = p.durable(DurableOp::Adjust(Adjust {
                    op_id: format!("par{round}"),
                    player: format!("c{i}"),
                    currency: 1,
                    ..Adjust::default()
                }));
                async move {
                    let t0 = Instant::now();
                    op.await.expect("durable");
                    t0.elapsed()
                }
            })
            .collect();
        for took in futures_util::future::join_all(ops).await {
            hist.record(took.as_micros().max(1) as u64)
                .expect("in range");
            done += 1;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "durable, 16 in flight: {done} ops, {:.0} ops/s; p50 {} µs, p99 {} µs",
        done as f64 / elapsed.as_secs_f64(),
        hist.value_at_quantile(0.50),
        hist.value_at_quantile(0.99),
    );
}

async fn bulk_flush(p: &Persister) {
    p.flush().await.expect("flush");
    let before = p.stats();
    for k in 0..10_000 {
        p.player_state(
            &format!("bulk{k}"),
            PlayerState {
                map: "lobby".into(),
                x: k as f32,
                ..PlayerState::default()
            },
        );
    }
    let t0 = Instant::now();
    p.flush().await.expect("flush");
    let took = t0.elapsed();
    let after = p.stats();
    let batches = after.batches - before.batches;
    println!(
        "flush of 10,000 dirty keys: {:.0} ms = {:.0} docs/s, {} batches (store.flush_batch_max {})",
        took.as_secs_f64() * 1e3,
        10_000.0 / took.as_secs_f64(),
        batches,
        StoreConfig::default().flush_batch_max,
    );
}
