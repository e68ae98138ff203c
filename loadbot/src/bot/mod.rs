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
//! Memory per bot is kept small on purpose (10,000 bots per process): a 4 KiB
//! read buffer, no write buffering, the connect future boxed so its state is
//! freed once connected, nothing from the welcome kept unless the scenario
//! needs it (churn keeps the resume token), and a fixed ring of 16 pending
//! moves. The socket is polled in every state, so tungstenite answers the
//! server's WebSocket pings.
//!
//! Nothing the server sends is trusted: frames that do not decode, ids and
//! times that make no sense are counted and skipped, never unwrapped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::msg::{ChatSend, Hello, Join, Joined, Move, Ping, Welcome};
use protocol::{ClientMsg, ServerMsg, PROTOCOL_VERSION};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{timeout, Instant, Interval};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::config::{Auth, Config, Scenario};
use crate::fastpath::{self, Own};
use crate::scenario::{self, Churn, Rng, Wander};
use crate::stats::{client_kind, server_kind, Latency, Stats, UPDATE_KIND};
use crate::token;

type Ws = WebSocketStream<TcpStream>;

/// Largest server frame a bot decodes. The server's own limit is for client
/// frames; a `joined` in a crowded map can be much larger.
const MAX_SERVER_FRAME: usize = 16 << 20;
/// Time a stopping bot waits for the server's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// After a resume, how long a bot waits for its seat to come back by itself
/// (`joined` right after `welcome`) before it joins on its own.
const SEAT_WAIT: Duration = Duration::from_secs(1);
/// A bot the server moved out of its map without a new `joined` (not a
/// failed room's fallback, which comes at once) joins again after this.
const REJOIN_AFTER: Duration = Duration::from_secs(1);

/// What every bot shares: the configuration, the stats, the resolved address.
pub struct Shared {
    pub cfg: Config,
    pub stats: Stats,
    pub addr: SocketAddr,
    /// Start of the run: the origin of ping times and of the send clocks.
    pub t0: Instant,
    /// The maps of the first welcome (used when `--maps` is not given).
    pub maps: OnceLock<Vec<String>>,
    ws_config: WebSocketConfig,
    warned_rooms: AtomicBool,
    warned_rate: AtomicBool,
}

