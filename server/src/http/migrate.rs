//! `POST /admin/rooms/{room}/migrate?to=SHARD` (operator): move a room
//! this shard runs to another shard, live (see `room::cluster::migrate`),
//! audited like the other actions; the cluster's events stream gets a
//! `room_moved` entry with from, to, epoch and pause.
//!
//! Answers [`RoomMigrated`]; 404 for a room that runs nowhere (or a map
//! that does not exist); 409 when the room runs on another shard (the
//! message names it: call that shard's endpoint; requests are not
//! forwarded), when a migration of it is under way, when the target is
//! this shard, unknown, dead or draining, when no other shard is ready, or
//! when the target refused or did not answer (the room resumed here);
//! 503 when the directory did not answer; 409 outside cluster mode.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Json;
use protocol::admin::{MigrateQuery, RoomMigrated};

use super::actions::audit;
use super::admin::{Admin, AdminRequest, Answer, Refusal};
use super::AppState;
use crate::cluster::directory::ShardId;
use crate::config::Config;
use crate::ids::RoomId;
use crate::room::cluster::migrate::MigrateError;

/// The target, checked.
pub(super) struct MigrateTo(Option<ShardId>);

impl AdminRequest for MigrateTo {
    const FAULT: bool = false;

    fn decode(uri: &Uri, _: &HeaderMap, body: &[u8], _: &Config) -> Result<Self, String> {
        let Query(query) = Query::<MigrateQuery>::try_from_uri(uri)
            .map_err(|e| format!("query must be ?to=SHARD (optional): {e}"))?;
        // The ops console sends `{"to": ...}` as the body: taken when the
        // query names no target.
        let to = match query.to {
            Some(to) => Some(to),
            None if body.iter().all(u8::is_ascii_whitespace) => None,
            None => serde_json::from_slice::<Option<MigrateQuery>>(body)
                .map_err(|e| format!("body must be empty, null or {{\"to\": SHARD}}: {e}"))?
                .and_then(|q| q.to),
        };
        match to.filter(|t| !t.is_empty()) {
            None => Ok(MigrateTo(None)),
            Some(to) => ShardId::new(&to)
                .map(|id| MigrateTo(Some(id)))
                .map_err(|e| format!("to {to:?} is not a shard id: {e}")),
        }
    }
}

pub(super) async fn migrate_room(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Admin(MigrateTo(to), caller): Admin<MigrateTo>,
) -> Answer<RoomMigrated> {
    let shared = &state.shared;
    let result = migrate(shared, &room, to).await;
    let audited = result
        .as_ref()
        .map(|m| {
            format!(
                "moved from {} to {} at epoch {} (pause {:.1} ms)",
                m.from, m.to, m.epoch, m.pause_ms
            )
        })
        .map_err(|Refusal(status, message)| Refusal(*status, message.clone()));
    audit(shared, &caller, "migrate_room", &room, &audited).await;
    result.map(Json)
}

async fn migrate(
    shared: &super::Deps,
    room: &str,
    to: Option<ShardId>,
) -> Result<RoomMigrated, Refusal> {
    let Some(cluster) = shared.rooms.cluster().cloned() else {
        return Err(Refusal::new(
            StatusCode::CONFLICT,
            "not in cluster mode: there is no other shard to move a room to",
        ));
    };
    let id: RoomId = room
        .parse()
        .map_err(|_| Refusal::not_found(format!("no room {room:?}")))?;
    if !shared.rooms.has_map(id.map()) {
        return Err(Refusal::not_found(format!("no map named {:?}", id.map())));
    }
    match cluster.migrate(&id, to).await {
        Ok(m) => Ok(RoomMigrated {
            room: m.room.to_string(),
            from: m.from.to_string(),
            to: m.to.to_string(),
            epoch: m.epoch,
            pause_ms: m.pause.as_secs_f64() * 1e3,
        }),
        Err(e) => Err(refusal(e)),
    }
}

fn refusal(e: MigrateError) -> Refusal {
    let status = match &e {
        MigrateError::NotOwned { owner: None, .. } => StatusCode::NOT_FOUND,
        MigrateError::NotOwned { owner: Some(_), .. }
        | MigrateError::Busy(_)
        | MigrateError::BadTarget(_)
        | MigrateError::NoTarget(_)
        | MigrateError::Resumed { .. } => StatusCode::CONFLICT,
        MigrateError::Directory(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    Refusal::new(status, e.to_string())
}
