//! What each member sees: the view diff, the frames it is encoded into,
//! and publishing them once per tick. The diff and the encoding are pure
//! functions (tested below); [`Room::publish_views`] applies them to the
//! members, sharing one frame among members whose diffs are equal.

use bytes::Bytes;
use protocol::msg::{Entity, EntityId, Update};
use protocol::{assemble, encode_server, ServerMsg};

use super::{FastMap, Room};
use crate::metrics as m;

/// The changes one member sees in a tick; members with equal keys get the
/// same bytes.
#[derive(PartialEq, Eq, Hash)]
pub(super) struct ViewDiff {
    entered: Vec<EntityId>,
    moved: Vec<EntityId>,
    left: Vec<EntityId>,
}

/// Entered: in `now`, not in `before`. Left: the reverse. Moved: in both and
/// `changed`. Both inputs are in ascending order.
pub(super) fn diff_views(
    before: &[EntityId],
    now: &[EntityId],
    changed: impl Fn(EntityId) -> bool,
) -> ViewDiff {
    let mut diff = ViewDiff {
        entered: Vec::new(),
        moved: Vec::new(),
        left: Vec::new(),
    };
    let (mut i, mut j) = (0, 0);
    while i < before.len() || j < now.len() {
        match (before.get(i), now.get(j)) {
            (Some(&b), Some(&n)) if b == n => {
                if changed(n) {
                    diff.moved.push(n);
                }
                i += 1;
                j += 1;
            }
            (Some(&b), Some(&n)) if b < n => {
                diff.left.push(b);
                i += 1;
            }
            (_, Some(&n)) => {
                diff.entered.push(n);
                j += 1;
            }
            (Some(&b), None) => {
                diff.left.push(b);
                i += 1;
            }
            (None, None) => break,
        }
    }
    diff
}

impl ViewDiff {
    /// Nothing entered, moved or left: nothing to send.
    pub(super) fn is_empty(&self) -> bool {
        self.entered.is_empty() && self.moved.is_empty() && self.left.is_empty()
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
pub(super) fn encode_diff<'a>(
    tick: u64,
    diff: &ViewDiff,
    entity: impl Fn(EntityId) -> &'a [u8],
    moved: impl Fn(EntityId) -> &'a [u8],
) -> Bytes {
    let mut bytes = Vec::with_capacity(
        16 + 24 * diff.moved.len() + 40 * diff.entered.len() + 5 * diff.left.len(),
    );
    assemble::write_update(
        &mut bytes,
        tick,
        diff.entered.iter().map(|e| entity(*e)),
        diff.moved.iter().map(|e| moved(*e)),
        &diff.left,
        false,
    );
    Bytes::from(bytes)
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
        let mut frames: FastMap<ViewDiff, Bytes> = FastMap::default();
        let mut sent = 0u64;
        if self.dirty {
            for (&id, member) in self.members.iter_mut() {
                if member.changed || member.wire.moved.is_empty() {
                    member.encode(id);
                }
            }
        }
        let mut ids = std::mem::take(&mut self.scratch_ids);
        let mut previous = std::mem::take(&mut self.scratch_view);
        ids.clear();
        ids.extend(self.members.keys().copied());
        for &id in &ids {
            let me = &self.members[&id];
            if !me.connected() {
                continue;
            }
            let resync = me.state.link.out.take_resync();
            if !self.dirty && !resync {
                continue;
            }
            // The new view goes straight into the member; the old one comes
            // back in `previous`, so no view is allocated per tick.
            let (x, y) = (me.state.x, me.state.y);
            self.grid.query(x, y, self.map.view_radius, &mut previous);
            let Some(me) = self.members.get_mut(&id) else {
                continue;
            };
            std::mem::swap(&mut me.visible, &mut previous);
            let me = &self.members[&id];
            if resync {
                // Counted only when queued: a closing session or one over
                // its budget refuses the frame.
                let full = self.full_update(&me.visible);
                sent += u64::from(me.state.link.out.push_state(me.state.link.epoch, full));
                continue;
            }
            let diff = diff_views(&previous, &me.visible, |e| self.members[&e].changed);
            if diff.is_empty() {
                continue;
            }
            let frame = match frames.get(&diff) {
                Some(frame) => frame.clone(),
                None => {
                    let members = &self.members;
                    let frame = encode_diff(
                        self.tick,
                        &diff,
                        |e| members[&e].wire.entity.as_slice(),
                        |e| members[&e].wire.moved.as_slice(),
                    );
                    frames.insert(diff, frame.clone());
                    frame
                }
            };
            sent += u64::from(me.state.link.out.push_state(me.state.link.epoch, frame));
        }
        if self.dirty {
            for member in self.members.values_mut() {
                member.changed = false;
            }
        }
        self.dirty = false;
        self.scratch_ids = ids;
        self.scratch_view = previous;
        metrics::counter!(m::UPDATE_ENCODES).increment(frames.len() as u64);
        metrics::counter!(m::UPDATE_FRAMES).increment(sent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_finds_entered_moved_and_left() {
        let changed = |e: EntityId| e == 3 || e == 9;
        let d = diff_views(&[1, 3, 5, 7], &[2, 3, 7, 9], changed);
        assert_eq!(d.entered, vec![2, 9]);
        assert_eq!(d.moved, vec![3]);
        assert_eq!(d.left, vec![1, 5]);
        let d = diff_views(&[], &[4], |_| true);
        assert_eq!(d.entered, vec![4]);
        let d = diff_views(&[4, 8], &[], |_| true);
        assert_eq!(d.left, vec![4, 8]);
        assert!(diff_views(&[1, 2], &[1, 2], |_| false).is_empty());
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
        let diff = diff_views(&[1, 3, 5], &[2, 3, 9], |e| e == 3);
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
        let again = diff_views(&[1, 3, 5], &[2, 3, 9], |e| e == 3);
        assert!(again == diff);
        let frame_again = encode_diff(
            42,
            &again,
            |e| entries[&e].1.as_slice(),
            |e| entries[&e].0.as_slice(),
        );
        assert_eq!(frame, frame_again);
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
}
