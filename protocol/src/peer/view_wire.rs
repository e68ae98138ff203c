//! How a [`View`] crosses the tunnel: a compact array
//! `[sessions, entered, moved, left, full]` instead of a map with field
//! names, and each list of entry indices as whichever is shorter of a
//! bitmap or a plain array.
//!
//! Why: a tick carries one view per distinct view of an edge's members,
//! and with a view radius nearly every member's view is distinct. As a
//! map with field names a view cost about 20 bytes before its first index;
//! as an array it costs 5. A member's `moved` indices are ascending (the
//! room lists them in entity order and [`super::TickBuilder`] numbers the
//! entries in that order), so they fit a bitmap over the tick's entries:
//! 100 entries take 13 bytes however many of them the member sees, where
//! the array takes one byte per index (two from index 128 on).
//!
//! An index list is a MessagePack `bin` (a bitmap: bit `i % 8` of byte
//! `i / 8` set for index `i`, least significant bit first) or an array of
//! unsigned integers (any order, as given). A decoder accepts both.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::room::{SessionId, View};
use crate::msg::EntityId;

/// The bytes a bitmap of `list` takes, if `list` is strictly ascending.
fn bitmap_len(list: &[u32]) -> Option<usize> {
    if list.windows(2).any(|w| w[0] >= w[1]) {
        return None;
    }
    list.last().map(|&max| max as usize / 8 + 1)
}

/// The bytes `list` takes as a MessagePack array of unsigned integers.
fn array_len(list: &[u32]) -> usize {
    let header = if list.len() < 16 { 1 } else { 3 };
    header
        + list
            .iter()
            .map(|&i| match i {
                0..=127 => 1,
                128..=255 => 2,
                256..=65535 => 3,
                _ => 5,
            })
            .sum::<usize>()
}

/// One list of entry indices, written the shorter way.
struct Indices<'a>(&'a [u32]);

impl Serialize for Indices<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let list = self.0;
        match bitmap_len(list) {
            // A bin's header is 2 bytes (up to 255 bytes of bitmap).
            Some(len) if len + 2 < array_len(list) => {
                let mut bits = vec![0u8; len];
                for &i in list {
                    bits[i as usize / 8] |= 1 << (i % 8);
                }
                s.serialize_bytes(&bits)
            }
            _ => list.serialize(s),
        }
    }
}

/// The largest index a bitmap may name: a tick holds far fewer entries
/// (each is a frame's worth of an entity), and a bitmap that names more is
/// refused rather than expanded.
const MAX_BITMAP_BYTES: usize = 1 << 16;

struct IndicesVisitor;

impl<'de> Visitor<'de> for IndicesVisitor {
    type Value = Vec<u32>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("entry indices: a bitmap (bin) or an array of integers")
    }

    fn visit_bytes<E: de::Error>(self, bits: &[u8]) -> Result<Vec<u32>, E> {
        if bits.len() > MAX_BITMAP_BYTES {
            return Err(E::invalid_length(
                bits.len(),
                &"a bitmap of at most 65536 bytes",
            ));
        }
        let mut list = Vec::new();
        for (byte, &b) in bits.iter().enumerate() {
            let mut rest = b;
            while rest != 0 {
                let bit = rest.trailing_zeros();
                // At most 2^16 * 8 indices: fits a u32.
                list.push(byte as u32 * 8 + bit);
                rest &= rest - 1;
            }
        }
        Ok(list)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u32>, A::Error> {
        // No pre-allocation from the claimed length: it is untrusted.
        let mut list = Vec::new();
        while let Some(i) = seq.next_element()? {
            list.push(i);
        }
        Ok(list)
    }
}

struct IndicesIn(Vec<u32>);

impl<'de> Deserialize<'de> for IndicesIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IndicesVisitor).map(IndicesIn)
    }
}

impl Serialize for View {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(5)?;
        t.serialize_element(&self.sessions)?;
        t.serialize_element(&Indices(&self.entered))?;
        t.serialize_element(&Indices(&self.moved))?;
        t.serialize_element(&self.left)?;
        t.serialize_element(&self.full)?;
        t.end()
    }
}

impl<'de> Deserialize<'de> for View {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        type Wire = (Vec<SessionId>, IndicesIn, IndicesIn, Vec<EntityId>, bool);
        let (sessions, entered, moved, left, full) = Wire::deserialize(d)?;
        Ok(View {
            sessions,
            entered: entered.0,
            moved: moved.0,
            left,
            full,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    fn round_trip(view: &View) -> (View, usize) {
        let bytes = encode(view);
        (decode(&bytes, bytes.len()).unwrap(), bytes.len())
    }

    #[test]
    fn an_ascending_list_goes_as_a_bitmap_when_that_is_shorter() {
        let moved: Vec<u32> = (0..100).filter(|i| i % 3 == 0).collect();
        let view = View {
            sessions: vec![7],
            moved: moved.clone(),
            ..View::default()
        };
        let (back, len) = round_trip(&view);
        assert_eq!(back, view);
        // 1 (array) + 2 (sessions) + 1 (entered) + 2 + 13 (bitmap) + 1 + 1.
        assert_eq!(len, 21);
        assert!(len < array_len(&moved));
    }

    #[test]
    fn a_short_or_unordered_list_stays_an_array() {
        for moved in [vec![3], vec![9, 2, 5], vec![200, 200]] {
            let view = View {
                sessions: vec![1, 2],
                moved,
                entered: vec![0],
                left: vec![4],
                full: true,
            };
            assert_eq!(round_trip(&view).0, view);
        }
    }

    #[test]
    fn a_bitmap_decodes_to_the_indices_it_sets() {
        assert_eq!(
            IndicesVisitor.visit_bytes::<de::value::Error>(&[0b1000_0001, 0, 0b10]),
            Ok(vec![0, 7, 17])
        );
        assert!(IndicesVisitor
            .visit_bytes::<de::value::Error>(&vec![0xff; MAX_BITMAP_BYTES + 1])
            .is_err());
    }
}
