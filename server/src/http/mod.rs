//! The HTTP listener: demo page, health, metrics and the admin calls.
//!
//! | route | what |
//! |---|---|
//! | `GET /` , `/demo.js`, `/tessera.js` | the demo client, embedded in the binary |
//! | `GET /client-config.json` | `{"ws_port": N}`: where the demo connects |
//! | `GET /healthz` | `200 {"status":"ok","sessions":N,"rooms":N,"tasks":{...}}`; `status` is `degraded` once a supervised task was given up |
//! | `GET /healthz/ready` | 200 with the `/healthz` document while the shard accepts players; 503 while it starts or shuts down (a load balancer's readiness probe) |
//! | `GET /metrics` | Prometheus text |
//! | `POST /admin/announce` | `{"text": "...", "map": "optional"}` (operator) |
//! | `GET /admin/whoami` | the caller's token name and role (viewer) |
//! | `GET /admin/shard` | id, version, uptime, state, sessions, rooms, messages in and out per second, tick p99, restarts (viewer) |
//! | `GET /admin/rooms` | every running room (viewer) |
//! | `GET /admin/rooms/{room}` | the room inspector: members, positions, session ages (viewer); `lobby%232` for `lobby#2` |
//! | `POST /admin/rooms/{room}/restart` | restart the room from its snapshot (operator) |
//! | `POST /admin/rooms/{room}/migrate?to=SHARD` | move the room, live, to shard `SHARD` (absent: the placement's pick of the other ready shards); 404 not running anywhere, 409 owned by another shard (named), already moving, bad target or the target refused (the room resumed here), 503 directory trouble (operator) |
//! | `GET /admin/players?q=` | players by id or name (viewer) |
//! | `POST /admin/players/{player}/kick` | `{"reason": "optional"}` or no body (operator) |
//! | `POST /admin/players/{player}/ban` | `{"reason": "...", "duration_s": optional}` (operator) |
//! | `POST /admin/players/{player}/unban` | (operator) |
//! | `GET /admin/dispatcher` | each topic: subscribers, depth, publish rate, drops (viewer) |
//! | `GET /admin/events?since=` | recent events after sequence `since` (viewer) |
//! | `POST /admin/faults/room` | `{"map": "...", "kind": "panic" or "stall", "ms": N}`; `map` names a room: `lobby` is the map's first instance, `lobby#2` its second; with `"at": "<point>"` a panic is armed at that point of that room instead; needs `admin.fault_injection` |
//! | `POST /admin/faults/session` | `{"player": "...", "kind": "panic" or "drop"}`; with `"at": "<point>"` a panic is armed at that point of the player's session (of the next session to get there without `player`); needs `admin.fault_injection` |
//! | `POST /admin/faults/task?name=<child>` | the supervised task panics at its next poll; needs `admin.fault_injection` |
//! | `GET /admin/peers` | the peer tunnels: listeners, peers (state, RTT, bytes), open streams, refusals, SWIM membership; `{"cluster": false, ...}` on a shard outside a cluster; viewer |
//! | `POST /admin/shards/drain` | drain this shard (cluster mode; 409 outside one): draining in the directory, readiness 503, rooms moved live to other shards (stopped and saved when none can take them), sessions closed with notice 6004 and close 4008, leases released, exit; operator, audited |
//!
//! Statuses, one rule for every admin call: 404 when the admin API is off
//! (no `admin.token` nor `admin.tokens`: there is nothing to authenticate
//! against) or the named thing (map, room, player, task) does not exist;
//! 401 for a missing or wrong token; 403 for a valid token asking for
//! something its role or this shard's configuration does not allow (an
//! action with a viewer's token, fault injection while
//! `admin.fault_injection` is off); 400 for a bad body or query; 503 when
//! the store did not take a ban or unban.
//!
//! Every action is audited (`http/actions.rs`): the events ring and the
//! store's `audit` collection get who, what, when and the result.
//!
//! Every body, request and reply, is a type of [`protocol::admin`], which
//! `tessera-ops` reads too. The admin calls live in `http/admin.rs`,
//! behind one extractor (`Admin<T>`) that checks the token and its role
//! and decodes the body; the read views in `http/inspect.rs`, the actions
//! in `http/actions.rs`.
//!
//! With `[tls]` configured for it, the listener speaks HTTPS only; each
//! connection's TLS handshake runs in its own task, on first read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::admin::{ClientConfig, Health, HealthStatus, ShardState, TaskState};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::bans::Bans;
use crate::cluster::membership::Membership;
use crate::cluster::tunnel::PeerHub;
use crate::config::Config;
use crate::dispatcher::{announce_frame, Announcement, Dispatcher, PublishReport};
use crate::events::Events;
use crate::room::RoomSupervisor;
use crate::session::Sessions;
use crate::store::PersisterHandle;
use crate::supervise::{ChildState, FaultPoints, Tasks};
use crate::tls::Conn;

