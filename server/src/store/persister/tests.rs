//! The persister's own tests: supervision of the flusher, revisions in
//! the dirty map, the retry backoff. The contract of the stores is in
//! `tests/store_conformance.rs`.

use super::flusher::retry_backoff;
use super::*;
use crate::store::embedded::EmbeddedStore;
use crate::store::model::{DurableAck, DurableOp, PlayerProfile, PlayerState, RoomState};
use crate::store::OpError;
use crate::store::{BatchReport, StoreFuture, TradeRecord};
use crate::supervise::{self, Tasks};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use mongodb::bson::Document;
use std::sync::atomic::AtomicUsize;

/// An embedded store whose first `panics` volatile writes panic, as a
/// bug in a driver or in the flusher itself would, and whose durable ops
/// take `apply_delay_ms` before they start.
struct PanickyStore {
    inner: EmbeddedStore,
    panics: AtomicUsize,
    apply_delay_ms: u64,
}

impl Store for PanickyStore {
    fn backend(&self) -> &'static str {
        "panicky"
    }
    fn prepare(&self) -> StoreFuture<'_, ()> {
        self.inner.prepare()
    }
    fn ping(&self) -> StoreFuture<'_, ()> {
        self.inner.ping()
    }
    fn write_volatile(&self, batch: Vec<Volatile>) -> StoreFuture<'_, BatchReport> {
        async move {
            tokio::task::yield_now().await;
            let left = self.panics.load(Ordering::SeqCst);
            if left > 0 {
                self.panics.store(left - 1, Ordering::SeqCst);
                panic!("write_volatile breaks");
            }
            self.inner.write_volatile(batch).await
        }
        .boxed()
    }
    fn apply(&self, op: DurableOp) -> BoxFuture<'_, Result<DurableAck, OpError>> {
        async move {
            tokio::time::sleep(Duration::from_millis(self.apply_delay_ms)).await;
            self.inner.apply(op).await
        }
        .boxed()
    }
    fn load_or_create_player(&self, id: String, name: String) -> StoreFuture<'_, PlayerProfile> {
        self.inner.load_or_create_player(id, name)
    }
    fn load_player(&self, id: String) -> StoreFuture<'_, Option<PlayerProfile>> {
        self.inner.load_player(id)
    }
    fn write_room(&self, room: RoomState) -> StoreFuture<'_, bool> {
        self.inner.write_room(room)
    }
    fn claim_room(&self, room: String, epoch: u64) -> StoreFuture<'_, u64> {
        self.inner.claim_room(room, epoch)
    }
    fn load_room(&self, map: String) -> StoreFuture<'_, Option<RoomState>> {
        self.inner.load_room(map)
    }
    fn load_rooms(&self) -> StoreFuture<'_, Vec<RoomState>> {
        self.inner.load_rooms()
    }
    fn load_trade(&self, id: String) -> StoreFuture<'_, Option<TradeRecord>> {
        self.inner.load_trade(id)
    }
    fn recover_trades(&self, older_than: Duration) -> StoreFuture<'_, usize> {
        self.inner.recover_trades(older_than)
    }
    fn prune_ledger(&self, retention: Duration) -> StoreFuture<'_, usize> {
        self.inner.prune_ledger(retention)
    }
    fn load_op(&self, id: String) -> StoreFuture<'_, Option<crate::store::OpRecord>> {
        self.inner.load_op(id)
    }
    fn put_raw(&self, collection: &'static str, doc: Document) -> StoreFuture<'_, ()> {
        self.inner.put_raw(collection, doc)
    }

    fn put_ban(&self, ban: protocol::admin::Ban) -> StoreFuture<'_, ()> {
        self.inner.put_ban(ban)
    }

    fn delete_ban(&self, player: String) -> StoreFuture<'_, bool> {
        self.inner.delete_ban(player)
    }

    fn load_bans(&self) -> StoreFuture<'_, Vec<protocol::admin::Ban>> {
        self.inner.load_bans()
    }

    fn append_audit(&self, event: protocol::admin::Event) -> StoreFuture<'_, ()> {
        self.inner.append_audit(event)
    }

    fn load_audit(&self, limit: usize) -> StoreFuture<'_, Vec<protocol::admin::Event>> {
        self.inner.load_audit(limit)
    }
}

fn quick_config(dir: &std::path::Path, flush_interval_ms: u64) -> StoreConfig {
    let mut config = StoreConfig {
        flush_interval_ms,
        ..StoreConfig::default()
    };
    config.embedded.dir = dir.to_path_buf();
    config
}

fn quick_supervision(max_restarts: usize) -> supervise::Settings {
    supervise::Settings {
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        max_restarts,
        ..supervise::Settings::default()
    }
}

fn at(x: f32) -> PlayerState {
    PlayerState {
        map: "lobby".into(),
        x,
        y: 2.0,
        ..PlayerState::default()
    }
}

