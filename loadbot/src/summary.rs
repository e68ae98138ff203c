//! The result of a run: [`Summary`], which is also the `--json` document
//! (every field is described in `loadbot/README.md`), and the threshold check
//! that decides the exit status.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;

use serde::{Deserialize, Serialize};

use crate::bot::Shared;
use crate::config::{Auth, Config};
use crate::per_shard::ShardSummary;
use crate::stats::{
    log_buckets, round3, Bucket, Counters, HistSummary, Latency, CLIENT_KINDS, SERVER_KINDS,
};

/// Version of the JSON layout; bumped when a field changes meaning or goes.
pub const SCHEMA_VERSION: u32 = 1;

/// One second of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// End of this second, seconds since the start of the run.
    pub t_s: f64,
    pub bots_connected: i64,
    pub bots_in_room: i64,
    /// What the counters gained in this second (flat in the JSON).
    #[serde(flatten)]
    pub counts: Counters,
    pub rtt_samples: u64,
    pub rtt_p50_ms: f64,
    pub rtt_p99_ms: f64,
    pub rtt_max_ms: f64,
    pub move_visible_p50_ms: f64,
    pub move_visible_p99_ms: f64,
    /// Loadbot CPU in this second, percent of one core.
    pub loadbot_cpu_pct: f64,
}

/// The run's settings, echoed so a report stands on its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigEcho {
    /// The first `--url` (the only one in a single-shard run).
    pub url: String,
    /// Every `--url`, in order.
    #[serde(default)]
    pub urls: Vec<String>,
    /// `single`, `round_robin` (several URLs, no directory) or `owners`
    /// (`--redis`: each room's owner, `--remote-share` elsewhere).
    #[serde(default)]
    pub placement: String,
    #[serde(default)]
    pub remote_share: f64,
    /// How each room slot's owner was found (`lease` or `rendezvous`), in
    /// room order; empty without `--redis`.
    #[serde(default)]
    pub owners_from: Vec<crate::placement::OwnerSource>,
    pub scenario: String,
    pub bots: u32,
    pub rooms: u32,
    pub maps: Vec<String>,
    pub duration_s: f64,
    pub ramp_s: f64,
    pub move_hz: f64,
    pub chat_hz: f64,
    pub ping_interval_s: f64,
    pub churn_interval_s: f64,
    pub threads: usize,
    pub auth: String,
    pub seed: u64,
}

impl ConfigEcho {
    fn of(cfg: &Config, maps: &[String], shared: &Shared) -> ConfigEcho {
        ConfigEcho {
            url: cfg
                .targets
                .first()
                .map(|t| t.url.clone())
                .unwrap_or_default(),
            urls: cfg.targets.iter().map(|t| t.url.clone()).collect(),
            placement: match (&shared.placement.owners, cfg.targets.len()) {
                (Some(_), _) => "owners",
                (None, 1) => "single",
                (None, _) => "round_robin",
            }
            .to_string(),
            remote_share: cfg.remote_share,
            owners_from: shared.placement.owner_source.clone(),
            scenario: cfg.scenario.name().to_string(),
            bots: cfg.bots,
            rooms: cfg.rooms,
            maps: maps.to_vec(),
            duration_s: cfg.duration.as_secs_f64(),
            ramp_s: cfg.ramp.as_secs_f64(),
            move_hz: cfg.move_hz,
            chat_hz: cfg.chat_hz,
            ping_interval_s: cfg.ping_interval.as_secs_f64(),
            churn_interval_s: cfg.churn_interval.as_secs_f64(),
            threads: cfg.threads,
            auth: match cfg.auth {
                Auth::Guest => "guest",
                Auth::Token(_) => "token",
                Auth::Mint { .. } => "minted",
            }
            .to_string(),
            seed: cfg.seed,
        }
    }
}

/// Pass/fail against `--max-p99-ms` and `--max-error-rate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub max_p99_ms: Option<f64>,
    pub max_error_rate: Option<f64>,
    pub passed: bool,
    /// One sentence per threshold exceeded.
    pub violations: Vec<String>,
}

