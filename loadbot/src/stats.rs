//! What the bots measure, shared by all of them.
//!
//! Counters are atomics, bumped by the bot that saw the event. Latencies go
//! into HdrHistograms behind one mutex (a few tens of thousands of records per
//! second, far below contention on 1-2 worker threads). Rare, keyed events
//! (error codes, close codes, failure reasons) go into small maps behind
//! mutexes of their own.
//!
//! Every latency histogram exists twice: a run-long one for the summary and a
//! one-second window that the sampler in [`crate::swarm`] swaps out each
//! second for the timeline. Values are recorded in microseconds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use protocol::{ClientMsg, ServerMsg};
use serde::Serialize;

/// Largest latency a histogram tracks, in microseconds; larger values are
/// recorded as this.
pub const MAX_TRACKED_US: u64 = 120_000_000;

/// Wire names of client messages, indexed by [`client_kind`].
pub const CLIENT_KINDS: [&str; 8] = [
    "hello", "join", "leave", "move", "chat", "ping", "give", "pick_up",
];
/// Wire names of server messages, indexed by [`server_kind`].
pub const SERVER_KINDS: [&str; 12] = [
    "welcome",
    "joined",
    "left",
    "update",
    "chat",
    "announce",
    "pong",
    "error",
    "notice",
    "done",
    "inventory",
    "items",
];

/// Index of `update` in [`SERVER_KINDS`] (counted by the fast path, which
/// has no [`ServerMsg`] to ask).
pub const UPDATE_KIND: usize = 3;

/// Index of a client message in [`CLIENT_KINDS`].
pub fn client_kind(msg: &ClientMsg) -> usize {
    match msg {
        ClientMsg::Hello(_) => 0,
        ClientMsg::Join(_) => 1,
        ClientMsg::Leave(_) => 2,
        ClientMsg::Move(_) => 3,
        ClientMsg::Chat(_) => 4,
        ClientMsg::Ping(_) => 5,
        ClientMsg::Give(_) => 6,
        ClientMsg::PickUp(_) => 7,
    }
}

/// Index of a server message in [`SERVER_KINDS`].
pub fn server_kind(msg: &ServerMsg) -> usize {
    match msg {
        ServerMsg::Welcome(_) => 0,
        ServerMsg::Joined(_) => 1,
        ServerMsg::Left(_) => 2,
        ServerMsg::Update(_) => 3,
        ServerMsg::Chat(_) => 4,
        ServerMsg::Announce(_) => 5,
        ServerMsg::Pong(_) => 6,
        ServerMsg::Error(_) => 7,
        ServerMsg::Notice(_) => 8,
        ServerMsg::Done(_) => 9,
        ServerMsg::Inventory(_) => 10,
        ServerMsg::Items(_) => 11,
    }
}

/// The latencies measured, each with a run-long and a one-second histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Ping sent to pong received.
    Rtt,
    /// Move seq N sent to the first update showing the bot's own seq >= N.
    MoveVisible,
    /// Time between two updates to the same bot in the same room.
    UpdateInterval,
    /// |update interval - the room's tick period|.
    UpdateJitter,
    /// TCP connect to welcome received.
    Connect,
    /// Join sent to joined received.
    Join,
}

const LATENCIES: usize = 6;

impl Latency {
    pub const ALL: [Latency; LATENCIES] = [
        Latency::Rtt,
        Latency::MoveVisible,
        Latency::UpdateInterval,
        Latency::UpdateJitter,
        Latency::Connect,
        Latency::Join,
    ];

    pub fn index(self) -> usize {
        self as usize
    }
}

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3)
        .expect("1..120s at 3 significant figures is a valid histogram")
}

struct Hists {
    run: [Histogram<u64>; LATENCIES],
    window: [Histogram<u64>; LATENCIES],
}

