//! Implied `moved`: the edge's half of a tick sent with `implied` set.
//!
//! Why: a member's `moved` is the entities in its view that moved this
//! tick, and the edge can know both. It knows each member's view from
//! what the member was sent (the `joined` frame's entities, then each
//! update's `entered` and `left`, a `full` update resetting it), and the
//! tick carries every `Moved` entry any of its views needs. So the owner
//! need not list `moved` per view: the edge takes the tick's `Moved`
//! entries whose entity is in the member's view (before this tick's
//! `left`), exactly the list the owner would have sent. Most views then
//! shrink to their recipients plus `entered` and `left`, and members whose
//! views differ only in what moved share one view on the wire.
//!
//! Why that equals the owner's list: the owner's `moved` for a member is
//! its previous view minus what left, intersected with the entities that
//! moved this tick; every such entity has a `Moved` entry in the tick
//! (that member's view asked for it), and every `Moved` entry is of an
//! entity that moved. The one thing to keep equal is the view, which is
//! why [`KnownView`] also follows the `joined` and reliable `update`
//! frames, and reports anything it cannot reconcile (an entity entering
//! that it holds, one leaving that it does not) so the edge asks for a
//! full view (`resync`) rather than drift.

use crate::msg::EntityId;

use super::room::{EntryKind, Tick, TickError, View};

/// The kind and entity id of an entry (an encoded `Entity` or `Moved`),
/// read without decoding the rest of it; `None` for bytes that are not
/// one.
pub fn entry_id(entry: &[u8]) -> Option<(EntryKind, EntityId)> {
    // `encode_moved` writes the array `[id, x, y, seq]`; `encode_entity`
    // a map whose first key is `id`.
    let (kind, mut rest) = match entry {
        [0x94, rest @ ..] => (EntryKind::Moved, rest),
        [0x80..=0x8f, 0xa2, b'i', b'd', rest @ ..] => (EntryKind::Entered, rest),
        // Another layout of the same values: decode them.
        [first, ..] => {
            let kind = match first {
                0x80..=0x8f | 0xde | 0xdf => EntryKind::Entered,
                _ => EntryKind::Moved,
            };
            return super::room::entry_position(entry).map(|(id, _, _)| (kind, id));
        }
        [] => return None,
    };
    rmp::decode::read_int(&mut rest).ok().map(|id| (kind, id))
}

/// What an edge reads once per tick: each entry's entity id, and the
/// `Moved` entries in entity order.
#[derive(Debug, Default)]
pub struct TickIds {
    /// Per entry: its entity id, `None` if it is not a readable entry.
    ids: Vec<Option<EntityId>>,
    /// `(entity, entry index)` of every `Moved` entry, by entity.
    moved: Vec<(EntityId, u32)>,
    /// The same for the `Entity` entries.
    entered: Vec<(EntityId, u32)>,
}

impl TickIds {
    pub fn read(tick: &Tick) -> TickIds {
        let mut ids = TickIds::default();
        ids.reread(tick);
        ids
    }

    /// [`TickIds::read`] into these buffers, which an edge keeps from one
    /// tick to the next (no allocation once they have grown to a tick).
    pub fn reread(&mut self, tick: &Tick) {
        let TickIds {
            ids,
            moved,
            entered,
        } = self;
        ids.clear();
        moved.clear();
        entered.clear();
        ids.reserve(tick.entries.len());
        for (i, entry) in tick.entries.iter().enumerate() {
            let read = entry_id(entry);
            // At most as many entries as a frame holds: fits a u32.
            match read {
                Some((EntryKind::Moved, id)) => moved.push((id, i as u32)),
                Some((EntryKind::Entered, id)) => entered.push((id, i as u32)),
                None => {}
            }
            ids.push(read.map(|(_, id)| id));
        }
        // `TickBuilder` numbers them in entity order already; a tick from
        // elsewhere is put in order here (a local member's `moved` is in
        // entity order).
        for list in [moved, entered] {
            if list.windows(2).any(|w| w[0].0 >= w[1].0) {
                list.sort_unstable();
                list.dedup_by_key(|m| m.0);
            }
        }
    }

    /// The index of an entry of entity `id` (its `Moved` one if it has
    /// both: the same position either way), if the tick carries one.
    pub fn entry_of(&self, id: EntityId) -> Option<u32> {
        [&self.moved, &self.entered].into_iter().find_map(|list| {
            list.binary_search_by_key(&id, |&(e, _)| e)
                .ok()
                .map(|at| list[at].1)
        })
    }

    fn id(&self, index: u32) -> Result<Option<EntityId>, TickError> {
        self.ids.get(index as usize).copied().ok_or(TickError {
            index,
            len: self.ids.len(),
        })
    }
}

