//! The cluster directory against a real `redis-server`: leases and their
//! epochs, shards alive and dead, placement, players, the events stream,
//! and a Redis that goes away and comes back empty.

mod common;
mod redis_support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis_support::RedisServer;
use server::cluster::{
    run_agent, Directory, DirectoryError, DirectorySettings, EventKind, LeaseNotice, ShardId,
    ShardLoad, ShardRecord, ShardState,
};
use server::ids::RoomId;
use tokio::sync::{broadcast, watch};

/// Generous: these tests wait for conditions, never for fixed times.
const PATIENCE: Duration = Duration::from_secs(15);

fn settings(redis: &RedisServer, prefix: &str) -> DirectorySettings {
    DirectorySettings {
        redis: redis.url(),
        prefix: prefix.to_string(),
        // The defaults' timings, with a longer op timeout than the
        // default's: these tests share two cores with other builds.
        lease: Duration::from_millis(3_000),
        renew: Duration::from_millis(1_000),
        shard_ttl: Duration::from_millis(3_000),
        heartbeat: Duration::from_millis(1_000),
        op_timeout: Duration::from_millis(800),
        wait: Duration::from_millis(2_000),
        events_max_len: 10,
        player_ttl: Duration::from_secs(60),
        dead_shard_keep: Duration::from_secs(3600),
    }
}

fn shard(redis: &RedisServer, prefix: &str, id: &str) -> Directory {
    Directory::new(settings(redis, prefix), ShardId::new(id).unwrap()).unwrap()
}

/// A shard whose leases outlive any pause of a loaded test machine, for
/// checks that must not race a lease's expiry.
fn patient_shard(redis: &RedisServer, prefix: &str, id: &str) -> Directory {
    let settings = DirectorySettings {
        lease: Duration::from_secs(60),
        shard_ttl: Duration::from_secs(60),
        op_timeout: Duration::from_secs(2),
        wait: Duration::from_secs(5),
        ..settings(redis, prefix)
    };
    Directory::new(settings, ShardId::new(id).unwrap()).unwrap()
}

fn record(id: &str) -> ShardRecord {
    ShardRecord {
        ws_addr: format!("127.0.0.1:1{id}"),
        http_addr: String::new(),
        peer_addr: String::new(),
        version: "test".into(),
        started_at: 1,
    }
}

fn room(name: &str) -> RoomId {
    name.parse().unwrap()
}

async fn notice(rx: &mut broadcast::Receiver<LeaseNotice>, want: impl Fn(&LeaseNotice) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(n)) if want(&n) => return,
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => panic!("notice channel: {e}"),
            Err(_) => panic!("no matching lease notice within {PATIENCE:?}"),
        }
    }
}

/// Run the shard's directory task until the returned sender is set.
fn agent(dir: &Directory, id: &str) -> watch::Sender<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(run_agent(
        dir.clone(),
        record(id),
        Arc::new(|| ShardLoad {
            sessions: 3,
            rooms: 1,
            cpu: 0.0,
        }),
        stop_rx,
    ));
    stop_tx
}

