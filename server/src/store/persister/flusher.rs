//! The store thread's life: connect and prepare the store (with backoff),
//! the flusher loop under its supervisor (write-behind of the dirty map,
//! trade recovery, ledger pruning), and the final flush at shutdown.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Inner, Pending, ShutdownReport};
use crate::store::model::{Volatile, VolatileKey};
use crate::store::{metric, Backend, Store, StoreConfig, StoreError};
use crate::supervise::{self, Backoff, Child, Restart, Supervisor, Tasks};

/// How often half-done trades are looked for (see [`Store::recover_trades`])
/// and expired ledger rows pruned (see [`Store::prune_ledger`]).
const RECOVERY_EVERY: Duration = Duration::from_secs(60);

/// Index creation and trade recovery may take longer than one op.
const PREPARE_TIMEOUT: Duration = Duration::from_secs(30);

/// The backoff between store retries (connecting, flushing): from
/// `retry_min_ms` doubling up to `retry_max_ms`, with jitter.
pub(super) fn retry_backoff(config: &StoreConfig) -> Backoff {
    Backoff::new(
        Duration::from_millis(config.retry_min_ms),
        Duration::from_millis(config.retry_max_ms),
    )
}

/// The task name of the flusher, in `/healthz` and fault injection.
pub const FLUSHER_TASK: &str = "persister";

/// Supervision for a persister started on its own: `supervision.child_*`
/// defaults, and half the flush deadline for the flusher to stop.
pub(super) fn default_supervision(config: &StoreConfig) -> supervise::Settings {
    supervise::Settings {
        shutdown: config.shutdown_flush_deadline() / 2,
        ..supervise::Settings::default()
    }
}

/// The store thread's life: the flusher under its supervisor until the
/// stop signal, then the final flush, exactly once.
pub(super) async fn run(
    inner: Arc<Inner>,
    store: Option<Arc<dyn Store>>,
    stop_rx: watch::Receiver<Option<Instant>>,
    tasks: Tasks,
    settings: supervise::Settings,
) -> ShutdownReport {
    let started_at = Instant::now();
    // The supervisor and the flusher stop on a plain flag, set here when
    // the owner asks for shutdown.
    let (halt_tx, halt_rx) = watch::channel(false);
    let supervisor = Supervisor::new(&tasks, settings, halt_rx.clone());
    let flusher = {
        let inner = inner.clone();
        // Each incarnation starts from what lives in `Inner`: the store
        // once connected (else the one given at start), the dirty map, the
        // health flag.
        Child::new(FLUSHER_TASK, Restart::Permanent, move || {
            let store = inner.store.get().cloned().or_else(|| store.clone());
            flusher(inner.clone(), store, halt_rx.clone())
        })
    };
    let mut supervised = std::pin::pin!(supervisor.supervise(flusher));
    let mut stop = stop_rx.clone();
    tokio::select! {
        outcome = &mut supervised => {
            // Given up: nothing flushes until shutdown, which still does.
            tracing::error!(?outcome, "the flusher is gone; dirty state waits for the shutdown flush");
            stop_requested(&mut stop).await;
        }
        _ = stop_requested(&mut stop) => {
            halt_tx.send_replace(true);
            // The flusher finishes the store call it is in, within half of
            // what is left of the deadline; past that it is dropped. Either
            // way its batch is back in the dirty map for the final flush.
            let now = Instant::now();
            let deadline = stop_rx
                .borrow()
                .unwrap_or_else(|| now + inner.config.shutdown_flush_deadline());
            let halfway = now + deadline.saturating_duration_since(now) / 2;
            if tokio::time::timeout_at(halfway.into(), &mut supervised).await.is_err() {
                tracing::warn!("the flusher did not stop in time; dropped (its batch is back in the dirty map)");
            }
        }
    }
    let Some(store) = inner.store.get().cloned() else {
        let left = inner.dirty_keys();
        inner.closed.store(true, Ordering::Release);
        tracing::error!(
            keys = left,
            "shutting down before the store was ever reachable: {left} volatile keys not persisted"
        );
        return ShutdownReport {
            flushed: 0,
            left_dirty: left,
            deadline_hit: left > 0,
            elapsed: started_at.elapsed(),
        };
    };
    final_flush(&inner, &store, &stop_rx, started_at).await
}

