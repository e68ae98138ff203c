//! The view diff: what entered, moved in and left one member's view in a
//! tick, from its view before and after and the tick's changed entities.
//! It runs once per member per tick (100 times a tick in a room of 100),
//! so it is written for the case that dominates: a view equal to the last
//! one (a player moving 10 units a tick rarely takes anyone in or out of a
//! 400-unit view) in which most ids changed.

use protocol::msg::EntityId;

/// Not changed this tick (see [`Changed::position`]).
const NONE: u32 = u32::MAX;

/// The changes one member sees in a tick; members with equal diffs get the
/// same bytes. Reused from member to member and tick to tick, so a tick
/// allocates no diff.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ViewDiff {
    pub(super) entered: Vec<EntityId>,
    pub(super) moved: Vec<EntityId>,
    pub(super) left: Vec<EntityId>,
    /// Where each of `moved` stands in the tick's [`Changed`] list: its
    /// `moved` entry is found there by position (see
    /// [`super::MovedEntries`]), not looked up by id.
    pub(super) moved_at: Vec<u32>,
}

/// The entities changed this tick, ascending, and where each stands in
/// that order, found without a search: a table indexed by id less the
/// smallest, kept while the ids are dense enough that it stays small (a
/// room hands ids out in order, so its members' ids usually are). Reused
/// from tick to tick; only the entries set are reset.
#[derive(Debug, Default)]
pub struct Changed {
    ids: Vec<EntityId>,
    /// The smallest id of `ids`.
    base: EntityId,
    /// `at[id - base]`: the position of `id` in `ids`, or `NONE`. Empty
    /// while `ids` is too sparse for it (then positions are found by a
    /// walk alongside the view, which is ascending too).
    at: Vec<u32>,
}

/// The position table grows to at most this many entries per changed id
/// (plus a floor): 4 bytes each, so a room of 100 whose ids are spread
/// over a few thousand still gets one, and one spread by long churn over
/// far more falls back to the walk.
const TABLE_PER_ID: usize = 16;
const TABLE_FLOOR: usize = 1024;

impl Changed {
    /// Forget the last tick's ids.
    pub fn clear(&mut self) {
        for &id in &self.ids {
            if let Some(at) = self.at.get_mut(id.wrapping_sub(self.base) as usize) {
                *at = NONE;
            }
        }
        self.ids.clear();
        self.base = 0;
    }

    /// Add a changed id (in any order; see [`Changed::seal`]).
    pub fn push(&mut self, id: EntityId) {
        self.ids.push(id);
    }

    /// Put the ids in order and index them: call once after the pushes,
    /// before [`ViewDiff::compute`].
    pub fn seal(&mut self) {
        self.ids.sort_unstable();
        self.ids.dedup();
        let (Some(&first), Some(&last)) = (self.ids.first(), self.ids.last()) else {
            return;
        };
        let span = (last - first) as usize + 1;
        if span > TABLE_FLOOR.max(TABLE_PER_ID * self.ids.len()) {
            self.at = Vec::new();
            return;
        }
        self.base = first;
        if self.at.len() < span {
            self.at.resize(span, NONE);
        }
        for (i, &id) in self.ids.iter().enumerate() {
            self.at[(id - first) as usize] = i as u32;
        }
    }

    /// The changed ids, ascending.
    pub fn ids(&self) -> &[EntityId] {
        &self.ids
    }

    /// [`Changed::push`] each of `ids` and seal.
    pub fn set(&mut self, ids: &[EntityId]) {
        self.clear();
        self.ids.extend_from_slice(ids);
        self.seal();
    }

    fn indexed(&self) -> bool {
        !self.at.is_empty()
    }

    /// The position of `id` in [`Changed::ids`], or `NONE`; only while
    /// [`Changed::indexed`].
    fn position(&self, id: EntityId) -> u32 {
        // Out of the table: below the base (wrapped to a large index) or
        // above the last id.
        self.at
            .get(id.wrapping_sub(self.base) as usize)
            .copied()
            .unwrap_or(NONE)
    }
}

