//! The shard's directory task ("directory", a permanent child of the task
//! supervisor): registration, heartbeats, lease renewal, and the way out.
//!
//! ```text
//! every cluster.heartbeat_ms: register (until it succeeds), then the whole
//!                              record with the load, alive key PX shard_ttl_ms
//! every cluster.shard_ttl_ms:  other shards' alive keys: a dead one is reported
//!                              once (`shard_down`), removed after
//!                              dead_shard_keep_ms
//! every cluster.renew_ms:      leases past deadline - renew_ms → LeaseNotice::Expiring
//!                              one RENEW script for every held lease:
//!                                renewed · re-asserted (→ Reasserted if it had
//!                                expired) · lost (→ LeaseNotice::Lost)
//! Redis down:                  every op times out (redis_timeout_ms), logged once
//!                              on the way down and once on the way back; leases
//!                              keep their deadlines and expire as above
//! ```
//!
//! A missed heartbeat or renewal is never acted on by itself: only a
//! lease's deadline (the last renewal sent plus `cluster.lease_ms`, minus
//! one renewal period) is. Everything the task knows lives in the
//! [`Directory`] handle, so a restarted task carries on where the last
//! one stopped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::directory::{Directory, LeaseNotice, ShardLoad, ShardRecord};
use super::{EventKind, ShardState};

/// What the heartbeat reports: sessions and rooms (the CPU figure is
/// measured here and replaces the one given).
pub type LoadSource = Arc<dyn Fn() -> ShardLoad + Send + Sync>;

/// Run until `stop_rx` is set: register `record`, heartbeat, renew.
pub async fn run_agent(
    dir: Directory,
    record: ShardRecord,
    load: LoadSource,
    mut stop_rx: watch::Receiver<bool>,
) {
    let settings = dir.settings().clone();
    let mut heartbeat = tokio::time::interval(settings.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reap = tokio::time::interval(settings.shard_ttl);
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renew = tokio::time::interval(settings.renew);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cpu = CpuMeter::new();
    let mut registered = false;
    let mut health = Health::default();
    loop {
        tokio::select! {
            _ = stopped(&mut stop_rx) => break,
            _ = heartbeat.tick() => {
                let result = if registered {
                    let mut now = load();
                    now.cpu = cpu.sample();
                    dir.heartbeat(now).await
                } else {
                    dir.register(record.clone()).await
                };
                registered |= result.is_ok();
                health.observe("heartbeat", result.err());
            }
            _ = renew.tick() => {
                renew_round(&dir, settings.renew, &mut health).await;
            }
            _ = reap.tick(), if registered => {
                match dir.reap_dead_shards().await {
                    Ok(reaped) => {
                        for id in &reaped.down {
                            tracing::warn!(shard = %id, "shard found dead: no heartbeat");
                        }
                        for id in &reaped.removed {
                            tracing::info!(shard = %id, "dead shard's record removed");
                        }
                        health.observe("reap", None);
                    }
                    Err(e) => health.observe("reap", Some(e)),
                }
            }
        }
    }
}

/// Wait for the stop signal (the `Ref` it yields must not live across
/// the select's other awaits: it is not `Send`).
async fn stopped(stop_rx: &mut watch::Receiver<bool>) {
    let _ = stop_rx.wait_for(|s| *s).await;
}

/// One renewal round: first tell the room side which leases could not be
/// renewed in time, then renew all of them in one batch.
async fn renew_round(dir: &Directory, margin: Duration, health: &mut Health) {
    for (room, epoch) in dir.mark_expiring(margin) {
        tracing::warn!(%room, epoch, "room lease not renewed before its deadline");
        dir.notify(LeaseNotice::Expiring { room, epoch });
    }
    if dir.held().is_empty() {
        // Nothing to renew, nothing learnt about Redis.
        return;
    }
    match dir.renew_all().await {
        Ok(report) => {
            health.observe("renew", None);
            for room in report.reasserted {
                let epoch = dir.held_epoch(&room).unwrap_or_default();
                tracing::info!(%room, epoch, "room lease re-asserted");
                dir.notify(LeaseNotice::Reasserted { room, epoch });
            }
            for (room, epoch) in report.lost {
                tracing::warn!(%room, epoch, "room lease lost to another shard");
                dir.notify(LeaseNotice::Lost { room, epoch });
            }
        }
        Err(e) => health.observe("renew", Some(e)),
    }
}

/// Leave the cluster at shutdown: draining (no placement here any more),
/// every lease released (an event each), the alive key deleted and
/// `shard_down` written. Best effort within `deadline`: a Redis that is
/// down leaves the leases to expire on their own.
pub async fn leave(dir: &Directory, deadline: Duration) {
    let work = async {
        if dir.state() != ShardState::Draining {
            dir.set_state(ShardState::Draining).await?;
        }
        for (room, epoch, _) in dir.held() {
            if dir.release_room(&room).await.is_ok() {
                let _ = dir
                    .event(
                        EventKind::RoomReleased,
                        &room.to_string(),
                        &format!("epoch {epoch}"),
                    )
                    .await;
            }
        }
        dir.deregister().await
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(Ok(())) => tracing::info!(shard = %dir.shard(), "left the cluster"),
        Ok(Err(e)) => tracing::warn!(error = %e, "leaving the cluster: leases left to expire"),
        Err(_) => tracing::warn!("leaving the cluster timed out: leases left to expire"),
    }
}

/// Logs Redis going away and coming back once each, not every failure.
#[derive(Default)]
struct Health {
    down_since: Option<Instant>,
}

impl Health {
    fn observe(&mut self, op: &str, error: Option<super::DirectoryError>) {
        match (error, self.down_since) {
            (Some(e), None) => {
                tracing::warn!(op, error = %e, "cluster directory unavailable");
                self.down_since = Some(Instant::now());
            }
            (None, Some(since)) => {
                tracing::info!(
                    down_ms = since.elapsed().as_millis() as u64,
                    "cluster directory answers again"
                );
                self.down_since = None;
            }
            (Some(e), Some(_)) => tracing::debug!(op, error = %e, "directory still unavailable"),
            (None, None) => {}
        }
    }
}

/// This process's CPU use between two samples, in cores, from
/// `/proc/self/stat` (0 where that cannot be read).
struct CpuMeter {
    last: Option<(Instant, u64)>,
}

/// Linux reports CPU time in clock ticks of 1/100 s (USER_HZ) on every
/// architecture it runs on.
const TICKS_PER_SEC: f64 = 100.0;

impl CpuMeter {
    fn new() -> CpuMeter {
        CpuMeter {
            last: cpu_ticks().map(|t| (Instant::now(), t)),
        }
    }

    fn sample(&mut self) -> f64 {
        let Some(ticks) = cpu_ticks() else {
            return 0.0;
        };
        let now = Instant::now();
        let cores = match self.last {
            Some((at, before)) if now > at => {
                ticks.saturating_sub(before) as f64
                    / TICKS_PER_SEC
                    / now.duration_since(at).as_secs_f64()
            }
            _ => 0.0,
        };
        self.last = Some((now, ticks));
        cores
    }
}

/// utime + stime of this process, in clock ticks.
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces; fields after its ')' are
    // plain. utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_measured_from_proc() {
        assert!(cpu_ticks().is_some());
        let mut meter = CpuMeter::new();
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        let cores = meter.sample();
        assert!((0.0..=64.0).contains(&cores), "{cores}");
    }
}