#[tokio::test]
async fn two_shards_contend_for_a_lease_and_exactly_one_wins() {
    let redis = RedisServer::start();
    let (a, b) = (
        patient_shard(&redis, "t1", "a"),
        patient_shard(&redis, "t1", "b"),
    );
    let r = room("lobby");
    for round in 0..20 {
        let r = RoomId::new(format!("m{round}"), 1);
        let (ra, rb) = tokio::join!(a.acquire_room(&r, 0), b.acquire_room(&r, 0));
        let won = [&ra, &rb].iter().filter(|x| x.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {ra:?} {rb:?}");
        let (winner, loser) = if ra.is_ok() { (ra, rb) } else { (rb, ra) };
        let lease = winner.unwrap();
        match loser {
            Err(DirectoryError::Held { shard, epoch, .. }) => {
                assert_eq!((shard, epoch), (lease.shard.clone(), lease.epoch));
            }
            other => panic!("the loser got {other:?}"),
        }
        assert_eq!(a.owner(&r).await.unwrap(), Some((lease.shard, lease.epoch)));
    }
    // Taking a lease one holds already keeps its epoch.
    let first = a.acquire_room(&r, 0).await.unwrap();
    let again = a.acquire_room(&r, 0).await.unwrap();
    assert_eq!(first.epoch, again.epoch);
}

#[tokio::test]
async fn the_epoch_rises_on_every_owner_change_and_non_owners_cannot_renew_or_release() {
    let redis = RedisServer::start();
    let a = shard(&redis, "t2", "a");
    let (pa, pb) = (
        patient_shard(&redis, "t2", "a"),
        patient_shard(&redis, "t2", "b"),
    );
    let r = room("arena");
    let mut last = 0;
    for i in 0..6 {
        let (owner, other) = if i % 2 == 0 { (&pa, &pb) } else { (&pb, &pa) };
        let lease = owner.acquire_room(&r, 0).await.unwrap();
        assert!(lease.epoch > last, "epoch {} after {last}", lease.epoch);
        last = lease.epoch;
        // The other one can neither take, nor release it.
        assert!(matches!(
            other.acquire_room(&r, 0).await,
            Err(DirectoryError::Held { .. })
        ));
        assert!(matches!(
            other.release_room(&r).await,
            Err(DirectoryError::NotOwner { .. })
        ));
        owner.release_room(&r).await.unwrap();
    }

    // An expired lease (a renews nothing) goes to b with epoch + 1; a's
    // renewal then finds it lost, and its release is refused.
    let old = a.acquire_room(&r, 0).await.unwrap();
    common::eventually(PATIENCE, "a's lease expires", || async {
        a.owner(&r).await.unwrap().is_none()
    })
    .await;
    let new = pb.acquire_room(&r, 0).await.unwrap();
    assert_eq!(new.epoch, old.epoch + 1);
    let report = a.renew_all().await.unwrap();
    assert_eq!(report.lost, vec![(r.clone(), old.epoch)]);
    assert!(a.held().is_empty());
    assert!(matches!(
        a.release_room(&r).await,
        Err(DirectoryError::NotOwner { .. })
    ));
    assert_eq!(
        pb.owner(&r).await.unwrap(),
        Some((pb.shard().clone(), new.epoch))
    );
    // b's own renewal keeps it.
    let report = pb.renew_all().await.unwrap();
    assert_eq!(report.renewed, vec![r.clone()]);
}

/// A shard restarted within its lease (same id, a new process: here a new
/// `Directory`) takes its rooms at a new epoch, never the old one; the
/// old process, should it still run, is fenced: its renewal finds the
/// lease lost, its acquire and release are refused, and the room stays
/// in the shard's room set for the new process.
#[tokio::test]
async fn a_restarted_shard_takes_its_rooms_at_a_new_epoch_and_the_old_process_is_fenced() {
    let redis = RedisServer::start();
    let old = patient_shard(&redis, "t9", "a");
    let r = room("keep");
    let first = old.acquire_room(&r, 0).await.unwrap();
    // The same process taking it again keeps its epoch.
    assert_eq!(old.acquire_room(&r, 0).await.unwrap().epoch, first.epoch);

    let new = patient_shard(&redis, "t9", "a");
    let taken = new.acquire_room(&r, first.epoch).await.unwrap();
    assert!(
        taken.epoch > first.epoch,
        "the restarted process re-used epoch {} (first {})",
        taken.epoch,
        first.epoch
    );
    assert_eq!(
        new.owner(&r).await.unwrap(),
        Some((new.shard().clone(), taken.epoch))
    );
    // The new process's own renewals and acquires keep its epoch.
    assert_eq!(new.renew_all().await.unwrap().renewed, vec![r.clone()]);
    assert_eq!(new.acquire_room(&r, 0).await.unwrap().epoch, taken.epoch);

    // The old process: refused, and its renewal reports the lease lost.
    match old.acquire_room(&r, 0).await {
        Err(DirectoryError::Held { shard, epoch, .. }) => {
            assert_eq!((shard.as_str(), epoch), ("a", taken.epoch));
        }
        other => panic!("the stale process got {other:?}"),
    }
    let report = old.renew_all().await.unwrap();
    assert_eq!(report.lost, vec![(r.clone(), first.epoch)]);
    assert!(matches!(
        old.release_room(&r).await,
        Err(DirectoryError::NotOwner { .. })
    ));
    assert_eq!(
        new.owner(&r).await.unwrap(),
        Some((new.shard().clone(), taken.epoch))
    );
    assert_eq!(new.rooms_of(new.shard()).await.unwrap(), vec![r.clone()]);
    assert_eq!(new.renew_all().await.unwrap().renewed, vec![r.clone()]);
}

#[tokio::test]
async fn a_killed_shard_goes_dead_and_room_sets_follow_the_leases() {
    let redis = RedisServer::start();
    let (a, b) = (shard(&redis, "t3", "a"), shard(&redis, "t3", "b"));
    let stop_a = agent(&a, "a");
    let stop_b = agent(&b, "b");
    common::eventually(PATIENCE, "both registered and alive", || async {
        let shards = b.shards().await.unwrap_or_default();
        shards.len() == 2 && shards.iter().all(|s| s.alive)
    })
    .await;
    let info = b.shards().await.unwrap();
    let a_info = info.iter().find(|s| s.id.as_str() == "a").unwrap();
    assert_eq!(a_info.record.ws_addr, "127.0.0.1:1a");
    assert_eq!(a_info.state, ShardState::Starting);

    let (r1, r2) = (room("lobby"), room("lobby#2"));
    a.acquire_room(&r1, 0).await.unwrap();
    let held = a.acquire_room(&r2, 0).await.unwrap();
    assert_eq!(
        a.rooms_of(a.shard()).await.unwrap(),
        vec![r1.clone(), r2.clone()]
    );
    a.release_room(&r1).await.unwrap();
    assert_eq!(a.rooms_of(a.shard()).await.unwrap(), vec![r2.clone()]);

    // "Kill" a: its task stops without leaving; heartbeats and renewals
    // stop, so its alive key and its lease expire.
    stop_a.send(true).unwrap();
    common::eventually(PATIENCE, "a is dead", || async {
        b.shards()
            .await
            .unwrap_or_default()
            .iter()
            .any(|s| s.id.as_str() == "a" && !s.alive)
    })
    .await;
    assert!(b
        .shards()
        .await
        .unwrap()
        .iter()
        .any(|s| s.id.as_str() == "b" && s.alive));
    common::eventually(PATIENCE, "a's lease expired", || async {
        b.acquire_room(&r2, 0).await.is_ok()
    })
    .await;
    assert_eq!(b.held_epoch(&r2), Some(held.epoch + 1));
    assert_eq!(b.rooms_of(b.shard()).await.unwrap(), vec![r2.clone()]);
    // a's set still names r2 until a renews; the console asks owner().
    assert_eq!(
        b.owner(&r2).await.unwrap().map(|(s, _)| s),
        Some(b.shard().clone())
    );
    let report = a.renew_all().await.unwrap();
    assert_eq!(report.lost.len(), 1);
    assert!(a.rooms_of(a.shard()).await.unwrap().is_empty());
    stop_b.send(true).unwrap();
}

/// A shard killed without leaving is reported dead once, whoever looks,
/// and its record is removed after the keep; one that left is not
/// reported again; one that comes back registers afresh.
#[tokio::test]
async fn a_dead_shard_is_reported_once_and_its_record_removed_after_the_keep() {
    let redis = RedisServer::start();
    // a and d die fast; b and c (the lookers) stay alive without
    // heartbeats for the whole test.
    let with_ttl = |id: &str, ttl: Duration| {
        let settings = DirectorySettings {
            shard_ttl: ttl,
            dead_shard_keep: Duration::from_secs(3),
            ..settings(&redis, "t9")
        };
        Directory::new(settings, ShardId::new(id).unwrap()).unwrap()
    };
    let (short, long) = (Duration::from_millis(600), Duration::from_secs(120));
    let (a, b) = (with_ttl("a", short), with_ttl("b", long));
    let (c, d) = (with_ttl("c", long), with_ttl("d", short));
    for (dir, id) in [(&a, "a"), (&b, "b"), (&c, "c"), (&d, "d")] {
        dir.register(record(id)).await.unwrap();
    }
    // d leaves in order; a never heartbeats again ("killed").
    d.deregister().await.unwrap();
    common::eventually(PATIENCE, "a's alive key expired", || async {
        b.shards()
            .await
            .unwrap_or_default()
            .iter()
            .any(|s| s.id.as_str() == "a" && !s.alive)
    })
    .await;
    // b and c both look.
    let (by_b, by_c) = (
        b.reap_dead_shards().await.unwrap(),
        c.reap_dead_shards().await.unwrap(),
    );
    let mut down: Vec<String> = by_b
        .down
        .iter()
        .chain(&by_c.down)
        .map(|s| s.to_string())
        .collect();
    down.sort();
    assert_eq!(
        down,
        vec!["a"],
        "a reported once, d (which left) not at all"
    );
    let reports = b
        .events_tail(50)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == EventKind::ShardDown)
        .map(|e| (e.subject, e.detail))
        .collect::<Vec<_>>();
    assert_eq!(
        reports,
        vec![
            ("d".to_string(), "shutdown".to_string()),
            ("a".to_string(), "no heartbeat".to_string())
        ]
    );

    // Past the keep, a's and d's records go; b's and c's stay.
    common::eventually(PATIENCE, "dead records removed", || async {
        let _ = b.reap_dead_shards().await;
        let ids: Vec<String> = b
            .shard_ids()
            .await
            .unwrap_or_default()
            .iter()
            .map(|s| s.to_string())
            .collect();
        ids == vec!["b", "c"]
    })
    .await;

    // a comes back: it is registered and alive again, and a later death
    // would be reported anew.
    a.register(record("a")).await.unwrap();
    let back = b.shards().await.unwrap();
    assert!(back.iter().any(|s| s.id.as_str() == "a" && s.alive));
}

