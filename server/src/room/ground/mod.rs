//! Items lying on a map: spawners, the durable pick-up, and the room
//! document that keeps them across restarts.
//!
//! ```text
//! pick_up ─▶ Room: on ground? not taken? in reach? ──no──▶ 3008 / 3009
//!              │ item → pending, rev+1, items.removed to all
//!              ▼
//!          durable_room(doc)  (write-through) ──fails──▶ item back, 5003
//!              ▼ ok
//!          durable(Adjust "pickup:<map>:<epoch>:<id>")  (idempotent)
//!              ├─ ok ─────────▶ pending dropped (write-behind), done + inventory
//!              ├─ refused ────▶ item back, error
//!              └─ in doubt ───▶ stays pending, retried with the same op id; 5004
//! ```
//!
//! Both or neither: the item is off the ground in the store before the
//! player is credited, and the credit is idempotent by its op id, so a crash
//! between the two writes is finished by re-driving the pending entry (at
//! load, or at a supervisor restart, after writing the restored document
//! through again) rather than by guessing. The op id names the room
//! document's epoch, a nonce drawn when the document is created or rebuilt
//! (item ids start again at 1 then), so it never meets the id of another
//! pick-up in the op ledger. An item is put
//! back only when no credit can have been applied: the first attempt failed
//! without being sent, or the store refused it.
//!
//! `Ground` holds the items and pending pick-ups and decides, without
//! I/O: `Ground::take` checks a pick-up and moves the item to pending,
//! returning a `Take`; the pick-up's steps (`pickup.rs`: `pick_up`,
//! `on_taken`, `credit`, `on_credited`, `on_retry`, `redrive`) mutate only
//! the ground and return the [`Effect`]s that follow; so do starting,
//! loading, securing a restored ground, spawning and resyncing
//! (`load.rs`), while `Ground::spawn` returns the items its spawners add.
//! The ground is no `impl Room`: the room carries the effects out
//! (answers, broadcasts, timers, store calls: `room/effects.rs`) and feeds
//! each store result to the next step.
//!
//! Every store call is a future spawned on the room's context whose result
//! comes back behind the panic boundary (`Room::guarded`); the room never
//! waits for the store. Until the room's document is loaded, spawners wait
//! and pick-ups are answered 3004.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use protocol::msg::Items;
use protocol::ServerMsg;
use rand::Rng;

use super::view::encode_frame;
use crate::config::SpawnerConfig;
use crate::ids::SessionId;
use crate::store::ids::fresh_nonce;
use crate::store::{GroundItem, PendingPickup};
use crate::supervise::Backoff;
use crate::wire;

mod load;
mod pickup;

pub(super) use pickup::{Effect, Write};

/// Backoff of store retries (loading the document, an in-doubt credit).
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);

/// Pick up ground item `item` (a validated `pick_up`).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PickUp {
    pub session: SessionId,
    pub req: u32,
    pub item: u64,
}

/// The ground as a supervisor restart needs it.
#[derive(Clone, Debug, Default)]
pub struct GroundSnapshot {
    /// The room's document was loaded; when not, the next incarnation
    /// loads it.
    pub loaded: bool,
    pub rev: u64,
    pub next_item: u64,
    pub epoch: String,
    pub owner_epoch: u64,
    pub items: Vec<GroundItem>,
    pub pending: Vec<PendingPickup>,
}

/// A pick-up between "off the ground" and "credited".
struct Pickup {
    op_id: String,
    player: String,
    item: GroundItem,
    /// Who waits for `done` or the error: session and request number.
    waiter: Option<(SessionId, u32)>,
    /// A store call for it is under way.
    in_flight: bool,
    /// A credit may have been applied already (an attempt ended in doubt,
    /// or the entry came back from the store or a snapshot): from then on
    /// the item is never put back, the credit is retried until it lands.
    maybe_applied: bool,
    failures: u32,
}

