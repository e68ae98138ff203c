//! The edge's side of `/tessera/room/1`: one [`EdgeLink`] per room owned
//! elsewhere, shared by every session of this shard in that room, owning
//! the stream to the owner.
//!
//! - Joins: `join` goes up, the call waits for `joined` / `join_refused`
//!   (within the session's call timeout).
//! - Inputs: every member's queue is drained and sent as one `inputs`
//!   batch `cluster.input_lead_ms` before the owner's next tick (timed
//!   from its recent tick messages, `phase.rs`), and what came after it
//!   once more `cluster.input_late_lead_ms` before the same tick; a member whose
//!   outbound queue shed updates and drained is reported (`resync`) for
//!   a full view.
//! - `tick`: each view's `update` frame is laid out once
//!   ([`protocol::peer::Tick::write_update`]) and the same bytes pushed to
//!   each recipient's outbound queue as a state frame, as a local room
//!   does; `reliable` frames (and `fanout`, one frame for several
//!   members: chat, broadcasts) are pushed as the room's reliable frames.
//! - Failover (`failover.rs`): when the stream ends without the room failing (the owner
//!   stopped, died, or lost the lease), the room is looked for again
//!   (once the old lease expired the directory names a new owner, or the
//!   room is placed anew, maybe here) and every member re-joins it where
//!   this shard last saw it (`resume`, `at`), then gets notice 6003 and a
//!   full update. Past `cluster.failover_budget_ms` the members get the
//!   room-failed path their session already has.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use protocol::msg::{EntityId, Notice};
use protocol::peer::{
    entry_position, EdgeMsg, Input, Inputs as InputBatch, KnownView, Member, OwnerMsg, RemoteChat,
    RemoteJoin, ROOM_PROTOCOL,
};
use protocol::{encode_server, ErrorCode, NoticeCode, ServerMsg};
use tokio::sync::oneshot;

mod failover;
mod late;
mod moving;
mod phase;
mod ticks;
pub use moving::Adopted;

use super::RoomCluster;
use crate::cluster::directory::ShardId;
use crate::cluster::tunnel::{StreamReceiver, StreamSender};
use crate::ids::{RoomId, SessionId};
use crate::room::{CallError, JoinError, JoinOk, JoinRoom, MemberLink, RoomEvent};

type JoinReply = Result<JoinOk, JoinError>;

/// A member of the room on this shard.
struct EdgeMember {
    link: MemberLink,
    /// Its entity, once seated.
    entity: Option<EntityId>,
    /// Where it was placed (its join's `at`), until a tick shows it.
    at: Option<(f32, f32)>,
    /// Its entity's latest entry in a tick: where the owner last showed
    /// it, decoded only for a re-join.
    seen: Option<Bytes>,
    /// Its view as this shard sent it (`ticks.rs`): what an `implied`
    /// tick's `moved` is computed from.
    view: KnownView,
    /// The session's join call, waiting for the owner's answer.
    waiting: Option<oneshot::Sender<JoinReply>>,
    /// Re-joined after a failover: notice 6003 when seated.
    moved: bool,
    /// Its inputs sent lately, sent again after a live move (`moving.rs`).
    sent: moving::SentInputs,
}

impl EdgeMember {
    fn new(link: MemberLink, entity: Option<EntityId>, at: Option<(f32, f32)>) -> EdgeMember {
        EdgeMember {
            link,
            entity,
            at,
            seen: None,
            view: KnownView::default(),
            waiting: None,
            moved: false,
            sent: moving::SentInputs::default(),
        }
    }

    /// Where the owner last showed it (or where it was placed).
    fn position(&self) -> Option<(f32, f32)> {
        self.seen
            .as_deref()
            .and_then(entry_position)
            .map(|(_, x, y)| (x, y))
            .or(self.at)
    }
}

