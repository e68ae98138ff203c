//! The admin calls (`/admin/*`), behind one extractor, [`Admin`]: it checks
//! the bearer token (and `admin.fault_injection` for the fault routes),
//! then decodes the request into its [`protocol::admin`] type, so a handler
//! starts from a checked request and only answers it.
//!
//! Statuses, one rule for every call (see the module above for the routes):
//! 404 when the admin API is off or the named thing does not exist, 401 for
//! a missing or wrong token, 403 for a viewer's token on an action (every
//! `POST` needs an operator) and for fault injection while it is off, 400
//! for a bad body or query; every refusal is `{"error": "..."}`.
//!
//! Roles: `admin.token` is an operator named "admin"; `admin.tokens` adds
//! tokens with a role (`viewer` or `operator`) and a name, which the audit
//! trail records for every action. Each request type names the role it
//! needs ([`AdminRequest::ROLE`]), so a route cannot forget to ask.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::admin::{
    AnnounceReply, AnnounceRequest, Armed, ErrorReply, Peers, Role, RoomFaultKind, RoomFaultReply,
    RoomFaultRequest, SessionFaultKind, SessionFaultReply, SessionFaultRequest, TaskFaultQuery,
    TaskFaultReply,
};
use protocol::peer::ChatMsg;

use super::{task_state, AppState};
use crate::config::Config;
use crate::dispatcher::{announce_frame, MapBroadcast};
use crate::ids::RoomId;
use crate::room::{Fault, FaultKind, MAX_INJECTED_STALL};
use crate::session::Kill;

use super::Deps;
use crate::supervise::{ArmError, FaultActor};

/// How long a room panic waits for the room to answer that it crashed.
const ROOM_PANIC_TIMEOUT: Duration = Duration::from_secs(5);

/// What a stall lasts when the body names no `ms`.
const DEFAULT_STALL_MS: u64 = 3_000;

/// A refusal: a status and the message of its `{"error": ...}` body.
pub(super) struct Refusal(pub(super) StatusCode, pub(super) String);

impl Refusal {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal(status, message.into())
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::BAD_REQUEST, message)
    }

    pub(super) fn not_found(message: impl Into<String>) -> Refusal {
        Refusal::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorReply { error: self.1 })).into_response()
    }
}

/// An admin handler's answer: its reply document, or a refusal.
pub(super) type Answer<T> = Result<Json<T>, Refusal>;

/// A request an admin route takes, decoded and checked.
pub(super) trait AdminRequest: Sized {
    /// The route injects faults: it needs `admin.fault_injection` as well
    /// as the token (403 without).
    const FAULT: bool;

    /// The role the route needs: `Viewer` to read, `Operator` to act.
    const ROLE: Role = Role::Operator;

    /// Decode the request from its query string and body; `Err` is the
    /// 400's message.
    fn decode(uri: &Uri, headers: &HeaderMap, body: &[u8], config: &Config)
        -> Result<Self, String>;
}

/// Who called: the token's configured name and role.
#[derive(Debug, Clone)]
pub(super) struct Caller {
    pub name: String,
    pub role: Role,
}

/// The one extractor of every admin handler: `T` decoded, after the token,
/// its role (and, for a fault, `admin.fault_injection`) were checked; with
/// the caller, for the audit trail.
pub(super) struct Admin<T>(pub T, pub Caller);

impl<T: AdminRequest> FromRequest<AppState> for Admin<T> {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let uri = request.uri().clone();
        let headers = request.headers().clone();
        // Read first, as axum's body extractors did: a body over axum's
        // limit is its 413 whoever sends it.
        let body = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let shared = &state.shared;
        let caller = authenticate(shared, &headers).map_err(IntoResponse::into_response)?;
        if T::ROLE == Role::Operator && caller.role != Role::Operator {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} has the viewer role; this call needs an operator",
                    caller.name
                ),
            )
            .into_response());
        }
        if T::FAULT && !shared.config.admin.fault_injection {
            // A valid token asking for what this shard does not allow:
            // forbidden, not "not found", which these routes keep for an
            // unknown map, player or task.
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "fault injection is off: set admin.fault_injection",
            )
            .into_response());
        }
        T::decode(&uri, &headers, &body, &shared.config)
            .map(|request| Admin(request, caller))
            .map_err(|message| Refusal::bad_request(message).into_response())
    }
}

/// The caller of a request whose bearer token is configured.
fn authenticate(shared: &Deps, headers: &HeaderMap) -> Result<Caller, Refusal> {
    let admin = &shared.config.admin;
    if !admin.enabled() {
        // Nothing to authenticate against.
        return Err(Refusal::not_found(
            "admin endpoints are off: set admin.token or admin.tokens",
        ));
    }
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given.and_then(|g| admin.role_of(g)) {
        Some((name, role)) => Ok(Caller {
            name: name.to_string(),
            role,
        }),
        None => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        )),
    }
}

/// The body of a request that must carry JSON, as axum's `Json` extractor
/// requires: a JSON content type.
pub(super) fn json_body<'a>(headers: &HeaderMap, body: &'a [u8]) -> Result<&'a [u8], String> {
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

