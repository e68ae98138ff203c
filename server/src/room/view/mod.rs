//! What each member sees: the view diff, the frames it is encoded into,
//! and publishing them once per tick. The diff and the encoding are pure
//! functions (tested below); [`Room::publish_views`] applies them to the
//! members, sharing one frame among members whose diffs are equal.

use bytes::{Bytes, BytesMut};
use protocol::msg::{Entity, EntityId, Update};
use protocol::{assemble, encode_server, ServerMsg};

use std::hash::BuildHasher;

mod diff;
pub use diff::{diff_views, Changed, ViewDiff};

use super::{FastMap, Room};
use crate::metrics as m;
use protocol::peer::{EntryKind, TickBuilder};

/// The frames of one tick, one per distinct diff: members whose views
/// changed the same way (everyone, when the view spans the map) share one
/// frame. The distinct diffs are kept back to back in one vector, so
/// looking a diff up or adding one allocates nothing once warm.
#[derive(Default)]
pub struct TickFrames {
    /// Hash of a diff -> the first distinct diff with that hash.
    index: FastMap<u64, u32>,
    distinct: Vec<Distinct>,
    /// The entity ids of every distinct diff: entered, moved, left.
    ids: Vec<EntityId>,
    /// Where frames are written before they are copied out exactly sized.
    buf: Vec<u8>,
    /// The frames of this and recent ticks, back to back: each is split
    /// off as a shared [`Bytes`], so a frame costs no allocation of its own
    /// and its clones for the members sharing it need none either (a
    /// `Bytes` copied from a slice allocates again at its first clone).
    chunk: BytesMut,
}

/// The least a new frame chunk holds: a few frames of a 100-player room.
const FRAME_CHUNK: usize = 8 * 1024;

struct Distinct {
    start: u32,
    lens: [u32; 3],
    /// The next distinct diff with the same hash, or `u32::MAX`.
    next: u32,
    frame: Bytes,
}

impl TickFrames {
    /// Forget the last tick's diffs (their frames are released).
    pub fn clear(&mut self) {
        self.index.clear();
        self.distinct.clear();
        self.ids.clear();
    }

    /// How many distinct frames this tick encoded.
    pub fn len(&self) -> usize {
        self.distinct.len()
    }

    /// No frame encoded yet this tick.
    pub fn is_empty(&self) -> bool {
        self.distinct.is_empty()
    }

    /// The frame of `diff`, encoded with `encode` the first time this tick
    /// that diff is seen.
    pub fn frame(
        &mut self,
        diff: &ViewDiff,
        encode: impl FnOnce(&ViewDiff, &mut Vec<u8>),
    ) -> &Bytes {
        let at = self.frame_at(diff, encode);
        self.get(at)
    }

    /// This tick's frame number `at` (from [`TickFrames::frame_at`]).
    pub fn get(&self, at: u32) -> &Bytes {
        &self.distinct[at as usize].frame
    }

    /// [`TickFrames::frame`], by its number in this tick's table: held
    /// without a clone of the frame.
    pub fn frame_at(
        &mut self,
        diff: &ViewDiff,
        encode: impl FnOnce(&ViewDiff, &mut Vec<u8>),
    ) -> u32 {
        let hash = self.index.hasher().hash_one(diff.parts());
        let mut at = self.index.get(&hash).copied().unwrap_or(u32::MAX);
        let mut last = u32::MAX;
        while at != u32::MAX {
            let d = &self.distinct[at as usize];
            if self.equals(d, diff) {
                return at;
            }
            last = at;
            at = d.next;
        }
        self.buf.clear();
        encode(diff, &mut self.buf);
        if self.chunk.capacity() < self.buf.len() {
            // A new chunk; the old one goes with the last frame cut from it.
            self.chunk = BytesMut::with_capacity(self.buf.len().max(FRAME_CHUNK));
        }
        self.chunk.extend_from_slice(&self.buf);
        let frame = self.chunk.split().freeze();
        let index = u32::try_from(self.distinct.len()).expect("fewer than 2^32 frames a tick");
        let start = u32::try_from(self.ids.len()).expect("fewer than 2^32 ids a tick");
        let (entered, moved, left) = diff.parts();
        self.ids.extend_from_slice(entered);
        self.ids.extend_from_slice(moved);
        self.ids.extend_from_slice(left);
        self.distinct.push(Distinct {
            start,
            lens: [entered.len(), moved.len(), left.len()].map(|n| n as u32),
            next: u32::MAX,
            frame,
        });
        if last == u32::MAX {
            self.index.insert(hash, index);
        } else {
            self.distinct[last as usize].next = index;
        }
        index
    }