/// Counters, gauges, keyed counts and histograms of one run.
pub struct Stats {
    pub connect_attempts: AtomicU64,
    pub connects_ok: AtomicU64,
    pub connect_failures: AtomicU64,
    pub joins_ok: AtomicU64,
    pub join_failures: AtomicU64,
    /// Bots that stood in a map at least once.
    pub bots_joined: AtomicU64,
    pub reconnects: AtomicU64,
    pub resumed_same_player: AtomicU64,
    pub resumed_new_player: AtomicU64,
    /// Resumes whose seat came back by itself (`joined` without a join).
    pub seats_restored: AtomicU64,
    /// Churn drops whose resume the end of the run cut short.
    pub resumes_unfinished: AtomicU64,
    pub churn_drops: AtomicU64,
    /// Sessions a draining shard closed with 4008, each resumed at once
    /// (on the next `--url` when there are several).
    pub moved: AtomicU64,
    pub map_hops: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub sent_by_kind: [AtomicU64; CLIENT_KINDS.len()],
    pub received_by_kind: [AtomicU64; SERVER_KINDS.len()],
    pub error_frames: AtomicU64,
    /// Error frames that were the reason of a counted connect or join
    /// failure (so the error rate does not count them twice).
    pub error_frames_in_failures: AtomicU64,
    /// Disconnects the bot did not ask for (server close or I/O failure).
    pub disconnects: AtomicU64,
    pub ws_pings: AtomicU64,
    /// Frames the protocol crate could not decode: a server bug.
    pub decode_errors: AtomicU64,
    /// Text or other non-binary data frames: a server bug.
    pub unexpected_frames: AtomicU64,
    /// Moves still unseen when the bot left the room or the ring overflowed.
    pub moves_unconfirmed: AtomicU64,
    pub bots_connected: AtomicI64,
    pub bots_in_room: AtomicI64,
    errors_by_code: Mutex<BTreeMap<u16, u64>>,
    notices_by_code: Mutex<BTreeMap<u16, u64>>,
    connect_failures_by_reason: Mutex<BTreeMap<String, u64>>,
    join_failures_by_reason: Mutex<BTreeMap<String, u64>>,
    disconnects_by_code: Mutex<BTreeMap<String, u64>>,
    hists: Mutex<Hists>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: &str) {
    let mut map = map.lock();
    match map.get_mut(key) {
        Some(n) => *n += 1,
        None => {
            map.insert(key.to_string(), 1);
        }
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats {
            connect_attempts: AtomicU64::new(0),
            connects_ok: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            joins_ok: AtomicU64::new(0),
            join_failures: AtomicU64::new(0),
            bots_joined: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            resumed_same_player: AtomicU64::new(0),
            resumed_new_player: AtomicU64::new(0),
            seats_restored: AtomicU64::new(0),
            resumes_unfinished: AtomicU64::new(0),
            churn_drops: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            map_hops: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            bytes_received: AtomicU64::new(0),
            sent_by_kind: Default::default(),
            received_by_kind: Default::default(),
            error_frames: AtomicU64::new(0),
            error_frames_in_failures: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            ws_pings: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            unexpected_frames: AtomicU64::new(0),
            moves_unconfirmed: AtomicU64::new(0),
            bots_connected: AtomicI64::new(0),
            bots_in_room: AtomicI64::new(0),
            errors_by_code: Mutex::new(BTreeMap::new()),
            notices_by_code: Mutex::new(BTreeMap::new()),
            connect_failures_by_reason: Mutex::new(BTreeMap::new()),
            join_failures_by_reason: Mutex::new(BTreeMap::new()),
            disconnects_by_code: Mutex::new(BTreeMap::new()),
            hists: Mutex::new(Hists {
                run: std::array::from_fn(|_| new_histogram()),
                window: std::array::from_fn(|_| new_histogram()),
            }),
        }
    }

    pub fn sent(&self, kind: usize, bytes: usize) {
        self.sent_by_kind[kind].fetch_add(1, Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Relaxed);
    }

    pub fn received(&self, kind: usize, bytes: usize) {
        self.received_by_kind[kind].fetch_add(1, Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Relaxed);
    }

    /// An error frame; `code` as the server sent it (possibly unknown to us).
    pub fn error_frame(&self, code: u16) {
        self.error_frames.fetch_add(1, Relaxed);
        *self.errors_by_code.lock().entry(code).or_insert(0) += 1;
    }

    /// A notice frame (room restarted, seat restored, ...).
    pub fn notice(&self, code: u16) {
        *self.notices_by_code.lock().entry(code).or_insert(0) += 1;
    }

    /// A connect attempt that did not end in a welcome. `reason` is a short
    /// stable key: `refused`, `timeout`, `handshake`, `close_4003`,
    /// `error_2002`, ...
    pub fn connect_failed(&self, reason: &str) {
        self.connect_failures.fetch_add(1, Relaxed);
        bump(&self.connect_failures_by_reason, reason);
    }

    /// A join that did not end in `joined`: `error_3003`, `timeout`, ...
    pub fn join_failed(&self, reason: &str) {
        self.join_failures.fetch_add(1, Relaxed);
        bump(&self.join_failures_by_reason, reason);
    }

    /// A disconnect the bot did not ask for: the close code, `no_close_frame`
    /// (TCP closed without a WebSocket close) or `io_error`.
    pub fn disconnected(&self, code: &str) {
        self.disconnects.fetch_add(1, Relaxed);
        bump(&self.disconnects_by_code, code);
    }

    pub fn record(&self, latency: Latency, micros: u64) {
        let value = micros.clamp(1, MAX_TRACKED_US);
        let mut hists = self.hists.lock();
        hists.run[latency.index()].saturating_record(value);
        hists.window[latency.index()].saturating_record(value);
    }

    /// Records several latencies under one lock (a bot's update handler).
    pub fn record_many(&self, samples: &[(Latency, u64)]) {
        if samples.is_empty() {
            return;
        }
        let mut hists = self.hists.lock();
        for &(latency, micros) in samples {
            let value = micros.clamp(1, MAX_TRACKED_US);
            hists.run[latency.index()].saturating_record(value);
            hists.window[latency.index()].saturating_record(value);
        }
    }

    /// Summaries of the last window, which starts over.
    pub fn take_window(&self) -> [HistSummary; LATENCIES] {
        let mut hists = self.hists.lock();
        let out = std::array::from_fn(|i| HistSummary::of(&hists.window[i]));
        for h in hists.window.iter_mut() {
            h.reset();
        }
        out
    }

    /// A copy of the run-long histogram of `latency`.
    pub fn run_histogram(&self, latency: Latency) -> Histogram<u64> {
        self.hists.lock().run[latency.index()].clone()
    }

    pub fn counters(&self) -> Counters {
        let sum = |a: &[AtomicU64]| a.iter().map(|n| n.load(Relaxed)).sum();
        Counters {
            connects_ok: self.connects_ok.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            joins_ok: self.joins_ok.load(Relaxed),
            join_failures: self.join_failures.load(Relaxed),
            msgs_sent: sum(&self.sent_by_kind),
            msgs_received: sum(&self.received_by_kind),
            bytes_sent: self.bytes_sent.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            error_frames: self.error_frames.load(Relaxed),
            disconnects: self.disconnects.load(Relaxed),
        }
    }

    pub fn errors_by_code(&self) -> BTreeMap<u16, u64> {
        self.errors_by_code.lock().clone()
    }

    pub fn notices_by_code(&self) -> BTreeMap<u16, u64> {
        self.notices_by_code.lock().clone()
    }

    pub fn connect_failures_by_reason(&self) -> BTreeMap<String, u64> {
        self.connect_failures_by_reason.lock().clone()
    }

    pub fn join_failures_by_reason(&self) -> BTreeMap<String, u64> {
        self.join_failures_by_reason.lock().clone()
    }

    pub fn disconnects_by_code(&self) -> BTreeMap<String, u64> {
        self.disconnects_by_code.lock().clone()
    }
}