/// Decode a JSON body as `T`, or the route's own message saying what it
/// takes.
pub(super) fn decode_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    shape: &str,
) -> Result<T, String> {
    Json::<T>::from_bytes(body)
        .map(|Json(request)| request)
        .map_err(|_| shape.to_string())
}

const ANNOUNCE_BODY: &str = "body must be JSON {\"text\": string, \"map\": optional string}";

const ROOM_FAULT_BODY: &str =
    "body must be JSON {\"map\": string, \"kind\": \"panic\"|\"stall\", \"ms\": optional number, \"at\": optional point}";

const SESSION_FAULT_BODY: &str =
    "body must be JSON {\"player\": string, \"kind\": \"panic\"|\"drop\", \"at\": optional point}";

const AT_NEEDS_PANIC: &str = "\"at\" arms a panic: kind must be \"panic\"";

/// Decode and check an announce body as the handler does: `text` of 1 to
/// `4 * chat_max_chars` characters. (The fuzz targets drive these parsers
/// with arbitrary bytes; they never panic.)
pub fn parse_announce(body: &[u8], chat_max_chars: u32) -> Result<AnnounceRequest, String> {
    let request: AnnounceRequest = decode_json(body, ANNOUNCE_BODY)?;
    let max = chat_max_chars as usize * 4;
    if request.text.is_empty() || request.text.chars().count() > max {
        return Err(format!("text must be 1 to {max} characters"));
    }
    Ok(request)
}

/// A `POST /admin/faults/room` body, checked: a stall of at most
/// [`MAX_INJECTED_STALL`].
pub fn parse_room_fault(body: &[u8]) -> Result<RoomFaultRequest, String> {
    let request: RoomFaultRequest = decode_json(body, ROOM_FAULT_BODY)?;
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

/// A `POST /admin/faults/session` body.
pub fn parse_session_fault(body: &[u8]) -> Result<SessionFaultRequest, String> {
    decode_json(body, SESSION_FAULT_BODY)
}

impl AdminRequest for AnnounceRequest {
    const FAULT: bool = false;

    fn decode(_: &Uri, headers: &HeaderMap, body: &[u8], config: &Config) -> Result<Self, String> {
        parse_announce(json_body(headers, body)?, config.limits.chat_max_chars)
    }
}

impl AdminRequest for RoomFaultRequest {
    const FAULT: bool = true;

    fn decode(_: &Uri, headers: &HeaderMap, body: &[u8], _: &Config) -> Result<Self, String> {
        parse_room_fault(json_body(headers, body)?)
    }
}

impl AdminRequest for SessionFaultRequest {
    const FAULT: bool = true;

    fn decode(_: &Uri, headers: &HeaderMap, body: &[u8], _: &Config) -> Result<Self, String> {
        parse_session_fault(json_body(headers, body)?)
    }
}

/// The task's name, from the query string (the route has no body).
pub(super) struct TaskName(String);

impl AdminRequest for TaskName {
    const FAULT: bool = true;

    fn decode(uri: &Uri, _: &HeaderMap, _: &[u8], _: &Config) -> Result<Self, String> {
        match Query::<TaskFaultQuery>::try_from_uri(uri) {
            Ok(Query(TaskFaultQuery { name: Some(name) })) => Ok(TaskName(name)),
            _ => Err("name the task: /admin/faults/task?name=<task>".into()),
        }
    }
}

/// `GET /admin/peers` takes nothing but the token.
pub(super) struct PeersQuery;

impl AdminRequest for PeersQuery {
    const FAULT: bool = false;
    const ROLE: Role = Role::Viewer;

    fn decode(_: &Uri, _: &HeaderMap, _: &[u8], _: &Config) -> Result<Self, String> {
        Ok(PeersQuery)
    }
}

/// The peer tunnels' registries; a shard outside a cluster answers the
/// empty document that says so.
pub(super) async fn peers(
    State(state): State<AppState>,
    Admin(PeersQuery, _): Admin<PeersQuery>,
) -> Answer<Peers> {
    Ok(Json(
        match (&state.shared.membership, &state.shared.peers) {
            (Some(members), _) => members.snapshot(),
            (None, Some(hub)) => hub.snapshot(),
            (None, None) => Peers::standalone(),
        },
    ))
}

pub(super) async fn announce(
    State(state): State<AppState>,
    Admin(request, caller): Admin<AnnounceRequest>,
) -> Answer<AnnounceReply> {
    let shared = &state.shared;
    let report = match &request.map {
        Some(map) if !shared.rooms.has_map(map) => {
            return Err(Refusal::not_found(format!("no map named {map:?}")));
        }
        Some(map) => shared
            .dispatcher
            .map_topic(map)
            .publish(MapBroadcast(announce_frame(&request.text))),
        None => shared.announce(&request.text),
    };
    if let Some(cluster) = &shared.cluster {
        // Once to every other shard, which publishes it to its own
        // sessions (the reply's counts are this shard's).
        let text = request.text.clone();
        cluster.relay.chat_all(&match &request.map {
            Some(map) => ChatMsg::MapBroadcast(protocol::peer::MapBroadcast {
                map: map.clone(),
                text,
            }),
            None => ChatMsg::Announce(protocol::peer::chat::Announce { text }),
        });
    }
    let subject = request.map.as_deref().unwrap_or("every map");
    let done = format!(
        "{:?}: delivered {}, dropped {}",
        request.text, report.delivered, report.dropped
    );
    super::actions::audit(shared, &caller, "announce", subject, &Ok(done)).await;
    Ok(Json(AnnounceReply {
        delivered: report.delivered,
        dropped: report.dropped,
    }))
}

/// Arm a fault point: what was armed, or 400 naming the points.
fn arm(
    shared: &Deps,
    actor: FaultActor,
    known: &'static [&'static str],
    at: &str,
    target: Option<String>,
) -> Result<Armed, Refusal> {
    match shared.faults.arm(actor, known, at, target.clone()) {
        Ok(()) => Ok(Armed {
            armed: at.to_string(),
            target,
        }),
        Err(e @ ArmError::UnknownPoint { .. }) => Err(Refusal::bad_request(e.to_string())),
        // Checked before by the extractor: the same rule, 403.
        Err(e @ ArmError::Disabled) => Err(Refusal::new(StatusCode::FORBIDDEN, e.to_string())),
    }
}

