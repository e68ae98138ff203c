//! The peer inbox: what other shards of the cluster tell this one on the
//! `/tessera/admin/1` and `/tessera/chat/1` streams, applied to this
//! shard's own sessions, dispatcher and bans. The sending side is
//! [`crate::cluster::Relay`].
//!
//! ```text
//! tunnel ──/tessera/admin/1──▶ replace: the player's session here (if it is the one named) gets Replaced (2005, 4006)
//!        │                     kick: Remove (2006, 4007)
//!        │                     ban / unban: the bans table (+ Remove 2007 if connected here)
//!        │                     inventory: the player's session here gets InventoryChanged
//!        │                     migrate: the room moved from here, migrate_answer on the same stream
//!        └─/tessera/chat/1───▶ announce / map_broadcast: published through this shard's dispatcher
//! ```
//!
//! Nothing received here is sent on to other shards: the shard where a
//! message is made sends it to every peer itself, so each message crosses
//! each tunnel once and nothing loops. A frame that does not decode ends
//! its stream (logged); the peer opens a fresh one for its next message.

use std::sync::Arc;

use protocol::admin::Ban;
use protocol::peer::{AdminMsg, ChatMsg, ADMIN_PROTOCOL, CHAT_PROTOCOL};
use protocol::ErrorCode;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::bans::ban_text;
use crate::cluster::tunnel::{PeerHub, PeerStream};
use crate::cluster::{metric, Link};
use crate::dispatcher::{announce_frame, Announcement, MapBroadcast};
use crate::room::cluster::migrate::forward;
use crate::session::{Deps, InventoryChanged, Remove, Replaced};
use crate::supervise::{Child, Restart};

/// The task "inbox": serve both protocols until `stop_rx` says stop; each
/// stream is read by a task of its own, all of them ended at stop.
pub async fn serve(hub: PeerHub, deps: Arc<Deps>, mut stop_rx: watch::Receiver<bool>) {
    let mut admin = hub.listen(ADMIN_PROTOCOL);
    let mut chat = hub.listen(CHAT_PROTOCOL);
    let mut readers = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop_rx.wait_for(|s| *s) => break,
            Some(stream) = admin.recv() => {
                readers.spawn(read_admin(stream, deps.clone()));
            }
            Some(stream) = chat.recv() => {
                readers.spawn(read_chat(stream, deps.clone()));
            }
            Some(_) = readers.join_next(), if !readers.is_empty() => {}
            else => break,
        }
    }
    readers.abort_all();
    while readers.join_next().await.is_some() {}
}

async fn read_admin(mut stream: PeerStream, deps: Arc<Deps>) {
    while let Some(msg) = stream.rx.recv_msg::<AdminMsg>().await {
        match msg {
            // The one request with an answer, on a stream the asker opened
            // for it: moved here (never forwarded on), answered there.
            Ok(AdminMsg::Migrate(ask)) => {
                received(ADMIN_PROTOCOL, "migrate");
                tracing::info!(peer = %stream.peer, room = %ask.room, to = ?ask.to, "migration forwarded by a peer");
                let answer = forward::answer(deps.rooms.cluster().cloned(), ask).await;
                if let Err(e) = stream.tx.send_msg(&AdminMsg::MigrateAnswer(answer)) {
                    tracing::warn!(peer = %stream.peer, error = %e, "answering a forwarded migration");
                }
            }
            Ok(msg) => apply_admin(&deps, &stream.peer, msg),
            Err(e) => {
                tracing::warn!(peer = %stream.peer, error = %e, "admin stream from a peer ended");
                return;
            }
        }
    }
}

async fn read_chat(mut stream: PeerStream, deps: Arc<Deps>) {
    while let Some(msg) = stream.rx.recv_msg::<ChatMsg>().await {
        match msg {
            Ok(msg) => apply_chat(&deps, msg),
            Err(e) => {
                tracing::warn!(peer = %stream.peer, error = %e, "chat stream from a peer ended");
                return;
            }
        }
    }
}

fn received(protocol: &'static str, msg: &'static str) {
    metrics::counter!(metric::RELAY_RECEIVED, "protocol" => protocol, "msg" => msg).increment(1);
}

