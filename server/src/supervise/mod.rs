//! The task supervisor: restarts the shard's long-lived async tasks after a
//! panic, with backoff, within a restart intensity, until shutdown.
//!
//! # The supervision tree
//!
//! ```text
//! tessera-server (one process; past every supervisor: systemd or Kubernetes)
//! ├─ thread "tessera-system" (actix System)
//! │  ├─ RoomSupervisor          one_for_one per map; MaxR supervision.max_restarts
//! │  │  │                       in MaxT supervision.restart_window_ms
//! │  │  └─ Room × M             restarted from its snapshot (panic or stall),
//! │  │                          on room Arbiters, or on extra ones (at most
//! │  │                          supervision.max_extra_arbiters) while every
//! │  │                          room thread is blocked
//! │  ├─ task Supervisor         this module; per child: backoff, MaxR
//! │  │  │                       supervision.child_max_restarts in MaxT
//! │  │  │                       supervision.child_restart_window_ms
//! │  │  ├─ "gateway"  permanent accept loop; same listener (Arc) on restart
//! │  │  ├─ "http"     permanent axum server; same listener on restart
//! │  │  ├─ "sampler"  permanent dispatcher queue depths, seat pruning
//! │  │  └─ "watchdog" permanent room heartbeats and stalls
//! │  └─ Session × N             never restarted: the client resumes its seat
//! └─ thread "tessera-store" (the persister's own tokio runtime)
//!    ├─ task Supervisor
//!    │  └─ "persister" permanent the flusher loop; its state (dirty map,
//!    │                           store handle, health) lives in the
//!    │                           persister, so a restart loses nothing
//!    └─ final flush              once, after the supervisor stopped
//! ```
//!
//! The directory (Redis) and the peer links will join the tree as children
//! of the task supervisor when they exist; they do not yet. The dispatcher
//! is a plain struct (publishing runs in the caller), so it has no task of
//! its own; its queue-depth sampler is the "sampler" child.
//!
//! # Restart types (as OTP defines them)
//!
//! - [`Restart::Permanent`]: always restarted, whether it panicked or
//!   returned (a long-lived task that returns before shutdown is a bug).
//! - [`Restart::Transient`]: restarted only after a panic; returning is a
//!   normal end.
//! - [`Restart::Temporary`]: never restarted.
//!
//! A child is a name, a restart type and a factory that builds a fresh
//! future from shared handles each time, so that a restart rebuilds its
//! state from what outlives it (an `Arc` of shared state, a listener).
//! Panics are caught at the child's boundary (`catch_unwind`), logged with
//! the child's name and message, and counted. Restarts wait an exponential
//! backoff with jitter (`child_backoff_min_ms` doubling up to
//! `child_backoff_max_ms`), which starts over once a child has run for
//! `child_backoff_reset_ms`. A child restarted more than
//! `child_max_restarts` times within `child_restart_window_ms` is given up:
//! logged at error level, counted, shown as `failed` in `/healthz` (whose
//! `status` is then `degraded`, so the process manager can replace the
//! shard: the escalation to the supervisor's parent).
//!
//! Shutdown: children watch the same stop signal and return on their own
//! (the HTTP server finishes its requests); a child that has not returned
//! `shutdown` after the signal is dropped. Nothing is restarted once the
//! signal is set.
//!
//! Fault injection (`POST /admin/faults/task?name=`) makes a running child
//! panic at its next poll, inside its own boundary, like a real panic would.
//!
//! Actors have boundaries of their own ([`catch`]): every handler and
//! continuation of a room or session runs behind one, under a name that is
//! also a [`FaultPoints`] point a drill can arm.
//!
//! # One of each
//!
//! Every supervisor in the shard (this one, the room supervisor, the
//! persister's retry loops, the room's ground) uses the same three parts:
//! [`Backoff`] (exponential with jitter, min/max/reset), [`Intensity`]
//! (MaxR restarts in MaxT) and the panic boundary ([`catch`] for closures,
//! [`catch_future`] for futures, [`panic_text`] for a payload).

mod backoff;
mod intensity;
mod panic;

