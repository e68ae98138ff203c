//! One session actor per connection: decode, validate, rate-limit, route.
//!
//! ```text
//! socket ─▶ read half ─(StreamHandler)─▶ Session ─▶ RoomSupervisor::send ─▶ current Room
//!                                           │
//! socket ◀─ writer task ◀── Outbound ◀──────┴── pong, error, welcome, left, announce
//!                              ▲
//!                              └── Room: joined, update, chat, notice
//! ```
//!
//! A frame goes: size limit (tungstenite) -> decode -> rate limit of its
//! class -> state check -> handler. Every refusal is an error frame with a
//! code; malformed frames, text frames and rate-limit hits are strikes, and
//! too many strikes close the socket (1008).
//!
//! Sessions are not restarted: a panic in one closes only its connection
//! (1011) and keeps the player's seat for a resume. Every handler,
//! continuation and timer runs behind that one panic boundary
//! (`Session::guarded`; continuations through `map_guarded`), each under a
//! name that is also a fault point ([`FAULT_POINTS`]). A session whose
//! connection drops (no close frame), or that the server closes, leaves its
//! seat held in the room for the resume grace period; a client that closes
//! on purpose (a close frame) or sent `leave` leaves at once. The player's
//! next session, by resume token or by a fresh login, takes the held seat
//! back; one still open is replaced (2005, close 4006), so a player has one
//! session and one entity.
//!
//! Closing: the close frame is queued after everything pending, the writer
//! half-closes the socket after it, and the session keeps reading (and
//! ignoring) the client's frames until the client's close or [`CLOSE_LINGER`],
//! so that unread input does not make the kernel reset the connection and
//! throw away what was queued. When the WebSocket stream gave up (a frame
//! over the limit leaves its payload unread), the session drains the raw
//! socket instead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use protocol::msg::{
    ChatSend, Done, ErrorMsg, Give, Hello, Inventory, Join, Left, Move, PickUp, Ping, Pong, Welcome,
};
use protocol::{encode_server, ClientMsg, CloseCode, ErrorCode, ServerMsg, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::auth::{unix_now, Auth, Identity};
use crate::config::{ms, Config};
use crate::dispatcher::{Announcement, Dispatcher, Published, SubscriptionId};
use crate::metrics as m;
use crate::outbound::{Outbound, Socket};
use crate::presence::{Presence, ResumeError, Seat, Takeover};
use crate::ratelimit::{Bucket, Strikes};
use crate::room::RoomSupervisor;
use crate::room::{CallError, CastError, Inputs, JoinError, JoinRoom, RoomEvent, RoomRef};
use crate::store::{
    ids, Adjust, Bundle, DurableError, DurableOp, PersisterHandle, PlayerProfile, Rejection, Trade,
};
use crate::supervise::{catch, FaultActor, FaultPoints};
use crate::wire;

use crate::ids::RoomId;
pub use crate::ids::SessionId;

/// The presence table as sessions fill it: each connected session is
/// reached through its actor's address.
pub type Sessions = Presence<Addr<Session>>;

/// What a session needs from the shard, passed in (not looked up): the
/// gateway hands one `Arc<Deps>` to every session it starts.
pub struct Deps {
    pub config: Config,
    pub auth: Auth,
    /// The limits the welcome announces (from `config`, computed once).
    pub limits: protocol::Limits,
    pub rooms: Arc<RoomSupervisor>,
    pub dispatcher: Arc<Dispatcher>,
    pub presence: Arc<Sessions>,
    pub persister: PersisterHandle,
    /// Fault points armed through the admin API.
    pub faults: FaultPoints,
}

/// Messages a session may queue from the server side (announcements, room
/// events, shutdown). Client input never goes through this mailbox.
const SESSION_MAILBOX: usize = 64;

/// How long a closing session waits for the client's close frame.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// The names of the session's panic boundaries: every handler,
/// continuation and timer, each a fault point (`POST /admin/faults/session`
/// with `at`).
pub const FAULT_POINTS: &[&str] = &[
    "frame",
    "welcome",
    "starter",
    "join_reply",
    "give_reply",
    "announcement",
    "room_event",
    "inventory",
    "replaced",
    "shutdown",
    "kill",
    "handshake_timeout",
    "housekeeping",
];

/// The progress counter that says the starter purse was granted.
const STARTER_MARK: &str = "starter_purse";

/// Why a `give` was not done.
enum GiveError {
    NoTarget,
    /// The room is not running (answered like a cast to it).
    RoomGone,
    RoomBusy,
    Store(DurableError),
}

impl GiveError {
    fn describe(&self) -> (ErrorCode, String) {
        match self {
            GiveError::NoTarget => (
                ErrorCode::NoSuchTarget,
                "no other player with that entity id in your map".into(),
            ),
            GiveError::RoomBusy => (
                ErrorCode::RoomUnavailable,
                "the room did not answer; nothing changed".into(),
            ),
            GiveError::RoomGone => (ErrorCode::RoomUnavailable, "room is not running".into()),
            GiveError::Store(DurableError::Rejected(Rejection::Insufficient { what, .. })) => (
                ErrorCode::Insufficient,
                format!("not enough {what}; nothing changed"),
            ),
            GiveError::Store(DurableError::Rejected(r)) => {
                (ErrorCode::InvalidInput, format!("{r}; nothing changed"))
            }
            GiveError::Store(DurableError::Invalid(r)) => (ErrorCode::InvalidInput, r.clone()),
            GiveError::Store(DurableError::InDoubt(_)) => (
                ErrorCode::InDoubt,
                "the store did not confirm in time; retry with the same req".into(),
            ),
            GiveError::Store(
                e @ (DurableError::Unavailable(_)
                | DurableError::Failed(_)
                | DurableError::BadDocument(_)
                | DurableError::ShutDown),
            ) => (ErrorCode::StoreUnavailable, format!("{e}; nothing changed")),
        }
    }
}

enum State {
    AwaitingHello,
    /// Hello accepted; the player's profile is loading from the store.
    Loading,
    Lobby,
    /// Joined (or joining) a room: the only way to it is this handle.
    InRoom {
        room: RoomRef,
    },
    /// The close frame is queued; input is ignored until the client closes.
    Closing,
}

/// The three rate-limited message classes.
#[derive(Clone, Copy)]
enum Class {
    Move,
    Chat,
    Control,
}

impl Class {
    fn of(msg: &ClientMsg) -> Class {
        match msg {
            ClientMsg::Move(_) => Class::Move,
            ClientMsg::Chat(_) => Class::Chat,
            ClientMsg::Hello(_)
            | ClientMsg::Join(_)
            | ClientMsg::Leave(_)
            | ClientMsg::Ping(_)
            | ClientMsg::Give(_)
            | ClientMsg::PickUp(_) => Class::Control,
        }
    }
}

pub struct Session {
    id: SessionId,
    deps: Arc<Deps>,
    out: Arc<Outbound>,
    state: State,
    identity: Option<Arc<Identity>>,
    last_seen: Instant,
    last_ping_sent: Instant,
    buckets: [Bucket; 3],
    strikes: Strikes,
    announcements: Option<SubscriptionId>,
    /// Where the profile says the player stood, used by the first join of
    /// that map.
    saved_position: Option<(Arc<str>, f32, f32)>,
    /// Where moves go: shared with the room of the current join (a fresh
    /// queue per join, so nothing queued for one map reaches another).
    inputs: Arc<Inputs>,
    /// The player's profile could be read: durable actions are possible.
    profile_loaded: bool,
    /// The connection's socket, drained after a close (see the module docs).
    socket: Option<Socket>,
    /// A handler panicked: the connection is closing and nothing else runs.
    crashed: bool,
    /// This session's id, unique across restarts and shards; a resumed
    /// session's carries the op scope of the one it resumes (see
    /// [`crate::store::ids`]).
    sid: String,
    /// Held until the actor is dropped, so shutdown can wait for it.
    _done: mpsc::Sender<()>,
}

/// Another player's action changed this player's inventory.
#[derive(Message)]
#[rtype(result = "()")]
pub struct InventoryChanged(pub Inventory);

/// A newer session of the same player took this one's place: close with
/// 4006. With `seat_taken`, the newer session takes this one's seat over,
/// so it is held rather than left.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Replaced {
    pub seat_taken: bool,
}

