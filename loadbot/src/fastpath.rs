//! A lean decoder for the one frame a bot gets most: `update`.
//!
//! In a hot room every bot receives every tick an update listing hundreds
//! of entities, and needs only its own. Decoding it fully costs ~20 µs for
//! 500 entities (a `Vec<Moved>` and a `String` per entered entity); this
//! reader walks the same MessagePack with serde, checks every field's type
//! as the full decoder would, and keeps only the bot's own entry, so the
//! loadbot's CPU goes to sending and receiving rather than to allocation.
//! Any other frame, or an update the bot cannot place (no `you` yet), goes
//! through [`protocol::decode_server`] as usual.

use std::fmt;
use std::io::Cursor;

use protocol::DecodeError;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// `{"update": ...}`: a one-entry map (0x81) whose key is the six-byte
/// string "update" (0xa6 + bytes).
const UPDATE_PREFIX: &[u8] = b"\x81\xa6update";

/// The bot's own entity in an update: last applied seq and position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Own {
    pub seq: u32,
    pub x: f32,
    pub y: f32,
}

/// `None` when `frame` is not an update (decode it fully instead); else the
/// bot's own entry, if the update has one (`moved` wins over `entered`).
pub fn own_in_update(frame: &[u8], you: u32) -> Option<Result<Option<Own>, DecodeError>> {
    let body = frame.strip_prefix(UPDATE_PREFIX)?;
    let mut cursor = Cursor::new(body);
    let result = Body { you }
        .deserialize(&mut rmp_serde::Deserializer::new(&mut cursor))
        .map_err(DecodeError::from)
        .and_then(|own| {
            let rest = body.len() - cursor.position() as usize;
            if rest == 0 {
                Ok(own)
            } else {
                Err(DecodeError::TrailingBytes(rest))
            }
        });
    Some(result)
}

/// The own entry of a fully decoded update (same rule as [`own_in_update`]).
pub fn own_in(update: &protocol::msg::Update, you: u32) -> Option<Own> {
    let moved = update.moved.iter().find(|m| m.id == you).map(|m| Own {
        seq: m.seq,
        x: m.x,
        y: m.y,
    });
    moved.or_else(|| {
        update.entered.iter().find(|e| e.id == you).map(|e| Own {
            seq: e.seq,
            x: e.x,
            y: e.y,
        })
    })
}

struct Body {
    you: u32,
}

enum Key {
    Tick,
    Entered,
    Moved,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Key, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "tick" => Key::Tick,
                    "entered" => Key::Entered,
                    "moved" => Key::Moved,
                    // `left`, `full` and fields of later minors.
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> DeserializeSeed<'de> for Body {
    type Value = Option<Own>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Own>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Body {
    type Value = Option<Own>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an update body")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Own>, A::Error> {
        let (mut moved, mut entered, mut tick) = (None, None, false);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                Key::Tick => {
                    map.next_value::<u64>()?;
                    tick = true;
                }
                Key::Moved => moved = map.next_value_seed(MovedSeed(self.you))?,
                Key::Entered => entered = map.next_value_seed(EnteredSeed(self.you))?,
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !tick {
            return Err(de::Error::missing_field("tick"));
        }
        Ok(moved.or(entered))
    }
}

/// `moved`: `[[id, x, y, seq], ...]`, read as tuples (no allocation).
struct MovedSeed(u32);

impl<'de> DeserializeSeed<'de> for MovedSeed {
    type Value = Option<Own>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Own>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for MovedSeed {
    type Value = Option<Own>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of [id, x, y, seq]")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Own>, A::Error> {
        let mut own = None;
        while let Some((id, x, y, s)) = seq.next_element::<(u32, f32, f32, u32)>()? {
            // First match, as `own_in` does (ids are unique in practice).
            if id == self.0 && own.is_none() {
                own = Some(Own { seq: s, x, y });
            }
        }
        Ok(own)
    }
}

/// `entered`: full entities; the name is skipped, not copied.
struct EnteredSeed(u32);

