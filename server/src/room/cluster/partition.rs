//! An owner cut off from the directory while its peers are not.
//!
//! A shard that cannot renew a room's lease does not know whether it still
//! owns the room. If nobody reaches Redis (an outage the whole cluster
//! shares) nobody can take the lease either, and the room runs on: that is
//! the "Redis down for 10 s" rule, where no player notices. But when a
//! peer still reaches Redis, that peer may take the lease as soon as it
//! expires, and this shard's copy of the room would go on showing its
//! players a world that is about to be replaced (every write of it fenced
//! by the store). So:
//!
//! ```text
//! every poll (≤ 250 ms):
//!   leases past their deadline here ("expiring"), and a peer said within
//!   cluster.swim_period_ms × 4 that it reaches Redis (the swim `dir` flag)
//!     ─▶ the room freezes: no tick, no write, seats kept, inputs wait
//!   frozen ≥ cluster.partition_handover_ms (≥ renew_ms: the lease has
//!   expired in Redis by then)
//!     ─▶ handed over: stopped as if its lease were lost (edges are told
//!        `closed` and fail over to the shard that takes the room; local
//!        members get the room-failed path), the lease forgotten here
//!   the lease re-asserted, or no peer reaches Redis any more
//!     ─▶ thawed: every member gets a full view at the next tick
//! ```
//!
//! A lease that another shard took is `Lost` as before: the room stops at
//! once whether frozen or not.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::RoomCluster;
use crate::cluster::directory::Directory;
use crate::cluster::membership::Membership;
use crate::ids::RoomId;
use crate::metrics as m;
use crate::room::RoomSupervisor;

/// How often the guard looks at most.
const MAX_POLL: Duration = Duration::from_millis(250);

/// A room frozen here: under which epoch, since when.
struct Frozen {
    epoch: u64,
    since: Instant,
}

impl RoomCluster {
    /// Guard this shard's rooms against a partition from the directory,
    /// with `membership` telling what the peers say of it (and telling
    /// them what this shard says). Runs on the current Arbiter until the
    /// rooms are gone.
    pub fn guard_partitions(self: &Arc<Self>, membership: Membership) {
        let dir = self.dir.clone();
        let probe_dir = dir.clone();
        membership.tell_directory_reach(Box::new(move || probe_dir.reachable()));
        let poll = (dir.settings().renew / 4).min(MAX_POLL);
        let settings = self.settings.clone();
        actix::spawn(guard(
            self.rooms.clone(),
            dir,
            membership,
            poll,
            settings.peer_word,
            settings.partition_handover,
        ));
    }
}

async fn guard(
    rooms: Weak<RoomSupervisor>,
    dir: Directory,
    membership: Membership,
    poll: Duration,
    peer_word: Duration,
    handover: Option<Duration>,
) {
    let mut frozen: HashMap<RoomId, Frozen> = HashMap::new();
    let mut every = tokio::time::interval(poll);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(rooms) = rooms.upgrade() else {
            return;
        };
        let peers_reach = membership.directory_seen_by_peer(peer_word);
        look(&rooms, &dir, peers_reach, handover, &mut frozen);
        metrics::gauge!(m::ROOMS_FROZEN).set(frozen.len() as f64);
    }
}

/// One look: freeze, thaw or hand over each room as the module doc says.
fn look(
    rooms: &RoomSupervisor,
    dir: &Directory,
    peers_reach: bool,
    handover: Option<Duration>,
    frozen: &mut HashMap<RoomId, Frozen>,
) {
    let expiring: HashMap<RoomId, u64> = dir
        .held()
        .into_iter()
        .filter(|&(_, _, expired)| expired)
        .map(|(room, epoch, _)| (room, epoch))
        .collect();
    frozen.retain(|room, f| {
        let still = peers_reach && expiring.get(room) == Some(&f.epoch);
        if !still && rooms.freeze(room, f.epoch, false) {
            tracing::info!(%room, epoch = f.epoch, reason = if peers_reach { "lease re-asserted" } else { "no peer reaches the directory" }, "room thawed");
        }
        still
    });
    if !peers_reach {
        return;
    }
    let now = Instant::now();
    for (room, epoch) in expiring {
        // Only rooms running here under that lease (a room that stopped
        // meanwhile is not started again by this).
        if rooms.epoch(&room) != epoch {
            continue;
        }
        let f = frozen.entry(room.clone()).or_insert_with(|| {
            tracing::warn!(%room, epoch, "cut off from the directory while a peer reaches it: freezing the room");
            Frozen { epoch, since: now }
        });
        // Sent every look: a room restarted after a panic comes back
        // thawed.
        rooms.freeze(&room, epoch, true);
        if handover.is_some_and(|h| now.saturating_duration_since(f.since) >= h) {
            frozen.remove(&room);
            rooms.hand_over(&room, epoch);
            dir.abandon(&room);
            metrics::counter!(m::ROOM_HANDOVERS).increment(1);
        }
    }
}