/// Ask a session to close because the server is going down.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown;

/// Fault injection (admin API only): end a session as if it crashed.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub enum Kill {
    /// Panic inside the session's panic boundary.
    Panic,
    /// Drop the connection without a close frame, like a network failure.
    Drop,
}

impl Session {
    pub fn new(
        id: SessionId,
        deps: Arc<Deps>,
        out: Arc<Outbound>,
        done: mpsc::Sender<()>,
    ) -> Session {
        let now = Instant::now();
        let l = &deps.config.limits;
        let buckets = [
            Bucket::new(l.move_per_sec, l.move_burst, now),
            Bucket::new(l.chat_per_sec, l.chat_burst, now),
            Bucket::new(l.control_per_sec, l.control_burst, now),
        ];
        let strikes = Strikes::new(l.abuse_strikes, ms(l.abuse_window_ms), now);
        let socket = out.socket();
        Session {
            id,
            deps,
            out,
            state: State::AwaitingHello,
            identity: None,
            last_seen: now,
            last_ping_sent: now,
            buckets,
            strikes,
            announcements: None,
            saved_position: None,
            inputs: Arc::default(),
            profile_loaded: false,
            socket,
            crashed: false,
            sid: ids::session_id(id, None),
            _done: done,
        }
    }

    fn sid(&self) -> String {
        self.sid.clone()
    }

    /// The op id of this session's request `req`: the same for a retry in
    /// this session or in one resumed from it, new after a fresh login or
    /// a restart (so the ledger never takes a new request for a replay).
    fn op_id(&self, req: u32) -> String {
        format!("{}:{req}", ids::op_scope_of(&self.sid))
    }

    fn send(&self, msg: &ServerMsg) {
        let _ = self.out.push_reliable(Bytes::from(encode_server(msg)));
    }

    fn send_error(&self, code: ErrorCode, text: impl Into<String>) {
        metrics::counter!(m::CLIENT_ERRORS, "code" => code.name()).increment(1);
        self.send(&ServerMsg::Error(ErrorMsg::new(code, text)));
    }