mod actions;
mod admin;
mod inspect;
mod migrate;

pub use actions::{parse_ban, parse_kick};
pub use admin::{parse_announce, parse_room_fault, parse_session_fault};
/// The admin bodies, where they were before [`protocol::admin`] (the fuzz
/// targets name them here).
pub use protocol::admin::{
    AnnounceRequest, RoomFaultKind, RoomFaultRequest, SessionFaultKind, SessionFaultRequest,
};

/// What the HTTP server needs from the shard, passed in by it.
pub struct Deps {
    pub config: Config,
    pub rooms: Arc<RoomSupervisor>,
    pub dispatcher: Arc<Dispatcher>,
    /// Who is connected: `/healthz` counts sessions, the session fault
    /// finds a player's.
    pub presence: Arc<Sessions>,
    /// The supervised tasks: their state for `/healthz`, and fault
    /// injection by name.
    pub tasks: Tasks,
    /// Fault points armed through the admin API (never without
    /// `admin.fault_injection`).
    pub faults: FaultPoints,
    /// TLS on the HTTP listener, when `[tls]` configures it.
    pub tls: Option<TlsAcceptor>,
    /// This shard's id in the admin API (its HTTP address until the
    /// cluster names shards).
    pub shard_id: String,
    /// When the shard started (uptime).
    pub started: Instant,
    /// Starting, ready, stopping: `/healthz/ready` and `/admin/shard`.
    pub life: Arc<Life>,
    /// Recent events, and where admin actions are recorded.
    pub events: Events,
    /// Bans in force (the admin API changes them; sessions check them).
    pub bans: Arc<Bans>,
    /// The store, for bans and the audit trail.
    pub persister: PersisterHandle,
    /// Messages per second for `/admin/shard`.
    rates: inspect::Rates,
    /// The peer hub in cluster mode (`/admin/peers`); `None` for a shard
    /// that runs alone.
    pub peers: Option<PeerHub>,
    /// The cluster directory, in cluster mode.
    pub directory: Option<crate::cluster::Directory>,
    /// Cluster mode: kicks, bans and announcements reach the other
    /// shards through its relay.
    pub cluster: Option<crate::cluster::Link>,
    /// SWIM membership in cluster mode (`/admin/peers` shows it).
    pub membership: Option<Membership>,
}