/// Entered: in `now`, not in `before`. Left: the reverse. Moved: in both and
/// in `changed`. All three inputs are in ascending order.
pub fn diff_views(before: &[EntityId], now: &[EntityId], changed: &[EntityId]) -> ViewDiff {
    let mut table = Changed::default();
    table.set(changed);
    let mut diff = ViewDiff::default();
    diff.compute(before, now, &table);
    diff
}

impl ViewDiff {
    /// This diff becomes the one from `before` to `now` (see
    /// [`diff_views`]), in the vectors it already has.
    ///
    /// An unchanged view (the common case, one compare of two short
    /// arrays) needs only `moved`: each id's position in `changed` is read
    /// from its table, and the id is written to `moved` every time, its end
    /// moving past it only when the id changed (no branch per id: which
    /// ids changed is as good as random). A view that did change is
    /// merged with the view before, a branch per id that is nearly always
    /// "in both"; the ids in both are then kept the same way.
    pub fn compute(&mut self, before: &[EntityId], now: &[EntityId], changed: &Changed) {
        self.entered.clear();
        self.left.clear();
        self.moved.clear();
        self.moved_at.clear();
        let common: &[EntityId] = if before == now {
            now
        } else {
            let (mut i, mut j) = (0, 0);
            while i < before.len() && j < now.len() {
                let (b, n) = (before[i], now[j]);
                if b == n {
                    // Collected in `moved`, kept or not below.
                    self.moved.push(n);
                    i += 1;
                    j += 1;
                } else if b < n {
                    self.left.push(b);
                    i += 1;
                } else {
                    self.entered.push(n);
                    j += 1;
                }
            }
            self.left.extend_from_slice(&before[i..]);
            self.entered.extend_from_slice(&now[j..]);
            &[]
        };
        if changed.ids.is_empty() {
            self.moved.clear();
            return;
        }
        let Self {
            moved, moved_at, ..
        } = self;
        if !common.is_empty() {
            moved.extend_from_slice(common);
        }
        moved_at.resize(moved.len(), 0);
        let n = if changed.indexed() {
            let mut n = 0;
            for i in 0..moved.len() {
                // `n` <= `i`: the id written was read already.
                let id = moved[i];
                let at = changed.position(id);
                moved[n] = id;
                moved_at[n] = at;
                n += usize::from(at != NONE);
            }
            n
        } else {
            keep_changed(moved, moved_at, &changed.ids)
        };
        moved.truncate(n);
        moved_at.truncate(n);
    }

    /// The reference [`ViewDiff::compute`] is held to (by the tests and
    /// `cargo bench -p server --bench view`): one plain merge with a
    /// branch per id, as it was written first.
    #[doc(hidden)]
    pub fn compute_plain(&mut self, before: &[EntityId], now: &[EntityId], changed: &[EntityId]) {
        self.entered.clear();
        self.moved.clear();
        self.left.clear();
        self.moved_at.clear();
        let (mut i, mut j, mut c) = (0, 0, 0);
        while i < before.len() || j < now.len() {
            match (before.get(i), now.get(j)) {
                (Some(&b), Some(&n)) if b == n => {
                    while c < changed.len() && changed[c] < n {
                        c += 1;
                    }
                    if changed.get(c) == Some(&n) {
                        self.moved.push(n);
                        self.moved_at.push(c as u32);
                    }
                    i += 1;
                    j += 1;
                }
                (Some(&b), Some(&n)) if b < n => {
                    self.left.push(b);
                    i += 1;
                }
                (_, Some(&n)) => {
                    self.entered.push(n);
                    j += 1;
                }
                (Some(&b), None) => {
                    self.left.push(b);
                    i += 1;
                }
                (None, None) => break,
            }
        }
    }

    pub(super) fn parts(&self) -> (&[EntityId], &[EntityId], &[EntityId]) {
        (&self.entered, &self.moved, &self.left)
    }

    /// Nothing entered, moved or left: nothing to send.
    pub fn is_empty(&self) -> bool {
        self.entered.is_empty() && self.moved.is_empty() && self.left.is_empty()
    }
}

