//! What sessions, the admin API and the supervisor send a room, and what
//! a room tells a session outside the outbound queue. Moves are not
//! messages: they go through the member's shared [`Inputs`] queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use protocol::msg::EntityId;

use crate::auth::Identity;
use crate::ids::{RoomId, SessionId};
use crate::metrics as m;
use crate::outbound::Outbound;

use super::remote::RemoteSeat;
use bytes::Bytes;

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
/// mailbox slot and no wake-up, only a short lock per tick, and no lock
/// in a tick that finds the queue empty (a player moving at 10 Hz in a
/// room ticking at 20 Hz: every other tick).
pub struct Inputs {
    queue: parking_lot::Mutex<Vec<(u32, f32, f32)>>,
    /// Set, under the lock, while `queue` holds anything: read without
    /// the lock by the tick. An intent pushed while the tick reads it
    /// unset is applied at the next tick, as if it had come a moment
    /// later.
    queued: AtomicBool,
    /// Pending inputs kept between ticks (`rooms.input_queue`); older ones
    /// are dropped. The session's rate limit keeps a well-behaved client
    /// far below it.
    cap: usize,
}

impl Inputs {
    /// An empty queue keeping at most `cap` (at least 1) unapplied intents.
    pub fn new(cap: usize) -> Inputs {
        Inputs {
            queue: parking_lot::Mutex::new(Vec::new()),
            queued: AtomicBool::new(false),
            cap: cap.max(1),
        }
    }

    /// Queue a validated intent. Past `cap` unapplied
    /// intents the oldest is dropped (and counted): a room that fell behind
    /// applies the latest ones.
    pub fn push(&self, seq: u32, dx: f32, dy: f32) {
        let mut queue = self.queue.lock();
        if queue.len() >= self.cap {
            queue.remove(0);
            metrics::counter!(m::ROOM_INPUTS_DROPPED, "reason" => m::DROPPED_INPUT_QUEUE_FULL)
                .increment(1);
        }
        queue.push((seq, dx, dy));
        self.queued.store(true, Ordering::Relaxed);
    }

    pub(crate) fn clear(&self) {
        let mut queue = self.queue.lock();
        queue.clear();
        self.queued.store(false, Ordering::Relaxed);
    }

    /// How many wait unapplied.
    pub(crate) fn len(&self) -> usize {
        self.queue.lock().len()
    }

    /// Move every queued intent to the end of `pending`.
    pub(crate) fn drain_into(&self, pending: &mut Vec<(u32, f32, f32)>) {
        // Relaxed is enough: the intents themselves are read under the
        // lock, which orders them; the flag only saves taking it.
        if !self.queued.load(Ordering::Relaxed) {
            return;
        }
        let mut queue = self.queue.lock();
        pending.append(&mut queue);
        self.queued.store(false, Ordering::Relaxed);
    }
}

/// How a room reaches a member's session, and the session its member:
/// carried by a join and kept by the member (so it survives a restart).
#[derive(Clone)]
pub struct MemberLink {
    pub session: SessionId,
    pub identity: Arc<Identity>,
    /// Where the room writes the member's frames.
    pub out: Arc<Outbound>,
    /// Where the session puts this member's moves.
    pub inputs: Arc<Inputs>,
    /// The membership epoch from [`Outbound::begin_room`].
    pub epoch: u64,
    /// What the room tells the session outside `out`.
    pub events: Recipient<RoomEvent>,
    /// Cluster mode: the member's socket is on another shard. Its frames
    /// go to that edge (`out` is a queue nobody reads, kept for the
    /// membership epoch), never into `out`.
    pub remote: Option<RemoteSeat>,
}

impl MemberLink {
    /// Queue a reliable frame for the member: into its outbound queue, or
    /// to its edge. False when it was not queued.
    pub fn push_reliable(&self, frame: Bytes) -> bool {
        match &self.remote {
            Some(seat) => seat.edge.reliable(seat.session, frame),
            None => self.out.push_room_reliable(self.epoch, frame).is_ok(),
        }
    }
}