#[derive(Deserialize)]
struct EntityLite {
    id: u32,
    #[allow(dead_code)] // Checked for its type only, like the full decoder does.
    name: IgnoredAny,
    x: f32,
    y: f32,
    seq: u32,
}

impl<'de> DeserializeSeed<'de> for EnteredSeed {
    type Value = Option<Own>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Own>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EnteredSeed {
    type Value = Option<Own>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of entities")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Option<Own>, A::Error> {
        let mut own = None;
        while let Some(e) = seq.next_element::<EntityLite>()? {
            if e.id == self.0 && own.is_none() {
                own = Some(Own {
                    seq: e.seq,
                    x: e.x,
                    y: e.y,
                });
            }
        }
        Ok(own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::Rng;
    use protocol::msg::{Entity, Moved, Pong, Update};
    use protocol::{encode_server, ServerMsg};

    fn update(rng: &mut Rng) -> Update {
        let n = rng.below(40);
        Update {
            tick: rng.next_u64() >> 20,
            entered: (0..rng.below(4))
                .map(|_| Entity {
                    id: rng.below(50),
                    name: "bot-7".into(),
                    x: rng.unit() as f32 * 1000.0,
                    y: rng.unit() as f32 * 1000.0,
                    seq: rng.below(1 << 20),
                })
                .collect(),
            moved: (0..n)
                .map(|_| Moved {
                    id: rng.below(50),
                    x: rng.unit() as f32 * 1000.0,
                    y: rng.unit() as f32 * 1000.0,
                    seq: rng.next_u64() as u32,
                })
                .collect(),
            left: (0..rng.below(3)).map(|_| rng.below(50)).collect(),
            full: rng.below(2) == 0,
        }
    }

    #[test]
    fn agrees_with_the_full_decoder() {
        let mut rng = Rng::new(9, 9);
        for _ in 0..2000 {
            let u = update(&mut rng);
            let frame = encode_server(&ServerMsg::Update(u.clone()));
            let you = rng.below(50);
            let fast = own_in_update(&frame, you)
                .expect("an update frame")
                .expect("decodes");
            assert_eq!(fast, own_in(&u, you), "{u:?}");
        }
    }

    #[test]
    fn golden_update_vectors() {
        for (hex, you, want) in [
            (
                include_str!("../../protocol/tests/golden/server_update.hex"),
                1,
                Some(Own {
                    seq: 42,
                    x: 510.0,
                    y: 500.0,
                }),
            ),
            (
                include_str!("../../protocol/tests/golden/server_update_full.hex"),
                1,
                None,
            ),
        ] {
            let hex = hex.trim();
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            let fast = own_in_update(&bytes, you)
                .expect("an update")
                .expect("valid");
            assert_eq!(fast, want);
        }
    }

    #[test]
    fn other_frames_are_left_to_the_full_decoder() {
        let pong = encode_server(&ServerMsg::Pong(Pong { t: 1, server_ms: 2 }));
        assert!(own_in_update(&pong, 1).is_none());
        assert!(own_in_update(&[], 1).is_none());
    }

    #[test]
    fn broken_updates_are_errors_not_panics() {
        let frame = encode_server(&ServerMsg::Update(update(&mut Rng::new(1, 2))));
        for cut in UPDATE_PREFIX.len()..frame.len() {
            assert!(
                matches!(own_in_update(&frame[..cut], 1), Some(Err(_))),
                "cut at {cut}"
            );
        }
        let mut long = frame.clone();
        long.push(0xc0);
        assert_eq!(
            own_in_update(&long, 1),
            Some(Err(DecodeError::TrailingBytes(1)))
        );
        // A `moved` entry with a string where the id goes.
        let mut bad = UPDATE_PREFIX.to_vec();
        bad.extend_from_slice(b"\x82\xa4tick\x01\xa5moved\x91\x94\xa1x\x00\x00\x00");
        assert!(matches!(own_in_update(&bad, 1), Some(Err(_))));
        // No tick.
        let mut no_tick = UPDATE_PREFIX.to_vec();
        no_tick.extend_from_slice(b"\x80");
        assert!(matches!(own_in_update(&no_tick, 1), Some(Err(_))));
    }
}