/// Apply one admin message from shard `peer`.
pub fn apply_admin(deps: &Deps, peer: &str, msg: AdminMsg) {
    // do_send below: one message per login or operator action elsewhere,
    // bounded by those shards' connection caps and admin rates.
    match msg {
        AdminMsg::Replace(replace) => {
            received(ADMIN_PROTOCOL, "replace");
            let session = deps.presence.session_of(&replace.player, &replace.session);
            tracing::debug!(peer, player = %replace.player, found = session.is_some(), "replace from a peer");
            match session {
                Some(session) => session.do_send(Replaced {
                    seat_taken: replace.seat_taken,
                }),
                // The login may still wait for its own answer from the
                // directory: it looks here before it goes on.
                None => deps.presence.replaced_early(&replace.session),
            }
        }
        AdminMsg::Kick(kick) => {
            received(ADMIN_PROTOCOL, "kick");
            if let Some(session) = deps.presence.player_session(&kick.player) {
                session.do_send(Remove {
                    code: ErrorCode::Kicked,
                    text: kick.text,
                });
            }
        }
        AdminMsg::Ban(ban) => {
            received(ADMIN_PROTOCOL, "ban");
            let ban = Ban {
                player: ban.player,
                reason: ban.reason,
                by: ban.by,
                at_ms: ban.at_ms,
                until_ms: ban.until_ms,
            };
            let text = ban_text(&ban);
            let player = ban.player.clone();
            deps.bans.insert(ban);
            if let Some(session) = deps.presence.player_session(&player) {
                session.do_send(Remove {
                    code: ErrorCode::Banned,
                    text,
                });
            }
        }
        AdminMsg::Unban(unban) => {
            received(ADMIN_PROTOCOL, "unban");
            deps.bans.remove(&unban.player);
        }
        // Only on a stream of their own (`read_admin`): here they come
        // from a peer that broke that rule.
        AdminMsg::Migrate(_) | AdminMsg::MigrateAnswer(_) => {
            tracing::warn!(peer, "a migration request or answer out of place: ignored");
        }
        AdminMsg::Inventory(push) => {
            received(ADMIN_PROTOCOL, "inventory");
            if let Some(session) = deps.presence.player_session(&push.player) {
                // A full mailbox loses only this notice, as for a local
                // give: the next action or login shows the inventory.
                let _ = session.try_send(InventoryChanged(push.inventory));
            }
        }
    }
}

/// Publish one chat-stream message to this shard's sessions.
pub fn apply_chat(deps: &Deps, msg: ChatMsg) {
    match msg {
        ChatMsg::Announce(announce) => {
            received(CHAT_PROTOCOL, "announce");
            deps.dispatcher
                .announcements
                .publish(Announcement(announce_frame(&announce.text)));
        }
        ChatMsg::MapBroadcast(broadcast) => {
            received(CHAT_PROTOCOL, "map_broadcast");
            if deps.rooms.has_map(&broadcast.map) {
                deps.dispatcher
                    .map_topic(&broadcast.map)
                    .publish(MapBroadcast(announce_frame(&broadcast.text)));
            }
        }
    }
}

/// Cluster mode's children for the cluster supervisor: "relay" (sending
/// to peers), "seats" (this shard's player entries) and "inbox" (what
/// peers send here). Each returns when `stop_rx` says stop.
pub fn children(
    link: &Link,
    hub: &PeerHub,
    deps: &Arc<Deps>,
    stop_rx: &watch::Receiver<bool>,
) -> Vec<Child> {
    let relay = {
        let (relay, stop_rx) = (link.relay.clone(), stop_rx.clone());
        Child::new("relay", Restart::Permanent, move || {
            relay.clone().run(stop_rx.clone())
        })
    };
    let seats = {
        let (seats, stop_rx) = (link.seats.clone(), stop_rx.clone());
        Child::new("seats", Restart::Permanent, move || {
            seats.clone().run(stop_rx.clone())
        })
    };
    let inbox = {
        let (hub, deps, stop_rx) = (hub.clone(), deps.clone(), stop_rx.clone());
        Child::new("inbox", Restart::Permanent, move || {
            serve(hub.clone(), deps.clone(), stop_rx.clone())
        })
    };
    vec![relay, seats, inbox]
}
