//! `[supervision]`: how rooms and long-lived tasks are restarted and
//! players kept.

use serde::{Deserialize, Serialize};

/// The longest restart backoff a task may be given: past it, a task is as
/// good as given up, without saying so.
pub(super) const MAX_CHILD_BACKOFF_MS: u64 = 3_600_000;

/// Extra room threads are a stop-gap while others are stuck, not a pool.
pub(super) const MAX_EXTRA_ARBITERS: usize = 64;

/// Let it crash: how rooms and long-lived tasks are restarted and players
/// kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisionConfig {
    /// A room restarted more than `max_restarts` times within
    /// `restart_window_ms` is marked failed (OTP's MaxR in MaxT).
    pub max_restarts: u32,
    pub restart_window_ms: u64,
    /// Where the players of a failed room are moved; empty: to no map.
    pub fallback_map: String,
    /// A room whose tick is this late is handled as crashed (stalled) and
    /// restarted on another thread.
    pub stall_timeout_ms: u64,
    /// How often the watchdog looks.
    pub watchdog_interval_ms: u64,
    /// Room Arbiters (threads) the watchdog may start, at most at a time,
    /// when every room thread is blocked; each is retired once a stuck
    /// thread answers again. 0: never (a stalled room then waits for a
    /// live thread).
    pub max_extra_arbiters: usize,
    /// A disconnected player keeps its seat this long, for a resume.
    pub resume_grace_ms: u64,
    /// Long-lived tasks (gateway, HTTP, sampler, watchdog, persister): the
    /// first restart waits `child_backoff_min_ms`, each next one twice as
    /// long up to `child_backoff_max_ms` (with jitter).
    pub child_backoff_min_ms: u64,
    pub child_backoff_max_ms: u64,
    /// A task that ran this long before it ended restarts at the minimum
    /// backoff again.
    pub child_backoff_reset_ms: u64,
    /// A task restarted more than `child_max_restarts` times within
    /// `child_restart_window_ms` is given up (logged, counted, and
    /// `/healthz` says `degraded`). 0: given up at its first crash.
    pub child_max_restarts: u32,
    pub child_restart_window_ms: u64,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            max_restarts: 3,
            restart_window_ms: 5_000,
            fallback_map: "lobby".into(),
            stall_timeout_ms: 1_000,
            watchdog_interval_ms: 100,
            max_extra_arbiters: 2,
            resume_grace_ms: 30_000,
            child_backoff_min_ms: 100,
            child_backoff_max_ms: 10_000,
            child_backoff_reset_ms: 30_000,
            child_max_restarts: 5,
            child_restart_window_ms: 60_000,
        }
    }
}