impl Shared {
    pub fn new(cfg: Config, addr: SocketAddr) -> Shared {
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(cfg.read_buffer)
            // Every message is flushed on its own: no write buffer to keep.
            .write_buffer_size(0)
            .max_write_buffer_size(1 << 20)
            .max_message_size(Some(MAX_SERVER_FRAME))
            .max_frame_size(Some(MAX_SERVER_FRAME));
        Shared {
            cfg,
            stats: Stats::new(),
            addr,
            t0: Instant::now(),
            maps: OnceLock::new(),
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
}

/// Runs bot `index` until `stop` turns true (or its sender is gone).
pub async fn run_bot(index: u32, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut bot = Bot {
        index,
        rng: Rng::new(shared.cfg.seed, index),
        room: scenario::room_of(index, shared.cfg.rooms),
        seq: 0,
        resume: None,
        player_id: None,
        ever_joined: false,
        resume_pending: false,
        sessions: 0,
        failures: 0,
        stop,
        shared,
    };
    bot.run().await;
}

struct Bot {
    index: u32,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    rng: Rng,
    /// The room slot the bot stands in or heads for.
    room: u32,
    /// Last move seq sent; kept across sessions because the server ignores
    /// a seq that is not above the last one it applied to the player.
    seq: u32,
    /// Churn only: the resume token and player id of the last welcome.
    resume: Option<Box<str>>,
    player_id: Option<Box<str>>,
    ever_joined: bool,
    /// A churn drop whose bot is not back in a map yet.
    resume_pending: bool,
    sessions: u32,
    /// Consecutive failures, for the back-off.
    failures: u32,
}

/// The bot's view of the room it stands in.
struct Room {
    you: u32,
    /// The room's tick period in µs (0 when the server said 0 Hz).
    tick_us: u64,
    width: f32,
    height: f32,
    x: f32,
    y: f32,
    last_update_us: Option<u64>,
    pending: MoveRing,
}

impl Room {
    fn from_joined(joined: &Joined) -> Room {
        let own = joined.entities.iter().find(|e| e.id == joined.you);
        let (x, y) = own.map_or((joined.map.width / 2.0, joined.map.height / 2.0), |e| {
            (e.x, e.y)
        });
        Room {
            you: joined.you,
            tick_us: match joined.map.tick_hz {
                0 => 0,
                hz => 1_000_000 / u64::from(hz),
            },
            width: joined.map.width,
            height: joined.map.height,
            x,
            y,
            last_update_us: None,
            pending: MoveRing::default(),
        }
    }
}

/// Latency samples collected while handling one frame, recorded under one
/// lock. Fixed capacity; extra samples are dropped (never more than the ring
/// plus two in practice).
struct Samples {
    items: [(Latency, u64); MoveRing::CAP + 2],
    len: usize,
}

impl Samples {
    fn new() -> Samples {
        Samples {
            items: [(Latency::Rtt, 0); MoveRing::CAP + 2],
            len: 0,
        }
    }

    fn push(&mut self, latency: Latency, micros: u64) {
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = (latency, micros);
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[(Latency, u64)] {
        &self.items[..self.len]
    }
}

/// Moves sent and not yet seen applied: (seq, sent at µs), oldest first.
#[derive(Debug, Default)]
pub(crate) struct MoveRing {
    items: [(u32, u64); MoveRing::CAP],
    start: usize,
    len: usize,
}

impl MoveRing {
    pub(crate) const CAP: usize = 16;

    /// Adds a sent move; returns true when the oldest had to be dropped.
    pub(crate) fn push(&mut self, seq: u32, sent_us: u64) -> bool {
        let overflow = self.len == Self::CAP;
        if overflow {
            self.start = (self.start + 1) % Self::CAP;
            self.len -= 1;
        }
        self.items[(self.start + self.len) % Self::CAP] = (seq, sent_us);
        self.len += 1;
        overflow
    }

    /// The server shows `seq` applied at `now_us`: every pending move with a
    /// seq not above it became visible now. Calls `seen` with each latency.
    pub(crate) fn confirm(&mut self, seq: u32, now_us: u64, mut seen: impl FnMut(u64)) {
        while self.len > 0 {
            let (pending, sent) = self.items[self.start];
            if pending > seq {
                break;
            }
            seen(now_us.saturating_sub(sent));
            self.start = (self.start + 1) % Self::CAP;
            self.len -= 1;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// Why a connect or join did not succeed, as a short stable key.
struct Failure(String);

impl Failure {
    fn io(err: &std::io::Error) -> Failure {
        use std::io::ErrorKind as K;
        let key = match (err.kind(), err.raw_os_error()) {
            (K::ConnectionRefused, _) => "refused".to_string(),
            (K::ConnectionReset, _) => "reset".to_string(),
            (K::AddrNotAvailable, _) | (_, Some(99)) => "no_local_port".to_string(),
            (_, Some(24)) => "too_many_open_files".to_string(),
            (kind, _) => format!("io_{kind:?}").to_lowercase(),
        };
        Failure(key)
    }

    fn ws(err: &WsError) -> Failure {
        match err {
            WsError::Io(e) => Failure::io(e),
            WsError::Http(response) => Failure(format!("http_{}", response.status().as_u16())),
            WsError::ConnectionClosed | WsError::AlreadyClosed => Failure("closed".into()),
            WsError::Protocol(_) => Failure("ws_protocol".into()),
            WsError::Capacity(_) => Failure("frame_too_large".into()),
            _ => Failure("ws_other".into()),
        }
    }
}

/// A frame from the server, decoded, or how the stream ended.
enum Incoming {
    Msg(ServerMsg),
    /// An update read by the fast path: the bot's own entry, if any.
    Update(Option<Own>),
    /// A frame that needs no handling (WebSocket ping/pong, undecodable).
    Skip,
    /// The server closed: its close code, if it sent one.
    Closed(Option<u16>),
    /// The socket failed or ended without a close frame.
    Broken(&'static str),
}

impl Bot {
    fn stats(&self) -> &Stats {
        &self.shared.stats
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
                    self.resume_pending = true;
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
        if self.resume_pending {
            self.stats().resumes_unfinished.fetch_add(1, Relaxed);
        }
    }

    async fn session(&mut self) -> End {
        let stats = &self.shared.stats;
        stats.connect_attempts.fetch_add(1, Relaxed);
        let resuming = self.resume.is_some();
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
                if matches!(reason.as_str(), "error_2002" | "error_2003" | "error_2004") {
                    // A refused resume token: come back as a fresh session.
                    self.resume = None;
                }
                self.stats().connect_failed(&reason);
                return End::Failed;
            }
            Err(_) => {
                self.stats().connect_failed("timeout");
                return End::Failed;
            }
        };
        let stats = &self.shared.stats;
        stats.connects_ok.fetch_add(1, Relaxed);
        stats.bots_connected.fetch_add(1, Relaxed);
        stats.record(Latency::Connect, started.elapsed().as_micros() as u64);
        self.on_welcome(welcome);

        let end = self.joined_session(&mut ws, resuming).await;
        self.shared.stats.bots_connected.fetch_sub(1, Relaxed);
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
            End::Lost => {}
        }
        end
    }

    /// TCP, WebSocket handshake, hello; Ok once the welcome is in.
    async fn connect(&self) -> Result<(Ws, Welcome), Failure> {
        let tcp = TcpStream::connect(self.shared.addr)
            .await
            .map_err(|e| Failure::io(&e))?;
        // Latency is the measurement: no Nagle delay on small frames.
        tcp.set_nodelay(true).map_err(|e| Failure::io(&e))?;
        let (mut ws, _response) = tokio_tungstenite::client_async_with_config(
            self.shared.cfg.target.url.as_str(),
            tcp,
            Some(self.shared.ws_config),
        )
        .await
        .map_err(|e| Failure::ws(&e))?;

        let hello = self.hello();
        send(&mut ws, self.stats(), &hello)
            .await
            .map_err(|e| Failure::ws(&e))?;
        // Bounded by the caller's timeout.
        loop {
            match self.read(&mut ws, None).await {
                Incoming::Msg(ServerMsg::Welcome(welcome)) => return Ok((ws, welcome)),
                Incoming::Msg(ServerMsg::Error(e)) => {
                    self.stats().error_frame(e.code);
                    self.stats().error_frames_in_failures.fetch_add(1, Relaxed);
                    return Err(Failure(format!("error_{}", e.code)));
                }
                Incoming::Msg(_) | Incoming::Update(_) | Incoming::Skip => {}
                Incoming::Closed(code) => return Err(Failure(close_key("close", code))),
                Incoming::Broken(why) => return Err(Failure(why.to_string())),
            }
        }
    }

    fn hello(&self) -> ClientMsg {
        let cfg = &self.shared.cfg;
        let player = format!("{}{}", cfg.name_prefix, self.index);
        let (token, name) = match &cfg.auth {
            Auth::Guest => (None, Some(player)),
            Auth::Token(token) => (Some(token.clone()), None),
            Auth::Mint { secret, ttl } => (
                Some(token::mint(
                    secret.as_bytes(),
                    &player,
                    &player,
                    token::expiry_in(*ttl),
                )),
                None,
            ),
        };
        ClientMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            token,
            resume: self.resume.as_deref().map(str::to_string),
            name,
        })
    }

    fn on_welcome(&mut self, welcome: Welcome) {
        let shared = &self.shared;
        if self.resume.is_some() {
            let same = self.player_id.as_deref() == Some(welcome.player_id.as_str());
            let counter = if same {
                &shared.stats.resumed_same_player
            } else {
                &shared.stats.resumed_new_player
            };
            counter.fetch_add(1, Relaxed);
        }
        if f64::from(welcome.limits.move_per_sec) < shared.cfg.move_hz
            && shared.cfg.scenario.moves()
            && !shared.warned_rate.swap(true, Relaxed)
        {
            tracing::warn!(
                move_hz = shared.cfg.move_hz,
                server_move_per_sec = welcome.limits.move_per_sec,
                "--move-hz is above the server's move rate limit: expect error 1004"
            );
        }
        let maps = shared.maps.get_or_init(|| welcome.maps.clone());
        if shared.cfg.maps.is_empty()
            && (shared.cfg.rooms as usize) > maps.len()
            && !shared.warned_rooms.swap(true, Relaxed)
        {
            tracing::warn!(
                rooms = shared.cfg.rooms,
                maps = maps.len(),
                "more rooms than maps: rooms share maps (room i is maps[i % maps])"
            );
        }
        if shared.cfg.scenario == Scenario::Churn {
            self.resume = Some(welcome.resume_token.into_boxed_str());
            self.player_id = Some(welcome.player_id.into_boxed_str());
        }
    }

    /// Reads the next frame, counting what arrives. Cancel-safe. With the
    /// bot's entity id (`you`), updates take the fast path.
    async fn read(&self, ws: &mut Ws, you: Option<u32>) -> Incoming {
        let stats = self.stats();
        match ws.next().await {
            Some(Ok(Message::Binary(data))) => {
                match you.and_then(|you| fastpath::own_in_update(&data, you)) {
                    Some(Ok(own)) => {
                        stats.received(UPDATE_KIND, data.len());
                        return Incoming::Update(own);
                    }
                    Some(Err(err)) => {
                        stats.decode_errors.fetch_add(1, Relaxed);
                        stats.bytes_received.fetch_add(data.len() as u64, Relaxed);
                        tracing::debug!(%err, "undecodable update");
                        return Incoming::Skip;
                    }
                    None => {}
                }
                match protocol::decode_server(&data, MAX_SERVER_FRAME) {
                    Ok(msg) => {
                        stats.received(server_kind(&msg), data.len());
                        Incoming::Msg(msg)
                    }
                    Err(err) => {
                        stats.decode_errors.fetch_add(1, Relaxed);
                        stats.bytes_received.fetch_add(data.len() as u64, Relaxed);
                        tracing::debug!(%err, "undecodable server frame");
                        Incoming::Skip
                    }
                }
            }
            Some(Ok(Message::Ping(_))) => {
                // tungstenite has queued the pong; it goes out with the next
                // read or write.
                stats.ws_pings.fetch_add(1, Relaxed);
                Incoming::Skip
            }
            Some(Ok(Message::Pong(_))) => Incoming::Skip,
            Some(Ok(Message::Text(_) | Message::Frame(_))) => {
                stats.unexpected_frames.fetch_add(1, Relaxed);
                Incoming::Skip
            }
            Some(Ok(Message::Close(frame))) => Incoming::Closed(frame.map(|f| u16::from(f.code))),
            Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                Incoming::Broken("no_close_frame")
            }
            Some(Err(WsError::Protocol(_))) => Incoming::Broken("no_close_frame"),
            Some(Err(_)) => Incoming::Broken("io_error"),
            None => Incoming::Broken("no_close_frame"),
        }
    }

    /// Join the bot's room and play until the session ends.
    async fn joined_session(&mut self, ws: &mut Ws, resuming: bool) -> End {
        if resuming {
            // A seat held since the drop comes back by itself: `joined` for
            // the old map right after the welcome (then notice 6002).
            let since = Instant::now();
            let mut stop = self.stop.clone();
            let wait = timeout(SEAT_WAIT, self.await_joined(ws));
            let seat = tokio::select! {
                r = wait => r,
                _ = stopped(&mut stop) => return End::Stop,
            };
            match seat {
                Ok(Ok(joined)) => {
                    self.stats().seats_restored.fetch_add(1, Relaxed);
                    return self.enter(ws, since, joined).await;
                }
                Ok(Err(end)) => return end,
                // No seat (its grace period was over): join as usual.
                Err(_) => {}
            }
        }
        let Some(map) = scenario::map_of(self.room, self.shared.maps()).map(str::to_string) else {
            self.stats().join_failed("no_maps");
            return End::Failed;
        };
        let sent = Instant::now();
        if let Err(e) = send(ws, self.stats(), &ClientMsg::Join(Join { map })).await {
            self.stats().join_failed(&Failure::ws(&e).0);
            return End::Failed;
        }
        let mut stop = self.stop.clone();
        let wait = timeout(self.shared.cfg.connect_timeout, self.await_joined(ws));
        let joined = tokio::select! {
            r = wait => r,
            _ = stopped(&mut stop) => return End::Stop,
        };
        let joined = match joined {
            Ok(Ok(joined)) => joined,
            Ok(Err(end)) => return end,
            Err(_) => {
                self.stats().join_failed("timeout");
                return End::Failed;
            }
        };
        self.enter(ws, sent, joined).await
    }

    /// In a map at last: play there. `since` is when the join was sent.
    async fn enter(&mut self, ws: &mut Ws, since: Instant, joined: Joined) -> End {
        self.failures = 0;
        self.resume_pending = false;
        self.on_joined(since);
        let room = Room::from_joined(&joined);
        self.seq = self.seq.max(own_seq(&joined));
        drop(joined);
        self.play(ws, room).await
    }

    /// Waits for `joined`; Err when the join failed or the socket ended.
    async fn await_joined(&self, ws: &mut Ws) -> Result<Joined, End> {
        loop {
            match self.read(ws, None).await {
                Incoming::Msg(ServerMsg::Joined(joined)) => return Ok(joined),
                Incoming::Msg(ServerMsg::Error(e)) => {
                    self.stats().error_frame(e.code);
                    self.stats().error_frames_in_failures.fetch_add(1, Relaxed);
                    self.stats().join_failed(&format!("error_{}", e.code));
                    return Err(End::Failed);
                }
                // A resumed session may see its old room's traffic first.
                Incoming::Msg(_) | Incoming::Update(_) | Incoming::Skip => {}
                Incoming::Closed(code) => {
                    self.stats().join_failed(&close_key("close", code));
                    self.stats().disconnected(&close_key("", code));
                    return Err(End::Lost);
                }
                Incoming::Broken(why) => {
                    self.stats().join_failed(why);
                    self.stats().disconnected(why);
                    return Err(End::Lost);
                }
            }
        }
    }

    fn on_joined(&mut self, sent: Instant) {
        let stats = &self.shared.stats;
        stats.joins_ok.fetch_add(1, Relaxed);
        stats.bots_in_room.fetch_add(1, Relaxed);
        stats.record(Latency::Join, sent.elapsed().as_micros() as u64);
        if !self.ever_joined {
            self.ever_joined = true;
            stats.bots_joined.fetch_add(1, Relaxed);
        }
    }

    /// The scenario loop of a bot standing in a map.
    async fn play(&mut self, ws: &mut Ws, room: Room) -> End {
        let shared = Arc::clone(&self.shared);
        let cfg = &shared.cfg;
        let (t0, index) = (shared.t0, self.index);
        let period = |hz: f64| Duration::from_secs_f64(1.0 / hz);
        let mut ping = scenario::clock(
            t0,
            scenario::phase(index, 1, cfg.ping_interval),
            cfg.ping_interval,
        );
        let mut moves = cfg.scenario.moves().then(|| {
            let p = period(cfg.move_hz);
            scenario::clock(t0, scenario::phase(index, 0, p), p)
        });
        let mut chat = (cfg.scenario == Scenario::Chat).then(|| {
            let p = period(cfg.chat_hz);
            scenario::clock(t0, scenario::phase(index, 2, p), p)
        });
        let mut churn = (cfg.scenario == Scenario::Churn).then(|| {
            Box::pin(tokio::time::sleep(scenario::churn_delay(
                &mut self.rng,
                cfg.churn_interval,
            )))
        });
        let mut wander = Wander::new(&mut self.rng);
        let mut room = Some(room);
        // Set while a hop's join is unanswered: when it was sent.
        let mut hop_sent: Option<Instant> = None;
        // Since when the bot stands in no map without having asked for it.
        let mut out_since: Option<Instant> = None;
        let mut chats: u32 = 0;
        let mut stop = self.stop.clone();

        let end = loop {
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => break End::Stop,
                incoming = self.read(ws, room.as_ref().map(|r| r.you)) => {
                    let msg = match incoming {
                        Incoming::Msg(msg) => msg,
                        Incoming::Update(own) => {
                            if let Some(r) = room.as_mut() {
                                self.on_update(r, own);
                            }
                            continue;
                        }
                        Incoming::Skip => continue,
                        Incoming::Closed(code) => {
                            shared.stats.disconnected(&close_key("", code));
                            break End::Lost;
                        }
                        Incoming::Broken(why) => {
                            shared.stats.disconnected(why);
                            break End::Lost;
                        }
                    };
                    if let Some(end) = self.on_message(msg, &mut room, &mut hop_sent) {
                        break end;
                    }
                    if room.is_none() && hop_sent.is_none() {
                        out_since.get_or_insert_with(Instant::now);
                    }
                }
                _ = tick(&mut moves) => {
                    let Some(r) = room.as_mut().filter(|_| hop_sent.is_none()) else { continue };
                    let (dx, dy) = wander.step(&mut self.rng, r.x, r.y, r.width, r.height);
                    self.seq = self.seq.wrapping_add(1);
                    let msg = ClientMsg::Move(Move { seq: self.seq, dx, dy });
                    if let Err(end) = self.send_or_end(ws, &msg).await {
                        break end;
                    }
                    if r.pending.push(self.seq, shared.now_us()) {
                        shared.stats.moves_unconfirmed.fetch_add(1, Relaxed);
                    }
                }
                _ = ping.tick() => {
                    let msg = ClientMsg::Ping(Ping { t: shared.now_us() });
                    if let Err(end) = self.send_or_end(ws, &msg).await {
                        break end;
                    }
                    if room.is_some() || hop_sent.is_some() {
                        out_since = None;
                    } else if out_since.is_some_and(|t| t.elapsed() >= REJOIN_AFTER) {
                        // The server moved the bot out of its map and into no
                        // other: go back, as a player would.
                        let Some(map) = scenario::map_of(self.room, shared.maps()) else {
                            break End::Failed;
                        };
                        let msg = ClientMsg::Join(Join { map: map.to_string() });
                        if let Err(end) = self.send_or_end(ws, &msg).await {
                            break end;
                        }
                        hop_sent = Some(Instant::now());
                        out_since = None;
                    }
                }
                _ = tick(&mut chat) => {
                    if room.is_none() || hop_sent.is_some() {
                        continue;
                    }
                    chats = chats.wrapping_add(1);
                    let text = format!("{}{} says hi #{chats}", cfg.name_prefix, index);
                    let msg = ClientMsg::Chat(ChatSend { text });
                    if let Err(end) = self.send_or_end(ws, &msg).await {
                        break end;
                    }
                }
                _ = sleep_opt(&mut churn) => {
                    let next = scenario::churn_delay(&mut self.rng, cfg.churn_interval);
                    if let Some(sleep) = churn.as_mut() {
                        sleep.as_mut().reset(Instant::now() + next);
                    }
                    if hop_sent.is_some() {
                        continue;
                    }
                    match Churn::pick(&mut self.rng) {
                        Churn::Reconnect => break End::Churn,
                        Churn::Hop => {
                            let maps = shared.maps();
                            let span = scenario::maps_in_use(
                                cfg.rooms,
                                true,
                                maps.len(),
                            );
                            self.room = scenario::hop_target(&mut self.rng, self.room, span);
                            let Some(map) = scenario::map_of(self.room, maps) else { continue };
                            let msg = ClientMsg::Join(Join { map: map.to_string() });
                            if let Err(end) = self.send_or_end(ws, &msg).await {
                                break end;
                            }
                            shared.stats.map_hops.fetch_add(1, Relaxed);
                            hop_sent = Some(Instant::now());
                        }
                    }
                }
            }
        };
        if let Some(mut room) = room {
            if matches!(end, End::Stop) {
                // Moves in flight when the run ends are not lost, just unseen.
                room.pending = MoveRing::default();
            }
            self.leave_room(room);
        }
        end
    }