/// The traffic counters: their totals at one instant ([`Stats::counters`]),
/// or what happened between two instants ([`Counters::since`]), which is
/// what each second of the timeline carries (flattened into its `Sample`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Counters {
    pub connects_ok: u64,
    pub connect_failures: u64,
    pub joins_ok: u64,
    pub join_failures: u64,
    pub msgs_sent: u64,
    pub msgs_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub error_frames: u64,
    pub disconnects: u64,
}

impl Counters {
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            connects_ok: self.connects_ok - earlier.connects_ok,
            connect_failures: self.connect_failures - earlier.connect_failures,
            joins_ok: self.joins_ok - earlier.joins_ok,
            join_failures: self.join_failures - earlier.join_failures,
            msgs_sent: self.msgs_sent - earlier.msgs_sent,
            msgs_received: self.msgs_received - earlier.msgs_received,
            bytes_sent: self.bytes_sent - earlier.bytes_sent,
            bytes_received: self.bytes_received - earlier.bytes_received,
            error_frames: self.error_frames - earlier.error_frames,
            disconnects: self.disconnects - earlier.disconnects,
        }
    }
}

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct HistSummary {
    pub count: u64,
    pub min: f64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

fn ms(micros: u64) -> f64 {
    round3(micros as f64 / 1000.0)
}

/// Rounds to three decimals so reports do not show float noise.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

impl HistSummary {
    /// All zeros when the histogram is empty (check `count`).
    pub fn of(h: &Histogram<u64>) -> HistSummary {
        if h.is_empty() {
            return HistSummary::default();
        }
        HistSummary {
            count: h.len(),
            min: ms(h.min()),
            mean: round3(h.mean() / 1000.0),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

/// One bar of a latency histogram for the reports: `count` samples at most
/// `le_ms` (and above the previous bar's bound).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
pub struct Bucket {
    pub le_ms: f64,
    pub count: u64,
}

/// The histogram in logarithmic buckets (each bound 1.25x the previous, from
/// 0.05 ms), with empty buckets at both ends left out.
pub fn log_buckets(h: &Histogram<u64>) -> Vec<Bucket> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<Bucket> = h
        .iter_log(50, 1.25)
        .map(|v| Bucket {
            le_ms: ms(v.value_iterated_to()),
            count: v.count_since_last_iteration(),
        })
        .collect();
    while out.last().is_some_and(|b| b.count == 0) {
        out.pop();
    }
    let first = out.iter().position(|b| b.count > 0).unwrap_or(0);
    out.drain(..first);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_tables_match_the_protocol_names() {
        use protocol::msg::*;
        let msgs = [
            ClientMsg::Hello(Hello {
                version: protocol::PROTOCOL_VERSION,
                token: None,
                resume: None,
                name: None,
            }),
            ClientMsg::Join(Join { map: "m".into() }),
            ClientMsg::Leave(Leave {}),
            ClientMsg::Move(Move {
                seq: 1,
                dx: 0.0,
                dy: 0.0,
            }),
            ClientMsg::Chat(ChatSend { text: "x".into() }),
            ClientMsg::Ping(Ping { t: 0 }),
            ClientMsg::PickUp(PickUp { req: 1, item: 2 }),
        ];
        for msg in &msgs {
            assert_eq!(CLIENT_KINDS[client_kind(msg)], msg.kind());
        }
        let pong = ServerMsg::Pong(Pong { t: 1, server_ms: 2 });
        assert_eq!(SERVER_KINDS[server_kind(&pong)], "pong");
        let err = ServerMsg::Error(ErrorMsg {
            code: 1,
            text: String::new(),
            req: None,
        });
        assert_eq!(SERVER_KINDS[server_kind(&err)], "error");
        let update = ServerMsg::Update(Update::default());
        assert_eq!(SERVER_KINDS[server_kind(&update)], "update");
        assert_eq!(server_kind(&update), UPDATE_KIND);
        let items = ServerMsg::Items(Items::default());
        assert_eq!(SERVER_KINDS[server_kind(&items)], "items");
    }

    #[test]
    fn percentiles_are_in_milliseconds() {
        let stats = Stats::new();
        for us in 1..=1000u64 {
            stats.record(Latency::Rtt, us * 1000); // 1..1000 ms
        }
        let s = HistSummary::of(&stats.run_histogram(Latency::Rtt));
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99 - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max - 1000.0).abs() < 1.0, "{s:?}");
        assert!((s.min - 1.0).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn window_starts_over_but_the_run_keeps_everything() {
        let stats = Stats::new();
        stats.record(Latency::Rtt, 2000);
        stats.record_many(&[(Latency::Rtt, 4000), (Latency::MoveVisible, 100)]);
        let w = stats.take_window();
        assert_eq!(w[Latency::Rtt.index()].count, 2);
        assert_eq!(w[Latency::MoveVisible.index()].count, 1);
        assert_eq!(stats.take_window()[Latency::Rtt.index()].count, 0);
        assert_eq!(stats.run_histogram(Latency::Rtt).len(), 2);
    }

    #[test]
    fn huge_and_zero_values_are_clamped_not_lost() {
        let stats = Stats::new();
        stats.record(Latency::Rtt, 0);
        stats.record(Latency::Rtt, u64::MAX);
        let h = stats.run_histogram(Latency::Rtt);
        assert_eq!(h.len(), 2);
        assert!(h.max() >= MAX_TRACKED_US - MAX_TRACKED_US / 500);
    }

    #[test]
    fn keyed_counts_and_counter_deltas() {
        let stats = Stats::new();
        stats.error_frame(1004);
        stats.error_frame(1004);
        stats.error_frame(9999);
        stats.connect_failed("refused");
        stats.disconnected("4004");
        stats.sent(3, 20);
        let before = Counters::default();
        let c = stats.counters();
        assert_eq!(stats.errors_by_code().get(&1004), Some(&2));
        assert_eq!(stats.errors_by_code().get(&9999), Some(&1));
        assert_eq!(stats.connect_failures_by_reason().get("refused"), Some(&1));
        assert_eq!(c.since(&before).error_frames, 3);
        assert_eq!(c.msgs_sent, 1);
        assert_eq!(c.bytes_sent, 20);
        assert_eq!(c.disconnects, 1);
    }

    #[test]
    fn log_buckets_cover_all_samples() {
        let mut h = new_histogram();
        for v in [100u64, 200, 200, 5000, 90_000] {
            h.record(v).expect("in range");
        }
        let buckets = log_buckets(&h);
        assert_eq!(buckets.iter().map(|b| b.count).sum::<u64>(), 5);
        assert!(buckets.first().is_some_and(|b| b.count > 0));
        assert!(buckets
            .last()
            .is_some_and(|b| b.count > 0 && b.le_ms >= 90.0));
        assert!(log_buckets(&new_histogram()).is_empty());
    }
}