#[tokio::test]
async fn placement_picks_only_alive_ready_shards() {
    let redis = RedisServer::start();
    let dirs: Vec<Directory> = ["a", "b", "c"]
        .iter()
        .map(|id| patient_shard(&redis, "t4", id))
        .collect();
    let rooms: Vec<RoomId> = (1..=60).map(|i| RoomId::new("plains", i)).collect();
    // Registered but starting: nobody to place on.
    for (d, id) in dirs.iter().zip(["a", "b", "c"]) {
        d.register(record(id)).await.unwrap();
    }
    assert!(matches!(
        dirs[0].place(&rooms[0]).await,
        Err(DirectoryError::NoShard(_))
    ));
    for d in &dirs {
        d.set_state(ShardState::Ready).await.unwrap();
    }
    let mut used = BTreeSet::new();
    for r in &rooms {
        let here = dirs[0].place(r).await.unwrap();
        // Every shard agrees.
        assert_eq!(dirs[2].place(r).await.unwrap(), here);
        used.insert(here.to_string());
    }
    assert_eq!(used.len(), 3, "rooms spread over every shard: {used:?}");
    dirs[1].set_state(ShardState::Draining).await.unwrap();
    for r in &rooms {
        assert_ne!(dirs[0].place(r).await.unwrap().as_str(), "b");
    }
    // A dead shard (alive key gone) is not placed on either.
    dirs[2].deregister().await.unwrap();
    for r in &rooms {
        assert_eq!(dirs[0].place(r).await.unwrap().as_str(), "a");
    }
    let kinds: Vec<EventKind> = dirs[0]
        .events_tail(100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&EventKind::ShardDraining));
    assert!(kinds.contains(&EventKind::ShardDown));
}

