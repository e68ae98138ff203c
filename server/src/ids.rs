//! The shard's identifiers, in a module of their own so that every other
//! module can name a session or a room without importing the actor that
//! owns it.
//!
//! A [`RoomId`] is a map name plus an instance number. The map is the
//! template (size, spawn, items, limits: [`crate::config::MapDef`]); a room
//! is one running copy of it. Instance 1 is the map's first (and, with
//! `instances = "one"`, only) room, and its text form is the bare map name,
//! so that everything keyed by the map name before instances existed (the
//! store's room documents, admin calls, metrics) keeps meaning that room.
//! Other instances are written `map#n` (`lobby#2`): map names are made of
//! `A-Z a-z 0-9 _ -` only (see `config`), so the `#` cannot be ambiguous.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A session, unique for the shard's life (the gateway counts them).
pub type SessionId = u64;

/// One running room: an instance of a map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId {
    map: Arc<str>,
    instance: u32,
}

/// The instance number of a map's first room.
pub const FIRST_INSTANCE: u32 = 1;

impl RoomId {
    /// Instance `instance` (1-based; 0 is taken as 1) of `map`.
    pub fn new(map: impl Into<Arc<str>>, instance: u32) -> RoomId {
        RoomId {
            map: map.into(),
            instance: instance.max(FIRST_INSTANCE),
        }
    }

    /// The first instance of `map`: the room a map had before instances.
    pub fn first(map: impl Into<Arc<str>>) -> RoomId {
        RoomId::new(map, FIRST_INSTANCE)
    }

    /// The map this room runs.
    pub fn map(&self) -> &Arc<str> {
        &self.map
    }

    /// 1 for the first instance.
    pub fn instance(&self) -> u32 {
        self.instance
    }

    pub fn is_first(&self) -> bool {
        self.instance == FIRST_INSTANCE
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_first() {
            f.write_str(&self.map)
        } else {
            write!(f, "{}#{}", self.map, self.instance)
        }
    }
}

/// Why a text is not a [`RoomId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomIdError {
    #[error("a room id names a map: empty")]
    EmptyMap,
    #[error("the instance of {0:?} is not a number from 2 up (write the first instance as the bare map name)")]
    BadInstance(String),
}

impl FromStr for RoomId {
    type Err = RoomIdError;

    /// `lobby` is the first instance of `lobby`; `lobby#3` the third. The
    /// first instance has one spelling only (`lobby#1` is refused), so two
    /// different texts never name the same room.
    fn from_str(text: &str) -> Result<RoomId, RoomIdError> {
        let (map, instance) = match text.split_once('#') {
            None => (text, FIRST_INSTANCE),
            Some((map, digits)) => match digits.parse::<u32>() {
                Ok(n) if n > FIRST_INSTANCE && n.to_string() == digits => (map, n),
                _ => return Err(RoomIdError::BadInstance(text.to_string())),
            },
        };
        if map.is_empty() {
            return Err(RoomIdError::EmptyMap);
        }
        Ok(RoomId::new(map, instance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_instance_is_the_bare_map_name_and_others_carry_their_number() {
        assert_eq!(RoomId::first("lobby").to_string(), "lobby");
        assert_eq!(RoomId::new("lobby", 2).to_string(), "lobby#2");
        assert_eq!(RoomId::new("lobby", 0), RoomId::first("lobby"));
        for text in ["lobby", "lobby#2", "arena-1#17"] {
            assert_eq!(text.parse::<RoomId>().unwrap().to_string(), text);
        }
        let id: RoomId = "arena#3".parse().unwrap();
        assert_eq!((id.map().as_ref(), id.instance()), ("arena", 3));
    }

    #[test]
    fn every_room_has_one_spelling() {
        for bad in [
            "lobby#1", "lobby#0", "lobby#", "lobby#x", "lobby#02", "lobby#+2",
        ] {
            assert!(bad.parse::<RoomId>().is_err(), "{bad}");
        }
        assert_eq!("".parse::<RoomId>(), Err(RoomIdError::EmptyMap));
        assert_eq!("#2".parse::<RoomId>(), Err(RoomIdError::EmptyMap));
    }
}
