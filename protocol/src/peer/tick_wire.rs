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
    use serde::de::{self, Visitor};
    use serde::{Deserializer, Serializer};
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
            let len = value_len(&blob[at..])
                .map_err(|e| format!("entry {} at byte {at}: {e}", entries.len()))?;
            // Every value takes at least one byte, so this always advances.
            let end = at + len;
            entries.push(blob.slice(at..end));
            at = end;
        }
        Ok(entries)
    }

    /// The length in bytes of the MessagePack value at the start of `buf`,
    /// found from its markers and lengths alone: nothing is decoded or
    /// allocated (the edge splits every tick's entries this way). Arrays
    /// and maps are walked without recursion, by counting the values
    /// still owed; each value takes at least one byte, so a claimed length
    /// larger than the bytes left ends at `buf`'s end as an error.
    pub(in crate::peer) fn value_len(buf: &[u8]) -> Result<usize, &'static str> {
        const SHORT: &str = "the value runs past the end of the entries";
        // A big-endian length of `width` bytes at `at`.
        let length = |at: usize, width: usize| -> Result<usize, &'static str> {
            let bytes = buf.get(at..at + width).ok_or(SHORT)?;
            Ok(bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b)))
        };
        let mut at = 0usize;
        // Values still to skip: fits a u64, each of at most `buf.len()`
        // containers adding at most 2 * u32::MAX.
        let mut owed: u64 = 1;
        while owed > 0 {
            owed -= 1;
            let marker = *buf.get(at).ok_or(SHORT)?;
            at += 1;
            // (bytes after the marker, values inside)
            let (skip, values) = match marker {
                0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0),
                0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
                0x90..=0x9f => (0, u64::from(marker & 0x0f)),
                0xa0..=0xbf => (usize::from(marker & 0x1f), 0),
                0xc1 => return Err("marker 0xc1 is never used"),
                // bin 8/16/32, str 8/16/32: length, then the bytes.
                0xc4 | 0xd9 => (1 + length(at, 1)?, 0),
                0xc5 | 0xda => (2 + length(at, 2)?, 0),
                0xc6 | 0xdb => (4 + length(at, 4)?, 0),
                // ext 8/16/32: length, type, then the bytes.
                0xc7 => (2 + length(at, 1)?, 0),
                0xc8 => (3 + length(at, 2)?, 0),
                0xc9 => (5 + length(at, 4)?, 0),
                0xca => (4, 0),
                0xcb => (8, 0),
                0xcc | 0xd0 => (1, 0),
                0xcd | 0xd1 => (2, 0),
                0xce | 0xd2 => (4, 0),
                0xcf | 0xd3 => (8, 0),
                // fixext 1/2/4/8/16: type, then the bytes.
                0xd4 => (2, 0),
                0xd5 => (3, 0),
                0xd6 => (5, 0),
                0xd7 => (9, 0),
                0xd8 => (17, 0),
                0xdc => (2, length(at, 2)? as u64),
                0xdd => (4, length(at, 4)? as u64),
                0xde => (2, 2 * length(at, 2)? as u64),
                0xdf => (4, 2 * length(at, 4)? as u64),
            };
            at = at
                .checked_add(skip)
                .filter(|&end| end <= buf.len())
                .ok_or(SHORT)?;
            owed += values;
        }
        Ok(at)
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

    /// `value_len` against rmp-serde's own reading of the value.
    fn rmp_len(buf: &[u8]) -> Option<usize> {
        let mut cursor = std::io::Cursor::new(buf);
        serde::de::IgnoredAny::deserialize(&mut rmp_serde::Deserializer::new(&mut cursor)).ok()?;
        Some(cursor.position() as usize)
    }

    #[test]
    fn value_len_agrees_with_rmp_on_every_marker_and_refuses_every_cut() {
        use serde_json::json;
        let long = |n: usize| "x".repeat(n);
        let mut values: Vec<Vec<u8>> = [
            json!(null),
            json!(true),
            json!(5),
            json!(-3),
            json!(200),
            json!(-100),
            json!(40_000),
            json!(-40_000),
            json!(3_000_000_000u64),
            json!(-3_000_000_000i64),
            json!(u64::MAX),
            json!(1.5),
            json!(""),
            json!(long(31)),
            json!(long(32)),
            json!(long(255)),
            json!(long(256)),
            json!(long(70_000)),
            json!([]),
            json!([1, [2, [3, {"a": [4.5, "b"]}]]]),
            json!((0..20).collect::<Vec<_>>()),
            json!((0..70_000).map(|i| i % 3).collect::<Vec<_>>()),
            json!({}),
            json!((0..20)
                .map(|i| (i.to_string(), json!(i)))
                .collect::<serde_json::Map<_, _>>()),
            json!((0..70_000)
                .map(|i| (i.to_string(), json!(i)))
                .collect::<serde_json::Map<_, _>>()),
        ]
        .iter()
        .map(|v| rmp_serde::to_vec(v).unwrap())
        .collect();
        values.push(rmp_serde::to_vec(&1.5f32).unwrap());
        for n in [0usize, 1, 255, 256, 70_000] {
            let mut v = Vec::new();
            rmp::encode::write_bin(&mut v, &vec![7u8; n]).unwrap();
            values.push(v);
        }
        // ext: fixext 1/2/4/8/16 and ext 8/16/32, type 5.
        for n in [1usize, 2, 4, 8, 16, 3, 300, 70_000] {
            let mut v = Vec::new();
            rmp::encode::write_ext_meta(&mut v, n as u32, 5).unwrap();
            v.extend(std::iter::repeat_n(9u8, n));
            values.push(v);
        }
        for v in &values {
            assert_eq!(
                entries::value_len(v),
                Ok(v.len()),
                "{:x?}",
                &v[..v.len().min(8)]
            );
            assert_eq!(rmp_len(v), Some(v.len()));
            // Followed by more bytes: the value alone.
            let mut more = v.clone();
            more.extend([0x01, 0x02]);
            assert_eq!(entries::value_len(&more), Ok(v.len()));
            // Cut anywhere: an error, never a length past the end.
            for cut in (0..v.len()).step_by((v.len() / 64).max(1)) {
                assert!(entries::value_len(&v[..cut]).is_err(), "cut at {cut}");
            }
        }
        assert!(entries::value_len(&[0xc1]).is_err());
        // An array that claims 2^32 - 1 elements in 6 bytes ends, refused.
        assert!(entries::value_len(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    proptest::proptest! {
        /// Any bytes at all: the same answer as rmp-serde's reading
        /// (or an error where it errs), and never a panic.
        #[test]
        fn value_len_of_any_bytes_is_rmps(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let ours = entries::value_len(&bytes).ok();
            proptest::prop_assert!(ours.is_none_or(|n| n <= bytes.len() && n > 0));
            proptest::prop_assert_eq!(ours, rmp_len(&bytes));
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
