//! `update` frames assembled from entities encoded once.
//!
//! A room sends every member its own view diff each tick. With interest
//! management those diffs mostly differ, so encoding each one with serde
//! would encode every entity once per member that sees it. Instead a server
//! encodes each entity's array element once per tick ([`encode_moved`],
//! [`encode_entity`]) and [`write_update`] lays out the frame around those
//! bytes: the result is byte for byte what [`crate::encode_server`] gives for
//! the same `ServerMsg::Update` (a test below holds it to that), so clients
//! cannot tell the difference.

use rmp::encode as mp;

use crate::msg::room::{Entity, Moved};
use crate::msg::EntityId;

/// Append `moved` as one element of `update.moved`.
pub fn encode_moved(moved: &Moved, out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail, and `Moved` is plain numbers.
    rmp_serde::encode::write_named(out, moved).expect("a Moved always encodes");
}

/// Append `entity` as one element of `update.entered`.
pub fn encode_entity(entity: &Entity, out: &mut Vec<u8>) {
    rmp_serde::encode::write_named(out, entity).expect("an Entity always encodes");
}

/// [`Entity`] by reference: what a server encodes its members from, so
/// that encoding an entry does not clone the name.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct EntityRef<'a> {
    pub id: EntityId,
    pub name: &'a str,
    pub x: f32,
    pub y: f32,
    pub seq: u32,
}

/// Append `entity` as one element of `update.entered`: the same bytes as
/// [`encode_entity`] of the owned [`Entity`] (a test holds it to that).
pub fn encode_entity_ref(entity: &EntityRef<'_>, out: &mut Vec<u8>) {
    rmp_serde::encode::write_named(out, entity).expect("an EntityRef always encodes");
}

/// Append a whole `update` frame to `out`. `entered` and `moved` yield the
/// elements' bytes, as [`encode_entity`] and [`encode_moved`] wrote them.
pub fn write_update<'a, E, M>(
    out: &mut Vec<u8>,
    tick: u64,
    entered: E,
    moved: M,
    left: &[EntityId],
    full: bool,
) where
    E: ExactSizeIterator<Item = &'a [u8]>,
    M: ExactSizeIterator<Item = &'a [u8]>,
{
    // The field order and the skipped empty fields follow `Update`'s serde
    // attributes.
    let fields = 1
        + u32::from(entered.len() > 0)
        + u32::from(moved.len() > 0)
        + u32::from(!left.is_empty())
        + u32::from(full);
    // Vec writes are infallible; `expect` documents it rather than hides it.
    mp::write_map_len(out, 1).expect("vec write");
    mp::write_str(out, "update").expect("vec write");
    mp::write_map_len(out, fields).expect("vec write");
    mp::write_str(out, "tick").expect("vec write");
    mp::write_uint(out, tick).expect("vec write");
    if entered.len() > 0 {
        mp::write_str(out, "entered").expect("vec write");
        array(out, entered.len());
        entered.for_each(|bytes| out.extend_from_slice(bytes));
    }
    if moved.len() > 0 {
        mp::write_str(out, "moved").expect("vec write");
        array(out, moved.len());
        moved.for_each(|bytes| out.extend_from_slice(bytes));
    }
    if !left.is_empty() {
        mp::write_str(out, "left").expect("vec write");
        array(out, left.len());
        for &id in left {
            mp::write_uint(out, u64::from(id)).expect("vec write");
        }
    }
    if full {
        mp::write_str(out, "full").expect("vec write");
        mp::write_bool(out, true).expect("vec write");
    }
}

fn array(out: &mut Vec<u8>, len: usize) {
    // A view holds far fewer than 2^32 entities.
    let len = u32::try_from(len).expect("array length fits in u32");
    mp::write_array_len(out, len).expect("vec write");
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::msg::room::Update;
    use crate::{encode_server, ServerMsg};

    #[test]
    fn an_entity_by_reference_encodes_like_the_owned_one() {
        let owned = Entity {
            id: 7,
            name: "Ada".into(),
            x: 1.5,
            y: -2.0,
            seq: 9,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode_entity(&owned, &mut a);
        encode_entity_ref(
            &EntityRef {
                id: owned.id,
                name: &owned.name,
                x: owned.x,
                y: owned.y,
                seq: owned.seq,
            },
            &mut b,
        );
        assert_eq!(a, b);
    }

    fn assembled(update: &Update) -> Vec<u8> {
        let entered: Vec<Vec<u8>> = update
            .entered
            .iter()
            .map(|e| {
                let mut b = Vec::new();
                encode_entity(e, &mut b);
                b
            })
            .collect();
        let moved: Vec<Vec<u8>> = update
            .moved
            .iter()
            .map(|m| {
                let mut b = Vec::new();
                encode_moved(m, &mut b);
                b
            })
            .collect();
        let mut out = Vec::new();
        write_update(
            &mut out,
            update.tick,
            entered.iter().map(Vec::as_slice),
            moved.iter().map(Vec::as_slice),
            &update.left,
            update.full,
        );
        out
    }

    fn entity() -> impl Strategy<Value = Entity> {
        (
            any::<u32>(),
            "[a-z]{0,40}",
            any::<f32>(),
            any::<f32>(),
            any::<u32>(),
        )
            .prop_map(|(id, name, x, y, seq)| Entity {
                id,
                name,
                x,
                y,
                seq,
            })
    }

    fn moved() -> impl Strategy<Value = Moved> {
        (any::<u32>(), any::<f32>(), any::<f32>(), any::<u32>()).prop_map(|(id, x, y, seq)| Moved {
            id,
            x,
            y,
            seq,
        })
    }

    proptest! {
        #[test]
        fn assembled_updates_equal_serde_encoded_ones(
            tick in any::<u64>(),
            entered in prop::collection::vec(entity(), 0..20),
            // Up to 70 crosses the 16-element fixarray boundary.
            moved in prop::collection::vec(moved(), 0..70),
            left in prop::collection::vec(any::<u32>(), 0..20),
            full in any::<bool>(),
        ) {
            let update = Update { tick, entered, moved, left, full };
            let expected = encode_server(&ServerMsg::Update(update.clone()));
            let got = assembled(&update);
            prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn large_views_use_the_long_array_forms() {
        let update = Update {
            tick: u64::from(u32::MAX) + 1,
            moved: (0..70_000)
                .map(|i| Moved {
                    id: i,
                    x: 1.5,
                    y: -2.0,
                    seq: i * 3,
                })
                .collect(),
            left: (0..300).collect(),
            ..Update::default()
        };
        assert_eq!(
            assembled(&update),
            encode_server(&ServerMsg::Update(update.clone()))
        );
    }
}