    /// Handles one message in the play loop; Some to end the session.
    fn on_message(
        &mut self,
        msg: ServerMsg,
        room: &mut Option<Room>,
        hop_sent: &mut Option<Instant>,
    ) -> Option<End> {
        let stats = &self.shared.stats;
        match msg {
            ServerMsg::Update(update) => {
                if let Some(r) = room.as_mut() {
                    self.on_update(r, fastpath::own_in(&update, r.you));
                }
            }
            ServerMsg::Pong(pong) => {
                let now = self.shared.now_us();
                // `t` is our own clock echoed back; one from the future is
                // not ours, so it is not a sample.
                if pong.t <= now {
                    stats.record(Latency::Rtt, now - pong.t);
                }
            }
            ServerMsg::Joined(joined) => {
                if let Some(old) = room.take() {
                    self.leave_room(old);
                }
                let sent = hop_sent.take().unwrap_or_else(Instant::now);
                self.on_joined(sent);
                self.seq = self.seq.max(own_seq(&joined));
                *room = Some(Room::from_joined(&joined));
            }
            ServerMsg::Left(_) => {
                if let Some(old) = room.take() {
                    self.leave_room(old);
                }
            }
            ServerMsg::Error(e) => {
                stats.error_frame(e.code);
                let join_error = (3001..=3004).contains(&e.code);
                if join_error && hop_sent.take().is_some() {
                    stats.error_frames_in_failures.fetch_add(1, Relaxed);
                    stats.join_failed(&format!("error_{}", e.code));
                    if room.is_none() {
                        // Out of the old map and not in the new one.
                        return Some(End::Failed);
                    }
                }
            }
            ServerMsg::Notice(notice) => stats.notice(notice.code),
            ServerMsg::Welcome(_)
            | ServerMsg::Chat(_)
            | ServerMsg::Announce(_)
            | ServerMsg::Done(_)
            | ServerMsg::Inventory(_)
            | ServerMsg::Items(_) => {}
        }
        None
    }

