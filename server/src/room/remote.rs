//! Members whose socket is on another shard (cluster mode): the room's end
//! of a `/tessera/room/1` stream ([`EdgeSink`]) and how a member names it
//! ([`RemoteSeat`]).
//!
//! A remote member is a member like any other (a seat, an entity, an input
//! queue), except that its frames do not go into an outbound queue here:
//! reliable frames go to its edge as `reliable`, and each tick every edge
//! gets **one** `tick` built with [`TickBuilder`] (entries once, equal
//! views shared), which the edge lays out into the same bytes a local
//! member gets. The stream's task (`room::cluster::owner`) feeds the
//! member's inputs and turns leave / disconnect / chat into the room's
//! usual messages.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use protocol::peer::{Closed, Fanout, OwnerMsg, Reliable, Tick, TickBuilder};

use crate::cluster::tunnel::{StatePush, StreamSender};

/// The key of a room stream's `tick` state frames: one room per stream, so
/// one key (a newer tick replaces a queued one).
const TICK_KEY: u64 = 0;

/// The owner's end of one edge's room stream, shared by that edge's
/// members in the room.
pub struct EdgeSink {
    /// Unique on this shard: tells edges apart within a tick.
    pub id: u64,
    /// The edge shard's id (for logs and the admin API).
    pub peer: String,
    tx: StreamSender,
    /// A tick was replaced or dropped on the way out: its `entered` and
    /// `left` are lost, so the next tick gives this edge full views.
    full_due: AtomicBool,
    /// The edge computes `moved` itself (its joins said
    /// `implied_moved`): its ticks leave `moved` out.
    implied: AtomicBool,
}

impl EdgeSink {
    pub fn new(id: u64, peer: String, tx: StreamSender) -> EdgeSink {
        EdgeSink {
            id,
            peer,
            tx,
            full_due: AtomicBool::new(false),
            implied: AtomicBool::new(false),
        }
    }

    /// One of `session`'s reliable frames. False when the stream is gone
    /// (or overflowed: it is reset then, and the edge fails over).
    pub fn reliable(&self, session: u64, frame: Bytes) -> bool {
        self.tx
            .send_msg(&OwnerMsg::Reliable(Reliable { session, frame }))
            .is_ok()
    }

    /// One reliable frame for several of the edge's members: it crosses
    /// the tunnel once.
    pub fn fanout(&self, sessions: Vec<u64>, frame: Bytes) -> bool {
        self.tx
            .send_msg(&OwnerMsg::Fanout(Fanout { sessions, frame }))
            .is_ok()
    }

    /// This tick's views for the edge, as a state frame.
    pub fn tick(&self, tick: Tick) {
        let payload = protocol::peer::encode_payload(&OwnerMsg::Tick(tick));
        match self.tx.send_state(TICK_KEY, Bytes::from(payload)) {
            Ok(StatePush::Queued) => {}
            Ok(StatePush::Replaced | StatePush::Dropped) => {
                self.full_due.store(true, Ordering::Relaxed)
            }
            Err(_) => {}
        }
    }

    /// The edge announced `implied_moved`. An edge says it in every join,
    /// so it is known before the edge's first member is seated; were it
    /// to come later, `had_members` gives everyone a full view first, from
    /// which the edge's tracking starts.
    pub fn set_implied(&self, had_members: bool) {
        if !self.implied.swap(true, Ordering::Relaxed) && had_members {
            self.want_full();
        }
    }

    pub fn implied(&self) -> bool {
        self.implied.load(Ordering::Relaxed)
    }

    /// The edge's members get full views at the next tick (a tick was
    /// lost, or members came back after the room moved).
    pub fn want_full(&self) {
        self.full_due.store(true, Ordering::Relaxed);
    }

    /// Whether this edge is owed full views; the flag is cleared.
    pub fn take_full(&self) -> bool {
        self.full_due.swap(false, Ordering::Relaxed)
    }