/// Until the owner asks for shutdown (or is gone).
async fn stop_requested(stop_rx: &mut watch::Receiver<Option<Instant>>) {
    let _ = stop_rx.wait_for(Option::is_some).await;
}

/// The flusher, one incarnation: connect and prepare (unless an earlier
/// incarnation did), settle trades, then flush on every interval and
/// request until `halt_rx` is set.
async fn flusher(
    inner: Arc<Inner>,
    store: Option<Arc<dyn Store>>,
    mut halt_rx: watch::Receiver<bool>,
) {
    let store = match inner.store.get() {
        Some(store) => store.clone(),
        None => match connect(&inner, store, &mut halt_rx).await {
            Some(store) => store,
            None => return,
        },
    };
    recover_trades(&inner, &store).await;
    let mut next_recovery = Instant::now() + RECOVERY_EVERY;
    let period = inner.config.flush_interval();
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = retry_backoff(&inner.config);
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        let retrying = retry_at.is_some();
        tokio::select! {
            _ = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => {
                        tick.tick().await;
                    }
                }
            } => {}
            // During a backoff, requests wait for the retry.
            _ = inner.wake.notified(), if !retrying => {}
            _ = halt_rx.wait_for(|halt| *halt) => break,
        }
        match flush_once(&inner, &store, None).await {
            Ok(_) => {
                backoff.reset();
                retry_at = None;
            }
            Err(e) => {
                let delay = backoff.delay();
                tracing::warn!(
                    backend = store.backend(),
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    dirty_keys = inner.dirty_keys(),
                    "volatile flush failed; retrying"
                );
                retry_at = Some(tokio::time::Instant::now() + delay);
            }
        }
        if retry_at.is_none() && Instant::now() >= next_recovery {
            recover_trades(&inner, &store).await;
            next_recovery = Instant::now() + RECOVERY_EVERY;
        }
    }
}

/// Open and prepare the store, retrying with backoff until it answers or
/// shutdown is requested.
async fn connect(
    inner: &Arc<Inner>,
    mut store: Option<Arc<dyn Store>>,
    halt_rx: &mut watch::Receiver<bool>,
) -> Option<Arc<dyn Store>> {
    let mut backoff = retry_backoff(&inner.config);
    loop {
        let attempt = async {
            let s = match &store {
                Some(s) => s.clone(),
                None => {
                    let s = crate::store::open(&inner.config).await?;
                    store = Some(s.clone());
                    s
                }
            };
            tokio::time::timeout(PREPARE_TIMEOUT, s.prepare())
                .await
                .map_err(|_| {
                    StoreError::Unavailable(format!("no answer within {PREPARE_TIMEOUT:?}"))
                })??;
            Ok::<_, StoreError>(s)
        };
        match attempt.await {
            Ok(s) => {
                let _ = inner.store.set(s.clone());
                inner.set_healthy(true, None);
                inner.ready_tx.send_replace(true);
                tracing::info!(backend = s.backend(), "store ready (indexes in place)");
                return Some(s);
            }
            Err(e) => {
                let delay = backoff.delay();
                let backend = match inner.config.backend {
                    Backend::Embedded => "embedded",
                    Backend::Mongodb => "mongodb",
                };
                inner.health.record_error(&e.to_string());
                tracing::warn!(
                    backend,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "store not reachable yet; retrying (volatile writes queue, durable writes fail fast)"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = halt_rx.wait_for(|halt| *halt) => return None,
                }
            }
        }
    }
}

async fn recover_trades(inner: &Inner, store: &Arc<dyn Store>) {
    let age = Duration::from_millis(inner.config.trade_recovery_age_ms);
    match tokio::time::timeout(PREPARE_TIMEOUT, store.recover_trades(age)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(trades = n, "settled half-done trades"),
        Ok(Err(e)) => tracing::warn!(error = %e, "trade recovery failed; trying again later"),
        Err(_) => tracing::warn!("trade recovery timed out; trying again later"),
    }
    let retention = inner.config.ledger_retention();
    match tokio::time::timeout(PREPARE_TIMEOUT, store.prune_ledger(retention)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => {
            metrics::counter!(metric::LEDGER_PRUNED).increment(n as u64);
            tracing::info!(rows = n, "pruned expired ledger rows");
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "ledger pruning failed; trying again later"),
        Err(_) => tracing::warn!("ledger pruning timed out; trying again later"),
    }
}