/// Panic or stall a room. A panic answers once the room crashed (so the
/// caller can count restarts); a stall answers at once.
pub(super) async fn room_fault(
    State(state): State<AppState>,
    Admin(request, _): Admin<RoomFaultRequest>,
) -> Answer<RoomFaultReply> {
    let shared = &state.shared;
    if let Some(at) = &request.at {
        if request.kind != RoomFaultKind::Panic {
            return Err(Refusal::bad_request(AT_NEEDS_PANIC));
        }
        let map = request.map.split('#').next().unwrap_or_default();
        if request.map.parse::<RoomId>().is_err() || !shared.rooms.has_map(map) {
            return Err(Refusal::not_found(format!(
                "no map named {:?}",
                request.map
            )));
        }
        let armed = arm(
            shared,
            FaultActor::Room,
            crate::room::FAULT_POINTS,
            at,
            Some(request.map),
        )?;
        return Ok(Json(RoomFaultReply::Armed(armed)));
    }
    // `map` names a room: the map for its first instance, `map#n` for
    // another (see `crate::ids::RoomId`).
    let room = request
        .map
        .parse::<RoomId>()
        .ok()
        .and_then(|id| shared.rooms.current(&id));
    let Some(room) = room else {
        return Err(Refusal::not_found(format!(
            "no room of {:?} is running",
            request.map
        )));
    };
    match request.kind {
        RoomFaultKind::Panic => {
            let call = room.send(Fault(FaultKind::Panic));
            match tokio::time::timeout(ROOM_PANIC_TIMEOUT, call).await {
                Ok(Ok(crashed)) => Ok(Json(RoomFaultReply::Crashed { crashed })),
                // Retired or already stopped: the fault reached no room.
                Ok(Err(_)) => Ok(Json(RoomFaultReply::Crashed { crashed: false })),
                Err(_) => Err(Refusal::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the room did not answer",
                )),
            }
        }
        RoomFaultKind::Stall => {
            let ms = request.ms.unwrap_or(DEFAULT_STALL_MS);
            room.do_send(Fault(FaultKind::Stall(Duration::from_millis(ms))));
            Ok(Json(RoomFaultReply::Stalling { stalling_ms: ms }))
        }
    }
}

/// Make a supervised task panic at its next poll. Answers at once (the task
/// may be this very server).
pub(super) async fn task_fault(
    State(state): State<AppState>,
    Admin(TaskName(name), _): Admin<TaskName>,
) -> Answer<TaskFaultReply> {
    match state.shared.tasks.inject_panic(&name) {
        Ok(was) => Ok(Json(TaskFaultReply {
            task: name,
            state: task_state(was),
        })),
        Err(unknown) => Err(Refusal::not_found(unknown.to_string())),
    }
}

/// Make a player's session panic, or drop its connection without a close.
pub(super) async fn session_fault(
    State(state): State<AppState>,
    Admin(request, _): Admin<SessionFaultRequest>,
) -> Answer<SessionFaultReply> {
    let shared = &state.shared;
    if let Some(at) = &request.at {
        if request.kind != SessionFaultKind::Panic {
            return Err(Refusal::bad_request(AT_NEEDS_PANIC));
        }
        let armed = arm(
            shared,
            FaultActor::Session,
            crate::session::FAULT_POINTS,
            at,
            request.player,
        )?;
        return Ok(Json(SessionFaultReply::Armed(armed)));
    }
    let Some(player) = request.player else {
        return Err(Refusal::bad_request(SESSION_FAULT_BODY));
    };
    let session = shared.presence.player_session(&player);
    let Some(session) = session else {
        return Err(Refusal::not_found(format!(
            "player {player:?} has no session"
        )));
    };
    session.do_send(match request.kind {
        SessionFaultKind::Panic => Kill::Panic,
        SessionFaultKind::Drop => Kill::Drop,
    });
    Ok(Json(SessionFaultReply::Sent { ok: true }))
}
