//! The directory's player entries, kept true from this shard: the room
//! each local player sits in (written at every join and leave) and its
//! release at logout.
//!
//! ```text
//! Session ──seated(player, sid, room) / gone / welcomed──▶ pending (latest per player)
//!                                                              │ task "seats"
//!                                                              ▼
//!                                     update_player / release_player ──▶ Redis
//!                                     (Redis down: kept, retried; back: every local
//!                                      player's entry re-asserted if absent or ours)
//! ```
//!
//! Sessions never wait for Redis: they record what changed and go on. The
//! pending map keeps only the latest change per player, so memory is
//! bounded by the number of players, not of changes, and a Redis outage
//! costs nothing but staleness. Updates are conditional on the session
//! still holding the entry (a newer login elsewhere wins). When Redis
//! comes back after an outage (possibly empty: it may have restarted
//! without a disk), every player this shard holds is written again unless
//! another session holds it now, so the cluster converges. An outage is
//! seen by a failed write or by the probe every `cluster.heartbeat_ms`: a
//! marker key of this shard (`players_marker:{shard}`, set if missing)
//! that is gone means Redis lost this shard's entries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use super::Directory;

/// How long the task waits before trying Redis again after it was
/// unavailable (each try is bounded by `cluster.redis_timeout_ms`).
const RETRY: Duration = Duration::from_millis(250);

/// How often entries past their TTL are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// Session `sid` of the player sits in `room` (empty: none). `fresh`:
    /// the entry may not exist yet (a guest, whose login did not wait for
    /// the directory), so it is written if absent.
    Seated {
        sid: String,
        room: String,
        fresh: bool,
    },
    /// Session `sid` logged out: the entry goes, if it is still its.
    Gone { sid: String },
    /// Session `sid` sent its welcome (with its own resume token): the
    /// entry's current token becomes its (`Directory::token_issued`).
    Welcomed { sid: String },
}

#[derive(Default)]
struct State {
    pending: HashMap<String, Change>,
    /// Every player this shard holds, by the last change: re-asserted
    /// after an outage. Pruned like the entries themselves expire (a
    /// player whose seat was never resumed is forgotten after the
    /// entry's TTL).
    held: HashMap<String, Held>,
}

#[derive(Debug, Clone)]
struct Held {
    sid: String,
    room: String,
    since: Instant,
}

/// The handle sessions hold (`Clone + Send + Sync`); [`Seats::run`] is
/// the task that writes.
#[derive(Clone)]
pub struct Seats {
    dir: Directory,
    state: Arc<Mutex<State>>,
    wake: Arc<Notify>,
}