struct Inner {
    owner: ShardId,
    tx: Option<StreamSender>,
    /// Bumped on every new stream, so a stale reader's end is ignored.
    generation: u64,
    /// foldhash: looked up once per recipient of every tick.
    members: crate::room::FastMap<SessionId, EdgeMember>,
    failing_over: bool,
    /// When the owner's recent tick messages arrived: the owner's tick
    /// phase, which the input pump aims at (`phase.rs`).
    phase: phase::TickPhase,
    /// The second input batch's lead, adjusted to the batches' fate
    /// (`late.rs`).
    late: late::LateLead,
    /// The room is paused for a live migration: inputs wait in the
    /// members' queues (`moving.rs`).
    held: bool,
    /// `cluster.implied_moved`: joins announce it, and the members' views
    /// are tracked.
    implied: bool,
}

/// This shard's link to one room owned by another shard.
pub struct EdgeLink {
    room: RoomId,
    cluster: Weak<RoomCluster>,
    inner: Mutex<Inner>,
    /// Serializes opening the stream.
    connecting: tokio::sync::Mutex<()>,
    /// Over: no member is left, or they moved elsewhere. A new join
    /// looks for the room again.
    over: AtomicBool,
    /// Open `who_is` questions (a member's `give`), see `calls.rs`.
    pub(super) calls: super::calls::Calls,
    /// `rooms.immediate_writes_per_tick`, for each tick's fan-out.
    immediate_writes: u32,
}

impl EdgeLink {
    pub(super) fn new(room: RoomId, owner: ShardId, cluster: Weak<RoomCluster>) -> Arc<EdgeLink> {
        let settings = cluster.upgrade().map(|c| {
            let s = c.settings();
            (s.implied_moved, s.immediate_writes_per_tick)
        });
        let (implied, immediate_writes) = settings.unwrap_or((false, u32::MAX));
        Arc::new(EdgeLink {
            room,
            cluster,
            inner: Mutex::new(Inner {
                owner,
                tx: None,
                generation: 0,
                members: Default::default(),
                failing_over: false,
                phase: phase::TickPhase::default(),
                // Set with each stream (`connect`).
                late: late::LateLead::new(Duration::ZERO, Duration::ZERO),
                held: false,
                implied,
            }),
            connecting: tokio::sync::Mutex::new(()),
            over: AtomicBool::new(false),
            calls: Default::default(),
            immediate_writes,
        })
    }

    pub fn room(&self) -> &RoomId {
        &self.room
    }

    pub fn owner(&self) -> ShardId {
        self.inner.lock().owner.clone()
    }