    fn equals(&self, d: &Distinct, diff: &ViewDiff) -> bool {
        let mut at = d.start as usize;
        let (entered, moved, left) = diff.parts();
        for (len, part) in d.lens.iter().zip([entered, moved, left]) {
            let len = *len as usize;
            if self.ids[at..at + len] != *part {
                return false;
            }
            at += len;
        }
        true
    }
}

/// Encode a server message as one frame.
pub(super) fn encode_frame(msg: &ServerMsg) -> Bytes {
    Bytes::from(encode_server(msg))
}

/// The `update` frame of `diff` at `tick`, laid out around each entity's
/// pre-encoded entries (`entity(id)` for `entered`, `moved(id)` for
/// `moved`; see [`protocol::assemble`]): no entity is encoded again per
/// member that sees it.
#[cfg(test)]
pub(super) fn encode_diff<'a>(
    tick: u64,
    diff: &ViewDiff,
    entity: impl Fn(EntityId) -> &'a [u8],
    moved: impl Fn(EntityId) -> &'a [u8],
) -> Bytes {
    let mut bytes = Vec::new();
    write_diff(&mut bytes, tick, diff, entity, |e, _| moved(e));
    Bytes::from(bytes)
}

/// [`encode_diff`] into `out`; `moved(id, at)` is given each moved id
/// with its position in the `changed` list the diff was computed with
/// (see [`MovedEntries`]).
pub fn write_diff<'a>(
    out: &mut Vec<u8>,
    tick: u64,
    diff: &ViewDiff,
    entity: impl Fn(EntityId) -> &'a [u8],
    moved: impl Fn(EntityId, u32) -> &'a [u8],
) {
    assemble::write_update(
        out,
        tick,
        diff.entered.iter().map(|e| entity(*e)),
        diff.moved
            .iter()
            .zip(&diff.moved_at)
            .map(|(&e, &at)| moved(e, at)),
        &diff.left,
        false,
    );
}

/// The `moved` entries of a tick's changed members, copied side by side
/// in the order of the tick's `changed` list: a frame finds each entry by
/// its position there ([`ViewDiff::compute`] records it) instead of
/// looking the member up by id, once per member that sees it.
pub struct MovedEntries {
    bytes: Vec<u8>,
    /// Where each entry starts in `bytes`, and after the last one where
    /// it ends: entry `at` is `bytes[bounds[at]..bounds[at + 1]]`.
    bounds: Vec<u32>,
}

impl Default for MovedEntries {
    fn default() -> MovedEntries {
        MovedEntries {
            bytes: Vec::new(),
            bounds: vec![0],
        }
    }
}

impl MovedEntries {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.bounds.truncate(1);
    }

    /// Add the next changed member's entry.
    pub fn push(&mut self, entry: &[u8]) {
        self.bytes.extend_from_slice(entry);
        let end = u32::try_from(self.bytes.len()).expect("under 4 GiB of moved entries a tick");
        self.bounds.push(end);
    }

    /// The entry of the changed member at position `at`.
    pub fn get(&self, at: u32) -> &[u8] {
        let at = at as usize;
        &self.bytes[self.bounds[at] as usize..self.bounds[at + 1] as usize]
    }
}

/// A full `update` (a resync after a restart or a dropped frame): every
/// entity in view, as entered.
pub(super) fn full_update(tick: u64, entities: Vec<Entity>) -> Bytes {
    encode_frame(&ServerMsg::Update(Update {
        tick,
        entered: entities,
        full: true,
        ..Update::default()
    }))
}

impl Room {
    /// The full view of member `id` as an update frame.
    pub(super) fn full_update(&self, view: &[EntityId]) -> Bytes {
        let entities = view.iter().map(|e| self.members[e].entity(*e)).collect();
        full_update(self.tick, entities)
    }

