//! Rooms reachable from any shard: where a room runs, and the two ends of
//! its `/tessera/room/1` stream.
//!
//! ```text
//! Session ─RoomRef::call_join─▶ RoomCluster::locate(room)
//!     edge link alive for it? ─yes─▶ Remote(link)
//!     directory owner(room): this shard ─▶ ensure_local: acquire_room(floor = store's epoch),
//!                                          claim_room(epoch) in the store, run it here
//!                            another    ─▶ Remote(EdgeLink for the room)
//!                            none       ─▶ place(room) (rendezvous) ─▶ one of the above
//!
//! edge shard                                   owner shard
//! EdgeLink (one per room, shared by its  ─join/leave/disconnected/inputs/chat─▶  owner::run_stream
//! sessions): inputs drained per tick,    ◀──joined/refused/reliable/tick/closed──  (one EdgeSink; members
//! ticks laid out once per view, pushed                                              seated with RemoteSeat)
//! to every recipient's outbound queue
//! ```
//!
//! - [`edge`]: [`EdgeLink`]: the stream to the owner, its members, and
//!   failover when the stream ends (the room is looked for again, every
//!   member re-joined where it stood, notice 6003).
//! - [`owner`]: serving `/tessera/room/1`: each stream's members seated in
//!   the local room, their inputs fed, their leaves and chats passed on.
//! - [`calls`]: remote members' durable actions: a `give`'s `who_is`
//!   question and its answer, a `pick_up` run on the owner.
//! - [`partition`]: an owner cut off from the directory while a peer is
//!   not freezes its rooms, then hands them over.
//! - this file: [`RoomCluster`]: locating, leasing and releasing rooms,
//!   and the lease notices (a lost lease stops its room at once).
//!
//! A room runs where its lease is: a shard runs a room only after taking
//! the lease (epoch above the store's) and raising the store's fence to
//! it, so a former owner's late writes are refused.

mod calls;
pub mod edge;
pub mod migrate;
mod owner;
mod partition;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protocol::ErrorCode;
use tokio::sync::broadcast;

use crate::cluster::directory::{Directory, DirectoryError, LeaseNotice, ShardId};
use crate::cluster::membership::MemberEvent;
use crate::cluster::tunnel::PeerHub;
use crate::config::{ms, Config};
use crate::ids::{RoomId, SessionId};
use crate::room::{JoinError, RoomSupervisor};
use crate::store::PersisterHandle;
pub use edge::EdgeLink;

/// Owner-local session ids of remote members start here: far above the
/// gateway's counter (from 1), so they never meet a local session's.
const REMOTE_SESSION_BASE: SessionId = 1 << 48;

/// The knobs of remote rooms, from [`Config`].
#[derive(Debug, Clone)]
pub struct RoomSettings {
    /// `cluster.failover_budget_ms`.
    pub failover_budget: Duration,
    /// `cluster.full_hint_ms`.
    pub full_hint: Duration,
    /// `rooms.call_timeout_ms`: a remote member's join at the owner.
    pub call_timeout: Duration,
    /// `rooms.input_queue`: a remote member's input queue at the owner.
    pub input_queue: usize,
    /// `cluster.redis_wait_ms`: how long a lookup waits for Redis.
    pub redis_wait: Duration,
    /// `cluster.input_lead_ms`: how long before the owner's next tick an
    /// edge sends its inputs.
    pub input_lead: Duration,
    /// `cluster.input_late_lead_ms`: how long before the same tick the
    /// inputs that came after that batch go (zero: they wait a tick).
    pub input_late_lead: Duration,
    /// `cluster.input_late_lead_min_ms`: the floor that lead adapts to.
    pub input_late_lead_min: Duration,
    /// `cluster.implied_moved`: this edge computes `moved` itself.
    pub implied_moved: bool,
    /// `cluster.migrate_pause_ms`: how long a room has to answer a pause.
    pub migrate_pause: Duration,
    /// `cluster.migrate_answer_ms`: how long a migration's target has.
    pub migrate_answer: Duration,
    /// `cluster.migrate_forward_ms`: how long a migration forwarded to
    /// the room's owner waits for its answer.
    pub migrate_forward: Duration,
    /// `cluster.partition_handover_ms` (`None`: 0, never).
    pub partition_handover: Option<Duration>,
    /// How recent a peer's word that it reaches the directory must be
    /// to count: 4 × `cluster.swim_period_ms` (a peer speaks about once
    /// a period, probing or answering).
    pub peer_word: Duration,
    /// `rooms.immediate_writes_per_tick`: also the edge's, per tick of a
    /// remote room it fans out.
    pub immediate_writes_per_tick: u32,
}

