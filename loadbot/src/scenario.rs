//! The scripted parts of a bot's behaviour, kept free of I/O so they are
//! unit-tested: where a bot goes, when it sends, which way it walks, when it
//! churns.
//!
//! Timing: every periodic send runs on a fixed clock shared by the whole run
//! (`t0 + phase + k * period`), with a per-bot phase spread by the golden
//! ratio so N bots' sends are evenly interleaved for any N. A bot that falls
//! behind skips ticks instead of bursting (tokio's `MissedTickBehavior::Skip`).

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// Which room slot bot `index` starts in.
pub fn room_of(index: u32, rooms: u32) -> u32 {
    index % rooms.max(1)
}

/// The map of room slot `room`: `maps[room % maps.len()]`.
pub fn map_of(room: u32, maps: &[String]) -> Option<&str> {
    if maps.is_empty() {
        return None;
    }
    maps.get(room as usize % maps.len()).map(String::as_str)
}

/// How many maps (from the start of the list) a run uses: one per room up
/// to the number of maps; churn hops need at least two.
pub fn maps_in_use(rooms: u32, churn: bool, maps: usize) -> usize {
    let wanted = if churn { rooms.max(2) } else { rooms.max(1) };
    (wanted as usize).min(maps)
}

/// The bot's phase within `period`, in [0, period): bot `index` is placed at
/// the fractional part of `index * φ` (plus a salt so the move, ping and chat
/// clocks of one bot do not coincide).
pub fn phase(index: u32, salt: u32, period: Duration) -> Duration {
    const PHI_FRAC: f64 = 0.618_033_988_749_894_9;
    let x = (index as f64 + salt as f64 * 0.377) * PHI_FRAC;
    period.mul_f64(x.fract())
}

/// The first instant on the grid `t0 + phase + k * period` (k >= 0) that is
/// not before `now`.
pub fn aligned_start(t0: Instant, phase: Duration, period: Duration, now: Instant) -> Instant {
    let first = t0 + phase;
    if now <= first || period.is_zero() {
        return first;
    }
    let behind = now - first;
    let k = (behind.as_nanos() / period.as_nanos()) as u32;
    let at = first + period * k;
    if at < now {
        at + period
    } else {
        at
    }
}

/// A fixed-clock interval on the run's grid that skips missed ticks.
pub fn clock(t0: Instant, phase: Duration, period: Duration) -> Interval {
    let start = aligned_start(t0, phase, period, Instant::now());
    let mut interval = tokio::time::interval_at(start, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
    interval
}

/// A small, fast, seedable generator (xorshift64*): 8 bytes per bot instead
/// of a general-purpose RNG's state. Not for anything but load shaping.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64, index: u32) -> Rng {
        // SplitMix64 of the inputs so neighbouring bots get unrelated streams;
        // the state must never be zero.
        let mut z = seed ^ (u64::from(index) << 32 | u64::from(index)) ^ 0x9E37_79B9_7F4A_7C15;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(z.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n); 0 when n is 0.
    pub fn below(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        (self.unit() * n as f64) as u32 % n
    }
}

/// A random walk that stays away from the map's edges: keep the heading,
/// turn now and then, and head back towards the middle near a border.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wander {
    pub dx: f32,
    pub dy: f32,
}

/// Chance per move tick of picking a new heading.
const TURN_CHANCE: f64 = 0.1;
/// Fraction of the map's size that counts as "near the edge".
const EDGE: f32 = 0.05;

impl Wander {
    pub fn new(rng: &mut Rng) -> Wander {
        let mut w = Wander { dx: 1.0, dy: 0.0 };
        w.turn(rng);
        w
    }

    fn turn(&mut self, rng: &mut Rng) {
        let angle = rng.unit() * std::f64::consts::TAU;
        self.dx = angle.cos() as f32;
        self.dy = angle.sin() as f32;
    }

    /// The heading for the next move, given the bot's last known position in
    /// a `width` x `height` map.
    pub fn step(&mut self, rng: &mut Rng, x: f32, y: f32, width: f32, height: f32) -> (f32, f32) {
        let near = |v: f32, size: f32| size > 0.0 && (v < size * EDGE || v > size * (1.0 - EDGE));
        if near(x, width) || near(y, height) {
            let (cx, cy) = (width / 2.0 - x, height / 2.0 - y);
            let len = (cx * cx + cy * cy).sqrt();
            if len > f32::EPSILON {
                self.dx = cx / len;
                self.dy = cy / len;
            }
        } else if rng.unit() < TURN_CHANCE {
            self.turn(rng);
        }
        (self.dx, self.dy)
    }
}

/// What a churning bot does at its next churn event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Churn {
    /// Drop the socket without a close frame and come back with `resume`.
    Reconnect,
    /// Join another map on the same connection.
    Hop,
}

impl Churn {
    pub fn pick(rng: &mut Rng) -> Churn {
        if rng.next_u64() & 1 == 0 {
            Churn::Reconnect
        } else {
            Churn::Hop
        }
    }
}

/// Time to a bot's next churn event: uniform in [0.5, 1.5) x `mean`.
pub fn churn_delay(rng: &mut Rng, mean: Duration) -> Duration {
    mean.mul_f64(0.5 + rng.unit())
}

/// The room slot a hopping bot moves to: any other map of `maps` (the same
/// one when there is only one).
pub fn hop_target(rng: &mut Rng, current: u32, maps: usize) -> u32 {
    if maps < 2 {
        return current;
    }
    let maps = maps as u32;
    (current % maps + 1 + rng.below(maps - 1)) % maps
}