    pub fn len(&self) -> usize {
        self.inner.lock().members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(super) fn is_live(&self) -> bool {
        !self.over.load(Ordering::Acquire)
    }

    pub(super) fn has(&self, session: SessionId) -> bool {
        self.is_live() && self.inner.lock().members.contains_key(&session)
    }

    /// Join the room on its owner; the answer within `timeout`.
    pub async fn call_join(
        self: &Arc<Self>,
        join: JoinRoom,
        timeout: Duration,
    ) -> Result<JoinReply, CallError> {
        let session = join.link.session;
        let (reply_tx, reply_rx) = oneshot::channel();
        let msg = EdgeMsg::Join(RemoteJoin {
            session,
            player: join.link.identity.player_id.clone(),
            name: join.link.identity.name.clone(),
            room: self.room.to_string(),
            resume: join.resume.is_some(),
            at: join.spawn_at.map(|(x, y)| [x, y]),
            implied_moved: self.inner.lock().implied,
        });
        let mut member = EdgeMember::new(join.link, None, join.spawn_at);
        member.waiting = Some(reply_tx);
        self.inner.lock().members.insert(session, member);
        let sent = match self.connect().await {
            Ok(tx) => tx.send_msg(&msg).is_ok(),
            Err(()) => false,
        };
        if !sent {
            self.remove(session);
            // Looked for again by the session's retry.
            self.end();
            return Err(CallError::Closed);
        }
        match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(reply)) => {
                if let Err(e) = reply {
                    if e == JoinError::Full {
                        if let Some(cluster) = self.cluster.upgrade() {
                            cluster.hint_full(&self.room);
                        }
                    }
                    // Refused: a link nobody uses any more is closed.
                    self.end_if_empty();
                }
                Ok(reply)
            }
            Ok(Err(_)) => Err(CallError::Closed),
            Err(_) => {
                // The owner may still seat it: take the seat back at once
                // rather than leave it standing there.
                if self.remove(session).is_some() {
                    self.send(&EdgeMsg::Leave(Member { session }));
                }
                self.end_if_empty();
                Err(CallError::Timeout)
            }
        }
    }

    /// The member left on purpose.
    pub fn leave(self: &Arc<Self>, session: SessionId) {
        if self.remove(session).is_some() {
            self.send(&EdgeMsg::Leave(Member { session }));
        }
        self.end_if_empty();
    }

    /// The member's connection went away: its seat is held at the owner.
    pub fn disconnected(self: &Arc<Self>, session: SessionId) {
        if self.remove(session).is_some() {
            self.send(&EdgeMsg::Disconnected(Member { session }));
        }
        self.end_if_empty();
    }

    /// A validated chat line. False when there is no stream right now
    /// (the room is moving).
    pub fn chat(&self, session: SessionId, text: String) -> bool {
        self.send(&EdgeMsg::Chat(RemoteChat { session, text }))
    }

    pub(super) fn send(&self, msg: &EdgeMsg) -> bool {
        let tx = self.inner.lock().tx.clone();
        tx.is_some_and(|tx| tx.send_msg(msg).is_ok())
    }

    fn remove(&self, session: SessionId) -> Option<EdgeMember> {
        self.inner.lock().members.remove(&session)
    }

    fn end_if_empty(self: &Arc<Self>) {
        let empty = {
            let inner = self.inner.lock();
            inner.members.is_empty() && !inner.failing_over
        };
        if empty {
            self.end();
        }
    }

    /// The link is over: the stream is finished, the registry forgets it.
    fn end(self: &Arc<Self>) {
        self.over.store(true, Ordering::Release);
        if let Some(tx) = self.inner.lock().tx.take() {
            tx.close();
        }
        if let Some(cluster) = self.cluster.upgrade() {
            cluster.forget_link(self);
        }
    }

    /// The stream to the owner, opened if there is none.
    async fn connect(self: &Arc<Self>) -> Result<StreamSender, ()> {
        let _one = self.connecting.lock().await;
        let owner = {
            let inner = self.inner.lock();
            if let Some(tx) = &inner.tx {
                return Ok(tx.clone());
            }
            inner.owner.clone()
        };
        let cluster = self.cluster.upgrade().ok_or(())?;
        let open = cluster.hub().open(owner.as_str(), ROOM_PROTOCOL);
        let stream = match tokio::time::timeout(cluster.settings().call_timeout, open).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(room = %self.room, %owner, error = %e, "room stream not opened");
                return Err(());
            }
            Err(_) => {
                tracing::debug!(room = %self.room, %owner, "room stream not opened in time");
                return Err(());
            }
        };
        let generation = {
            let mut inner = self.inner.lock();
            inner.generation += 1;
            inner.tx = Some(stream.tx.clone());
            // Another stream, maybe another owner: another tick phase,
            // another way to it.
            inner.phase.clear();
            inner.late = late::LateLead::new(
                cluster.settings().input_late_lead_min,
                cluster.settings().input_late_lead,
            );
            // A hold was the old stream's (a migration that then failed
            // over): inputs flow on the new one.
            inner.held = false;
            inner.generation
        };
        let (me, rx) = (self.clone(), stream.rx);
        let settings = cluster.settings();
        let timing = PumpTiming {
            period: cluster.tick_period(&self.room),
            lead: settings.input_lead,
        };
        cluster.arbiter.spawn_fn(move || {
            actix::spawn(me.clone().read(rx, generation));
            actix::spawn(me.pump_inputs(generation, timing));
        });
        Ok(stream.tx)
    }

    /// Everything the owner sends, until the stream ends.
    async fn read(self: Arc<Self>, mut rx: StreamReceiver, generation: u64) {
        let mut closed = None;
        let mut scratch = ticks::TickScratch::default();
        while let Some(msg) = rx.recv_msg::<OwnerMsg>().await {
            // Before waiting for the lock: the tick phase is read from it.
            let arrived = Instant::now();
            match msg {
                Ok(OwnerMsg::Closed(c)) => {
                    closed = Some(c.code);
                    break;
                }
                Ok(OwnerMsg::Moving(m)) => {
                    if !self.on_moving(m.to, generation) {
                        return;
                    }
                }
                Ok(msg) => {
                    if !self.on_owner(msg, arrived, generation, &mut scratch) {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(room = %self.room, error = %e, "room stream broke");
                    break;
                }
            }
        }
        {
            let mut inner = self.inner.lock();
            if inner.generation != generation || self.over.load(Ordering::Acquire) {
                return;
            }
            inner.tx = None;
            // Questions asked on this stream get no answer now.
            self.calls.fail_all();
            if inner.members.is_empty() {
                drop(inner);
                self.end();
                return;
            }
            inner.failing_over = true;
        }
        if closed == Some(ErrorCode::RoomFailed.as_u16()) {
            self.fail_all();
            return;
        }
        tracing::warn!(room = %self.room, "room stream to its owner ended: failing over");
        self.failover().await;
    }

    /// One message of the stream of `generation`; false (and nothing done)
    /// once that stream was given up on (its owner declared dead), even if
    /// frames still trickle in.
    fn on_owner(
        &self,
        msg: OwnerMsg,
        arrived: Instant,
        generation: u64,
        scratch: &mut ticks::TickScratch,
    ) -> bool {
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            return false;
        }
        match msg {
            OwnerMsg::Joined(j) => {
                let Some(member) = inner.members.get_mut(&j.session) else {
                    return true;
                };
                member.entity = Some(j.you);
                if let Some(waiting) = member.waiting.take() {
                    let _ = waiting.send(Ok(JoinOk {
                        entity: j.you,
                        resumed: false,
                    }));
                }
                if std::mem::take(&mut member.moved) {
                    let notice = ServerMsg::Notice(Notice::new(
                        NoticeCode::RoomMoved,
                        format!("{} moved to another server", self.room.map()),
                    ));
                    let _ = member
                        .link
                        .out
                        .push_room_reliable(member.link.epoch, Bytes::from(encode_server(&notice)));
                }
            }
            OwnerMsg::JoinRefused(r) => {
                let Some(mut member) = inner.members.remove(&r.session) else {
                    return true;
                };
                let error = match ErrorCode::from_u16(r.code) {
                    Some(ErrorCode::RoomFull) => JoinError::Full,
                    _ => JoinError::Refused(r.code),
                };
                match member.waiting.take() {
                    Some(waiting) => {
                        let _ = waiting.send(Err(error));
                    }
                    // A re-join after a failover was refused.
                    None => member.link.events.do_send(RoomEvent::Failed {
                        room: self.room.clone(),
                    }),
                }
            }
            OwnerMsg::Reliable(r) => {
                if inner.implied {
                    ticks::observe(&mut inner, r.session, &r.frame);
                }
                if let Some(member) = inner.members.get(&r.session) {
                    let _ = member
                        .link
                        .out
                        .push_room_reliable(member.link.epoch, r.frame);
                }
            }
            OwnerMsg::Fanout(f) => {
                for session in &f.sessions {
                    if let Some(member) = inner.members.get(session) {
                        let _ = member
                            .link
                            .out
                            .push_room_reliable(member.link.epoch, f.frame.clone());
                    }
                }
            }
            OwnerMsg::Tick(tick) => {
                inner.phase.observe(arrived, tick.tick);
                // As a local room's tick: at most this many immediate
                // writes (see `outbound::budget`).
                let _budget = crate::outbound::immediate_budget(self.immediate_writes);
                ticks::on_tick(&mut inner, &tick, scratch);
            }
            OwnerMsg::Closed(_) | OwnerMsg::Moving(_) => {}
            OwnerMsg::TargetIs(answer) => self.calls.answer(answer),
        }
        true
    }

    /// Once per tick of the map: every member's inputs in one batch.
    ///
    /// The batch goes `lead` before the owner's next tick, timed from when
    /// its recent tick messages came (a tick message leaves the owner right
    /// after its tick; the least-delayed of them gives the owner's phase,
    /// see `phase.rs`), so the inputs are applied on that tick rather than
    /// waiting for a pump out of phase with it. The inputs that come after
    /// it go in a second batch `late_lead` before the same tick: without
    /// it every remote move would wait `lead` longer than a local one to be
    /// applied (the first batch covers the tunnel's delays with room to
    /// spare; should the second miss the tick, its inputs are applied on
    /// the next one, as they would have been without it). With no tick
    /// message lately (nobody in view moved), the pump keeps the plain
    /// period, one batch each.
    async fn pump_inputs(self: Arc<Self>, generation: u64, timing: PumpTiming) {
        let PumpTiming { period, lead } = timing;
        let lead = lead.min(period / 2);
        let mut pending = Vec::new();
        let mut last_send = Instant::now();
        // The second batch: when, and the owner's tick it aims at.
        let mut late: Option<(Instant, u64)> = None;
        loop {
            let (next, second) = match late.take() {
                Some((at, tick)) => (at, Some(tick)),
                None => {
                    let (last_tick, late_lead) = {
                        let inner = self.inner.lock();
                        let last = inner.phase.latest(period).zip(inner.phase.latest_number());
                        (last, inner.late.lead())
                    };
                    let (next, from_tick) = next_send(
                        Instant::now(),
                        last_send,
                        last_tick.map(|(at, _)| at),
                        period,
                        lead,
                    );
                    late = second_send(next, from_tick, lead, late_lead).zip(
                        last_tick.map(|(at, tick)| tick + ticks_between(at, next + lead, period)),
                    );
                    (next, None)
                }
            };
            tokio::time::sleep_until(next.into()).await;
            if second.is_none() {
                // The quarter-period guard of `next_send` counts from a
                // tick's first batch.
                last_send = Instant::now();
            }
            let (tx, batch) = {
                let mut inner = self.inner.lock();
                if inner.generation != generation || self.over.load(Ordering::Acquire) {
                    return;
                }
                let Some(tx) = inner.tx.clone() else {
                    return;
                };
                if inner.held {
                    continue;
                }
                let mut batch = Vec::new();
                for (&session, member) in &inner.members {
                    // A slow client shed updates and has drained: the
                    // owner sends it a full view.
                    if member.link.out.take_resync() {
                        let _ = tx.send_msg(&EdgeMsg::Resync(Member { session }));
                    }
                    member.link.inputs.drain_into(&mut pending);
                    batch.extend(pending.drain(..).map(|(seq, dx, dy)| Input {
                        session,
                        seq,
                        dx,
                        dy,
                    }));
                }
                if let Some(tick) = second {
                    inner.late.sent(tick, &batch);
                }
                (tx, batch)
            };
            self.record_sent(&batch);
            if !batch.is_empty() && tx.send_msg(&EdgeMsg::Inputs(InputBatch { batch })).is_err() {
                return;
            }
        }
    }
}