/// The entry indices of `moves` (by entity, ascending) whose entity is
/// in `known` (ascending) and not in `left`, into `moved`, in entity
/// order.
///
/// Without branches on the comparisons: this runs for every recipient of
/// every tick, and whether the next id is in view or not is a coin toss
/// to a branch predictor (the plain merge's mispredictions were most of
/// its time in a profile of the hop). Each step writes a candidate and
/// keeps it or not by advancing the length.
fn merge_moved(
    known: &[EntityId],
    moves: &[(EntityId, u32)],
    left: &[EntityId],
    moved: &mut Vec<u32>,
) {
    moved.clear();
    let most = known.len().min(moves.len());
    if most == 0 {
        return;
    }
    moved.resize(most, 0);
    // Two copies of the loop: with nothing left (most views), no look at
    // `left` per step.
    let n = if left.is_empty() {
        merge_into(known, moves, moved, |_| true)
    } else {
        merge_into(known, moves, moved, |k| !left.contains(&k))
    };
    moved.truncate(n);
}

/// [`merge_moved`]'s loop: the indices kept, at the front of `out` (at
/// least as long as the shorter list); how many.
#[inline(always)]
fn merge_into(
    known: &[EntityId],
    moves: &[(EntityId, u32)],
    out: &mut [u32],
    keep: impl Fn(EntityId) -> bool,
) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < known.len() && j < moves.len() {
        let (k, (m, index)) = (known[i], moves[j]);
        // `n` < `out.len()` here: each index kept took one of each list,
        // so as many as the shorter list would have ended the loop.
        out[n] = index;
        n += usize::from((k == m) & keep(k));
        i += usize::from(k <= m);
        j += usize::from(m <= k);
    }
    n
}

/// One member's view as its edge tracks it: the entity ids the member was
/// shown, ascending.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KnownView {
    ids: Vec<EntityId>,
}

impl KnownView {
    pub fn ids(&self) -> &[EntityId] {
        &self.ids
    }

    /// The member was sent `frame` (a whole client frame, passed through
    /// as `reliable`): a `joined` sets the view to its entities, an
    /// `update` (a reliable full update after a room restart) applies;
    /// anything else leaves it as it is. False when an update does not
    /// fit the view (the member is owed a full view).
    pub fn observe_frame(&mut self, frame: &[u8]) -> bool {
        const JOINED: &[u8] = b"\x81\xa6joined";
        const UPDATE: &[u8] = b"\x81\xa6update";
        if !(frame.starts_with(JOINED) || frame.starts_with(UPDATE)) {
            return true;
        }
        match crate::decode_server(frame, frame.len()) {
            Ok(crate::ServerMsg::Joined(j)) => {
                self.set(j.entities.iter().map(|e| e.id));
                true
            }
            Ok(crate::ServerMsg::Update(u)) if u.full => {
                self.set(u.entered.iter().map(|e| e.id));
                true
            }
            Ok(crate::ServerMsg::Update(u)) => {
                self.apply(&u.left, u.entered.iter().map(|e| Some(e.id)))
            }
            _ => true,
        }
    }

    /// Apply one view of `tick` to this member: `moved` gets the entry
    /// indices of its `update.moved`, the view's own list or, for an
    /// `implied` tick, the ones computed from the view before this tick
    /// (in entity order, as the owner lists them). `Ok(false)` when the
    /// view does not fit what the edge knows: the frame is still the best
    /// one to send (unless it came out empty: then there is nothing to
    /// send), but the member is owed a full view. An index the tick does
    /// not carry is an error.
    pub fn advance(
        &mut self,
        tick: &Tick,
        ids: &TickIds,
        view: &View,
        moved: &mut Vec<u32>,
    ) -> Result<bool, TickError> {
        moved.clear();
        let entered = view
            .entered
            .iter()
            .map(|&i| ids.id(i))
            .collect::<Result<Vec<_>, _>>()?;
        if !tick.implied {
            for &i in &view.moved {
                ids.id(i)?;
            }
            moved.extend_from_slice(&view.moved);
        }
        if view.full {
            // A full view has no `moved`: everything in it is entered.
            let readable = entered.iter().all(Option::is_some);
            self.set(entered.into_iter().flatten());
            return Ok(readable);
        }
        if tick.implied {
            // The `Moved` entries of entities in view, less what left: a
            // merge of two ascending lists (this runs for every recipient
            // of every tick).
            merge_moved(&self.ids, &ids.moved, &view.left, moved);
        }
        // The owner sends a member a view only when something changed for
        // it: an implied view that comes out empty means the edge's view
        // is not the owner's.
        let empty = tick.implied && moved.is_empty() && view.left.is_empty() && entered.is_empty();
        Ok(self.apply(&view.left, entered.into_iter()) && !empty)
    }

    /// Forget the view (a new seat: its `joined` comes next).
    pub fn clear(&mut self) {
        self.ids.clear();
    }

    fn set(&mut self, ids: impl Iterator<Item = EntityId>) {
        self.ids.clear();
        self.ids.extend(ids);
        self.ids.sort_unstable();
        self.ids.dedup();
    }

