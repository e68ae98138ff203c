//! Map rooms: the authoritative state of one map, advanced on a fixed tick.
//!
//! ```text
//! Session ──JoinRoom (call, timeout)──▶ Room ──joined──────────▶ Outbound
//!         ──Input / ChatIn (try_send)─▶      ──update per tick──▶ Outbound × members
//!         ──LeaveRoom (cast)──────────▶      ──chat────────────▶ Outbound × members
//! Dispatcher ──Published<MapBroadcast>─▶
//! ```
//!
//! A room never blocks and never does I/O: it writes encoded frames into its
//! members' outbound queues. Inputs queue until the next tick and are applied
//! in `seq` order. Each tick, every member's view (entities within the
//! map's view radius, found through [`grid::Grid`]) is compared with the
//! last one; members whose changes are identical share one encoded frame.

pub mod grid;
pub mod registry;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use protocol::msg::{Announce, Chat, Entity, EntityId, Joined, MapInfo, Moved, Update};
use protocol::{encode_server, ServerMsg};
use rand::Rng;

use crate::auth::Identity;
use crate::config::MapDef;
use crate::dispatcher::{MapBroadcast, Published, SubscriptionId};
use crate::metrics as m;
use crate::outbound::Outbound;
use crate::session::SessionId;
use grid::{Cell, Grid};
pub use registry::RoomRegistry;

/// Pending inputs kept per member between ticks; older ones are dropped.
/// The session's rate limit keeps a well-behaved client far below it.
const MAX_PENDING_INPUTS: usize = 32;

/// Join the room. Replies with the player's entity id; the room itself
/// sends `joined` through `out`, ahead of any update.
pub struct JoinRoom {
    pub session: SessionId,
    pub identity: Arc<Identity>,
    pub out: Arc<Outbound>,
    /// The membership epoch from [`Outbound::begin_room`].
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinError {
    Full,
}

impl Message for JoinRoom {
    type Result = Result<EntityId, JoinError>;
}

/// Leave the room. The session has already ended the membership on its
/// outbound queue (and told the player), so the room only forgets it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct LeaveRoom {
    pub session: SessionId,
}

/// A validated move intent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Input {
    pub session: SessionId,
    pub seq: u32,
    pub dx: f32,
    pub dy: f32,
}

/// A validated chat line.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChatIn {
    pub session: SessionId,
    pub text: String,
}

struct Member {
    name: Arc<str>,
    out: Arc<Outbound>,
    epoch: u64,
    x: f32,
    y: f32,
    cell: Cell,
    dir: (f32, f32),
    /// Last input applied.
    seq: u32,
    pending: Vec<(u32, f32, f32)>,
    /// Moved or had an input applied this tick.
    changed: bool,
    /// What this member saw at the end of the last tick, ascending ids.
    visible: Vec<EntityId>,
}

impl Member {
    fn entity(&self, id: EntityId) -> Entity {
        Entity {
            id,
            name: self.name.to_string(),
            x: self.x,
            y: self.y,
            seq: self.seq,
        }
    }

