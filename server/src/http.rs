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
//! With `[tls]` configured for it, the listener speaks HTTPS only; each
//! connection's TLS handshake runs in its own task, on first read.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::dispatcher::{announce_frame, MapBroadcast};
use crate::dispatcher::{Announcement, Dispatcher, PublishReport};
use crate::ids::RoomId;
use crate::room::RoomSupervisor;
use crate::room::{Fault, FaultKind, MAX_INJECTED_STALL};
use crate::session::{Kill, Sessions};
use crate::supervise::{ArmError, FaultActor, FaultPoints, Tasks};
use crate::tls::Conn;

const INDEX_HTML: &str = include_str!("../web/index.html");
const DEMO_JS: &str = include_str!("../web/demo.js");
const TESSERA_JS: &str = include_str!("../../protocol/js/tessera.js");

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
}

impl Deps {
    /// Publish an announcement to every connected session.
    pub fn announce(&self, text: &str) -> PublishReport {
        self.dispatcher
            .announcements
            .publish(Announcement(announce_frame(text)))
    }
}

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
        .route("/tessera.js", get(|| async { javascript(TESSERA_JS) }))
        .route("/client-config.json", get(client_config))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/admin/announce", post(announce))
        .route("/admin/faults/room", post(room_fault))
        .route("/admin/faults/session", post(session_fault))
        .route("/admin/faults/task", post(task_fault))
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

async fn client_config(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ws_port": state.ws_port }))
}

async fn healthz(State(state): State<AppState>) -> Json<serde_json::Value> {
    let sessions = state.shared.presence.session_count();
    let tasks = &state.shared.tasks;
    // A task given up no longer runs: the shard is not whole, and its
    // process manager should know (OTP escalates to the parent).
    let status = if tasks.any_failed() { "degraded" } else { "ok" };
    let tasks: serde_json::Map<String, serde_json::Value> = tasks
        .states()
        .into_iter()
        .map(|(name, s)| (name, s.name().into()))
        .collect();
    Json(serde_json::json!({
        "status": status,
        "sessions": sessions,
        "rooms": state.shared.rooms.running(),
        "tasks": tasks,
    }))
}

async fn metrics() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::prometheus().render(),
    )
        .into_response()
}

/// `POST /admin/announce`'s body.
#[derive(Debug, Deserialize)]
pub struct AnnounceRequest {
    pub text: String,
    #[serde(default)]
    pub map: Option<String>,
}

const ANNOUNCE_BODY: &str = "body must be JSON {\"text\": string, \"map\": optional string}";

/// Decode and check an announce body as the handler does: `text` of 1 to
/// `4 * chat_max_chars` characters. (The fuzz targets drive these parsers
/// with arbitrary bytes; they never panic.)
pub fn parse_announce(body: &[u8], chat_max_chars: u32) -> Result<AnnounceRequest, String> {
    let Json(request) =
        Json::<AnnounceRequest>::from_bytes(body).map_err(|_| ANNOUNCE_BODY.to_string())?;
    let max = chat_max_chars as usize * 4;
    if request.text.is_empty() || request.text.chars().count() > max {
        return Err(format!("text must be 1 to {max} characters"));
    }
    Ok(request)
}

/// A `POST /admin/faults/room` body, checked: a stall of at most
/// [`MAX_INJECTED_STALL`].
pub fn parse_room_fault(body: &[u8]) -> Result<RoomFaultRequest, String> {
    let Json(request) =
        Json::<RoomFaultRequest>::from_bytes(body).map_err(|_| FAULT_BODY.to_string())?;
    if let (RoomFaultKind::Stall, Some(ms)) = (&request.kind, request.ms) {
        if ms > MAX_INJECTED_STALL.as_millis() as u64 {
            return Err(format!(
                "ms must be at most {}",
                MAX_INJECTED_STALL.as_millis()
            ));
        }
    }
    Ok(request)
}

const SESSION_FAULT_BODY: &str =
    "body must be JSON {\"player\": string, \"kind\": \"panic\"|\"drop\", \"at\": optional point}";

