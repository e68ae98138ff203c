//! The run: resolve the target once, start the bots over the ramp, sample the
//! stats every second, stop everyone at the end, and build the [`Summary`].
//!
//! ```text
//! run_until(cfg, shutdown)
//!   ├─ resolve every --url once; place the bots (placement: round robin,
//!   │                       or room owners from --redis)
//!   ├─ spawner task: bot i starts at t0 + ramp * i / N   (JoinSet of bots)
//!   ├─ sampler (this task): every 1 s -> Sample, progress; until the end,
//!   │                       `shutdown` resolving, or every bot gone
//!   └─ stop: watch -> true; bots close (<= 2 s); stragglers are aborted
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use crate::bot::{run_bot, Shared};
use crate::config::Config;
use crate::ledger::{check, events, EventLog, LedgerReport};
use crate::progress::Progress;
use crate::stats::{Counters, Latency};
use crate::summary::{RunFacts, Sample, Summary};
use crate::sys;

/// Time the bots get to close cleanly once the run is over, before the
/// stragglers are aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs the swarm described by `cfg` to its end.
pub async fn run(cfg: Config) -> anyhow::Result<Summary> {
    run_until(cfg, std::future::pending()).await
}

/// Runs the swarm until its end or until `shutdown` resolves (Ctrl-C in the
/// binary), whichever is first; the summary says whether it was interrupted.
pub async fn run_until(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<Summary> {
    cfg.validate()?;
    let mut addrs = Vec::with_capacity(cfg.targets.len());
    for target in &cfg.targets {
        addrs.push(resolve(&target.authority).await?);
    }
    let placement = crate::placement::place(&cfg).await?;
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    let cpu_at_start = sys::cpu_seconds();
    let mut shared = Shared::placed(cfg, addrs, placement);
    if let Some(path) = &shared.cfg.durable.events {
        shared.events = Some(EventLog::create(path, events::unix_ms())?);
    }
    let shared = Arc::new(shared);
    let cfg = &shared.cfg;
    for (shard, addr) in shared.shards.iter().zip(&shared.addrs) {
        tracing::info!(
            url = %shard.url, %addr, bots = shard.bots, remote_bots = shard.remote_bots,
            "shard URL"
        );
    }
    tracing::info!(
        bots = cfg.bots,
        rooms = cfg.rooms,
        scenario = cfg.scenario.name(),
        "starting swarm"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let spawner = tokio::spawn(spawn_bots(Arc::clone(&shared), stop_rx));
    let mut progress = Progress::new(cfg);

    let end = shared.t0 + cfg.run_length();
    let mut timeline = Vec::with_capacity(cfg.run_length().as_secs() as usize + 2);
    let mut last = Counters::default();
    let mut last_cpu = cpu_at_start;
    let mut clock =
        tokio::time::interval_at(shared.t0 + Duration::from_secs(1), Duration::from_secs(1));
    clock.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut interrupted = false;
    // Bounded: one pass per second until `end`.
    loop {
        tokio::select! {
            _ = clock.tick() => {}
            _ = tokio::time::sleep_until(end) => break,
            _ = &mut shutdown => {
                interrupted = true;
                break;
            }
        }
        let now = sys::cpu_seconds();
        let sample = sample(&shared, &mut last, now - last_cpu);
        last_cpu = now;
        progress.update(&sample, cfg.bots, last.error_frames + last.connect_failures);
        timeline.push(sample);
    }
    let elapsed_s = shared.t0.elapsed().as_secs_f64();
    let connected = shared.stats.bots_connected.load(Relaxed);
    let in_room = shared.stats.bots_in_room.load(Relaxed);
    progress.finish();

    let _ = stop_tx.send(true);
    let stop_deadline = Instant::now() + STOP_GRACE;
    match tokio::time::timeout_at(stop_deadline, spawner).await {
        Ok(Ok(mut bots)) => {
            let drained = tokio::time::timeout_at(stop_deadline, async {
                while bots.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    left = bots.len(),
                    "bots did not stop in time; aborting them"
                );
                bots.abort_all();
            }
        }
        Ok(Err(err)) => tracing::error!(%err, "the bot spawner failed"),
        Err(_) => tracing::warn!("the bot spawner did not stop in time"),
    }

    let facts = RunFacts {
        started_unix_ms,
        elapsed_s,
        interrupted,
        bots_connected_at_end: connected,
        bots_in_room_at_end: in_room,
        cpu_s: sys::cpu_seconds() - cpu_at_start,
        rss_kib: sys::rss_kib(),
        timeline,
    };
    let mut summary = Summary::build(&shared, facts);
    summary.ledger = settle(&shared).await?;
    if let Some(ledger) = summary.ledger.as_ref().filter(|l| l.verified && !l.clean()) {
        summary.thresholds.passed = false;
        summary.thresholds.violations.push(format!(
            "the store does not hold what the bots were told: {} lost ack(s), {} duplicated, \
             {} player(s) unreadable{}",
            ledger.lost_acks,
            ledger.duplicated,
            ledger.players_unreadable,
            ledger
                .first_unreadable
                .as_ref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        ));
    }
    Ok(summary)
}

/// After the bots stopped: flush the event log, write the ledger, and
/// check it against the store (`--verify-admin`).
async fn settle(shared: &Shared) -> anyhow::Result<Option<LedgerReport>> {
    let durable = &shared.cfg.durable;
    if let Some(events) = &shared.events {
        events.flush()?;
    }
    if durable.rate <= 0.0 {
        return Ok(None);
    }
    let book = shared.ledger.book();
    if let Some(path) = &durable.ledger {
        let text = serde_json::to_string_pretty(&book)?;
        std::fs::write(path, text)
            .with_context(|| format!("--ledger: cannot write {}", path.display()))?;
    }
    let stored = match &durable.verify_admin {
        Some(admin) => {
            let (admin, token) = (admin.clone(), durable.admin_token.clone());
            let players = check::players(&book);
            tokio::task::spawn_blocking(move || {
                check::read_stored(&admin, token.as_deref(), &players)
            })
            .await
            .context("the ledger check's reader")?
        }
        // Not checked: the counts of answers only.
        None => {
            let full = check::reconcile(&book, &Default::default());
            return Ok(Some(LedgerReport {
                verified: false,
                acked: full.acked,
                in_doubt: full.in_doubt,
                unanswered: full.unanswered,
                refused_by_code: full.refused_by_code,
                ..LedgerReport::default()
            }));
        }
    };
    Ok(Some(check::reconcile(&book, &stored)))
}

/// The target's address, looked up once so 10,000 bots do not each resolve it.
async fn resolve(authority: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(authority)
        .await
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} resolves to no address"))
}

/// Starts bot i at `t0 + ramp * i / N`; returns the set of running bots.
async fn spawn_bots(shared: Arc<Shared>, stop: watch::Receiver<bool>) -> JoinSet<()> {
    let mut bots = JoinSet::new();
    let n = shared.cfg.bots;
    let mut stop_wait = stop.clone();
    for i in 0..n {
        let at = shared.t0 + shared.cfg.ramp.mul_f64(f64::from(i) / f64::from(n));
        tokio::select! {
            _ = tokio::time::sleep_until(at) => {}
            _ = crate::bot::stopped(&mut stop_wait) => break,
        }
        bots.spawn(run_bot(i, Arc::clone(&shared), stop.clone()));
    }
    bots
}

/// The last second: counter deltas, gauges, window percentiles, own CPU.
fn sample(shared: &Shared, last: &mut Counters, cpu_s: f64) -> Sample {
    let stats = &shared.stats;
    let now = stats.counters();
    let counts = now.since(last);
    *last = now;
    let window = stats.take_window();
    let rtt = window[Latency::Rtt.index()];
    let mv = window[Latency::MoveVisible.index()];
    Sample {
        t_s: (shared.t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        bots_connected: stats.bots_connected.load(Relaxed),
        bots_in_room: stats.bots_in_room.load(Relaxed),
        counts,
        rtt_samples: rtt.count,
        rtt_p50_ms: rtt.p50,
        rtt_p99_ms: rtt.p99,
        rtt_max_ms: rtt.max,
        move_visible_p50_ms: mv.p50,
        move_visible_p99_ms: mv.p99,
        loadbot_cpu_pct: (cpu_s * 1000.0).round() / 10.0,
    }
}
