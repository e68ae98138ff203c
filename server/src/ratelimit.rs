//! Token buckets for per-session message rates, and the strike counter that
//! closes abusive sessions.

use std::time::{Duration, Instant};

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: f32,
    rate: f32,
    burst: f32,
    last: Instant,
}

impl Bucket {
    pub fn new(rate: u32, burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: burst as f32,
            rate: rate as f32,
            burst: burst as f32,
            last: now,
        }
    }

    /// Take one token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f32();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Counts strikes within a sliding window; `strike` says when the limit is
/// reached.
#[derive(Debug, Clone)]
pub struct Strikes {
    count: u32,
    window_start: Instant,
    limit: u32,
    window: Duration,
}

impl Strikes {
    pub fn new(limit: u32, window: Duration, now: Instant) -> Strikes {
        Strikes {
            count: 0,
            window_start: now,
            limit,
            window,
        }
    }

    /// Record a strike; true when this one reaches the limit.
    pub fn strike(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.window_start) > self.window {
            self.window_start = now;
            self.count = 0;
        }
        self.count += 1;
        self.count >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 3, t0);
        assert!(b.allow(t0) && b.allow(t0) && b.allow(t0));
        assert!(!b.allow(t0));
        assert!(b.allow(t0 + Duration::from_millis(100)));
        assert!(!b.allow(t0 + Duration::from_millis(100)));
        // Idle time refills only up to the burst.
        let later = t0 + Duration::from_secs(10);
        assert!((0..3).all(|_| b.allow(later)));
        assert!(!b.allow(later));
    }

    #[test]
    fn strikes_reset_after_the_window() {
        let t0 = Instant::now();
        let mut s = Strikes::new(3, Duration::from_secs(1), t0);
        assert!(!s.strike(t0));
        assert!(!s.strike(t0));
        let later = t0 + Duration::from_secs(2);
        assert!(!s.strike(later));
        assert!(!s.strike(later));
        assert!(s.strike(later));
    }
}
