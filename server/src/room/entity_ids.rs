//! Which entity ids an incarnation of a room hands out.
//!
//! An entity id names one player while it stands in the room, and clients
//! name players by it (`give.to`). In a cluster, a room whose owner died
//! starts afresh on its new owner (no snapshot survives the old one) and
//! the members whose sockets are on other shards are re-joined there at
//! once, while their clients still hold the old incarnation's ids until
//! the new `joined` reaches them: a `give` sent in that window names an
//! old id. Were the new incarnation to count from 1 again, that id could
//! name another player, and the coins would go to them.
//!
//! So each lease epoch hands out ids from its own block: [`BLOCKS`] blocks,
//! taken in turn by successive epochs, each at least twice as large as
//! the map's player cap. An id from the previous incarnation names nobody
//! in the next one (error 3007, nothing changed). Within its block an
//! incarnation counts up and wraps, skipping ids still in use. A single
//! shard (epoch 0) and a room's first owner (epoch 1) use the first block,
//! whose ids start at 1, as before there were blocks; with the default cap
//! every id fits in 16 bits.

use protocol::msg::EntityId;

/// Successive epochs take blocks in turn; a room carried over (migrated)
/// keeps its members' ids and hands out new ones from its new epoch's
/// block, so an id collides with a stale one only across this many
/// epochs.
pub const BLOCKS: u64 = 8;
/// The smallest block: with it, the default player cap (1,000) keeps
/// every id below 2^16.
const MIN_BLOCK: u64 = 8_192;

/// The ids of one incarnation: `[lo, end)`, counting from `next`.
#[derive(Debug, Clone)]
pub struct EntityIds {
    next: EntityId,
    lo: EntityId,
    end: u64,
}

impl EntityIds {
    /// The block of lease `epoch` (0: a single shard) for a room of at
    /// most `max_players` (capped by config validation far below 2^28).
    pub fn new(epoch: u64, max_players: usize) -> EntityIds {
        let size = (2 * max_players as u64).next_power_of_two().max(MIN_BLOCK);
        let block = epoch.saturating_sub(1) % BLOCKS;
        let start = block * size;
        let lo = EntityId::try_from(start.max(1)).unwrap_or(1);
        EntityIds {
            next: lo,
            lo,
            end: (start + size).min(u64::from(EntityId::MAX) + 1),
        }
    }

    /// Go on from a snapshot's counter: within this block, from there (a
    /// restart under the same lease); from another block (a migrated
    /// room under its new epoch), from the start of this one.
    pub fn resume_at(&mut self, next: EntityId) {
        if self.contains(next) {
            self.next = next;
        }
    }

    /// The counter, for a snapshot.
    pub fn next(&self) -> EntityId {
        self.next
    }

    fn contains(&self, id: EntityId) -> bool {
        id >= self.lo && u64::from(id) < self.end
    }

    /// A fresh id: the next one of the block not `in_use`. The block holds
    /// at least twice the player cap, so a free one is always found.
    pub fn allocate(&mut self, in_use: impl Fn(EntityId) -> bool) -> EntityId {
        loop {
            let id = self.next;
            self.next = match id.checked_add(1) {
                Some(n) if self.contains(n) => n,
                _ => self.lo,
            };
            if !in_use(id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_single_shard_and_a_first_owner_count_from_1() {
        for epoch in [0, 1] {
            let mut ids = EntityIds::new(epoch, 1_000);
            assert_eq!(ids.allocate(|_| false), 1);
            assert_eq!(ids.allocate(|_| false), 2);
        }
    }

    #[test]
    fn successive_epochs_never_share_an_id() {
        let blocks: Vec<(u64, u64)> = (1..=BLOCKS)
            .map(|epoch| {
                let ids = EntityIds::new(epoch, 1_000);
                (u64::from(ids.lo), ids.end)
            })
            .collect();
        for pair in blocks.windows(2) {
            assert!(pair[0].1 <= pair[1].0, "{blocks:?}");
        }
        // The default cap keeps ids in 16 bits (3 bytes on the wire).
        assert_eq!(blocks.last().unwrap().1, 1 << 16);
        // After the last block, the first again.
        assert_eq!(EntityIds::new(BLOCKS + 1, 1_000).lo, 1);
        let mut ids = EntityIds::new(2, 1_000);
        assert_eq!(ids.allocate(|_| false), 8_192);
    }

    #[test]
    fn a_block_wraps_and_skips_ids_in_use() {
        let mut ids = EntityIds::new(2, 10);
        ids.resume_at(16_383);
        assert_eq!(ids.allocate(|_| false), 16_383);
        let used: HashSet<EntityId> = [8_192, 8_193].into();
        assert_eq!(ids.allocate(|id| used.contains(&id)), 8_194);
    }

    #[test]
    fn a_large_cap_gets_a_larger_block() {
        let ids = EntityIds::new(3, 100_000);
        assert_eq!((ids.lo, ids.end), (2 * 262_144, 3 * 262_144));
    }

    #[test]
    fn a_snapshot_counter_from_another_block_is_not_taken() {
        let mut ids = EntityIds::new(2, 1_000);
        ids.resume_at(57);
        assert_eq!(ids.next(), 8_192, "a migrated room hands out its new block");
        ids.resume_at(9_000);
        assert_eq!(ids.allocate(|_| false), 9_000, "a restart goes on");
    }
}
