//! The way into a map: TCP connect, WebSocket handshake, `hello` ->
//! `welcome`, then `join` -> `joined` (or, after a resume, the held seat
//! coming back by itself; see `resume`).
//!
//! Only what the scenario needs is kept from the welcome (the map list
//! once per run; the resume token for churn), and the first welcome warns
//! once per run about settings the server will refuse or stretch.

use std::sync::atomic::Ordering::Relaxed;

use protocol::msg::{Hello, Join, Joined, Welcome};
use protocol::{ClientMsg, CloseCode, ServerMsg, PROTOCOL_VERSION};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

use super::measure::{own_seq, Room};
use super::resume::SEAT_WAIT;

/// A join refused with this (3004, the room is unavailable: being moved)
/// is sent again on the same socket after [`JOIN_RETRY`].
const ROOM_UNAVAILABLE: u16 = 3004;
const JOIN_RETRY: std::time::Duration = std::time::Duration::from_millis(200);
use super::socket::{close_key, send, Failure, Incoming, Ws};
use super::{stopped, Bot, End};
use crate::config::Auth;
use crate::{scenario, token};

impl Bot {
    /// TCP, WebSocket handshake, hello; Ok once the welcome is in.
    pub(super) async fn connect(&self) -> Result<(Ws, Welcome), Failure> {
        let tcp = TcpStream::connect(self.shared.addrs[self.shard])
            .await
            .map_err(|e| Failure::io(&e))?;
        // Latency is the measurement: no Nagle delay on small frames.
        tcp.set_nodelay(true).map_err(|e| Failure::io(&e))?;
        let (mut ws, _response) = tokio_tungstenite::client_async_with_config(
            self.shared.cfg.targets[self.shard].url.as_str(),
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
                    self.shard().error_frames.fetch_add(1, Relaxed);
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
            resume: self.resume.token().map(str::to_string),
            name,
        })
    }

    pub(super) fn on_welcome(&mut self, welcome: Welcome) {
        let shared = &self.shared;
        self.resume.welcomed(&shared.stats, &welcome.player_id);
        if shared.cfg.durable.rate > 0.0 {
            shared.ledger.welcomed(self.index, &welcome.player_id);
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
        // Every scenario keeps the token: a bot told to reconnect (a
        // draining shard) or dropped comes back to its seat, as a client
        // does.
        self.resume.keep(welcome.resume_token, welcome.player_id);
    }

    /// Join the bot's room and play until the session ends.
    pub(super) async fn joined_session(&mut self, ws: &mut Ws, resuming: bool) -> End {
        if resuming {
            // A seat held since the drop comes back by itself (see
            // `resume`). Waited for here, not in an `async fn` of its own:
            // nesting one more future costs every bot about 100 bytes.
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
                // The server's own re-join of the seat found the room
                // unavailable (being moved): join it ourselves, with the
                // retries below, on this socket.
                Ok(Err(End::Failed)) if self.join_refused == ROOM_UNAVAILABLE => {}
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
        let deadline = sent + self.shared.cfg.connect_timeout;
        // Bounded by `deadline`: a join refused with 3004 (the room is
        // being moved: a drained or dead owner still holds its lease) is
        // sent again on this socket after JOIN_RETRY, as a client would,
        // rather than dropping the socket and resuming all over again.
        loop {
            let join = ClientMsg::Join(Join { map: map.clone() });
            if let Err(e) = send(ws, self.stats(), &join).await {
                self.stats().join_failed(&Failure::ws(&e).0);
                return End::Failed;
            }
            let mut stop = self.stop.clone();
            let wait = tokio::time::timeout_at(deadline, self.await_joined(ws));
            let joined = tokio::select! {
                r = wait => r,
                _ = stopped(&mut stop) => return End::Stop,
            };
            match joined {
                Ok(Ok(joined)) => return self.enter(ws, sent, joined).await,
                Ok(Err(End::Failed))
                    if self.join_refused == ROOM_UNAVAILABLE
                        && Instant::now() + JOIN_RETRY < deadline =>
                {
                    tokio::select! {
                        _ = tokio::time::sleep(JOIN_RETRY) => {}
                        _ = stopped(&mut stop) => return End::Stop,
                    }
                }
                Ok(Err(end)) => return end,
                Err(_) => {
                    self.stats().join_failed("timeout");
                    return End::Failed;
                }
            }
        }
    }

    /// In a map at last: play there. `since` is when the join was sent.
    async fn enter(&mut self, ws: &mut Ws, since: Instant, joined: Joined) -> End {
        self.failures = 0;
        self.resume.back_in_map();
        self.on_joined(since);
        self.durable_joined(&joined);
        let room = Room::from_joined(&joined);
        self.seq = self.seq.max(own_seq(&joined));
        drop(joined);
        self.play(ws, room).await
    }

    /// Waits for `joined`; Err when the join failed or the socket ended.
    pub(super) async fn await_joined(&mut self, ws: &mut Ws) -> Result<Joined, End> {
        loop {
            match self.read(ws, None).await {
                Incoming::Msg(ServerMsg::Joined(joined)) => return Ok(joined),
                // An error answering a give is the ledger's, not the join's.
                Incoming::Msg(ServerMsg::Error(e)) if e.req.is_some() => {
                    self.stats().error_frame(e.code);
                    self.shard().error_frames.fetch_add(1, Relaxed);
                    self.durable_message(&ServerMsg::Error(e));
                }
                Incoming::Msg(ServerMsg::Error(e)) => {
                    self.stats().error_frame(e.code);
                    self.shard().error_frames.fetch_add(1, Relaxed);
                    self.stats().error_frames_in_failures.fetch_add(1, Relaxed);
                    self.stats().join_failed(&format!("error_{}", e.code));
                    self.join_refused = e.code;
                    return Err(End::Failed);
                }
                // A resumed session may see its old room's traffic first;
                // the ledger wants the inventory right after the welcome.
                Incoming::Msg(msg) => self.durable_message(&msg),
                Incoming::Update(_) | Incoming::Skip => {}
                Incoming::Closed(code) => {
                    self.stats().join_failed(&close_key("close", code));
                    self.stats().disconnected(&close_key("", code));
                    // A drain's 4008 while joining: resume at once on the
                    // next URL, as in the play loop (not a back-off on the
                    // same, draining, shard).
                    if code == Some(CloseCode::Draining.as_u16()) {
                        return Err(End::Moved);
                    }
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
}
