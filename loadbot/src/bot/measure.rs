//! What a bot measures, and the view of its room the measuring needs: join
//! latency, round trips (`ping`/`pong` on the run's clock), update interval
//! and jitter against the room's tick, and move-to-visible (a move's seq
//! sent, then seen applied in the bot's own entity).
//!
//! Everything here is bounded: a fixed ring of [`MoveRing::CAP`] pending
//! moves per bot and a fixed array of samples per frame, recorded under one
//! lock. Times from the server that make no sense (a `pong` from the future,
//! a position that is not finite) are skipped.

use std::sync::atomic::Ordering::Relaxed;

use protocol::msg::Joined;
use tokio::time::Instant;

use super::Bot;
use crate::fastpath::Own;
use crate::stats::Latency;

/// The bot's view of the room it stands in.
pub(super) struct Room {
    pub(super) you: u32,
    /// The room's tick period in µs (0 when the server said 0 Hz).
    tick_us: u64,
    pub(super) width: f32,
    pub(super) height: f32,
    pub(super) x: f32,
    pub(super) y: f32,
    last_update_us: Option<u64>,
    pub(super) pending: MoveRing,
}

impl Room {
    pub(super) fn from_joined(joined: &Joined) -> Room {
        let own = joined.entities.iter().find(|e| e.id == joined.you);
        let (x, y) = own.map_or((joined.map.width / 2.0, joined.map.height / 2.0), |e| {
            (e.x, e.y)
        });
        Room {
            you: joined.you,
            tick_us: match joined.map.tick_hz {
                0 => 0,
                hz => 1_000_000 / u64::from(hz),
            },
            width: joined.map.width,
            height: joined.map.height,
            x,
            y,
            last_update_us: None,
            pending: MoveRing::default(),
        }
    }
}

/// Latency samples collected while handling one frame, recorded under one
/// lock. Fixed capacity; extra samples are dropped (never more than the ring
/// plus two in practice).
struct Samples {
    items: [(Latency, u64); MoveRing::CAP + 2],
    len: usize,
}

impl Samples {
    fn new() -> Samples {
        Samples {
            items: [(Latency::Rtt, 0); MoveRing::CAP + 2],
            len: 0,
        }
    }

    fn push(&mut self, latency: Latency, micros: u64) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (latency, micros);
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[(Latency, u64)] {
        &self.items[..self.len]
    }
}

/// Moves sent and not yet seen applied: (seq, sent at µs), oldest first.
#[derive(Debug, Default)]
pub(crate) struct MoveRing {
    items: [(u32, u64); MoveRing::CAP],
    start: usize,
    len: usize,
}

impl MoveRing {
    pub(crate) const CAP: usize = 16;

    /// Adds a sent move; returns true when the oldest had to be dropped.
    pub(crate) fn push(&mut self, seq: u32, sent_us: u64) -> bool {
        let overflow = self.len == Self::CAP;
        if overflow {
            self.start = (self.start + 1) % Self::CAP;
            self.len -= 1;
        }
        self.items[(self.start + self.len) % Self::CAP] = (seq, sent_us);
        self.len += 1;
        overflow
    }

    /// The server shows `seq` applied at `now_us`: every pending move with a
    /// seq not above it became visible now. Calls `seen` with each latency.
    pub(crate) fn confirm(&mut self, seq: u32, now_us: u64, mut seen: impl FnMut(u64)) {
        while self.len > 0 {
            let (pending, sent) = self.items[self.start];
            if pending > seq {
                break;
            }
            seen(now_us.saturating_sub(sent));
            self.start = (self.start + 1) % Self::CAP;
            self.len -= 1;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Bot {
    /// In a map: counts the join and its latency (`sent` is when the join
    /// went out, or when the resumed session began waiting for its seat).
    pub(super) fn on_joined(&mut self, sent: Instant) {
        let stats = &self.shared.stats;
        stats.joins_ok.fetch_add(1, Relaxed);
        stats.bots_in_room.fetch_add(1, Relaxed);
        stats.record(Latency::Join, sent.elapsed().as_micros() as u64);
        if !self.ever_joined {
            self.ever_joined = true;
            stats.bots_joined.fetch_add(1, Relaxed);
        }
    }

    /// A `pong` carrying `t`, our own clock echoed back: one round trip.
    pub(super) fn on_pong(&self, t: u64) {
        let now = self.shared.now_us();
        // One from the future is not ours, so it is not a sample.
        if t <= now {
            self.shared.stats.record(Latency::Rtt, now - t);
            self.shard().rtt(now - t);
        }
    }

    /// An `update` for the bot's room: the interval since the last one, its
    /// jitter against the tick, and the bot's own moves now visible.
    pub(super) fn on_update(&mut self, room: &mut Room, own: Option<Own>) {
        let now = self.shared.now_us();
        if room.last_update_us.is_none() {
            self.first_update();
        }
        self.last_update_us = now.max(1);
        let mut samples = Samples::new();
        if let Some(last) = room.last_update_us {
            let gap = now.saturating_sub(last);
            samples.push(Latency::UpdateInterval, gap);
            if room.tick_us > 0 {
                samples.push(Latency::UpdateJitter, gap.abs_diff(room.tick_us));
            }
        }
        room.last_update_us = Some(now);
        if let Some(own) = own {
            if own.x.is_finite() && own.y.is_finite() {
                room.x = own.x;
                room.y = own.y;
            }
            room.pending
                .confirm(own.seq, now, |us| samples.push(Latency::MoveVisible, us));
        }
        self.shared.stats.record_many(samples.as_slice());
        self.shard().record_many(samples.as_slice());
    }

    /// Out of the room: moves still pending there were never seen applied.
    pub(super) fn leave_room(&self, room: Room) {
        let stats = &self.shared.stats;
        stats.bots_in_room.fetch_sub(1, Relaxed);
        stats
            .moves_unconfirmed
            .fetch_add(room.pending.len() as u64, Relaxed);
    }
}

/// The bot's own last applied seq in a `joined` (0 when absent).
pub(super) fn own_seq(joined: &Joined) -> u32 {
    joined
        .entities
        .iter()
        .find(|e| e.id == joined.you)
        .map_or(0, |e| e.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_confirms_in_order_and_drops_the_oldest_when_full() {
        let mut ring = MoveRing::default();
        for seq in 1..=3 {
            assert!(!ring.push(seq, u64::from(seq) * 100));
        }
        let mut seen = Vec::new();
        ring.confirm(2, 1000, |us| seen.push(us));
        assert_eq!(seen, vec![900, 800]);
        assert_eq!(ring.len(), 1);
        ring.confirm(2, 2000, |us| seen.push(us));
        assert_eq!(seen.len(), 2, "seq 3 is not applied yet");
        for seq in 4..=(3 + MoveRing::CAP as u32 - 1) {
            assert!(!ring.push(seq, 0));
        }
        assert!(ring.push(100, 0), "the 17th pending move overflows");
        assert_eq!(ring.len(), MoveRing::CAP);
        let mut n = 0;
        ring.confirm(u32::MAX, 5, |_| n += 1);
        assert_eq!(n, MoveRing::CAP);
        assert_eq!(ring.len(), 0);
    }

    #[test]
    fn samples_never_overflow() {
        let mut s = Samples::new();
        for i in 0..100 {
            s.push(Latency::MoveVisible, i);
        }
        assert_eq!(s.as_slice().len(), MoveRing::CAP + 2);
    }
}
