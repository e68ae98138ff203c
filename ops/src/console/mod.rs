//! The ops console: one web page and a JSON + server-sent-events API over
//! every shard's admin API (nsqadmin's model: every node, every topic,
//! live, and the operator's actions).
//!
//! ```text
//! browser ──bearer token──▶ console (axum) ──same token──▶ shard /admin/* × N
//!   page: embedded HTML/JS/CSS     /api/overview, /api/stream (SSE, ~1 s),
//!   (no CDN, no npm)               /api/room, /api/players, /api/events,
//!                                  POST /api/announce, kick, ban, unban,
//!                                  restart (migrate, drain: cluster only)
//! ```
//!
//! The console holds no credential and no database: the page asks for a
//! token, keeps it in `sessionStorage` and sends it as a bearer header on
//! every call; the console forwards it to the shards, which decide (a
//! viewer's action comes back 403 and is passed on as 403). No cookies, so
//! a cross-site request carries no credential: that is the CSRF answer.
//! It calls only the shards its [`ShardSource`] names, never a URL a
//! request brings.
//!
//! # Layout
//!
//! - `mod.rs`: the router and its handlers.
//! - `source.rs`: [`ShardSource`], the static `--shard` list.
//! - `gather.rs`: calling every shard at once and merging the answers.
//! - `model.rs`: the console's documents ([`Overview`], ...).
//! - `page/`: the page (`index.html`, `app.js`, `style.css`), embedded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::admin::{AnnounceRequest, BanRequest, ErrorReply, KickRequest, PlayersReply};
use serde::Deserialize;
use tokio::net::TcpListener;

mod cluster_view;
mod gather;
pub mod model;
mod source;
mod tunnels;

pub use model::{
    ActionOutcome, ClusterRoom, DirectoryShardView, DirectoryView, EventsView, Overview,
    ShardStatus, TunnelLink,
};
pub use source::{ShardSource, StaticShards};

use crate::client::{CallError, Shard};

const INDEX_HTML: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const STYLE_CSS: &str = include_str!("page/style.css");

/// How the console runs.
pub struct Settings {
    pub source: Arc<dyn ShardSource>,
    /// Each call to a shard gives up after this long.
    pub timeout: Duration,
    /// How often the stream sends a fresh overview.
    pub refresh: Duration,
    /// Events read from the directory's stream per events request
    /// (`--cluster-events`; the newest that many).
    pub cluster_events: usize,
}

#[derive(Clone)]
struct Console(Arc<Settings>, Arc<tunnels::Rates>);

impl Console {
    /// One overview: every shard's answers, the tunnels and (with a
    /// directory) the directory's view, read on the blocking pool.
    async fn overview(&self, shards: &[Shard]) -> Result<Overview, CallError> {
        let source = Arc::clone(&self.0.source);
        let now = now_ms();
        let directory = gather::blocking(move || Ok(source.directory()))
            .await
            .ok()
            .flatten()
            .map(|read| {
                let lease_ms = read.as_ref().map_or(0, |s| s.lease_ms);
                cluster_view::directory_view(read, lease_ms, now)
            });
        let ctx = gather::Cluster {
            cluster: self.0.source.cluster(),
            rates: &self.1,
            directory,
        };
        gather::overview(shards, ctx, now).await
    }

    fn shards(&self, token: &str) -> Vec<Shard> {
        gather::clients(&self.0.source.shards(), token, self.0.timeout)
    }

    /// The shard at `url`, if the source names it (the console never calls
    /// a URL a request brings).
    fn shard(&self, url: &str, token: &str) -> Result<Shard, ApiError> {
        let url = url.trim_end_matches('/');
        self.shards(token)
            .into_iter()
            .find(|s| s.url() == url)
            .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, format!("no shard {url:?} here")))
    }
}

/// A refusal: `{"error": ...}` with a status.
struct ApiError(StatusCode, String);

impl From<CallError> for ApiError {
    fn from(e: CallError) -> ApiError {
        // The shard's own 4xx passes through (a viewer's 403 stays a 403);
        // a shard that did not answer is a bad gateway.
        let status = e
            .status
            .filter(|s| (400..500).contains(s))
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        ApiError(status, e.message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorReply { error: self.1 })).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;

/// The caller's bearer token; 401 without one (nothing is forwarded).
fn token(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "send the shards' admin token as a bearer header".into(),
            )
        })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The console's routes.
