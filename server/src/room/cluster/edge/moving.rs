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
//!
//! No input is lost to a move: a batch already on its way when the room
//! paused may reach the old owner after the room's state left it, so each
//! member's inputs sent lately ([`SentInputs`]) go again to wherever the
//! room runs next, right after the member's re-join. A room applies an
//! input only when its `seq` is above the member's last applied one, so
//! those that did travel with the state are ignored.

use std::collections::VecDeque;
use std::sync::Arc;

use protocol::msg::EntityId;
use protocol::peer::{EdgeMsg, Input, Inputs as InputBatch, RemoteJoin};

use super::{EdgeLink, EdgeMember};
use crate::cluster::directory::ShardId;
use crate::metrics as m;
use crate::room::MemberLink;

/// A member of the source's own room handed to a link to the new owner.
pub struct Adopted {
    pub link: MemberLink,
    pub entity: EntityId,
    pub at: (f32, f32),
}

/// A member's inputs sent lately: at most `rooms.input_queue`, as many as
/// can wait unapplied in its queue at the owner.
#[derive(Debug, Default)]
pub(super) struct SentInputs(VecDeque<(u32, f32, f32)>);

impl SentInputs {
    fn record(&mut self, input: (u32, f32, f32), keep: usize) {
        while self.0.len() >= keep.max(1) {
            self.0.pop_front();
        }
        self.0.push_back(input);
    }

    fn take(&mut self) -> VecDeque<(u32, f32, f32)> {
        std::mem::take(&mut self.0)
    }
}

impl EdgeLink {
    /// Remember the inputs of a batch on its way to the owner.
    pub(super) fn record_sent(&self, batch: &[Input]) {
        if batch.is_empty() {
            return;
        }
        let keep = self
            .cluster
            .upgrade()
            .map_or(1, |c| c.settings().input_queue);
        let mut inner = self.inner.lock();
        for i in batch {
            if let Some(member) = inner.members.get_mut(&i.session) {
                member.sent.record((i.seq, i.dx, i.dy), keep);
            }
        }
    }

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
        let implied = inner.implied;
        let mut again = Vec::new();
        for (&session, member) in inner.members.iter_mut() {
            let _ = tx.send_msg(&rejoin(&self.room, session, member, implied));
            again.extend(member.sent.take().into_iter().map(|(seq, dx, dy)| Input {
                session,
                seq,
                dx,
                dy,
            }));
        }
        // After the re-joins on the same stream: the owner seats each
        // member before it reads these.
        if !again.is_empty() {
            metrics::counter!(m::MIGRATION_INPUTS_RESENT).increment(again.len() as u64);
            let _ = tx.send_msg(&EdgeMsg::Inputs(InputBatch { batch: again }));
        }
        tracing::debug!(room = %self.room, %owner, members = inner.members.len(), "room migrated: members re-joined");
    }

    /// The room runs on this shard now: every member joins it here (its
    /// migrated seat, quietly) and the link is over.
    async fn join_here(self: &Arc<Self>) {
        let Some(cluster) = self.cluster.upgrade() else {
            return;
        };
        let mut members: Vec<EdgeMember> = {
            let mut inner = self.inner.lock();
            inner.failing_over = false;
            inner.members.drain().map(|(_, m)| m).collect()
        };
        // Inputs that may have reached the old owner too late go to the
        // room here with the newer ones (it applies them in `seq` order).
        let mut again = 0;
        for member in &mut members {
            for (seq, dx, dy) in member.sent.take() {
                member.link.inputs.push(seq, dx, dy);
                again += 1;
            }
        }
        metrics::counter!(m::MIGRATION_INPUTS_RESENT).increment(again);
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

#[cfg(test)]
mod tests {
    use super::SentInputs;

    #[test]
    fn sent_inputs_keep_the_latest_few_in_order_and_are_taken_once() {
        let mut sent = SentInputs::default();
        for seq in 1..=5 {
            sent.record((seq, 1.0, 0.0), 3);
        }
        let seqs: Vec<u32> = sent.take().into_iter().map(|(s, _, _)| s).collect();
        assert_eq!(seqs, [3, 4, 5]);
        assert!(sent.take().is_empty());
        // A keep of 0 still keeps the latest one.
        sent.record((9, 0.0, 1.0), 0);
        assert_eq!(sent.take().len(), 1);
    }
}