/// Back-off after `failures` consecutive failed connects or joins: doubling
/// from 250 ms, capped at 5 s, jittered to [0.5, 1.5)x so bots spread out.
pub fn backoff(rng: &mut Rng, failures: u32) -> Duration {
    let base = Duration::from_millis(250) * 2u32.saturating_pow(failures.min(5));
    base.min(Duration::from_secs(5)).mul_f64(0.5 + rng.unit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maps() -> Vec<String> {
        ["lobby", "arena", "plains"].map(String::from).to_vec()
    }

    #[test]
    fn rooms_spread_bots_over_maps() {
        let maps = maps();
        let rooms = 5;
        let names: Vec<_> = (0..10)
            .map(|b| map_of(room_of(b, rooms), &maps).expect("maps not empty"))
            .collect();
        assert_eq!(
            names,
            [
                "lobby", "arena", "plains", "lobby", "arena", "lobby", "arena", "plains", "lobby",
                "arena"
            ]
        );
        assert_eq!(map_of(0, &[]), None);
        assert_eq!(maps_in_use(5, false, 3), 3);
        assert_eq!(maps_in_use(2, false, 100), 2);
        assert_eq!(maps_in_use(1, true, 100), 2);
        assert_eq!(maps_in_use(1, true, 1), 1);
        assert_eq!(room_of(7, 0), 0, "zero rooms never divides by zero");
    }

    #[test]
    fn phases_are_spread_over_the_period() {
        let period = Duration::from_millis(100);
        let mut buckets = [0u32; 10];
        for i in 0..1000 {
            let p = phase(i, 0, period);
            assert!(p < period);
            buckets[(p.as_millis() / 10) as usize] += 1;
        }
        for b in buckets {
            assert!((80..=120).contains(&b), "uneven phases: {buckets:?}");
        }
        assert_ne!(phase(3, 0, period), phase(3, 1, period));
    }

    #[test]
    fn aligned_start_is_on_the_grid_and_not_in_the_past() {
        let t0 = Instant::now();
        let period = Duration::from_millis(100);
        let phase = Duration::from_millis(30);
        assert_eq!(aligned_start(t0, phase, period, t0), t0 + phase);
        let now = t0 + Duration::from_millis(1234);
        let at = aligned_start(t0, phase, period, now);
        assert_eq!(at, t0 + Duration::from_millis(1330));
        let exact = t0 + Duration::from_millis(530);
        assert_eq!(aligned_start(t0, phase, period, exact), exact);
    }

    #[tokio::test(start_paused = true)]
    async fn clock_skips_missed_ticks_instead_of_bursting() {
        let t0 = Instant::now();
        let period = Duration::from_millis(100);
        let mut clock = clock(t0, Duration::ZERO, period);
        clock.tick().await;
        // Stall for three and a half periods: the next tick is immediate, and
        // the one after it back on the grid, not three ticks in a row.
        tokio::time::advance(Duration::from_millis(350)).await;
        clock.tick().await;
        let before = Instant::now();
        clock.tick().await;
        assert!(Instant::now() - before >= Duration::from_millis(40));
        assert_eq!(
            (Instant::now() - t0).as_millis() % 100,
            0,
            "back on the grid"
        );
    }

    #[test]
    fn rng_is_deterministic_and_spread() {
        let mut a = Rng::new(1, 7);
        let mut b = Rng::new(1, 7);
        let mut c = Rng::new(1, 8);
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        let zs: Vec<u64> = (0..5).map(|_| c.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs, zs);
        let mut r = Rng::new(0, 0);
        let mean = (0..10_000).map(|_| r.unit()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02);
        assert!((0..1000).all(|_| r.below(3) < 3));
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn wander_heads_home_near_edges_and_has_unit_length() {
        let mut rng = Rng::new(1, 1);
        let mut w = Wander::new(&mut rng);
        for _ in 0..100 {
            let (dx, dy) = w.step(&mut rng, 500.0, 500.0, 1000.0, 1000.0);
            assert!(((dx * dx + dy * dy).sqrt() - 1.0).abs() < 1e-4);
        }
        let (dx, dy) = w.step(&mut rng, 1.0, 500.0, 1000.0, 1000.0);
        assert!(dx > 0.99 && dy.abs() < 0.01, "left edge: head right");
        let (dx, dy) = w.step(&mut rng, 500.0, 999.0, 1000.0, 1000.0);
        assert!(dy < -0.99 && dx.abs() < 0.01, "bottom edge: head up");
    }

    #[test]
    fn churn_hops_elsewhere_and_backs_off() {
        let mut rng = Rng::new(3, 3);
        for current in 0..3 {
            for _ in 0..20 {
                let next = hop_target(&mut rng, current, 3);
                assert!(next < 3 && next != current);
            }
        }
        assert_eq!(hop_target(&mut rng, 0, 1), 0);
        let mean = Duration::from_secs(4);
        for _ in 0..100 {
            let d = churn_delay(&mut rng, mean);
            assert!(d >= Duration::from_secs(2) && d < Duration::from_secs(6));
        }
        assert!(backoff(&mut rng, 0) < Duration::from_millis(375));
        assert!(backoff(&mut rng, 30) < Duration::from_millis(7500));
        let kinds: std::collections::HashSet<_> = (0..50)
            .map(|_| format!("{:?}", Churn::pick(&mut rng)))
            .collect();
        assert_eq!(kinds.len(), 2);
    }
}