pub fn router(settings: Settings) -> Router {
    let console = Console(Arc::new(settings), Arc::default());
    Router::new()
        .route("/", get(|| async { Html(INDEX_HTML) }))
        .route(
            "/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route("/style.css", get(|| async { asset("text/css", STYLE_CSS) }))
        .route("/api/whoami", get(whoami))
        .route("/api/overview", get(overview))
        .route("/api/stream", get(stream))
        .route("/api/room", get(room))
        .route("/api/players", get(players))
        .route("/api/events", get(events))
        .route("/api/announce", post(announce))
        .route("/api/players/{player}/kick", post(kick))
        .route("/api/players/{player}/ban", post(ban))
        .route("/api/players/{player}/unban", post(unban))
        .route("/api/rooms/restart", post(restart))
        .route("/api/rooms/migrate", post(migrate))
        .route("/api/shards/drain", post(drain))
        .with_state(console)
}

/// Serve the console on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    settings: Settings,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(settings))
        .with_graceful_shutdown(stop)
        .await
}

/// Bind `addr` (port 0 picks one).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, format!("{kind}; charset=utf-8")),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        body,
    )
        .into_response()
}

/// The token's name and role, from the first shard that answers.
async fn whoami(
    State(c): State<Console>,
    headers: HeaderMap,
) -> ApiResult<protocol::admin::WhoAmI> {
    let shards = c.shards(&token(&headers)?);
    let mut last = CallError {
        status: None,
        message: "no shards configured".into(),
    };
    for reply in gather::on_each(&shards, |s| s.whoami()).await {
        match reply {
            Ok(who) => return Ok(Json(who)),
            Err(e) => last = e,
        }
    }
    Err(last.into())
}

async fn overview(State(c): State<Console>, headers: HeaderMap) -> ApiResult<Overview> {
    let shards = c.shards(&token(&headers)?);
    Ok(Json(c.overview(&shards).await?))
}