    /// Send every connected member what changed in its view this tick.
    pub(super) fn publish_views(&mut self) {
        let mut sent = 0u64;
        let mut diffs = 0u64;
        let mut scratch = std::mem::take(&mut self.view_scratch);
        let ViewScratch {
            ids,
            changed,
            previous,
            diff,
            frames,
            neighbourhoods,
            edges,
            moved_entries,
            last,
        } = &mut scratch;
        last.forget();
        changed.clear();
        moved_entries.clear();
        if self.dirty {
            for (&id, member) in self.members.iter_mut() {
                if member.changed || member.wire.moved.is_empty() {
                    member.encode(id);
                }
                if member.changed {
                    changed.push(id);
                }
            }
            changed.seal();
            for id in changed.ids() {
                moved_entries.push(&self.members[id].wire.moved);
            }
        }
        frames.clear();
        // Positions changed since the last tick (or nothing is sent).
        neighbourhoods.clear();
        ids.clear();
        ids.extend(self.members.keys().copied());
        for &id in ids.iter() {
            let Some(me) = self.members.get_mut(&id) else {
                continue;
            };
            if !me.connected() {
                continue;
            }
            let resync = match &me.state.link.remote {
                // The edge asked (a slow client there shed updates), or
                // its tick was lost on the way.
                Some(seat) => edges.is_full(&seat.edge) | me.state.link.out.take_resync(),
                None => me.state.link.out.take_resync(),
            };
            if !self.dirty && !resync {
                continue;
            }
            // The new view goes straight into the member; the old one comes
            // back in `previous`, so no view is allocated per tick.
            let (x, y) = (me.state.x, me.state.y);
            self.grid
                .query_cached(x, y, self.map.view_radius, neighbourhoods, previous);
            std::mem::swap(&mut me.visible, previous);
            let members = &self.members;
            let me = &members[&id];
            if let Some(seat) = &me.state.link.remote {
                // A remote member: its view goes into its edge's one tick.
                let builder = edges.builder(&seat.edge, &self.label, self.tick);
                let entered = |b: &mut TickBuilder, ids: &[EntityId]| -> Vec<u32> {
                    ids.iter()
                        .map(|&e| {
                            b.entry(e, EntryKind::Entered, || {
                                Bytes::copy_from_slice(members[&e].entity_entry(e))
                            })
                        })
                        .collect()
                };
                if resync {
                    let all = entered(builder, &me.visible);
                    builder.view(seat.session, all, Vec::new(), Vec::new(), true);
                    continue;
                }
                diff.compute(previous, &me.visible, changed);
                diffs += 1;
                if diff.is_empty() {
                    continue;
                }
                let (e, mv, left) = diff.parts();
                let e = entered(builder, e);
                let moved_entry = |b: &mut TickBuilder, m: EntityId| {
                    b.entry(m, EntryKind::Moved, || {
                        Bytes::copy_from_slice(&members[&m].wire.moved)
                    })
                };
                // An implied tick needs the entries, not the list (the
                // edge computes it): no list is collected.
                let mv = if builder.is_implied() {
                    for &m in mv {
                        moved_entry(builder, m);
                    }
                    Vec::new()
                } else {
                    mv.iter().map(|&m| moved_entry(builder, m)).collect()
                };
                builder.view(seat.session, e, mv, left.to_vec(), false);
                continue;
            }
            if resync {
                // Counted only when queued: a closing session or one over
                // its budget refuses the frame.
                let full = self.full_update(&me.visible);
                sent += u64::from(me.state.link.out.push_state(me.state.link.epoch, &full));
                continue;
            }
            if !last.is(previous, &me.visible, |m| {
                members.get(&m).map(|m| m.visible.as_slice())
            }) {
                diff.compute(previous, &me.visible, changed);
                diffs += 1;
                let frame = (!diff.is_empty()).then(|| {
                    let tick = self.tick;
                    frames.frame_at(diff, |diff, out| {
                        write_diff(
                            out,
                            tick,
                            diff,
                            |e| members[&e].entity_entry(e),
                            |_, at| moved_entries.get(at),
                        )
                    })
                });
                last.remember(id, previous, frame);
            }
            let Some(at) = last.frame else {
                continue;
            };
            // Borrowed: cloned only if the member's socket does not take it.
            let frame = frames.get(at);
            sent += u64::from(me.state.link.out.push_state(me.state.link.epoch, frame));
        }
        let ticks = edges.send();
        metrics::counter!(m::REMOTE_TICKS).increment(ticks);
        if self.dirty {
            for member in self.members.values_mut() {
                member.changed = false;
            }
        }
        self.dirty = false;
        let encodes = frames.len() as u64;
        // The frames go with the members' queues; the table keeps none.
        frames.clear();
        last.forget();
        self.view_scratch = scratch;
        metrics::counter!(m::UPDATE_ENCODES).increment(encodes);
        metrics::counter!(m::VIEW_DIFFS).increment(diffs);
        metrics::counter!(m::UPDATE_FRAMES).increment(sent);
    }
}

