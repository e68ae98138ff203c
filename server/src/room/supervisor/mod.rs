//! The room supervisor: where sessions find rooms, and what restarts them.
//!
//! ```text
//! RoomSupervisor (one_for_one, MaxR restarts in MaxT per room)
//! ├─ room "lobby"   → Room incarnation 7  on room Arbiter 0   slot: heartbeat, busy, snapshot, members
//! ├─ room "lobby#2" → Room incarnation 8  on room Arbiter 1   (a second instance of lobby)
//! ├─ room "arena"   → Room incarnation 3  on room Arbiter 1
//! ├─ room "keep"    → Room incarnation 9  on extra Arbiter 2 (stands in for 0 and 1)
//! └─ watchdog (system Arbiter, every watchdog_interval): Arbiter probes,
//!    rooms whose tick is late by stall_timeout → restarted on a live Arbiter,
//!    extra Arbiters started when none is live and retired when the stuck
//!    ones answer again
//! ```
//!
//! Rooms are keyed by [`RoomId`] (a map and an instance). A map runs as one
//! room (`instances = "one"`), or as many as its players need
//! (`instances = "auto"`, see [`RoomSupervisor::room_for_join`]); each room is
//! started on first join on a live room Arbiter. A
//! crashed incarnation (a panic, or a stall seen by the watchdog) is replaced
//! by a new one built from the snapshot in its slot; the old one is marked
//! retired so that, should it ever wake up, it stops without a word. Past
//! `max_restarts` within `restart_window` the room is failed instead:
//! its members are told (they move to the fallback map) and the next join
//! starts it afresh.
//!
//! # Stalls
//!
//! A room stuck in a handler blocks its whole Arbiter (thread), so every room
//! on it stops ticking. The watchdog tells the culprit (the room that is
//! inside a handler, see [`RoomSlot::busy`]) from its thread mates: the
//! culprit's restart counts towards its restart intensity, a thread mate's
//! move ([`RestartReason::Displaced`]) does not, so a stall elsewhere never
//! fails a map (the fallback map included).
//!
//! A room is only placed on an Arbiter that has *proven alive since the stall
//! began*: it ran a watchdog probe after the stalled room's last heartbeat,
//! and within the last few watchdog rounds. When no Arbiter qualifies (every
//! room thread is blocked), the supervisor starts an extra Arbiter, at most
//! `supervision.max_extra_arbiters` at a time (counted in
//! `tessera_room_arbiters_started_total`). An extra stands in for the
//! Arbiters that were stuck when it started; once one of them answers a
//! probe again, the extra is retired: its rooms are handed back (each
//! snapshots itself and a new incarnation starts on a live base Arbiter,
//! [`RestartReason::Handover`], not counted either) and, when empty, its
//! thread is stopped (`tessera_room_arbiters_retired_total`).
//!
//! Sessions never see a room's address: they hold a [`RoomRef`], whose
//! casts go through the supervisor's one sender per room (so the mailbox
//! bound holds: actix gives every sender clone a slot of its own) and
//! always reach the current incarnation.
//!
//! An operator can restart a room too (`admin.rs`: [`RestartReason::Operator`],
//! not counted); restarts and failures are recorded as events for the
//! admin API, which reads each room's view from its slot (members, last
//! tick time, snapshot and save ages) without messaging the room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::dev::ToEnvelope;
use actix::prelude::*;
use parking_lot::Mutex;

use super::{Restored, Room, RoomEvent, RoomRef, RoomSnapshot};
use crate::config::{ms, Config, Instances, MapDef};
use crate::dispatcher::Dispatcher;
use crate::events::Events;
use crate::ids::RoomId;
use crate::metrics as m;
use crate::store::PersisterHandle;
use crate::supervise::{FaultPoints, Intensity, TooManyRestarts};
use protocol::admin::EventKind;

mod admin;
mod arbiters;
mod cluster;
mod migrate;
pub use admin::RoomView;
use arbiters::RoomArbiter;
pub use migrate::{PauseError, Paused};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartReason {
    /// A handler panicked. Counts towards the restart intensity.
    Panic,
    /// The room was stuck in a handler past the stall timeout. Counts.
    Stall,
    /// A thread mate of a stalled room: late only because its thread was
    /// blocked by another room. Does not count.
    Displaced,
    /// Moved off a retiring extra Arbiter. Does not count.
    Handover,
    /// An operator asked (`POST /admin/rooms/{room}/restart`). Does not
    /// count.
    Operator,
}