/// The ground of one room.
pub(super) struct Ground {
    loaded: bool,
    rev: u64,
    next_item: u64,
    /// The room document's epoch (see [`RoomState::epoch`]).
    epoch: String,
    /// The owner epoch the room writes under (see
    /// [`RoomState::owner_epoch`]): the loaded document's for now (a
    /// single shard owns every room); the cluster's room wiring sets it
    /// from the room's lease.
    owner_epoch: u64,
    /// Cluster mode: the lease epoch this shard runs the room under; the
    /// owner epoch is raised to it when the room starts.
    lease_epoch: u64,
    items: BTreeMap<u64, GroundItem>,
    pending: BTreeMap<u64, Pickup>,
    /// When each spawner of the map is due next.
    spawn_due: Vec<Instant>,
    load_failures: u32,
}

impl Ground {
    pub(super) fn new() -> Ground {
        Ground {
            loaded: false,
            rev: 0,
            next_item: 1,
            epoch: String::new(),
            owner_epoch: 0,
            lease_epoch: 0,
            items: BTreeMap::new(),
            pending: BTreeMap::new(),
            spawn_due: Vec::new(),
            load_failures: 0,
        }
    }

    pub(super) fn snapshot(&self) -> GroundSnapshot {
        GroundSnapshot {
            loaded: self.loaded,
            rev: self.rev,
            next_item: self.next_item,
            epoch: self.epoch.clone(),
            owner_epoch: self.owner_epoch,
            items: self.items.values().cloned().collect(),
            pending: self.pending.values().map(Pickup::stored).collect(),
        }
    }

    /// The owner epoch every write of this room carries.
    pub(super) fn owner_epoch(&self) -> u64 {
        self.owner_epoch
    }

    /// Cluster mode: the room runs under lease epoch `epoch`; its writes
    /// carry it (or the stored epoch, if that is higher: then they are
    /// fenced, as they must be).
    pub(in crate::room) fn set_lease_epoch(&mut self, epoch: u64) {
        self.lease_epoch = epoch;
        self.owner_epoch = self.owner_epoch.max(epoch);
    }

    fn install(
        &mut self,
        rev: u64,
        next_item: u64,
        epoch: &str,
        items: Vec<GroundItem>,
        pending: Vec<PendingPickup>,
    ) {
        self.loaded = true;
        self.rev = rev;
        // A new document (none stored, or a bad one read as none), or one
        // from before epochs: a new epoch, written with the next change
        // and before any op id names it.
        self.epoch = if epoch.is_empty() {
            fresh_nonce()
        } else {
            epoch.to_string()
        };
        self.items = items.into_iter().map(|i| (i.id, i)).collect();
        self.pending = pending
            .into_iter()
            .map(|p| {
                (
                    p.item.id,
                    Pickup {
                        op_id: p.op_id,
                        player: p.player,
                        item: p.item,
                        waiter: None,
                        in_flight: false,
                        maybe_applied: true,
                        failures: 0,
                    },
                )
            })
            .collect();
        // Never hand out an id the document already used.
        let highest = self.items.keys().chain(self.pending.keys()).max().copied();
        self.next_item = next_item.max(highest.map_or(1, |h| h + 1));
    }

    /// The ground items, for `joined`.
    pub(super) fn wire_items(&self) -> Vec<protocol::msg::GroundItem> {
        self.items.values().map(wire::ground_item).collect()
    }

    pub(super) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Item `id` is off the ground, its pick-up not finished.
    pub(super) fn is_pending(&self, id: u64) -> bool {
        self.pending.contains_key(&id)
    }
}

/// Who asks for a pick-up, from where, and who waits for the answer.
pub(super) struct Picker {
    pub(super) player: String,
    pub(super) at: (f32, f32),
    /// Session and request number.
    pub(super) waiter: (SessionId, u32),
}

/// What [`Ground::take`] decided; the room carries it out (answers,
/// broadcasts, store calls).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Take {
    /// The room's document is not loaded yet (3004).
    Loading,
    /// The picker asks again for an item it is being credited for (after
    /// 5004): it now waits for that credit's outcome; `credit` when no
    /// attempt is under way, so the room starts one.
    AskedAgain { credit: bool },
    /// No such item on the ground (3008).
    Gone,
    /// The item lies farther than the pick-up radius (3009).
    OutOfReach { distance: f32 },
    /// Off the ground and pending, in flight: write the document, then
    /// credit.
    Taken,
}

