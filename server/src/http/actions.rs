//! The operators' actions: kick, ban, unban, restart a room, drain the
//! shard (and the
//! announce of `admin.rs`), each audited: recorded in the events ring and
//! appended to the store's `audit` collection with who (the token's
//! name), what, when and the result, refusals included.
//!
//! Every action needs the `operator` role (the request types below say
//! so; see [`super::admin::AdminRequest::ROLE`]).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::Json;
use protocol::admin::{ActionReply, Ban, BanRequest, EventKind, KickRequest, ShardState};
use protocol::peer::{AdminMsg, BanPlayer, Kick, Unban};
use protocol::ErrorCode;

use super::admin::{decode_json, json_body, Admin, AdminRequest, Answer, Caller, Refusal};
use super::{AppState, Deps};
use crate::config::Config;
use crate::events::NewEvent;
use crate::ids::RoomId;
use crate::session::Remove;

const KICK_BODY: &str =
    "body must be empty or JSON {\"reason\": optional string, \"local_only\": optional bool}";
const BAN_BODY: &str = "body must be JSON {\"reason\": string, \"duration_s\": optional number}";

/// A kick's body, checked: empty, or a reason of at most `max_chars`
/// characters. (The fuzz target drives it with arbitrary bytes.)
pub fn parse_kick(body: &[u8], max_chars: usize) -> Result<KickRequest, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(KickRequest::default());
    }
    let request: KickRequest = decode_json(body, KICK_BODY)?;
    if request
        .reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > max_chars)
    {
        return Err(format!("reason must be at most {max_chars} characters"));
    }
    Ok(request)
}

/// A ban's body, checked: a reason of 1 to `max_chars` characters (not
/// only blanks), a duration of at least a second when given.
pub fn parse_ban(body: &[u8], max_chars: usize) -> Result<BanRequest, String> {
    let request: BanRequest = decode_json(body, BAN_BODY)?;
    let chars = request.reason.trim().chars().count();
    if chars == 0 || request.reason.chars().count() > max_chars {
        return Err(format!("reason must be 1 to {max_chars} characters"));
    }
    if request.duration_s == Some(0) {
        return Err("duration_s must be at least 1 (leave it out for a ban without end)".into());
    }
    Ok(request)
}

impl AdminRequest for KickRequest {
    const FAULT: bool = false;

    fn decode(_: &Uri, headers: &HeaderMap, body: &[u8], config: &Config) -> Result<Self, String> {
        let max = config.admin.ban_reason_max_chars;
        if body.iter().all(u8::is_ascii_whitespace) {
            return parse_kick(body, max);
        }
        parse_kick(json_body(headers, body)?, max)
    }
}

impl AdminRequest for BanRequest {
    const FAULT: bool = false;

    fn decode(_: &Uri, headers: &HeaderMap, body: &[u8], config: &Config) -> Result<Self, String> {
        parse_ban(json_body(headers, body)?, config.admin.ban_reason_max_chars)
    }
}

/// An action without a body (unban, restart).
pub(super) struct Act;

impl AdminRequest for Act {
    const FAULT: bool = false;

    fn decode(_: &Uri, _: &HeaderMap, _: &[u8], _: &Config) -> Result<Self, String> {
        Ok(Act)
    }
}

/// Record an action in the events ring and the store's audit trail. A
/// store that does not take it is logged, not the caller's failure: the
/// action itself was done (or refused) already.
pub(super) async fn audit(
    shared: &Deps,
    caller: &Caller,
    action: &str,
    subject: &str,
    result: &Result<String, Refusal>,
) {
    let (result, detail) = match result {
        Ok(done) => ("ok".to_string(), done.clone()),
        Err(Refusal(status, message)) => (format!("refused {}", status.as_u16()), message.clone()),
    };
    let event = shared.events.record(NewEvent {
        kind: EventKind::AdminAction,
        subject: subject.to_string(),
        detail,
        actor: Some(caller.name.clone()),
        action: Some(action.to_string()),
        result: Some(result),
    });
    let write = shared
        .persister
        .admin_call(move |store| async move { store.append_audit(event).await });
    if let Err(err) = write.await {
        tracing::warn!(action, subject, error = %err, "audit row not written to the store");
    }
}

fn reply(action: &str, subject: &str, result: String) -> ActionReply {
    ActionReply {
        action: action.to_string(),
        subject: subject.to_string(),
        result,
    }
}

/// Run an action, audit it, answer it.
async fn audited(
    shared: &Deps,
    caller: &Caller,
    action: &str,
    subject: &str,
    result: Result<String, Refusal>,
) -> Answer<ActionReply> {
    audit(shared, caller, action, subject, &result).await;
    result.map(|done| Json(reply(action, subject, done)))
}

/// Close the player's session with `code` and `text`; whether it had one.
fn remove(shared: &Deps, player: &str, code: ErrorCode, text: String) -> bool {
    match shared.presence.player_session(player) {
        Some(session) => {
            // do_send: an operator's action, one per request.
            session.do_send(Remove { code, text });
            true
        }
        None => false,
    }
}

/// Cluster mode: kick a player connected to another shard, found in the
/// directory; that shard's peer inbox removes it.
async fn kick_elsewhere(shared: &Deps, player: &str, text: String) -> Result<String, Refusal> {
    let not_here = || Refusal::not_found(format!("player {player:?} is not connected"));
    let Some(cluster) = &shared.cluster else {
        return Err(not_here());
    };
    let entry = cluster.directory.player(player).await.map_err(|e| {
        Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the cluster directory did not answer: {e}"),
        )
    })?;
    match entry {
        Some(entry) if entry.shard != *cluster.directory.shard() => {
            cluster.relay.admin(
                entry.shard.as_str(),
                &AdminMsg::Kick(Kick {
                    player: player.to_string(),
                    text,
                }),
            );
            Ok(format!("kick sent to shard {}", entry.shard))
        }
        _ => Err(not_here()),
    }
}

