//! A room frozen while its owner is cut off from the directory.
//!
//! An owner that cannot renew a room's lease while some peer still reaches
//! Redis may lose the lease to that peer any moment; running on would show
//! its players a world that another shard is about to replace (every write
//! of it fenced). So the partition guard (`room::cluster::partition`)
//! freezes the room: no tick, so nothing simulated, published, snapshotted
//! or saved; inputs wait in the members' queues (bounded as ever); members
//! keep their seats. Thawed (the lease was re-asserted, or no peer reaches
//! Redis any more, so nobody can take the room), every member gets a full
//! view at the next tick. A room frozen past `cluster.partition_handover_ms`
//! is handed over instead: stopped as if its lease were lost.

use actix::prelude::*;

use super::Room;
use crate::metrics as m;

/// Freeze (`true`) or thaw (`false`) the room. Idempotent.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Freeze(pub bool);

impl Handler<Freeze> for Room {
    type Result = ();

    fn handle(&mut self, Freeze(on): Freeze, ctx: &mut Context<Self>) {
        if on == self.frozen {
            return;
        }
        self.guarded(ctx, "freeze", |room, _| room.set_frozen(on));
    }
}

impl Room {
    fn set_frozen(&mut self, on: bool) {
        self.frozen = on;
        if on {
            // The last ticks' positions, while the lease is most likely
            // still ours (fenced like every write if it is not).
            self.save_moved();
            tracing::warn!(room = %self.id, "room frozen: its owner cannot reach the directory");
            metrics::counter!(m::ROOM_FREEZES).increment(1);
            return;
        }
        tracing::info!(room = %self.id, "room thawed");
        for member in self.members.values().filter(|m| m.connected()) {
            match &member.state.link.remote {
                Some(seat) => seat.edge.want_full(),
                None => member.state.link.out.request_resync(),
            }
        }
        self.dirty = true;
    }
}