/// A batch taken from the dirty map. Whatever is still in it when it is
/// dropped (not written yet, failed, or abandoned by a panic or a cancelled
/// flush) goes back to the dirty map, newer states winning: a crash of the
/// flusher in the middle of a flush loses nothing.
struct Taken<'a> {
    inner: &'a Inner,
    items: VecDeque<(VolatileKey, Pending)>,
}

impl Taken<'_> {
    /// Forget the first `n` items for which `gone(i)` holds (written, or
    /// refused for good); the others stay, in order.
    fn forget_front(&mut self, n: usize, gone: impl Fn(usize) -> bool) {
        let head: Vec<(VolatileKey, Pending)> = self.items.drain(..n).collect();
        for (i, item) in head.into_iter().enumerate().rev() {
            if !gone(i) {
                self.items.push_front(item);
            }
        }
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if !self.items.is_empty() {
            self.inner.restore(self.items.drain(..));
        }
    }
}

/// Write everything dirty. With `budget`, each store call gets at most that
/// long (the shutdown deadline). Returns how many documents were written.
async fn flush_once(
    inner: &Inner,
    store: &Arc<dyn Store>,
    budget: Option<Instant>,
) -> Result<u64, StoreError> {
    let generation = inner.flush_requested.load(Ordering::SeqCst);
    let mut taken = Taken {
        inner,
        items: inner.take_all().into(),
    };
    let now = Instant::now();
    let lag = taken
        .items
        .front()
        .map_or(Duration::ZERO, |(_, p)| now - p.since);
    metrics::gauge!(metric::FLUSH_LAG_SECONDS).set(lag.as_secs_f64());
    metrics::gauge!(metric::DIRTY_KEYS).set(taken.items.len() as f64);
    let c = &inner.counters;
    if taken.items.is_empty() {
        if !inner.health.healthy() {
            if let Err(e) = timed(inner, budget, store.ping()).await {
                inner.set_healthy(false, Some(&e.to_string()));
                return Err(e);
            }
            inner.set_healthy(true, None);
        }
        inner.flushed_tx.send_if_modified(|done| {
            let newer = generation > *done;
            *done = (*done).max(generation);
            newer
        });
        return Ok(0);
    }
    let mut written = 0;
    while !taken.items.is_empty() {
        let n = inner.config.flush_batch_max.min(taken.items.len());
        let docs: Vec<Volatile> = taken
            .items
            .iter()
            .take(n)
            .map(|(_, p)| p.doc.clone())
            .collect();
        let size = n as u64;
        match timed(inner, budget, store.write_volatile(docs)).await {
            Ok(report) => {
                taken.items.drain(..n);
                c.batches.fetch_add(1, Ordering::Relaxed);
                c.largest_batch.fetch_max(size, Ordering::Relaxed);
                c.volatile_written
                    .fetch_add(report.written as u64, Ordering::Relaxed);
                c.rejected
                    .fetch_add(report.rejected.len() as u64, Ordering::Relaxed);
                written += report.written as u64;
                metrics::histogram!(metric::FLUSH_BATCH_SIZE).record(size as f64);
            }
            Err(e) if !e.is_unavailable() && n > 1 => {
                // The store answered but refused the batch: find the
                // documents it refuses, so one bad document cannot hold
                // back the others forever.
                c.flush_failures.fetch_add(1, Ordering::Relaxed);
                written += isolate(inner, store, budget, &mut taken, n, e).await?;
            }
            Err(e) => {
                c.flush_failures.fetch_add(1, Ordering::Relaxed);
                if e.is_unavailable() {
                    inner.set_healthy(false, Some(&e.to_string()));
                } else {
                    inner.health.record_error(&e.to_string());
                }
                publish_counters(inner);
                // `taken` puts the batch back.
                return Err(e);
            }
        }
    }
    inner.set_healthy(true, None);
    inner.flushed_tx.send_if_modified(|done| {
        let newer = generation > *done;
        *done = (*done).max(generation);
        newer
    });
    publish_counters(inner);
    Ok(written)
}

