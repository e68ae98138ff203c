//! Live migration: a room moves to another shard while it is played.
//!
//! ```text
//! source (owner, lease S:e)                          target
//!  open /tessera/migrate/1 ─────────────────────────▶
//!  pause: the room snapshots itself between two ticks and stops
//!  edges told `moving {to: ""}`: hold your inputs
//!  offer {room, from S, epoch e, state} ────────────▶ lease S:e → T:e+1 (compare-and-set),
//!                                                     room started from the state: every
//!                                                     member a held seat, re-joined quietly
//!  ◀──────────────────────────────── accepted {e+1}
//!  room forgotten here (lease neither released nor renewed)
//!  edges told `moving {to: T}` ─▶ each re-joins its members on T (no notice)
//!  local members handed to a link to T (their sessions notice nothing)
//! ```
//!
//! A target that refuses, dies or does not answer within
//! `cluster.migrate_answer_ms`: the source takes its lease back by the
//! same compare-and-set (S:e → S:e+1) and resumes the room from the
//! snapshot (edges told `moving {to: S}`). If that compare fails, the
//! target took the lease after all: the room is the target's (and fails
//! over from the store if the target died). Either way one epoch wins and
//! the room never runs twice.
//!
//! - this file: [`RoomCluster::migrate`], the source's side.
//! - `target.rs`: the target's side (serving `/tessera/migrate/1`).
//! - `wire.rs`: a snapshot to and from its wire form.
//! - `forward.rs`: a migration asked of a shard that does not own the
//!   room, forwarded to the owner on `/tessera/admin/1` (one hop).

mod drain;
pub mod forward;
pub(super) mod target;
mod wire;

pub use drain::DrainMoves;
pub use forward::Forwarded;

use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::peer::migrate::{MigrateMsg, Offer};
use protocol::peer::{OwnerMsg, RoomMoving, MIGRATE_PROTOCOL};

use super::edge::Adopted;
use super::RoomCluster;
use crate::cluster::directory::{rendezvous, DirectoryError, EventKind, ShardId};
use crate::ids::RoomId;
use crate::metrics as m;
use crate::room::remote::EdgeSink;
use crate::room::supervisor::PauseError;
use crate::room::RoomSnapshot;
use crate::supervise::FaultActor;

/// A room that moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub room: RoomId,
    pub from: ShardId,
    pub to: ShardId,
    /// The lease epoch it runs under on `to`.
    pub epoch: u64,
    /// How long it did not tick: from the pause to its edges being told
    /// where it runs now.
    pub pause: Duration,
    /// The room did not answer the pause: it moved from its last snapshot.
    pub stalled: bool,
}

/// Why a room did not move.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateError {
    /// The room does not run here; `owner` runs it, when known.
    #[error("{room} is not owned by this shard{}", owner.as_ref().map(|o| format!(" (shard {o} owns it)")).unwrap_or_default())]
    NotOwned {
        room: RoomId,
        owner: Option<ShardId>,
    },
    /// A migration of the room is under way already.
    #[error("{0} is being migrated already")]
    Busy(RoomId),
    /// The target named is this shard, unknown, dead or not ready.
    #[error("{0}")]
    BadTarget(String),
    /// No other shard is ready to take the room.
    #[error("no other ready shard to move {0} to")]
    NoTarget(RoomId),
    /// The directory did not answer.
    #[error("cluster directory: {0}")]
    Directory(String),
    /// The target refused or did not answer; the room resumed here.
    #[error("the move of {room} to {to} failed ({reason}); the room resumed on this shard")]
    Resumed {
        room: RoomId,
        to: ShardId,
        reason: String,
    },
}

impl MigrateError {
    /// The HTTP status `POST /admin/rooms/{room}/migrate` answers it with
    /// (and a forwarded migration's answer carries).
    pub fn status(&self) -> u16 {
        match self {
            MigrateError::NotOwned { owner: None, .. } => 404,
            MigrateError::NotOwned { owner: Some(_), .. }
            | MigrateError::Busy(_)
            | MigrateError::BadTarget(_)
            | MigrateError::NoTarget(_)
            | MigrateError::Resumed { .. } => 409,
            MigrateError::Directory(_) => 503,
        }
    }
}

