//! A room leaving this shard (live migration, `room::cluster::migrate`):
//! at a tick boundary (between two ticks, as every message is handled)
//! the room takes its snapshot, stops without saving (the target owns its
//! state from here on, or this shard restarts it from the same snapshot
//! if the move fails) and hands the snapshot over, with when its next tick
//! was due, so that the target ticks in step.

use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use super::{Room, RoomSnapshot};

/// Pause for a migration: the room's snapshot as of its last tick; the
/// room has stopped when the answer comes.
#[derive(Message)]
#[rtype(result = "Option<(Arc<RoomSnapshot>, Instant)>")]
pub struct MigrateOut;

impl Handler<MigrateOut> for Room {
    type Result = Option<(Arc<RoomSnapshot>, Instant)>;

    fn handle(&mut self, _: MigrateOut, ctx: &mut Context<Self>) -> Self::Result {
        self.guarded(ctx, "migrate_out", |room, ctx| {
            room.snapshot();
            // Not crashed, but nothing may run after this: `stopped`
            // saves nothing, the next owner (or incarnation) does.
            room.crashed = true;
            ctx.stop();
            // When the next tick was due: the target ticks in step.
            (room.slot.snapshot.lock().clone(), room.next_tick)
        })
    }
}
