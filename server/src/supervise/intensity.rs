//! Restart intensity (OTP's MaxR in MaxT), the one both supervisors use:
//! the room supervisor per room, the task supervisor per child.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Restarts within the last `window`; more than `max_restarts` of them
/// means the child is broken rather than unlucky, and its supervisor gives
/// it up instead of restarting it again.
#[derive(Debug, Clone)]
pub struct Intensity {
    max_restarts: usize,
    window: Duration,
    /// When each restart still in the window happened, oldest first.
    recent: VecDeque<Instant>,
}

/// A restart refused: it would have been one too many within the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{restarts} restarts within {window:?} (at most {max_restarts})")]
pub struct TooManyRestarts {
    /// Restarts in the window, the refused one included.
    pub restarts: usize,
    pub max_restarts: usize,
    pub window: Duration,
}

impl Intensity {
    pub fn new(max_restarts: usize, window: Duration) -> Intensity {
        Intensity {
            max_restarts,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Count a restart at `at` (times passed in never go backwards): the
    /// restarts now in the window, this one included, or
    /// [`TooManyRestarts`] when that is more than `max_restarts`. Restarts
    /// older than the window no longer count.
    pub fn record(&mut self, at: Instant) -> Result<usize, TooManyRestarts> {
        self.expire(at);
        self.recent.push_back(at);
        let restarts = self.recent.len();
        if restarts > self.max_restarts {
            return Err(TooManyRestarts {
                restarts,
                max_restarts: self.max_restarts,
                window: self.window,
            });
        }
        Ok(restarts)
    }

    /// Restarts within the window as of `now`.
    pub fn restarts(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.recent.len()
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn max_restarts(&self) -> usize {
        self.max_restarts
    }

    /// Forget every restart (a fresh start after giving up).
    pub fn clear(&mut self) {
        self.recent.clear();
    }

    fn expire(&mut self, now: Instant) {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > self.window)
        {
            self.recent.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn max_restarts_are_allowed_and_the_next_is_refused() {
        let t0 = Instant::now();
        let mut window = Intensity::new(3, ms(1_000));
        assert_eq!(window.record(t0), Ok(1));
        assert_eq!(window.record(t0 + ms(10)), Ok(2));
        assert_eq!(window.record(t0 + ms(20)), Ok(3));
        assert_eq!(
            window.record(t0 + ms(30)),
            Err(TooManyRestarts {
                restarts: 4,
                max_restarts: 3,
                window: ms(1_000),
            })
        );
    }

    #[test]
    fn restarts_older_than_the_window_no_longer_count() {
        let t0 = Instant::now();
        let mut window = Intensity::new(1, ms(100));
        assert_eq!(window.record(t0), Ok(1));
        // Exactly the window apart still counts; past it, not.
        assert!(window.record(t0 + ms(100)).is_err());
        let mut window = Intensity::new(1, ms(100));
        window.record(t0).unwrap();
        assert_eq!(window.record(t0 + ms(101)), Ok(1));
        assert_eq!(window.restarts(t0 + ms(150)), 1);
        assert_eq!(window.restarts(t0 + ms(202)), 0);
    }

    #[test]
    fn zero_max_restarts_refuses_the_first() {
        let mut window = Intensity::new(0, ms(100));
        assert_eq!(window.record(Instant::now()).unwrap_err().restarts, 1);
    }

    #[test]
    fn clear_forgets_every_restart() {
        let t0 = Instant::now();
        let mut window = Intensity::new(2, ms(1_000));
        window.record(t0).unwrap();
        window.record(t0).unwrap();
        window.clear();
        assert_eq!(window.restarts(t0), 0);
        assert_eq!(window.record(t0), Ok(1));
        assert_eq!((window.max_restarts(), window.window()), (2, ms(1_000)));
    }
}