#[tokio::test]
async fn a_player_claim_returns_the_previous_holder() {
    let redis = RedisServer::start();
    let (a, b) = (
        patient_shard(&redis, "t5", "a"),
        patient_shard(&redis, "t5", "b"),
    );
    assert_eq!(a.claim_player("p1", "s1").await.unwrap(), None);
    assert!(a.update_player("p1", "s1", "lobby", "tok1").await.unwrap());
    let prev = b.claim_player("p1", "s2").await.unwrap().unwrap();
    assert_eq!(
        (
            prev.shard.as_str(),
            prev.session.as_str(),
            prev.room.as_str()
        ),
        ("a", "s1", "lobby")
    );
    let entry = a.player("p1").await.unwrap().unwrap();
    assert_eq!((entry.shard.as_str(), entry.session.as_str()), ("b", "s2"));
    assert_eq!(entry.room, "");
    // The old seat can neither update nor release the new one.
    assert!(!a.update_player("p1", "s1", "arena", "").await.unwrap());
    assert!(!a.release_player("p1", "s1").await.unwrap());
    assert!(b.release_player("p1", "s2").await.unwrap());
    assert_eq!(a.player("p1").await.unwrap(), None);
}

#[tokio::test]
async fn the_events_stream_is_trimmed_to_its_cap() {
    let redis = RedisServer::start();
    let a = shard(&redis, "t6", "a");
    let mut ids = Vec::new();
    for i in 0..500 {
        ids.push(
            a.event(EventKind::AdminAction, &format!("item{i}"), "test")
                .await
                .unwrap(),
        );
    }
    let len = a.events_len().await.unwrap();
    // MAXLEN ~ trims whole stream nodes (100 entries by default).
    assert!(len <= 10 + 100, "{len} of 500 events kept");
    let tail = a.events_tail(3).await.unwrap();
    let subjects: Vec<&str> = tail.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(subjects, ["item497", "item498", "item499"]);
    assert_eq!(tail[0].shard, "a");
    let next = a.events_since(&ids[497], 10).await.unwrap();
    let subjects: Vec<&str> = next.iter().map(|e| e.subject.as_str()).collect();
    assert_eq!(subjects, ["item498", "item499"]);
}