async fn stored_x(handle: &PersisterHandle, id: &str) -> Option<f32> {
    let store = handle.store().expect("connected");
    let profile = store.load_player(id.into()).await.expect("readable");
    profile.map(|p| p.state.x)
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_burst_of_profile_loads_waits_for_durable_slots_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quick_config(dir.path(), 60_000);
    // One durable call at a time: every load after the first finds the
    // slot taken.
    config.durable_max_in_flight = 1;
    let tasks = Tasks::default();
    let p = Persister::start_supervised(config, &tasks, quick_supervision(5)).unwrap();
    assert!(p.wait_ready(Duration::from_secs(5)).await);
    let loads = (0..32).map(|i| p.load_profile(&format!("p{i}"), "someone"));
    let loaded = futures_util::future::join_all(loads).await;
    for (i, profile) in loaded.into_iter().enumerate() {
        let profile = profile.unwrap_or_else(|e| panic!("load {i}: {e}"));
        assert_eq!(profile.id, format!("p{i}"));
    }
    let report = p.shutdown(Duration::from_secs(2)).await;
    assert!(!report.deadline_hit, "{report:?}");
}

/// An op the store does not answer within the durable timeout is
/// answered in doubt, and is not dropped: it goes on and lands, so a
/// half-done trade does not wait for recovery.
#[tokio::test]
async fn an_op_answered_in_doubt_goes_on_and_lands() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = quick_config(dir.path(), 60_000);
    config.durable_timeout_ms = 100;
    let store = PanickyStore {
        inner: EmbeddedStore::open(dir.path()).unwrap(),
        panics: AtomicUsize::new(0),
        apply_delay_ms: 400,
    };
    store
        .load_or_create_player("alice".into(), "alice".into())
        .await
        .unwrap();
    let tasks = Tasks::default();
    let store: Arc<dyn Store> = Arc::new(store);
    let p = Persister::spawn(config, Some(store.clone()), &tasks, quick_supervision(5)).unwrap();
    assert!(p.wait_ready(Duration::from_secs(5)).await);
    let op = DurableOp::Adjust(crate::store::Adjust {
        op_id: "late-1".into(),
        player: "alice".into(),
        currency: 7,
        ..Default::default()
    });
    let (landed_tx, landed_rx) = tokio::sync::oneshot::channel();
    let landed: crate::store::Landed<crate::store::DurableAck> = Box::new(move |ack| {
        let _ = landed_tx.send(ack);
    });
    let answer = p.durable_or_late(op, Some(landed)).await;
    assert!(
        matches!(answer, Err(DurableError::InDoubt(_))),
        "{answer:?}"
    );
    // Whoever asked hears of the landing, with the ack it would have had.
    let ack = tokio::time::timeout(Duration::from_secs(5), landed_rx)
        .await
        .expect("the op never landed")
        .expect("the landing was dropped unheard");
    assert_eq!(ack.inventory("alice").map(|i| i.currency), Some(7));
    let alice = store.load_player("alice".into()).await.unwrap().unwrap();
    assert_eq!(alice.inventory.currency, 7);
    p.shutdown(Duration::from_secs(2)).await;
}

