//! The HTTP listener: demo page, health, metrics and the admin calls.
//!
//! | route | what |
//! |---|---|
//! | `GET /` , `/demo.js`, `/tessera.js` | the demo client, embedded in the binary |
//! | `GET /client-config.json` | `{"ws_port": N}`: where the demo connects |
//! | `GET /healthz` | `200 {"status":"ok","sessions":N,"rooms":N,"tasks":{...}}`; `status` is `degraded` once a supervised task was given up |
//! | `GET /metrics` | Prometheus text |
//! | `POST /admin/announce` | `{"text": "...", "map": "optional"}`, bearer `admin.token` |
//! | `POST /admin/faults/room` | `{"map": "...", "kind": "panic" or "stall", "ms": N}`; `map` names a room: `lobby` is the map's first instance, `lobby#2` its second; with `"at": "<point>"` a panic is armed at that point of that room instead; needs `admin.fault_injection` |
//! | `POST /admin/faults/session` | `{"player": "...", "kind": "panic" or "drop"}`; with `"at": "<point>"` a panic is armed at that point of the player's session (of the next session to get there without `player`); needs `admin.fault_injection` |
//! | `POST /admin/faults/task?name=<child>` | the supervised task panics at its next poll; needs `admin.fault_injection` |
//!
//! Statuses, one rule for every admin call: 404 when the admin API is off
//! (no `admin.token`: there is nothing to authenticate against) or the
//! named thing (map, room, player, task) does not exist; 401 for a missing
//! or wrong token; 403 for a valid token asking for something this shard's
//! configuration does not allow (fault injection while
//! `admin.fault_injection` is off); 400 for a bad body or query.
//!
//! Every body, request and reply, is a type of [`protocol::admin`], which
//! `tessera-ops` reads too. The admin calls live in `http/admin.rs`,
//! behind one extractor (`Admin<T>`) that checks the token and decodes the
//! body.
//!
//! With `[tls]` configured for it, the listener speaks HTTPS only; each
//! connection's TLS handshake runs in its own task, on first read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::admin::{ClientConfig, Health, HealthStatus, TaskState};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::dispatcher::{announce_frame, Announcement, Dispatcher, PublishReport};
use crate::room::RoomSupervisor;
use crate::session::Sessions;
use crate::supervise::{ChildState, FaultPoints, Tasks};
use crate::tls::Conn;

mod admin;

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
    /// The cluster directory, in cluster mode.
    pub directory: Option<crate::cluster::Directory>,
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
        .route("/metrics", get(metrics))
        .route("/admin/announce", post(admin::announce))
        .route("/admin/faults/room", post(admin::room_fault))
        .route("/admin/faults/session", post(admin::session_fault))
        .route("/admin/faults/task", post(admin::task_fault))
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