    fn on_update(&self, room: &mut Room, own: Option<Own>) {
        let now = self.shared.now_us();
        let mut samples = Samples::new();
        if let Some(last) = room.last_update_us {
            let gap = now.saturating_sub(last);
            samples.push(Latency::UpdateInterval, gap);
            if room.tick_us > 0 {
                samples.push(Latency::UpdateJitter, gap.abs_diff(room.tick_us));
            }
        }
        room.last_update_us = Some(now);
        if let Some(own) = own {
            if own.x.is_finite() && own.y.is_finite() {
                room.x = own.x;
                room.y = own.y;
            }
            room.pending
                .confirm(own.seq, now, |us| samples.push(Latency::MoveVisible, us));
        }
        self.shared.stats.record_many(samples.as_slice());
    }

    fn leave_room(&self, room: Room) {
        let stats = &self.shared.stats;
        stats.bots_in_room.fetch_sub(1, Relaxed);
        stats
            .moves_unconfirmed
            .fetch_add(room.pending.len() as u64, Relaxed);
    }

    async fn send_or_end(&self, ws: &mut Ws, msg: &ClientMsg) -> Result<(), End> {
        send(ws, self.stats(), msg).await.map_err(|e| {
            let key = match e {
                WsError::Io(_) => "io_error",
                _ => "no_close_frame",
            };
            self.stats().disconnected(key);
            End::Lost
        })
    }
}