    /// An error answering the client's request `req` (`give`, `pick_up`),
    /// which the frame echoes; without one, a plain error.
    fn send_error_to(&self, req: Option<u32>, code: ErrorCode, text: impl Into<String>) {
        let Some(req) = req else {
            return self.send_error(code, text);
        };
        metrics::counter!(m::CLIENT_ERRORS, "code" => code.name()).increment(1);
        self.send(&ServerMsg::Error(ErrorMsg::answering(req, code, text)));
    }

    /// Send `code` with an error frame, then close the socket with `close`.
    fn refuse(&mut self, code: ErrorCode, text: &str, close: CloseCode, ctx: &mut Context<Self>) {
        self.send_error(code, text);
        self.close(close, text, ctx);
    }

    /// Queue the close frame and linger for the client's close. The seat,
    /// if any, is kept for a resume.
    fn close(&mut self, code: CloseCode, reason: &str, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Closing) {
            return;
        }
        tracing::debug!(
            session = self.id,
            code = code.as_u16(),
            reason,
            "closing session"
        );
        self.release_seat();
        self.state = State::Closing;
        self.out.close(code, reason);
        ctx.run_later(CLOSE_LINGER, |_, ctx| ctx.stop());
    }

    fn strike(&mut self, ctx: &mut Context<Self>) {
        if self.strikes.strike(Instant::now()) {
            self.close(
                CloseCode::PolicyViolation,
                "too many protocol violations",
                ctx,
            );
        }
    }

    fn on_frame(&mut self, bytes: &[u8], ctx: &mut Context<Self>) {
        let msg = match protocol::decode_client(bytes, self.deps.config.server.max_frame_bytes) {
            Ok(msg) => msg,
            Err(err) => {
                metrics::counter!(m::CLIENT_MESSAGES, "kind" => "malformed").increment(1);
                self.send_error(err.code(), err.to_string());
                self.strike(ctx);
                return;
            }
        };
        metrics::counter!(m::CLIENT_MESSAGES, "kind" => msg.kind()).increment(1);
        let bucket = &mut self.buckets[Class::of(&msg) as usize];
        if !bucket.allow(Instant::now()) {
            let req = match &msg {
                ClientMsg::Give(give) => Some(give.req),
                ClientMsg::PickUp(pick) => Some(pick.req),
                ClientMsg::Hello(_)
                | ClientMsg::Join(_)
                | ClientMsg::Leave(_)
                | ClientMsg::Move(_)
                | ClientMsg::Chat(_)
                | ClientMsg::Ping(_) => None,
            };
            self.send_error_to(
                req,
                ErrorCode::RateLimited,
                format!("{} over its rate limit", msg.kind()),
            );
            self.strike(ctx);
            return;
        }
        match msg {
            ClientMsg::Hello(hello) => self.on_hello(hello, ctx),
            ClientMsg::Join(join) => self.on_join(join, ctx),
            ClientMsg::Leave(_) => self.on_leave(),
            ClientMsg::Move(mv) => self.on_move(mv),
            ClientMsg::Chat(chat) => self.on_chat(chat),
            ClientMsg::Ping(ping) => self.on_ping(ping),
            ClientMsg::Give(give) => self.on_give(give, ctx),
            ClientMsg::PickUp(pick) => self.on_pick_up(pick),
        }
    }

    fn on_hello(&mut self, hello: Hello, ctx: &mut Context<Self>) {
        if !matches!(self.state, State::AwaitingHello) {
            self.send_error(ErrorCode::IllegalState, "hello was already received");
            return;
        }
        if !PROTOCOL_VERSION.accepts(hello.version) {
            let text = format!(
                "protocol {} is not supported; this server speaks {}",
                hello.version, PROTOCOL_VERSION
            );
            self.refuse(
                ErrorCode::VersionMismatch,
                &text,
                CloseCode::VersionMismatch,
                ctx,
            );
            return;
        }
        let now = unix_now();
        let (identity, resumed) = match self.deps.auth.authenticate(&hello, now) {
            Ok(pair) => pair,
            Err(err) => {
                self.refuse(err.code(), &err.to_string(), CloseCode::AuthFailed, ctx);
                return;
            }
        };
        if let Some(claimed) = &resumed {
            self.sid = ids::session_id(self.id, Some(claimed));
        }
        let sid = self.sid();
        let takeover = match resumed {
            Some(claimed) => {
                match self
                    .deps
                    .presence
                    .resume(&identity.player_id, &claimed, &sid, self.id)
                {
                    Ok(takeover) => takeover,
                    Err(ResumeError::Reused) => {
                        self.refuse(
                            ErrorCode::ResumeRejected,
                            "resume token already used",
                            CloseCode::AuthFailed,
                            ctx,
                        );
                        return;
                    }
                }
            }
            None => self
                .deps
                .presence
                .welcomed(&identity.player_id, &sid, self.id),
        };
        let Takeover { previous, seat } = takeover;
        if let Some(previous) = previous.filter(|p| *p != self.id) {
            let session = self.deps.presence.session(previous);
            if let Some(session) = session {
                // do_send: one message per login, and logins are bounded
                // by the connection cap and the control rate.
                session.do_send(Replaced {
                    seat_taken: seat.as_ref().is_some_and(|s| s.session == previous),
                });
            }
        }
        // Read the profile before the welcome, so it can carry the last map
        // and be followed by the inventory. The store answers within its
        // durable timeout, or at once while it is down; then the player
        // plays without a profile (no durable actions) rather than waiting.
        self.state = State::Loading;
        let identity = Arc::new(identity);
        let load = self
            .deps
            .persister
            .load_profile(&identity.player_id, &identity.name);
        ctx.spawn(
            load.into_actor(self)
                .map_guarded("welcome", move |loaded, session, ctx| {
                    session.welcome(identity, sid, now, seat, loaded, ctx);
                }),
        );
    }

    fn welcome(
        &mut self,
        identity: Arc<Identity>,
        sid: String,
        now: u64,
        seat: Option<Seat>,
        loaded: Result<PlayerProfile, DurableError>,
        ctx: &mut Context<Self>,
    ) {
        if !matches!(self.state, State::Loading) {
            return;
        }
        let profile = match loaded {
            Ok(profile) => Some(profile),
            Err(err) => {
                tracing::warn!(session = self.id, player = %identity.player_id, error = %err, "profile not loaded; playing without durable state");
                None
            }
        };
        let last_map = profile
            .as_ref()
            .map(|p| p.state.map.clone())
            .filter(|m| self.deps.rooms.has_map(m));
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            player_id: identity.player_id.clone(),
            name: identity.name.clone(),
            resume_token: self.deps.auth.resume_token(&identity, &sid, now),
            session_id: sid,
            tick_hz: self.deps.config.rooms.tick_hz,
            limits: self.deps.limits.clone(),
            maps: self.deps.rooms.map_names(),
            last_map: last_map.clone(),
        };
        self.send(&ServerMsg::Welcome(welcome));
        tracing::debug!(session = self.id, player = %identity.player_id, resumed = seat.is_some(), "welcomed");
        self.identity = Some(identity.clone());
        self.state = State::Lobby;
        let recipient = ctx.address().recipient();
        self.announcements = Some(self.deps.dispatcher.announcements.subscribe(recipient));
        if let Some(profile) = profile {
            self.profile_loaded = true;
            if let Some(map) = last_map {
                self.saved_position = Some((Arc::from(map), profile.state.x, profile.state.y));
            }
            // One inventory, the real one: after the starter purse when
            // this login grants it.
            if !self.grant_starter(&identity, &profile, ctx) {
                self.send(&ServerMsg::Inventory(wire::inventory(&profile.inventory)));
            }
        }
        if let Some(seat) = seat {
            // The held seat or nothing: a seat whose grace ran out leaves
            // the player in no map, as PROTOCOL.md says.
            let Some(room) = self.deps.rooms.room_ref(&seat.room) else {
                return;
            };
            self.join_room(room, identity, Some(seat.session), true, 1, ctx);
        }
    }

    /// A player's first login brings a starter purse: one idempotent
    /// adjustment (fixed op id, remembered by a progress marker). Returns
    /// whether it was started; then it sends the inventory when it is done.
    fn grant_starter(
        &mut self,
        identity: &Identity,
        profile: &PlayerProfile,
        ctx: &mut Context<Self>,
    ) -> bool {
        let amount = self.deps.config.economy.starter_currency;
        if amount == 0 || profile.progress.contains_key(STARTER_MARK) {
            return false;
        }
        let before = wire::inventory(&profile.inventory);
        let op = DurableOp::Adjust(Adjust {
            op_id: format!("starter:{}", identity.player_id),
            player: identity.player_id.clone(),
            currency: amount,
            items: Default::default(),
            progress: [(STARTER_MARK.to_string(), 1)].into(),
        });
        let player = identity.player_id.clone();
        let applied = self.deps.persister.durable(op);
        ctx.spawn(applied.into_actor(self).map_guarded(
            "starter",
            move |result, session, _| {
                let inventory = match result {
                    Ok(ack) => ack.inventory(&player).map(wire::inventory).unwrap_or(before),
                    // The next login tries again: the marker was not
                    // written.
                    Err(err) => {
                        tracing::warn!(player = %player, error = %err, "starter purse not granted");
                        before
                    }
                };
                session.send(&ServerMsg::Inventory(inventory));
            },
        ));
        true
    }

    fn on_join(&mut self, join: Join, ctx: &mut Context<Self>) {
        let Some(identity) = self.identity.clone() else {
            self.send_error(ErrorCode::IllegalState, "say hello first");
            return;
        };
        if !self.deps.rooms.has_map(&join.map) {
            self.send_error(
                ErrorCode::UnknownMap,
                format!("no map named {:?}", join.map),
            );
            return;
        }
        if let State::InRoom { room } = &self.state {
            if **room.id().map() == *join.map {
                // Joining the map it stands in: `joined` again for the same
                // entity (in the same instance), with a fresh view.
                let room = room.clone();
                self.join_room(room, identity, Some(self.id), false, 1, ctx);
                return;
            }
            self.leave_room(true);
        }
        let Some(room) = self.deps.rooms.room_for_join(&join.map) else {
            self.send_error(
                ErrorCode::UnknownMap,
                format!("no map named {:?}", join.map),
            );
            return;
        };
        self.join_room(room, identity, None, false, 1, ctx);
    }

    /// Ask `room` to take this player (or give back the seat of session
    /// `resume`; with `seat_only`, that seat or nothing). State moves to
    /// `InRoom` at once so inputs sent right after `joined` route; a failed
    /// join moves it back. A room found full when the map runs several
    /// instances (another join took the last place first) is retried in
    /// the instance the supervisor names next.
    fn join_room(
        &mut self,
        room: RoomRef,
        identity: Arc<Identity>,
        resume: Option<SessionId>,
        seat_only: bool,
        retries: u8,
        ctx: &mut Context<Self>,
    ) {
        self.state = State::InRoom { room: room.clone() };
        self.deps
            .presence
            .seated(&identity.player_id, self.id, Some(room.id().clone()));
        let map = room.id().map().clone();
        let epoch = self.out.begin_room();
        let spawn_at = match self.saved_position.take() {
            Some((saved, x, y)) if saved == map => Some((x, y)),
            other => {
                self.saved_position = other;
                None
            }
        };
        self.inputs = Arc::default();
        let request = JoinRoom {
            session: self.id,
            identity: identity.clone(),
            out: self.out.clone(),
            inputs: self.inputs.clone(),
            epoch,
            events: ctx.address().recipient(),
            resume,
            seat_only,
            spawn_at,
        };
        let timeout = ms(self.deps.config.rooms.call_timeout_ms);
        let reply = {
            let room = room.clone();
            async move { room.call_join(request, timeout).await }
        };
        ctx.spawn(reply.into_actor(self).map_guarded("join_reply", move |reply, session, ctx| {
            let still_joining = matches!(&session.state, State::InRoom { room: current } if current.id() == room.id())
                && session.out.is_member(epoch);
            if !still_joining {
                return;
            }
            match reply {
                Ok(Ok(_)) => {}
                Ok(Err(JoinError::Full)) => {
                    let next = (!seat_only && retries > 0)
                        .then(|| session.deps.rooms.room_for_join(&map))
                        .flatten()
                        .filter(|next| next.id() != room.id());
                    session.abandon_join(&room);
                    match next {
                        Some(next) => session.join_room(next, identity, None, false, retries - 1, ctx),
                        None => session.send_error(ErrorCode::RoomFull, format!("{map} is full")),
                    }
                }
                // The seat's grace ran out: the player stands in no map,
                // and `welcome.last_map` says where to go back to.
                Ok(Err(JoinError::SeatGone)) => session.abandon_join(&room),
                Err(CallError::Closed) | Ok(Err(JoinError::Crashed)) if retries > 0 => {
                    // The room stopped or crashed between lookup and join;
                    // the supervisor has a fresh incarnation by now.
                    session.out.end_room();
                    session.join_room(room, identity, resume, seat_only, retries - 1, ctx);
                }
                Err(_) | Ok(Err(JoinError::Crashed)) => {
                    session.abandon_join(&room);
                    session.send_error(ErrorCode::RoomUnavailable, format!("{map} did not answer"));
                }
            }
        }));
    }

    fn abandon_join(&mut self, room: &RoomRef) {
        self.state = State::Lobby;
        self.out.end_room();
        let _ = room.cast_leave(self.id);
        if let Some(identity) = &self.identity {
            self.deps
                .presence
                .seated(&identity.player_id, self.id, None);
        }
    }

    /// Leave the current room on purpose. With `notify` the player is told
    /// `left`; nothing the room sends after this point reaches it.
    fn leave_room(&mut self, notify: bool) {
        if let State::InRoom { room } = std::mem::replace(&mut self.state, State::Lobby) {
            self.out.end_room();
            if notify {
                self.send(&ServerMsg::Left(Left {
                    map: room.id().map().to_string(),
                }));
            }
            // Membership changes are rate-limited by the control class, so
            // this cannot flood the room; a full mailbox is a lost leave that
            // the seat's grace period cleans up.
            let _ = room.cast_leave(self.id);
            if let Some(identity) = &self.identity {
                self.deps
                    .presence
                    .seated(&identity.player_id, self.id, None);
            }
        }
    }

    /// The connection is going: keep the seat for a resume.
    fn release_seat(&mut self) {
        if let State::InRoom { room } = std::mem::replace(&mut self.state, State::Lobby) {
            let _ = room.cast_disconnected(self.id);
        }
    }

    fn on_leave(&mut self) {
        if matches!(self.state, State::InRoom { .. }) {
            self.leave_room(true);
        } else {
            self.send_error(ErrorCode::IllegalState, "not in a map");
        }
    }

    fn on_move(&mut self, mv: Move) {
        if !matches!(self.state, State::InRoom { .. }) {
            self.send_error(ErrorCode::IllegalState, "join a map before moving");
            return;
        }
        if !(mv.dx.is_finite() && mv.dy.is_finite()) {
            self.send_error(ErrorCode::InvalidInput, "direction must be finite");
            return;
        }
        // In f64 so that huge components keep their direction instead of
        // overflowing to an infinite length.
        let len = f64::from(mv.dx).hypot(f64::from(mv.dy));
        let (dx, dy) = if len > 1.0 {
            (
                (f64::from(mv.dx) / len) as f32,
                (f64::from(mv.dy) / len) as f32,
            )
        } else {
            (mv.dx, mv.dy)
        };
        self.inputs.push(mv.seq, dx, dy);
    }

    fn on_chat(&mut self, chat: ChatSend) {
        let State::InRoom { room } = &self.state else {
            self.send_error(ErrorCode::IllegalState, "join a map before chatting");
            return;
        };
        let chars = chat.text.chars().count();
        let max = self.deps.config.limits.chat_max_chars as usize;
        if chars == 0 || chars > max || chat.text.chars().any(|c| c.is_control()) {
            self.send_error(
                ErrorCode::InvalidInput,
                format!("chat text must be 1 to {max} printable characters"),
            );
            return;
        }
        let sent = room.cast_chat(self.id, chat.text);
        self.after_room_cast(sent, None);
    }

    /// What a cast to the room came to. Casts go through the supervisor's
    /// one sender per room, so a room's mailbox holds at most its capacity
    /// plus one; past that, messages are dropped, counted and the client is
    /// told.
    fn after_room_cast(&mut self, sent: Result<(), CastError>, req: Option<u32>) {
        match sent {
            Ok(()) => {}
            Err(CastError::Full) => {
                metrics::counter!(m::ROOM_INPUTS_DROPPED, "reason" => m::DROPPED_ROOM_BUSY)
                    .increment(1);
                self.send_error_to(
                    req,
                    ErrorCode::RoomUnavailable,
                    "room is busy; message dropped",
                );
            }
            Err(CastError::Closed) => {
                // The room failed or stopped; its failure notice moves us.
                self.send_error_to(
                    req,
                    ErrorCode::RoomUnavailable,
                    "room is not running; join again",
                );
            }
        }
    }

    fn on_ping(&mut self, ping: Ping) {
        if matches!(self.state, State::AwaitingHello) {
            self.send_error(ErrorCode::IllegalState, "say hello first");
            return;
        }
        let server_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.send(&ServerMsg::Pong(Pong {
            t: ping.t,
            server_ms,
        }));
    }

    /// `give`: check it, learn who the target is from the room, then apply
    /// it as one durable trade (both inventories or neither) and answer
    /// `done` only once the store acknowledged it.
    fn on_give(&mut self, give: Give, ctx: &mut Context<Self>) {
        let req = Some(give.req);
        let (State::InRoom { room }, Some(identity)) = (&self.state, &self.identity) else {
            self.send_error_to(req, ErrorCode::IllegalState, "join a map before giving");
            return;
        };
        let max_kinds = self.deps.config.economy.max_give_kinds;
        let valid = give.currency >= 0
            && give.items.values().all(|n| *n >= 0)
            && (give.currency > 0 || give.items.values().any(|n| *n > 0))
            && give.items.len() <= max_kinds
            && give.items.keys().all(|k| !k.is_empty() && k.len() <= 32);
        if !valid {
            self.send_error_to(
                req,
                ErrorCode::InvalidInput,
                format!("give needs amounts of 0 or more, not all 0, at most {max_kinds} item kinds of 1-32 bytes"),
            );
            return;
        }
        if !self.profile_loaded {
            self.send_error_to(
                req,
                ErrorCode::StoreUnavailable,
                "your profile is not loaded; nothing changed",
            );
            return;
        }
        let room = room.clone();
        let me = identity.player_id.clone();
        let trade_id = self.op_id(give.req);
        let persister = self.deps.persister.clone();
        let timeout = ms(self.deps.config.rooms.call_timeout_ms);
        let apply = async move {
            let target = match room.call_who_is(give.to, timeout).await {
                Ok(Some(player)) => player,
                Ok(None) => return Err(GiveError::NoTarget),
                Err(CallError::Closed) => return Err(GiveError::RoomGone),
                Err(CallError::Timeout) => return Err(GiveError::RoomBusy),
            };
            if target == me {
                return Err(GiveError::NoTarget);
            }
            let trade = Trade {
                id: trade_id,
                a: me.clone(),
                b: target.clone(),
                a_gives: Bundle {
                    currency: give.currency,
                    items: give.items.into_iter().filter(|(_, n)| *n > 0).collect(),
                },
                b_gives: Bundle::default(),
            };
            let ack = persister
                .durable(DurableOp::Trade(trade))
                .await
                .map_err(GiveError::Store)?;
            let mine = ack.inventory(&me).map(wire::inventory).unwrap_or_default();
            let theirs = ack.inventory(&target).map(wire::inventory);
            Ok((mine, target, theirs))
        };
        let req = give.req;
        ctx.spawn(
            apply.into_actor(self).map_guarded(
                "give_reply",
                move |result, session, _| match result {
                    Ok((inventory, target, theirs)) => {
                        session.send(&ServerMsg::Done(Done { req, inventory }));
                        if let Some(inventory) = theirs {
                            session.notify_inventory(&target, inventory);
                        }
                    }
                    Err(GiveError::RoomGone) => {
                        session.send_error_to(
                            Some(req),
                            ErrorCode::RoomUnavailable,
                            "room is not running",
                        );
                    }
                    Err(err) => {
                        let (code, text) = err.describe();
                        session.send_error_to(Some(req), code, format!("give {req}: {text}"));
                    }
                },
            ),
        );
    }

    /// `pick_up`: the room owns the ground, so it checks, takes the item and
    /// answers (`done` or an error) through the outbound queue; see
    /// [`crate::room::ground`].
    fn on_pick_up(&mut self, pick: PickUp) {
        let req = Some(pick.req);
        let State::InRoom { room } = &self.state else {
            self.send_error_to(req, ErrorCode::IllegalState, "join a map before picking up");
            return;
        };
        if !self.profile_loaded {
            self.send_error_to(
                req,
                ErrorCode::StoreUnavailable,
                format!(
                    "pick_up {}: your profile is not loaded; nothing changed",
                    pick.req
                ),
            );
            return;
        }
        let sent = room.cast_pick_up(self.id, pick.req, pick.item);
        self.after_room_cast(sent, req);
    }

    /// Tell `player`'s session (on this shard) its inventory changed.
    fn notify_inventory(&self, player: &str, inventory: Inventory) {
        let session = self.deps.presence.player_session(player);
        if let Some(session) = session {
            // A full mailbox loses only this notice; the next login or
            // action shows the right inventory.
            let _ = session.try_send(InventoryChanged(inventory));
        }
    }

    fn on_room_failed(&mut self, failed: RoomId, ctx: &mut Context<Self>) {
        let State::InRoom { room } = &self.state else {
            return;
        };
        if *room.id() != failed {
            return;
        }
        self.state = State::Lobby;
        self.out.end_room();
        self.send_error(
            ErrorCode::RoomFailed,
            format!("{failed} failed; moving you to the fallback map"),
        );
        self.send(&ServerMsg::Left(Left {
            map: failed.map().to_string(),
        }));
        let fallback = self
            .deps
            .rooms
            .fallback_map()
            .filter(|f| **f != **failed.map())
            .and_then(|f| self.deps.rooms.room_for_join(f));
        match (fallback, self.identity.clone()) {
            (Some(fallback), Some(identity)) => {
                self.join_room(fallback, identity, None, false, 1, ctx)
            }
            _ => {
                if let Some(identity) = &self.identity {
                    self.deps
                        .presence
                        .seated(&identity.player_id, self.id, None);
                }
            }
        }
    }

    fn housekeeping(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Closing) {
            return;
        }
        if self.out.is_closing() {
            // The queue closed itself (slow consumer 4005, write failure):
            // its close frame is on its way; linger for the client's close
            // like any other close (`close` keeps the first code queued).
            self.close(CloseCode::InternalError, "write failed", ctx);
            return;
        }
        let config = &self.deps.config.server;
        if self.last_seen.elapsed() >= ms(config.idle_timeout_ms) {
            self.close(CloseCode::IdleTimeout, "idle timeout", ctx);
            return;
        }
        if self.last_ping_sent.elapsed() >= ms(config.heartbeat_interval_ms) {
            self.last_ping_sent = Instant::now();
            self.out.push_ping();
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(SESSION_MAILBOX);
        metrics::gauge!(m::SESSIONS_ACTIVE).increment(1.0);
        let config = &self.deps.config.server;
        ctx.run_later(ms(config.handshake_timeout_ms), |session, ctx| {
            session.guarded(ctx, "handshake_timeout", |session, ctx| {
                if matches!(session.state, State::AwaitingHello) {
                    session.close(CloseCode::HandshakeTimeout, "no hello in time", ctx);
                }
            });
        });
        let every = ms(config.idle_timeout_ms / 4)
            .min(ms(config.heartbeat_interval_ms / 2))
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        ctx.run_interval(every, |session, ctx| {
            session.guarded(ctx, "housekeeping", |session, ctx| {
                session.housekeeping(ctx)
            });
        });
        self.deps.presence.connected(self.id, ctx.address());
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        metrics::gauge!(m::SESSIONS_ACTIVE).decrement(1.0);
        // The end of the line: a panic here is logged and counted, and the
        // socket is closed all the same.
        let ended = catch(|| {
            self.release_seat();
            if let Some(sub) = self.announcements.take() {
                self.deps.dispatcher.announcements.unsubscribe(sub);
            }
        });
        if let Err(text) = ended {
            metrics::counter!(m::SESSION_PANICS, "at" => "stopped").increment(1);
            tracing::error!(session = self.id, panic = %text, "session panicked while stopping");
        }
        self.deps.presence.disconnected(self.id);
        self.out.close(CloseCode::Normal, "session ended");
    }
}

