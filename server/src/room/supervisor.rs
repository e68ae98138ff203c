//! The room supervisor: where sessions find rooms, and what restarts them.
//!
//! ```text
//! RoomSupervisor (one_for_one, MaxR restarts in MaxT per map)
//! ├─ map "lobby"  → Room incarnation 7  on room Arbiter 0   slot: heartbeat, snapshot
//! ├─ map "arena"  → Room incarnation 3  on room Arbiter 1
//! └─ watchdog (system Arbiter, every watchdog_interval): arbiter heartbeats,
//!    rooms whose tick is late by stall_timeout → restarted elsewhere
//! ```
//!
//! One room per map, started on first join on a healthy room Arbiter. A
//! crashed incarnation (a panic, or a stall seen by the watchdog) is replaced
//! by a new one built from the snapshot in its slot; the old one is marked
//! retired so that, should it ever wake up, it stops without a word. Past
//! `max_restarts` within `restart_window` the map's room is failed instead:
//! its members are told (they move to the fallback map) and the next join
//! starts it afresh.
//!
//! Sessions never keep a room's address: casts go through
//! [`RoomSupervisor::send`], which uses the supervisor's one sender per room
//! (so the mailbox bound holds: actix gives every sender clone a slot of its
//! own) and always reaches the current incarnation.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::prelude::*;
use parking_lot::Mutex;

use super::{Restored, Room, RoomEvent, RoomSnapshot};
use crate::config::{ms, Config, MapDef};
use crate::dispatcher::Dispatcher;
use crate::metrics as m;
use crate::store::PersisterHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    Panic,
    Stall,
}

impl RestartReason {
    fn name(self) -> &'static str {
        match self {
            RestartReason::Panic => "panic",
            RestartReason::Stall => "stall",
        }
    }
}

/// What the supervisor and one room incarnation share.
pub struct RoomSlot {
    pub incarnation: u64,
    /// Index of the room Arbiter it runs on.
    pub arbiter: usize,
    /// Milliseconds since the supervisor's origin, at the last tick.
    heartbeat_ms: AtomicU64,
    /// Set when this incarnation was replaced; it stops at its next message.
    pub retired: AtomicBool,
    pub snapshot: Mutex<Arc<RoomSnapshot>>,
}

impl RoomSlot {
    pub fn beat(&self, supervisor: &RoomSupervisor) {
        self.heartbeat_ms
            .store(supervisor.now_ms(), Ordering::Release);
    }
}

struct Entry {
    addr: Addr<Room>,
    slot: Arc<RoomSlot>,
}

/// The supervisor's knobs, from [`Config`].
pub struct Settings {
    pub idle_stop: Duration,
    pub mailbox_capacity: usize,
    pub max_restarts: usize,
    pub restart_window: Duration,
    pub fallback_map: Option<String>,
    pub stall_timeout: Duration,
    pub resume_grace: Duration,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        let sv = &config.supervision;
        Settings {
            idle_stop: ms(config.rooms.idle_stop_ms),
            mailbox_capacity: config.rooms.mailbox_capacity,
            max_restarts: sv.max_restarts as usize,
            restart_window: ms(sv.restart_window_ms),
            fallback_map: (!sv.fallback_map.is_empty()).then(|| sv.fallback_map.clone()),
            stall_timeout: ms(sv.stall_timeout_ms),
            resume_grace: ms(sv.resume_grace_ms),
        }
    }
}

pub struct RoomSupervisor {
    maps: HashMap<String, Arc<MapDef>>,
    arbiters: Vec<ArbiterHandle>,
    /// Per room Arbiter: when it last ran a watchdog probe (ms since origin).
    arbiter_beats: Vec<Arc<AtomicU64>>,
    next_arbiter: AtomicUsize,
    next_incarnation: AtomicU64,
    dispatcher: Arc<Dispatcher>,
    persister: PersisterHandle,
    rooms: Mutex<HashMap<String, Entry>>,
    /// Recent restarts per map, for the restart intensity.
    history: Mutex<HashMap<String, VecDeque<Instant>>>,
    settings: Settings,
    origin: Instant,
}

