//! The target's side of `/tessera/migrate/1`: take the room's lease from
//! the source by compare-and-set, start the room from the offered state,
//! answer `accepted` (or `refused`, and nothing changed here).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use protocol::peer::migrate::{Accepted, MigrateMsg, MigrateRefusal, Offer, Refused};
use protocol::peer::ResetCode;
use tokio::sync::mpsc;

use super::super::RoomCluster;
use super::wire::from_wire;
use crate::cluster::directory::{DirectoryError, ShardId, ShardState};
use crate::cluster::tunnel::PeerStream;
use crate::ids::RoomId;
use crate::supervise::FaultActor;

/// A migrated room's first tick comes at least this long after it starts:
/// about what its members' shards take to re-join them (the answer's way
/// back, a stream opened, the joins), so that tick reaches them.
const REJOIN_LEAD: Duration = Duration::from_millis(10);

/// The fault point `migrate_in` tripped: answer nothing, as a target that
/// died would.
const DIED: &str = "fault point migrate_in";

/// Take offers until the hub stops serving them.
pub(in crate::room::cluster) async fn serve(
    cluster: Weak<RoomCluster>,
    mut streams: mpsc::Receiver<PeerStream>,
) {
    while let Some(stream) = streams.recv().await {
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        actix::spawn(receive(cluster, stream));
    }
}

async fn receive(cluster: Arc<RoomCluster>, stream: PeerStream) {
    let PeerStream {
        peer, tx, mut rx, ..
    } = stream;
    let offer = match rx.recv_msg::<MigrateMsg>().await {
        Some(Ok(MigrateMsg::Offer(offer))) => offer,
        Some(Ok(other)) => {
            tracing::warn!(%peer, ?other, "migrate stream: expected an offer");
            return;
        }
        Some(Err(e)) => {
            tracing::debug!(%peer, error = %e, "migrate stream broke before its offer");
            return;
        }
        None => return,
    };
    let room = offer.room.clone();
    let answer = match take(&cluster, offer).await {
        Ok(epoch) => MigrateMsg::Accepted(Accepted { room, epoch }),
        Err((code, reason)) => {
            tracing::info!(%peer, room, ?code, reason, "migration refused");
            MigrateMsg::Refused(Refused { room, code, reason })
        }
    };
    match &answer {
        MigrateMsg::Refused(r) if r.reason == DIED => tx.reset(ResetCode::Closed),
        _ => {
            if tx.send_msg(&answer).is_ok() {
                tx.close();
            }
        }
    }
}

/// Take the offered room: the lease by compare-and-set, then the room
/// started from its state. Its new lease epoch, or why not.
async fn take(cluster: &Arc<RoomCluster>, offer: Offer) -> Result<u64, (MigrateRefusal, String)> {
    let id: RoomId = offer.room.parse().map_err(|_| {
        (
            MigrateRefusal::UnknownMap,
            format!("no room {:?}", offer.room),
        )
    })?;
    let from = ShardId::new(&offer.from).map_err(|_| {
        (
            MigrateRefusal::LeaseMoved,
            format!("bad shard {:?}", offer.from),
        )
    })?;
    let rooms = cluster
        .rooms()
        .ok_or((MigrateRefusal::Draining, "shutting down".to_string()))?;
    if cluster.dir().state() != ShardState::Ready {
        return Err((
            MigrateRefusal::Draining,
            format!("shard {} is not ready (draining)", cluster.shard()),
        ));
    }
    if !rooms.has_map(id.map()) {
        return Err((
            MigrateRefusal::UnknownMap,
            format!("no map named {:?}", id.map()),
        ));
    }
    if rooms.runs(&id) {
        return Err((MigrateRefusal::Busy, format!("{id} runs here already")));
    }
    // A drill's "target dies mid-migration": the offer is dropped
    // unanswered, the stream reset (the source resumes the room).
    let label = id.to_string();
    let tripped = crate::supervise::catch(|| {
        rooms
            .faults()
            .trip(FaultActor::Room, "migrate_in", Some(&label))
    });
    if tripped.is_err() {
        return Err((MigrateRefusal::Busy, DIED.into()));
    }
    let lease = match cluster.dir().take_over_room(&id, &from, offer.epoch).await {
        Ok(lease) => lease,
        Err(e @ (DirectoryError::Held { .. } | DirectoryError::NotOwner { .. })) => {
            return Err((MigrateRefusal::LeaseMoved, e.to_string()))
        }
        Err(e) => return Err((MigrateRefusal::Directory, e.to_string())),
    };
    // The first tick in step with the source's, but not before the
    // members can be back (their shards re-join them once we answer).
    let first_tick = (offer.state.next_tick_us > 0)
        .then(|| Instant::now() + Duration::from_micros(offer.state.next_tick_us).max(REJOIN_LEAD));
    let snapshot = from_wire(offer.state, cluster.settings().input_queue, || {
        cluster.next_session()
    });
    if !rooms.start_migrated(&id, Arc::new(snapshot), lease.epoch, first_tick) {
        // Lost a race with a join starting it here: the lease is ours and
        // the room runs, from the store rather than the snapshot.
        tracing::warn!(room = %id, "migrated room found running already");
    }
    // The store's fence follows; until it lands, the room's own writes
    // carry the epoch and raise it.
    let (label, epoch) = (id.to_string(), lease.epoch);
    let persister = cluster.persister().clone();
    actix::spawn(async move {
        let claimed = persister
            .admin_call(move |store| async move { store.claim_room(label, epoch).await })
            .await;
        if let Err(e) = claimed {
            tracing::warn!(epoch, error = %e, "claiming a migrated room in the store");
        }
    });
    tracing::info!(room = %id, %from, epoch, "room migrated here");
    Ok(lease.epoch)
}
