//! Where each entry of a tick being built is: the owner asks once per
//! member for every entity in its view that moved or entered, so the same
//! few dozen entities are looked up hundreds of times a tick.
//!
//! A room numbers its entities from 1 up, so below [`DENSE_IDS`] the
//! index is a plain table by entity id (no hashing; a profile of the hop
//! had the hash lookups at a fifth of building ticks); an id past it (a
//! room with thousands of joins behind it) goes to a map. The tables are
//! kept from one tick to the next by a builder that is reused
//! ([`super::TickBuilder::take`]): clearing touches only the slots that
//! were set.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use super::room::EntryKind;
use crate::msg::EntityId;

/// Entity ids below this are looked up in a table (4 bytes per id and
/// kind: at most 32 KiB a builder).
pub(super) const DENSE_IDS: usize = 1 << 12;

#[derive(Debug, Default)]
pub(super) struct EntryIndex {
    /// Per kind (`Entered`, `Moved`), by entity id: the entry's index + 1,
    /// 0 for none. Grown to the largest id seen (below `DENSE_IDS`).
    dense: [Vec<u32>; 2],
    /// Ids from `DENSE_IDS` up.
    sparse: HashMap<(EntityId, EntryKind), u32, RandomState>,
    /// Every entry's kind and id, by index.
    keys: Vec<(EntryKind, EntityId)>,
}

fn table(kind: EntryKind) -> usize {
    match kind {
        EntryKind::Entered => 0,
        EntryKind::Moved => 1,
    }
}

impl EntryIndex {
    /// The index of `id`'s entry of `kind`; a new one is numbered next
    /// (`added` is told, once, so the entry can be pushed).
    pub fn index_of(&mut self, id: EntityId, kind: EntryKind, added: impl FnOnce()) -> u32 {
        // A tick holds far fewer than 2^32 entries (each is a frame's worth
        // of an entity, and a frame is bounded).
        let next = u32::try_from(self.keys.len()).expect("entries fit in u32");
        let at = id as usize;
        if at < DENSE_IDS {
            let slots = &mut self.dense[table(kind)];
            if slots.len() <= at {
                slots.resize(at + 1, 0);
            }
            if let Some(index) = slots[at].checked_sub(1) {
                return index;
            }
            slots[at] = next + 1;
        } else {
            let index = *self.sparse.entry((id, kind)).or_insert(next);
            if index != next {
                return index;
            }
        }
        self.keys.push((kind, id));
        added();
        next
    }

    /// Every entry's kind and id, by index.
    pub fn keys(&self) -> &[(EntryKind, EntityId)] {
        &self.keys
    }

    /// Forget every entry, keeping the tables.
    pub fn clear(&mut self) {
        for &(kind, id) in &self.keys {
            if let Some(slot) = self.dense[table(kind)].get_mut(id as usize) {
                *slot = 0;
            }
        }
        self.keys.clear();
        self.sparse.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_on_either_side_of_the_table_are_numbered_once_in_order() {
        let mut index = EntryIndex::default();
        let mut added = 0;
        let big = DENSE_IDS as EntityId + 5;
        let mut at = |index: &mut EntryIndex, id, kind| index.index_of(id, kind, || added += 1);
        assert_eq!(at(&mut index, 7, EntryKind::Moved), 0);
        assert_eq!(at(&mut index, big, EntryKind::Moved), 1);
        assert_eq!(at(&mut index, 7, EntryKind::Entered), 2);
        assert_eq!(at(&mut index, 7, EntryKind::Moved), 0);
        assert_eq!(at(&mut index, big, EntryKind::Moved), 1);
        assert_eq!(at(&mut index, big, EntryKind::Entered), 3);
        assert_eq!(added, 4);
        assert_eq!(
            index.keys(),
            [
                (EntryKind::Moved, 7),
                (EntryKind::Moved, big),
                (EntryKind::Entered, 7),
                (EntryKind::Entered, big)
            ]
        );
        // Cleared, the same ids are new again and numbered from 0.
        index.clear();
        assert!(index.keys().is_empty());
        assert_eq!(index.index_of(big, EntryKind::Entered, || added += 1), 0);
        assert_eq!(index.index_of(7, EntryKind::Moved, || added += 1), 1);
        assert_eq!(added, 6);
    }
}
