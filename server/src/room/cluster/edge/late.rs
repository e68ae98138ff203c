//! How long before the owner's tick the second input batch goes: found
//! by watching whether the batches make their tick.
//!
//! The second batch carries what came after the first one; it goes
//! `late lead` before the owner's tick, as the edge reckons it
//! (`phase.rs`). Every input that comes after it waits a whole tick, so
//! the shorter the lead, the sooner a remote move is seen; but a batch
//! that reaches the owner after its tick is applied a tick late. What a
//! lead must cover (the tunnel, the owner's reading, the timer's rounding
//! to a millisecond) depends on the network and the load, so a fixed
//! setting is either wasteful or too short. The lead is therefore
//! adjusted, additive-increase style in reverse: each batch is checked
//! against the tick it aimed at (a member's entity shows the `seq` of its
//! last applied input in every tick that applied one), and
//!
//! - a batch that missed its tick raises the lead by [`RAISE`] at once;
//! - [`STEADY`] batches in a row that made it lower it by [`LOWER`];
//!
//! always within `[min, max]` (`cluster.input_late_lead_min_ms` and
//! `cluster.input_late_lead_ms`). A miss costs its inputs one tick, so the
//! lead spends most of its time a step or two above the shortest that
//! works, and misses stay a small share of the batches.

use std::time::Duration;

use protocol::peer::Input;

use crate::ids::SessionId;

/// How much a missed tick raises the lead.
pub(super) const RAISE: Duration = Duration::from_micros(1_000);
/// How much a steady run of batches lowers it.
pub(super) const LOWER: Duration = Duration::from_micros(250);
/// Batches in a row that made their tick before the lead is lowered.
pub(super) const STEADY: u32 = 20;

/// What became of a batch, once its tick (or a later one) came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Every input checked was applied on the tick the batch aimed at.
    Made,
    /// At least one was not.
    Missed,
}

/// The adaptive late lead of one edge link.
#[derive(Debug)]
pub(super) struct LateLead {
    now: Duration,
    min: Duration,
    max: Duration,
    made_in_a_row: u32,
    /// The tick the batch on its way aims at, if one is.
    aimed: Option<u64>,
    /// That batch's members and the last `seq` it carried for each (kept
    /// from batch to batch: no allocation once grown).
    inputs: Vec<(SessionId, u32)>,
}

impl LateLead {
    /// Starts at `max`, the cautious end. With `min == max` the lead is
    /// fixed.
    pub(super) fn new(min: Duration, max: Duration) -> LateLead {
        LateLead {
            now: max,
            min: min.min(max),
            max,
            made_in_a_row: 0,
            aimed: None,
            inputs: Vec::new(),
        }
    }

    /// The lead to use for the next second batch.
    pub(super) fn lead(&self) -> Duration {
        self.now
    }

    /// A second batch was sent aiming at the owner's `tick`. A batch
    /// still unresolved is forgotten (its tick never showed).
    pub(super) fn sent(&mut self, tick: u64, batch: &[Input]) {
        self.aimed = None;
        if self.min == self.max || batch.is_empty() {
            return;
        }
        let inputs = &mut self.inputs;
        inputs.clear();
        // The pump lays a member's inputs out together: one look at the
        // last entry, not a search (a member seen twice is checked twice).
        for input in batch {
            match inputs.last_mut() {
                Some((s, seq)) if *s == input.session => *seq = (*seq).max(input.seq),
                _ => inputs.push((input.session, input.seq)),
            }
        }
        self.aimed = Some(tick);
    }

    /// The owner's `tick` came; `applied(session)` is the `seq` of that
    /// member's last input it applied, if the tick applied one to it
    /// (`None` also for a member gone or not seated). Resolves the batch
    /// that aimed at this tick, if any, and adjusts the lead.
    pub(super) fn on_tick(
        &mut self,
        tick: u64,
        applied: impl Fn(SessionId) -> Option<u32>,
    ) -> Option<Outcome> {
        let aimed = self.aimed?;
        if tick < aimed {
            return None;
        }
        self.aimed = None;
        if tick > aimed {
            // Its tick sent nothing here, was skipped, or the count moved
            // on (a new owner): nothing learnt.
            return None;
        }
        let made = self
            .inputs
            .iter()
            .all(|&(session, seq)| applied(session).is_some_and(|a| a >= seq));
        Some(self.judge(made))
    }