impl Deps {
    /// What the HTTP server needs, from the shard's parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        rooms: Arc<RoomSupervisor>,
        dispatcher: Arc<Dispatcher>,
        presence: Arc<Sessions>,
        tasks: Tasks,
        faults: FaultPoints,
        tls: Option<TlsAcceptor>,
        shard_id: String,
        life: Arc<Life>,
        events: Events,
        bans: Arc<Bans>,
        persister: PersisterHandle,
    ) -> Deps {
        Deps {
            config,
            rooms,
            dispatcher,
            presence,
            tasks,
            faults,
            tls,
            shard_id,
            started: Instant::now(),
            life,
            events,
            bans,
            persister,
            rates: inspect::Rates::default(),
            peers: None,
            directory: None,
            cluster: None,
            membership: None,
        }
    }

    /// The cluster directory (cluster mode).
    pub fn with_directory(mut self, directory: Option<crate::cluster::Directory>) -> Deps {
        self.directory = directory;
        self
    }

    /// Cluster mode's directory, relay and player entries.
    pub fn with_cluster(mut self, link: Option<crate::cluster::Link>) -> Deps {
        self.cluster = link;
        self
    }

    /// The cluster's membership, shown by `GET /admin/peers`.
    pub fn with_membership(mut self, membership: Option<Membership>) -> Deps {
        self.membership = membership;
        self
    }

    /// The cluster's peer hub, shown by `GET /admin/peers`.
    pub fn with_peers(mut self, hub: Option<PeerHub>) -> Deps {
        self.peers = hub;
        self
    }
}

/// Where the shard is in its life, shared by the shard (which moves it on)
/// and the HTTP server (which reports it), and the way to ask it to drain
/// (`POST /admin/shards/drain`, SIGTERM in cluster mode).
pub struct Life {
    state: AtomicU8,
    drain_requested: AtomicBool,
    /// The shard's stop signal: a drain is a shutdown that says so.
    stop: watch::Sender<bool>,
}

impl Life {
    pub fn new(stop: watch::Sender<bool>) -> Life {
        Life {
            state: AtomicU8::new(0),
            drain_requested: AtomicBool::new(false),
            stop,
        }
    }

    pub fn set(&self, state: ShardState) {
        let n = match state {
            ShardState::Starting => 0,
            ShardState::Ready => 1,
            ShardState::Draining => 2,
            ShardState::Stopping => 3,
        };
        self.state.store(n, Ordering::Release);
    }

    pub fn state(&self) -> ShardState {
        match self.state.load(Ordering::Acquire) {
            0 => ShardState::Starting,
            1 => ShardState::Ready,
            2 => ShardState::Draining,
            _ => ShardState::Stopping,
        }
    }

    /// Ask the shard to drain: stop as at shutdown, but tell clients to
    /// reconnect elsewhere at once (notice 6004, close 4008). False when
    /// it is stopping already without draining. Asking twice is one drain.
    pub fn drain(&self) -> bool {
        if *self.stop.borrow() && !self.draining() {
            return false;
        }
        self.drain_requested.store(true, Ordering::Release);
        self.stop.send_replace(true);
        true
    }

    /// Whether the shutdown under way (or to come) is a drain.
    pub fn draining(&self) -> bool {
        self.drain_requested.load(Ordering::Acquire)
    }
}

impl Deps {
    /// Publish an announcement to every connected session.
    pub fn announce(&self, text: &str) -> PublishReport {
        self.dispatcher
            .announcements
            .publish(Announcement(announce_frame(text)))
    }
}

const INDEX_HTML: &str = include_str!("../../web/index.html");
const DEMO_JS: &str = include_str!("../../web/demo.js");

/// The HTTP listener, shared so that a restarted server keeps its port,
/// with its TLS acceptor when configured.
struct SharedListener {
    tcp: Arc<TcpListener>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
}