/// Join the room. The room itself sends `joined` through `link.out`, ahead
/// of any update. With `resume`, the seat of that earlier session is taken
/// over if it is still held.
pub struct JoinRoom {
    pub link: MemberLink,
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
    /// Cluster mode: refused with this client error code (the directory
    /// did not answer: 5005; the room's owner refused the join with it).
    Refused(u16),
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

/// The member with entity `entity`, if there is one: the target of a
/// `give`.
#[derive(Message)]
#[rtype(result = "Option<GiveTarget>")]
pub struct WhoIs {
    pub entity: EntityId,
}

/// Who a `give` goes to, and where its `inventory` push goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GiveTarget {
    pub player: String,
    /// The shard holding the target's socket, when it is not the shard
    /// that asked (a remote member; in cluster mode only).
    pub shard: Option<String>,
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
    "migrate_out",
    "migrate_in",
    "migrate_hold",
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
pub struct Handover(pub super::RestartReason);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_input_queue_drops_the_oldest_and_keeps_its_configured_cap() {
        let inputs = Inputs::new(3);
        for seq in 1..=5 {
            inputs.push(seq, 1.0, 0.0);
        }
        let mut pending = Vec::new();
        inputs.drain_into(&mut pending);
        let seqs: Vec<u32> = pending.iter().map(|(seq, _, _)| *seq).collect();
        assert_eq!(seqs, [3, 4, 5], "the latest intents are kept");
        inputs.drain_into(&mut pending);
        assert_eq!(pending.len(), 3, "drained once");
        // A cap of 0 still keeps the latest intent.
        let one = Inputs::new(0);
        one.push(1, 0.0, 1.0);
        one.push(2, 0.0, 1.0);
        let mut last = Vec::new();
        one.drain_into(&mut last);
        assert_eq!(last, [(2, 0.0, 1.0)]);
    }

    #[test]
    fn an_emptied_queue_is_passed_over_until_the_next_intent() {
        let inputs = Inputs::new(8);
        let mut pending = Vec::new();
        inputs.drain_into(&mut pending);
        assert!(pending.is_empty());
        inputs.push(1, 1.0, 0.0);
        inputs.drain_into(&mut pending);
        inputs.drain_into(&mut pending);
        assert_eq!(pending, [(1, 1.0, 0.0)], "drained once");
        inputs.push(2, 0.0, 1.0);
        inputs.push(3, -1.0, 0.0);
        inputs.drain_into(&mut pending);
        assert_eq!(pending.len(), 3, "the next intents, after the first");
        assert_eq!(pending[2], (3, -1.0, 0.0));
        // Cleared (a disconnect): nothing is left to drain, and the next
        // intent is drained again.
        inputs.push(4, 1.0, 1.0);
        inputs.clear();
        assert_eq!(inputs.len(), 0);
        pending.clear();
        inputs.drain_into(&mut pending);
        assert!(pending.is_empty());
        inputs.push(5, 0.0, -1.0);
        inputs.drain_into(&mut pending);
        assert_eq!(pending, [(5, 0.0, -1.0)]);
    }

    #[test]
    fn intents_pushed_while_the_room_drains_are_all_applied_once() {
        // A session thread pushing while the room drains: every intent
        // arrives exactly once, in order (the flag never hides one for
        // good).
        let inputs = Arc::new(Inputs::new(1 << 20));
        let pusher = {
            let inputs = inputs.clone();
            std::thread::spawn(move || {
                for seq in 1..=20_000 {
                    inputs.push(seq, 1.0, 0.0);
                }
            })
        };
        let mut pending = Vec::new();
        while !pusher.is_finished() {
            inputs.drain_into(&mut pending);
        }
        pusher.join().unwrap();
        inputs.drain_into(&mut pending);
        let seqs: Vec<u32> = pending.iter().map(|(seq, _, _)| *seq).collect();
        assert_eq!(seqs, (1..=20_000).collect::<Vec<u32>>());
    }
}
