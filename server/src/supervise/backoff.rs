//! Exponential backoff, the one every retry loop in the shard uses: the
//! task supervisor between restarts, the persister between store retries,
//! the room's ground between reloads.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with jitter. The `n`th delay (from 0) has the
/// ceiling `min · 2ⁿ`, capped at `max`; [`Backoff::delay`] draws from the
/// upper half of that ceiling, so delays never shrink until the cap is
/// reached and two shards that failed together do not retry in step.
/// [`Backoff::reset`] starts over at `min` (after a healthy run, or a
/// success).
///
/// A caller that counts its own failures (and must not hold a `Backoff`
/// across messages) reads [`Backoff::ceiling`] for the `n`th attempt
/// instead: the same curve, without jitter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// Delays drawn since the last reset.
    attempt: u32,
}

impl Backoff {
    /// A `max` below `min` is taken as `min`.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// `min · 2^attempt` capped at `max`, without jitter; never overflows.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        // 2^31 doublings of any duration past the nanosecond reach a cap
        // that fits in a `Duration`; `saturating_mul` covers the rest.
        self.min
            .saturating_mul(1u32 << attempt.min(31))
            .min(self.max)
    }

    /// The next delay: drawn from `[ceiling/2, ceiling]` of the current
    /// attempt, which then advances.
    pub fn delay(&mut self) -> Duration {
        let ceiling = self.ceiling(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// Start over at `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays drawn since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn delays_double_in_their_upper_half_up_to_the_max() {
        let mut b = Backoff::new(ms(100), ms(1_000));
        let delays: Vec<Duration> = (0..8).map(|_| b.delay()).collect();
        // Ceilings 100, 200, 400, 800, then the 1000 cap: the first four
        // delays never shrink.
        assert!(delays[0] >= ms(50) && delays[0] <= ms(100), "{delays:?}");
        assert!(delays[3] >= ms(400) && delays[3] <= ms(800), "{delays:?}");
        assert!(delays[7] >= ms(500), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= ms(1_000)), "{delays:?}");
        assert!(
            delays.windows(2).take(3).all(|w| w[0] <= w[1]),
            "{delays:?}"
        );
        assert_eq!(b.attempt(), 8);
    }

    #[test]
    fn reset_starts_over_at_the_min() {
        let mut b = Backoff::new(ms(100), ms(1_000));
        for _ in 0..5 {
            b.delay();
        }
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert!(b.delay() <= ms(100));
    }

    #[test]
    fn the_ceiling_is_the_curve_without_jitter() {
        let b = Backoff::new(ms(250), ms(10_000));
        assert_eq!(b.ceiling(0), ms(250));
        assert_eq!(b.ceiling(1), ms(500));
        assert_eq!(b.ceiling(5), ms(8_000));
        assert_eq!(b.ceiling(6), ms(10_000));
        assert_eq!(b.ceiling(u32::MAX), ms(10_000));
    }

    #[test]
    fn extremes_neither_overflow_nor_invert() {
        let mut b = Backoff::new(ms(1), Duration::MAX);
        for _ in 0..200 {
            b.delay();
        }
        assert!(b.ceiling(u32::MAX) >= ms(1 << 31));
        // A max below the min is the min.
        let mut b = Backoff::new(ms(100), ms(10));
        assert_eq!(b.ceiling(3), ms(100));
        assert!(b.delay() >= ms(50));
    }
}