impl StreamHandler<Result<Message, WsError>> for Session {
    fn handle(&mut self, item: Result<Message, WsError>, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        if matches!(self.state, State::Closing) {
            // Drain until the client's close; see the module docs. After an
            // error the stream ends and `finished` drains the raw socket.
            if matches!(item, Ok(Message::Close(_))) {
                ctx.stop();
            }
            return;
        }
        self.guarded(ctx, "frame", |session, ctx| session.on_item(item, ctx));
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        let closing = matches!(self.state, State::Closing) && ctx.state() == ActorState::Running;
        match self.socket.clone() {
            // The stream gave up before the client's close (it ends after
            // any error, e.g. a frame over the limit, whose payload is still
            // unread): read and drop the rest of the input raw until the
            // client's end of stream, within the linger set by `close`.
            Some(socket) if closing => {
                let drain = async move { socket.drain().await };
                ctx.spawn(drain.into_actor(self).map(|(), _, ctx| ctx.stop()));
            }
            _ => ctx.stop(),
        }
    }
}

impl Session {
    fn on_item(&mut self, item: Result<Message, WsError>, ctx: &mut Context<Self>) {
        match item {
            Ok(Message::Binary(bytes)) => self.on_frame(&bytes, ctx),
            Ok(Message::Text(_)) => {
                metrics::counter!(m::CLIENT_MESSAGES, "kind" => "text").increment(1);
                self.send_error(ErrorCode::TextFrame, "frames must be binary MessagePack");
                self.strike(ctx);
            }
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Ok(Message::Close(_)) => {
                // A close frame is a goodbye, not a dropped connection: the
                // entity leaves at once instead of standing for the grace.
                self.leave_room(false);
                ctx.stop();
            }
            Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                let text = format!("frame of {size} bytes is over the limit of {max_size}");
                self.refuse(
                    ErrorCode::FrameTooLarge,
                    &text,
                    CloseCode::MessageTooBig,
                    ctx,
                );
            }
            Err(err) => {
                tracing::debug!(session = self.id, error = %err, "read failed");
                self.release_seat();
                ctx.stop();
            }
        }
    }

    /// Run `f` behind the session's panic boundary. A panic closes this
    /// connection (1011) and keeps the seat for a resume; nothing else
    /// notices. `None` then, and for everything after a crash.
    fn guarded<R>(
        &mut self,
        ctx: &mut Context<Self>,
        what: &'static str,
        f: impl FnOnce(&mut Self, &mut Context<Self>) -> R,
    ) -> Option<R> {
        if self.crashed {
            return None;
        }
        let result = catch(|| {
            let player = self.identity.as_ref().map(|i| i.player_id.as_str());
            self.deps.faults.trip(FaultActor::Session, what, player);
            f(self, ctx)
        });
        match result {
            Ok(result) => Some(result),
            Err(text) => {
                self.crashed = true;
                metrics::counter!(m::SESSION_PANICS, "at" => what).increment(1);
                tracing::error!(session = self.id, at = what, panic = %text, "session crashed; closing its connection");
                // The state may be half-updated; closing reads only where
                // the player sits, to keep that seat for a resume.
                self.close(CloseCode::InternalError, "internal error", ctx);
                None
            }
        }
    }
}