/// What [`Room::publish_views`] reuses from tick to tick.
#[derive(Default)]
pub(super) struct ViewScratch {
    ids: Vec<EntityId>,
    /// The members that changed this tick.
    changed: Changed,
    previous: Vec<EntityId>,
    diff: ViewDiff,
    frames: TickFrames,
    neighbourhoods: super::grid::Neighbourhoods,
    /// This tick's one `tick` per edge (cluster mode).
    edges: super::remote::EdgeTicks,
    /// The `moved` entries of `changed`, in its order.
    moved_entries: MovedEntries,
    /// The last local member's views and frame.
    last: LastView,
}

/// The views before and after of the last local member published this
/// tick, and its frame (`None`: nothing changed in its view). A member
/// whose views are the same gets the same diff, so the same frame: it is
/// handed that frame without a diff, a hash or a lookup. When the view
/// spans the room (a small map, a large view radius: everyone sees
/// everyone) every member but the newest has the views of the one before
/// it, and a tick costs one diff instead of one per member. Otherwise it
/// costs two comparisons that fail early, and nothing is copied: the view
/// before is the scratch buffer swapped in, the view now is read from the
/// member, the frame is its number in the tick's table.
#[derive(Default)]
pub(super) struct LastView {
    /// The last member's view before this tick.
    previous: Vec<EntityId>,
    /// The last member (its view now is its `visible`); `None`: nothing
    /// remembered this tick.
    member: Option<EntityId>,
    /// Its frame in this tick's [`TickFrames`].
    frame: Option<u32>,
}

impl LastView {
    /// A new tick: the last tick's views and frame count no more.
    fn forget(&mut self) {
        self.member = None;
        self.frame = None;
    }

    /// The last member's views were `previous` and `now` this tick;
    /// `view_of` gives a member's view now.
    fn is<'a>(
        &self,
        previous: &[EntityId],
        now: &[EntityId],
        view_of: impl FnOnce(EntityId) -> Option<&'a [EntityId]>,
    ) -> bool {
        self.member.is_some_and(|last| {
            self.previous == previous && view_of(last).is_some_and(|view| view == now)
        })
    }

    /// `member`'s view before was `previous` (taken, swapped for the one
    /// remembered last) and its frame is `frame`.
    fn remember(&mut self, member: EntityId, previous: &mut Vec<EntityId>, frame: Option<u32>) {
        std::mem::swap(&mut self.previous, previous);
        self.member = Some(member);
        self.frame = frame;
    }
}

#[cfg(test)]
mod tests {
    use super::diff::tests::Rng;
    use super::*;

    #[test]
    fn diff_finds_entered_moved_and_left() {
        let d = diff_views(&[1, 3, 5, 7], &[2, 3, 7, 9], &[3, 9]);
        assert_eq!(d.entered, vec![2, 9]);
        assert_eq!(d.moved, vec![3]);
        assert_eq!(d.left, vec![1, 5]);
        let d = diff_views(&[], &[4], &[4]);
        assert_eq!(d.entered, vec![4]);
        let d = diff_views(&[4, 8], &[], &[4, 8]);
        assert_eq!(d.left, vec![4, 8]);
        assert!(diff_views(&[1, 2], &[1, 2], &[]).is_empty());
        // Changed entities out of view, between and around the ones in
        // view, are passed over.
        let d = diff_views(&[2, 4, 6], &[2, 4, 6], &[1, 3, 4, 5, 7]);
        assert_eq!(d.moved, vec![4]);
        assert!(d.entered.is_empty() && d.left.is_empty());
    }

    fn entity(id: EntityId, x: f32) -> Entity {
        Entity {
            id,
            name: format!("e{id}"),
            x,
            y: 2.0,
            seq: id,
        }
    }

