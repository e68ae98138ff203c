//! The ground's life around the pick-ups, as transitions that return
//! effects: starting (from a restart's snapshot, or by loading the room's
//! document), securing a restored ground before its pick-ups are
//! re-driven, spawning, resyncing, and the document saved at stop.

use std::time::{Duration, Instant};

use super::{backoff, Effect, Ground, GroundSnapshot, Write};
use crate::config::SpawnerConfig;
use crate::store::{DurableError, RoomState};
use crate::wire;

impl Ground {
    /// Start the ground of a map with `spawners` at `now`: from a
    /// restart's snapshot, or by loading the room's document.
    pub(in crate::room) fn start(
        &mut self,
        spawners: &[SpawnerConfig],
        now: Instant,
        restored: Option<&GroundSnapshot>,
    ) -> Vec<Effect> {
        self.spawn_due = spawners
            .iter()
            .map(|s| now + Duration::from_millis(s.every_ms))
            .collect();
        match restored {
            Some(g) if g.loaded => {
                self.owner_epoch = g.owner_epoch.max(self.lease_epoch);
                self.install(
                    g.rev,
                    g.next_item,
                    &g.epoch,
                    g.items.clone(),
                    g.pending.clone(),
                );
                let mut effects = vec![Effect::Restored];
                if self.has_pending() {
                    for p in self.pending.values_mut() {
                        p.in_flight = true;
                    }
                    effects.extend(self.secure());
                }
                effects
            }
            _ => vec![Effect::Load],
        }
    }

    /// The room's document was read (`None`: there is none) or not; a
    /// document named `label` is started when there is none.
    pub(in crate::room) fn on_loaded(
        &mut self,
        loaded: Result<Option<RoomState>, DurableError>,
        label: &str,
    ) -> Vec<Effect> {
        if self.loaded {
            return Vec::new();
        }
        let doc = match loaded {
            Ok(doc) => doc,
            Err(e) => {
                let delay = backoff(self.load_failures);
                self.load_failures += 1;
                return vec![Effect::LoadLater {
                    delay,
                    error: e.to_string(),
                }];
            }
        };
        let doc = doc.unwrap_or_else(|| RoomState::new(label));
        self.owner_epoch = doc.owner_epoch.max(self.lease_epoch);
        self.install(doc.rev, doc.next_item, &doc.epoch, doc.items, doc.pending);
        let mut effects = vec![Effect::Loaded {
            items: self.items.len(),
            pending: self.pending.len(),
            rev: self.rev,
        }];
        effects.extend(self.resync());
        effects.extend(self.redrive());
        effects
    }

    /// A restart from a snapshot: the crashed incarnation may have died
    /// before its write-through of a pick-up landed, so the document is
    /// written through again before any credit is re-driven (never
    /// credited while the store still has the item on the ground).
    pub(in crate::room) fn secure(&mut self) -> Vec<Effect> {
        self.rev += 1;
        vec![Effect::Store(Write::Secure)]
    }

    /// The restored document was written through, or not (then again,
    /// later).
    pub(in crate::room) fn on_secured(
        &mut self,
        written: Result<bool, DurableError>,
    ) -> Vec<Effect> {
        match written {
            Ok(_) => self.redrive(),
            Err(e) => {
                let delay = backoff(self.load_failures);
                self.load_failures += 1;
                vec![Effect::SecureLater {
                    delay,
                    error: e.to_string(),
                }]
            }
        }
    }

    /// Run due spawners (at most one item each per tick): what
    /// [`Ground::spawn`] added is stored behind and told to everyone.
    pub(in crate::room) fn spawn_items(
        &mut self,
        spawners: &[SpawnerConfig],
        size: (f32, f32),
        now: Instant,
    ) -> Vec<Effect> {
        if spawners.is_empty() {
            return Vec::new();
        }
        let added: Vec<_> = self
            .spawn(spawners, size, now)
            .iter()
            .map(wire::ground_item)
            .collect();
        if added.is_empty() {
            return Vec::new();
        }
        self.rev += 1;
        vec![
            Effect::Store(Write::Behind),
            Effect::Items {
                added,
                removed: Vec::new(),
            },
        ]
    }

    /// The whole ground to every member (after a restart, or a load: what
    /// they missed), when anything lies on it.
    pub(in crate::room) fn resync(&self) -> Vec<Effect> {
        if self.items.is_empty() {
            return Vec::new();
        }
        vec![Effect::Items {
            added: self.wire_items(),
            removed: Vec::new(),
        }]
    }