    fn judge(&mut self, made: bool) -> Outcome {
        if made {
            self.made_in_a_row += 1;
            if self.made_in_a_row >= STEADY {
                self.made_in_a_row = 0;
                self.now = self.now.saturating_sub(LOWER).max(self.min);
            }
            Outcome::Made
        } else {
            self.made_in_a_row = 0;
            self.now = (self.now + RAISE).min(self.max);
            Outcome::Missed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn input(session: SessionId, seq: u32) -> Input {
        Input {
            session,
            seq,
            dx: 1.0,
            dy: 0.0,
        }
    }

    /// Send a batch of two members aiming at `tick` and have the tick
    /// apply up to `applied` for both.
    fn round(late: &mut LateLead, tick: u64, applied: u32) -> Option<Outcome> {
        late.sent(tick, &[input(1, 5), input(1, 6), input(2, 9)]);
        late.on_tick(tick, |s| Some(if s == 1 { applied } else { applied + 3 }))
    }

    #[test]
    fn steady_batches_lower_the_lead_to_its_floor_and_no_further() {
        let mut late = LateLead::new(ms(1), ms(3));
        assert_eq!(late.lead(), ms(3));
        for tick in 0..u64::from(STEADY) {
            assert_eq!(round(&mut late, tick, 6), Some(Outcome::Made));
        }
        assert_eq!(late.lead(), ms(3) - LOWER);
        for tick in 100..1_000 {
            round(&mut late, tick, 6);
        }
        assert_eq!(late.lead(), ms(1));
    }

    #[test]
    fn a_missed_tick_raises_the_lead_up_to_its_ceiling() {
        let mut late = LateLead::new(ms(1), ms(3));
        for tick in 0..200 {
            round(&mut late, tick, 6);
        }
        assert_eq!(late.lead(), ms(1));
        // Member 1's seq 6 was not applied on its tick.
        assert_eq!(round(&mut late, 500, 5), Some(Outcome::Missed));
        assert_eq!(late.lead(), ms(2));
        round(&mut late, 501, 5);
        round(&mut late, 502, 5);
        assert_eq!(late.lead(), ms(3));
        // A miss also restarts the steady count.
        for tick in 503..503 + u64::from(STEADY) - 1 {
            round(&mut late, tick, 6);
        }
        assert_eq!(late.lead(), ms(3));
    }

    #[test]
    fn a_member_the_tick_did_not_move_is_a_miss() {
        let mut late = LateLead::new(ms(1), ms(3));
        late.sent(7, &[input(1, 5), input(2, 9)]);
        let outcome = late.on_tick(7, |s| (s == 1).then_some(5));
        assert_eq!(outcome, Some(Outcome::Missed));
    }

    #[test]
    fn only_the_aimed_tick_judges_a_batch() {
        let mut late = LateLead::new(ms(1), ms(3));
        late.sent(10, &[input(1, 5)]);
        // An earlier tick's message: not yet.
        assert_eq!(late.on_tick(9, |_| None), None);
        // Tick 10 sent nothing here; 11 came: nothing learnt, batch gone.
        assert_eq!(late.on_tick(11, |_| Some(5)), None);
        assert_eq!(late.on_tick(10, |_| Some(5)), None);
        assert_eq!(late.lead(), ms(3));
    }

    #[test]
    fn a_fixed_lead_never_moves() {
        let mut late = LateLead::new(ms(3), ms(3));
        for tick in 0..100 {
            assert_eq!(round(&mut late, tick, 6), None);
        }
        assert_eq!(round(&mut late, 100, 0), None);
        assert_eq!(late.lead(), ms(3));
    }
}
