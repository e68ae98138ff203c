//! The admin API's read views (`GET /admin/*`, the `viewer` role): the
//! shard, its rooms and a room's members, players, dispatcher topics and
//! recent events, as the typed documents of [`protocol::admin`].
//!
//! Cluster fields: `owner` is this shard (the rooms listed run here),
//! `epoch` the lease epoch it runs the room under (0 on a single shard),
//! `members_remote` the members whose socket is on another shard, and a
//! member's `edge` that shard.

use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::Json;
use parking_lot::Mutex;
use protocol::admin::{
    DispatcherReply, EventsQuery, EventsReply, MemberInfo, PlayerInfo, PlayersQuery, PlayersReply,
    Presence, Role, RoomDetail, RoomInfo, RoomsReply, ShardInfo, StoredInventory, TopicInfo,
    WhoAmI,
};

use super::admin::{Admin, AdminRequest, Answer, Refusal};
use super::{AppState, Deps};
use crate::config::Config;
use crate::ids::RoomId;
use crate::room::RoomView;

/// At most this many events per `GET /admin/events` page.
const EVENTS_PAGE: usize = 500;

/// A read without a body or query.
pub(super) struct View;

impl AdminRequest for View {
    const FAULT: bool = false;
    const ROLE: Role = Role::Viewer;

    fn decode(_: &Uri, _: &HeaderMap, _: &[u8], _: &Config) -> Result<Self, String> {
        Ok(View)
    }
}

impl AdminRequest for PlayersQuery {
    const FAULT: bool = false;
    const ROLE: Role = Role::Viewer;

    fn decode(uri: &Uri, _: &HeaderMap, _: &[u8], _: &Config) -> Result<Self, String> {
        Query::<PlayersQuery>::try_from_uri(uri)
            .map(|Query(q)| q)
            .map_err(|_| "search with /admin/players?q=<id or name>".into())
    }
}

impl AdminRequest for EventsQuery {
    const FAULT: bool = false;
    const ROLE: Role = Role::Viewer;

    fn decode(uri: &Uri, _: &HeaderMap, _: &[u8], _: &Config) -> Result<Self, String> {
        Query::<EventsQuery>::try_from_uri(uri)
            .map(|Query(q)| q)
            .map_err(|_| "since must be a number: /admin/events?since=<seq>".into())
    }
}

/// Messages in and out per second, from the Prometheus counters, over the
/// time between two calls (at least a second apart; a call sooner reuses
/// the last rates).
#[derive(Default)]
pub(super) struct Rates {
    last: Mutex<Option<Sample>>,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    msgs_in: f64,
    msgs_out: f64,
    in_per_s: f64,
    out_per_s: f64,
}

impl Rates {
    fn take(&self, msgs_in: f64, msgs_out: f64) -> (f64, f64) {
        let now = Instant::now();
        let mut last = self.last.lock();
        let sample = match *last {
            Some(s) if now.duration_since(s.at).as_secs_f64() < 1.0 => {
                return (s.in_per_s, s.out_per_s)
            }
            Some(s) => {
                let dt = now.duration_since(s.at).as_secs_f64();
                Sample {
                    at: now,
                    msgs_in,
                    msgs_out,
                    in_per_s: ((msgs_in - s.msgs_in) / dt).max(0.0),
                    out_per_s: ((msgs_out - s.msgs_out) / dt).max(0.0),
                }
            }
            None => Sample {
                at: now,
                msgs_in,
                msgs_out,
                in_per_s: 0.0,
                out_per_s: 0.0,
            },
        };
        *last = Some(sample);
        (sample.in_per_s, sample.out_per_s)
    }
}

/// The sum of every series of `name`, and one series' value by a label.
fn scrape(text: &str, name: &str, label: Option<&str>) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let matches = match label {
                None => rest.is_empty() || rest.starts_with('{'),
                Some(label) => rest.contains(label),
            };
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .filter(|v| v.is_finite())
        // fold, not sum: an empty f64 sum is -0.0.
        .fold(0.0, |a, b| a + b)
}

pub(super) async fn whoami(Admin(View, caller): Admin<View>) -> Json<WhoAmI> {
    Json(WhoAmI {
        name: caller.name,
        role: caller.role,
    })
}

pub(super) async fn shard(
    State(state): State<AppState>,
    Admin(View, _): Admin<View>,
) -> Json<ShardInfo> {
    let shared = &state.shared;
    let text = crate::metrics::prometheus().render();
    let msgs_in = scrape(&text, crate::metrics::CLIENT_MESSAGES, None);
    let msgs_out = scrape(&text, crate::metrics::FRAMES_SENT, None);
    let (in_per_s, out_per_s) = shared.rates.take(msgs_in, msgs_out);
    let p99 = scrape(
        &text,
        crate::metrics::ROOM_TICK_SECONDS,
        Some("quantile=\"0.99\""),
    );
    Json(ShardInfo {
        id: shared.shard_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_s: shared.started.elapsed().as_secs(),
        state: shared.life.state(),
        // The console offers migrate and drain when a shard says true.
        cluster: shared.cluster.is_some(),
        sessions: shared.presence.session_count(),
        rooms: shared.rooms.running(),
        msgs_in_per_s: in_per_s,
        msgs_out_per_s: out_per_s,
        tick_p99_ms: p99 * 1_000.0,
        restarts: shared.rooms.restarts_total(),
        dispatch_dropped: shared.dispatcher.stats().iter().map(|t| t.dropped).sum(),
        store_healthy: shared.persister.healthy(),
    })
}

