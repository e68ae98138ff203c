//! Rooms: the authoritative state of one instance of a map (a [`RoomId`]),
//! advanced on a fixed tick, and their supervisor.
//!
//! ```text
//! Session ─RoomRef::call_join (timeout)─▶ Room ──joined──────────▶ Outbound
//!         ──moves: Inputs (shared)──────▶      ──update per tick──▶ Outbound × members
//!         ─RoomRef::cast_chat───────────▶
//!         ─RoomRef::cast_leave / _disconnected─▶ ──chat──────────▶ Outbound × members
//! Dispatcher ──Published<MapBroadcast>─▶
//! RoomSupervisor ──(restart from snapshot, watchdog)──▶ Room incarnations
//! ```
//!
//! A room never blocks and never does I/O: it writes encoded frames into its
//! members' outbound queues. Inputs queue until the next tick and are applied
//! in `seq` order. Each tick, every member's view (entities within the
//! map's view radius, found through [`grid::Grid`]) is compared with the
//! last one; members whose changes are identical share one encoded frame.
//!
//! Items lying on the map, their spawners and the durable pick-up live in
//! [`ground`]; the room's document (items, pick-ups in flight) is loaded
//! when the room starts and written on every change.
//!
//! Let it crash: every handler, the tick, every continuation of a spawned
//! future or timer, and the `stopped` hook run behind a panic boundary
//! ([`Room::guarded`], through [`crate::supervise::catch`]), each under a
//! name that is also a fault point ([`FAULT_POINTS`]). A panic drops the
//! message that caused it (counted), stops this incarnation and hands its
//! last snapshot to the [`RoomSupervisor`], which starts a new incarnation
//! that re-attaches the members and sends each a full resync and a notice. The snapshot is taken
//! at every membership change and every [`SNAPSHOT_EVERY_TICKS`] ticks when
//! anyone moved, into a slot the supervisor holds, so a room stuck in a
//! handler can be restarted from it too.

pub mod grid;
pub mod ground;
mod room_ref;
pub mod supervisor;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use protocol::msg::{Chat, Entity, EntityId, Joined, MapInfo, Moved, Notice, Update};
use protocol::{assemble, encode_server, NoticeCode, ServerMsg};
use rand::Rng;

use crate::auth::Identity;
use crate::config::MapDef;
use crate::dispatcher::{MapBroadcast, Published, SubscriptionId};
use crate::ids::{RoomId, SessionId};
use crate::metrics as m;
use crate::outbound::Outbound;
use crate::store::{PlayerState, Stats};
use crate::supervise::{catch, FaultActor};
use grid::{Cell, Grid};

/// Maps keyed by ids the server hands out (entities, sessions, grid cells),
/// looked up per entity per member per tick: a fast hash, since clients
/// cannot choose the keys.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use ground::Ground;
pub use ground::{GroundSnapshot, PickUp};
pub use room_ref::{CallError, CastError, RoomRef};
pub use supervisor::{RestartReason, RoomSlot, RoomSupervisor};

/// Pending inputs kept per member between ticks; older ones are dropped.
/// The session's rate limit keeps a well-behaved client far below it.
const MAX_PENDING_INPUTS: usize = 32;

/// The longest stall a fault may inject.
pub const MAX_INJECTED_STALL: Duration = Duration::from_secs(30);

/// What a room tells a member's session outside the outbound queue.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub enum RoomEvent {
    /// The room failed past its restart limit; the member is no longer in
    /// it.
    Failed { room: RoomId },
}

/// A member's move intents, written by its session and drained by the room
/// at its next tick. Moves are the bulk of client traffic (10 Hz and more
/// per player); through a shared queue they cost the room no message, no
/// mailbox slot and no wake-up, only a short lock per tick.
#[derive(Default)]
pub struct Inputs {
    queue: parking_lot::Mutex<Vec<(u32, f32, f32)>>,
}

impl Inputs {
    /// Queue a validated intent. Past [`MAX_PENDING_INPUTS`] unapplied
    /// intents the oldest is dropped (and counted): a room that fell behind
    /// applies the latest ones.
    pub fn push(&self, seq: u32, dx: f32, dy: f32) {
        let mut queue = self.queue.lock();
        if queue.len() >= MAX_PENDING_INPUTS {
            queue.remove(0);
            metrics::counter!(m::ROOM_INPUTS_DROPPED, "reason" => m::DROPPED_INPUT_QUEUE_FULL)
                .increment(1);
        }
        queue.push((seq, dx, dy));
    }

    fn clear(&self) {
        self.queue.lock().clear();
    }

    fn drain_into(&self, pending: &mut Vec<(u32, f32, f32)>) {
        let mut queue = self.queue.lock();
        if !queue.is_empty() {
            pending.append(&mut queue);
        }
    }
}