impl RestartReason {
    fn name(self) -> &'static str {
        match self {
            RestartReason::Panic => "panic",
            RestartReason::Stall => "stall",
            RestartReason::Displaced => "displaced",
            RestartReason::Handover => "handover",
            RestartReason::Operator => "operator",
        }
    }

    /// Whether the room itself is to blame.
    fn counts(self) -> bool {
        match self {
            RestartReason::Panic | RestartReason::Stall => true,
            RestartReason::Displaced | RestartReason::Handover | RestartReason::Operator => false,
        }
    }
}

/// What the supervisor and one room incarnation share.
pub struct RoomSlot {
    pub incarnation: u64,
    /// Id of the room Arbiter it runs on.
    pub arbiter: usize,
    /// Milliseconds since the supervisor's origin, at the last tick.
    heartbeat_ms: AtomicU64,
    /// Set while the room runs a handler (behind its panic boundary): a room
    /// late with this set is stuck itself; one late without it waits for a
    /// thread that another room blocks.
    pub busy: AtomicBool,
    /// Set when this incarnation was replaced; it stops at its next message.
    pub retired: AtomicBool,
    pub snapshot: Mutex<Arc<RoomSnapshot>>,
    /// Members (held seats included), kept by the room: where an
    /// `instances = "auto"` join finds an instance with room.
    pub members: AtomicUsize,
    /// Of `members`, those whose socket is on another shard (cluster).
    pub remote_members: AtomicUsize,
    /// How long the last tick took, microseconds (the admin API's view).
    pub tick_us: AtomicU64,
    /// Ms since the supervisor's origin at the last snapshot (0: none).
    pub snapshot_ms: AtomicU64,
    /// Ms since the supervisor's origin when the room last handed state
    /// to the persister (0: never).
    pub saved_ms: AtomicU64,
}

impl RoomSlot {
    pub fn beat(&self, supervisor: &RoomSupervisor) {
        self.heartbeat_ms
            .store(supervisor.now_ms(), Ordering::Release);
    }

    /// Stamp `field` (one of this slot's `_ms` fields) with now; never 0,
    /// which means "not yet".
    pub fn mark(&self, field: &AtomicU64, supervisor: &RoomSupervisor) {
        field.store(supervisor.now_ms().max(1), Ordering::Relaxed);
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
    pub watchdog_interval: Duration,
    pub max_extra_arbiters: usize,
    pub resume_grace: Duration,
    /// How often a room hands its moved members' positions to the
    /// persister: twice per `store.flush_interval_ms`, so a position is
    /// at most one and a half flush intervals old in the store.
    pub save_interval: Duration,
    /// `rooms.immediate_writes_per_tick`.
    pub immediate_writes_per_tick: u32,
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
            watchdog_interval: ms(sv.watchdog_interval_ms),
            max_extra_arbiters: sv.max_extra_arbiters,
            resume_grace: ms(sv.resume_grace_ms),
            save_interval: config.store.flush_interval() / 2,
            immediate_writes_per_tick: config.rooms.immediate_writes_per_tick,
        }
    }

    /// An Arbiter that ran no probe for this long is not live: a few
    /// watchdog rounds (a busy thread may answer one late), and never more
    /// than the stall timeout.
    fn live_window_ms(&self) -> u64 {
        (3 * self.watchdog_interval)
            .min(self.stall_timeout)
            .as_millis() as u64
    }
}