    /// Tell the edge the room is over for it (`code` 0: stopped or moved,
    /// the edge looks for the room again; 3005: failed) and finish the
    /// stream.
    pub fn close(&self, code: u16, reason: &str) {
        let _ = self.tx.send_msg(&OwnerMsg::Closed(Closed {
            code,
            reason: reason.to_string(),
        }));
        self.tx.close();
    }

    pub fn send(&self, msg: &OwnerMsg) -> bool {
        self.tx.send_msg(msg).is_ok()
    }
}

/// Where a remote member's frames go: its edge, and its session there.
#[derive(Clone)]
pub struct RemoteSeat {
    pub edge: Arc<EdgeSink>,
    /// The member's session id on the edge shard (ids collide across
    /// shards: the room knows the member by an owner-local one).
    pub session: u64,
}

/// The ticks of one room tick, one builder per edge with members in view.
#[derive(Default)]
pub(super) struct EdgeTicks {
    pub(super) builders: Vec<(Arc<EdgeSink>, TickBuilder)>,
    /// Builders of earlier ticks, reused: their tables keep their room.
    /// No more of them than edges had ticks in one tick (at most one per
    /// other shard).
    spare: Vec<TickBuilder>,
    /// Edges asked this tick whether they are owed full views (id,
    /// answer): asked once per tick, since asking clears the flag.
    full: Vec<(u64, bool)>,
}

impl EdgeTicks {
    pub(super) fn builder(
        &mut self,
        edge: &Arc<EdgeSink>,
        room: &str,
        tick: u64,
    ) -> &mut TickBuilder {
        let i = match self.builders.iter().position(|(e, _)| e.id == edge.id) {
            Some(i) => i,
            None => {
                let builder = match self.spare.pop() {
                    Some(mut builder) => {
                        builder.reset(room, tick);
                        builder
                    }
                    None => TickBuilder::new(room, tick),
                };
                let builder = if edge.implied() {
                    builder.implied()
                } else {
                    builder
                };
                self.builders.push((edge.clone(), builder));
                self.builders.len() - 1
            }
        };
        &mut self.builders[i].1
    }

    /// Whether `edge` gets full views this tick.
    pub(super) fn is_full(&mut self, edge: &EdgeSink) -> bool {
        if let Some(&(_, full)) = self.full.iter().find(|(id, _)| *id == edge.id) {
            return full;
        }
        let full = edge.take_full();
        self.full.push((edge.id, full));
        full
    }

    /// Send every non-empty tick to its edge.
    pub(super) fn send(&mut self) -> u64 {
        let mut sent = 0;
        for (edge, mut builder) in self.builders.drain(..) {
            if !builder.is_empty() {
                edge.tick(builder.take());
                sent += 1;
            }
            self.spare.push(builder);
        }
        self.full.clear();
        sent
    }
}

/// This shard lost the room's lease (another shard holds it now): stop at
/// once, without saving. Local members get the room-failed path; every
/// edge is told the room closed here (code 0), so it looks for the new
/// owner.
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct LeaseLost;

impl actix::Handler<LeaseLost> for super::Room {
    type Result = ();

    fn handle(&mut self, _: LeaseLost, ctx: &mut actix::Context<Self>) {
        use actix::ActorContext;
        let mut edges: Vec<Arc<EdgeSink>> = Vec::new();
        for member in self.members.values() {
            match &member.state.link.remote {
                Some(seat) => {
                    if !edges.iter().any(|e| e.id == seat.edge.id) {
                        edges.push(seat.edge.clone());
                    }
                }
                None => member.state.link.events.do_send(super::RoomEvent::Failed {
                    room: self.id.clone(),
                }),
            }
        }
        for edge in edges {
            edge.close(0, "the room's lease moved to another shard");
        }
        // Nothing runs after this, and `stopped` saves nothing: another
        // shard owns the room's state now.
        self.crashed = true;
        ctx.stop();
    }
}

impl super::Room {
    /// Cluster mode: run under lease epoch `epoch` (0: not leased, a
    /// single shard): every store write carries it.
    pub(super) fn with_owner_epoch(mut self, epoch: u64) -> super::Room {
        if epoch > 0 {
            self.ground.set_lease_epoch(epoch);
        }
        self
    }
}