/// Join the room. The room itself sends `joined` through `out`, ahead of any
/// update. With `resume`, the seat of that earlier session is taken over if
/// it is still held.
pub struct JoinRoom {
    pub session: SessionId,
    pub identity: Arc<Identity>,
    pub out: Arc<Outbound>,
    /// Where the session puts this member's moves.
    pub inputs: Arc<Inputs>,
    /// The membership epoch from [`Outbound::begin_room`].
    pub epoch: u64,
    pub events: Recipient<RoomEvent>,
    pub resume: Option<SessionId>,
    /// With `resume`: take that seat over or nothing. A seat no longer
    /// held is refused ([`JoinError::SeatGone`]) instead of placing a new
    /// entity.
    pub seat_only: bool,
    /// Where the player's profile says it stood in this map.
    pub spawn_at: Option<(f32, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinOk {
    pub entity: EntityId,
    /// The member took over a held seat.
    pub resumed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    Full,
    /// The room crashed handling the join.
    Crashed,
    /// A `seat_only` join found no held seat (its grace ran out).
    SeatGone,
}

impl Message for JoinRoom {
    type Result = Result<JoinOk, JoinError>;
}

/// The player left on purpose: its entity goes at once. The session has
/// already ended the membership on its outbound queue.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeaveRoom {
    pub session: SessionId,
}

/// The player's connection went away: its entity stays, standing still, for
/// the resume grace period.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnected {
    pub session: SessionId,
}

/// A validated chat line.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChatIn {
    pub session: SessionId,
    pub text: String,
}

/// The player id of the member with entity `entity`, if there is one.
#[derive(Message)]
#[rtype(result = "Option<String>")]
pub struct WhoIs {
    pub entity: EntityId,
}

/// Fault injection, for tests and drills (admin API only).
#[derive(Debug, Clone, Copy)]
pub enum FaultKind {
    Panic,
    Stall(Duration),
}

/// Replies whether the room crashed applying it.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Fault(pub FaultKind);

/// The names of the room's panic boundaries: every handler and
/// continuation, each a fault point (`POST /admin/faults/room` with `at`).
pub const FAULT_POINTS: &[&str] = &[
    "join",
    "leave",
    "disconnected",
    "chat",
    "broadcast",
    "pick_up",
    "who_is",
    "fault",
    "handover",
    "tick",
    "ground_start",
    "restore",
    "ground_loaded",
    "ground_load",
    "ground_secured",
    "ground_secure",
    "pickup_taken",
    "pickup_credited",
    "pickup_retry",
];

/// The supervisor moves the room off a retiring extra Arbiter: it takes a
/// snapshot, stops, and a new incarnation goes on from it elsewhere.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Handover;

/// The part of a member that survives a restart.
#[derive(Clone)]
pub struct MemberState {
    pub session: SessionId,
    pub identity: Arc<Identity>,
    pub out: Arc<Outbound>,
    pub inputs: Arc<Inputs>,
    pub epoch: u64,
    pub events: Recipient<RoomEvent>,
    pub x: f32,
    pub y: f32,
    pub dir: (f32, f32),
    /// Last input applied.
    pub seq: u32,
    /// When the connection went away; the seat is held until the grace
    /// period runs out.
    pub disconnected_at: Option<Instant>,
}

/// A room as it stood after its last tick, membership or ground change.
#[derive(Clone, Default)]
pub struct RoomSnapshot {
    pub tick: u64,
    pub next_entity: EntityId,
    pub members: Vec<(EntityId, MemberState)>,
    /// Ground items, pick-ups in flight, revision (shared: it changes far
    /// less often than positions).
    pub ground: Arc<GroundSnapshot>,
}

struct Member {
    state: MemberState,
    name: Arc<str>,
    cell: Cell,
    pending: Vec<(u32, f32, f32)>,
    /// Moved or had an input applied this tick.
    changed: bool,
    /// Moved since its position was last handed to the persister.
    unsaved: bool,
    /// What this member saw at the end of the last tick, ascending ids.
    visible: Vec<EntityId>,
    /// Its entries of `update.moved` and `update.entered` as of its last
    /// change, encoded once for every member that sees it.
    wire: Encoded,
}

/// A member's pre-encoded update entries (see [`protocol::assemble`]).
#[derive(Default)]
struct Encoded {
    moved: Vec<u8>,
    entity: Vec<u8>,
}

/// Positions are handed to the persister (which coalesces them) at most
/// this often per member, and on leave, disconnect and room stop.
const SAVE_EVERY_TICKS: u64 = 5;

/// Movement alone is snapshotted every this many ticks (100 ms at 20 Hz);
/// joins, leaves and disconnects at once. A restart replays at most this
/// much movement; the players get a full resync either way.
const SNAPSHOT_EVERY_TICKS: u64 = 2;

impl Member {
    fn entity(&self, id: EntityId) -> Entity {
        Entity {
            id,
            name: self.name.to_string(),
            x: self.state.x,
            y: self.state.y,
            seq: self.state.seq,
        }
    }

