//! One bot: a tokio task that connects, says hello, joins its map and plays
//! its scenario until the run ends.
//!
//! ```text
//! run_bot ── loop (until stop) ──────────────────────────────────────────────┐
//!   session:  TCP connect -> WebSocket handshake -> hello -> welcome         │
//!             -> join -> joined -> play loop                                  │
//!   play:     select! { stop | frame from server | move tick | ping tick |    │
//!                       chat tick | churn timer }                             │
//!   ends as:  Stop (close 1000, drain) | Churn (drop, reconnect with resume)  │
//!             | Failed / Lost (back off, reconnect)  ──────────────────────────┘
//! ```
//!
//! # Layout
//!
//! - this file: [`Shared`], [`run_bot`] and the session loop above (how a
//!   session ends decides what comes next).
//! - `connect`: TCP, WebSocket handshake, `hello` -> `welcome`, `join` ->
//!   `joined`.
//! - `play`: the play loop, one `select!` over the scenario's clocks and the
//!   server's frames.
//! - `resume`: the churn scenario: drop and resume (the held seat coming
//!   back), or hop to another map.
//! - `measure`: the bot's view of its room and what it measures there (join,
//!   round trip, update interval and jitter, move to visible).
//! - `socket`: frames in and out, close, failure keys.
//!
//! Memory per bot is kept small on purpose (10,000 bots per process): a 4 KiB
//! read buffer, no write buffering, the connect future boxed so its state is
//! freed once connected, nothing from the welcome kept unless the scenario
//! needs it (churn keeps the resume token), and a fixed ring of 16 pending
//! moves. The socket is polled in every state, so tungstenite answers the
//! server's WebSocket pings.
//!
//! Nothing the server sends is trusted: frames that do not decode, ids and
//! times that make no sense are counted and skipped, never unwrapped.

mod connect;
mod durable;
mod measure;
mod play;
mod resume;
mod socket;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::Config;
use crate::ledger::{EventLog, Ledger};
use crate::per_shard::ShardStats;
use crate::placement::Placement;
use crate::scenario::{self, Rng};
use crate::stats::{Latency, Stats};
use resume::Resume;
use socket::{close, Failure, MAX_SERVER_FRAME, WRITE_BUFFER};

/// What every bot shares: the configuration, the stats, the resolved
/// addresses and which one each bot uses.
pub struct Shared {
    pub cfg: Config,
    /// The run's totals.
    pub stats: Stats,
    /// Per `--url`, in order: its resolved address and its own figures.
    pub addrs: Vec<SocketAddr>,
    pub shards: Vec<ShardStats>,
    pub placement: Placement,
    /// Start of the run: the origin of ping times and of the send clocks.
    pub t0: Instant,
    /// The maps of the first welcome (used when `--maps` is not given).
    pub maps: OnceLock<Vec<String>>,
    /// Durable actions sent and how they were answered (empty without
    /// `--durable-rate`).
    pub ledger: Ledger,
    /// `--events`: per-bot events with wall-clock times.
    pub events: Option<EventLog>,
    ws_config: WebSocketConfig,
    warned_rooms: AtomicBool,
    warned_rate: AtomicBool,
}

impl Shared {
    /// One shard (the first `--url`) at `addr`, every bot on it.
    pub fn new(cfg: Config, addr: SocketAddr) -> Shared {
        let placement = Placement::spread(cfg.bots, 1);
        Shared::placed(cfg, vec![addr], placement)
    }