#[tokio::test]
async fn redis_down_ten_seconds_fails_ops_in_bounds_then_owners_reassert_and_epochs_keep_rising() {
    let mut redis = RedisServer::start();
    let (a, b) = (shard(&redis, "t7", "a"), shard(&redis, "t7", "b"));
    // b's checks during the outage need short timeouts; its other calls
    // must not fail on a loaded machine.
    let pb = patient_shard(&redis, "t7", "b");
    let (r, q) = (room("lobby"), room("arena"));
    // q went through three owners; the store saw epoch 3 last.
    for _ in 0..3 {
        pb.acquire_room(&q, 0).await.unwrap();
        pb.release_room(&q).await.unwrap();
    }
    let mut notices = a.notices();
    let stop_a = agent(&a, "a");
    let lease = a.acquire_room(&r, 0).await.unwrap();

    redis.stop();
    let bound = a.settings().wait + Duration::from_secs(2);
    let started = Instant::now();
    let err = b.acquire_room(&room("plains"), 0).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(started.elapsed() < bound, "{:?}", started.elapsed());
    let started = Instant::now();
    assert!(b.owner(&r).await.unwrap_err().is_unavailable());
    assert!(b.claim_player("p", "s").await.unwrap_err().is_unavailable());
    assert!(b.place(&r).await.unwrap_err().is_unavailable());
    assert!(started.elapsed() < bound * 3, "{:?}", started.elapsed());
    // a cannot renew: its room is told before the lease's deadline.
    notice(&mut notices, |n| {
        matches!(n, LeaseNotice::Expiring { room, epoch } if *room == r && *epoch == lease.epoch)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;

    // Back, empty: a re-asserts its lease with the same epoch and its
    // record; nobody else got the room meanwhile.
    redis.restart();
    notice(&mut notices, |n| {
        matches!(n, LeaseNotice::Reasserted { room, epoch } if *room == r && *epoch == lease.epoch)
    })
    .await;
    assert_eq!(
        pb.owner(&r).await.unwrap(),
        Some((a.shard().clone(), lease.epoch))
    );
    common::eventually(PATIENCE, "a's record is back", || async {
        pb.shards()
            .await
            .unwrap_or_default()
            .iter()
            .any(|s| s.id.as_str() == "a" && s.alive)
    })
    .await;
    // The counter of q was lost with the data; the store's floor keeps the
    // next epoch above the last one it saw.
    let next = pb.acquire_room(&q, 3).await.unwrap();
    assert_eq!(next.epoch, 4);
    // And r, released by a, goes to b above a's epoch.
    a.release_room(&r).await.unwrap();
    let taken = pb.acquire_room(&r, lease.epoch).await.unwrap();
    assert!(taken.epoch > lease.epoch);
    stop_a.send(true).unwrap();
}

#[test]
fn a_shard_started_in_cluster_mode_prints_its_id_and_registers() {
    let redis = RedisServer::start();
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera-server"))
        .args(["--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .args(["--cluster-redis", &redis.url(), "--shard-id", "bin-1"])
        .args(["--peer-addr", "127.0.0.1:0"])
        .env(
            "TESSERA_CLUSTER__SECRET",
            "0123456789abcdef0123456789abcdef",
        )
        .env("TESSERA_CLUSTER__KEY_PREFIX", "t8")
        .env("TESSERA_STORE__EMBEDDED__DIR", data.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the server binary starts");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut child = Kill(child);
    let mut lines = BufReader::new(stdout).lines();
    let mut ws = None;
    let mut id = None;
    for line in lines.by_ref().take(10) {
        let line = line.unwrap();
        if let Some(addr) = line.strip_prefix("ws listening on ") {
            ws = Some(addr.to_string());
        }
        if let Some(shard) = line.strip_prefix("shard id ") {
            id = Some(shard.to_string());
            break;
        }
    }
    assert_eq!(id.as_deref(), Some("bin-1"));
    let ws = ws.expect("the ws address is printed first");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = shard(&redis, "t8", "observer");
        common::eventually(PATIENCE, "the shard registered and is ready", || async {
            dir.shards().await.unwrap_or_default().iter().any(|s| {
                s.id.as_str() == "bin-1"
                    && s.alive
                    && s.state == ShardState::Ready
                    && s.record.ws_addr == ws
            })
        })
        .await;
        common::eventually(PATIENCE, "shard_up is in the events stream", || async {
            dir.events_tail(10)
                .await
                .unwrap_or_default()
                .iter()
                .any(|e| e.kind == EventKind::ShardUp && e.subject == "bin-1")
        })
        .await;
        // SIGTERM: it leaves the cluster (dead at once, shard_down).
        let _ = Command::new("kill")
            .args(["-TERM", &child.0.id().to_string()])
            .status();
        common::eventually(PATIENCE, "the shard left", || async {
            dir.shards()
                .await
                .unwrap_or_default()
                .iter()
                .any(|s| s.id.as_str() == "bin-1" && !s.alive)
        })
        .await;
        common::eventually(PATIENCE, "shard_down is in the events stream", || async {
            dir.events_tail(10)
                .await
                .unwrap_or_default()
                .iter()
                .any(|e| e.kind == EventKind::ShardDown && e.subject == "bin-1")
        })
        .await;
    });
    let _ = child.0.wait();
}

#[tokio::test]
async fn the_task_reports_a_lease_another_shard_took_as_lost() {
    let redis = RedisServer::start();
    let a = shard(&redis, "t9", "a");
    let mut notices = a.notices();
    let stop_a = agent(&a, "a");
    let r = room("plains");
    let lease = a.acquire_room(&r, 0).await.unwrap();
    // As after an outage in which Redis lost the lease and shard b took
    // the room at a later epoch before a could re-assert it.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg("t9:room:plains")
        .arg(format!("b:{}", lease.epoch + 1))
        .query_async(&mut conn)
        .await
        .unwrap();
    notice(
        &mut notices,
        |n| matches!(n, LeaseNotice::Lost { room, epoch } if *room == r && *epoch == lease.epoch),
    )
    .await;
    assert!(a.held().is_empty());
    assert!(a.rooms_of(a.shard()).await.unwrap().is_empty());
    // b's lease is left alone.
    assert_eq!(
        a.owner(&r).await.unwrap(),
        Some((ShardId::new("b").unwrap(), lease.epoch + 1))
    );
    stop_a.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_starts_while_redis_is_down_and_registers_when_it_returns() {
    let mut redis = RedisServer::start();
    redis.stop();
    let mut config = common::test_config();
    config.cluster.redis = redis.url();
    config.cluster.secret = "s".repeat(32);
    config.cluster.key_prefix = "t10".into();
    config.cluster.shard_id = "down-at-start".into();
    let shard = tokio::task::spawn_blocking(move || common::start(config))
        .await
        .unwrap();
    let dir = shard
        .cluster
        .clone()
        .expect("cluster mode gives a directory");
    assert_eq!(dir.shard().as_str(), "down-at-start");
    // The shard accepts players, but a join needs the directory (which
    // shard runs the room?): while Redis is down it is refused with 5005.
    let (mut client, _) = common::Client::welcomed(shard.ws_addr, "ann").await;
    client
        .send(protocol::ClientMsg::Join(protocol::msg::Join {
            map: "test".into(),
        }))
        .await;
    client
        .expect_error(protocol::ErrorCode::DirectoryUnavailable)
        .await;
    redis.restart();
    // Once it is back (and the shard registered), the room is placed and
    // joined.
    let deadline = Instant::now() + PATIENCE;
    loop {
        client
            .send(protocol::ClientMsg::Join(protocol::msg::Join {
                map: "test".into(),
            }))
            .await;
        let answer = client
            .expect("joined or an error", |m| match m {
                protocol::ServerMsg::Joined(_) => Some(true),
                protocol::ServerMsg::Error(_) => Some(false),
                _ => None,
            })
            .await;
        if answer {
            break;
        }
        assert!(Instant::now() < deadline, "no join once Redis came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    client.chat("hello").await;
    let observer = shard_of(&redis, "t10");
    common::eventually(PATIENCE, "the shard registered once Redis came", || async {
        observer.shards().await.unwrap_or_default().iter().any(|s| {
            s.id.as_str() == "down-at-start"
                    && s.alive
                    && s.state == ShardState::Ready
                    // The heartbeat reports the player and its room.
                    && s.load.sessions >= 1
                    && s.load.rooms >= 1
        })
    })
    .await;
    tokio::task::spawn_blocking(move || drop(shard))
        .await
        .unwrap();
}

fn shard_of(redis: &RedisServer, prefix: &str) -> Directory {
    shard(redis, prefix, "observer")
}

#[tokio::test]
async fn a_migration_moves_the_lease_by_compare_and_set_and_only_once() {
    let redis = RedisServer::start();
    let prefix = "dmove";
    let (a, b, c) = (
        patient_shard(&redis, prefix, "a"),
        patient_shard(&redis, prefix, "b"),
        patient_shard(&redis, prefix, "c"),
    );
    let lobby = room("lobby");
    let lease = a.acquire_room(&lobby, 0).await.unwrap();
    // b takes it from a at that epoch: epoch + 1, b's now, in b's set.
    let moved = b
        .take_over_room(&lobby, a.shard(), lease.epoch)
        .await
        .unwrap();
    assert_eq!(moved.epoch, lease.epoch + 1);
    assert_eq!(
        a.owner(&lobby).await.unwrap(),
        Some((ShardId::new("b").unwrap(), lease.epoch + 1))
    );
    assert_eq!(b.held_epoch(&lobby), Some(moved.epoch));
    assert_eq!(b.rooms_of(b.shard()).await.unwrap(), vec![lobby.clone()]);
    assert!(a.rooms_of(a.shard()).await.unwrap().is_empty());
    // a forgets its old lease without a notice; c's compare against the
    // old epoch (a target that answered late) fails and names the holder.
    a.forget_moved(&lobby, lease.epoch);
    assert_eq!(a.held_epoch(&lobby), None);
    match c.take_over_room(&lobby, a.shard(), lease.epoch).await {
        Err(DirectoryError::Held { shard, epoch, .. }) => {
            assert_eq!((shard.as_str(), epoch), ("b", moved.epoch));
        }
        other => panic!("a stale compare-and-set must fail: {other:?}"),
    }
    // The same shard taking its own lease back (a failed migration)
    // raises the epoch too, so a late target's move fails.
    let back = b
        .take_over_room(&lobby, b.shard(), moved.epoch)
        .await
        .unwrap();
    assert_eq!(back.epoch, moved.epoch + 1);
    assert!(c
        .take_over_room(&lobby, b.shard(), moved.epoch)
        .await
        .is_err());
    // b renews the lease it holds now, at its new epoch.
    let report = b.renew_all().await.unwrap();
    assert_eq!(report.renewed, vec![lobby.clone()]);
    // Nobody holds a released room: a move of it is refused as not owned.
    b.release_room(&lobby).await.unwrap();
    assert!(matches!(
        c.take_over_room(&lobby, b.shard(), back.epoch).await,
        Err(DirectoryError::NotOwner { .. })
    ));
}

/// The conflicts the heartbeat counted so far (the process's registry).
fn id_conflicts() -> f64 {
    server::metrics::prometheus()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("tessera_shard_id_conflicts_total "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_shard_id_another_live_process_heartbeats_as_is_refused_and_a_duplicate_is_counted() {
    // The recorder first: counters registered before it count nowhere.
    server::metrics::prometheus();
    let redis = RedisServer::start();
    let started = |at: u64| ShardRecord {
        started_at: at,
        ..record("a")
    };
    let live = shard(&redis, "dup", "a");
    live.register(started(100)).await.unwrap();
    let beating = {
        let live = live.clone();
        tokio::spawn(async move {
            loop {
                let _ = live.heartbeat(ShardLoad::default()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let other = shard(&redis, "dup", "a");
    let err = other.ensure_id_free(200).await.unwrap_err();
    assert!(
        matches!(
            err,
            DirectoryError::IdInUse {
                started_at: 100,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("cluster.shard_id"), "{err}");
    // Its own record is no obstacle to a process.
    other.ensure_id_free(100).await.unwrap();

    // A duplicate that registered anyway (Redis was down at its start):
    // the live process's heartbeat finds the record is not its own.
    let before = id_conflicts();
    other.register(started(200)).await.unwrap();
    common::eventually(PATIENCE, "a conflict counted", || async {
        id_conflicts() > before
    })
    .await;

    // Nobody heartbeats any more (a process that died within its TTL): a
    // new process takes the id.
    beating.abort();
    let _ = beating.await;
    shard(&redis, "dup", "a").ensure_id_free(300).await.unwrap();
}