/// Keep the ids of `ids` that are in `changed` (both ascending), in place
/// at the front, with their positions in `changed` in `at` (as long as
/// `ids`); returns how many were kept. The walk for ids too sparse for
/// [`Changed`]'s table: a merge without a branch per id.
fn keep_changed(ids: &mut [EntityId], at: &mut [u32], changed: &[EntityId]) -> usize {
    let (mut i, mut c, mut n) = (0, 0, 0);
    while i < ids.len() && c < changed.len() {
        let (id, ch) = (ids[i], changed[c]);
        // `n` <= `i`: the id written was read already.
        ids[n] = id;
        at[n] = c as u32;
        n += usize::from(id == ch);
        i += usize::from(id <= ch);
        c += usize::from(ch <= id);
    }
    n
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// xorshift64*: random views that are the same every run.
    pub(in crate::room::view) struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        /// Ascending ids out of `from..from + universe`, each kept with
        /// chance `percent` in 100.
        pub fn ids(&mut self, from: u32, universe: u32, percent: u64) -> Vec<EntityId> {
            (from..from + universe)
                .filter(|_| self.below(100) < percent)
                .collect()
        }
        /// [`Rng::ids`] at a random density.
        pub fn any_ids(&mut self, from: u32, universe: u32) -> Vec<EntityId> {
            let percent = self.below(101);
            self.ids(from, universe, percent)
        }
        /// `base` with a few ids taken out and a few put in: a view a
        /// tick later.
        pub fn nudged(&mut self, base: &[EntityId], from: u32, universe: u32) -> Vec<EntityId> {
            let mut ids: Vec<EntityId> = base
                .iter()
                .copied()
                .filter(|_| self.below(20) != 0)
                .collect();
            for _ in 0..self.below(4) {
                ids.push(from + self.below(u64::from(universe)) as EntityId);
            }
            ids.sort_unstable();
            ids.dedup();
            ids
        }
    }

    #[test]
    fn compute_matches_the_plain_merge_over_random_views() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // One diff and one changed table reused throughout, as a room
        // reuses them: nothing of an earlier tick may show through.
        let (mut fast, mut plain) = (ViewDiff::default(), ViewDiff::default());
        let mut changed = Changed::default();
        for round in 0..30_000 {
            let universe = 1 + rng.below(150) as u32;
            // Ids from 1, or far up (a room that has seen many joins).
            let from = if round % 5 == 0 { 4_000_000_000 } else { 1 };
            let before = rng.any_ids(from, universe);
            let now = match round % 4 {
                // Unchanged: the common case, on its own path.
                0 => before.clone(),
                1 => rng.nudged(&before, from, universe),
                _ => rng.any_ids(from, universe),
            };
            let mut ids = match round % 3 {
                0 => (from..from + universe).collect(),
                _ => rng.any_ids(from, universe),
            };
            if round % 7 == 0 {
                // An old member among new ones: too sparse for the table.
                ids.push(from + universe + 100_000);
            }
            // Pushed in any order, as a room's map yields them.
            ids.reverse();
            changed.clear();
            for &id in &ids {
                changed.push(id);
            }
            changed.seal();
            fast.compute(&before, &now, &changed);
            plain.compute_plain(&before, &now, changed.ids());
            assert_eq!(
                fast,
                plain,
                "before {before:?} now {now:?} changed {:?}",
                changed.ids()
            );
            for (&id, &at) in fast.moved.iter().zip(&fast.moved_at) {
                assert_eq!(changed.ids()[at as usize], id);
            }
        }
    }

    #[test]
    fn the_changed_table_finds_dense_ids_and_leaves_sparse_ones_to_the_walk() {
        let mut changed = Changed::default();
        changed.set(&[9, 3, 5, 3]);
        assert_eq!(changed.ids(), [3, 5, 9]);
        assert!(changed.indexed());
        assert_eq!(
            [2, 3, 4, 5, 9, 10, u32::MAX].map(|id| changed.position(id)),
            [NONE, 0, NONE, 1, 2, NONE, NONE]
        );
        // The next tick's ids: the last tick's positions are gone.
        changed.set(&[4]);
        assert_eq!(
            [3, 4, 5, 9].map(|id| changed.position(id)),
            [NONE, 0, NONE, NONE]
        );
        changed.set(&[1, 1 + (TABLE_FLOOR as u32) * 4]);
        assert!(!changed.indexed(), "two ids far apart get no table");
        changed.set(&[]);
        assert!(changed.ids().is_empty());
    }
}