/// Server-sent events: an `overview` every refresh interval; an `error`
/// event and the end of the stream when the token is refused.
async fn stream(State(c): State<Console>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = token(&headers)?;
    let every = c.0.refresh;
    // The first overview at once, then one per interval; none after a
    // refusal.
    let events = futures_util::stream::unfold(
        (c, token, Some(Duration::ZERO)),
        move |(c, token, wait)| async move {
            tokio::time::sleep(wait?).await;
            let shards = c.shards(&token);
            let (event, next) = match c.overview(&shards).await {
                Ok(view) => (
                    SseEvent::default()
                        .event("overview")
                        .json_data(&view)
                        .unwrap_or_else(|_| SseEvent::default().event("error").data("encoding")),
                    Some(every),
                ),
                Err(e) => (SseEvent::default().event("error").data(e.to_string()), None),
            };
            Some((Ok::<_, std::convert::Infallible>(event), (c, token, next)))
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Deserialize)]
struct RoomQuery {
    shard: String,
    room: String,
}

async fn room(
    State(c): State<Console>,
    headers: HeaderMap,
    Query(q): Query<RoomQuery>,
) -> ApiResult<protocol::admin::RoomDetail> {
    let shard = c.shard(&q.shard, &token(&headers)?)?;
    Ok(Json(gather::blocking(move || shard.room(&q.room)).await?))
}

#[derive(Deserialize)]
struct PlayersQuery {
    #[serde(default)]
    q: String,
}

async fn players(
    State(c): State<Console>,
    headers: HeaderMap,
    Query(q): Query<PlayersQuery>,
) -> ApiResult<PlayersReply> {
    let shards = c.shards(&token(&headers)?);
    let results = gather::on_each(&shards, move |s| s.players(&q.q)).await;
    let mut players = Vec::new();
    let mut truncated = false;
    let mut first_error = None;
    for r in results {
        match r {
            Ok(reply) => {
                truncated |= reply.truncated;
                players.extend(reply.players);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let (true, Some(e)) = (players.is_empty(), first_error) {
        return Err(e.into());
    }
    Ok(Json(PlayersReply { players, truncated }))
}

async fn events(State(c): State<Console>, headers: HeaderMap) -> ApiResult<EventsView> {
    let shards = c.shards(&token(&headers)?);
    let mut view = gather::events(&shards).await?;
    let source = Arc::clone(&c.0.source);
    let count = c.0.cluster_events;
    match gather::blocking(move || Ok(source.events(count))).await {
        Ok(Some(Ok(events))) => view.cluster_events = events,
        Ok(Some(Err(e))) => view.errors.push(format!("directory: {e}")),
        Ok(None) | Err(_) => {}
    }
    Ok(Json(view))
}

async fn announce(
    State(c): State<Console>,
    headers: HeaderMap,
    Json(request): Json<AnnounceRequest>,
) -> ApiResult<Vec<ActionOutcome>> {
    let shards = c.shards(&token(&headers)?);
    let results = gather::on_each(&shards, move |s| {
        s.announce(&request.text, request.map.as_deref())
    })
    .await;
    Ok(Json(gather::outcomes(&shards, results, |r| {
        format!("delivered {}, dropped {}", r.delivered, r.dropped)
    })?))
}

/// A kick goes to every shard; the one holding the player's session acts.
/// Each is first asked to act only if the player's socket is there
/// (`local_only`), so the holder answers `kicked`: were the others to
/// relay it too, a relayed kick could reach the player first and the
/// holder would answer "not connected". The directory's list of shards
/// (`--redis`) names every live shard, so that is all. A static list may
/// leave out the player's shard: when none of it holds the player, the
/// first listed shard in cluster mode is asked to relay the kick through
/// the directory, and its answer stands for it.
async fn kick(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(player): Path<String>,
    body: Option<Json<KickRequest>>,
) -> ApiResult<Vec<ActionOutcome>> {
    let shards = c.shards(&token(&headers)?);
    let reason = body.and_then(|Json(b)| b.reason);
    let (who, why) = (player.clone(), reason.clone());
    let mut results = gather::on_each(&shards, move |s| s.kick(&who, why.as_deref(), true)).await;
    if !c.0.source.cluster() && !results.iter().any(Result::is_ok) {
        for (shard, result) in shards.iter().zip(results.iter_mut()) {
            let probe = shard.clone();
            let in_cluster = gather::blocking(move || probe.info()).await;
            if !in_cluster.is_ok_and(|info| info.cluster) {
                continue;
            }
            let (shard, player, reason) = (shard.clone(), player.clone(), reason.clone());
            *result = gather::blocking(move || shard.kick(&player, reason.as_deref(), false)).await;
            break;
        }
    }
    Ok(Json(gather::outcomes(&shards, results, |r| r.result)?))
}

/// A ban goes to every shard: each keeps it in force and in the store.
async fn ban(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(player): Path<String>,
    Json(request): Json<BanRequest>,
) -> ApiResult<Vec<ActionOutcome>> {
    let shards = c.shards(&token(&headers)?);
    let results = gather::on_each(&shards, move |s| s.ban(&player, &request)).await;
    Ok(Json(gather::outcomes(&shards, results, |r| r.result)?))
}

async fn unban(
    State(c): State<Console>,
    headers: HeaderMap,
    Path(player): Path<String>,
) -> ApiResult<Vec<ActionOutcome>> {
    let shards = c.shards(&token(&headers)?);
    let results = gather::on_each(&shards, move |s| s.unban(&player)).await;
    Ok(Json(gather::outcomes(&shards, results, |r| r.result)?))
}

#[derive(Deserialize)]
struct RoomAction {
    shard: String,
    room: String,
    /// Where a migrate sends the room (cluster only).
    #[serde(default)]
    to: Option<String>,
}

async fn restart(
    State(c): State<Console>,
    headers: HeaderMap,
    Json(a): Json<RoomAction>,
) -> ApiResult<protocol::admin::ActionReply> {
    let shard = c.shard(&a.shard, &token(&headers)?)?;
    Ok(Json(
        gather::blocking(move || shard.restart_room(&a.room)).await?,
    ))
}

/// Migrate and drain exist only in a cluster: the source says so, or the
/// shard itself reports cluster mode (409 otherwise).
async fn cluster_only(c: &Console, shard: &Shard) -> Result<(), ApiError> {
    if c.0.source.cluster() {
        return Ok(());
    }
    let probe = shard.clone();
    let info = gather::blocking(move || probe.info()).await?;
    if info.cluster {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::CONFLICT,
            "migrate and drain need a cluster: this shard does not run in one".into(),
        ))
    }
}

/// Migrate a room to another shard: `POST /admin/rooms/{room}/migrate?to=SHARD`
/// on the shard the page listed it on (cluster mode only; `to` absent: the
/// owner's placement picks a ready shard). A room that moved since is
/// forwarded by that shard to its owner now.
async fn migrate(
    State(c): State<Console>,
    headers: HeaderMap,
    Json(a): Json<RoomAction>,
) -> ApiResult<protocol::admin::RoomMigrated> {
    let shard = c.shard(&a.shard, &token(&headers)?)?;
    cluster_only(&c, &shard).await?;
    let to = a.to.filter(|t| !t.trim().is_empty());
    Ok(Json(
        gather::blocking(move || shard.migrate_room(&a.room, to.as_deref())).await?,
    ))
}

#[derive(Deserialize)]
struct ShardAction {
    shard: String,
}

/// Drain a shard: forwarded to its `POST /admin/drain` (cluster mode only).
async fn drain(
    State(c): State<Console>,
    headers: HeaderMap,
    Json(a): Json<ShardAction>,
) -> ApiResult<serde_json::Value> {
    let shard = c.shard(&a.shard, &token(&headers)?)?;
    cluster_only(&c, &shard).await?;
    let body = serde_json::Value::Null;
    Ok(Json(
        gather::blocking(move || shard.post_raw("/admin/drain", &body)).await?,
    ))
}