/// The bot's own last applied seq in a `joined` (0 when absent).
fn own_seq(joined: &Joined) -> u32 {
    joined
        .entities
        .iter()
        .find(|e| e.id == joined.you)
        .map_or(0, |e| e.seq)
}

/// Encodes, sends and flushes one message; counts it once it is written.
async fn send(ws: &mut Ws, stats: &Stats, msg: &ClientMsg) -> Result<(), WsError> {
    let bytes = protocol::encode_client(msg);
    let len = bytes.len();
    ws.send(Message::binary(bytes)).await?;
    stats.sent(client_kind(msg), len);
    Ok(())
}

/// Says goodbye (close 1000) and waits briefly for the server's reply.
async fn close(ws: &mut Ws) {
    let frame = CloseFrame {
        code: WsCloseCode::Normal,
        reason: "run over".into(),
    };
    let goodbye = async {
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        // Bounded by CLOSE_GRACE below; frames still in flight are dropped.
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = timeout(CLOSE_GRACE, goodbye).await;
}

/// `close_4004`, or `close_none` when the close frame carried no code.
fn close_key(prefix: &str, code: Option<u16>) -> String {
    let code = code.map_or_else(|| "none".to_string(), |c| c.to_string());
    if prefix.is_empty() {
        code
    } else {
        format!("{prefix}_{code}")
    }
}

/// Resolves once the run is over: `stop` turned true or its sender is gone.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_opt(sleep: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match sleep {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_confirms_in_order_and_drops_the_oldest_when_full() {
        let mut ring = MoveRing::default();
        for seq in 1..=3 {
            assert!(!ring.push(seq, u64::from(seq) * 100));
        }
        let mut seen = Vec::new();
        ring.confirm(2, 1000, |us| seen.push(us));
        assert_eq!(seen, vec![900, 800]);
        assert_eq!(ring.len(), 1);
        ring.confirm(2, 2000, |us| seen.push(us));
        assert_eq!(seen.len(), 2, "seq 3 is not applied yet");
        for seq in 4..=(3 + MoveRing::CAP as u32 - 1) {
            assert!(!ring.push(seq, 0));
        }
        assert!(ring.push(100, 0), "the 17th pending move overflows");
        assert_eq!(ring.len(), MoveRing::CAP);
        let mut n = 0;
        ring.confirm(u32::MAX, 5, |_| n += 1);
        assert_eq!(n, MoveRing::CAP);
        assert_eq!(ring.len(), 0);
    }

    #[test]
    fn close_keys() {
        assert_eq!(close_key("close", Some(4003)), "close_4003");
        assert_eq!(close_key("", None), "none");
        assert_eq!(close_key("", Some(1001)), "1001");
    }

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

    #[test]
    fn samples_never_overflow() {
        let mut s = Samples::new();
        for i in 0..100 {
            s.push(Latency::MoveVisible, i);
        }
        assert_eq!(s.as_slice().len(), MoveRing::CAP + 2);
    }
}
