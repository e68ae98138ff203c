//! One session actor per connection: decode, validate, rate-limit, route.
//!
//! ```text
//! socket ─▶ read half ─(StreamHandler)─▶ Session ─▶ RoomRef (cast/call) ─▶ current Room
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
//! ignoring) the client's frames until the client's close or
//! `server.close_linger_ms`,
//! so that unread input does not make the kernel reset the connection and
//! throw away what was queued. When the WebSocket stream gave up (a frame
//! over the limit leaves its payload unread), the session drains the raw
//! socket instead.
//!
//! # Files
//!
//! - `mod.rs`: the actor, its state, the messages it takes from the server
//!   side, its panic boundary and lifecycle.
//! - `frame.rs`: a frame from the socket to its handler (size, decode,
//!   rate class, state check, dispatch); heartbeat and idle timeout.
//! - `hello.rs`: `hello` (auth, resume, takeover), the welcome, the
//!   starter purse.
//! - `room.rs`: `join`, `leave`, `move`, `chat` and a failed room; the room
//!   is reached only through its [`RoomRef`].
//! - `economy.rs`: the durable `give` and `pick_up`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use protocol::msg::{ErrorMsg, Inventory, Join};
use protocol::{encode_server, CloseCode, ErrorCode, ServerMsg};
use tokio::sync::mpsc;

use crate::auth::{Auth, Identity};
use crate::bans::Bans;
use crate::config::{ms, Config};
use crate::dispatcher::{Announcement, Dispatcher, Published, SubscriptionId};
use crate::metrics as m;
use crate::outbound::{Outbound, Socket};
use crate::presence::Presence;
use crate::ratelimit::{Bucket, Strikes};
use crate::room::RoomSupervisor;
use crate::room::{Inputs, RoomEvent, RoomRef};
use crate::store::{ids, PersisterHandle};
use crate::supervise::{catch, FaultActor, FaultPoints};

mod drain;
mod economy;
mod frame;
mod hello;
mod room;

pub use crate::ids::SessionId;
pub use drain::{Drain, DRAIN_TEXT};

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
    /// Bans in force, checked at `hello`.
    pub bans: Arc<Bans>,
    /// The cluster directory, in cluster mode (placement on join and
    /// remote rooms plug in here).
    pub directory: Option<crate::cluster::Directory>,
    /// Cluster mode: the directory, the relay to other shards and this
    /// shard's player entries, for one session per player cluster-wide
    /// (`hello` claims the player; joins and leaves record its room).
    pub cluster: Option<crate::cluster::Link>,
}

/// Messages a session may queue from the server side (announcements, room
/// events, shutdown). Client input never goes through this mailbox.
const SESSION_MAILBOX: usize = 64;

/// The names of the session's panic boundaries: every handler,
/// continuation and timer, each a fault point (`POST /admin/faults/session`
/// with `at`).
pub const FAULT_POINTS: &[&str] = &[
    "frame",
    "claim",
    "welcome",
    "starter",
    "join_reply",
    "give_reply",
    "announcement",
    "room_event",
    "inventory",
    "replaced",
    "shutdown",
    "drain",
    "kill",
    "remove",
    "handshake_timeout",
    "housekeeping",
];

enum State {
    AwaitingHello,
    /// Hello accepted; the login is being checked (cluster mode) and the
    /// player's profile is loading from the store. A `join` sent before
    /// the welcome (hello and join in one flight) is held here and handled
    /// right after it; a later one replaces it. Boxed: the state is in
    /// every session.
    Loading {
        join: Option<Box<Join>>,
    },
    Lobby,
    /// Joined (or joining) a room: the only way to it is this handle.
    InRoom {
        room: RoomRef,
    },
    /// The close frame is queued; input is ignored until the client closes.
    Closing,
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
    /// Boxed, like `sid`: each saves the session's task some bytes for
    /// state read once (the session task's size sets its allocation's size
    /// class, BENCHMARKS.md, issue 12).
    saved_position: Option<Box<(Arc<str>, f32, f32)>>,
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
    sid: Box<str>,
    /// The client closed on purpose (a close frame): a logout, so the
    /// player's directory entry goes with the session (cluster mode).
    logged_out: bool,
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

/// An operator removes the player (admin API): error 2006 (kicked) or
/// 2007 (banned) with `text`, the player leaves its map, close 4007.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Remove {
    pub code: ErrorCode,
    pub text: String,
}

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
        let inputs = Arc::new(Inputs::new(deps.config.rooms.input_queue));
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
            inputs,
            profile_loaded: false,
            socket,
            crashed: false,
            sid: ids::session_id(id, None).into(),
            logged_out: false,
            _done: done,
        }
    }

    fn sid(&self) -> String {
        self.sid.to_string()
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
        let linger = crate::config::ms(self.deps.config.server.close_linger_ms);
        ctx.run_later(linger, |_, ctx| ctx.stop());
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
}