impl RoomSettings {
    pub fn from_config(config: &Config) -> RoomSettings {
        RoomSettings {
            failover_budget: ms(config.cluster.failover_budget_ms),
            full_hint: ms(config.cluster.full_hint_ms),
            call_timeout: ms(config.rooms.call_timeout_ms),
            input_queue: config.rooms.input_queue,
            redis_wait: ms(config.cluster.redis_wait_ms),
            input_lead: ms(config.cluster.input_lead_ms),
            input_late_lead: ms(config.cluster.input_late_lead_ms),
            input_late_lead_min: ms(config.cluster.input_late_lead_min_ms),
            implied_moved: config.cluster.implied_moved,
            migrate_pause: ms(config.cluster.migrate_pause_ms),
            migrate_answer: ms(config.cluster.migrate_answer_ms),
            migrate_forward: ms(config.cluster.migrate_forward_ms),
            partition_handover: Some(ms(config.cluster.partition_handover_ms))
                .filter(|d| !d.is_zero()),
            peer_word: ms(config.cluster.swim_period_ms.saturating_mul(4)),
            immediate_writes_per_tick: config.rooms.immediate_writes_per_tick,
        }
    }
}

/// Where a join goes.
pub enum Located {
    /// The room runs here (leased, fenced, started on join).
    Local,
    /// The room runs on another shard, through this link.
    Remote(Arc<EdgeLink>),
}

/// The shard's view of rooms across the cluster. One per shard in
/// cluster mode, held by the [`RoomSupervisor`].
pub struct RoomCluster {
    dir: Directory,
    hub: PeerHub,
    rooms: Weak<RoomSupervisor>,
    persister: PersisterHandle,
    settings: RoomSettings,
    /// This shard's links to rooms owned elsewhere, by room.
    edges: Mutex<HashMap<RoomId, Arc<EdgeLink>>>,
    next_sink: AtomicU64,
    next_session: AtomicU64,
    /// The Arbiter the cluster's tasks run on: a migration asked for from
    /// outside it (an HTTP handler) runs there.
    arbiter: actix::ArbiterHandle,
}

impl RoomCluster {
    /// Wire remote rooms into `rooms`: serve `/tessera/room/1` on `hub`
    /// and stop rooms whose lease is lost. Needs the actix system (the
    /// tasks run on the current Arbiter).
    pub fn start(
        dir: Directory,
        hub: PeerHub,
        rooms: &Arc<RoomSupervisor>,
        persister: PersisterHandle,
        settings: RoomSettings,
    ) -> Arc<RoomCluster> {
        let cluster = Arc::new(RoomCluster {
            dir: dir.clone(),
            hub: hub.clone(),
            rooms: Arc::downgrade(rooms),
            persister,
            settings,
            edges: Mutex::new(HashMap::new()),
            next_sink: AtomicU64::new(1),
            next_session: AtomicU64::new(REMOTE_SESSION_BASE),
            arbiter: actix::Arbiter::current(),
        });
        rooms.set_cluster(cluster.clone());
        let streams = hub.listen(protocol::peer::ROOM_PROTOCOL);
        actix::spawn(owner::serve(Arc::downgrade(&cluster), streams));
        let offers = hub.listen(protocol::peer::MIGRATE_PROTOCOL);
        actix::spawn(migrate::target::serve(Arc::downgrade(&cluster), offers));
        actix::spawn(watch_leases(
            Arc::downgrade(rooms),
            dir,
            dir_notices(&cluster),
        ));
        cluster
    }

    pub fn shard(&self) -> &ShardId {
        self.dir.shard()
    }