/// A `POST /admin/faults/session` body.
pub fn parse_session_fault(body: &[u8]) -> Result<SessionFaultRequest, String> {
    Json::<SessionFaultRequest>::from_bytes(body)
        .map(|Json(request)| request)
        .map_err(|_| SESSION_FAULT_BODY.to_string())
}

/// The body of a request that must carry JSON, as axum's `Json` extractor
/// requires: a JSON content type.
fn json_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<&'a [u8], String> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|mime| {
            let mime = mime.trim().to_ascii_lowercase();
            mime == "application/json"
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        })
        .unwrap_or(false);
    if json {
        Ok(body)
    } else {
        Err("content-type must be application/json".into())
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// `None` when the request carries the admin token, else the response to
/// send.
fn refuse_unauthorized(shared: &Deps, headers: &HeaderMap) -> Option<Response> {
    let expected = &shared.config.admin.token;
    if expected.is_empty() {
        return Some(error(
            StatusCode::NOT_FOUND,
            "admin endpoints are off: set admin.token",
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = given.is_some_and(|g| {
        // Compare in constant time; lengths are not secret.
        g.len() == expected.len()
            && g.bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    (!ok).then(|| error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"))
}

async fn announce(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(response) = refuse_unauthorized(&state.shared, &headers) {
        return response;
    }
    let request = match json_body(&headers, &body)
        .and_then(|body| parse_announce(body, state.shared.config.limits.chat_max_chars))
    {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let report = match &request.map {
        Some(map) if !state.shared.rooms.has_map(map) => {
            return error(StatusCode::NOT_FOUND, &format!("no map named {map:?}"));
        }
        Some(map) => state
            .shared
            .dispatcher
            .map_topic(map)
            .publish(MapBroadcast(announce_frame(&request.text))),
        None => state.shared.announce(&request.text),
    };
    Json(serde_json::json!({
        "delivered": report.delivered,
        "dropped": report.dropped,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomFaultKind {
    Panic,
    Stall,
}

/// `POST /admin/faults/room`'s body.
#[derive(Debug, Deserialize)]
pub struct RoomFaultRequest {
    pub map: String,
    pub kind: RoomFaultKind,
    #[serde(default)]
    pub ms: Option<u64>,
    /// Arm a panic at this point instead of panicking now.
    #[serde(default)]
    pub at: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionFaultKind {
    Panic,
    Drop,
}

/// `POST /admin/faults/session`'s body.
#[derive(Debug, Deserialize)]
pub struct SessionFaultRequest {
    /// Required unless `at` arms a point for the next session to get there.
    #[serde(default)]
    pub player: Option<String>,
    pub kind: SessionFaultKind,
    /// Arm a panic at this point instead of panicking now.
    #[serde(default)]
    pub at: Option<String>,
}

/// Arm a fault point: 200 with what was armed, or 400 naming the points.
fn arm(
    shared: &Deps,
    actor: FaultActor,
    known: &'static [&'static str],
    at: &str,
    target: Option<String>,
) -> Response {
    match shared.faults.arm(actor, known, at, target.clone()) {
        Ok(()) => Json(serde_json::json!({ "armed": at, "target": target })).into_response(),
        Err(e @ ArmError::UnknownPoint { .. }) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        // Checked before by `refuse_faults`: the same rule, 403.
        Err(e @ ArmError::Disabled) => error(StatusCode::FORBIDDEN, &e.to_string()),
    }
}

const AT_NEEDS_PANIC: &str = "\"at\" arms a panic: kind must be \"panic\"";

/// Fault injection needs the admin token and `admin.fault_injection`: a
/// valid token asking while it is off is forbidden (403), not "not found",
/// which these routes keep for an unknown map, player or task.
fn refuse_faults(shared: &Deps, headers: &HeaderMap) -> Option<Response> {
    if let Some(response) = refuse_unauthorized(shared, headers) {
        return Some(response);
    }
    (!shared.config.admin.fault_injection).then(|| {
        error(
            StatusCode::FORBIDDEN,
            "fault injection is off: set admin.fault_injection",
        )
    })
}

const FAULT_BODY: &str =
    "body must be JSON {\"map\": string, \"kind\": \"panic\"|\"stall\", \"ms\": optional number, \"at\": optional point}";

/// Panic or stall a room. A panic answers once the room crashed (so the
/// caller can count restarts); a stall answers at once.
async fn room_fault(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(response) = refuse_faults(&state.shared, &headers) {
        return response;
    }
    let request = match json_body(&headers, &body).and_then(parse_room_fault) {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    if let Some(at) = &request.at {
        if !matches!(request.kind, RoomFaultKind::Panic) {
            return error(StatusCode::BAD_REQUEST, AT_NEEDS_PANIC);
        }
        let map = request.map.split('#').next().unwrap_or_default();
        if request.map.parse::<RoomId>().is_err() || !state.shared.rooms.has_map(map) {
            return error(
                StatusCode::NOT_FOUND,
                &format!("no map named {:?}", request.map),
            );
        }
        return arm(
            &state.shared,
            FaultActor::Room,
            crate::room::FAULT_POINTS,
            at,
            Some(request.map),
        );
    }
    // `map` names a room: the map for its first instance, `map#n` for
    // another (see `crate::ids::RoomId`).
    let room = request
        .map
        .parse::<RoomId>()
        .ok()
        .and_then(|id| state.shared.rooms.current(&id));
    let Some(room) = room else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no room of {:?} is running", request.map),
        );
    };
    match request.kind {
        RoomFaultKind::Panic => {
            let call = room.send(Fault(FaultKind::Panic));
            match tokio::time::timeout(std::time::Duration::from_secs(5), call).await {
                Ok(Ok(crashed)) => Json(serde_json::json!({ "crashed": crashed })).into_response(),
                // Retired or already stopped: the fault reached no room.
                Ok(Err(_)) => Json(serde_json::json!({ "crashed": false })).into_response(),
                Err(_) => error(StatusCode::GATEWAY_TIMEOUT, "the room did not answer"),
            }
        }
        RoomFaultKind::Stall => {
            let ms = request.ms.unwrap_or(3_000);
            let stall = FaultKind::Stall(std::time::Duration::from_millis(ms));
            room.do_send(Fault(stall));
            Json(serde_json::json!({ "stalling_ms": ms })).into_response()
        }
    }
}

#[derive(Deserialize)]
struct TaskFaultQuery {
    name: Option<String>,
}

/// Make a supervised task panic at its next poll. Answers at once (the task
/// may be this very server).
async fn task_fault(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<TaskFaultQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(response) = refuse_faults(&state.shared, &headers) {
        return response;
    }
    let Ok(Query(TaskFaultQuery { name: Some(name) })) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "name the task: /admin/faults/task?name=<task>",
        );
    };
    match state.shared.tasks.inject_panic(&name) {
        Ok(was) => Json(serde_json::json!({ "task": name, "state": was.name() })).into_response(),
        Err(unknown) => error(StatusCode::NOT_FOUND, &unknown.to_string()),
    }
}

/// Make a player's session panic, or drop its connection without a close.
async fn session_fault(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(response) = refuse_faults(&state.shared, &headers) {
        return response;
    }
    let request = match json_body(&headers, &body).and_then(parse_session_fault) {
        Ok(request) => request,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    if let Some(at) = &request.at {
        if !matches!(request.kind, SessionFaultKind::Panic) {
            return error(StatusCode::BAD_REQUEST, AT_NEEDS_PANIC);
        }
        return arm(
            &state.shared,
            FaultActor::Session,
            crate::session::FAULT_POINTS,
            at,
            request.player,
        );
    }
    let Some(player) = request.player else {
        return error(StatusCode::BAD_REQUEST, SESSION_FAULT_BODY);
    };
    let session = state.shared.presence.player_session(&player);
    let Some(session) = session else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("player {player:?} has no session"),
        );
    };
    session.do_send(match request.kind {
        SessionFaultKind::Panic => Kill::Panic,
        SessionFaultKind::Drop => Kill::Drop,
    });
    Json(serde_json::json!({ "ok": true })).into_response()
}