/// Continuations of a session's spawned futures, behind its panic
/// boundary: `.map_guarded(what, f)` is `.map(f)` run through
/// [`Session::guarded`] under `what`.
trait MapGuarded: ActorFuture<Session> + Sized {
    fn map_guarded(
        self,
        what: &'static str,
        f: impl FnOnce(Self::Output, &mut Session, &mut Context<Session>),
    ) -> impl ActorFuture<Session, Output = ()> {
        self.map(move |value, session, ctx| {
            session.guarded(ctx, what, move |session, ctx| f(value, session, ctx));
        })
    }
}

impl<F: ActorFuture<Session>> MapGuarded for F {}

impl Handler<Published<Announcement>> for Session {
    type Result = ();

    fn handle(&mut self, msg: Published<Announcement>, ctx: &mut Context<Self>) {
        self.guarded(ctx, "announcement", |session, _| {
            let _ = session.out.push_reliable(msg.msg.0.clone());
        });
    }
}

impl Handler<RoomEvent> for Session {
    type Result = ();

    fn handle(&mut self, msg: RoomEvent, ctx: &mut Context<Self>) {
        self.guarded(ctx, "room_event", |session, ctx| match msg {
            RoomEvent::Failed { room } => session.on_room_failed(room, ctx),
        });
    }
}

