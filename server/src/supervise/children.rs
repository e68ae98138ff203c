//! A supervised child: its restart type, its state, the supervisor's
//! settings, and how a supervision ended.

use std::future::Future;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::Serialize;

use crate::config::{ms, SupervisionConfig};

/// When a child is restarted (OTP's restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always restarted.
    Permanent,
    /// Restarted after a panic, not after returning normally.
    Transient,
    /// Never restarted.
    Temporary,
}

impl Restart {
    pub(super) fn restarts_after(self, exit: &Exit) -> bool {
        match (self, exit) {
            (Restart::Permanent, _) => true,
            (Restart::Transient, Exit::Panicked(_)) => true,
            (Restart::Transient, Exit::Returned | Exit::Abandoned) => false,
            (Restart::Temporary, _) => false,
        }
    }
}

/// Where a child stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildState {
    /// Running.
    Up,
    /// Ended; waiting out its backoff before the next start.
    Restarting,
    /// Ended and not restarted: shutdown, or a normal end its restart type
    /// accepts.
    Stopped,
    /// A temporary child that panicked: by its type it stays down.
    Crashed,
    /// Given up: restarted too often within the window.
    Failed,
}

impl ChildState {
    pub fn name(self) -> &'static str {
        match self {
            ChildState::Up => "up",
            ChildState::Restarting => "restarting",
            ChildState::Stopped => "stopped",
            ChildState::Crashed => "crashed",
            ChildState::Failed => "failed",
        }
    }
}

/// How one run of a child ended.
#[derive(Debug)]
pub(super) enum Exit {
    Returned,
    Panicked(String),
    /// Still running `shutdown` after the stop signal; dropped.
    Abandoned,
}

/// The supervisor's knobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// First restart delay; each restart doubles it up to `backoff_max`.
    /// The delay drawn is in the upper half of that, for jitter.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// A child that ran this long before ending restarts at `backoff_min`.
    pub backoff_reset: Duration,
    /// More restarts than this within `restart_window` give the child up.
    pub max_restarts: usize,
    pub restart_window: Duration,
    /// How long a child may take to return after the stop signal.
    pub shutdown: Duration,
}

impl Settings {
    /// The `supervision.child_*` fields; `shutdown` is the caller's (10 s
    /// until set).
    pub fn from_config(sv: &SupervisionConfig) -> Settings {
        Settings {
            backoff_min: ms(sv.child_backoff_min_ms),
            backoff_max: ms(sv.child_backoff_max_ms),
            backoff_reset: ms(sv.child_backoff_reset_ms),
            max_restarts: sv.child_max_restarts as usize,
            restart_window: ms(sv.child_restart_window_ms),
            shutdown: Duration::from_secs(10),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_config(&SupervisionConfig::default())
    }
}

pub(super) type Factory = Box<dyn FnMut() -> BoxFuture<'static, ()> + Send>;

/// A supervised child: a name (unique in its [`Tasks`](super::Tasks)), a restart type,
/// and the factory that builds each incarnation.
pub struct Child {
    pub(super) name: String,
    pub(super) restart: Restart,
    pub(super) factory: Factory,
}

impl Child {
    /// `factory` runs at every (re)start; it should rebuild the child's
    /// state from handles that outlive it, and the future it returns should
    /// return once the supervisor's stop signal is set.
    pub fn new<F, Fut>(name: impl Into<String>, restart: Restart, mut factory: F) -> Child
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Child {
            name: name.into(),
            restart,
            factory: Box::new(move || factory().boxed()),
        }
    }
}

/// What a child's supervision ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// `Stopped`, `Crashed` or `Failed`.
    pub state: ChildState,
    /// Restarts done.
    pub restarts: u64,
}
