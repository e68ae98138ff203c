//! Failover of an edge's room: its owner went away (the stream ended, or
//! the failure detector declared it dead), so the room is looked for
//! again and every member re-joins it where the edge last saw it, on its
//! new owner or here; past `cluster.failover_budget_ms` the members get
//! the room-failed path.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::msg::Notice;
use protocol::peer::{EdgeMsg, RemoteJoin};
use protocol::{encode_server, NoticeCode, ServerMsg};

use super::{EdgeLink, EdgeMember};
use crate::cluster::directory::ShardId;
use crate::metrics as m;
use crate::room::cluster::RoomCluster;
use crate::room::{JoinError, JoinRoom, RoomEvent, RoomSupervisor};

impl EdgeLink {
    /// The failure detector declared `shard` dead. If it owns this room,
    /// its stream is given up now (only the tunnel's idle timeout would
    /// end it) and the failover starts: the room is looked for again and
    /// taken over once the directory says the old lease is gone (a
    /// suspicion alone never moves a room).
    pub(in crate::room::cluster) fn owner_dead(self: &Arc<Self>, shard: &ShardId) {
        {
            let mut inner = self.inner.lock();
            if inner.owner != *shard
                || inner.failing_over
                || inner.tx.is_none()
                || self.over.load(Ordering::Acquire)
            {
                return;
            }
            // The old reader and input pump stop at their next look.
            inner.generation += 1;
            self.calls.fail_all();
            if let Some(tx) = inner.tx.take() {
                tx.close();
            }
            if inner.members.is_empty() {
                drop(inner);
                self.end();
                return;
            }
            inner.failing_over = true;
        }
        tracing::warn!(room = %self.room, owner = %shard, "room owner declared dead: failing over");
        actix::spawn(self.clone().failover());
    }

    /// Look for the room again and take every member there.
    pub(super) async fn failover(self: Arc<Self>) {
        let Some(cluster) = self.cluster.upgrade() else {
            return;
        };
        let started = Instant::now();
        let moved = || {
            metrics::histogram!(m::ROOM_FAILOVER_SECONDS).record(started.elapsed().as_secs_f64());
        };
        let deadline = started + cluster.settings().failover_budget;
        let mut pause = Duration::from_millis(100);
        while Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
            if self.inner.lock().members.is_empty() {
                self.end();
                return;
            }
            let old = self.owner();
            match cluster.resolve(&self.room).await {
                Ok(None) => {
                    self.move_here(&cluster).await;
                    moved();
                    return;
                }
                // The old owner still holds the lease: it is going away
                // (its lease is released or expires) or only the stream
                // broke. Dialling a shard that is gone can take long, so it
                // is tried again only in the second half of the budget.
                Ok(Some(owner)) if owner == old => {
                    let half = cluster.settings().failover_budget / 2;
                    if deadline.saturating_duration_since(Instant::now()) < half
                        && self.rejoin_on(old).await
                    {
                        moved();
                        return;
                    }
                }
                Ok(Some(owner)) => {
                    if self.rejoin_on(owner).await {
                        moved();
                        return;
                    }
                }
                Err(_) => {}
            }
        }
        tracing::error!(room = %self.room, "room not found again within the failover budget");
        metrics::counter!(m::ROOM_FAILOVERS, "result" => "failed").increment(1);
        self.fail_all();
    }

    /// Re-join every member on `owner` (the Joined answers finish it).
    async fn rejoin_on(self: &Arc<Self>, owner: ShardId) -> bool {
        self.inner.lock().owner = owner.clone();
        let Ok(tx) = self.connect().await else {
            return false;
        };
        let mut inner = self.inner.lock();
        inner.failing_over = false;
        let implied = inner.implied;
        for (&session, member) in inner.members.iter_mut() {
            member.moved = true;
            member.entity = None;
            let join = EdgeMsg::Join(RemoteJoin {
                session,
                player: member.link.identity.player_id.clone(),
                name: member.link.identity.name.clone(),
                room: self.room.to_string(),
                resume: true,
                at: member.position().map(|(x, y)| [x, y]),
                implied_moved: implied,
            });
            let _ = tx.send_msg(&join);
        }
        tracing::info!(room = %self.room, %owner, members = inner.members.len(), "room moved: members re-joined");
        metrics::counter!(m::ROOM_FAILOVERS, "result" => "moved").increment(1);
        true
    }

    /// The room runs here now: every member joins it locally and this
    /// link is over (casts go to the local room from now on).
    async fn move_here(self: &Arc<Self>, cluster: &Arc<RoomCluster>) {
        let members: Vec<EdgeMember> = {
            let mut inner = self.inner.lock();
            inner.members.drain().map(|(_, m)| m).collect()
        };
        self.end();
        let Some(rooms) = cluster.rooms() else {
            return;
        };
        let timeout = cluster.settings().call_timeout;
        for member in members {
            let (out, epoch) = (member.link.out.clone(), member.link.epoch);
            if self.join_locally(&rooms, member, timeout).await {
                let notice = ServerMsg::Notice(Notice::new(
                    NoticeCode::RoomMoved,
                    format!("{} moved to another server", self.room.map()),
                ));
                let _ = out.push_room_reliable(epoch, Bytes::from(encode_server(&notice)));
                out.request_resync();
            }
        }
        tracing::info!(room = %self.room, "room moved here: members re-joined locally");
        metrics::counter!(m::ROOM_FAILOVERS, "result" => "moved").increment(1);
    }

    /// Seat `member` in this shard's copy of the room (started if need
    /// be) where the owner last showed it, on its own session; false, and
    /// the member given the room-failed path, when that did not work
    /// within `timeout`.
    pub(super) async fn join_locally(
        &self,
        rooms: &Arc<RoomSupervisor>,
        member: EdgeMember,
        timeout: Duration,
    ) -> bool {
        let events = member.link.events.clone();
        let spawn_at = member.position();
        let join = JoinRoom {
            resume: Some(member.link.session),
            link: member.link,
            seat_only: false,
            spawn_at,
        };
        let joined = match rooms.start(&self.room) {
            Some(addr) => matches!(
                tokio::time::timeout(timeout, addr.send(join)).await,
                Ok(Ok(Ok(_)))
            ),
            None => false,
        };
        if !joined {
            events.do_send(RoomEvent::Failed {
                room: self.room.clone(),
            });
        }
        joined
    }

    /// The room failed for good: every member gets the room-failed path.
    pub(super) fn fail_all(self: &Arc<Self>) {
        let members: Vec<EdgeMember> = {
            let mut inner = self.inner.lock();
            inner.failing_over = false;
            inner.members.drain().map(|(_, m)| m).collect()
        };
        for member in members {
            if let Some(waiting) = member.waiting {
                let _ = waiting.send(Err(JoinError::Crashed));
            }
            member.link.events.do_send(RoomEvent::Failed {
                room: self.room.clone(),
            });
        }
        self.end();
    }
}
