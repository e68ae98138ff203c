//! An edge's side of a live migration (see `room::cluster::migrate`):
//! the owner says `moving` on the room stream.
//!
//! - `to` empty: the room is paused; the input pump holds the members'
//!   inputs in their queues (they are sent, in order, wherever the room
//!   runs next).
//! - `to` the owner itself: the move failed and the room resumed there;
//!   the pump goes on.
//! - `to` another shard: the room runs there. The old stream is given up
//!   and every member re-joins there where it stood (`resume`, `at`); the
//!   new owner seats it on its migrated seat quietly, so the player sees
//!   no `joined`, no notice, only updates going on. When `to` is this
//!   shard, the members join the local room instead and the link is over.
//!
//! [`EdgeLink::adopt`] is the source's half: the source's own players
//! become remote members of the new owner through a link to it, with
//! their sessions' queues unchanged.

use std::sync::Arc;

use protocol::msg::EntityId;
use protocol::peer::{EdgeMsg, RemoteJoin};

use super::{EdgeLink, EdgeMember};
use crate::cluster::directory::ShardId;
use crate::room::MemberLink;

/// A member of the source's own room handed to a link to the new owner.
pub struct Adopted {
    pub link: MemberLink,
    pub entity: EntityId,
    pub at: (f32, f32),
}

impl EdgeLink {
    /// A `moving` message on the stream of `generation`. False when this
    /// stream is over for the link (the room runs elsewhere now).
    pub(super) fn on_moving(self: &Arc<Self>, to: String, generation: u64) -> bool {
        let mut inner = self.inner.lock();
        if inner.generation != generation {
            return false;
        }
        if to.is_empty() {
            inner.held = true;
            return true;
        }
        if to == inner.owner.as_str() {
            inner.held = false;
            return true;
        }
        let Ok(owner) = ShardId::new(&to) else {
            tracing::warn!(room = %self.room, to, "moving: not a shard id");
            return true;
        };
        // The old reader and input pump stop at their next look.
        inner.generation += 1;
        if let Some(tx) = inner.tx.take() {
            tx.close();
        }
        inner.owner = owner.clone();
        inner.failing_over = true;
        drop(inner);
        actix::spawn(self.clone().follow(owner));
        false
    }

    /// Re-join every member on `owner`, quietly.
    async fn follow(self: Arc<Self>, owner: ShardId) {
        let Some(cluster) = self.cluster.upgrade() else {
            return;
        };
        if owner == *cluster.shard() {
            self.join_here().await;
            return;
        }
        let Ok(tx) = self.connect().await else {
            tracing::warn!(room = %self.room, %owner, "migrated room's new owner not reachable: failing over");
            self.failover().await;
            return;
        };
        let mut inner = self.inner.lock();
        inner.failing_over = false;
        inner.held = false;
        for (&session, member) in inner.members.iter() {
            let _ = tx.send_msg(&rejoin(&self.room, session, member, inner.implied));
        }
        tracing::debug!(room = %self.room, %owner, members = inner.members.len(), "room migrated: members re-joined");
    }

    /// The room runs on this shard now: every member joins it here (its
    /// migrated seat, quietly) and the link is over.
    async fn join_here(self: &Arc<Self>) {
        let Some(cluster) = self.cluster.upgrade() else {
            return;
        };
        let members: Vec<EdgeMember> = {
            let mut inner = self.inner.lock();
            inner.failing_over = false;
            inner.members.drain().map(|(_, m)| m).collect()
        };
        self.end();
        let Some(rooms) = cluster.rooms() else {
            return;
        };
        let timeout = cluster.settings().call_timeout;
        for member in members {
            self.join_locally(&rooms, member, timeout).await;
        }
    }

    /// Take this shard's own members of a room that just moved to this
    /// link's owner: they re-join it there quietly, their sessions'
    /// queues unchanged (casts reach them through this link from now on).
    ///
    /// The members are in the link when this returns (so their sessions'
    /// casts reach it at once); the stream is opened and the re-joins sent
    /// in the background.
    pub fn adopt(self: &Arc<Self>, members: Vec<Adopted>) {
        {
            let mut inner = self.inner.lock();
            for m in members {
                inner.members.insert(
                    m.link.session,
                    EdgeMember::new(m.link, Some(m.entity), Some(m.at)),
                );
            }
        }
        actix::spawn(self.clone().rejoin_adopted());
    }

    async fn rejoin_adopted(self: Arc<Self>) {
        let Ok(tx) = self.connect().await else {
            tracing::warn!(room = %self.room, "migrated room's new owner not reachable: failing over");
            self.inner.lock().failing_over = true;
            self.failover().await;
            return;
        };
        let inner = self.inner.lock();
        for (&session, member) in inner.members.iter() {
            let _ = tx.send_msg(&rejoin(&self.room, session, member, inner.implied));
        }
    }
}

/// A member's re-join after a move: its seat, where it stood.
fn rejoin(room: &crate::ids::RoomId, session: u64, member: &EdgeMember, implied: bool) -> EdgeMsg {
    EdgeMsg::Join(RemoteJoin {
        session,
        player: member.link.identity.player_id.clone(),
        name: member.link.identity.name.clone(),
        room: room.to_string(),
        resume: true,
        at: member.position().map(|(x, y)| [x, y]),
        implied_moved: implied,
    })
}
