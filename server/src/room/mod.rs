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
//! # Files
//!
//! - `mod.rs`: the [`Room`] actor: its state, tick, simulation, panic
//!   boundary, lifecycle and message handlers.
//! - `messages.rs`: what is sent to a room (and [`RoomEvent`],
//!   what it tells a session), and the shared move queue [`Inputs`].
//! - [`RoomRef`]: the handle sessions reach a room through.
//! - `member.rs`: members, joining, leaving, saving positions.
//! - `view/`: view diffs (`diff.rs`) and their frames (pure functions),
//!   publishing.
//! - `snapshot.rs`: [`RoomSnapshot`], taken and loaded for restarts.
//! - `effects.rs`: carries out what the ground decides (answers,
//!   broadcasts, timers, store calls behind the panic boundary).
//! - [`grid`]: the spatial index; [`ground`]: items lying on the map;
//!   [`supervisor`]: where rooms are found, restarted and watched.
//! - [`remote`]: members whose socket is on another shard (their frames
//!   go to their edge; one `tick` per edge per tick); [`cluster`]: where
//!   a room runs in cluster mode, and both ends of its tunnel stream.
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

pub mod cluster;
mod effects;
mod entity_ids;
mod freeze;
pub mod grid;
pub mod ground;
mod member;
mod messages;
mod moving;
pub mod remote;
mod room_ref;
mod snapshot;
pub mod supervisor;
// Public (and hidden) only for `server/benches/view.rs`.
#[doc(hidden)]
pub mod view;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use protocol::msg::{Chat, EntityId, MapInfo, Notice};
use protocol::{NoticeCode, ServerMsg};
use rand::Rng;

use crate::config::MapDef;
use crate::dispatcher::{MapBroadcast, Published, SubscriptionId};
use crate::ids::{RoomId, SessionId};
use crate::metrics as m;
use crate::supervise::{catch, FaultActor};
use grid::Grid;
use member::Member;
use snapshot::SNAPSHOT_EVERY_TICKS;
use view::encode_frame;