    /// Follow the failure detector: a shard declared dead has the links
    /// to its rooms fail over at once, instead of when their streams time
    /// out. Ends when the membership is gone.
    pub fn follow(self: &Arc<Self>, mut events: broadcast::Receiver<MemberEvent>) {
        let cluster = Arc::downgrade(self);
        actix::spawn(async move {
            loop {
                let shard = match events.recv().await {
                    Ok(MemberEvent::Dead { shard, .. }) => shard,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                let Some(cluster) = cluster.upgrade() else {
                    return;
                };
                let Ok(shard) = ShardId::new(&shard) else {
                    continue;
                };
                let links: Vec<Arc<EdgeLink>> = cluster.edges.lock().values().cloned().collect();
                for link in links {
                    link.owner_dead(&shard);
                }
            }
        });
    }

    pub(crate) fn settings(&self) -> &RoomSettings {
        &self.settings
    }

    pub(crate) fn hub(&self) -> &PeerHub {
        &self.hub
    }

    pub(crate) fn rooms(&self) -> Option<Arc<RoomSupervisor>> {
        self.rooms.upgrade()
    }

    /// How often a link to `room` sends its members' inputs.
    pub(crate) fn tick_period(&self, room: &RoomId) -> Duration {
        self.rooms()
            .map_or(Duration::from_millis(50), |r| r.tick_period(room))
    }

    fn next_sink(&self) -> u64 {
        self.next_sink.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn dir(&self) -> &Directory {
        &self.dir
    }

    pub(crate) fn persister(&self) -> &PersisterHandle {
        &self.persister
    }

    fn next_session(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// The live link through which `session` is a member of `room`, if it
    /// is one remotely (casts go there; otherwise to the local room).
    pub fn edge_of(&self, room: &RoomId, session: SessionId) -> Option<Arc<EdgeLink>> {
        self.edges
            .lock()
            .get(room)
            .filter(|link| link.has(session))
            .cloned()
    }

    /// Members on this shard of rooms owned elsewhere, by room.
    pub fn remote_memberships(&self) -> Vec<(RoomId, String, usize)> {
        let mut out: Vec<_> = self
            .edges
            .lock()
            .iter()
            .map(|(room, link)| (room.clone(), link.owner().to_string(), link.len()))
            .collect();
        out.sort();
        out
    }

    /// Where a join of `room` goes: through this shard's live link to it,
    /// or wherever the directory says (placing the room if nobody runs
    /// it). A room placed here is leased and fenced first.
    pub async fn locate(self: &Arc<Self>, room: &RoomId) -> Result<Located, JoinError> {
        // A room paused for a live migration is looked for once the move
        // is over (a few milliseconds; bounded by the migration budgets):
        // it runs here again or on the target by then.
        if let Some(rooms) = self.rooms() {
            let budget = self.settings.migrate_pause + self.settings.migrate_answer;
            let deadline = Instant::now() + budget;
            while rooms.is_migrating(room) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if let Some(link) = self.edges.lock().get(room).filter(|l| l.is_live()) {
            return Ok(Located::Remote(link.clone()));
        }
        // A room running here under a lease this shard holds needs no
        // lookup: joins go on while Redis is away.
        if self.runs_here(room) {
            return Ok(Located::Local);
        }
        match self.resolve(room).await? {
            None => Ok(Located::Local),
            Some(owner) => Ok(Located::Remote(self.link_to(room, owner))),
        }
    }

    /// The room's owner: `None` when it is this shard (leased and ready to
    /// run here), else the shard that runs it.
    pub(crate) async fn resolve(&self, room: &RoomId) -> Result<Option<ShardId>, JoinError> {
        let owner = self.wait_for_redis(|| self.dir.owner(room)).await?;
        let shard = match owner {
            Some((shard, _)) => shard,
            None => self.wait_for_redis(|| self.dir.place(room)).await?,
        };
        if shard == *self.shard() {
            self.ensure_local(room).await
        } else {
            Ok(Some(shard))
        }
    }

    /// Room `room` runs here under the lease this shard holds.
    fn runs_here(&self, room: &RoomId) -> bool {
        let Some(rooms) = self.rooms() else {
            return false;
        };
        let epoch = rooms.epoch(room);
        epoch > 0 && self.dir.held_epoch(room) == Some(epoch) && rooms.current(room).is_some()
    }

    /// Take `room`'s lease for this shard (if it is not held here yet)
    /// and raise the store's fence to its epoch. `Some(shard)`: another
    /// shard holds it.
    pub(crate) async fn ensure_local(&self, room: &RoomId) -> Result<Option<ShardId>, JoinError> {
        let rooms = self.rooms().ok_or(JoinError::Crashed)?;
        if self.runs_here(room) {
            return Ok(None);
        }
        let label = room.to_string();
        // The floor: the epoch the store last saw for the room, so the new
        // one is above every owner's that ever wrote it.
        let floor = match self.persister.load_room(&label).await {
            Ok(Some(doc)) => doc.owner_epoch,
            _ => 0,
        };
        let lease = match self.dir.acquire_room(room, floor).await {
            Ok(lease) => lease,
            // This shard's id at a later epoch: another process with this
            // id (a restart) runs the room, and this one is stale.
            Err(DirectoryError::Held { shard, .. }) if shard == *self.shard() => {
                tracing::warn!(%room, "the room's lease is a later process's with this shard's id");
                return Err(JoinError::Refused(ErrorCode::RoomUnavailable.as_u16()));
            }
            Err(DirectoryError::Held { shard, .. }) => return Ok(Some(shard)),
            Err(e) => return Err(directory_error(e)),
        };
        if rooms.epoch(room) != lease.epoch {
            let epoch = lease.epoch;
            // Recorded before the store is asked: a release of this room
            // still on its way (it stopped a moment ago) sees it and lets
            // the lease be.
            rooms.set_epoch(room, epoch);
            let claimed = self
                .persister
                .admin_call(move |store| async move { store.claim_room(label, epoch).await })
                .await;
            if let Err(e) = claimed {
                // A store that does not answer now: the room's own writes
                // carry the epoch and raise the fence when they land.
                tracing::warn!(%room, epoch, error = %e, "claiming the room in the store");
            }
            tracing::info!(%room, epoch, "room leased here");
        }
        Ok(None)
    }

    /// The link to `room` on `owner`, made if there is none or the last
    /// one is over.
    fn link_to(self: &Arc<Self>, room: &RoomId, owner: ShardId) -> Arc<EdgeLink> {
        let mut edges = self.edges.lock();
        if let Some(link) = edges.get(room).filter(|l| l.is_live()) {
            return link.clone();
        }
        let link = EdgeLink::new(room.clone(), owner, Arc::downgrade(self));
        edges.insert(room.clone(), link.clone());
        link
    }

    /// `link` is over (its members left, moved here or failed).
    pub(crate) fn forget_link(&self, link: &Arc<EdgeLink>) {
        let mut edges = self.edges.lock();
        if edges.get(link.room()).is_some_and(|l| Arc::ptr_eq(l, link)) {
            edges.remove(link.room());
        }
    }

    /// A room that ran here stopped: give its lease back, unless a join
    /// leased it again meanwhile (it has an epoch here again).
    pub(crate) fn release(&self, room: &RoomId) {
        let (dir, room, rooms) = (self.dir.clone(), room.clone(), self.rooms.clone());
        actix::spawn(async move {
            if rooms.upgrade().is_none_or(|r| r.epoch(&room) != 0) {
                return;
            }
            match dir.release_room(&room).await {
                Ok(()) => tracing::debug!(%room, "lease released"),
                Err(e) => tracing::debug!(%room, error = %e, "lease not released"),
            }
        });
    }

    /// Retry `op` while Redis is unavailable, up to `cluster.redis_wait_ms`.
    async fn wait_for_redis<T, F, Fut>(&self, mut op: F) -> Result<T, JoinError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, DirectoryError>>,
    {
        let deadline = Instant::now() + self.settings.redis_wait;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_unavailable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(directory_error(e)),
            }
        }
    }

    /// An `auto` instance found full on its owner.
    pub(crate) fn hint_full(&self, room: &RoomId) {
        if let Some(rooms) = self.rooms() {
            rooms.hint_full(room, self.settings.full_hint);
        }
    }
}

/// A directory error as the join's answer: 5005 when Redis did not
/// answer in time, 3004 otherwise.
fn directory_error(e: DirectoryError) -> JoinError {
    tracing::warn!(error = %e, "cluster directory: join not placed");
    match e {
        DirectoryError::Unavailable(_) => {
            JoinError::Refused(ErrorCode::DirectoryUnavailable.as_u16())
        }
        _ => JoinError::Refused(ErrorCode::RoomUnavailable.as_u16()),
    }
}

fn dir_notices(cluster: &RoomCluster) -> broadcast::Receiver<LeaseNotice> {
    cluster.dir.notices()
}

/// Stop rooms whose lease was lost. A listener that fell behind checks
/// every room it runs against the leases held.
async fn watch_leases(
    rooms: Weak<RoomSupervisor>,
    dir: Directory,
    mut notices: broadcast::Receiver<LeaseNotice>,
) {
    loop {
        let notice = notices.recv().await;
        let Some(rooms) = rooms.upgrade() else {
            return;
        };
        match notice {
            Ok(LeaseNotice::Lost { room, epoch }) => rooms.lease_lost(&room, epoch),
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                for room in rooms.running_rooms() {
                    let epoch = rooms.epoch(&room);
                    if epoch > 0 && dir.held_epoch(&room) != Some(epoch) {
                        rooms.lease_lost(&room, epoch);
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