    fn moved(&self, id: EntityId) -> Moved {
        Moved {
            id,
            x: self.state.x,
            y: self.state.y,
            seq: self.state.seq,
        }
    }

    fn connected(&self) -> bool {
        self.state.disconnected_at.is_none()
    }

    /// Re-encode its update entries after a change (or when never encoded).
    fn encode(&mut self, id: EntityId) {
        let (moved, entity) = (self.moved(id), self.entity(id));
        let wire = &mut self.wire;
        wire.moved.clear();
        assemble::encode_moved(&moved, &mut wire.moved);
        wire.entity.clear();
        assemble::encode_entity(&entity, &mut wire.entity);
    }

    /// The volatile state the persister keeps for this player.
    fn saved_state(&self, map: &str) -> PlayerState {
        let (dx, dy) = self.state.dir;
        PlayerState {
            map: map.to_string(),
            x: self.state.x,
            y: self.state.y,
            facing: if dx == 0.0 && dy == 0.0 {
                0.0
            } else {
                dy.atan2(dx)
            },
            stats: Stats::default(),
        }
    }
}

/// The changes one member sees in a tick; members with equal keys get the
/// same bytes.
#[derive(PartialEq, Eq, Hash)]
struct ViewDiff {
    entered: Vec<EntityId>,
    moved: Vec<EntityId>,
    left: Vec<EntityId>,
}

/// How a new incarnation came to be.
pub struct Restored {
    pub snapshot: Arc<RoomSnapshot>,
    /// When the crash was detected, for the time-to-restore metric.
    pub crashed_at: Instant,
}

pub struct Room {
    /// Which room this is: the map and the instance.
    id: RoomId,
    /// `id` as text: the key of the room's store document, its metric
    /// label and fault target (the bare map name for the first instance).
    label: Arc<str>,
    map: Arc<MapDef>,
    info: MapInfo,
    supervisor: Arc<RoomSupervisor>,
    slot: Arc<RoomSlot>,
    tick: u64,
    next_entity: EntityId,
    sessions: FastMap<SessionId, EntityId>,
    members: FastMap<EntityId, Member>,
    grid: Grid,
    empty_since: Option<Instant>,
    /// When the next tick is due; ticks run at a fixed rate.
    next_tick: Instant,
    broadcast_sub: Option<SubscriptionId>,
    restored: Option<Restored>,
    /// Set once a handler panicked; nothing runs after that.
    crashed: bool,
    /// Someone moved, joined, left or had an input applied since the last
    /// published views; when not, a tick has nothing to send (an idle room
    /// costs next to nothing).
    dirty: bool,
    /// Something changed since the last snapshot.
    moved_since_snapshot: bool,
    /// Scratch buffers reused every tick.
    scratch_ids: Vec<EntityId>,
    scratch_view: Vec<EntityId>,
    /// Items on the map and pick-ups in flight (see [`ground`]).
    ground: Ground,
    /// The ground as of its last change, for snapshots.
    ground_snapshot: Arc<GroundSnapshot>,
}

impl Room {
    pub fn new(
        id: RoomId,
        map: Arc<MapDef>,
        supervisor: Arc<RoomSupervisor>,
        slot: Arc<RoomSlot>,
        restored: Option<Restored>,
    ) -> Room {
        let info = MapInfo {
            name: map.name.clone(),
            width: map.width,
            height: map.height,
            tick_hz: map.tick_hz,
            view_radius: map.view_radius,
            speed: map.speed,
        };
        let mut room = Room {
            label: Arc::from(id.to_string()),
            id,
            grid: Grid::new(map.view_radius),
            map,
            info,
            supervisor,
            slot,
            tick: 0,
            next_entity: 1,
            sessions: FastMap::default(),
            members: FastMap::default(),
            empty_since: Some(Instant::now()),
            next_tick: Instant::now(),
            broadcast_sub: None,
            restored: None,
            crashed: false,
            dirty: true,
            moved_since_snapshot: false,
            scratch_ids: Vec::new(),
            scratch_view: Vec::new(),
            ground: Ground::new(),
            ground_snapshot: Arc::default(),
        };
        if let Some(restored) = restored {
            room.load(&restored.snapshot);
            room.restored = Some(restored);
        }
        room
    }

    /// Take the members of a snapshot back. A member whose session ended its
    /// membership meanwhile (a leave that was lost with the crash) is not
    /// re-attached; one whose connection closed is kept as disconnected.
    fn load(&mut self, snapshot: &RoomSnapshot) {
        self.tick = snapshot.tick;
        self.next_entity = snapshot.next_entity;
        for (id, state) in &snapshot.members {
            if !state.out.is_member(state.epoch) {
                continue;
            }
            let mut state = state.clone();
            if state.out.is_closing() && state.disconnected_at.is_none() {
                state.disconnected_at = Some(Instant::now());
            }
            let cell = self.grid.insert(*id, state.x, state.y);
            self.sessions.insert(state.session, *id);
            self.members.insert(
                *id,
                Member {
                    name: Arc::from(state.identity.name.as_str()),
                    state,
                    cell,
                    pending: Vec::new(),
                    changed: false,
                    unsaved: false,
                    visible: Vec::new(),
                    wire: Encoded::default(),
                },
            );
        }
        if !self.members.is_empty() {
            self.empty_since = None;
        }
        self.count_members();
    }