impl axum::serve::Listener for SharedListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.tcp.accept().await {
                Ok((tcp, peer)) => {
                    let conn = match &self.tls {
                        None => Conn::plain(tcp),
                        Some(tls) => Conn::lazy_tls(tls, tcp, self.handshake_timeout),
                    };
                    return (conn, peer);
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off, do
                    // not spin.
                    tracing::warn!(error = %err, "http accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Deps>,
    ws_port: u16,
}

pub async fn serve(
    listener: Arc<TcpListener>,
    shared: Arc<Deps>,
    ws_addr: SocketAddr,
    mut stop: watch::Receiver<bool>,
) {
    let listener = SharedListener {
        tcp: listener,
        tls: shared.tls.clone(),
        handshake_timeout: crate::config::ms(shared.config.server.handshake_timeout_ms),
    };
    let state = AppState {
        shared,
        ws_port: ws_addr.port(),
    };
    let app = Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route("/demo.js", get(|| async { javascript(DEMO_JS) }))
        .route(
            "/tessera.js",
            get(|| async { javascript(protocol::JS_CLIENT) }),
        )
        .route("/client-config.json", get(client_config))
        .route("/healthz", get(healthz))
        .route("/healthz/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/admin/announce", post(admin::announce))
        .route("/admin/whoami", get(inspect::whoami))
        .route("/admin/shard", get(inspect::shard))
        .route("/admin/rooms", get(inspect::rooms))
        .route("/admin/rooms/{room}", get(inspect::room))
        .route("/admin/rooms/{room}/restart", post(actions::restart_room))
        .route("/admin/rooms/{room}/migrate", post(migrate::migrate_room))
        .route("/admin/players", get(inspect::players))
        .route("/admin/players/{player}/inventory", get(inspect::inventory))
        .route("/admin/players/{player}/kick", post(actions::kick))
        .route("/admin/players/{player}/ban", post(actions::ban))
        .route("/admin/players/{player}/unban", post(actions::unban))
        .route("/admin/dispatcher", get(inspect::dispatcher))
        .route("/admin/events", get(inspect::events))
        .route("/admin/faults/room", post(admin::room_fault))
        .route("/admin/faults/session", post(admin::session_fault))
        .route("/admin/faults/task", post(admin::task_fault))
        .route("/admin/peers", get(admin::peers))
        .route("/admin/shards/drain", post(actions::drain))
        // The ops console's name for it (ARCHITECTURE, "Seams").
        .route("/admin/drain", post(actions::drain))
        .with_state(state);
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(err) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %err, "http server failed");
    }
}

fn javascript(body: &'static str) -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn client_config(State(state): State<AppState>) -> Json<ClientConfig> {
    Json(ClientConfig {
        ws_port: state.ws_port,
    })
}

/// Readiness: 200 while the shard accepts players, 503 (same body) while
/// it starts or shuts down, so a load balancer sends players elsewhere.
async fn ready(State(state): State<AppState>) -> Response {
    let Json(mut health) = healthz(State(state.clone())).await;
    let message = match state.shared.life.state() {
        ShardState::Ready => None,
        ShardState::Starting => Some("shard starting"),
        ShardState::Draining => Some("shard draining: send new players elsewhere"),
        ShardState::Stopping => Some("shard shutting down"),
    };
    let status = match message {
        None => StatusCode::OK,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    health.message = message.map(str::to_string);
    (status, Json(health)).into_response()
}

async fn healthz(State(state): State<AppState>) -> Json<Health> {
    let sessions = state.shared.presence.session_count();
    let tasks = &state.shared.tasks;
    // A task given up no longer runs: the shard is not whole, and its
    // process manager should know (OTP escalates to the parent).
    let status = if tasks.any_failed() {
        HealthStatus::Degraded
    } else {
        HealthStatus::Ok
    };
    let tasks = tasks
        .states()
        .into_iter()
        .map(|(name, s)| (name, task_state(s)))
        .collect();
    Json(Health {
        status,
        sessions,
        rooms: state.shared.rooms.running(),
        tasks,
        message: None,
    })
}

/// A supervised child's state as the API names it.
fn task_state(state: ChildState) -> TaskState {
    match state {
        ChildState::Up => TaskState::Up,
        ChildState::Restarting => TaskState::Restarting,
        ChildState::Stopped => TaskState::Stopped,
        ChildState::Crashed => TaskState::Crashed,
        ChildState::Failed => TaskState::Failed,
    }
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::prometheus().render(),
    )
        .into_response()
}