/// Maps keyed by ids the server hands out (entities, sessions, grid cells),
/// looked up per entity per member per tick: a fast hash, since clients
/// cannot choose the keys.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
pub use freeze::Freeze;
use ground::Ground;
pub use ground::{GroundSnapshot, PickUp};
pub use member::MemberState;
pub use messages::{
    ChatIn, Disconnected, Fault, FaultKind, GiveTarget, Handover, Inputs, JoinError, JoinOk,
    JoinRoom, LeaveRoom, MemberLink, RoomEvent, WhoIs, FAULT_POINTS, MAX_INJECTED_STALL,
};
pub use moving::MigrateOut;
pub use room_ref::{CallError, CastError, RoomRef};
pub use snapshot::{Restored, RoomSnapshot};
pub use supervisor::{RestartReason, RoomSlot, RoomSupervisor, RoomView};

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
    entity_ids: entity_ids::EntityIds,
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
    view_scratch: view::ViewScratch,
    /// Items on the map and pick-ups in flight (see [`ground`]).
    ground: Ground,
    /// The ground as of its last change, for snapshots.
    ground_snapshot: Arc<GroundSnapshot>,
    /// Cut off from the directory while another shard could take the
    /// lease: no tick, no write (see [`freeze`]).
    frozen: bool,
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
        // Ids of this lease epoch's block (see `entity_ids`).
        let entity_ids = entity_ids::EntityIds::new(supervisor.epoch(&id), map.max_players);
        let mut room = Room {
            label: Arc::from(id.to_string()),
            id,
            grid: Grid::new(map.view_radius),
            map,
            info,
            supervisor,
            slot,
            tick: 0,
            entity_ids,
            sessions: FastMap::default(),
            members: FastMap::default(),
            empty_since: Some(Instant::now()),
            next_tick: Instant::now(),
            broadcast_sub: None,
            restored: None,
            crashed: false,
            dirty: true,
            moved_since_snapshot: false,
            view_scratch: view::ViewScratch::default(),
            ground: Ground::new(),
            ground_snapshot: Arc::default(),
            frozen: false,
        };
        if let Some(restored) = restored {
            room.load(&restored.snapshot);
            room.restored = Some(restored);
        }
        room
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

    /// Apply queued inputs and move everyone one step.
    fn simulate(&mut self) {
        let dt = 1.0 / self.map.tick_hz as f32;
        let step = self.map.speed * dt;
        let (w, h) = (self.map.width, self.map.height);
        let mut applied = 0u64;
        for (&id, member) in self.members.iter_mut() {
            if member.connected() {
                member.state.link.inputs.drain_into(&mut member.pending);
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
                        applied += 1;
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
        if applied > 0 {
            metrics::counter!(m::ROOM_INPUTS_APPLIED, m::room_labels(&self.id, &[]))
                .increment(applied);
        }
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        self.slot.beat(&self.supervisor);
        if self.frozen {
            return;
        }
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
        // The members' sockets this tick writes itself, at most; the rest
        // go to their sessions (see `outbound::budget`).
        let _budget =
            crate::outbound::immediate_budget(self.supervisor.immediate_writes_per_tick());
        self.tick += 1;
        self.expire_seats();
        self.simulate();
        self.spawn_items(ctx);
        self.moved_since_snapshot |= self.dirty;
        self.publish_views();
        if self.moved_since_snapshot && self.tick % SNAPSHOT_EVERY_TICKS == 0 {
            self.snapshot();
        }
        // Positions go to the persister (which coalesces them) twice per
        // flush interval, and on leave, disconnect and room stop.
        if self.tick % self.supervisor.save_every_ticks(self.map.tick_hz) == 0 {
            self.save_moved();
        }
        metrics::counter!(m::ROOM_TICKS).increment(1);
        let took = started.elapsed();
        metrics::histogram!(m::ROOM_TICK_SECONDS).record(took.as_secs_f64());
        self.slot
            .tick_us
            .store(took.as_micros() as u64, Ordering::Relaxed);
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

    /// The same frame to every connected member: into each local one's
    /// queue, and once per edge for the remote ones (`fanout`).
    fn to_all_members(&self, frame: Bytes) {
        let mut edges: Vec<(Arc<remote::EdgeSink>, Vec<u64>)> = Vec::new();
        for member in self.members.values().filter(|m| m.connected()) {
            match &member.state.link.remote {
                Some(seat) => match edges.iter_mut().find(|(e, _)| e.id == seat.edge.id) {
                    Some((_, sessions)) => sessions.push(seat.session),
                    None => edges.push((seat.edge.clone(), vec![seat.session])),
                },
                // An overflow closes that member's session; it leaves the
                // room when its actor stops.
                None => {
                    member.state.link.push_reliable(frame.clone());
                }
            }
        }
        for (edge, sessions) in edges {
            edge.fanout(sessions, frame.clone());
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
            // Reliable: a resync must not be shed like an ordinary update.
            me.state.link.push_reliable(frame);
            me.state.link.push_reliable(notice.clone());
            if let Some(me) = self.members.get_mut(&id) {
                me.visible = view.clone();
            }
        }
    }
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
        let first_tick = self.restored.as_ref().and_then(|r| r.first_tick);
        if let Some(restored) = self.restored.take() {
            let done = self.guarded(ctx, "restore", |room, ctx| {
                room.resync_all();
                room.resync_ground(ctx);
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
        // `schedule_tick` adds a period: a migrated room's first tick comes
        // when its old owner's next one would have.
        let period = Duration::from_secs_f64(1.0 / f64::from(self.map.tick_hz));
        self.next_tick = first_tick
            .and_then(|t| t.checked_sub(period))
            .unwrap_or_else(Instant::now);
        if !self.crashed {
            self.schedule_tick(ctx);
        }
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        metrics::gauge!(m::ROOMS_ACTIVE).decrement(1.0);
        for place in ["local", "remote"] {
            metrics::gauge!(
                m::ROOM_MEMBERS,
                m::room_labels(&self.id, &[("where", place)])
            )
            .set(0.0);
        }
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
            member.state.link.inputs.clear();
            member.unsaved = false;
            let saved = member.saved_state(&map.name);
            let player = member.state.link.identity.player_id.clone();
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
    type Result = Option<GiveTarget>;

    fn handle(&mut self, msg: WhoIs, ctx: &mut Context<Self>) -> Option<GiveTarget> {
        self.guarded(ctx, "who_is", |room, _| {
            room.members.get(&msg.entity).map(|m| GiveTarget {
                player: m.state.link.identity.player_id.clone(),
                shard: m.state.link.remote.as_ref().map(|s| s.edge.peer.clone()),
            })
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

    fn handle(&mut self, Handover(reason): Handover, ctx: &mut Context<Self>) {
        self.guarded(ctx, "handover", |room, ctx| {
            room.snapshot();
            // Handed over, not crashed, but nothing may run after this:
            // the successor owns the state (and saves it) from here on.
            room.crashed = true;
            ctx.stop();
            let (id, incarnation) = (room.id.clone(), room.slot.incarnation);
            room.supervisor
                .restart(&id, incarnation, reason, Instant::now());
        });
    }
}