impl RoomCluster {
    /// Move `room`, which runs here, to `to` (or to the ready shard the
    /// placement prefers among the others), live. Callable from any task:
    /// the move runs on the cluster's Arbiter.
    pub async fn migrate(
        self: &Arc<Self>,
        room: &RoomId,
        to: Option<ShardId>,
    ) -> Result<Migrated, MigrateError> {
        let (answer_tx, answer_rx) = tokio::sync::oneshot::channel();
        let (cluster, id) = (self.clone(), room.clone());
        let gone = || MigrateError::NotOwned {
            room: room.clone(),
            owner: None,
        };
        let spawned = self.arbiter.spawn(async move {
            let _ = answer_tx.send(cluster.migrate_here(&id, to).await);
        });
        if !spawned {
            return Err(gone());
        }
        answer_rx.await.unwrap_or_else(|_| Err(gone()))
    }

    async fn migrate_here(
        self: &Arc<Self>,
        room: &RoomId,
        to: Option<ShardId>,
    ) -> Result<Migrated, MigrateError> {
        let rooms = self.rooms().ok_or_else(|| MigrateError::NotOwned {
            room: room.clone(),
            owner: None,
        })?;
        let epoch = rooms.epoch(room);
        if epoch == 0 || self.dir.held_epoch(room) != Some(epoch) || !rooms.runs(room) {
            let owner = self.dir.owner(room).await.ok().flatten().map(|(s, _)| s);
            return Err(MigrateError::NotOwned {
                room: room.clone(),
                owner: owner.filter(|o| o != self.shard()),
            });
        }
        let to = self.target_for(room, to).await?;
        let settings = self.settings.clone();
        // The stream first: the room pauses only once the target is
        // reachable.
        let open = self.hub.open(to.as_str(), MIGRATE_PROTOCOL);
        let stream = match tokio::time::timeout(settings.migrate_answer, open).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(MigrateError::BadTarget(format!("shard {to}: {e}"))),
            Err(_) => return Err(MigrateError::BadTarget(format!("shard {to} not reachable"))),
        };
        let paused_at = Instant::now();
        let paused = match rooms
            .pause_for_migration(room, settings.migrate_pause)
            .await
        {
            Ok(paused) => paused,
            Err(PauseError::Busy) => return Err(MigrateError::Busy(room.clone())),
            Err(PauseError::NotRunning) => {
                return Err(MigrateError::NotOwned {
                    room: room.clone(),
                    owner: None,
                })
            }
        };
        let edges = edge_sinks(&paused.snapshot);
        // A drill (fault point `migrate_hold`, behind
        // `admin.fault_injection`): the hold reaches the edges too late.
        // Every move has that window for a batch already on its way; the
        // drill makes it certain (the offer waits until an input reached
        // this shard after the room's state was taken), and the edges
        // send such batches again after the move (`edge/moving.rs`).
        let label = room.to_string();
        let hold_late = crate::supervise::catch(|| {
            rooms
                .faults()
                .trip(FaultActor::Room, "migrate_hold", Some(&label))
        })
        .is_err();
        if !hold_late {
            tell(&edges, "");
        }
        let state = wire::to_wire(&paused.snapshot, paused.next_tick);
        if hold_late {
            let shipped = state.members.iter().map(|m| m.pending.len()).sum();
            input_stranded(&paused.snapshot, shipped, settings.migrate_answer).await;
        }
        let offer = MigrateMsg::Offer(Offer {
            room: room.to_string(),
            from: self.shard().to_string(),
            epoch,
            state,
        });
        let (tx, mut rx) = (stream.tx, stream.rx);
        let answer = if tx.send_msg(&offer).is_err() {
            Err("the offer could not be sent".to_string())
        } else {
            match tokio::time::timeout(settings.migrate_answer, rx.recv_msg::<MigrateMsg>()).await {
                Ok(Some(Ok(MigrateMsg::Accepted(a)))) => Ok(a.epoch),
                Ok(Some(Ok(MigrateMsg::Refused(r)))) => Err(format!("refused: {}", r.reason)),
                Ok(Some(Ok(MigrateMsg::Offer(_)))) => Err("the target answered an offer".into()),
                Ok(Some(Err(e))) => Err(format!("the target's stream broke: {e}")),
                Ok(None) => Err("the target closed the stream".into()),
                Err(_) => Err(format!(
                    "no answer within {} ms",
                    settings.migrate_answer.as_millis()
                )),
            }
        };
        tx.close();
        match answer {
            Ok(new_epoch) => {
                self.moved_away(room, epoch, &to, &paused.snapshot, &edges);
                let pause = paused_at.elapsed();
                let result = if paused.stalled {
                    "moved_stalled"
                } else {
                    "moved"
                };
                self.record_move(room, &to, new_epoch, pause, result);
                Ok(Migrated {
                    room: room.clone(),
                    from: self.shard().clone(),
                    to,
                    epoch: new_epoch,
                    pause,
                    stalled: paused.stalled,
                })
            }
            Err(reason) => {
                self.take_back(room, epoch, to, paused.snapshot, &edges, reason, paused_at)
                    .await
            }
        }
    }

    /// The shard `to` names, checked, or the placement's pick.
    async fn target_for(
        &self,
        room: &RoomId,
        to: Option<ShardId>,
    ) -> Result<ShardId, MigrateError> {
        let shards = self
            .dir
            .shards()
            .await
            .map_err(|e| MigrateError::Directory(e.to_string()))?;
        match to {
            Some(to) if to == *self.shard() => Err(MigrateError::BadTarget(format!(
                "shard {to} runs the room already"
            ))),
            Some(to) => match shards.iter().find(|s| s.id == to) {
                None => Err(MigrateError::BadTarget(format!("no shard {to}"))),
                Some(s) if !s.placeable() => Err(MigrateError::BadTarget(format!(
                    "shard {to} is not ready ({}{})",
                    s.state.name(),
                    if s.alive { "" } else { ", dead" }
                ))),
                Some(_) => Ok(to),
            },
            None => {
                let name = room.to_string();
                shards
                    .into_iter()
                    .filter(|s| s.placeable() && s.id != *self.shard())
                    .max_by_key(|s| (rendezvous(&name, s.id.as_str()), s.id.clone()))
                    .map(|s| s.id)
                    .ok_or_else(|| MigrateError::NoTarget(room.clone()))
            }
        }
    }

    /// The target runs the room: forget it here, send every edge there
    /// and hand this shard's own members to a link to it.
    fn moved_away(
        self: &Arc<Self>,
        room: &RoomId,
        epoch: u64,
        to: &ShardId,
        snapshot: &RoomSnapshot,
        edges: &[Arc<EdgeSink>],
    ) {
        self.dir.forget_moved(room, epoch);
        if let Some(rooms) = self.rooms() {
            rooms.migrated_away(room);
        }
        tell(edges, to.as_str());
        let local: Vec<Adopted> = snapshot
            .members
            .iter()
            .filter(|(_, m)| m.link.remote.is_none() && m.disconnected_at.is_none())
            .filter(|(_, m)| m.link.out.is_member(m.link.epoch))
            .map(|(id, m)| Adopted {
                link: (*m.link).clone(),
                entity: *id,
                at: (m.x, m.y),
            })
            .collect();
        if !local.is_empty() {
            self.link_to(room, to.clone()).adopt(local);
        }
    }

    /// The move failed: take the lease back (S:e → S:e+1) and resume the
    /// room here; if the target holds the lease by now, the room is its.
    #[allow(clippy::too_many_arguments)]
    async fn take_back(
        self: &Arc<Self>,
        room: &RoomId,
        epoch: u64,
        to: ShardId,
        snapshot: Arc<RoomSnapshot>,
        edges: &[Arc<EdgeSink>],
        reason: String,
        paused_at: Instant,
    ) -> Result<Migrated, MigrateError> {
        tracing::warn!(%room, %to, reason, "migration failed: taking the room back");
        let Some(rooms) = self.rooms() else {
            return Err(MigrateError::Resumed {
                room: room.clone(),
                to,
                reason,
            });
        };
        match self.dir.take_over_room(room, self.shard(), epoch).await {
            Ok(lease) => {
                rooms.resume_after_migration(room, snapshot, lease.epoch);
                tell(edges, self.shard().as_str());
                self.claim(room, lease.epoch);
                metrics::counter!(m::MIGRATIONS, "result" => "resumed").increment(1);
                Err(MigrateError::Resumed {
                    room: room.clone(),
                    to,
                    reason,
                })
            }
            Err(DirectoryError::Held {
                shard,
                epoch: new_epoch,
                ..
            }) if shard == to => {
                // The target took the lease and then failed to answer:
                // the room is its now (or fails over from the store).
                self.moved_away(room, epoch, &to, &snapshot, edges);
                let pause = paused_at.elapsed();
                self.record_move(room, &to, new_epoch, pause, "moved");
                Ok(Migrated {
                    room: room.clone(),
                    from: self.shard().clone(),
                    to,
                    epoch: new_epoch,
                    pause,
                    stalled: false,
                })
            }
            Err(DirectoryError::Held { .. } | DirectoryError::NotOwner { .. }) => {
                // Someone else holds it (the lease expired meanwhile): the
                // room is not ours; its edges look for it again.
                rooms.abandon_migration(room);
                self.dir.forget_moved(room, epoch);
                for edge in edges {
                    edge.close(0, "the room's lease moved to another shard");
                }
                metrics::counter!(m::MIGRATIONS, "result" => "lost").increment(1);
                Err(MigrateError::Resumed {
                    room: room.clone(),
                    to,
                    reason: format!("{reason}; the lease moved on"),
                })
            }
            Err(e) => {
                // Redis did not answer: resume under the old epoch; if the
                // target took the lease after all, the next renewal finds
                // it lost and the room stops here.
                rooms.resume_after_migration(room, snapshot, epoch);
                tell(edges, self.shard().as_str());
                metrics::counter!(m::MIGRATIONS, "result" => "resumed").increment(1);
                Err(MigrateError::Directory(format!("{reason}; then {e}")))
            }
        }
    }

    /// Raise the store's fence to `epoch` for `room`, in the background.
    fn claim(&self, room: &RoomId, epoch: u64) {
        let label = room.to_string();
        let persister = self.persister.clone();
        actix::spawn(async move {
            let claimed = persister
                .admin_call(move |store| async move { store.claim_room(label, epoch).await })
                .await;
            if let Err(e) = claimed {
                tracing::warn!(epoch, error = %e, "claiming a room in the store");
            }
        });
    }

    fn record_move(
        &self,
        room: &RoomId,
        to: &ShardId,
        epoch: u64,
        pause: Duration,
        result: &'static str,
    ) {
        metrics::counter!(m::MIGRATIONS, "result" => result).increment(1);
        metrics::histogram!(m::MIGRATION_PAUSE_SECONDS).record(pause.as_secs_f64());
        let detail = format!(
            "from {} to {to} epoch {epoch} pause {} ms",
            self.shard(),
            pause.as_millis()
        );
        tracing::info!(%room, %to, epoch, pause_ms = pause.as_secs_f64() * 1e3, result, "room migrated");
        let (dir, subject) = (self.dir.clone(), room.to_string());
        actix::spawn(async move {
            let _ = dir.event(EventKind::RoomMoved, &subject, &detail).await;
        });
    }
}

