//! The shard's own small tasks (the sampler, the room watchdog's rounds,
//! loading bans) and the time each step of a stop may take.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::bans::Bans;
use crate::config::{ms, Config};
use crate::room::RoomSupervisor;
use crate::session;
use crate::store::PersisterHandle;

/// How long each step of a stop may take: its own setting, and in a drain
/// also a share of `cluster.drain_budget_ms` (sessions 40 %, the store's
/// flush 30 %, the tunnel and leaving the directory 15 % each), so the
/// process exits within the budget.
pub(super) struct StopBudget {
    /// Draining: the rooms' live migrations to other shards.
    pub migrate: Duration,
    pub sessions: Duration,
    pub flush: Duration,
    pub tunnel: Duration,
    pub leave: Duration,
}

impl StopBudget {
    pub fn new(config: &Config, draining: bool) -> StopBudget {
        let share = |percent: u64, own: u64| {
            if draining {
                ms(own.min(config.cluster.drain_budget_ms * percent / 100))
            } else {
                ms(own)
            }
        };
        StopBudget {
            migrate: share(20, config.cluster.drain_budget_ms),
            sessions: share(30, config.server.shutdown_grace_ms),
            flush: share(20, config.store.shutdown_flush_deadline_ms),
            tunnel: share(15, config.server.shutdown_grace_ms),
            leave: share(15, config.cluster.redis_wait_ms),
        }
    }
}

/// Once a second: the dispatcher's queue depths and rates, expired seats,
/// and the stored bans until they could be read once. Every
/// `METRICS_UPKEEP_EVERY` seconds the recorder's upkeep: histogram samples
/// are otherwise kept one by one until `/metrics` is scraped, and a shard
/// nobody scrapes grew by its room ticks' samples (about 1 MB a minute at
/// 100 rooms; BENCHMARKS.md, issue 12).
pub(super) async fn sample(shared: Arc<session::Deps>, mut stop_rx: watch::Receiver<bool>) {
    const METRICS_UPKEEP_EVERY: u64 = 5;
    let mut every = tokio::time::interval(Duration::from_secs(1));
    let mut seconds = 0u64;
    loop {
        tokio::select! {
            _ = stop_rx.wait_for(|s| *s) => break,
            _ = every.tick() => {
                shared.dispatcher.sample(1.0);
                shared.presence.prune();
                seconds += 1;
                if seconds % METRICS_UPKEEP_EVERY == 0 {
                    crate::metrics::prometheus().run_upkeep();
                }
            }
        }
        // Outside the select: its branches hold the stop signal's guard.
        if !shared.bans.loaded() {
            load_bans(&shared.persister, &shared.bans).await;
        }
    }
}

/// Read the stored bans into the table in force; a store that does not
/// answer yet is tried again by the sampler.
pub(super) async fn load_bans(persister: &PersisterHandle, bans: &Bans) {
    match persister
        .admin_call(|store| async move { store.load_bans().await })
        .await
    {
        Ok(list) => {
            tracing::info!(bans = list.len(), "bans loaded");
            bans.load(list);
        }
        Err(err) => tracing::warn!(error = %err, "bans not loaded yet; retrying"),
    }
}

/// The room watchdog's rounds (see [`RoomSupervisor::watchdog`]).
pub(super) async fn watch_rooms(
    rooms: Arc<RoomSupervisor>,
    every: Duration,
    mut stop_rx: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = stop_rx.wait_for(|s| *s) => break,
            _ = every.tick() => rooms.watchdog(),
        }
    }
}