fn room_info(shared: &Deps, view: &RoomView) -> RoomInfo {
    RoomInfo {
        id: view.id.to_string(),
        map: view.id.map().to_string(),
        instance: view.id.instance(),
        members: view.members,
        members_remote: view.members_remote,
        owner: shared.shard_id.clone(),
        epoch: view.epoch,
        tick_ms: view.tick_us as f64 / 1_000.0,
        restarts: view.restarts,
        snapshot_age_ms: view.snapshot_age_ms,
        store_age_ms: view.saved_age_ms,
    }
}

pub(super) async fn rooms(
    State(state): State<AppState>,
    Admin(View, _): Admin<View>,
) -> Json<RoomsReply> {
    let shared = &state.shared;
    let rooms = shared
        .rooms
        .views()
        .iter()
        .map(|v| room_info(shared, v))
        .collect();
    Json(RoomsReply { rooms })
}

pub(super) async fn room(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Admin(View, _): Admin<View>,
) -> Answer<RoomDetail> {
    let shared = &state.shared;
    let id = room.parse::<RoomId>().ok();
    let Some(view) = id.and_then(|id| shared.rooms.views().into_iter().find(|v| v.id == id)) else {
        return Err(Refusal::not_found(format!("no room {room:?} is running")));
    };
    let mut members: Vec<MemberInfo> = view
        .snapshot
        .members
        .iter()
        .map(|(entity, m)| {
            let identity = &m.link.identity;
            MemberInfo {
                entity: *entity,
                player: identity.player_id.clone(),
                name: identity.name.clone(),
                x: m.x,
                y: m.y,
                session_age_s: shared
                    .presence
                    .since(&identity.player_id)
                    .map(|t| t.elapsed().as_secs()),
                connected: m.disconnected_at.is_none(),
                edge: m.link.remote.as_ref().map(|r| r.edge.peer.clone()),
            }
        })
        .collect();
    members.sort_by_key(|m| m.entity);
    Ok(Json(RoomDetail {
        room: room_info(shared, &view),
        width: view.width,
        height: view.height,
        members,
    }))
}

pub(super) async fn players(
    State(state): State<AppState>,
    Admin(query, _): Admin<PlayersQuery>,
) -> Json<PlayersReply> {
    let shared = &state.shared;
    let q = query.q.unwrap_or_default();
    let (found, truncated) = shared
        .presence
        .search(q.trim(), shared.config.admin.search_limit);
    let players = found
        .into_iter()
        .map(|p| PlayerInfo {
            player: p.player,
            name: p.name,
            shard: shared.shard_id.clone(),
            room: p.room.map(|r| r.to_string()),
            session_age_s: p.since.elapsed().as_secs(),
            presence: if p.connected {
                Presence::Connected
            } else {
                Presence::ResumeSeat
            },
        })
        .collect();
    Json(PlayersReply { players, truncated })
}

/// A player's inventory as the store holds it: read through the persister
/// (its timeout and health rules), never from a session's copy, so an audit
/// (the loadbot's ledger check) sees what was really written.
pub(super) async fn inventory(
    State(state): State<AppState>,
    Path(player): Path<String>,
    Admin(View, _): Admin<View>,
) -> Answer<StoredInventory> {
    let id = player.clone();
    let read = state
        .shared
        .persister
        .admin_call(move |store| async move { store.load_player(id).await });
    match read.await {
        Ok(Some(profile)) => Ok(Json(StoredInventory {
            player: profile.id,
            name: profile.name,
            currency: profile.inventory.currency,
            items: profile.inventory.items,
        })),
        Ok(None) => Err(Refusal::not_found(format!(
            "no player {player:?} in the store"
        ))),
        Err(err) => Err(Refusal::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("the store did not answer: {err}"),
        )),
    }
}

pub(super) async fn dispatcher(
    State(state): State<AppState>,
    Admin(View, _): Admin<View>,
) -> Json<DispatcherReply> {
    let topics = state
        .shared
        .dispatcher
        .stats()
        .into_iter()
        .map(|t| TopicInfo {
            topic: t.name,
            subscribers: t.subscribers,
            depth: t.depth,
            published_total: t.published,
            published_per_s: t.published_per_s,
            dropped_total: t.dropped,
        })
        .collect();
    Json(DispatcherReply { topics })
}

pub(super) async fn events(
    State(state): State<AppState>,
    Admin(query, _): Admin<EventsQuery>,
) -> Json<EventsReply> {
    let (events, next) = state
        .shared
        .events
        .since(query.since.unwrap_or(0), EVENTS_PAGE);
    Json(EventsReply { events, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_sums_series_and_picks_a_quantile() {
        let text = "# TYPE x counter\n\
                    tessera_client_messages_total{kind=\"move\"} 10\n\
                    tessera_client_messages_total{kind=\"chat\"} 5\n\
                    tessera_client_messages_total_other 100\n\
                    tessera_room_tick_seconds{quantile=\"0.5\"} 0.001\n\
                    tessera_room_tick_seconds{quantile=\"0.99\"} 0.004\n\
                    tessera_room_tick_seconds_sum 3\n";
        assert_eq!(scrape(text, "tessera_client_messages_total", None), 15.0);
        assert_eq!(
            scrape(text, "tessera_room_tick_seconds", Some("quantile=\"0.99\"")),
            0.004
        );
        assert_eq!(scrape(text, "tessera_absent", None), 0.0);
    }
}