impl Seats {
    pub fn new(dir: Directory) -> Seats {
        Seats {
            dir,
            state: Arc::new(Mutex::new(State::default())),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Session `sid` of `player` holds it and sits in `room` (`None`: in
    /// no map).
    pub fn seated(&self, player: &str, sid: &str, room: Option<&str>) {
        self.change(player, sid, room, false);
    }

    /// A guest (a new player id nobody else can hold) logged in without
    /// waiting for the directory: write its entry when Redis answers.
    pub fn guest(&self, player: &str, sid: &str) {
        self.change(player, sid, None, true);
    }

    fn change(&self, player: &str, sid: &str, room: Option<&str>, fresh: bool) {
        let room = room.unwrap_or_default().to_string();
        let mut state = self.state.lock();
        // A change not written yet that creates the entry still has to.
        let fresh = fresh
            || matches!(state.pending.get(player),
                Some(Change::Seated { sid: s, fresh: true, .. }) if s == sid);
        let held = Held {
            sid: sid.to_string(),
            room: room.clone(),
            since: Instant::now(),
        };
        state.held.insert(player.to_string(), held);
        state.pending.insert(
            player.to_string(),
            Change::Seated {
                sid: sid.to_string(),
                room,
                fresh,
            },
        );
        drop(state);
        self.wake.notify_one();
    }

    /// Session `sid` of `player` sent its welcome: its resume token is the
    /// player's current one from now (a resume's claim kept the token it
    /// used current until then, so a shard dying before the welcome does
    /// not burn it). A change of the same session not written yet writes
    /// the token too, and is kept.
    pub fn welcomed(&self, player: &str, sid: &str) {
        let mut state = self.state.lock();
        if matches!(state.pending.get(player), Some(Change::Seated { sid: s, .. }) if s == sid) {
            return;
        }
        state.pending.insert(
            player.to_string(),
            Change::Welcomed {
                sid: sid.to_string(),
            },
        );
        drop(state);
        self.wake.notify_one();
    }

    /// Session `sid` of `player` logged out: release the entry.
    pub fn gone(&self, player: &str, sid: &str) {
        let mut state = self.state.lock();
        if state.held.get(player).is_some_and(|h| h.sid == sid) {
            state.held.remove(player);
        }
        state.pending.insert(
            player.to_string(),
            Change::Gone {
                sid: sid.to_string(),
            },
        );
        drop(state);
        self.wake.notify_one();
    }

    /// Session `sid` of `player` was replaced by a newer login (here or on
    /// another shard): it no longer holds the entry, so it is not
    /// re-asserted after an outage. Nothing is written.
    pub fn replaced(&self, player: &str, sid: &str) {
        let mut state = self.state.lock();
        if state.held.get(player).is_some_and(|h| h.sid == sid) {
            state.held.remove(player);
        }
    }

    /// Changes not yet written (for tests and the admin view).
    pub fn pending(&self) -> usize {
        self.state.lock().pending.len()
    }

    /// The task "seats": write changes as they come; while Redis is
    /// unavailable keep them and retry; after an outage re-assert every
    /// held entry. Ends when `stop_rx` says stop, after one last attempt
    /// at what is pending.
    pub async fn run(self, mut stop_rx: watch::Receiver<bool>) {
        let mut outage = false;
        let mut pruned = Instant::now();
        let mut probed = Instant::now();
        let settings = self.dir.settings().clone();
        let (ttl, probe_every) = (settings.player_ttl, settings.heartbeat);
        loop {
            if probed.elapsed() >= probe_every {
                probed = Instant::now();
                match self.dir.players_marker_missing().await {
                    // Redis came back empty (or the marker expired): the
                    // entries are written again below.
                    Ok(missing) => outage |= missing,
                    Err(e) if e.is_unavailable() => outage = true,
                    Err(e) => tracing::warn!(error = %e, "directory: players marker"),
                }
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = Instant::now();
                self.state
                    .lock()
                    .held
                    .retain(|_, h| h.since.elapsed() < ttl);
            }
            let stopping = *stop_rx.borrow();
            let batch: Vec<(String, Change)> = self.state.lock().pending.drain().collect();
            let mut failed = false;
            for (player, change) in batch {
                if failed {
                    self.put_back(player, change);
                    continue;
                }
                let result = match &change {
                    Change::Seated {
                        sid,
                        room,
                        fresh: false,
                    } => match self.dir.update_player(&player, sid, room, sid).await {
                        // Another session holds the player now.
                        Ok(false) => {
                            self.replaced(&player, sid);
                            Ok(())
                        }
                        other => other.map(drop),
                    },
                    Change::Seated {
                        sid,
                        room,
                        fresh: true,
                    } => self.dir.reassert_player(&player, sid, room).await.map(drop),
                    Change::Gone { sid } => self.dir.release_player(&player, sid).await.map(drop),
                    Change::Welcomed { sid } => self.dir.token_issued(&player, sid).await.map(drop),
                };
                if let Err(e) = result {
                    if e.is_unavailable() {
                        failed = true;
                        self.put_back(player, change);
                    } else {
                        tracing::warn!(player, error = %e, "directory: player entry not written");
                    }
                }
            }
            if failed {
                outage = true;
            } else if outage {
                outage = !self.reassert().await;
            }
            if stopping {
                break;
            }
            let wait = if failed || outage {
                RETRY
            } else {
                probe_every.saturating_sub(probed.elapsed())
            };
            tokio::select! {
                _ = stop_rx.wait_for(|s| *s) => {}
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait.min(PRUNE_EVERY)) => {}
            }
        }
    }

    /// Keep a change that could not be written, unless a newer one for
    /// the same player came meanwhile.
    fn put_back(&self, player: String, change: Change) {
        self.state.lock().pending.entry(player).or_insert(change);
    }

    /// Write every held player's entry again where it is absent or ours.
    /// False if Redis failed again (the next round retries).
    async fn reassert(&self) -> bool {
        let held: Vec<(String, Held)> = self
            .state
            .lock()
            .held
            .iter()
            .map(|(p, h)| (p.clone(), h.clone()))
            .collect();
        let mut written = 0usize;
        for (player, h) in &held {
            match self.dir.reassert_player(player, &h.sid, &h.room).await {
                Ok(true) => written += 1,
                Ok(false) => {}
                Err(e) if e.is_unavailable() => return false,
                Err(e) => tracing::warn!(player, error = %e, "directory: entry not re-asserted"),
            }
        }
        tracing::info!(
            players = held.len(),
            written,
            "directory back: player entries re-asserted"
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{DirectorySettings, ShardId};
    use crate::config::Config;

    fn seats() -> Seats {
        let mut config = Config::default();
        // Never dialled: these tests look at what is pending only.
        config.cluster.redis = "redis://127.0.0.1:1/0".into();
        let settings = DirectorySettings::from_config(&config);
        let shard = ShardId::new("s").expect("a valid id");
        Seats::new(Directory::new(settings, shard).expect("a handle"))
    }

    fn pending(seats: &Seats, player: &str) -> Option<Change> {
        seats.state.lock().pending.get(player).cloned()
    }

    #[test]
    fn only_the_latest_change_per_player_is_pending() {
        let seats = seats();
        seats.seated("p", "s-1", Some("lobby"));
        seats.seated("p", "s-1", None);
        seats.seated("q", "s-2", Some("arena"));
        assert_eq!(seats.pending(), 2);
        assert_eq!(
            pending(&seats, "p"),
            Some(Change::Seated {
                sid: "s-1".into(),
                room: String::new(),
                fresh: false
            })
        );
        seats.gone("p", "s-1");
        assert_eq!(
            pending(&seats, "p"),
            Some(Change::Gone { sid: "s-1".into() })
        );
        // A replaced session is forgotten too, but only its own entry.
        seats.seated("r", "s-3", None);
        seats.replaced("r", "s-0");
        assert!(seats.state.lock().held.contains_key("r"));
        seats.replaced("r", "s-3");
        assert!(!seats.state.lock().held.contains_key("r"));
        // A logout forgets the player for re-assertion; others stay.
        let held = &seats.state.lock().held;
        assert!(!held.contains_key("p"));
        assert_eq!(held.get("q").map(|h| h.room.as_str()), Some("arena"));
    }

    #[test]
    fn a_guest_entry_not_written_yet_is_still_created_by_its_join() {
        let seats = seats();
        seats.guest("g", "s-1");
        seats.seated("g", "s-1", Some("lobby"));
        assert_eq!(
            pending(&seats, "g"),
            Some(Change::Seated {
                sid: "s-1".into(),
                room: "lobby".into(),
                fresh: true
            })
        );
        // Another session's change does not inherit it.
        seats.seated("g", "s-2", None);
        assert!(matches!(
            pending(&seats, "g"),
            Some(Change::Seated { fresh: false, .. })
        ));
    }
}