    /// Take `left` out and put `entered` in; false if one left that was
    /// not in view, one entered that was, or an entry was unreadable.
    fn apply(
        &mut self,
        left: &[EntityId],
        entered: impl Iterator<Item = Option<EntityId>>,
    ) -> bool {
        let mut fits = true;
        for id in left {
            match self.ids.binary_search(id) {
                Ok(at) => {
                    self.ids.remove(at);
                }
                Err(_) => fits = false,
            }
        }
        for id in entered {
            let Some(id) = id else {
                fits = false;
                continue;
            };
            match self.ids.binary_search(&id) {
                Ok(_) => fits = false,
                Err(at) => self.ids.insert(at, id),
            }
        }
        fits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assemble::{encode_entity, encode_moved};
    use crate::msg::{Entity, Moved};

    fn entity(id: EntityId) -> Entity {
        Entity {
            id,
            name: format!("e{id}"),
            x: id as f32,
            y: 1.0,
            seq: 2,
        }
    }

    #[test]
    fn entry_ids_read_both_kinds_and_refuse_garbage() {
        let (mut e, mut m) = (Vec::new(), Vec::new());
        encode_entity(&entity(300), &mut e);
        encode_moved(
            &Moved {
                id: 70_000,
                x: 1.0,
                y: 2.0,
                seq: 3,
            },
            &mut m,
        );
        assert_eq!(entry_id(&e), Some((EntryKind::Entered, 300)));
        assert_eq!(entry_id(&m), Some((EntryKind::Moved, 70_000)));
        assert_eq!(entry_id(&[]), None);
        assert_eq!(entry_id(&[0xc1]), None);
        // A map with `id` not first still reads (decoded in full).
        let other =
            rmp_serde::to_vec_named(&serde_json::json!({"x": 1.0, "y": 2.0, "id": 9})).unwrap();
        assert_eq!(entry_id(&other), Some((EntryKind::Entered, 9)));
    }

    #[test]
    fn a_known_view_follows_joined_and_reliable_updates() {
        let mut known = KnownView::default();
        let joined = crate::encode_server(&crate::ServerMsg::Joined(crate::msg::Joined {
            map: crate::msg::MapInfo {
                name: "m".into(),
                width: 10.0,
                height: 10.0,
                tick_hz: 20,
                view_radius: 4.0,
                speed: 1.0,
            },
            you: 1,
            tick: 3,
            entities: vec![entity(5), entity(2)],
            items: Vec::new(),
            instance: 1,
        }));
        assert!(known.observe_frame(&joined));
        assert_eq!(known.ids(), [2, 5]);
        let update = |entered: Vec<EntityId>, left: Vec<EntityId>, full: bool| {
            crate::encode_server(&crate::ServerMsg::Update(crate::msg::Update {
                tick: 4,
                entered: entered.into_iter().map(entity).collect(),
                left,
                full,
                ..Default::default()
            }))
        };
        assert!(known.observe_frame(&update(vec![7], vec![2], false)));
        assert_eq!(known.ids(), [5, 7]);
        // 2 is not in view: it cannot leave.
        assert!(!known.observe_frame(&update(vec![], vec![2], false)));
        assert!(known.observe_frame(&update(vec![9], vec![], true)));
        assert_eq!(known.ids(), [9]);
        // Chat and the like pass by.
        assert!(known.observe_frame(b"\x81\xa4pong\x80"));
        assert_eq!(known.ids(), [9]);
    }

    #[test]
    fn the_branchless_merge_keeps_what_the_plain_one_keeps() {
        // The plain merge it replaced: the `Moved` entries of entities in
        // view, less what left.
        fn plain(known: &[EntityId], moves: &[(EntityId, u32)], left: &[EntityId]) -> Vec<u32> {
            moves
                .iter()
                .filter(|(m, _)| known.binary_search(m).is_ok() && !left.contains(m))
                .map(|&(_, index)| index)
                .collect()
        }
        // A small deterministic generator (xorshift): no test randomness.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |below: u32| -> u32 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % u64::from(below)) as u32
        };
        let mut out = vec![7, 7, 7];
        for round in 0..2_000 {
            let span = 1 + next(300);
            let mut known: Vec<EntityId> = (0..next(80)).map(|_| next(span)).collect();
            known.sort_unstable();
            known.dedup();
            let mut ids: Vec<EntityId> = (0..next(120)).map(|_| next(span)).collect();
            ids.sort_unstable();
            ids.dedup();
            // Entry indices need not follow entity order (a tick from
            // elsewhere is sorted by entity here, not renumbered).
            let moves: Vec<(EntityId, u32)> = ids.iter().map(|&id| (id, next(1_000))).collect();
            let left: Vec<EntityId> = if round % 3 == 0 {
                (0..next(4)).map(|_| next(span)).collect()
            } else {
                Vec::new()
            };
            merge_moved(&known, &moves, &left, &mut out);
            assert_eq!(out, plain(&known, &moves, &left), "round {round}");
        }
        merge_moved(&[], &[(1, 0)], &[], &mut out);
        assert!(out.is_empty());
        merge_moved(&[1, 2], &[(1, 4), (2, 9)], &[], &mut out);
        assert_eq!(out, [4, 9]);
        merge_moved(&[1, 2], &[(1, 4), (2, 9)], &[1], &mut out);
        assert_eq!(out, [9]);
    }
}