    /// Bots on `addrs` (one per `cfg.targets` entry) as `placement` says.
    pub fn placed(cfg: Config, addrs: Vec<SocketAddr>, placement: Placement) -> Shared {
        let counts = placement.counts(addrs.len());
        let mut remote = vec![0u32; addrs.len()];
        if let Some(owners) = &placement.owners {
            for (i, &s) in placement.shard_of_bot.iter().enumerate() {
                let room = scenario::room_of(i as u32, cfg.rooms) as usize;
                if owners[room] != s as usize {
                    remote[s as usize] += 1;
                }
            }
        }
        let shards = cfg
            .targets
            .iter()
            .zip(counts.iter().zip(&remote))
            .map(|(t, (&bots, &remote))| ShardStats::new(&t.url, bots, remote))
            .collect();
        let ledger_slots = if cfg.durable.rate > 0.0 { cfg.bots } else { 0 };
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(cfg.read_buffer)
            // Every write is flushed at once; the buffer only holds the
            // frames of one write (a move and the ping riding with it).
            .write_buffer_size(WRITE_BUFFER)
            .max_write_buffer_size(1 << 20)
            .max_message_size(Some(MAX_SERVER_FRAME))
            .max_frame_size(Some(MAX_SERVER_FRAME));
        Shared {
            cfg,
            stats: Stats::new(),
            addrs,
            shards,
            placement,
            t0: Instant::now(),
            maps: OnceLock::new(),
            ledger: Ledger::new(ledger_slots),
            events: None,
            ws_config,
            warned_rooms: AtomicBool::new(false),
            warned_rate: AtomicBool::new(false),
        }
    }

    /// Microseconds since the start of the run.
    pub fn now_us(&self) -> u64 {
        self.t0.elapsed().as_micros() as u64
    }

    fn maps(&self) -> &[String] {
        if self.cfg.maps.is_empty() {
            self.maps.get().map(Vec::as_slice).unwrap_or_default()
        } else {
            &self.cfg.maps
        }
    }
}

/// How a session ended, and so what the bot does next.
enum End {
    /// The run is over.
    Stop,
    /// A churn drop: reconnect at once, with the resume token.
    Churn,
    /// Connect or join failed: back off, then try again.
    Failed,
    /// The server closed or the socket broke after joining: back off, retry.
    Lost,
    /// The shard is draining (close 4008): reconnect at once with the
    /// resume token, to the next `--url` when there are several (the
    /// draining shard takes no new players).
    Moved,
}

/// Runs bot `index` until `stop` turns true (or its sender is gone).
pub async fn run_bot(index: u32, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut bot = Bot {
        index,
        shard: shared.placement.shard_of(index),
        rng: Rng::new(shared.cfg.seed, index),
        room: scenario::room_of(index, shared.cfg.rooms),
        seq: 0,
        resume: Resume::default(),
        ever_joined: false,
        req: 0,
        join_refused: 0,
        targets: Vec::new(),
        last_update_us: 0,
        sessions: 0,
        failures: 0,
        stop,
        shared,
    };
    bot.run().await;
}

/// One bot's state across its sessions; each concern's methods live in the
/// submodule named for it.
struct Bot {
    index: u32,
    /// Index of the bot's `--url` (and of its entry in `Shared::shards`):
    /// every session of the bot goes there, a churn hop included, until a
    /// connect fails or a drain (4008) sends it to the next URL.
    shard: usize,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    rng: Rng,
    /// The room slot the bot stands in or heads for.
    room: u32,
    /// Last move seq sent; kept across sessions because the server ignores
    /// a seq that is not above the last one it applied to the player.
    seq: u32,
    /// Churn only: what the next session needs to resume.
    resume: Resume,
    ever_joined: bool,
    /// Last durable request number sent; kept across sessions (the server
    /// refuses a `req` reused for a different give in a resumed session).
    req: u32,
    /// The error code of the last refused join (0: none yet).
    join_refused: u16,
    /// Durable actions only: other bots in the bot's room, as (entity id,
    /// bot index), from the last `joined`.
    targets: Vec<(u32, u32)>,
    /// When the bot last saw an update (µs since the run's start; 0:
    /// never), for the event log's gaps.
    last_update_us: u64,
    sessions: u32,
    /// Consecutive failures, for the back-off.
    failures: u32,
}

impl Bot {
    fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// The figures of the bot's shard URL.
    fn shard(&self) -> &ShardStats {
        &self.shared.shards[self.shard]
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow() || self.stop.has_changed().is_err()
    }