/// Write the first `n` documents of a refused batch one at a time.
/// Documents refused alone while others go through are reported and
/// dropped; if none goes through, the fault is the store's, not the
/// documents': everything not written stays in `taken` for a retry.
async fn isolate(
    inner: &Inner,
    store: &Arc<dyn Store>,
    budget: Option<Instant>,
    taken: &mut Taken<'_>,
    n: usize,
    first_error: StoreError,
) -> Result<u64, StoreError> {
    let c = &inner.counters;
    let mut written = 0;
    // Per document: whether the store took it, and why it refused it.
    let mut taken_by_store = vec![false; n];
    let mut refused: Vec<(usize, StoreError)> = Vec::new();
    for i in 0..n {
        let doc = taken.items[i].1.doc.clone();
        match timed(inner, budget, store.write_volatile(vec![doc])).await {
            Ok(report) => {
                taken_by_store[i] = true;
                c.batches.fetch_add(1, Ordering::Relaxed);
                c.volatile_written
                    .fetch_add(report.written as u64, Ordering::Relaxed);
                written += report.written as u64;
            }
            Err(e) if e.is_unavailable() => {
                taken.forget_front(n, |i| taken_by_store[i]);
                inner.set_healthy(false, Some(&e.to_string()));
                return Err(e);
            }
            Err(e) => refused.push((i, e)),
        }
    }
    if written == 0 {
        inner.health.record_error(&first_error.to_string());
        taken.forget_front(n, |i| taken_by_store[i]);
        return Err(first_error);
    }
    for (i, e) in &refused {
        tracing::warn!(key = %taken.items[*i].0, error = %e, "store refused a volatile document; skipped");
        metrics::counter!(metric::BAD_DOCUMENTS).increment(1);
        c.rejected.fetch_add(1, Ordering::Relaxed);
    }
    // Written or refused for good: none of the first `n` stays.
    taken.items.drain(..n);
    Ok(written)
}

async fn timed<T>(
    inner: &Inner,
    budget: Option<Instant>,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let mut limit = Duration::from_millis(inner.config.flush_timeout_ms);
    if let Some(deadline) = budget {
        limit = limit.min(deadline.saturating_duration_since(Instant::now()));
    }
    tokio::time::timeout(limit, call)
        .await
        .map_err(|_| StoreError::Interrupted(format!("no answer within {limit:?}")))?
}

fn publish_counters(inner: &Inner) {
    let c = &inner.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    metrics::counter!(metric::VOLATILE_UPDATES).absolute(load(&c.volatile_updates));
    metrics::counter!(metric::VOLATILE_WRITTEN).absolute(load(&c.volatile_written));
    metrics::counter!(metric::FLUSH_BATCHES).absolute(load(&c.batches));
    metrics::counter!(metric::FLUSH_FAILURES).absolute(load(&c.flush_failures));
}

/// Stop taking durable ops, let those in flight finish, and write
/// everything dirty, all before the deadline.
async fn final_flush(
    inner: &Arc<Inner>,
    store: &Arc<dyn Store>,
    stop_rx: &watch::Receiver<Option<Instant>>,
    started_at: Instant,
) -> ShutdownReport {
    let began = Instant::now();
    let deadline = stop_rx
        .borrow()
        .unwrap_or_else(|| began + inner.config.shutdown_flush_deadline());
    inner.closed.store(true, Ordering::Release);
    let all = inner.config.durable_max_in_flight as u32;
    let _ = tokio::time::timeout_at(deadline.into(), inner.durable_slots.acquire_many(all)).await;
    let mut flushed = 0;
    let mut backoff = retry_backoff(&inner.config);
    loop {
        match flush_once(inner, store, Some(deadline)).await {
            Ok(n) => {
                flushed += n;
                if inner.dirty_keys() == 0 {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, dirty_keys = inner.dirty_keys(), "shutdown flush failed; retrying until the deadline");
                let pause = backoff.delay();
                if Instant::now() + pause >= deadline {
                    break;
                }
                tokio::time::sleep(pause).await;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    let left = inner.dirty_keys();
    let report = ShutdownReport {
        flushed,
        left_dirty: left,
        deadline_hit: left > 0,
        elapsed: began.elapsed(),
    };
    if left > 0 {
        tracing::error!(
            keys = left,
            flushed,
            deadline_ms = deadline.saturating_duration_since(began).as_millis() as u64,
            "shutdown flush deadline hit: {left} volatile keys were not persisted"
        );
    } else {
        tracing::info!(
            flushed,
            elapsed_ms = report.elapsed.as_millis() as u64,
            uptime_s = started_at.elapsed().as_secs(),
            "store flushed for shutdown"
        );
    }
    if left == 0 {
        // Everything asked for is in the store.
        inner.flushed_tx.send_replace(u64::MAX);
    }
    report
}
