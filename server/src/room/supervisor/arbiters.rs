//! The room threads: placing an incarnation on a live one, the watchdog's
//! rounds (probes, stalled rooms), and the extra Arbiters started while
//! every room thread is stuck and retired when one answers again (see the
//! parent module's "Stalls").

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;

use super::{RestartReason, RoomSupervisor};
use crate::ids::RoomId;
use crate::metrics as m;
use crate::room::{Handover, Room};

/// One room thread.
pub(super) struct RoomArbiter {
    pub(super) id: usize,
    pub(super) handle: ArbiterHandle,
    /// When it last ran a watchdog probe (ms since origin).
    pub(super) beat: Arc<AtomicU64>,
    /// A probe is queued and has not run yet: a stuck thread gets no more
    /// (its queue does not grow while it is stuck).
    pub(super) probing: Arc<AtomicBool>,
    /// Set for an Arbiter the supervisor started because no room thread
    /// was live.
    pub(super) extra: Option<Extra>,
}

pub(super) struct Extra {
    /// Owned here: stopped when retired, or at shutdown.
    pub(super) arbiter: Arbiter,
    /// The Arbiters that were stuck when it started; it is retired once
    /// one of them answers again.
    pub(super) stands_in_for: Vec<usize>,
    /// No room is placed on it any more; its rooms are handed back.
    pub(super) retiring: bool,
}

impl RoomSupervisor {
    /// Whether `a` ran a probe after `since_ms` and lately (one sent by the
    /// round before the last, or at most a live window before that): proven
    /// alive. Before the watchdog's second round every Arbiter counts as
    /// live.
    pub(super) fn live(&self, a: &RoomArbiter, since_ms: u64) -> bool {
        let beat = a.beat.load(Ordering::Acquire);
        let probed = self.probed_ms.load(Ordering::Acquire);
        if probed == 0 {
            return true;
        }
        beat >= since_ms && beat + self.settings.live_window_ms() >= probed
    }

    /// Where a new incarnation goes: a live Arbiter (not retiring), other
    /// than `avoid`, in turn; else `avoid` if it is live; else a new extra
    /// Arbiter if the bound allows; else the Arbiter that answered last.
    pub(super) fn place(&self, since_ms: u64, avoid: Option<usize>) -> (usize, ArbiterHandle) {
        let mut arbiters = self.arbiters.lock();
        let start = self.next_arbiter.fetch_add(1, Ordering::Relaxed);
        let open: Vec<usize> = (0..arbiters.len())
            .map(|k| (start + k) % arbiters.len())
            .filter(|&i| !arbiters[i].extra.as_ref().is_some_and(|e| e.retiring))
            .collect();
        let live = |i: &usize| self.live(&arbiters[*i], since_ms);
        let chosen = open
            .iter()
            .copied()
            .filter(live)
            .find(|&i| Some(arbiters[i].id) != avoid)
            .or_else(|| open.iter().copied().find(live));
        if let Some(i) = chosen {
            return (arbiters[i].id, arbiters[i].handle.clone());
        }
        let extras = arbiters.iter().filter(|a| a.extra.is_some()).count();
        if extras < self.settings.max_extra_arbiters {
            let stuck: Vec<usize> = arbiters
                .iter()
                .filter(|a| a.extra.is_none() && !self.live(a, 0))
                .map(|a| a.id)
                .collect();
            let id = self.next_arbiter_id.fetch_add(1, Ordering::Relaxed);
            let arbiter = Arbiter::new();
            let handle = arbiter.handle();
            metrics::counter!(m::ROOM_ARBITERS_STARTED).increment(1);
            metrics::gauge!(m::ROOM_ARBITERS_EXTRA).increment(1.0);
            tracing::warn!(
                arbiter = id,
                stands_in_for = ?stuck,
                extras = extras + 1,
                "no live room thread; started an extra room Arbiter"
            );
            arbiters.push(RoomArbiter {
                id,
                handle: handle.clone(),
                // Fresh: alive now.
                beat: Arc::new(AtomicU64::new(self.now_ms())),
                probing: Arc::default(),
                extra: Some(Extra {
                    arbiter,
                    stands_in_for: stuck,
                    retiring: false,
                }),
            });
            return (id, handle);
        }
        // Bound reached and nothing live: the Arbiter heard from last is
        // the best bet; the watchdog moves the room again if it stays stuck.
        let i = open
            .iter()
            .copied()
            .max_by_key(|&i| arbiters[i].beat.load(Ordering::Acquire))
            .unwrap_or(start % arbiters.len());
        tracing::warn!(
            arbiter = arbiters[i].id,
            max_extra_arbiters = self.settings.max_extra_arbiters,
            "no live room thread and no extra Arbiter allowed; placing on the last one heard from"
        );
        (arbiters[i].id, arbiters[i].handle.clone())
    }