impl RoomSupervisor {
    pub fn new(
        maps: Vec<MapDef>,
        arbiters: Vec<ArbiterHandle>,
        dispatcher: Arc<Dispatcher>,
        persister: PersisterHandle,
        settings: Settings,
    ) -> RoomSupervisor {
        assert!(!arbiters.is_empty(), "rooms need at least one Arbiter");
        RoomSupervisor {
            maps: maps
                .into_iter()
                .map(|m| (m.name.clone(), Arc::new(m)))
                .collect(),
            arbiter_beats: arbiters
                .iter()
                .map(|_| Arc::new(AtomicU64::new(0)))
                .collect(),
            arbiters,
            next_arbiter: AtomicUsize::new(0),
            next_incarnation: AtomicU64::new(1),
            dispatcher,
            persister,
            rooms: Mutex::new(HashMap::new()),
            history: Mutex::new(HashMap::new()),
            settings,
            origin: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    pub fn has_map(&self, name: &str) -> bool {
        self.maps.contains_key(name)
    }

    /// Map names, sorted.
    pub fn map_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.maps.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    pub fn persister(&self) -> &PersisterHandle {
        &self.persister
    }

    pub fn idle_stop(&self) -> Duration {
        self.settings.idle_stop
    }

    pub fn resume_grace(&self) -> Duration {
        self.settings.resume_grace
    }

    pub fn fallback_map(&self) -> Option<&str> {
        self.settings.fallback_map.as_deref()
    }

    pub fn running(&self) -> usize {
        self.rooms.lock().len()
    }

    /// The room of `map`, started if it is not running; `None` for a map
    /// that does not exist. For calls (`send(..).await`); casts go through
    /// [`RoomSupervisor::send`].
    pub fn room(self: &Arc<Self>, map: &str) -> Option<Addr<Room>> {
        let def = self.maps.get(map)?.clone();
        let mut rooms = self.rooms.lock();
        if let Some(entry) = rooms.get(map).filter(|e| e.addr.connected()) {
            return Some(entry.addr.clone());
        }
        let entry = self.start_incarnation(def, None, None);
        let addr = entry.addr.clone();
        rooms.insert(map.to_string(), entry);
        Some(addr)
    }

    /// Cast `msg` to the current room of `map`, without waiting. A full
    /// mailbox refuses it; no running room is `Closed`.
    pub fn send<M>(&self, map: &str, msg: M) -> Result<(), SendError<M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Room: Handler<M>,
        <Room as Actor>::Context: ToEnvelope<Room, M>,
    {
        match self.rooms.lock().get(map) {
            Some(entry) => entry.addr.try_send(msg),
            None => Err(SendError::Closed(msg)),
        }
    }

    /// The current address of `map`'s room, if it runs (fault injection).
    pub fn current(&self, map: &str) -> Option<Addr<Room>> {
        self.rooms.lock().get(map).map(|e| e.addr.clone())
    }

    fn start_incarnation(
        self: &Arc<Self>,
        def: Arc<MapDef>,
        restored: Option<Restored>,
        avoid: Option<usize>,
    ) -> Entry {
        let arbiter = self.pick_arbiter(avoid);
        let slot = Arc::new(RoomSlot {
            incarnation: self.next_incarnation.fetch_add(1, Ordering::Relaxed),
            arbiter,
            heartbeat_ms: AtomicU64::new(self.now_ms()),
            retired: AtomicBool::new(false),
            snapshot: Mutex::new(
                restored
                    .as_ref()
                    .map_or_else(Default::default, |r| r.snapshot.clone()),
            ),
        });
        let supervisor = self.clone();
        let room_slot = slot.clone();
        let capacity = self.settings.mailbox_capacity;
        let addr = Room::start_in_arbiter(&self.arbiters[arbiter], move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            Room::new(def, supervisor, room_slot, restored)
        });
        Entry { addr, slot }
    }

    /// A room Arbiter that answered the watchdog lately, other than `avoid`,
    /// in turn; any other one if none answered; `avoid` itself if it is the
    /// only one.
    fn pick_arbiter(&self, avoid: Option<usize>) -> usize {
        let n = self.arbiters.len();
        let now = self.now_ms();
        let stale = self.settings.stall_timeout.as_millis() as u64;
        let start = self.next_arbiter.fetch_add(1, Ordering::Relaxed);
        let healthy =
            |i: usize| now.saturating_sub(self.arbiter_beats[i].load(Ordering::Acquire)) < stale;
        let candidates = (0..n).map(|k| (start + k) % n);
        candidates
            .clone()
            .find(|&i| Some(i) != avoid && healthy(i))
            .or_else(|| candidates.clone().find(|&i| Some(i) != avoid))
            .unwrap_or(start % n)
    }

    /// Incarnation `incarnation` of `map` crashed at `at`: restart it from
    /// its snapshot, or fail it past the restart intensity. A crash reported
    /// for an incarnation already replaced is ignored.
    pub fn restart(
        self: &Arc<Self>,
        map: &str,
        incarnation: u64,
        reason: RestartReason,
        at: Instant,
    ) {
        let Some(def) = self.maps.get(map).cloned() else {
            return;
        };
        let mut rooms = self.rooms.lock();
        let Some(entry) = rooms.get(map).filter(|e| e.slot.incarnation == incarnation) else {
            return;
        };
        entry.slot.retired.store(true, Ordering::Release);
        let snapshot = entry.slot.snapshot.lock().clone();
        let old_arbiter = entry.slot.arbiter;
        let crashes = {
            let mut history = self.history.lock();
            let recent = history.entry(map.to_string()).or_default();
            while recent
                .front()
                .is_some_and(|t| at.saturating_duration_since(*t) > self.settings.restart_window)
            {
                recent.pop_front();
            }
            recent.push_back(at);
            recent.len()
        };
        if crashes > self.settings.max_restarts {
            rooms.remove(map);
            drop(rooms);
            self.history.lock().remove(map);
            metrics::counter!(m::ROOM_FAILURES, "map" => map.to_string()).increment(1);
            tracing::error!(
                map,
                incarnation,
                crashes,
                window_ms = self.settings.restart_window.as_millis() as u64,
                members = snapshot.members.len(),
                "room failed: too many restarts; members moved to the fallback map"
            );
            let map: Arc<str> = Arc::from(map);
            for (_, member) in &snapshot.members {
                member
                    .events
                    .do_send(RoomEvent::Failed { map: map.clone() });
            }
            return;
        }
        metrics::counter!(m::ROOM_RESTARTS, "map" => map.to_string(), "reason" => reason.name())
            .increment(1);
        tracing::warn!(
            map,
            incarnation,
            reason = reason.name(),
            members = snapshot.members.len(),
            tick = snapshot.tick,
            "restarting room from its snapshot"
        );
        let avoid = (reason == RestartReason::Stall).then_some(old_arbiter);
        let restored = Restored {
            snapshot,
            crashed_at: at,
        };
        let entry = self.start_incarnation(def, Some(restored), avoid);
        rooms.insert(map.to_string(), entry);
    }

    /// Drop `map`'s room from the registry if `incarnation` is still the
    /// current one (it stopped, idle).
    pub fn forget(&self, map: &str, incarnation: u64) {
        let mut rooms = self.rooms.lock();
        if rooms
            .get(map)
            .is_some_and(|e| e.slot.incarnation == incarnation)
        {
            rooms.remove(map);
        }
    }

    /// One watchdog round: probe every room Arbiter, and restart rooms
    /// whose tick is late by the stall timeout on another Arbiter.
    pub fn watchdog(self: &Arc<Self>) {
        let origin = self.origin;
        for (arbiter, beat) in self.arbiters.iter().zip(&self.arbiter_beats) {
            let beat = beat.clone();
            arbiter.spawn(async move {
                beat.store(origin.elapsed().as_millis() as u64, Ordering::Release);
            });
        }
        let now = self.now_ms();
        let limit = self.settings.stall_timeout.as_millis() as u64;
        let stalled: Vec<(String, u64, u64)> = self
            .rooms
            .lock()
            .iter()
            .filter_map(|(map, e)| {
                let late = now.saturating_sub(e.slot.heartbeat_ms.load(Ordering::Acquire));
                (late >= limit).then(|| (map.clone(), e.slot.incarnation, late))
            })
            .collect();
        for (map, incarnation, late_ms) in stalled {
            metrics::counter!(m::ROOM_STALLS, "map" => map.clone()).increment(1);
            tracing::warn!(map = %map, incarnation, late_ms, "room stalled; restarting it elsewhere");
            self.restart(&map, incarnation, RestartReason::Stall, Instant::now());
        }
    }
}