/// Everything a run measured. Serialised as the `--json` report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub schema_version: u32,
    pub loadbot_version: String,
    pub config: ConfigEcho,
    pub started_unix_ms: u64,
    pub elapsed_s: f64,
    pub interrupted: bool,

    pub bots: u32,
    pub bots_joined: u64,
    pub bots_connected_at_end: i64,
    pub bots_in_room_at_end: i64,

    pub connect_attempts: u64,
    pub connects_ok: u64,
    pub connect_failures: u64,
    pub connect_failures_by_reason: BTreeMap<String, u64>,
    pub joins_ok: u64,
    pub join_failures: u64,
    pub join_failures_by_reason: BTreeMap<String, u64>,
    pub reconnects: u64,
    pub churn_drops: u64,
    /// Sessions a draining shard closed with 4008 (each resumed at once).
    #[serde(default)]
    pub moved: u64,
    pub map_hops: u64,
    pub resumed_same_player: u64,
    pub resumed_new_player: u64,
    pub seats_restored: u64,
    pub resumes_unfinished: u64,

    pub msgs_sent: u64,
    pub msgs_sent_by_kind: BTreeMap<String, u64>,
    pub bytes_sent: u64,
    pub msgs_received: u64,
    pub msgs_received_by_kind: BTreeMap<String, u64>,
    pub bytes_received: u64,
    pub msgs_sent_per_s: f64,
    pub msgs_received_per_s: f64,
    pub ws_pings_received: u64,

    pub error_frames: u64,
    pub errors_by_code: BTreeMap<u16, u64>,
    pub notices_by_code: BTreeMap<u16, u64>,
    pub disconnects: u64,
    pub disconnects_by_close_code: BTreeMap<String, u64>,
    pub decode_errors: u64,
    pub unexpected_frames: u64,
    pub moves_unconfirmed: u64,
    pub error_rate: f64,

    pub rtt_ms: HistSummary,
    pub move_visible_ms: HistSummary,
    pub update_interval_ms: HistSummary,
    pub update_jitter_ms: HistSummary,
    pub connect_ms: HistSummary,
    pub join_ms: HistSummary,
    pub rtt_histogram: Vec<Bucket>,

    pub loadbot_cpu_s: f64,
    pub loadbot_cpu_pct: f64,
    pub loadbot_rss_kib: u64,
    pub loadbot_peak_rss_kib: u64,

    pub timeline: Vec<Sample>,
    pub thresholds: Thresholds,
    /// The figures per `--url`, in `--url` order (one entry for one URL).
    #[serde(default)]
    pub shards: Vec<ShardSummary>,
    /// With `--durable-rate`: the durable actions and, with
    /// `--verify-admin`, what the store holds against them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<crate::ledger::LedgerReport>,
}

/// What the swarm hands over besides the shared stats.
pub struct RunFacts {
    pub started_unix_ms: u64,
    pub elapsed_s: f64,
    pub interrupted: bool,
    pub bots_connected_at_end: i64,
    pub bots_in_room_at_end: i64,
    pub cpu_s: f64,
    pub rss_kib: (u64, u64),
    pub timeline: Vec<Sample>,
}