impl Ground {
    /// Step 1 of a pick-up of item `id`: check it and, when it can be
    /// picked, move it from the ground to the pending pick-ups under an op
    /// id naming the room `room` and the document's epoch.
    pub(super) fn take(&mut self, id: u64, picker: Picker, radius: f32, room: &str) -> Take {
        if !self.loaded {
            return Take::Loading;
        }
        if let Some(p) = self.pending.get_mut(&id) {
            if p.player == picker.player {
                p.waiter = Some(picker.waiter);
                return Take::AskedAgain {
                    credit: !p.in_flight,
                };
            }
        }
        let Some(item) = self.items.get(&id) else {
            return Take::Gone;
        };
        let (mx, my) = picker.at;
        let distance = (item.x - mx).hypot(item.y - my);
        if distance > radius {
            return Take::OutOfReach { distance };
        }
        let Some(item) = self.items.remove(&id) else {
            return Take::Gone;
        };
        self.pending.insert(
            id,
            Pickup {
                op_id: format!("pickup:{room}:{}:{id}", self.epoch),
                player: picker.player,
                item,
                waiter: Some(picker.waiter),
                in_flight: true,
                maybe_applied: false,
                failures: 0,
            },
        );
        Take::Taken
    }

    /// Spawn what `spawners` have due at `now` (each at most one stack,
    /// while fewer than its `max_on_ground` lie on the map), at random
    /// spots of a `width` × `height` map. Returns the items added.
    pub(super) fn spawn(
        &mut self,
        spawners: &[SpawnerConfig],
        (width, height): (f32, f32),
        now: Instant,
    ) -> Vec<GroundItem> {
        let mut added = Vec::new();
        if !self.loaded {
            return added;
        }
        for (i, spawner) in spawners.iter().enumerate() {
            if now < self.spawn_due[i] {
                continue;
            }
            self.spawn_due[i] = now + Duration::from_millis(spawner.every_ms);
            let lying = self
                .items
                .values()
                .filter(|it| it.kind == spawner.kind)
                .count();
            if lying >= spawner.max_on_ground as usize {
                continue;
            }
            let mut rng = rand::rng();
            let item = GroundItem {
                id: self.next_item,
                kind: spawner.kind.clone(),
                count: spawner.count,
                x: rng.random_range(0.0..=width),
                y: rng.random_range(0.0..=height),
            };
            self.next_item += 1;
            added.push(item.clone());
            self.items.insert(item.id, item);
        }
        added
    }
}

impl Pickup {
    fn stored(&self) -> PendingPickup {
        PendingPickup {
            op_id: self.op_id.clone(),
            player: self.player.clone(),
            item: self.item.clone(),
        }
    }
}

/// The wait before retry number `failures + 1`: the shared
/// [`Backoff`]'s ceiling, without jitter (the ground counts its failures
/// itself, per pick-up and per load).
fn backoff(failures: u32) -> Duration {
    Backoff::new(RETRY_MIN, RETRY_MAX).ceiling(failures)
}