    #[test]
    fn an_encoded_diff_is_the_update_the_client_decodes() {
        // Pre-encoded entries, as each member keeps them.
        let encoded = |id: EntityId| {
            let (mut moved, mut whole) = (Vec::new(), Vec::new());
            let e = entity(id, id as f32);
            assemble::encode_moved(
                &protocol::msg::Moved {
                    id,
                    x: e.x,
                    y: e.y,
                    seq: e.seq,
                },
                &mut moved,
            );
            assemble::encode_entity(&e, &mut whole);
            (moved, whole)
        };
        let entries: FastMap<EntityId, (Vec<u8>, Vec<u8>)> =
            [2, 3, 9].into_iter().map(|id| (id, encoded(id))).collect();
        let diff = diff_views(&[1, 3, 5], &[2, 3, 9], &[3]);
        let frame = encode_diff(
            42,
            &diff,
            |e| entries[&e].1.as_slice(),
            |e| entries[&e].0.as_slice(),
        );
        let decoded = protocol::decode_server(&frame, 1 << 16).expect("a valid frame");
        let ServerMsg::Update(update) = decoded else {
            panic!("not an update: {decoded:?}");
        };
        assert_eq!(update.tick, 42);
        assert!(!update.full);
        assert_eq!(update.entered, vec![entity(2, 2.0), entity(9, 9.0)]);
        let moved: Vec<EntityId> = update.moved.iter().map(|m| m.id).collect();
        assert_eq!(moved, vec![3]);
        assert_eq!(update.left, vec![1, 5]);
        // Equal diffs give equal bytes: one frame serves every member
        // whose view changed the same way.
        let again = diff_views(&[1, 3, 5], &[2, 3, 9], &[3]);
        assert!(again == diff);
        let frame_again = encode_diff(
            42,
            &again,
            |e| entries[&e].1.as_slice(),
            |e| entries[&e].0.as_slice(),
        );
        assert_eq!(frame, frame_again);
    }

    /// Every entity these tests use, as changed.
    const ALL: &[EntityId] = &[1, 2, 3, 4];

    #[test]
    fn equal_diffs_share_one_frame_and_distinct_ones_get_their_own() {
        let mut frames = TickFrames::default();
        let mut encodes = 0;
        let mut frame_of = |frames: &mut TickFrames, diff: &ViewDiff| {
            frames
                .frame(diff, |d, out| {
                    encodes += 1;
                    out.extend_from_slice(format!("{d:?}").as_bytes());
                })
                .clone()
        };
        let a = diff_views(&[1, 2], &[2, 3], ALL);
        let b = diff_views(&[1, 2], &[2, 4], ALL);
        // Same ids, but in another part: must not be taken for `a`.
        let c = diff_views(&[2, 3], &[1, 2], ALL);
        let fa = frame_of(&mut frames, &a);
        let fb = frame_of(&mut frames, &b);
        let fa2 = frame_of(&mut frames, &diff_views(&[1, 2], &[2, 3], ALL));
        let fc = frame_of(&mut frames, &c);
        assert_eq!(fa.as_ptr(), fa2.as_ptr(), "one frame for equal diffs");
        assert_ne!(fa, fb);
        assert_ne!(fa, fc);
        assert_eq!(frames.len(), 3);
        frames.clear();
        assert_eq!(frames.len(), 0);
        let fa3 = frame_of(&mut frames, &a);
        assert_eq!(fa3, fa, "a new tick encodes again, to the same bytes");
        assert_eq!(encodes, 4);
    }

    #[test]
    fn frames_cut_from_shared_chunks_keep_their_bytes() {
        // Distinct diffs of growing size: several chunks are filled and
        // replaced while earlier frames are still held.
        let mut frames = TickFrames::default();
        let mut held = Vec::new();
        for n in 1..200u32 {
            let now: Vec<EntityId> = (0..n).collect();
            let diff = diff_views(&[], &now, &[]);
            let expected: Vec<u8> = (0..n * 20).map(|k| (k % 251) as u8).collect();
            let frame = frames.frame(&diff, |_, out| out.extend_from_slice(&expected));
            held.push((frame.clone(), expected));
        }
        frames.clear();
        for (frame, expected) in &held {
            assert_eq!(frame.as_ref(), expected.as_slice());
        }
    }

    #[test]
    fn a_full_update_lists_everything_in_view_as_entered() {
        let frame = full_update(7, vec![entity(1, 0.5), entity(4, 8.0)]);
        let ServerMsg::Update(update) = protocol::decode_server(&frame, 1 << 16).unwrap() else {
            panic!("not an update");
        };
        assert!(update.full);
        assert_eq!(update.tick, 7);
        assert_eq!(update.entered, vec![entity(1, 0.5), entity(4, 8.0)]);
        assert!(update.moved.is_empty() && update.left.is_empty());
    }