/// When the second batch of the tick whose first goes at `first` is sent:
/// `late_lead` before that tick, when the first was timed from the
/// owner's ticks (`from_tick`) and `late_lead` is set and below `lead`.
fn second_send(
    first: Instant,
    from_tick: bool,
    lead: Duration,
    late_lead: Duration,
) -> Option<Instant> {
    (from_tick && !late_lead.is_zero() && late_lead < lead).then(|| first + (lead - late_lead))
}

/// How an edge's input pump keeps time with the owner's ticks. The
/// second batch's lead is the link's own (`late.rs`).
#[derive(Debug, Clone, Copy)]
struct PumpTiming {
    /// The map's tick period.
    period: Duration,
    /// `cluster.input_lead_ms`.
    lead: Duration,
}

/// How many ticks after the one at `from` the tick at `to` is (`to` a
/// whole number of periods later, as `next_send` aims).
fn ticks_between(from: Instant, to: Instant, period: Duration) -> u64 {
    let periods = to.saturating_duration_since(from).as_secs_f64() / period.as_secs_f64();
    periods.round() as u64
}

/// When the input pump sends next, and whether that was timed from the
/// owner's ticks: `lead` before the owner's next tick, reckoned from its
/// latest tick (`last_tick`, as [`phase::TickPhase::latest`] gives it)
/// when that is recent (within 4 periods), else one `period` after the
/// last send. Never sooner than a
/// quarter period after the last send, so a late tick message cannot make
/// the pump spin.
fn next_send(
    now: Instant,
    last_send: Instant,
    last_tick: Option<Instant>,
    period: Duration,
    lead: Duration,
) -> (Instant, bool) {
    let earliest = last_send + period / 4;
    let Some(tick) = last_tick.filter(|t| now.saturating_duration_since(*t) < period * 4) else {
        return ((last_send + period).max(now), false);
    };
    // The owner's next tick after now, then `lead` before it.
    let mut aim = tick + period - lead;
    while aim < earliest.max(now) {
        aim += period;
    }
    (aim, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(50);
    const LEAD: Duration = Duration::from_millis(10);

    #[test]
    fn the_pump_aims_lead_before_the_owners_next_tick() {
        let t0 = Instant::now();
        // A tick message came at t0: the next send is at t0 + 40 ms, then
        // every period after.
        let now = t0 + Duration::from_millis(5);
        let last = t0 - P;
        assert_eq!(
            next_send(now, last, Some(t0), P, LEAD),
            (t0 + P - LEAD, true)
        );
        let now = t0 + Duration::from_millis(41);
        let last = t0 + P - LEAD;
        assert_eq!(
            next_send(now, last, Some(t0), P, LEAD),
            (t0 + 2 * P - LEAD, true)
        );
    }

    #[test]
    fn the_second_batch_goes_late_lead_before_the_same_tick_when_timed_from_ticks() {
        let t0 = Instant::now();
        let late = Duration::from_millis(4);
        // First batch at t0 = tick - LEAD: the second at tick - 4 ms.
        assert_eq!(second_send(t0, true, LEAD, late), Some(t0 + LEAD - late));
        // Not timed from the owner's ticks, turned off, or not below the
        // lead: one batch.
        assert_eq!(second_send(t0, false, LEAD, late), None);
        assert_eq!(second_send(t0, true, LEAD, Duration::ZERO), None);
        assert_eq!(second_send(t0, true, LEAD, LEAD), None);
    }

    #[test]
    fn the_second_batch_knows_which_tick_it_aims_at() {
        let t0 = Instant::now();
        // The latest tick message read tick 40 at t0; the pump's next
        // batch aims at the tick two periods on.
        let (first, from_tick) = next_send(t0 + P + P / 2, t0, Some(t0), P, LEAD);
        assert!(from_tick);
        assert_eq!(first, t0 + P * 2 - LEAD);
        assert_eq!(40 + ticks_between(t0, first + LEAD, P), 42);
        // A reading a little off a whole period rounds to it.
        let off = Duration::from_micros(300);
        assert_eq!(ticks_between(t0, t0 + P * 3 - off, P), 3);
        assert_eq!(ticks_between(t0, t0, P), 0);
    }

    #[test]
    fn without_a_recent_tick_the_pump_keeps_its_period_and_never_spins() {
        let t0 = Instant::now();
        // No tick message, or an old one: one period after the last send.
        assert_eq!(next_send(t0, t0, None, P, LEAD), (t0 + P, false));
        let old = t0;
        let now = t0 + 5 * P;
        assert_eq!(next_send(now, now, Some(old), P, LEAD), (now + P, false));
        // A tick message right after a send does not make the pump send
        // again within a quarter period.
        let sent = t0 + Duration::from_millis(40);
        let tick = t0 + Duration::from_millis(1);
        let next = next_send(
            sent,
            sent,
            Some(tick - P + Duration::from_millis(2)),
            P,
            LEAD,
        )
        .0;
        assert!(next >= sent + P / 4, "{:?}", next - sent);
    }
}