    fn snapshot(&mut self) {
        self.moved_since_snapshot = false;
        let snapshot = RoomSnapshot {
            tick: self.tick,
            next_entity: self.next_entity,
            members: self
                .members
                .iter()
                .map(|(id, m)| (*id, m.state.clone()))
                .collect(),
            ground: self.ground_snapshot.clone(),
        };
        *self.slot.snapshot.lock() = Arc::new(snapshot);
    }

    /// Run `f` behind the panic boundary. A panic drops the message, stops
    /// this incarnation and asks the supervisor for a restart; `None` is
    /// returned then, and for every message after it or after retirement.
    fn guarded<R>(
        &mut self,
        ctx: &mut Context<Self>,
        what: &'static str,
        f: impl FnOnce(&mut Self, &mut Context<Self>) -> R,
    ) -> Option<R> {
        if self.crashed {
            return None;
        }
        if self.slot.retired.load(Ordering::Acquire) {
            // The watchdog replaced this incarnation while it was stuck.
            self.crashed = true;
            ctx.stop();
            return None;
        }
        // Busy while inside: a room late on its tick with this set is stuck
        // itself, not waiting for a thread another room blocks.
        self.slot.busy.store(true, Ordering::Release);
        let result = catch(|| {
            self.supervisor
                .faults()
                .trip(FaultActor::Room, what, Some(&self.label));
            f(self, ctx)
        });
        self.slot.busy.store(false, Ordering::Release);
        match result {
            Ok(result) => Some(result),
            Err(text) => {
                self.crashed = true;
                metrics::counter!(
                    m::ROOM_POISON_DROPPED,
                    m::room_labels(&self.id, &[("message", what)])
                )
                .increment(1);
                tracing::error!(
                    room = %self.id,
                    incarnation = self.slot.incarnation,
                    message = what,
                    panic = %text,
                    "room crashed; message dropped"
                );
                self.supervisor.restart(
                    &self.id,
                    self.slot.incarnation,
                    RestartReason::Panic,
                    Instant::now(),
                );
                ctx.stop();
                None
            }
        }
    }

    fn spawn_point(&self) -> (f32, f32) {
        let [sx, sy] = self.map.spawn;
        let r = self.map.spawn_radius;
        let mut rng = rand::rng();
        let (dx, dy) = if r > 0.0 {
            (rng.random_range(-r..=r), rng.random_range(-r..=r))
        } else {
            (0.0, 0.0)
        };
        (
            (sx + dx).clamp(0.0, self.map.width),
            (sy + dy).clamp(0.0, self.map.height),
        )
    }

    fn remove(&mut self, session: SessionId) -> Option<Member> {
        let id = self.sessions.remove(&session)?;
        let member = self.members.remove(&id)?;
        self.grid.remove(id, member.cell);
        self.count_members();
        self.dirty = true;
        self.save(&member);
        self.supervisor.persister().request_flush();
        if self.members.is_empty() {
            self.empty_since = Some(Instant::now());
        }
        Some(member)
    }

    /// Tell the supervisor how many members (held seats included) the room
    /// has, for placing `instances = "auto"` joins.
    fn count_members(&self) {
        self.slot
            .members
            .store(self.members.len(), Ordering::Release);
    }

    fn member_of(&mut self, session: SessionId) -> Option<&mut Member> {
        let id = self.sessions.get(&session)?;
        self.members.get_mut(id)
    }

    /// Hand a member's position to the persister (write-behind, coalesced).
    fn save(&self, member: &Member) {
        self.supervisor.persister().player_state(
            &member.state.identity.player_id,
            member.saved_state(&self.map.name),
        );
    }

    /// Hand every member that moved since its last save to the persister.
    fn save_moved(&mut self) {
        for member in self.members.values() {
            if member.unsaved {
                self.save(member);
            }
        }
        for member in self.members.values_mut() {
            member.unsaved = false;
        }
    }

    /// Drop seats whose grace period ran out.
    fn expire_seats(&mut self) {
        let grace = self.supervisor.resume_grace();
        let expired: Vec<SessionId> = self
            .members
            .values()
            .filter(|m| {
                m.state
                    .disconnected_at
                    .is_some_and(|t| t.elapsed() >= grace)
            })
            .map(|m| m.state.session)
            .collect();
        for session in expired {
            self.remove(session);
        }
    }