    #[test]
    fn the_last_views_are_matched_whole_and_only_within_a_tick() {
        let mut last = LastView::default();
        let views: FastMap<EntityId, Vec<EntityId>> =
            [(10, vec![1, 2, 4]), (11, vec![7]), (12, vec![1])]
                .into_iter()
                .collect();
        let view_of = |m: EntityId| views.get(&m).map(Vec::as_slice);
        assert!(!last.is(&[], &[], view_of), "nothing remembered yet");
        // The view before is taken, not copied: the scratch gets the
        // buffer remembered before.
        let mut previous = vec![1, 2, 3];
        last.remember(10, &mut previous, Some(4));
        assert!(previous.is_empty(), "the old (empty) buffer came back");
        assert!(last.is(&[1, 2, 3], &[1, 2, 4], view_of));
        assert_eq!(last.frame, Some(4));
        // Either view differing, by an id or by length, is another diff.
        assert!(!last.is(&[1, 2, 3], &[1, 2, 5], view_of));
        assert!(!last.is(&[1, 2], &[1, 2, 4], view_of));
        assert!(!last.is(&[1, 2, 4], &[1, 2, 3], view_of));
        // A member no longer there matches nothing.
        assert!(!last.is(&[1, 2, 3], &[1, 2, 4], |_| None));
        // Nothing changed in a view: remembered as no frame.
        let mut previous = vec![7];
        last.remember(11, &mut previous, None);
        assert_eq!(previous, vec![1, 2, 3], "the buffers swap");
        assert!(last.is(&[7], &[7], view_of) && last.frame.is_none());
        // A new tick's frames are other frames: nothing carries over.
        let mut previous = vec![1];
        last.remember(12, &mut previous, Some(0));
        assert!(last.is(&[1], &[1], view_of));
        last.forget();
        assert!(!last.is(&[1], &[1], view_of));
        assert!(last.frame.is_none(), "the frame is let go");
    }

    #[test]
    fn moved_entries_come_back_by_position() {
        let mut entries = MovedEntries::default();
        let parts: [&[u8]; 4] = [b"ab", b"", b"cde", b"f"];
        for part in parts {
            entries.push(part);
        }
        for (at, part) in parts.iter().enumerate() {
            assert_eq!(entries.get(at as u32), *part);
        }
        entries.clear();
        entries.push(b"g");
        assert_eq!(entries.get(0), b"g");
    }

    #[test]
    fn frames_through_the_moved_table_equal_frames_through_lookups() {
        // A room's members with their entries encoded, a random part of
        // them changed, and random views before and after.
        let mut rng = Rng(7);
        let universe = 120u32;
        let encoded: FastMap<EntityId, (Vec<u8>, Vec<u8>)> = (0..universe)
            .map(|id| {
                let e = entity(id, rng.below(1000) as f32);
                let (mut moved, mut whole) = (Vec::new(), Vec::new());
                let m = protocol::msg::Moved {
                    id,
                    x: e.x,
                    y: e.y,
                    seq: e.seq,
                };
                assemble::encode_moved(&m, &mut moved);
                assemble::encode_entity(&e, &mut whole);
                (id, (moved, whole))
            })
            .collect();
        let mut table = MovedEntries::default();
        let mut changed = Changed::default();
        let mut diff = ViewDiff::default();
        let (mut by_table, mut by_id) = (Vec::new(), Vec::new());
        for round in 0..500 {
            changed.set(&rng.any_ids(0, universe));
            table.clear();
            for id in changed.ids() {
                table.push(&encoded[id].0);
            }
            let before = rng.ids(0, universe, 50);
            let now = if round % 2 == 0 {
                rng.nudged(&before, 0, universe)
            } else {
                before.clone()
            };
            diff.compute(&before, &now, &changed);
            by_table.clear();
            write_diff(
                &mut by_table,
                round,
                &diff,
                |e| encoded[&e].1.as_slice(),
                |_, at| table.get(at),
            );
            by_id.clear();
            write_diff(
                &mut by_id,
                round,
                &diff,
                |e| encoded[&e].1.as_slice(),
                |e, _| encoded[&e].0.as_slice(),
            );
            assert_eq!(by_table, by_id);
            let ServerMsg::Update(update) = protocol::decode_server(&by_table, 1 << 20).unwrap()
            else {
                panic!("not an update");
            };
            let moved: Vec<EntityId> = update.moved.iter().map(|m| m.id).collect();
            assert_eq!(moved, diff.moved);
        }
    }
}