    /// The room document as it stands now, for room `label`.
    pub(in crate::room) fn document(&self, label: &str) -> RoomState {
        RoomState {
            rev: self.rev,
            next_item: self.next_item,
            epoch: self.epoch.clone(),
            owner_epoch: self.owner_epoch,
            items: self.items.values().cloned().collect(),
            pending: self.pending.values().map(|p| p.stored()).collect(),
            ..RoomState::new(label)
        }
    }

    /// The document to save when the room stops: none before it loaded.
    pub(in crate::room) fn document_at_stop(&self, label: &str) -> Option<RoomState> {
        self.loaded.then(|| self.document(label))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{DurableOp, GroundItem, PendingPickup};

    fn gem(id: u64) -> GroundItem {
        GroundItem {
            id,
            kind: "gem".into(),
            count: 1,
            x: 0.0,
            y: 0.0,
        }
    }

    #[test]
    fn a_failed_load_is_retried_then_the_document_is_installed_and_its_pick_ups_redriven() {
        let mut g = Ground::new();
        assert!(matches!(
            g.start(&[], Instant::now(), None).as_slice(),
            [Effect::Load]
        ));
        let failed = g.on_loaded(Err(DurableError::Unavailable("down".into())), "hall");
        let [Effect::LoadLater { delay, .. }] = failed.as_slice() else {
            panic!("expected a later load, got {failed:?}");
        };
        assert_eq!(*delay, backoff(0));
        let doc = RoomState {
            rev: 7,
            next_item: 3,
            epoch: "ep".into(),
            items: vec![gem(1)],
            pending: vec![PendingPickup {
                op_id: "pickup:hall:ep:2".into(),
                player: "p".into(),
                item: gem(2),
            }],
            ..RoomState::new("hall")
        };
        let loaded = g.on_loaded(Ok(Some(doc)), "hall");
        let [Effect::Loaded {
            items: 1,
            pending: 1,
            rev: 7,
        }, Effect::Items { added, .. }, Effect::Redrive { pending: 1 }, Effect::Credit {
            item: 2,
            op: DurableOp::Adjust(adjust),
        }] = loaded.as_slice()
        else {
            panic!("expected load, resync and redrive, got {loaded:?}");
        };
        assert_eq!(added.len(), 1);
        assert_eq!(adjust.op_id, "pickup:hall:ep:2");
        // A late second answer changes nothing.
        assert!(g.on_loaded(Ok(None), "hall").is_empty());
        assert_eq!(g.document("hall").rev, 7);
    }

    #[test]
    fn the_owner_epoch_of_the_loaded_document_is_kept_through_writes_and_restarts() {
        let mut g = Ground::new();
        let doc = RoomState {
            owner_epoch: 7,
            ..RoomState::new("hall")
        };
        g.on_loaded(Ok(Some(doc)), "hall");
        assert_eq!(g.document("hall").owner_epoch, 7);
        let mut restarted = Ground::new();
        restarted.start(&[], Instant::now(), Some(&g.snapshot()));
        assert_eq!(restarted.owner_epoch(), 7);
        assert_eq!(restarted.document("hall").owner_epoch, 7);
    }

    #[test]
    fn a_restored_ground_with_pick_ups_is_written_through_before_they_are_redriven() {
        let mut source = Ground::new();
        source.install(
            4,
            2,
            "ep",
            Vec::new(),
            vec![PendingPickup {
                op_id: "pickup:hall:ep:1".into(),
                player: "p".into(),
                item: gem(1),
            }],
        );
        let snap = source.snapshot();
        let mut g = Ground::new();
        let started = g.start(&[], Instant::now(), Some(&snap));
        assert!(matches!(
            started.as_slice(),
            [Effect::Restored, Effect::Store(Write::Secure)]
        ));
        assert_eq!(g.rev, 5);
        let failed = g.on_secured(Err(DurableError::Unavailable("down".into())));
        assert!(matches!(failed.as_slice(), [Effect::SecureLater { .. }]));
        assert!(matches!(
            g.secure().as_slice(),
            [Effect::Store(Write::Secure)]
        ));
        assert_eq!(g.rev, 6);
        let redriven = g.on_secured(Ok(true));
        assert!(matches!(
            redriven.as_slice(),
            [
                Effect::Redrive { pending: 1 },
                Effect::Credit { item: 1, .. }
            ]
        ));
    }
}