/// The housekeeping timer's tick (heartbeat and idle timeout).
struct Tick;

/// A timer that fires every `every`, cheap to poll before it is due.
/// actix polls every item of a context on each wake-up, and a session
/// wakes for every frame it writes or reads, tens of times a second;
/// `run_interval` would poll a tokio timer each time. This compares the
/// time with the deadline first and polls the timer (which keeps the
/// task's waker from its last poll) only once it is due.
struct Housekeeping {
    every: Duration,
    due: Instant,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The timer was polled since its deadline was last set.
    armed: bool,
}

impl Housekeeping {
    fn new(every: Duration) -> Housekeeping {
        let due = Instant::now() + every;
        Housekeeping {
            every,
            due,
            sleep: Box::pin(tokio::time::sleep_until(due.into())),
            armed: false,
        }
    }
}

impl futures_util::Stream for Housekeeping {
    type Item = Tick;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Tick>> {
        // Before the deadline the timer needs no poll once it has been
        // polled: that registered the waker, the same for the actor's
        // task on every poll.
        if self.armed && Instant::now() < self.due {
            return std::task::Poll::Pending;
        }
        self.armed = true;
        std::task::ready!(Future::poll(self.sleep.as_mut(), cx));
        let next = Instant::now().max(self.due) + self.every;
        self.due = next;
        self.sleep.as_mut().reset(next.into());
        // Registers the waker for the new deadline.
        let _ = Future::poll(self.sleep.as_mut(), cx);
        std::task::Poll::Ready(Some(Tick))
    }
}

impl StreamHandler<Tick> for Session {
    fn handle(&mut self, _: Tick, ctx: &mut Context<Self>) {
        self.guarded(ctx, "housekeeping", |session, ctx| {
            session.housekeeping(ctx)
        });
    }

    /// The timer never ends; the session's end is the connection's.
    fn finished(&mut self, _: &mut Context<Self>) {}
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(SESSION_MAILBOX);
        metrics::gauge!(m::SESSIONS_ACTIVE).increment(1.0);
        let config = &self.deps.config.server;
        ctx.run_later(ms(config.handshake_timeout_ms), |session, ctx| {
            // Only a session still waiting for its hello gets here (and to
            // the fault point of that name): one that said hello in time
            // has nothing to do.
            if matches!(session.state, State::AwaitingHello) {
                session.guarded(ctx, "handshake_timeout", |session, ctx| {
                    session.close(CloseCode::HandshakeTimeout, "no hello in time", ctx);
                });
            }
        });
        let every = ms(config.idle_timeout_ms / 4)
            .min(ms(config.heartbeat_interval_ms / 2))
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        ctx.add_stream(Housekeeping::new(every));
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
            self.logout();
        });
        if let Err(text) = ended {
            metrics::counter!(m::SESSION_PANICS, "at" => "stopped").increment(1);
            tracing::error!(session = self.id, panic = %text, "session panicked while stopping");
        }
        self.deps.presence.disconnected(self.id);
        self.out.close(CloseCode::Normal, "session ended");
    }
}

impl Session {
    /// Record where the player sits (`None`: in no map): in the presence
    /// table, and in cluster mode in its directory entry.
    fn sit(&self, player: &str, room: Option<&crate::ids::RoomId>) {
        self.deps.presence.seated(player, self.id, room.cloned());
        if let Some(cluster) = &self.deps.cluster {
            let room = room.map(ToString::to_string);
            cluster.seats.seated(player, &self.sid, room.as_deref());
        }
    }

    /// A session that ends by the client's close frame (a logout) gives
    /// the player's directory entry up; one that dropped keeps it for a
    /// resume on any shard until it expires.
    fn logout(&self) {
        if let (true, Some(cluster), Some(identity)) =
            (self.logged_out, &self.deps.cluster, &self.identity)
        {
            cluster.seats.gone(&identity.player_id, &self.sid);
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
            // The player is read only when a fault is armed: the identity
            // is one more cold cache line per frame otherwise.
            if self.deps.faults.any_armed() {
                let player = self.identity.as_ref().map(|i| i.player_id.as_str());
                self.deps.faults.trip(FaultActor::Session, what, player);
            }
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
            if let (Some(cluster), Some(identity)) = (&session.deps.cluster, &session.identity) {
                // The newer session holds the player's entry now.
                cluster.seats.replaced(&identity.player_id, &session.sid);
            }
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

impl Handler<Remove> for Session {
    type Result = ();

    fn handle(&mut self, msg: Remove, ctx: &mut Context<Self>) {
        self.guarded(ctx, "remove", |session, ctx| {
            // Removed, not disconnected: the entity goes now rather than
            // waiting for a resume that should not come.
            session.leave_room(false);
            session.refuse(msg.code, &msg.text, CloseCode::Removed, ctx);
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
