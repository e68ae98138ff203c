//! Figures per shard URL, beside the run's totals in [`crate::stats`].
//!
//! Kept lean on purpose: the totals keep everything (kinds, codes,
//! reasons, six histograms); per shard only what compares shards: bots
//! sent there, connects, RTT and move-to-visible, updates and bytes
//! received, drops and errors. A bot records into its shard's entry as
//! well as into the totals, at the same points.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::stats::{new_histogram, HistSummary, Latency, MAX_TRACKED_US};

/// One shard URL's counters and its two latency histograms.
pub struct ShardStats {
    pub url: String,
    /// Bots placed on this URL.
    pub bots: u32,
    /// Of those, bots whose room's owner is another shard.
    pub remote_bots: u32,
    pub connects_ok: AtomicU64,
    pub connect_failures: AtomicU64,
    pub join_failures: AtomicU64,
    /// Sessions the server closed or that broke after joining.
    pub drops: AtomicU64,
    pub error_frames: AtomicU64,
    pub updates_received: AtomicU64,
    /// Bytes of the frames received (the shard's socket bytes towards
    /// its players, WebSocket framing aside).
    pub bytes_received: AtomicU64,
    hists: Mutex<[Histogram<u64>; 2]>,
}

const RTT: usize = 0;
const MOVE_VISIBLE: usize = 1;

impl ShardStats {
    pub fn new(url: &str, bots: u32, remote_bots: u32) -> ShardStats {
        ShardStats {
            url: url.to_string(),
            bots,
            remote_bots,
            connects_ok: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            join_failures: AtomicU64::new(0),
            drops: AtomicU64::new(0),
            error_frames: AtomicU64::new(0),
            updates_received: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            hists: Mutex::new([new_histogram(), new_histogram()]),
        }
    }

    pub fn rtt(&self, micros: u64) {
        self.hists.lock()[RTT].saturating_record(micros.clamp(1, MAX_TRACKED_US));
    }

    /// The move-to-visible samples among a bot's update samples.
    pub fn record_many(&self, samples: &[(Latency, u64)]) {
        if !samples.iter().any(|(l, _)| *l == Latency::MoveVisible) {
            return;
        }
        let mut hists = self.hists.lock();
        for &(latency, us) in samples {
            if latency == Latency::MoveVisible {
                hists[MOVE_VISIBLE].saturating_record(us.clamp(1, MAX_TRACKED_US));
            }
        }
    }

    /// The figures at the end of a run.
    pub fn summary(&self, elapsed_s: f64) -> ShardSummary {
        let hists = self.hists.lock();
        let per_s = |n: u64| {
            if elapsed_s > 0.0 {
                crate::stats::round3(n as f64 / elapsed_s)
            } else {
                0.0
            }
        };
        let bytes_received = self.bytes_received.load(Relaxed);
        ShardSummary {
            url: self.url.clone(),
            bots: self.bots,
            remote_bots: self.remote_bots,
            connects_ok: self.connects_ok.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            join_failures: self.join_failures.load(Relaxed),
            drops: self.drops.load(Relaxed),
            error_frames: self.error_frames.load(Relaxed),
            updates_received: self.updates_received.load(Relaxed),
            bytes_received,
            bytes_received_per_s: per_s(bytes_received),
            rtt_ms: HistSummary::of(&hists[RTT]),
            move_visible_ms: HistSummary::of(&hists[MOVE_VISIBLE]),
        }
    }
}

/// One shard URL's figures in the summary and the JSON report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardSummary {
    pub url: String,
    pub bots: u32,
    pub remote_bots: u32,
    pub connects_ok: u64,
    pub connect_failures: u64,
    pub join_failures: u64,
    pub drops: u64,
    pub error_frames: u64,
    pub updates_received: u64,
    pub bytes_received: u64,
    pub bytes_received_per_s: f64,
    pub rtt_ms: HistSummary,
    pub move_visible_ms: HistSummary,
}

impl ShardSummary {
    /// Connect and join failures, drops and error frames.
    pub fn errors(&self) -> u64 {
        self.connect_failures + self.join_failures + self.drops + self.error_frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shards_figures_add_up() {
        let s = ShardStats::new("ws://127.0.0.1:1", 10, 4);
        s.connects_ok.fetch_add(10, Relaxed);
        s.drops.fetch_add(1, Relaxed);
        s.error_frames.fetch_add(2, Relaxed);
        s.bytes_received.fetch_add(5000, Relaxed);
        for ms in 1..=100 {
            s.rtt(ms * 1000);
        }
        s.record_many(&[
            (Latency::MoveVisible, 3000),
            (Latency::UpdateInterval, 9),
            (Latency::MoveVisible, 5000),
        ]);
        let sum = s.summary(10.0);
        assert_eq!((sum.bots, sum.remote_bots, sum.connects_ok), (10, 4, 10));
        assert_eq!(sum.errors(), 3);
        assert_eq!(sum.bytes_received_per_s, 500.0);
        assert_eq!(sum.rtt_ms.count, 100);
        assert!((sum.rtt_ms.p99 - 99.0).abs() < 1.0, "{:?}", sum.rtt_ms);
        assert_eq!(sum.move_visible_ms.count, 2);
    }
}