impl Summary {
    pub fn build(shared: &Shared, facts: RunFacts) -> Summary {
        let cfg = &shared.cfg;
        let s = &shared.stats;
        let c = s.counters();
        let connect_attempts = s.connect_attempts.load(Relaxed);
        let by_kind = |names: &[&str], counts: &[std::sync::atomic::AtomicU64]| {
            names
                .iter()
                .zip(counts)
                .map(|(name, n)| (name.to_string(), n.load(Relaxed)))
                .collect::<BTreeMap<_, _>>()
        };
        let maps = if cfg.maps.is_empty() {
            shared.maps.get().cloned().unwrap_or_default()
        } else {
            cfg.maps.clone()
        };
        let in_use = crate::scenario::maps_in_use(
            cfg.rooms,
            cfg.scenario == crate::config::Scenario::Churn,
            maps.len(),
        );
        let maps = &maps[..in_use];
        let rtt = s.run_histogram(Latency::Rtt);
        let hist = |l| HistSummary::of(&s.run_histogram(l));
        let per_s = |n: u64| {
            if facts.elapsed_s > 0.0 {
                round3(n as f64 / facts.elapsed_s)
            } else {
                0.0
            }
        };
        let failures = c.connect_failures
            + c.join_failures
            + c.disconnects
            + c.error_frames
                .saturating_sub(s.error_frames_in_failures.load(Relaxed));
        let attempts = connect_attempts + c.msgs_sent;
        let error_rate = if attempts == 0 {
            0.0
        } else {
            failures as f64 / attempts as f64
        };
        let mut summary = Summary {
            schema_version: SCHEMA_VERSION,
            loadbot_version: env!("CARGO_PKG_VERSION").to_string(),
            config: ConfigEcho::of(cfg, maps, shared),
            started_unix_ms: facts.started_unix_ms,
            elapsed_s: round3(facts.elapsed_s),
            interrupted: facts.interrupted,
            bots: cfg.bots,
            bots_joined: s.bots_joined.load(Relaxed),
            bots_connected_at_end: facts.bots_connected_at_end,
            bots_in_room_at_end: facts.bots_in_room_at_end,
            connect_attempts,
            connects_ok: c.connects_ok,
            connect_failures: c.connect_failures,
            connect_failures_by_reason: s.connect_failures_by_reason(),
            joins_ok: c.joins_ok,
            join_failures: c.join_failures,
            join_failures_by_reason: s.join_failures_by_reason(),
            reconnects: s.reconnects.load(Relaxed),
            churn_drops: s.churn_drops.load(Relaxed),
            moved: s.moved.load(Relaxed),
            map_hops: s.map_hops.load(Relaxed),
            resumed_same_player: s.resumed_same_player.load(Relaxed),
            resumed_new_player: s.resumed_new_player.load(Relaxed),
            seats_restored: s.seats_restored.load(Relaxed),
            resumes_unfinished: s.resumes_unfinished.load(Relaxed),
            msgs_sent: c.msgs_sent,
            msgs_sent_by_kind: by_kind(&CLIENT_KINDS, &s.sent_by_kind),
            bytes_sent: c.bytes_sent,
            msgs_received: c.msgs_received,
            msgs_received_by_kind: by_kind(&SERVER_KINDS, &s.received_by_kind),
            bytes_received: c.bytes_received,
            msgs_sent_per_s: per_s(c.msgs_sent),
            msgs_received_per_s: per_s(c.msgs_received),
            ws_pings_received: s.ws_pings.load(Relaxed),
            error_frames: c.error_frames,
            errors_by_code: s.errors_by_code(),
            notices_by_code: s.notices_by_code(),
            disconnects: c.disconnects,
            disconnects_by_close_code: s.disconnects_by_code(),
            decode_errors: s.decode_errors.load(Relaxed),
            unexpected_frames: s.unexpected_frames.load(Relaxed),
            moves_unconfirmed: s.moves_unconfirmed.load(Relaxed),
            error_rate: (error_rate * 1e6).round() / 1e6,
            rtt_ms: HistSummary::of(&rtt),
            move_visible_ms: hist(Latency::MoveVisible),
            update_interval_ms: hist(Latency::UpdateInterval),
            update_jitter_ms: hist(Latency::UpdateJitter),
            connect_ms: hist(Latency::Connect),
            join_ms: hist(Latency::Join),
            rtt_histogram: log_buckets(&rtt),
            loadbot_cpu_s: round3(facts.cpu_s),
            loadbot_cpu_pct: if facts.elapsed_s > 0.0 {
                round3(facts.cpu_s / facts.elapsed_s * 100.0)
            } else {
                0.0
            },
            loadbot_rss_kib: facts.rss_kib.0,
            loadbot_peak_rss_kib: facts.rss_kib.1,
            timeline: facts.timeline,
            thresholds: Thresholds::default(),
            shards: shared
                .shards
                .iter()
                .map(|s| s.summary(facts.elapsed_s))
                .collect(),
            ledger: None,
        };
        summary.thresholds = summary.check(cfg.max_p99_ms, cfg.max_error_rate);
        summary
    }