/// The edges with members in the room, once each.
fn edge_sinks(snapshot: &RoomSnapshot) -> Vec<Arc<EdgeSink>> {
    let mut edges: Vec<Arc<EdgeSink>> = Vec::new();
    for (_, member) in &snapshot.members {
        if let Some(seat) = &member.link.remote {
            if !edges.iter().any(|e| e.id == seat.edge.id) {
                edges.push(seat.edge.clone());
            }
        }
    }
    edges
}

/// Tell every edge where the room is (`""`: paused, hold the inputs).
fn tell(edges: &[Arc<EdgeSink>], to: &str) {
    let msg = OwnerMsg::Moving(RoomMoving { to: to.to_string() });
    for edge in edges {
        edge.send(&msg);
    }
}

/// The `migrate_hold` drill: wait (at most `wait`) until the remote
/// members' queues here hold more inputs than the `shipped` ones that
/// left with the room's state: an input arrived too late to go with it.
async fn input_stranded(snapshot: &RoomSnapshot, shipped: usize, wait: Duration) {
    let deadline = Instant::now() + wait;
    let queued = || -> usize {
        snapshot
            .members
            .iter()
            .filter(|(_, m)| m.link.remote.is_some())
            .map(|(_, m)| m)
            .map(|m| m.link.inputs.len())
            .sum()
    };
    while queued() <= shipped && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