    /// One watchdog round: probe every room Arbiter, restart rooms whose
    /// tick is late by the stall timeout on a live Arbiter, and retire the
    /// extra Arbiters no longer needed.
    pub fn watchdog(self: &Arc<Self>) {
        let origin = self.origin;
        for arbiter in self.arbiters.lock().iter() {
            if arbiter.probing.swap(true, Ordering::AcqRel) {
                continue;
            }
            let (beat, probing) = (arbiter.beat.clone(), arbiter.probing.clone());
            arbiter.handle.spawn(async move {
                beat.store(origin.elapsed().as_millis() as u64, Ordering::Release);
                probing.store(false, Ordering::Release);
            });
        }
        let now = self.now_ms().max(1);
        let previous = self.last_round_ms.swap(now, Ordering::AcqRel);
        self.probed_ms.store(previous, Ordering::Release);
        let limit = self.settings.stall_timeout.as_millis() as u64;
        let stalled: Vec<(RoomId, u64, u64, bool)> = self
            .rooms
            .lock()
            .iter()
            .filter_map(|(id, e)| {
                let late = now.saturating_sub(e.slot.heartbeat_ms.load(Ordering::Acquire));
                let busy = e.slot.busy.load(Ordering::Acquire);
                (late >= limit).then(|| (id.clone(), e.slot.incarnation, late, busy))
            })
            .collect();
        for (id, incarnation, late_ms, busy) in stalled {
            let reason = if busy {
                metrics::counter!(m::ROOM_STALLS, m::room_labels(&id, &[])).increment(1);
                tracing::warn!(room = %id, incarnation, late_ms, "room stalled in a handler; restarting it on a live thread");
                RestartReason::Stall
            } else {
                tracing::warn!(room = %id, incarnation, late_ms, "room's thread blocked by another room; moving it to a live thread");
                RestartReason::Displaced
            };
            self.restart(&id, incarnation, reason, Instant::now());
        }
        self.retire_extras();
    }

    /// Extras whose stuck Arbiter answers again retire: their rooms are
    /// asked to hand over, and an empty retiring extra is stopped. (Locks
    /// are taken one at a time: `restart` takes rooms, then arbiters.)
    pub(super) fn retire_extras(&self) {
        let retiring: Vec<usize> = {
            let mut arbiters = self.arbiters.lock();
            let live_base: Vec<usize> = arbiters
                .iter()
                .filter(|a| a.extra.is_none() && self.live(a, 0))
                .map(|a| a.id)
                .collect();
            for a in arbiters.iter_mut() {
                let Some(extra) = a.extra.as_mut() else {
                    continue;
                };
                if !extra.retiring && extra.stands_in_for.iter().any(|i| live_base.contains(i)) {
                    extra.retiring = true;
                    tracing::info!(
                        arbiter = a.id,
                        "a stuck room thread answers again; retiring the extra room Arbiter"
                    );
                }
            }
            arbiters
                .iter()
                .filter(|a| a.extra.as_ref().is_some_and(|e| e.retiring))
                .map(|a| a.id)
                .collect()
        };
        if retiring.is_empty() {
            return;
        }
        let hosted: Vec<(usize, Addr<Room>)> = self
            .rooms
            .lock()
            .values()
            .filter(|e| retiring.contains(&e.slot.arbiter))
            .map(|e| (e.slot.arbiter, e.addr.clone()))
            .collect();
        for (_, addr) in &hosted {
            // A full mailbox is asked again next round.
            let _ = addr.try_send(Handover(super::RestartReason::Handover));
        }
        self.arbiters.lock().retain(|a| {
            let empty = a.extra.as_ref().is_some_and(|e| e.retiring)
                && !hosted.iter().any(|(id, _)| *id == a.id);
            if let (true, Some(extra)) = (empty, &a.extra) {
                extra.arbiter.stop();
                metrics::counter!(m::ROOM_ARBITERS_RETIRED).increment(1);
                metrics::gauge!(m::ROOM_ARBITERS_EXTRA).decrement(1.0);
                tracing::info!(arbiter = a.id, "extra room Arbiter retired");
            }
            !empty
        });
    }

    /// The extra Arbiters, taken out for shutdown (stop and join them).
    pub fn take_extra_arbiters(&self) -> Vec<Arbiter> {
        let mut arbiters = self.arbiters.lock();
        let mut taken = Vec::new();
        arbiters.retain_mut(|a| match a.extra.take() {
            Some(extra) => {
                taken.push(extra.arbiter);
                false
            }
            None => true,
        });
        taken
    }
}
