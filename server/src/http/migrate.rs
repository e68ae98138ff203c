//! `POST /admin/rooms/{room}/migrate?to=SHARD` (operator): move a room
//! this shard runs to another shard, live (see `room::cluster::migrate`),
//! audited like the other actions; the cluster's events stream gets a
//! `room_moved` entry with from, to, epoch and pause.
//!
//! A room that runs on another shard is asked of its owner over
//! `/tessera/admin/1` (`room::cluster::migrate::forward`: one hop, at most
//! `cluster.migrate_forward_ms`), whose answer is passed on: an operator's
//! tool may call any shard.
//!
//! Answers [`RoomMigrated`]; 404 for a room that runs nowhere (or a map
//! that does not exist); 409 when the owner could not be reached to
//! forward the request (the message names it: call that shard's
//! endpoint), when a migration of it is under way, when the target is the
//! owner, unknown, dead or draining, when no other shard is ready, or when
//! the target refused or did not answer (the room resumed on its owner);
//! 504 when a forwarded request got no answer in time (the room may have
//! moved: the events say); 503 when the directory did not answer; 409
//! outside cluster mode.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Json;
use protocol::admin::{MigrateQuery, RoomMigrated};
use protocol::peer::MigrateAnswer;

use super::actions::audit;
use super::admin::{Admin, AdminRequest, Answer, Refusal};
use super::AppState;
use crate::cluster::directory::ShardId;
use crate::config::Config;
use crate::ids::RoomId;
use crate::room::cluster::migrate::{Forwarded, MigrateError};

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
    match cluster.migrate(&id, to.clone()).await {
        Ok(m) => Ok(RoomMigrated {
            room: m.room.to_string(),
            from: m.from.to_string(),
            to: m.to.to_string(),
            epoch: m.epoch,
            pause_ms: m.pause.as_secs_f64() * 1e3,
        }),
        Err(MigrateError::NotOwned {
            owner: Some(owner), ..
        }) => forwarded(
            owner.clone(),
            cluster.forward_migrate(&owner, &id, to).await,
        ),
        Err(e) => Err(refusal(e)),
    }
}

/// The owner's answer to a forwarded migration, as this shard's.
fn forwarded(owner: ShardId, answer: Forwarded) -> Result<RoomMigrated, Refusal> {
    match answer {
        Forwarded::Answered(MigrateAnswer {
            moved: Some(m),
            status: 200,
            ..
        }) => Ok(RoomMigrated {
            room: m.room,
            from: m.from,
            to: m.to,
            epoch: m.epoch,
            pause_ms: m.pause_us as f64 / 1e3,
        }),
        Forwarded::Answered(a) => Err(Refusal::new(
            // Only a refusal's status is passed on: anything else from
            // the owner is a peer that broke the exchange.
            StatusCode::from_u16(a.status)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .unwrap_or(StatusCode::BAD_GATEWAY),
            format!("forwarded to shard {owner}, which owns it: {}", a.message),
        )),
        Forwarded::Unreachable(reason) => Err(Refusal::new(
            StatusCode::CONFLICT,
            format!(
                "shard {owner} owns it and could not be reached to forward the request ({reason}): call that shard's endpoint"
            ),
        )),
        Forwarded::NoAnswer(reason) => Err(Refusal::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "forwarded to shard {owner}, which owns it, and got no answer ({reason}): the room may have moved; the cluster's events say"
            ),
        )),
    }
}

fn refusal(e: MigrateError) -> Refusal {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Refusal::new(status, e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::peer::RoomMoved;

    fn owner() -> ShardId {
        ShardId::new("b").unwrap()
    }

    #[test]
    fn a_forwarded_answer_is_passed_on_and_a_failure_to_forward_says_which() {
        let moved = forwarded(
            owner(),
            Forwarded::Answered(MigrateAnswer {
                status: 200,
                message: String::new(),
                moved: Some(RoomMoved {
                    room: "lobby".into(),
                    from: "b".into(),
                    to: "c".into(),
                    epoch: 4,
                    pause_us: 2_500,
                }),
            }),
        )
        .unwrap_or_else(|r| panic!("{} {}", r.0, r.1));
        assert_eq!(
            (moved.from.as_str(), moved.to.as_str(), moved.epoch),
            ("b", "c", 4)
        );
        assert!((moved.pause_ms - 2.5).abs() < 1e-9);

        let refused = |answer| forwarded(owner(), answer).map(|_| ()).unwrap_err();
        let Refusal(status, text) = refused(Forwarded::Answered(MigrateAnswer {
            status: 409,
            message: "lobby is being migrated already".into(),
            moved: None,
        }));
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(
            text.contains("forwarded to shard b") && text.contains("already"),
            "{text}"
        );
        let Refusal(status, text) = refused(Forwarded::Unreachable("no route".into()));
        assert_eq!(status, StatusCode::CONFLICT);
        assert!(
            text.contains("shard b owns it") && text.contains("no route"),
            "{text}"
        );
        let Refusal(status, text) =
            refused(Forwarded::NoAnswer("no answer within 10000 ms".into()));
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
        assert!(text.contains("may have moved"), "{text}");
        // A status the owner should never send is not passed on as is.
        let Refusal(status, _) = refused(Forwarded::Answered(MigrateAnswer {
            status: 42,
            message: String::new(),
            moved: None,
        }));
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let Refusal(status, _) = refused(Forwarded::Answered(MigrateAnswer {
            status: 200,
            message: String::new(),
            moved: None,
        }));
        assert_eq!(status, StatusCode::BAD_GATEWAY);
    }
}