    /// Apply queued inputs and move everyone one step.
    fn simulate(&mut self) {
        let dt = 1.0 / self.map.tick_hz as f32;
        let step = self.map.speed * dt;
        let (w, h) = (self.map.width, self.map.height);
        for (&id, member) in self.members.iter_mut() {
            if member.connected() {
                member.state.inputs.drain_into(&mut member.pending);
            }
            let s = &mut member.state;
            if !member.pending.is_empty() {
                member.pending.sort_unstable_by_key(|(seq, _, _)| *seq);
                for &(seq, dx, dy) in member.pending.iter() {
                    if seq > s.seq {
                        s.seq = seq;
                        s.dir = (dx, dy);
                        member.changed = true;
                        self.dirty = true;
                    }
                }
                member.pending.clear();
            }
            let (dx, dy) = s.dir;
            if dx != 0.0 || dy != 0.0 {
                let x = (s.x + dx * step).clamp(0.0, w);
                let y = (s.y + dy * step).clamp(0.0, h);
                if x != s.x || y != s.y {
                    s.x = x;
                    s.y = y;
                    member.changed = true;
                    member.unsaved = true;
                    self.dirty = true;
                    member.cell = self.grid.update(id, member.cell, x, y);
                }
            }
        }
    }

    /// The full view of member `id` as an update frame.
    fn full_update(&self, view: &[EntityId]) -> Bytes {
        let update = Update {
            tick: self.tick,
            entered: view.iter().map(|e| self.members[e].entity(*e)).collect(),
            full: true,
            ..Update::default()
        };
        encode_frame(&ServerMsg::Update(update))
    }

    /// Send every connected member what changed in its view this tick.
    fn publish_views(&mut self) {
        let mut frames: FastMap<ViewDiff, Bytes> = FastMap::default();
        let mut sent = 0u64;
        if self.dirty {
            for (&id, member) in self.members.iter_mut() {
                if member.changed || member.wire.moved.is_empty() {
                    member.encode(id);
                }
            }
        }
        let mut ids = std::mem::take(&mut self.scratch_ids);
        let mut previous = std::mem::take(&mut self.scratch_view);
        ids.clear();
        ids.extend(self.members.keys().copied());
        for &id in &ids {
            let me = &self.members[&id];
            if !me.connected() {
                continue;
            }
            let resync = me.state.out.take_resync();
            if !self.dirty && !resync {
                continue;
            }
            // The new view goes straight into the member; the old one comes
            // back in `previous`, so no view is allocated per tick.
            let (x, y) = (me.state.x, me.state.y);
            self.grid.query(x, y, self.map.view_radius, &mut previous);
            let Some(me) = self.members.get_mut(&id) else {
                continue;
            };
            std::mem::swap(&mut me.visible, &mut previous);
            let me = &self.members[&id];
            if resync {
                // Counted only when queued: a closing session or one over
                // its budget refuses the frame.
                let full = self.full_update(&me.visible);
                sent += u64::from(me.state.out.push_state(me.state.epoch, full));
                continue;
            }
            let diff = diff_views(&previous, &me.visible, |e| self.members[&e].changed);
            if diff.entered.is_empty() && diff.moved.is_empty() && diff.left.is_empty() {
                continue;
            }
            let frame = match frames.get(&diff) {
                Some(frame) => frame.clone(),
                None => {
                    // Laid out around the entries encoded above: no entity
                    // is encoded again per member that sees it.
                    let mut bytes = Vec::with_capacity(
                        16 + 24 * diff.moved.len() + 40 * diff.entered.len() + 5 * diff.left.len(),
                    );
                    let members = &self.members;
                    assemble::write_update(
                        &mut bytes,
                        self.tick,
                        diff.entered
                            .iter()
                            .map(|e| members[e].wire.entity.as_slice()),
                        diff.moved.iter().map(|e| members[e].wire.moved.as_slice()),
                        &diff.left,
                        false,
                    );
                    let frame = Bytes::from(bytes);
                    frames.insert(diff, frame.clone());
                    frame
                }
            };
            sent += u64::from(me.state.out.push_state(me.state.epoch, frame));
        }
        if self.dirty {
            for member in self.members.values_mut() {
                member.changed = false;
            }
        }
        self.dirty = false;
        self.scratch_ids = ids;
        self.scratch_view = previous;
        metrics::counter!(m::UPDATE_ENCODES).increment(frames.len() as u64);
        metrics::counter!(m::UPDATE_FRAMES).increment(sent);
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        self.slot.beat(&self.supervisor);
        if self.members.is_empty() {
            let idle_for = self.empty_since.map_or(Duration::ZERO, |t| t.elapsed());
            // A pick-up still being credited keeps the room up.
            if idle_for >= Duration::from_millis(self.map.idle_stop_ms)
                && !self.ground.has_pending()
            {
                tracing::info!(room = %self.id, "room idle; stopping");
                self.supervisor.forget(&self.id, self.slot.incarnation);
                ctx.stop();
            }
            return;
        }
        let started = Instant::now();
        self.tick += 1;
        self.expire_seats();
        self.simulate();
        self.spawn_items();
        self.moved_since_snapshot |= self.dirty;
        self.publish_views();
        if self.moved_since_snapshot && self.tick % SNAPSHOT_EVERY_TICKS == 0 {
            self.snapshot();
        }
        if self.tick % SAVE_EVERY_TICKS == 0 {
            self.save_moved();
        }
        metrics::counter!(m::ROOM_TICKS).increment(1);
        metrics::histogram!(m::ROOM_TICK_SECONDS).record(started.elapsed().as_secs_f64());
    }

