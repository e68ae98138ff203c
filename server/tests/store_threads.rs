//! A burst of profile loads (a login storm) runs on at most
//! `store.io_threads` of the store's threads. Before the bound, 10,000
//! idle players joining at 500 a second started 248 threads that waited on
//! redb's write lock, each with its stack and allocator cache, and held
//! about 47 MB until they exited 10 s later. A test binary of its own: it
//! counts this process's threads.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use server::config::StoreConfig;
use server::store::Persister;

/// This process's threads of the store's blocking pool (`comm` is cut to
/// 15 bytes: "tessera-store-i").
fn store_io_threads() -> usize {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("tessera-store-i"))
        .count()
}

#[tokio::test]
async fn a_login_burst_blocks_at_most_io_threads_threads() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StoreConfig::default();
    config.embedded.dir = dir.path().to_path_buf();
    config.io_threads = 2;
    let persister = Persister::start(config).unwrap();
    assert!(persister.wait_ready(Duration::from_secs(10)).await);

    // Count the pool's threads while 200 loads (each a redb write
    // transaction) are in flight at once.
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (most, done) = (most.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                most.fetch_max(store_io_threads(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    let loads = (0..200).map(|i| persister.load_profile(&format!("p{i}"), "someone"));
    let loaded = futures_util::future::join_all(loads).await;
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    for (i, profile) in loaded.into_iter().enumerate() {
        let profile = profile.unwrap_or_else(|e| panic!("load {i}: {e}"));
        assert_eq!(profile.id, format!("p{i}"));
    }
    let most = most.load(Ordering::SeqCst);
    assert!(most >= 1, "the loads ran on the store's threads");
    assert!(most <= 2, "{most} store threads for io_threads = 2");
    let report = persister.shutdown(Duration::from_secs(5)).await;
    assert!(!report.deadline_hit, "{report:?}");
}