/// An op answered in time never calls its late callback.
#[tokio::test]
async fn an_op_answered_in_time_is_not_heard_of_again() {
    let dir = tempfile::tempdir().unwrap();
    let config = quick_config(dir.path(), 60_000);
    let tasks = Tasks::default();
    let p = Persister::spawn(config, None, &tasks, quick_supervision(5)).unwrap();
    assert!(p.wait_ready(Duration::from_secs(5)).await);
    p.load_profile("alice", "alice").await.unwrap();
    let called = Arc::new(AtomicUsize::new(0));
    let count = called.clone();
    let landed: crate::store::Landed<crate::store::DurableAck> = Box::new(move |_| {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let op = DurableOp::Adjust(crate::store::Adjust {
        op_id: "prompt-1".into(),
        player: "alice".into(),
        currency: 3,
        ..Default::default()
    });
    let ack = p.durable_or_late(op, Some(landed)).await.unwrap();
    assert_eq!(ack.inventory("alice").map(|i| i.currency), Some(3));
    p.shutdown(Duration::from_secs(2)).await;
    assert_eq!(called.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_flusher_that_panics_mid_flush_is_restarted_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Ticks every 20 ms: the restarted flusher's first flush.
    let config = quick_config(dir.path(), 20);
    let store = PanickyStore {
        inner: EmbeddedStore::open(dir.path()).unwrap(),
        panics: AtomicUsize::new(1),
        apply_delay_ms: 0,
    };
    let tasks = Tasks::default();
    let store: Arc<dyn Store> = Arc::new(store);
    let p = Persister::spawn(config, Some(store), &tasks, quick_supervision(5)).unwrap();
    assert!(p.wait_ready(Duration::from_secs(5)).await);
    p.player_state("alice", at(1.0));
    p.player_state("bob", at(7.0));
    // The first flush panics with both documents taken from the dirty
    // map; the next incarnation writes them.
    p.flush().await.unwrap();
    assert_eq!(stored_x(&p, "alice").await, Some(1.0));
    assert_eq!(stored_x(&p, "bob").await, Some(7.0));
    assert_eq!(tasks.restarts(FLUSHER_TASK), Some(1));
    assert_eq!(tasks.report()[FLUSHER_TASK].panics, 1);
    assert_eq!(tasks.state(FLUSHER_TASK), Some(supervise::ChildState::Up));
    // And it keeps flushing.
    p.player_state("alice", at(3.0));
    p.flush().await.unwrap();
    assert_eq!(stored_x(&p, "alice").await, Some(3.0));
    let report = p.shutdown(Duration::from_secs(2)).await;
    assert!(!report.deadline_hit, "{report:?}");
}

/// A supervised persister (flushing only when asked, so a test knows
/// what each flush wrote) whose flusher was just told to panic.
async fn flusher_hit_by_a_fault(dir: &std::path::Path, max_restarts: usize) -> (Tasks, Persister) {
    let tasks = Tasks::default();
    let p = Persister::start_supervised(
        quick_config(dir, 60_000),
        &tasks,
        quick_supervision(max_restarts),
    )
    .unwrap();
    assert!(p.wait_ready(Duration::from_secs(5)).await);
    tasks.inject_panic(FLUSHER_TASK).unwrap();
    (tasks, p)
}

#[tokio::test]
async fn an_injected_fault_restarts_the_flusher_and_shutdown_flushes_once() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, p) = flusher_hit_by_a_fault(dir.path(), 5).await;
    until("the flusher's restart", || {
        tasks.restarts(FLUSHER_TASK) == Some(1)
    })
    .await;
    p.player_state("alice", at(4.0));
    p.flush().await.unwrap();
    assert_eq!(stored_x(&p, "alice").await, Some(4.0));
    // Dirty at shutdown: written by the final flush, once.
    p.player_state("alice", at(5.0));
    let handle = p.handle();
    let written_before = handle.stats().volatile_written;
    let report = p.shutdown(Duration::from_secs(2)).await;
    assert_eq!((report.flushed, report.left_dirty), (1, 0), "{report:?}");
    assert_eq!(handle.stats().volatile_written, written_before + 1);
    assert_eq!(stored_x(&handle, "alice").await, Some(5.0));
    assert_eq!(
        tasks.state(FLUSHER_TASK),
        Some(supervise::ChildState::Stopped)
    );
    assert_eq!(tasks.restarts(FLUSHER_TASK), Some(1), "none at shutdown");
}

#[tokio::test]
async fn a_flusher_given_up_still_gets_its_state_written_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (tasks, p) = flusher_hit_by_a_fault(dir.path(), 0).await;
    until("the flusher given up", || {
        tasks.state(FLUSHER_TASK) == Some(supervise::ChildState::Failed)
    })
    .await;
    assert!(tasks.any_failed());
    p.player_state("alice", at(6.0));
    let handle = p.handle();
    let report = p.shutdown(Duration::from_secs(2)).await;
    assert_eq!((report.flushed, report.left_dirty), (1, 0), "{report:?}");
    assert_eq!(stored_x(&handle, "alice").await, Some(6.0));
}

#[tokio::test]
async fn the_dirty_map_keeps_the_newest_revision_whatever_the_arrival_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = Persister::start(quick_config(dir.path(), 60_000)).unwrap();
    assert!(p.wait_ready(Duration::from_secs(5)).await);
    let state = |x: f32, rev: u64| Volatile::Player {
        id: "ann".into(),
        state: at(x),
        rev,
    };
    p.volatile(state(2.0, 20));
    p.volatile(state(1.0, 10));
    let loaded = p.load_profile("ann", "Ann").await.unwrap();
    assert_eq!((loaded.state.x, loaded.state_rev), (2.0, 20));
    p.flush().await.unwrap();
    assert_eq!(stored_x(&p, "ann").await, Some(2.0));
    // Revisions the persister issues go on from the highest it saw.
    p.player_state("ann", at(3.0));
    p.flush().await.unwrap();
    assert_eq!(stored_x(&p, "ann").await, Some(3.0));
    let report = p.shutdown(Duration::from_secs(2)).await;
    assert!(!report.deadline_hit, "{report:?}");
}

#[test]
fn backoff_doubles_with_jitter_up_to_the_max() {
    let config = StoreConfig {
        retry_min_ms: 100,
        retry_max_ms: 1_000,
        ..StoreConfig::default()
    };
    let mut b = retry_backoff(&config);
    let delays: Vec<Duration> = (0..8).map(|_| b.delay()).collect();
    assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
    assert!(delays[3] >= Duration::from_millis(400) && delays[3] <= Duration::from_millis(800));
    assert!(delays.iter().all(|d| *d <= Duration::from_millis(1_000)));
    b.reset();
    assert!(b.delay() <= Duration::from_millis(100));
}