    /// Arm the next tick at a fixed rate. A room that fell behind (an
    /// overloaded thread) skips the ticks it missed instead of bursting to
    /// catch up, and counts them.
    fn schedule_tick(&mut self, ctx: &mut Context<Self>) {
        let period = Duration::from_secs_f64(1.0 / f64::from(self.map.tick_hz));
        let now = Instant::now();
        self.next_tick += period;
        if self.next_tick < now {
            let behind = now.duration_since(self.next_tick);
            let skipped = (behind.as_secs_f64() / period.as_secs_f64()).ceil() as u32;
            metrics::counter!(m::ROOM_TICKS_SKIPPED).increment(u64::from(skipped));
            self.next_tick += period * skipped;
        }
        ctx.run_later(
            self.next_tick.saturating_duration_since(now),
            |room, ctx| {
                room.guarded(ctx, "tick", |room, ctx| room.on_tick(ctx));
                if !room.crashed {
                    room.schedule_tick(ctx);
                }
            },
        );
    }

    fn to_all_members(&self, frame: Bytes) {
        for member in self.members.values().filter(|m| m.connected()) {
            // An overflow closes that member's session; it leaves the room
            // when its actor stops.
            let _ = member
                .state
                .out
                .push_room_reliable(member.state.epoch, frame.clone());
        }
    }

    /// After a restart: every connected member gets its full view and a
    /// notice.
    fn resync_all(&mut self) {
        let notice = encode_frame(&ServerMsg::Notice(Notice::new(
            NoticeCode::RoomRestarted,
            format!("{} restarted", self.map.name),
        )));
        let mut view = Vec::new();
        let ids: Vec<EntityId> = self.members.keys().copied().collect();
        for id in ids {
            let me = &self.members[&id];
            if !me.connected() {
                continue;
            }
            self.grid
                .query(me.state.x, me.state.y, self.map.view_radius, &mut view);
            let frame = self.full_update(&view);
            let out = me.state.out.clone();
            let epoch = me.state.epoch;
            // Reliable: a resync must not be shed like an ordinary update.
            let _ = out.push_room_reliable(epoch, frame);
            let _ = out.push_room_reliable(epoch, notice.clone());
            if let Some(me) = self.members.get_mut(&id) {
                me.visible = view.clone();
            }
        }
    }

    fn join(&mut self, msg: JoinRoom) -> Result<JoinOk, JoinError> {
        // A held seat of the resumed session, or of this session (joining
        // again), is taken over rather than duplicated.
        let seat = msg
            .resume
            .and_then(|old| self.sessions.get(&old).copied().map(|id| (old, id)));
        if let Some((old, id)) = seat {
            self.sessions.remove(&old);
            self.sessions.insert(msg.session, id);
            let member = self
                .members
                .get_mut(&id)
                .expect("sessions and members hold the same entities");
            member.state.session = msg.session;
            member.state.out = msg.out;
            member.state.inputs = msg.inputs;
            member.state.epoch = msg.epoch;
            member.state.events = msg.events;
            member.state.disconnected_at = None;
            member.state.dir = (0.0, 0.0);
            // A session joining the map it stands in gets `joined` again,
            // with no notice: nothing was restored.
            let notice = (old != msg.session).then_some(NoticeCode::SeatRestored);
            self.send_joined(id, notice);
            self.snapshot();
            return Ok(JoinOk {
                entity: id,
                resumed: true,
            });
        }
        if msg.seat_only {
            return Err(JoinError::SeatGone);
        }
        self.remove(msg.session);
        if self.members.len() >= self.map.max_players {
            return Err(JoinError::Full);
        }
        let id = self.next_entity;
        self.next_entity = self.next_entity.wrapping_add(1).max(1);
        let (x, y) = match msg.spawn_at {
            Some((x, y)) if x.is_finite() && y.is_finite() => {
                (x.clamp(0.0, self.map.width), y.clamp(0.0, self.map.height))
            }
            _ => self.spawn_point(),
        };
        let cell = self.grid.insert(id, x, y);
        let member = Member {
            name: Arc::from(msg.identity.name.as_str()),
            state: MemberState {
                session: msg.session,
                identity: msg.identity,
                out: msg.out,
                inputs: msg.inputs,
                epoch: msg.epoch,
                events: msg.events,
                x,
                y,
                dir: (0.0, 0.0),
                seq: 0,
                disconnected_at: None,
            },
            cell,
            pending: Vec::new(),
            changed: false,
            unsaved: true,
            visible: Vec::new(),
            wire: Encoded::default(),
        };
        self.members.insert(id, member);
        self.sessions.insert(msg.session, id);
        self.count_members();
        self.empty_since = None;
        self.dirty = true;
        self.send_joined(id, None);
        self.snapshot();
        tracing::debug!(room = %self.id, entity = id, session = msg.session, "joined");
        Ok(JoinOk {
            entity: id,
            resumed: false,
        })
    }