pub(super) fn items_frame(added: Vec<protocol::msg::GroundItem>, removed: Vec<u64>) -> Bytes {
    encode_frame(&ServerMsg::Items(Items { added, removed }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap() {
        assert_eq!(backoff(0), RETRY_MIN);
        assert_eq!(backoff(1), RETRY_MIN * 2);
        assert_eq!(backoff(30), RETRY_MAX);
    }

    fn gem(id: u64, x: f32) -> GroundItem {
        GroundItem {
            id,
            kind: "gem".into(),
            count: 1,
            x,
            y: 0.0,
        }
    }

    fn picker(player: &str, x: f32) -> Picker {
        Picker {
            player: player.into(),
            at: (x, 0.0),
            waiter: (7, 1),
        }
    }

    #[test]
    fn take_checks_loading_presence_and_reach_then_holds_the_item_pending() {
        let mut g = Ground::new();
        assert_eq!(g.take(1, picker("p", 0.0), 10.0, "hall"), Take::Loading);
        g.install(1, 1, "ep", vec![gem(1, 0.0), gem(2, 50.0)], Vec::new());
        assert_eq!(g.take(9, picker("p", 0.0), 10.0, "hall"), Take::Gone);
        assert_eq!(
            g.take(2, picker("p", 0.0), 10.0, "hall"),
            Take::OutOfReach { distance: 50.0 }
        );
        assert_eq!(g.take(1, picker("p", 3.0), 10.0, "hall#2"), Take::Taken);
        assert!(!g.items.contains_key(&1));
        let pending = &g.pending[&1];
        assert_eq!(pending.op_id, "pickup:hall#2:ep:1");
        assert!(pending.in_flight && !pending.maybe_applied);
        // Someone else finds it gone; the picker asking again waits for the
        // credit under way (no second one is started).
        assert_eq!(g.take(1, picker("q", 0.0), 10.0, "hall"), Take::Gone);
        assert_eq!(
            g.take(1, picker("p", 0.0), 10.0, "hall"),
            Take::AskedAgain { credit: false }
        );
        g.pending.get_mut(&1).unwrap().in_flight = false;
        assert_eq!(
            g.take(1, picker("p", 0.0), 10.0, "hall"),
            Take::AskedAgain { credit: true }
        );
    }

    #[test]
    fn spawners_add_a_stack_when_due_and_below_their_cap() {
        let spawner = SpawnerConfig {
            kind: "gem".into(),
            count: 3,
            max_on_ground: 2,
            every_ms: 1_000,
        };
        let mut g = Ground::new();
        let start = Instant::now();
        g.spawn_due = vec![start];
        // Not loaded: nothing spawns.
        assert!(g
            .spawn(std::slice::from_ref(&spawner), (10.0, 20.0), start)
            .is_empty());
        g.install(0, 5, "ep", Vec::new(), Vec::new());
        let first = g.spawn(std::slice::from_ref(&spawner), (10.0, 20.0), start);
        assert_eq!(first.len(), 1);
        let item = &first[0];
        assert_eq!((item.id, item.kind.as_str(), item.count), (5, "gem", 3));
        assert!((0.0..=10.0).contains(&item.x) && (0.0..=20.0).contains(&item.y));
        // Not due again before every_ms; then one more, then the cap holds.
        let spawners = std::slice::from_ref(&spawner);
        assert!(g.spawn(spawners, (10.0, 20.0), start).is_empty());
        let later = start + Duration::from_millis(1_000);
        assert_eq!(g.spawn(spawners, (10.0, 20.0), later).len(), 1);
        let much_later = later + Duration::from_millis(1_000);
        assert!(g.spawn(spawners, (10.0, 20.0), much_later).is_empty());
        assert_eq!(g.items.len(), 2);
    }

    #[test]
    fn installed_ground_never_reuses_ids() {
        let mut g = Ground::new();
        let item = |id| GroundItem {
            id,
            kind: "gem".into(),
            count: 1,
            x: 0.0,
            y: 0.0,
        };
        g.install(
            4,
            2,
            "",
            vec![item(3)],
            vec![PendingPickup {
                op_id: "pickup:m:9".into(),
                player: "p".into(),
                item: item(9),
            }],
        );
        assert_eq!(g.next_item, 10);
        assert!(g.pending[&9].maybe_applied);
        let snap = g.snapshot();
        assert!(snap.loaded);
        assert_eq!((snap.rev, snap.items.len(), snap.pending.len()), (4, 1, 1));
        // A document without an epoch (new, rebuilt or old) gets a fresh
        // one; a stored one is kept.
        assert!(!snap.epoch.is_empty());
        let mut rebuilt = Ground::new();
        rebuilt.install(0, 1, "", Vec::new(), Vec::new());
        assert_ne!(rebuilt.epoch, snap.epoch);
        let mut reloaded = Ground::new();
        reloaded.install(5, 10, &snap.epoch, Vec::new(), Vec::new());
        assert_eq!(reloaded.epoch, snap.epoch);
    }
}