pub(super) async fn kick(
    State(state): State<AppState>,
    Path(player): Path<String>,
    Admin(request, caller): Admin<KickRequest>,
) -> Answer<ActionReply> {
    let shared = &state.shared;
    let text = match &request.reason {
        Some(reason) => format!("kicked by an operator: {reason}"),
        None => "kicked by an operator".to_string(),
    };
    let result = if remove(shared, &player, ErrorCode::Kicked, text.clone()) {
        Ok("kicked".to_string())
    } else if request.local_only {
        Err(Refusal::not_found(format!(
            "player {player:?} is not connected to this shard"
        )))
    } else {
        kick_elsewhere(shared, &player, text).await
    };
    audited(shared, &caller, "kick", &player, result).await
}

pub(super) async fn ban(
    State(state): State<AppState>,
    Path(player): Path<String>,
    Admin(request, caller): Admin<BanRequest>,
) -> Answer<ActionReply> {
    let shared = &state.shared;
    let at_ms = crate::bans::now_ms();
    let ban = Ban {
        player: player.clone(),
        reason: request.reason.clone(),
        by: caller.name.clone(),
        at_ms,
        until_ms: request
            .duration_s
            .map(|s| at_ms.saturating_add(s.saturating_mul(1_000))),
    };
    let stored = ban.clone();
    let write = shared
        .persister
        .admin_call(move |store| async move { store.put_ban(stored).await });
    let result = match write.await {
        Ok(()) => {
            shared.bans.insert(ban.clone());
            let until = ban
                .until_ms
                .map_or("for good".to_string(), |ms| format!("until {ms} (unix ms)"));
            let text = crate::bans::ban_text(&ban);
            let was_on = remove(shared, &player, ErrorCode::Banned, text);
            if let Some(cluster) = &shared.cluster {
                // Every shard checks it at the next hello, and removes
                // the player if it is connected there.
                cluster.relay.admin_all(&AdminMsg::Ban(BanPlayer {
                    player: ban.player.clone(),
                    reason: ban.reason.clone(),
                    by: ban.by.clone(),
                    at_ms: ban.at_ms,
                    until_ms: ban.until_ms,
                }));
            }
            Ok(if was_on {
                format!("banned {until}; disconnected")
            } else {
                format!("banned {until}")
            })
        }
        // Not stored, not in force: a ban that would vanish at the next
        // restart is worse than a clear refusal.
        Err(err) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store did not take the ban: {err}"),
        )),
    };
    audited(shared, &caller, "ban", &player, result).await
}

pub(super) async fn unban(
    State(state): State<AppState>,
    Path(player): Path<String>,
    Admin(Act, caller): Admin<Act>,
) -> Answer<ActionReply> {
    let shared = &state.shared;
    let key = player.clone();
    let write = shared
        .persister
        .admin_call(move |store| async move { store.delete_ban(key).await });
    let result = match write.await {
        Ok(stored) => {
            let here = shared.bans.remove(&player);
            if let Some(cluster) = &shared.cluster {
                cluster.relay.admin_all(&AdminMsg::Unban(Unban {
                    player: player.clone(),
                }));
            }
            if stored || here {
                Ok("unbanned".to_string())
            } else if shared.cluster.is_some() {
                Ok("not banned here; unban sent to the other shards".to_string())
            } else {
                Err(Refusal::not_found(format!(
                    "player {player:?} is not banned"
                )))
            }
        }
        Err(err) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the store did not lift the ban: {err}"),
        )),
    };
    audited(shared, &caller, "unban", &player, result).await
}

pub(super) async fn restart_room(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Admin(Act, caller): Admin<Act>,
) -> Answer<ActionReply> {
    let shared = &state.shared;
    let result = match room.parse::<RoomId>() {
        Ok(id) if shared.rooms.restart_for_operator(&id) => Ok("restarting".to_string()),
        _ => Err(Refusal::not_found(format!("no room {room:?} is running"))),
    };
    audited(shared, &caller, "restart_room", &room, result).await
}

/// Drain this shard (cluster mode): it answers at once, then stops as at
/// SIGTERM in cluster mode (see `shard`): draining in the directory,
/// readiness 503, sessions told to reconnect (notice 6004, close 4008),
/// rooms stopped and saved, leases released, and the process exits within
/// `cluster.drain_budget_ms`. Outside a cluster there is nowhere to send
/// the players: 409.
pub(super) async fn drain(
    State(state): State<AppState>,
    Admin(Act, caller): Admin<Act>,
) -> Answer<ActionReply> {
    let shared = &state.shared;
    let result = if shared.directory.is_none() {
        Err(Refusal::new(
            StatusCode::CONFLICT,
            "not in cluster mode: a shard alone has nowhere to send its players (stop it instead)",
        ))
    } else if shared.life.state() == ShardState::Stopping {
        Err(Refusal::new(
            StatusCode::CONFLICT,
            "the shard is shutting down already",
        ))
    } else {
        Ok(format!(
            "draining within {} ms",
            shared.config.cluster.drain_budget_ms
        ))
    };
    // Audited before the shard begins to stop.
    audit(shared, &caller, "drain", &shared.shard_id, &result).await;
    if result.is_ok() {
        shared.life.drain();
    }
    result.map(|done| Json(reply("drain", &shared.shard_id, done)))
}