    /// Compares the run with the thresholds; exceeded ones are violations.
    pub fn check(&self, max_p99_ms: Option<f64>, max_error_rate: Option<f64>) -> Thresholds {
        let mut violations = Vec::new();
        if let Some(max) = max_p99_ms {
            if self.rtt_ms.count == 0 {
                violations.push(format!(
                    "no RTT sample was recorded, so RTT p99 cannot be under --max-p99-ms {max}"
                ));
            } else if self.rtt_ms.p99 > max {
                violations.push(format!(
                    "RTT p99 {} ms is above --max-p99-ms {max}",
                    self.rtt_ms.p99
                ));
            }
        }
        if let Some(max) = max_error_rate {
            if self.error_rate > max {
                violations.push(format!(
                    "error rate {} is above --max-error-rate {max}",
                    self.error_rate
                ));
            }
        }
        Thresholds {
            max_p99_ms,
            max_error_rate,
            passed: violations.is_empty(),
            violations,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::stats::Stats;

    /// The timeline's JSON keys, in order, as they were before `Sample`
    /// flattened `Counters`: consumers of the report see no change.
    #[test]
    fn a_sample_serialises_flat_in_the_documented_order() {
        let expected = [
            "t_s",
            "bots_connected",
            "bots_in_room",
            "connects_ok",
            "connect_failures",
            "joins_ok",
            "join_failures",
            "msgs_sent",
            "msgs_received",
            "bytes_sent",
            "bytes_received",
            "error_frames",
            "disconnects",
            "rtt_samples",
            "rtt_p50_ms",
            "rtt_p99_ms",
            "rtt_max_ms",
            "move_visible_p50_ms",
            "move_visible_p99_ms",
            "loadbot_cpu_pct",
        ];
        let text = serde_json::to_string(&Sample::default()).expect("serialisable");
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            v.as_object().map(|o| o.len()),
            Some(expected.len()),
            "{text}"
        );
        let positions: Vec<usize> = expected
            .iter()
            .map(|k| text.find(&format!("\"{k}\":")).expect("key present"))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
        let back: Sample = serde_json::from_str(&text).expect("round trip");
        assert_eq!(back, Sample::default());
    }

    /// A summary as a small run would produce, for the report tests.
    pub(crate) fn sample_summary() -> Summary {
        let cfg = Config::new("ws://127.0.0.1:9").expect("defaults are valid");
        let shared = Shared::new(cfg, "127.0.0.1:9".parse().expect("addr"));
        let s: &Stats = &shared.stats;
        s.connect_attempts.fetch_add(11, Relaxed);
        s.connects_ok.fetch_add(10, Relaxed);
        s.connect_failed("refused");
        s.joins_ok.fetch_add(10, Relaxed);
        s.bots_joined.fetch_add(10, Relaxed);
        for _ in 0..300 {
            s.sent(3, 20);
        }
        for _ in 0..100 {
            s.sent(5, 12);
        }
        for _ in 0..900 {
            s.received(3, 60);
        }
        s.error_frame(1004);
        for ms in 1..=100u64 {
            s.record(Latency::Rtt, ms * 100);
            s.record(Latency::MoveVisible, ms * 500);
        }
        let timeline = (1..=5)
            .map(|t| Sample {
                t_s: t as f64,
                bots_connected: 10,
                bots_in_room: 10,
                counts: Counters {
                    msgs_sent: 80 + t,
                    msgs_received: 180 + t,
                    ..Counters::default()
                },
                rtt_samples: 10,
                rtt_p50_ms: 1.0 + t as f64 / 10.0,
                rtt_p99_ms: 4.0 + t as f64,
                rtt_max_ms: 9.0,
                ..Sample::default()
            })
            .collect();
        Summary::build(
            &shared,
            RunFacts {
                started_unix_ms: 1_700_000_000_000,
                elapsed_s: 5.0,
                interrupted: false,
                bots_connected_at_end: 10,
                bots_in_room_at_end: 10,
                cpu_s: 0.5,
                rss_kib: (10_000, 12_000),
                timeline,
            },
        )
    }

    #[test]
    fn totals_and_rates() {
        let s = sample_summary();
        assert_eq!(s.msgs_sent, 400);
        assert_eq!(s.msgs_sent_by_kind["move"], 300);
        assert_eq!(s.msgs_sent_by_kind["ping"], 100);
        assert_eq!(s.msgs_received_by_kind["update"], 900);
        assert_eq!(s.msgs_sent_per_s, 80.0);
        assert_eq!(s.loadbot_cpu_pct, 10.0);
        // 1 connect failure + 1 error frame out of 11 connects + 400 messages.
        assert!(
            (s.error_rate - 2.0 / 411.0).abs() < 1e-5,
            "{}",
            s.error_rate
        );
        assert_eq!(s.rtt_ms.count, 100);
        assert!(s.thresholds.passed);
    }

    #[test]
    fn thresholds_name_what_was_exceeded() {
        let s = sample_summary();
        let t = s.check(Some(0.001), None);
        assert!(!t.passed);
        assert!(t.violations[0].contains("--max-p99-ms"), "{t:?}");
        let t = s.check(Some(1000.0), Some(0.0));
        assert_eq!(t.violations.len(), 1);
        assert!(t.violations[0].contains("--max-error-rate"), "{t:?}");
        assert!(s.check(Some(1000.0), Some(0.5)).passed);
        let mut empty = s.clone();
        empty.rtt_ms = HistSummary::default();
        assert!(!empty.check(Some(1000.0), None).passed, "no samples fails");
    }
}