    async fn run(&mut self) {
        // Bounded: every pass is a session or a back-off, and both end at stop.
        while !self.stopping() {
            if self.sessions > 0 {
                self.stats().reconnects.fetch_add(1, Relaxed);
            }
            self.sessions += 1;
            match self.session().await {
                End::Stop => break,
                End::Churn => {
                    self.failures = 0;
                    self.resume.dropped();
                }
                End::Moved => {
                    self.failures = 0;
                    self.resume.dropped();
                    self.stats().moved.fetch_add(1, Relaxed);
                    self.shard = (self.shard + 1) % self.shared.shards.len().max(1);
                }
                End::Failed | End::Lost => {
                    self.failures = self.failures.saturating_add(1);
                    let delay = scenario::backoff(&mut self.rng, self.failures - 1);
                    let mut stop = self.stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped(&mut stop) => break,
                    }
                }
            }
        }
        if self.resume.unfinished() {
            self.stats().resumes_unfinished.fetch_add(1, Relaxed);
        }
    }

    /// A connect failed: with several `--url`s, the next try goes to the
    /// next one, as a load balancer sends a client to a live shard when
    /// one is down (a killed shard's players resume elsewhere).
    fn next_url(&mut self) {
        let urls = self.shared.shards.len();
        if urls > 1 {
            self.shard = (self.shard + 1) % urls;
        }
    }

    /// One connection, from TCP connect to the end of the play loop.
    async fn session(&mut self) -> End {
        let stats = &self.shared.stats;
        stats.connect_attempts.fetch_add(1, Relaxed);
        let resuming = self.resume.resuming();
        let started = Instant::now();
        let mut stop = self.stop.clone();
        // Boxed: the handshake's state is large and only needed until welcome.
        let connect = Box::pin(timeout(self.shared.cfg.connect_timeout, self.connect()));
        let result = tokio::select! {
            r = connect => r,
            _ = stopped(&mut stop) => return End::Stop,
        };
        let (mut ws, welcome) = match result {
            Ok(Ok(pair)) => pair,
            Ok(Err(Failure(reason))) => {
                self.resume.connect_failed(&reason);
                self.stats().connect_failed(&reason);
                self.shard().connect_failures.fetch_add(1, Relaxed);
                self.next_url();
                return End::Failed;
            }
            Err(_) => {
                self.stats().connect_failed("timeout");
                self.shard().connect_failures.fetch_add(1, Relaxed);
                self.next_url();
                return End::Failed;
            }
        };
        let stats = &self.shared.stats;
        stats.connects_ok.fetch_add(1, Relaxed);
        self.shard().connects_ok.fetch_add(1, Relaxed);
        stats.bots_connected.fetch_add(1, Relaxed);
        stats.record(Latency::Connect, started.elapsed().as_micros() as u64);
        self.on_welcome(welcome);

        let end = self.joined_session(&mut ws, resuming).await;
        self.shared.stats.bots_connected.fetch_sub(1, Relaxed);
        if let Some(events) = &self.shared.events {
            match end {
                End::Lost => events.write(self.index, "drop", "lost"),
                End::Moved => events.write(self.index, "drop", "moved"),
                End::Failed => events.write(self.index, "drop", "join_failed"),
                End::Stop | End::Churn => {}
            }
        }
        match end {
            // Connect failures returned above: this one is the join's.
            End::Failed => self.shard().join_failures.fetch_add(1, Relaxed),
            End::Lost => self.shard().drops.fetch_add(1, Relaxed),
            End::Stop | End::Churn | End::Moved => 0,
        };
        match end {
            // A join that failed on a live socket: say goodbye before the
            // retry, as a client would.
            End::Stop | End::Failed => close(&mut ws).await,
            End::Churn => {
                // A dropped socket, as when a phone loses its network: no
                // close frame.
                self.stats().churn_drops.fetch_add(1, Relaxed);
            }
            // The server closed or the socket broke: nothing to say.
            End::Lost | End::Moved => {}
        }
        end
    }
}

/// Resolves once the run is over: `stop` turned true or its sender is gone.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 10,000 bots per process: a bot's task state must stay small. (The
    /// steady state is the play loop; the connect state is boxed.)
    #[test]
    fn a_bot_future_stays_small() {
        let cfg = Config::new("ws://127.0.0.1:9").expect("defaults are valid");
        let addr = "127.0.0.1:9".parse().expect("an address");
        let shared = Arc::new(Shared::new(cfg, addr));
        let (_stop_tx, stop_rx) = watch::channel(false);
        let bot = run_bot(0, shared, stop_rx);
        let size = std::mem::size_of_val(&bot);
        assert!(size <= 4096, "run_bot's future is {size} bytes");
    }
}