    /// Send `joined` (everything in view) to member `id`, and a notice.
    fn send_joined(&mut self, id: EntityId, notice: Option<NoticeCode>) {
        let mut view = Vec::new();
        let me = &self.members[&id];
        self.grid
            .query(me.state.x, me.state.y, self.map.view_radius, &mut view);
        let joined = Joined {
            map: self.info.clone(),
            you: id,
            tick: self.tick,
            entities: view.iter().map(|e| self.members[e].entity(*e)).collect(),
            items: self.ground.wire_items(),
            instance: self.id.instance(),
        };
        let frame = encode_frame(&ServerMsg::Joined(joined));
        let me = self
            .members
            .get_mut(&id)
            .expect("send_joined is called for a present member");
        me.visible = view;
        let _ = me.state.out.push_room_reliable(me.state.epoch, frame);
        if let Some(code) = notice {
            let text = format!("back in {}", self.map.name);
            let frame = encode_frame(&ServerMsg::Notice(Notice::new(code, text)));
            let _ = me.state.out.push_room_reliable(me.state.epoch, frame);
        }
    }
}

/// Entered: in `now`, not in `before`. Left: the reverse. Moved: in both and
/// `changed`. Both inputs are in ascending order.
fn diff_views(
    before: &[EntityId],
    now: &[EntityId],
    changed: impl Fn(EntityId) -> bool,
) -> ViewDiff {
    let mut diff = ViewDiff {
        entered: Vec::new(),
        moved: Vec::new(),
        left: Vec::new(),
    };
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < now.len() {
        match (before.get(i), now.get(j)) {
            (Some(&b), Some(&n)) if b == n => {
                if changed(n) {
                    diff.moved.push(n);
                }
                i += 1;
                j += 1;
            }
            (Some(&b), Some(&n)) if b < n => {
                diff.left.push(b);
                i += 1;
            }
            (_, Some(&n)) => {
                diff.entered.push(n);
                j += 1;
            }
            (Some(&b), None) => {
                diff.left.push(b);
                i += 1;
            }
            (None, None) => break,
        }
    }
    diff
}

fn encode_frame(msg: &ServerMsg) -> Bytes {
    Bytes::from(encode_server(msg))
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        metrics::gauge!(m::ROOMS_ACTIVE).increment(1.0);
        self.slot.beat(&self.supervisor);
        let topic = self.supervisor.dispatcher().map_topic(&self.map.name);
        self.broadcast_sub = Some(topic.subscribe(ctx.address().recipient()));
        let restored_ground = self.restored.as_ref().map(|r| r.snapshot.ground.clone());
        self.guarded(ctx, "ground_start", |room, ctx| {
            room.start_ground(restored_ground.as_deref(), ctx)
        });
        if let Some(restored) = self.restored.take() {
            let done = self.guarded(ctx, "restore", |room, _| {
                room.resync_all();
                room.resync_ground();
            });
            if done.is_some() {
                let took = restored.crashed_at.elapsed();
                metrics::histogram!(m::ROOM_RESTORE_SECONDS).record(took.as_secs_f64());
                tracing::info!(
                    room = %self.id,
                    incarnation = self.slot.incarnation,
                    members = self.members.len(),
                    restore_ms = took.as_secs_f64() * 1e3,
                    "room restored from snapshot"
                );
            }
        } else {
            tracing::info!(room = %self.id, tick_hz = self.map.tick_hz, "room started");
        }
        self.next_tick = Instant::now();
        if !self.crashed {
            self.schedule_tick(ctx);
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        metrics::gauge!(m::ROOMS_ACTIVE).decrement(1.0);
        if !self.crashed {
            // A crashed incarnation's state may be half-updated; its
            // successor saves from the snapshot. Nothing is left to restart
            // here: a panic while saving is logged and counted.
            let saved = catch(|| {
                self.save_moved();
                self.save_ground();
                self.supervisor.persister().request_flush();
            });
            if let Err(text) = saved {
                metrics::counter!(
                    m::ROOM_POISON_DROPPED,
                    m::room_labels(&self.id, &[("message", "stopped")])
                )
                .increment(1);
                tracing::error!(room = %self.id, incarnation = self.slot.incarnation, panic = %text, "room panicked while stopping");
            }
        }
        if let Some(sub) = self.broadcast_sub.take() {
            self.supervisor
                .dispatcher()
                .map_topic(&self.map.name)
                .unsubscribe(sub);
        }
    }
}