pub struct RoomSupervisor {
    maps: HashMap<String, Arc<MapDef>>,
    /// The room threads: the shard's, then extras (ids only grow).
    arbiters: Mutex<Vec<RoomArbiter>>,
    next_arbiter_id: AtomicUsize,
    /// When the watchdog's last round sent its probes, and the round
    /// before (ms since origin; 0: none yet). Liveness is judged against
    /// the round before, whose probes have had a full interval to run, so
    /// a watchdog that runs late makes no Arbiter look stuck.
    last_round_ms: AtomicU64,
    probed_ms: AtomicU64,
    next_arbiter: AtomicUsize,
    next_incarnation: AtomicU64,
    dispatcher: Arc<Dispatcher>,
    persister: PersisterHandle,
    faults: FaultPoints,
    rooms: Mutex<HashMap<RoomId, Entry>>,
    /// Recent restarts per room, for the restart intensity.
    history: Mutex<HashMap<RoomId, Intensity>>,
    /// Restarts per room since start (every reason), for the admin API.
    restarts: Mutex<HashMap<RoomId, u64>>,
    restarts_total: AtomicU64,
    /// Where restarts and failures are told (the admin API's events).
    events: Option<Events>,
    /// Cluster mode: where rooms are placed and leased (see `cluster.rs`).
    cluster: std::sync::OnceLock<Arc<crate::room::cluster::RoomCluster>>,
    /// Cluster mode: the lease epoch of each room this shard runs; every
    /// incarnation writes under it.
    epochs: Mutex<HashMap<RoomId, u64>>,
    /// Cluster mode: instances a join found full on their owner, and
    /// until when `auto` placement skips them.
    full_hints: Mutex<HashMap<RoomId, Instant>>,
    /// Cluster mode: rooms paused for a live migration (see
    /// `migrate.rs`): neither started nor restarted here meanwhile.
    migrating: Mutex<std::collections::HashSet<RoomId>>,
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
        let base = arbiters.len();
        RoomSupervisor {
            maps: maps
                .into_iter()
                .map(|m| (m.name.clone(), Arc::new(m)))
                .collect(),
            arbiters: Mutex::new(
                arbiters
                    .into_iter()
                    .enumerate()
                    .map(|(id, handle)| RoomArbiter {
                        id,
                        handle,
                        beat: Arc::new(AtomicU64::new(0)),
                        probing: Arc::default(),
                        extra: None,
                    })
                    .collect(),
            ),
            next_arbiter_id: AtomicUsize::new(base),
            last_round_ms: AtomicU64::new(0),
            probed_ms: AtomicU64::new(0),
            next_arbiter: AtomicUsize::new(0),
            next_incarnation: AtomicU64::new(1),
            dispatcher,
            persister,
            faults: FaultPoints::default(),
            rooms: Mutex::new(HashMap::new()),
            history: Mutex::new(HashMap::new()),
            restarts: Mutex::new(HashMap::new()),
            restarts_total: AtomicU64::new(0),
            events: None,
            cluster: std::sync::OnceLock::new(),
            epochs: Mutex::new(HashMap::new()),
            full_hints: Mutex::new(HashMap::new()),
            migrating: Mutex::new(std::collections::HashSet::new()),
            settings,
            origin: Instant::now(),
        }
    }

    /// Arm fault points in rooms through `faults` (the shard's registry).
    /// Tell restarts and failures to `events`.
    pub fn with_events(mut self, events: Events) -> RoomSupervisor {
        self.events = Some(events);
        self
    }

    pub fn with_faults(mut self, faults: FaultPoints) -> RoomSupervisor {
        self.faults = faults;
        self
    }

    pub fn faults(&self) -> &FaultPoints {
        &self.faults
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

    /// The immediate writes a room's tick may make (`outbound::budget`).
    pub fn immediate_writes_per_tick(&self) -> u32 {
        self.settings.immediate_writes_per_tick
    }

    /// Every how many ticks of a `tick_hz` room its moved members'
    /// positions go to the persister (at least every tick).
    pub fn save_every_ticks(&self, tick_hz: u32) -> u64 {
        let ticks = self.settings.save_interval.as_secs_f64() * f64::from(tick_hz);
        (ticks.round() as u64).max(1)
    }

    pub fn fallback_map(&self) -> Option<&str> {
        self.settings.fallback_map.as_deref()
    }

    pub fn running(&self) -> usize {
        self.rooms.lock().len()
    }

    /// Extra room Arbiters running now (retiring ones included).
    pub fn extra_arbiters(&self) -> usize {
        self.arbiters
            .lock()
            .iter()
            .filter(|a| a.extra.is_some())
            .count()
    }

    /// The room a join of `map` goes to; `None` for a map that does not
    /// exist. With `instances = "one"` that is the map's first instance.
    /// With `"auto"`, the lowest-numbered running instance below
    /// `max_players` (members include held seats), else the
    /// lowest-numbered one not running (which the join starts). Two joins
    /// racing for the last place may both be sent to one instance; the
    /// room refuses the second ([`super::JoinError::Full`]) and the
    /// session asks again.
    pub fn room_for_join(self: &Arc<Self>, map: &str) -> Option<RoomRef> {
        let def = self.maps.get(map)?;
        let id = match def.instances {
            Instances::One => RoomId::first(map),
            Instances::Auto => {
                let rooms = self.rooms.lock();
                let mut running: Vec<(&RoomId, &Entry)> =
                    rooms.iter().filter(|(id, _)| **id.map() == *map).collect();
                running.sort_by_key(|(id, _)| id.instance());
                // A running instance with room keeps players together;
                // else the lowest instance number not running.
                let with_room = running
                    .iter()
                    .find(|(_, e)| e.slot.members.load(Ordering::Acquire) < def.max_players)
                    .map(|(id, _)| (*id).clone());
                // Cluster mode: an instance not running here may run on
                // another shard; one found full there lately is skipped.
                let full = self.full_instances();
                with_room.unwrap_or_else(|| {
                    (1..)
                        .map(|n| RoomId::new(map, n))
                        .find(|id| !rooms.contains_key(id) && !full.contains(id))
                        .expect("an instance number is free: the rooms are finitely many")
                })
            }
        };
        Some(RoomRef::local(id, self.clone()))
    }

    /// The handle of room `id`, whether it runs or not (a join starts it);
    /// `None` for a map that does not exist.
    pub fn room_ref(self: &Arc<Self>, id: &RoomId) -> Option<RoomRef> {
        self.maps
            .contains_key(id.map().as_ref())
            .then(|| RoomRef::local(id.clone(), self.clone()))
    }

    /// The address of room `id`, started if it is not running; `None` for
    /// a map that does not exist. Sessions call rooms through [`RoomRef`]
    /// only; this is for it, fault injection and tests.
    pub fn start(self: &Arc<Self>, id: &RoomId) -> Option<Addr<Room>> {
        let def = self.maps.get(id.map().as_ref())?.clone();
        if self.is_migrating(id) {
            // Paused for a live migration: it runs on one shard or the
            // other afterwards, never on both.
            return None;
        }
        let mut rooms = self.rooms.lock();
        if let Some(entry) = rooms.get(id).filter(|e| e.addr.connected()) {
            return Some(entry.addr.clone());
        }
        let entry = self.start_incarnation(id.clone(), def, None, 0, None);
        let addr = entry.addr.clone();
        rooms.insert(id.clone(), entry);
        Some(addr)
    }

    /// Room ids running now, sorted.
    pub fn running_rooms(&self) -> Vec<RoomId> {
        let mut ids: Vec<RoomId> = self.rooms.lock().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Cast `msg` to the current incarnation of room `id`, without
    /// waiting. A full mailbox refuses it; no running room is `Closed`.
    pub(crate) fn send<M>(&self, id: &RoomId, msg: M) -> Result<(), SendError<M>>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Room: Handler<M>,
        <Room as Actor>::Context: ToEnvelope<Room, M>,
    {
        match self.rooms.lock().get(id) {
            Some(entry) => entry.addr.try_send(msg),
            None => Err(SendError::Closed(msg)),
        }
    }

    /// The current address of room `id`, if it runs (fault injection).
    pub fn current(&self, id: &RoomId) -> Option<Addr<Room>> {
        self.rooms.lock().get(id).map(|e| e.addr.clone())
    }

    /// Start an incarnation on an Arbiter live since `since_ms`, other than
    /// `avoid` when there is a choice.
    fn start_incarnation(
        self: &Arc<Self>,
        id: RoomId,
        def: Arc<MapDef>,
        restored: Option<Restored>,
        since_ms: u64,
        avoid: Option<usize>,
    ) -> Entry {
        let (arbiter, handle) = self.place(since_ms, avoid);
        let slot = Arc::new(RoomSlot {
            incarnation: self.next_incarnation.fetch_add(1, Ordering::Relaxed),
            arbiter,
            heartbeat_ms: AtomicU64::new(self.now_ms()),
            busy: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            snapshot: Mutex::new(
                restored
                    .as_ref()
                    .map_or_else(Default::default, |r| r.snapshot.clone()),
            ),
            members: AtomicUsize::new(0),
            remote_members: AtomicUsize::new(0),
            tick_us: AtomicU64::new(0),
            snapshot_ms: AtomicU64::new(0),
            saved_ms: AtomicU64::new(0),
        });
        let supervisor = self.clone();
        let room_slot = slot.clone();
        let capacity = self.settings.mailbox_capacity;
        let epoch = self.epoch(&id);
        let addr = Room::start_in_arbiter(&handle, move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            Room::new(id, def, supervisor, room_slot, restored).with_owner_epoch(epoch)
        });
        Entry { addr, slot }
    }

    /// Incarnation `incarnation` of room `id` crashed at `at`: restart it
    /// from its snapshot, or fail it past the restart intensity (panics and
    /// stalls only). A crash reported for an incarnation already replaced
    /// is ignored.
    pub fn restart(
        self: &Arc<Self>,
        id: &RoomId,
        incarnation: u64,
        reason: RestartReason,
        at: Instant,
    ) {
        let Some(def) = self.maps.get(id.map().as_ref()).cloned() else {
            return;
        };
        let room = id.to_string();
        if self.is_migrating(id) {
            // The migration ends with the room on the target or resumed
            // here from its snapshot: a stall seen meanwhile is its own.
            return;
        }
        let mut rooms = self.rooms.lock();
        let Some(entry) = rooms.get(id).filter(|e| e.slot.incarnation == incarnation) else {
            return;
        };
        entry.slot.retired.store(true, Ordering::Release);
        let snapshot = entry.slot.snapshot.lock().clone();
        let old_arbiter = entry.slot.arbiter;
        // A room late on its tick is placed where a probe ran after that
        // tick: after the stall began.
        let since_ms = match reason {
            RestartReason::Stall | RestartReason::Displaced => {
                entry.slot.heartbeat_ms.load(Ordering::Acquire)
            }
            RestartReason::Panic | RestartReason::Handover | RestartReason::Operator => 0,
        };
        let intensity = if reason.counts() {
            let (max, window) = (self.settings.max_restarts, self.settings.restart_window);
            self.history
                .lock()
                .entry(id.clone())
                .or_insert_with(|| Intensity::new(max, window))
                .record(at)
        } else {
            Ok(0)
        };
        if let Err(TooManyRestarts {
            restarts: crashes, ..
        }) = intensity
        {
            rooms.remove(id);
            drop(rooms);
            self.history.lock().remove(id);
            metrics::counter!(m::ROOM_FAILURES, m::room_labels(id, &[])).increment(1);
            self.record_event(
                EventKind::RoomFailed,
                id,
                format!("{crashes} restarts within the window; members moved to the fallback map"),
            );
            tracing::error!(
                room,
                incarnation,
                crashes,
                window_ms = self.settings.restart_window.as_millis() as u64,
                members = snapshot.members.len(),
                "room failed: too many restarts; members moved to the fallback map"
            );
            for (_, member) in &snapshot.members {
                member
                    .link
                    .events
                    .do_send(RoomEvent::Failed { room: id.clone() });
            }
            return;
        }
        metrics::counter!(
            m::ROOM_RESTARTS,
            m::room_labels(id, &[("reason", reason.name())])
        )
        .increment(1);
        *self.restarts.lock().entry(id.clone()).or_default() += 1;
        self.restarts_total.fetch_add(1, Ordering::Relaxed);
        self.record_event(
            EventKind::RoomRestarted,
            id,
            format!(
                "reason {}, {} members",
                reason.name(),
                snapshot.members.len()
            ),
        );
        tracing::warn!(
            room,
            incarnation,
            reason = reason.name(),
            members = snapshot.members.len(),
            tick = snapshot.tick,
            "restarting room from its snapshot"
        );
        let avoid = (reason != RestartReason::Panic).then_some(old_arbiter);
        let restored = Restored {
            snapshot,
            crashed_at: at,
            first_tick: None,
        };
        let entry = self.start_incarnation(id.clone(), def, Some(restored), since_ms, avoid);
        rooms.insert(id.clone(), entry);
    }

    /// Drop room `id` from the registry if `incarnation` is still the
    /// current one (it stopped, idle).
    pub fn forget(&self, id: &RoomId, incarnation: u64) {
        let mut rooms = self.rooms.lock();
        if rooms
            .get(id)
            .is_some_and(|e| e.slot.incarnation == incarnation)
        {
            rooms.remove(id);
            drop(rooms);
            self.stopped(id);
        }
    }
}