impl Handler<InventoryChanged> for Session {
    type Result = ();

    fn handle(&mut self, msg: InventoryChanged, ctx: &mut Context<Self>) {
        self.guarded(ctx, "inventory", |session, _| {
            session.send(&ServerMsg::Inventory(msg.0))
        });
    }
}

impl Handler<Replaced> for Session {
    type Result = ();

    fn handle(&mut self, msg: Replaced, ctx: &mut Context<Self>) {
        self.guarded(ctx, "replaced", |session, ctx| {
            if !msg.seat_taken {
                // The newer session does not take this entity over: it goes.
                session.leave_room(false);
            }
            session.refuse(
                ErrorCode::SessionReplaced,
                "the player signed in again elsewhere; this session ends",
                CloseCode::Replaced,
                ctx,
            );
        });
    }
}

impl Handler<Shutdown> for Session {
    type Result = ();

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) {
        self.guarded(ctx, "shutdown", |session, ctx| {
            session.close(CloseCode::GoingAway, "server shutting down", ctx)
        });
    }
}

impl Handler<Kill> for Session {
    type Result = ();

    fn handle(&mut self, kill: Kill, ctx: &mut Context<Self>) {
        tracing::warn!(session = self.id, ?kill, "injecting fault");
        self.guarded(ctx, "kill", |session, ctx| match kill {
            Kill::Panic => panic!("injected session fault"),
            Kill::Drop => {
                // Like a cable pulled: no close frame, the seat is kept.
                session.release_seat();
                session.out.abort();
                ctx.stop();
            }
        });
    }
}
