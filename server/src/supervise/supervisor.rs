//! The [`Supervisor`] and its loop: run a child behind its panic boundary,
//! decide whether to restart it (restart type, [`Intensity`]), wait its
//! [`Backoff`], until shutdown.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::children::{Child, ChildState, Exit, Outcome, Settings};
use super::tasks::{Cell, Tasks};
use super::{catch_future, Backoff, Intensity};
use crate::metrics as m;

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

#[cfg(test)]
mod tests {
    use super::super::Restart;
    use super::*;
    use parking_lot::Mutex;
    use std::sync::atomic::{AtomicU64, AtomicUsize};

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
                    // A crash that skips the panic hook: with
                    // RUST_BACKTRACE set, the hook's backtrace alone took
                    // longer than the first pause may.
                    std::panic::resume_unwind(Box::new(format!("run {n} fails")));
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
}
