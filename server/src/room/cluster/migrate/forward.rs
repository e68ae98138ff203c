//! A migration asked of a shard that does not own the room: forwarded to
//! the owner over `/tessera/admin/1`, so an operator's tool need not know
//! which shard runs a room.
//!
//! ```text
//! asked shard (not the owner)                 owner
//!  open a stream of its own on /tessera/admin/1 ─▶
//!  migrate {room, to} ──────────────────────────▶ migrate_here, as if asked on its own API
//!  ◀──────────────── migrate_answer {status, message | moved}
//! ```
//!
//! Bounded: one hop (the owner answers from its own view and never
//! forwards again: a room that moved meanwhile is a 409 naming its new
//! owner), and one wait of `cluster.migrate_forward_ms` for the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::peer::{AdminMsg, MigrateAnswer, MigrateRoom, RoomMoved, ADMIN_PROTOCOL};
use protocol::Version;

use super::{MigrateError, Migrated};
use crate::cluster::directory::ShardId;
use crate::cluster::tunnel::PeerStream;
use crate::ids::RoomId;
use crate::room::cluster::RoomCluster;

/// What became of a forwarded migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forwarded {
    /// The owner's answer.
    Answered(MigrateAnswer),
    /// The owner could not be reached: nothing was asked of it.
    Unreachable(String),
    /// Asked, but no answer came (in time, or the stream ended): the move
    /// may have happened or not.
    NoAnswer(String),
}

impl RoomCluster {
    /// Ask `owner` to move `room` to `to`, and wait for its answer (at
    /// most `cluster.migrate_forward_ms`). Callable from any task: the
    /// exchange runs on the cluster's Arbiter, where the tunnels live.
    pub async fn forward_migrate(
        self: &Arc<Self>,
        owner: &ShardId,
        room: &RoomId,
        to: Option<ShardId>,
    ) -> Forwarded {
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
        let (cluster, owner, room) = (self.clone(), owner.clone(), room.clone());
        let spawned = self.arbiter.spawn(async move {
            let _ = answer_tx.send(cluster.ask_owner(&owner, &room, to).await);
        });
        let stopped = || Forwarded::Unreachable("this shard is stopping".into());
        if !spawned {
            return stopped();
        }
        answer_rx.await.unwrap_or_else(|_| stopped())
    }

    async fn ask_owner(&self, owner: &ShardId, room: &RoomId, to: Option<ShardId>) -> Forwarded {
        let wait = self.settings.migrate_forward;
        let deadline = Instant::now() + wait;
        let opened = tokio::time::timeout(wait, self.hub.open(owner.as_str(), ADMIN_PROTOCOL));
        let mut stream: PeerStream = match opened.await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Forwarded::Unreachable(e.to_string()),
            Err(_) => {
                return Forwarded::Unreachable(format!("no stream within {} ms", wait.as_millis()))
            }
        };
        // A peer of tunnel 1.1 or older does not know `migrate` (1.2):
        // refused here, with nothing asked, rather than a wait for an
        // answer that cannot come. The version is the stream's
        // connection's (the open above made one if there was none).
        if let Some(theirs) = self.hub.peer_version(owner.as_str()) {
            if !speaks_migrate(theirs) {
                stream.tx.close();
                return Forwarded::Unreachable(format!(
                    "it speaks tunnel {theirs}, and forwarding a migration needs {MIGRATE_SINCE} \
                     or later"
                ));
            }
        }
        let ask = AdminMsg::Migrate(MigrateRoom {
            room: room.to_string(),
            to: to.map(|t| t.to_string()),
        });
        if let Err(e) = stream.tx.send_msg(&ask) {
            return Forwarded::Unreachable(e.to_string());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let answer = tokio::time::timeout(left.max(Duration::from_millis(1)), async {
            loop {
                match stream.rx.recv_msg::<AdminMsg>().await {
                    Some(Ok(AdminMsg::MigrateAnswer(answer))) => return Ok(answer),
                    // Nothing else is expected on this stream: skipped.
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("the stream ended without an answer".to_string()),
                }
            }
        })
        .await;
        stream.tx.close();
        match answer {
            Ok(Ok(answer)) => Forwarded::Answered(answer),
            Ok(Err(e)) => Forwarded::NoAnswer(e),
            Err(_) => Forwarded::NoAnswer(format!("no answer within {} ms", wait.as_millis())),
        }
    }
}

/// The tunnel version that added the admin stream's `migrate`.
const MIGRATE_SINCE: Version = Version { major: 1, minor: 2 };

/// Whether a peer of tunnel `version` (of this major: the handshake
/// refused any other) answers `migrate`.
fn speaks_migrate(version: Version) -> bool {
    version.minor >= MIGRATE_SINCE.minor
}

/// The owner's side: move `ask.room` as if asked on this shard's own
/// admin API (never forwarding it further), and say what became of it.
pub async fn answer(cluster: Option<Arc<RoomCluster>>, ask: MigrateRoom) -> MigrateAnswer {
    let refused = |e: MigrateError| MigrateAnswer {
        status: e.status(),
        message: e.to_string(),
        moved: None,
    };
    let Some(cluster) = cluster else {
        return MigrateAnswer {
            status: 409,
            message: "not in cluster mode".into(),
            moved: None,
        };
    };
    let Ok(room) = ask.room.parse::<RoomId>() else {
        return MigrateAnswer {
            status: 404,
            message: format!("no room {:?}", ask.room),
            moved: None,
        };
    };
    let to = match ask.to.as_deref().map(ShardId::new).transpose() {
        Ok(to) => to,
        Err(e) => {
            return MigrateAnswer {
                status: 400,
                message: format!("to is not a shard id: {e}"),
                moved: None,
            }
        }
    };
    match cluster.migrate(&room, to).await {
        Ok(m) => MigrateAnswer {
            status: 200,
            message: String::new(),
            moved: Some(moved(&m)),
        },
        Err(e) => refused(e),
    }
}

fn moved(m: &Migrated) -> RoomMoved {
    RoomMoved {
        room: m.room.to_string(),
        from: m.from.to_string(),
        to: m.to.to_string(),
        epoch: m.epoch,
        pause_us: u64::try_from(m.pause.as_micros()).unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_peer_of_tunnel_1_2_or_later_is_asked_to_migrate() {
        assert!(speaks_migrate(protocol::peer::PEER_VERSION));
        assert!(speaks_migrate(Version { major: 1, minor: 2 }));
        assert!(speaks_migrate(Version { major: 1, minor: 7 }));
        assert!(!speaks_migrate(Version { major: 1, minor: 1 }));
        assert!(!speaks_migrate(Version { major: 1, minor: 0 }));
    }
}
