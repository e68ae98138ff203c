//! How a [`super::Tick`] crosses the tunnel compactly: its entries as one
//! `bin`, and each [`View`] as an array `[sessions, entered, moved, left,
//! full]` (trailing defaults left off) instead of a map with field names,
//! with each list of entry
//! indices as whichever is shorter of a bitmap or a plain array.
//!
//! Why: a tick carries one view per distinct view of an edge's members,
//! and with a view radius nearly every member's view is distinct. As a
//! map with field names a view cost about 20 bytes before its first index;
//! as an array it costs 5. A member's `moved` indices are ascending (the
//! room lists them in entity order and [`super::TickBuilder`] numbers the
//! entries in that order), so they fit a bitmap over the tick's entries:
//! 100 entries take 13 bytes however many of them the member sees, where
//! the array takes one byte per index (two from index 128 on). The
//! entries, each one MessagePack value, are written back to back in one
//! `bin` (an array of `bin`s would spend two more bytes on each), and the
//! decoder splits them at the value boundaries, as slices of one buffer.
//!
//! An index list is a MessagePack `bin` (a bitmap: bit `i % 8` of byte
//! `i / 8` set for index `i`, least significant bit first) or an array of
//! unsigned integers (any order, as given). A decoder accepts both.

use std::fmt;

use serde::de::{self, IgnoredAny, SeqAccess, Visitor};
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

/// `#[serde(with = "entries")]` for [`super::Tick::entries`]: the entries
/// back to back in one `bin`.
pub(super) mod entries {
    use bytes::Bytes;
    use serde::de::{self, IgnoredAny, Visitor};
    use serde::{Deserialize, Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(entries: &[Bytes], s: S) -> Result<S::Ok, S::Error> {
        let mut blob = Vec::with_capacity(entries.iter().map(Bytes::len).sum());
        for e in entries {
            blob.extend_from_slice(e);
        }
        s.serialize_bytes(&blob)
    }

    /// The entries in `blob`: one slice per MessagePack value.
    pub(in crate::peer) fn split(blob: Bytes) -> Result<Vec<Bytes>, String> {
        let mut entries = Vec::new();
        let mut at = 0;
        while at < blob.len() {
            let mut cursor = std::io::Cursor::new(&blob[at..]);
            IgnoredAny::deserialize(&mut rmp_serde::Deserializer::new(&mut cursor))
                .map_err(|e| format!("entry {} at byte {at}: {e}", entries.len()))?;
            // Every value takes at least one byte, so this always advances.
            let end = at + cursor.position() as usize;
            entries.push(blob.slice(at..end));
            at = end;
        }
        Ok(entries)
    }

    struct Blob;

    impl<'de> Visitor<'de> for Blob {
        type Value = Vec<Bytes>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("the tick's entries, back to back in one bin")
        }

        fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<Vec<Bytes>, E> {
            split(Bytes::copy_from_slice(b)).map_err(E::custom)
        }

        fn visit_byte_buf<E: de::Error>(self, b: Vec<u8>) -> Result<Vec<Bytes>, E> {
            split(Bytes::from(b)).map_err(E::custom)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Bytes>, D::Error> {
        d.deserialize_byte_buf(Blob)
    }
}

impl Serialize for View {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Trailing defaults are left off: most views have no `left` and
        // are not `full`.
        let len = if self.full {
            5
        } else if !self.left.is_empty() {
            4
        } else {
            3
        };
        let mut t = s.serialize_tuple(len)?;
        t.serialize_element(&self.sessions)?;
        t.serialize_element(&Indices(&self.entered))?;
        t.serialize_element(&Indices(&self.moved))?;
        if len >= 4 {
            t.serialize_element(&self.left)?;
        }
        if len == 5 {
            t.serialize_element(&self.full)?;
        }
        t.end()
    }
}

struct ViewVisitor;

impl<'de> Visitor<'de> for ViewVisitor {
    type Value = View;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a view: [sessions, entered, moved, left?, full?]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<View, A::Error> {
        let missing = |i| de::Error::invalid_length(i, &"at least 3 elements");
        let sessions: Vec<SessionId> = seq.next_element()?.ok_or_else(|| missing(0))?;
        let entered: IndicesIn = seq.next_element()?.ok_or_else(|| missing(1))?;
        let moved: IndicesIn = seq.next_element()?.ok_or_else(|| missing(2))?;
        let left: Vec<EntityId> = seq.next_element()?.unwrap_or_default();
        let full: bool = seq.next_element()?.unwrap_or_default();
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(6, &"at most 5 elements"));
        }
        Ok(View {
            sessions,
            entered: entered.0,
            moved: moved.0,
            left,
            full,
        })
    }
}

impl<'de> Deserialize<'de> for View {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_seq(ViewVisitor)
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
        // 1 (array) + 2 (sessions) + 1 (entered) + 2 + 13 (bitmap): no
        // `left`, not `full`, so both are left off.
        assert_eq!(len, 19);
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
    fn entries_split_at_value_boundaries_and_garbage_is_an_error() {
        // An int, a 2-element array, a map {"a": 1}.
        let blob = bytes::Bytes::from_static(&[0x05, 0x92, 0x01, 0x02, 0x81, 0xa1, b'a', 0x01]);
        let parts = entries::split(blob).unwrap();
        let parts: Vec<&[u8]> = parts.iter().map(|b| &b[..]).collect();
        assert_eq!(
            parts,
            [&[0x05][..], &[0x92, 0x01, 0x02], &[0x81, 0xa1, b'a', 0x01]]
        );
        // An array that claims 3 elements and has 1.
        assert!(entries::split(bytes::Bytes::from_static(&[0x93, 0x01])).is_err());
        assert_eq!(
            entries::split(bytes::Bytes::new()).unwrap(),
            Vec::<bytes::Bytes>::new()
        );
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
