//! The supervisor's cluster side: the lease epoch each room runs under,
//! rooms that stop (their lease is released) or lose their lease (they
//! stop at once), and instances found full on another shard.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::RoomSupervisor;
use crate::ids::RoomId;
use crate::room::cluster::RoomCluster;
use crate::room::remote::LeaseLost;
use crate::room::Freeze;

impl RoomSupervisor {
    /// Cluster mode: joins resolve rooms through `cluster` from now on.
    pub fn set_cluster(&self, cluster: Arc<RoomCluster>) {
        let _ = self.cluster.set(cluster);
    }

    pub fn cluster(&self) -> Option<&Arc<RoomCluster>> {
        self.cluster.get()
    }

    /// Room `id` runs here under lease epoch `epoch`: its incarnations
    /// write with it (the store's fence refuses older owners' writes).
    pub(crate) fn set_epoch(&self, id: &RoomId, epoch: u64) {
        self.epochs.lock().insert(id.clone(), epoch);
    }

    /// The lease epoch room `id` runs under here (0: none, a single shard).
    pub fn epoch(&self, id: &RoomId) -> u64 {
        self.epochs.lock().get(id).copied().unwrap_or(0)
    }

    /// The tick period of room `id`'s map (a remote room's inputs are
    /// batched at this rate).
    pub fn tick_period(&self, id: &RoomId) -> Duration {
        let hz = self
            .maps
            .get(id.map().as_ref())
            .map_or(20, |d| d.tick_hz.max(1));
        Duration::from_secs_f64(1.0 / f64::from(hz))
    }

    /// Instances a join found full on their owner lately.
    pub(super) fn full_instances(&self) -> Vec<RoomId> {
        let now = Instant::now();
        let mut hints = self.full_hints.lock();
        hints.retain(|_, until| *until > now);
        hints.keys().cloned().collect()
    }

    /// A join found instance `id` full on its owner: `auto` placement
    /// skips it for `for_how_long`.
    pub(crate) fn hint_full(&self, id: &RoomId, for_how_long: Duration) {
        self.full_hints
            .lock()
            .insert(id.clone(), Instant::now() + for_how_long);
    }

    /// Room `id` stopped here (idle): its lease is released.
    pub(super) fn stopped(&self, id: &RoomId) {
        let had = self.epochs.lock().remove(id).is_some();
        if let (true, Some(cluster)) = (had, self.cluster.get()) {
            cluster.release(id);
        }
    }

    /// This shard lost room `id`'s lease at `epoch` (another shard holds
    /// it now): the room stops at once, without saving (its writes would
    /// be fenced anyway), releasing nothing. Its members here get the
    /// room-failed path; edges are told the room is closed here, and look
    /// for its new owner.
    pub fn lease_lost(&self, id: &RoomId, epoch: u64) {
        self.stop_unowned(id, epoch, "lease lost: stopping the room");
    }

    /// Freeze (or thaw) room `id` if it runs here under lease `epoch`
    /// (see [`crate::room::Freeze`]); false when it does not.
    pub fn freeze(&self, id: &RoomId, epoch: u64, on: bool) -> bool {
        if self.epoch(id) != epoch {
            return false;
        }
        let addr = self.rooms.lock().get(id).map(|e| e.addr.clone());
        match addr {
            Some(addr) => {
                addr.do_send(Freeze(on));
                true
            }
            None => false,
        }
    }

    /// Room `id`, frozen here under `epoch` for too long while this shard
    /// cannot reach the directory, is given up: stopped as if its lease
    /// were lost (its edges look for the shard that takes it).
    pub fn hand_over(&self, id: &RoomId, epoch: u64) {
        self.stop_unowned(
            id,
            epoch,
            "cut off from the directory: handing the frozen room over",
        );
    }

    fn stop_unowned(&self, id: &RoomId, epoch: u64, why: &str) {
        {
            let mut epochs = self.epochs.lock();
            if epochs.get(id) != Some(&epoch) {
                return;
            }
            epochs.remove(id);
        }
        let entry = self.rooms.lock().remove(id);
        if let Some(entry) = entry {
            tracing::warn!(room = %id, epoch, "{why}");
            entry.addr.do_send(LeaseLost);
        }
    }
}