pub use backoff::Backoff;
pub use intensity::{Intensity, TooManyRestarts};
pub use panic::{catch, catch_future, panic_text};

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use crate::config::{ms, SupervisionConfig};
use crate::metrics as m;

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
    fn restarts_after(self, exit: &Exit) -> bool {
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
enum Exit {
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

type Factory = Box<dyn FnMut() -> BoxFuture<'static, ()> + Send>;

/// A supervised child: a name (unique in its [`Tasks`]), a restart type,
/// and the factory that builds each incarnation.
pub struct Child {
    name: String,
    restart: Restart,
    factory: Factory,
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

struct Cell {
    restart: Restart,
    state: Mutex<ChildState>,
    restarts: AtomicU64,
    panics: AtomicU64,
    /// Set by fault injection; the child panics at its next poll.
    fault: Notify,
}

/// One child as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildReport {
    pub restart: Restart,
    pub state: ChildState,
    pub restarts: u64,
    pub panics: u64,
}

/// The registry of supervised children: their state for `/healthz`, and
/// fault injection by name. One per shard, shared by every supervisor in
/// it (the persister's included).
#[derive(Clone, Default)]
pub struct Tasks {
    children: Arc<Mutex<BTreeMap<String, Arc<Cell>>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no task named {name:?} (tasks: {known})")]
pub struct UnknownTask {
    pub name: String,
    pub known: String,
}

impl Tasks {
    /// A child's entry; a second child of the same name replaces the
    /// first's.
    fn register(&self, name: &str, restart: Restart) -> Arc<Cell> {
        let cell = Arc::new(Cell {
            restart,
            state: Mutex::new(ChildState::Up),
            restarts: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            fault: Notify::new(),
        });
        self.children.lock().insert(name.to_string(), cell.clone());
        cell
    }

    /// Every child's state, by name.
    pub fn states(&self) -> BTreeMap<String, ChildState> {
        self.children
            .lock()
            .iter()
            .map(|(name, cell)| (name.clone(), *cell.state.lock()))
            .collect()
    }

    /// Every child in full, by name.
    pub fn report(&self) -> BTreeMap<String, ChildReport> {
        self.children
            .lock()
            .iter()
            .map(|(name, cell)| {
                let report = ChildReport {
                    restart: cell.restart,
                    state: *cell.state.lock(),
                    restarts: cell.restarts.load(Ordering::Relaxed),
                    panics: cell.panics.load(Ordering::Relaxed),
                };
                (name.clone(), report)
            })
            .collect()
    }

    pub fn state(&self, name: &str) -> Option<ChildState> {
        self.children.lock().get(name).map(|c| *c.state.lock())
    }

    pub fn restarts(&self, name: &str) -> Option<u64> {
        self.children
            .lock()
            .get(name)
            .map(|c| c.restarts.load(Ordering::Relaxed))
    }

    /// Whether some child was given up.
    pub fn any_failed(&self) -> bool {
        self.children
            .lock()
            .values()
            .any(|c| *c.state.lock() == ChildState::Failed)
    }

    /// Make `name` panic at its next poll (at once if it is running, or as
    /// soon as its next incarnation starts). Returns its state now.
    pub fn inject_panic(&self, name: &str) -> Result<ChildState, UnknownTask> {
        let children = self.children.lock();
        let Some(cell) = children.get(name) else {
            return Err(UnknownTask {
                name: name.to_string(),
                known: children.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        tracing::warn!(child = name, "injecting a panic into task");
        cell.fault.notify_one();
        let state = *cell.state.lock();
        Ok(state)
    }
}

/// Runs children; each [`Supervisor::supervise`] future owns one child and
/// is spawned (and awaited at shutdown) by the caller, so shutdown can
/// wait for the children in the order it needs.
#[derive(Clone)]
pub struct Supervisor {
    tasks: Tasks,
    settings: Arc<Settings>,
    stop_rx: watch::Receiver<bool>,
}

impl Supervisor {
    pub fn new(tasks: &Tasks, settings: Settings, stop_rx: watch::Receiver<bool>) -> Supervisor {
        Supervisor {
            tasks: tasks.clone(),
            settings: Arc::new(settings),
            stop_rx,
        }
    }

    /// Register `child` (listed at once) and return the future that runs
    /// and restarts it until shutdown, a normal end or giving up.
    pub fn supervise(&self, child: Child) -> impl Future<Output = Outcome> + Send + 'static {
        let cell = self.tasks.register(&child.name, child.restart);
        run_child(child, cell, self.settings.clone(), self.stop_rx.clone())
    }
}

/// Stop set, or nobody left to set it.
fn stopping(stop_rx: &watch::Receiver<bool>) -> bool {
    *stop_rx.borrow() || stop_rx.has_changed().is_err()
}

async fn stopped(stop_rx: &mut watch::Receiver<bool>) {
    let _ = stop_rx.wait_for(|stop| *stop).await;
}

fn set_state(cell: &Cell, name: &str, state: ChildState) {
    *cell.state.lock() = state;
    let up = if state == ChildState::Up { 1.0 } else { 0.0 };
    metrics::gauge!(m::CHILD_UP, "child" => name.to_string()).set(up);
}

async fn run_child(
    mut child: Child,
    cell: Arc<Cell>,
    settings: Arc<Settings>,
    mut stop_rx: watch::Receiver<bool>,
) -> Outcome {
    let name = child.name.clone();
    let mut backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
    let mut intensity = Intensity::new(settings.max_restarts, settings.restart_window);
    let outcome = |state: ChildState| {
        set_state(&cell, &name, state);
        Outcome {
            state,
            restarts: cell.restarts.load(Ordering::Relaxed),
        }
    };
    loop {
        if stopping(&stop_rx) {
            return outcome(ChildState::Stopped);
        }
        set_state(&cell, &name, ChildState::Up);
        let started = Instant::now();
        let incarnation = (child.factory)();
        let exit = run_once(&name, &cell, incarnation, &mut stop_rx, settings.shutdown).await;
        let ran_ms = started.elapsed().as_millis() as u64;
        if let Exit::Panicked(message) = &exit {
            cell.panics.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(m::CHILD_PANICS, "child" => name.clone()).increment(1);
            tracing::error!(child = %name, panic = %message, ran_ms, "task panicked");
        }
        if stopping(&stop_rx) {
            tracing::info!(child = %name, "task stopped");
            return outcome(ChildState::Stopped);
        }
        if !child.restart.restarts_after(&exit) {
            let state = match exit {
                Exit::Panicked(_) => ChildState::Crashed,
                Exit::Returned | Exit::Abandoned => ChildState::Stopped,
            };
            tracing::info!(child = %name, state = state.name(), restart = ?child.restart, "task ended; not restarted by its type");
            return outcome(state);
        }
        if matches!(exit, Exit::Returned) {
            tracing::warn!(child = %name, ran_ms, "permanent task returned before shutdown");
        }
        if started.elapsed() >= settings.backoff_reset {
            backoff.reset();
        }
        if let Err(too_many) = intensity.record(Instant::now()) {
            metrics::counter!(m::CHILD_FAILURES, "child" => name.clone()).increment(1);
            tracing::error!(
                child = %name,
                restarts = too_many.max_restarts,
                window_ms = too_many.window.as_millis() as u64,
                "task given up: too many restarts"
            );
            return outcome(ChildState::Failed);
        }
        let delay = backoff.delay();
        set_state(&cell, &name, ChildState::Restarting);
        tracing::warn!(
            child = %name,
            delay_ms = delay.as_millis() as u64,
            "restarting task after backoff"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopped(&mut stop_rx) => return outcome(ChildState::Stopped),
        }
        cell.restarts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(m::CHILD_RESTARTS, "child" => name.clone()).increment(1);
    }
}

/// One incarnation behind its panic boundary; after the stop signal it
/// gets `shutdown` to return.
async fn run_once(
    name: &str,
    cell: &Cell,
    incarnation: BoxFuture<'static, ()>,
    stop_rx: &mut watch::Receiver<bool>,
    shutdown: Duration,
) -> Exit {
    let guarded = async {
        tokio::select! {
            biased;
            _ = cell.fault.notified() => panic!("injected fault in task {name:?}"),
            _ = incarnation => {}
        }
    };
    // The incarnation is dropped after a panic and never polled again, so
    // no broken invariant inside it can be observed.
    let mut run = std::pin::pin!(catch_future(guarded));
    let ended = tokio::select! {
        ended = &mut run => Some(ended),
        _ = stopped(stop_rx) => None,
    };
    let ended = match ended {
        Some(ended) => ended,
        None => match tokio::time::timeout(shutdown, &mut run).await {
            Ok(ended) => ended,
            Err(_) => {
                tracing::warn!(
                    child = name,
                    shutdown_ms = shutdown.as_millis() as u64,
                    "task did not stop in time; dropped"
                );
                return Exit::Abandoned;
            }
        },
    };
    match ended {
        Ok(()) => Exit::Returned,
        Err(message) => Exit::Panicked(message),
    }
}

/// Which kind of actor a fault point is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultActor {
    Session,
    Room,
}

/// Named points inside actor handlers and continuations (the `what` of
/// their panic boundary) where a drill or test can make the actor panic,
/// inside that boundary, like a real bug would. Points are armed only
/// through the admin API, which refuses unless `admin.fault_injection` is
/// on; a registry built with fault injection off refuses to arm anything,
/// and checking an unarmed registry is one atomic load.
#[derive(Clone, Default)]
pub struct FaultPoints {
    inner: Arc<FaultInner>,
}

#[derive(Default)]
struct FaultInner {
    enabled: bool,
    armed: AtomicU64,
    points: Mutex<Vec<Armed>>,
}

struct Armed {
    actor: FaultActor,
    point: &'static str,
    /// A player id (sessions) or map (rooms); `None`: the first to pass.
    target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArmError {
    #[error("fault injection is off: set admin.fault_injection")]
    Disabled,
    #[error("no fault point {point:?} (points: {known})")]
    UnknownPoint { point: String, known: String },
}

impl FaultPoints {
    pub fn new(enabled: bool) -> FaultPoints {
        FaultPoints {
            inner: Arc::new(FaultInner {
                enabled,
                ..FaultInner::default()
            }),
        }
    }

    /// Arm `point` (one of `known`) once: the next `actor` passing it,
    /// whose target is `target` (any when `None`), panics there.
    pub fn arm(
        &self,
        actor: FaultActor,
        known: &'static [&'static str],
        point: &str,
        target: Option<String>,
    ) -> Result<(), ArmError> {
        if !self.inner.enabled {
            return Err(ArmError::Disabled);
        }
        let Some(point) = known.iter().copied().find(|p| *p == point) else {
            return Err(ArmError::UnknownPoint {
                point: point.to_string(),
                known: known.join(", "),
            });
        };
        tracing::warn!(?actor, point, ?target, "fault point armed");
        self.inner.points.lock().push(Armed {
            actor,
            point,
            target,
        });
        self.inner.armed.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Panic if `point` is armed for this actor. Call inside the boundary.
    pub fn trip(&self, actor: FaultActor, point: &str, target: Option<&str>) {
        if self.inner.armed.load(Ordering::Acquire) == 0 {
            return;
        }
        let hit = {
            let mut points = self.inner.points.lock();
            let found = points.iter().position(|a| {
                a.actor == actor
                    && a.point == point
                    && a.target.as_deref().is_none_or(|t| Some(t) == target)
            });
            found.map(|i| points.remove(i))
        };
        if let Some(armed) = hit {
            self.inner.armed.fetch_sub(1, Ordering::Release);
            panic!("injected fault at {:?} {}", armed.actor, armed.point);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    const WAIT: Duration = Duration::from_secs(5);

    fn fast() -> Settings {
        Settings {
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(40),
            backoff_reset: Duration::from_secs(60),
            max_restarts: 5,
            restart_window: Duration::from_secs(60),
            shutdown: Duration::from_millis(500),
        }
    }

    /// Poll `check` until it holds or `WAIT` passes.
    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_permanent_child_that_panics_is_restarted_with_its_state_rebuilt() {
        let tasks = Tasks::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let supervisor = Supervisor::new(&tasks, fast(), stop_rx.clone());
        // The state that outlives incarnations, as `Shared` does for the
        // shard's tasks: a counter each incarnation carries on.
        let total = Arc::new(AtomicU64::new(0));
        let starts = Arc::new(AtomicUsize::new(0));
        let child = {
            let (total, starts, stop_rx) = (total.clone(), starts.clone(), stop_rx.clone());
            Child::new("counter", Restart::Permanent, move || {
                let (total, mut stop_rx) = (total.clone(), stop_rx.clone());
                let first = starts.fetch_add(1, Ordering::SeqCst) == 0;
                async move {
                    for _ in 0..5 {
                        total.fetch_add(1, Ordering::SeqCst);
                    }
                    if first {
                        panic!("first incarnation breaks");
                    }
                    stopped(&mut stop_rx).await;
                }
            })
        };
        let run = tokio::spawn(supervisor.supervise(child));
        until("the second incarnation", || {
            total.load(Ordering::SeqCst) == 10
        })
        .await;
        assert_eq!(tasks.state("counter"), Some(ChildState::Up));
        assert_eq!(tasks.restarts("counter"), Some(1));
        assert_eq!(tasks.report()["counter"].panics, 1);
        stop_tx.send(true).unwrap();
        let outcome = run.await.unwrap();
        assert_eq!(
            outcome,
            Outcome {
                state: ChildState::Stopped,
                restarts: 1
            }
        );
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_transient_child_is_restarted_after_a_panic_but_not_after_returning() {
        let tasks = Tasks::default();
        let (_stop_tx, stop_rx) = watch::channel(false);
        let supervisor = Supervisor::new(&tasks, fast(), stop_rx);
        let starts = Arc::new(AtomicUsize::new(0));
        let child = {
            let starts = starts.clone();
            Child::new("job", Restart::Transient, move || {
                let n = starts.fetch_add(1, Ordering::SeqCst);
                async move {
                    tokio::task::yield_now().await;
                    assert!(n > 0, "the first run fails");
                }
            })
        };
        let outcome = tokio::time::timeout(WAIT, supervisor.supervise(child))
            .await
            .unwrap();
        assert_eq!(outcome.state, ChildState::Stopped);
        assert_eq!(outcome.restarts, 1);
        assert_eq!(starts.load(Ordering::SeqCst), 2, "one restart, then done");
        assert_eq!(tasks.state("job"), Some(ChildState::Stopped));
    }

    #[tokio::test]
    async fn a_temporary_child_is_never_restarted() {
        let tasks = Tasks::default();
        let (_stop_tx, stop_rx) = watch::channel(false);
        let supervisor = Supervisor::new(&tasks, fast(), stop_rx);
        for (name, panics, state) in [
            ("panics", true, ChildState::Crashed),
            ("returns", false, ChildState::Stopped),
        ] {
            let starts = Arc::new(AtomicUsize::new(0));
            let child = {
                let starts = starts.clone();
                Child::new(name, Restart::Temporary, move || {
                    starts.fetch_add(1, Ordering::SeqCst);
                    async move {
                        tokio::task::yield_now().await;
                        assert!(!panics, "a temporary child crashes");
                    }
                })
            };
            let outcome = tokio::time::timeout(WAIT, supervisor.supervise(child))
                .await
                .unwrap();
            assert_eq!(outcome.state, state, "{name}");
            assert_eq!(outcome.restarts, 0, "{name}");
            assert_eq!(starts.load(Ordering::SeqCst), 1, "{name}");
            assert_eq!(tasks.state(name), Some(state));
        }
        assert!(!tasks.any_failed(), "a temporary crash is not a failure");
    }

    #[tokio::test]
    async fn a_child_past_its_restart_intensity_is_given_up() {
        let tasks = Tasks::default();
        let (_stop_tx, stop_rx) = watch::channel(false);
        let settings = Settings {
            max_restarts: 3,
            ..fast()
        };
        let supervisor = Supervisor::new(&tasks, settings, stop_rx);
        let starts = Arc::new(AtomicUsize::new(0));
        let child = {
            let starts = starts.clone();
            Child::new("doomed", Restart::Permanent, move || {
                starts.fetch_add(1, Ordering::SeqCst);
                async { panic!("always") }
            })
        };
        let outcome = tokio::time::timeout(WAIT, supervisor.supervise(child))
            .await
            .unwrap();
        assert_eq!(
            outcome,
            Outcome {
                state: ChildState::Failed,
                restarts: 3
            }
        );
        assert_eq!(starts.load(Ordering::SeqCst), 4);
        assert!(tasks.any_failed());
        assert_eq!(tasks.report()["doomed"].panics, 4);
    }

    #[tokio::test]
    async fn restarts_outside_the_window_do_not_count() {
        let tasks = Tasks::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let settings = Settings {
            max_restarts: 1,
            restart_window: Duration::from_millis(30),
            backoff_min: Duration::from_millis(80),
            backoff_max: Duration::from_millis(80),
            ..fast()
        };
        let supervisor = Supervisor::new(&tasks, settings, stop_rx);
        let starts = Arc::new(AtomicUsize::new(0));
        let child = {
            let starts = starts.clone();
            Child::new("slow-crasher", Restart::Permanent, move || {
                starts.fetch_add(1, Ordering::SeqCst);
                async { panic!("again") }
            })
        };
        let run = tokio::spawn(supervisor.supervise(child));
        // Each restart waits at least 40 ms, past the window: one restart
        // in the window at a time, never two.
        until("four starts", || starts.load(Ordering::SeqCst) >= 4).await;
        assert!(!tasks.any_failed());
        stop_tx.send(true).unwrap();
        assert_eq!(run.await.unwrap().state, ChildState::Stopped);
    }

    #[tokio::test]
    async fn backoff_grows_between_restarts_and_starts_over_after_a_healthy_run() {
        let tasks = Tasks::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let settings = Settings {
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(2),
            backoff_reset: Duration::from_millis(400),
            ..fast()
        };
        let supervisor = Supervisor::new(&tasks, settings, stop_rx.clone());
        // (start, end) of each run.
        type Runs = Vec<(Instant, Option<Instant>)>;
        let runs: Arc<Mutex<Runs>> = Arc::default();
        let child = {
            let (runs, stop_rx) = (runs.clone(), stop_rx.clone());
            Child::new("flaky", Restart::Permanent, move || {
                let (runs, mut stop_rx) = (runs.clone(), stop_rx.clone());
                let n = {
                    let mut runs = runs.lock();
                    runs.push((Instant::now(), None));
                    runs.len()
                };
                async move {
                    match n {
                        // Four quick crashes, then one after a healthy run.
                        1..=4 => {}
                        5 => tokio::time::sleep(Duration::from_millis(450)).await,
                        _ => return stopped(&mut stop_rx).await,
                    }
                    runs.lock()[n - 1].1 = Some(Instant::now());
                    panic!("run {n} fails");
                }
            })
        };
        let run = tokio::spawn(supervisor.supervise(child));
        until("six runs", || runs.lock().len() >= 6).await;
        stop_tx.send(true).unwrap();
        assert_eq!(run.await.unwrap().restarts, 5);
        let runs = runs.lock();
        let pause = |i: usize| runs[i + 1].0 - runs[i].1.expect("ended");
        // Delays drawn from [10, 20], [20, 40], [40, 80], [80, 160] ms.
        assert!(pause(0) <= Duration::from_millis(60), "{:?}", pause(0));
        assert!(pause(3) >= Duration::from_millis(80), "{:?}", pause(3));
        assert!(pause(3) > pause(0) + Duration::from_millis(40));
        // Run 5 was healthy for 450 ms: back to [10, 20] ms, not [160, 320].
        assert!(pause(4) < Duration::from_millis(120), "{:?}", pause(4));
    }

    #[tokio::test]
    async fn shutdown_stops_running_and_waiting_children_without_restarts() {
        let tasks = Tasks::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let settings = Settings {
            backoff_min: Duration::from_secs(30),
            backoff_max: Duration::from_secs(30),
            ..fast()
        };
        let supervisor = Supervisor::new(&tasks, settings, stop_rx.clone());
        let starts = Arc::new(AtomicUsize::new(0));
        let polite = {
            let (starts, stop_rx) = (starts.clone(), stop_rx.clone());
            Child::new("polite", Restart::Permanent, move || {
                starts.fetch_add(1, Ordering::SeqCst);
                let mut stop_rx = stop_rx.clone();
                async move { stopped(&mut stop_rx).await }
            })
        };
        // Crashes at once, then waits out a 15-30 s backoff.
        let waiting = {
            let starts = starts.clone();
            Child::new("waiting", Restart::Permanent, move || {
                starts.fetch_add(1, Ordering::SeqCst);
                async { panic!("down") }
            })
        };
        // Ignores the stop signal: dropped after `shutdown`.
        let deaf = {
            let starts = starts.clone();
            Child::new("deaf", Restart::Permanent, move || {
                starts.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>()
            })
        };
        let runs: Vec<_> = [polite, waiting, deaf]
            .into_iter()
            .map(|c| tokio::spawn(supervisor.supervise(c)))
            .collect();
        until("the backoff", || {
            tasks.state("waiting") == Some(ChildState::Restarting)
        })
        .await;
        let asked = Instant::now();
        stop_tx.send(true).unwrap();
        for run in runs {
            let outcome = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
            assert_eq!(
                outcome,
                Outcome {
                    state: ChildState::Stopped,
                    restarts: 0
                }
            );
        }
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "no backoff waited out"
        );
        assert_eq!(starts.load(Ordering::SeqCst), 3, "nothing restarted");
        assert!(tasks.states().values().all(|s| *s == ChildState::Stopped));
    }

    #[tokio::test]
    async fn an_injected_fault_panics_the_named_child_only() {
        let tasks = Tasks::default();
        let (stop_tx, stop_rx) = watch::channel(false);
        let supervisor = Supervisor::new(&tasks, fast(), stop_rx.clone());
        let runs: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|name| {
                let stop_rx = stop_rx.clone();
                let child = Child::new(name, Restart::Permanent, move || {
                    let mut stop_rx = stop_rx.clone();
                    async move { stopped(&mut stop_rx).await }
                });
                tokio::spawn(supervisor.supervise(child))
            })
            .collect();
        assert_eq!(tasks.inject_panic("a"), Ok(ChildState::Up));
        let err = tasks.inject_panic("nope").unwrap_err();
        assert_eq!(err.known, "a, b");
        until("a restart of a", || tasks.restarts("a") == Some(1)).await;
        assert_eq!(tasks.state("a"), Some(ChildState::Up));
        assert_eq!(tasks.restarts("b"), Some(0));
        stop_tx.send(true).unwrap();
        for run in runs {
            assert_eq!(run.await.unwrap().state, ChildState::Stopped);
        }
    }

    const POINTS: &[&str] = &["join", "tick"];

    #[test]
    fn fault_points_arm_once_for_their_target_and_never_when_off() {
        let off = FaultPoints::new(false);
        assert_eq!(
            off.arm(FaultActor::Room, POINTS, "join", None),
            Err(ArmError::Disabled)
        );
        off.trip(FaultActor::Room, "join", Some("a"));

        let faults = FaultPoints::new(true);
        let err = faults
            .arm(FaultActor::Room, POINTS, "nowhere", None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"no fault point "nowhere" (points: join, tick)"#
        );
        faults
            .arm(FaultActor::Room, POINTS, "join", Some("a".into()))
            .unwrap();
        // Another point, another actor kind, another target: untouched.
        faults.trip(FaultActor::Room, "tick", Some("a"));
        faults.trip(FaultActor::Session, "join", Some("a"));
        faults.trip(FaultActor::Room, "join", Some("b"));
        faults.trip(FaultActor::Room, "join", None);
        let hit = catch(|| faults.trip(FaultActor::Room, "join", Some("a"))).unwrap_err();
        assert_eq!(hit, "injected fault at Room join");
        // Once only.
        faults.trip(FaultActor::Room, "join", Some("a"));
        // No target: the first to pass.
        faults
            .arm(FaultActor::Session, POINTS, "tick", None)
            .unwrap();
        assert!(catch(|| faults.trip(FaultActor::Session, "tick", None)).is_err());
        faults.trip(FaultActor::Session, "tick", Some("x"));
    }
}