impl Handler<JoinRoom> for Room {
    type Result = Result<JoinOk, JoinError>;

    fn handle(&mut self, msg: JoinRoom, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(ctx, "join", |room, _| room.join(msg))
            .unwrap_or(Err(JoinError::Crashed))
    }
}

impl Handler<LeaveRoom> for Room {
    type Result = ();

    fn handle(&mut self, msg: LeaveRoom, ctx: &mut Context<Self>) {
        self.guarded(ctx, "leave", |room, _| {
            if room.remove(msg.session).is_some() {
                room.snapshot();
            }
        });
    }
}

impl Handler<Disconnected> for Room {
    type Result = ();

    fn handle(&mut self, msg: Disconnected, ctx: &mut Context<Self>) {
        self.guarded(ctx, "disconnected", |room, _| {
            let map = room.map.clone();
            let Some(member) = room.member_of(msg.session) else {
                return;
            };
            member.state.disconnected_at = Some(Instant::now());
            member.state.dir = (0.0, 0.0);
            member.pending.clear();
            member.state.inputs.clear();
            member.unsaved = false;
            let saved = member.saved_state(&map.name);
            let player = member.state.identity.player_id.clone();
            room.supervisor.persister().player_state(&player, saved);
            room.supervisor.persister().request_flush();
            room.snapshot();
        });
    }
}

impl Handler<ChatIn> for Room {
    type Result = ();

    fn handle(&mut self, msg: ChatIn, ctx: &mut Context<Self>) {
        self.guarded(ctx, "chat", |room, _| {
            let Some(&from) = room.sessions.get(&msg.session) else {
                return;
            };
            let chat = ServerMsg::Chat(Chat {
                from,
                name: room.members[&from].name.to_string(),
                text: msg.text,
            });
            room.to_all_members(encode_frame(&chat));
        });
    }
}

impl Handler<Published<MapBroadcast>> for Room {
    type Result = ();

    fn handle(&mut self, msg: Published<MapBroadcast>, ctx: &mut Context<Self>) {
        self.guarded(ctx, "broadcast", |room, _| {
            room.to_all_members(msg.msg.0.clone())
        });
    }
}

impl Handler<PickUp> for Room {
    type Result = ();

    fn handle(&mut self, msg: PickUp, ctx: &mut Context<Self>) {
        self.guarded(ctx, "pick_up", |room, ctx| room.pick_up(msg, ctx));
    }
}

impl Handler<WhoIs> for Room {
    type Result = Option<String>;

    fn handle(&mut self, msg: WhoIs, ctx: &mut Context<Self>) -> Option<String> {
        self.guarded(ctx, "who_is", |room, _| {
            room.members
                .get(&msg.entity)
                .map(|m| m.state.identity.player_id.clone())
        })
        .flatten()
    }
}

impl Handler<Fault> for Room {
    type Result = bool;

    fn handle(&mut self, msg: Fault, ctx: &mut Context<Self>) -> bool {
        tracing::warn!(room = %self.id, fault = ?msg.0, "injecting fault");
        self.guarded(ctx, "fault", |_, _| match msg.0 {
            FaultKind::Panic => panic!("injected fault"),
            // Blocks this room's thread on purpose: what the watchdog is for.
            FaultKind::Stall(d) => std::thread::sleep(d.min(MAX_INJECTED_STALL)),
        })
        .is_none()
    }
}

impl Handler<Handover> for Room {
    type Result = ();

    fn handle(&mut self, _: Handover, ctx: &mut Context<Self>) {
        self.guarded(ctx, "handover", |room, ctx| {
            room.snapshot();
            // Handed over, not crashed, but nothing may run after this:
            // the successor owns the state (and saves it) from here on.
            room.crashed = true;
            ctx.stop();
            let (id, incarnation) = (room.id.clone(), room.slot.incarnation);
            room.supervisor
                .restart(&id, incarnation, RestartReason::Handover, Instant::now());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_finds_entered_moved_and_left() {
        let changed = |e: EntityId| e == 3 || e == 9;
        let d = diff_views(&[1, 3, 5, 7], &[2, 3, 7, 9], changed);
        assert_eq!(d.entered, vec![2, 9]);
        assert_eq!(d.moved, vec![3]);
        assert_eq!(d.left, vec![1, 5]);
        let d = diff_views(&[], &[4], |_| true);
        assert_eq!(d.entered, vec![4]);
        let d = diff_views(&[4, 8], &[], |_| true);
        assert_eq!(d.left, vec![4, 8]);
    }
}