    fn moved(&self, id: EntityId) -> Moved {
        Moved {
            id,
            x: self.x,
            y: self.y,
            seq: self.seq,
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

pub struct Room {
    map: Arc<MapDef>,
    info: MapInfo,
    registry: Arc<RoomRegistry>,
    tick: u64,
    next_entity: EntityId,
    sessions: HashMap<SessionId, EntityId>,
    members: HashMap<EntityId, Member>,
    grid: Grid,
    empty_since: Option<Instant>,
    /// When the next tick is due; ticks run at a fixed rate.
    next_tick: Instant,
    broadcast_sub: Option<SubscriptionId>,
    /// Scratch buffers reused every tick.
    scratch_ids: Vec<EntityId>,
    scratch_view: Vec<EntityId>,
}

impl Room {
    pub fn new(map: Arc<MapDef>, registry: Arc<RoomRegistry>) -> Room {
        let info = MapInfo {
            name: map.name.clone(),
            width: map.width,
            height: map.height,
            tick_hz: map.tick_hz,
            view_radius: map.view_radius,
            speed: map.speed,
        };
        Room {
            grid: Grid::new(map.view_radius),
            map,
            info,
            registry,
            tick: 0,
            next_entity: 1,
            sessions: HashMap::new(),
            members: HashMap::new(),
            empty_since: Some(Instant::now()),
            next_tick: Instant::now(),
            broadcast_sub: None,
            scratch_ids: Vec::new(),
            scratch_view: Vec::new(),
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
        if self.members.is_empty() {
            self.empty_since = Some(Instant::now());
        }
        Some(member)
    }

    /// Apply queued inputs and move everyone one step.
    fn simulate(&mut self) {
        let dt = 1.0 / self.map.tick_hz as f32;
        let step = self.map.speed * dt;
        let (w, h) = (self.map.width, self.map.height);
        for (&id, member) in self.members.iter_mut() {
            if !member.pending.is_empty() {
                member.pending.sort_unstable_by_key(|(seq, _, _)| *seq);
                for &(seq, dx, dy) in member.pending.iter() {
                    if seq > member.seq {
                        member.seq = seq;
                        member.dir = (dx, dy);
                        member.changed = true;
                    }
                }
                member.pending.clear();
            }
            let (dx, dy) = member.dir;
            if dx != 0.0 || dy != 0.0 {
                let x = (member.x + dx * step).clamp(0.0, w);
                let y = (member.y + dy * step).clamp(0.0, h);
                if x != member.x || y != member.y {
                    member.x = x;
                    member.y = y;
                    member.changed = true;
                    member.cell = self.grid.update(id, member.cell, x, y);
                }
            }
        }
    }

    /// Send every member what changed in its view this tick.
    fn publish_views(&mut self) {
        let mut frames: HashMap<ViewDiff, Bytes> = HashMap::new();
        let mut sent = 0u64;
        let mut ids = std::mem::take(&mut self.scratch_ids);
        let mut view = std::mem::take(&mut self.scratch_view);
        ids.clear();
        ids.extend(self.members.keys().copied());
        for &id in &ids {
            let (x, y, resync) = {
                let me = &self.members[&id];
                (me.x, me.y, me.out.take_resync())
            };
            self.grid.query(x, y, self.map.view_radius, &mut view);
            let previous = match self.members.get_mut(&id) {
                Some(me) => std::mem::replace(&mut me.visible, view.clone()),
                None => continue,
            };
            let me = &self.members[&id];
            if resync {
                let update = Update {
                    tick: self.tick,
                    entered: view.iter().map(|e| self.members[e].entity(*e)).collect(),
                    full: true,
                    ..Update::default()
                };
                me.out
                    .push_state(me.epoch, encode_frame(&ServerMsg::Update(update)));
                sent += 1;
                continue;
            }
            let diff = diff_views(&previous, &view, |e| self.members[&e].changed);
            if diff.entered.is_empty() && diff.moved.is_empty() && diff.left.is_empty() {
                continue;
            }
            let frame = match frames.get(&diff) {
                Some(frame) => frame.clone(),
                None => {
                    let update = Update {
                        tick: self.tick,
                        entered: diff
                            .entered
                            .iter()
                            .map(|e| self.members[e].entity(*e))
                            .collect(),
                        moved: diff
                            .moved
                            .iter()
                            .map(|e| self.members[e].moved(*e))
                            .collect(),
                        left: diff.left.clone(),
                        full: false,
                    };
                    let frame = encode_frame(&ServerMsg::Update(update));
                    frames.insert(diff, frame.clone());
                    frame
                }
            };
            me.out.push_state(me.epoch, frame);
            sent += 1;
        }
        for member in self.members.values_mut() {
            member.changed = false;
        }
        self.scratch_ids = ids;
        self.scratch_view = view;
        metrics::counter!(m::UPDATE_ENCODES).increment(frames.len() as u64);
        metrics::counter!(m::UPDATE_FRAMES).increment(sent);
    }

    fn on_tick(&mut self, ctx: &mut Context<Self>) {
        if self.members.is_empty() {
            let idle_for = self.empty_since.map_or(Duration::ZERO, |t| t.elapsed());
            if idle_for >= self.registry.idle_stop() {
                tracing::info!(map = %self.map.name, "room idle; stopping");
                self.registry.forget(&self.map.name, &ctx.address());
                ctx.stop();
            }
            return;
        }
        let started = Instant::now();
        self.tick += 1;
        self.simulate();
        self.publish_views();
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
            let skipped = (behind.as_secs_f64() / period.as_secs_f64()).ceil() as u64;
            metrics::counter!(m::ROOM_TICKS_SKIPPED).increment(skipped);
            self.next_tick += period * skipped as u32;
        }
        ctx.run_later(
            self.next_tick.saturating_duration_since(now),
            |room, ctx| {
                room.on_tick(ctx);
                room.schedule_tick(ctx);
            },
        );
    }

    fn to_all_members(&self, frame: Bytes) {
        for member in self.members.values() {
            // An overflow closes that member's session; it leaves the room
            // when its actor stops.
            let _ = member.out.push_room_reliable(member.epoch, frame.clone());
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
        tracing::info!(map = %self.map.name, tick_hz = self.map.tick_hz, "room started");
        self.next_tick = Instant::now();
        self.schedule_tick(ctx);
        let topic = self.registry.dispatcher().map_topic(&self.map.name);
        self.broadcast_sub = Some(topic.subscribe(ctx.address().recipient()));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        metrics::gauge!(m::ROOMS_ACTIVE).decrement(1.0);
        if let Some(sub) = self.broadcast_sub.take() {
            self.registry
                .dispatcher()
                .map_topic(&self.map.name)
                .unsubscribe(sub);
        }
    }
}

impl Handler<JoinRoom> for Room {
    type Result = Result<EntityId, JoinError>;

    fn handle(&mut self, msg: JoinRoom, _: &mut Context<Self>) -> Self::Result {
        // A session joining again replaces its old entity.
        self.remove(msg.session);
        if self.members.len() >= self.map.max_players {
            return Err(JoinError::Full);
        }
        let id = self.next_entity;
        self.next_entity = self.next_entity.wrapping_add(1).max(1);
        let (x, y) = self.spawn_point();
        let cell = self.grid.insert(id, x, y);
        let member = Member {
            name: Arc::from(msg.identity.name.as_str()),
            out: msg.out,
            epoch: msg.epoch,
            x,
            y,
            cell,
            dir: (0.0, 0.0),
            seq: 0,
            pending: Vec::new(),
            changed: false,
            visible: Vec::new(),
        };
        self.members.insert(id, member);
        self.sessions.insert(msg.session, id);
        self.empty_since = None;
        let mut view = Vec::new();
        self.grid.query(x, y, self.map.view_radius, &mut view);
        let joined = Joined {
            map: self.info.clone(),
            you: id,
            tick: self.tick,
            entities: view.iter().map(|e| self.members[e].entity(*e)).collect(),
        };
        let frame = encode_frame(&ServerMsg::Joined(joined));
        let me = self
            .members
            .get_mut(&id)
            .expect("the member was inserted just above");
        me.visible = view;
        let _ = me.out.push_room_reliable(me.epoch, frame);
        tracing::debug!(map = %self.map.name, entity = id, session = msg.session, "joined");
        Ok(id)
    }
}

impl Handler<LeaveRoom> for Room {
    type Result = ();

    fn handle(&mut self, msg: LeaveRoom, _: &mut Context<Self>) {
        self.remove(msg.session);
    }
}

impl Handler<Input> for Room {
    type Result = ();

    fn handle(&mut self, msg: Input, _: &mut Context<Self>) {
        let Some(member) = self
            .sessions
            .get(&msg.session)
            .and_then(|id| self.members.get_mut(id))
        else {
            return;
        };
        if member.pending.len() >= MAX_PENDING_INPUTS {
            member.pending.remove(0);
            metrics::counter!(m::ROOM_INPUTS_DROPPED).increment(1);
        }
        member.pending.push((msg.seq, msg.dx, msg.dy));
    }
}

impl Handler<ChatIn> for Room {
    type Result = ();

    fn handle(&mut self, msg: ChatIn, _: &mut Context<Self>) {
        let Some(&from) = self.sessions.get(&msg.session) else {
            return;
        };
        let chat = ServerMsg::Chat(Chat {
            from,
            name: self.members[&from].name.to_string(),
            text: msg.text,
        });
        self.to_all_members(encode_frame(&chat));
    }
}

impl Handler<Published<MapBroadcast>> for Room {
    type Result = ();

    fn handle(&mut self, msg: Published<MapBroadcast>, _: &mut Context<Self>) {
        self.to_all_members(msg.msg.0.clone());
    }
}

/// Encode an announcement once, for the dispatcher.
pub fn announce_frame(text: &str) -> Bytes {
    encode_frame(&ServerMsg::Announce(Announce {
        text: text.to_string(),
    }))
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
