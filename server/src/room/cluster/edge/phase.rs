//! Where the owner's ticks fall, as seen from the edge.
//!
//! The owner ticks on a fixed schedule (one period after the other, its
//! tick number counting up by one each), and sends its tick message right
//! after each tick. Every message therefore arrives at the tick's instant
//! plus a delay of its own: the owner's tick work, the tunnel, and this
//! shard's reading, which vary from message to message by a millisecond or
//! more on a busy box. An arrival less its tick number's periods is one
//! reading of the owner's phase plus that delay; the least reading of the
//! last [`WINDOW`] messages is the least-delayed one, so the steadiest
//! estimate of when the owner ticks. The input pump aims at it instead of
//! at the latest arrival, so a late tick message does not push the next
//! batch late (past the owner's tick, when the lead is short).
//!
//! A skipped tick on a loaded owner, or a restart of its tick count (a
//! failover, a move), makes older readings too early or too late for a
//! while; a reading from a count going backwards clears the window, and
//! every reading leaves it after [`WINDOW`] messages or [`MAX_AGE`]
//! periods, so the estimate follows within about a second.

use std::time::{Duration, Instant};

/// How many recent tick messages the estimate is taken over.
const WINDOW: usize = 16;

/// Readings older than this many periods are dropped.
const MAX_AGE: u32 = 24;

/// The recent tick messages' arrivals and numbers.
#[derive(Debug, Default)]
pub(super) struct TickPhase {
    /// `(arrival, tick)`, oldest first; at most [`WINDOW`].
    seen: std::collections::VecDeque<(Instant, u64)>,
}

impl TickPhase {
    /// The tick message of `tick` arrived at `at`.
    pub(super) fn observe(&mut self, at: Instant, tick: u64) {
        if self.seen.back().is_some_and(|&(_, last)| tick <= last) {
            // The count went back (a new owner, a restored room) or a
            // message repeated: readings of the old count mean nothing.
            self.seen.clear();
        }
        if self.seen.len() == WINDOW {
            self.seen.pop_front();
        }
        self.seen.push_back((at, tick));
    }

    /// When the latest tick's message came, or would have with the least
    /// delay seen lately: never later than its real arrival. `None` with
    /// no tick message yet.
    pub(super) fn latest(&self, period: Duration) -> Option<Instant> {
        let &(last_at, last) = self.seen.back()?;
        let oldest = last_at.checked_sub(period * MAX_AGE);
        let mut best = last_at;
        for &(at, tick) in self.seen.iter().rev().skip(1) {
            if oldest.is_some_and(|o| at < o) {
                break;
            }
            let Ok(behind) = u32::try_from(last - tick) else {
                break;
            };
            best = best.min(at + period * behind);
        }
        Some(best)
    }

    /// The latest tick message's tick number.
    pub(super) fn latest_number(&self) -> Option<u64> {
        self.seen.back().map(|&(_, tick)| tick)
    }

    pub(super) fn clear(&mut self) {
        self.seen.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_millis(50);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_least_delayed_message_sets_the_phase() {
        let t0 = Instant::now();
        let mut phase = TickPhase::default();
        assert_eq!(phase.latest(P), None);
        // Ticks at t0 + k periods, their messages 1 to 4 ms late.
        for (k, delay) in [3, 1, 4, 2, 3].into_iter().enumerate() {
            phase.observe(t0 + P * k as u32 + ms(delay), 10 + k as u64);
        }
        // Tick 14 is at t0 + 4 periods; the least delay seen was 1 ms.
        assert_eq!(phase.latest(P), Some(t0 + P * 4 + ms(1)));
    }

    #[test]
    fn gaps_in_the_count_are_counted_in_periods() {
        let t0 = Instant::now();
        let mut phase = TickPhase::default();
        // Ticks with nothing to send send no message: 20, then 23.
        phase.observe(t0 + ms(1), 20);
        phase.observe(t0 + P * 3 + ms(5), 23);
        assert_eq!(phase.latest(P), Some(t0 + P * 3 + ms(1)));
    }

    #[test]
    fn a_count_going_back_starts_afresh() {
        let t0 = Instant::now();
        let mut phase = TickPhase::default();
        phase.observe(t0, 500);
        phase.observe(t0 + P, 501);
        // A new owner counts from its own number, on its own schedule.
        let t1 = t0 + P * 2 + ms(17);
        phase.observe(t1, 3);
        assert_eq!(phase.latest(P), Some(t1));
        phase.observe(t1 + P + ms(2), 4);
        assert_eq!(phase.latest(P), Some(t1 + P));
        phase.clear();
        assert_eq!(phase.latest(P), None);
    }

    #[test]
    fn old_readings_leave_the_window() {
        let t0 = Instant::now();
        let mut phase = TickPhase::default();
        // An early reading long ago, then steady 3 ms delays.
        phase.observe(t0, 0);
        let late = t0 + P * (MAX_AGE + 10) + ms(3);
        phase.observe(late, u64::from(MAX_AGE) + 10);
        assert_eq!(phase.latest(P), Some(late), "too old to count");
        // More than WINDOW messages: the first ones are forgotten.
        let mut phase = TickPhase::default();
        phase.observe(t0, 0);
        for k in 1..=WINDOW as u32 {
            phase.observe(t0 + P * k + ms(3), u64::from(k));
        }
        let last = WINDOW as u32;
        assert_eq!(phase.latest(P), Some(t0 + P * last + ms(3)));
    }
}
