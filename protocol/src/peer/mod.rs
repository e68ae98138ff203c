//! The peer tunnel: what two shards of one cluster say to each other.
//!
//! `PEER.md` beside this crate is the human-readable contract; this module
//! is the code of it, with no I/O: framing, the handshake and its proof,
//! stream heads, heartbeats and the room stream's messages are plain types
//! and functions over bytes, tested in memory with golden vectors.
//!
//! # Layout
//!
//! - this file: the version, the protocol names, framing (a `u32`
//!   big-endian length, then one MessagePack message) and the generic
//!   encode / decode of any peer message.
//! - [`handshake`]: the control stream: [`Control`] (`hello`, `proof`,
//!   `refuse`, `ping`, `pong`), [`RefuseCode`], and [`proof_mac`], the HMAC
//!   that binds a peer's proof to one connection.
//! - [`stream`]: the first frames of every other stream ([`StreamHead`]:
//!   `open`, `accept`, `refuse`) and the codes a stream is reset with
//!   ([`ResetCode`]).
//! - [`admin`]: the `/tessera/admin/1` stream: [`AdminMsg`] (replace a
//!   player's session, kick, ban, unban on the shard holding the player).
//! - [`chat`]: the `/tessera/chat/1` stream: [`ChatMsg`] (announcements
//!   and map broadcasts, crossing each tunnel once).
//! - [`room`]: the `/tessera/room/1` stream: [`EdgeMsg`] (edge to owner)
//!   and [`OwnerMsg`] (owner to edge), with [`Tick`], which carries a
//!   tick's entries encoded once and one [`View`] per distinct view.
//! - [`implied`]: the edge's half of a tick whose `moved` is implied
//!   ([`KnownView`]: each member's view as the edge tracks it).
//! - [`migrate`]: the `/tessera/migrate/1` stream: [`MigrateMsg`]
//!   (`offer` a paused room's state to a new owner; `accepted` or
//!   `refused`).
//! - [`swim`]: the `/tessera/swim/1` stream: [`SwimMsg`] (`ping`,
//!   `ping_req`, `ack`) with membership changes ([`Update`]) piggybacked.

pub mod admin;
pub mod calls;
pub mod chat;
mod entry_index;
pub mod handshake;
pub mod implied;
pub mod migrate;
pub mod placement;
pub mod room;
pub mod stream;
pub mod swim;
mod tick_wire;

pub use admin::{
    AdminMsg, BanPlayer, InventoryPush, Kick, MigrateAnswer, MigrateRoom, Replace, RoomMoved, Unban,
};
pub use calls::{RemotePickUp, TargetIs, WhoIs};
pub use chat::{ChatMsg, MapBroadcast};
pub use handshake::{
    proof_mac, verify_proof, Bytes32, Control, Heartbeat, PeerHello, Proof, Refuse, RefuseCode,
    Role, EXPORTER_LABEL,
};
pub use implied::{entry_id, KnownView, TickIds};
pub use migrate::MigrateMsg;
pub use placement::rendezvous;
pub use room::{
    entry_position, entry_seq, Closed, EdgeMsg, EntryKind, Fanout, Input, Inputs, JoinRefused,
    Member, OwnerMsg, Reliable, RemoteChat, RemoteJoin, RemoteJoined, RoomMoving, SessionId, Tick,
    TickBuilder, TickError, View,
};
pub use stream::{Accept, Open, ResetCode, StreamHead};
pub use swim::{MemberState, SwimMsg, Update};

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::{DecodeError, Version};

/// The tunnel version this crate speaks. Peers of another major are
/// refused ([`RefuseCode::Version`]); minors only append (new optional
/// fields, new variants at the end), like the client protocol.
pub const PEER_VERSION: Version = Version { major: 1, minor: 2 };

/// A room's traffic between the shard holding players' sockets (the edge)
/// and the shard running the room (the owner): [`room`].
pub const ROOM_PROTOCOL: &str = "/tessera/room/1";
/// Chat and dispatcher topics (announcements, map broadcasts), crossing
/// each tunnel once: [`chat`].
pub const CHAT_PROTOCOL: &str = "/tessera/chat/1";
/// A live room migration: a snapshot shipped to the new owner.
pub const MIGRATE_PROTOCOL: &str = "/tessera/migrate/1";
/// What one shard asks of the shard holding a player (replace its
/// session, kick, ban, unban): [`admin`].
pub const ADMIN_PROTOCOL: &str = "/tessera/admin/1";
/// Echo, for tests and for measuring a stream rather than the connection.
pub const PING_PROTOCOL: &str = "/tessera/ping/1";
/// Failure detection and membership between shards: [`swim`].
pub const SWIM_PROTOCOL: &str = "/tessera/swim/1";

/// The bytes in front of every frame: its length, big-endian.
pub const LEN_PREFIX: usize = 4;

/// The frame size a shard accepts unless configured otherwise (1 MiB): a
/// tick of a room of 1,000 entities in full is about 40 KiB.
pub const DEFAULT_MAX_FRAME: u32 = 1024 * 1024;

/// The longest protocol name an `open` may carry.
pub const MAX_PROTOCOL_NAME: usize = 128;

/// A frame that cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length prefix announces more than the receiver's maximum: the
    /// stream is broken off, nothing is allocated for it.
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: u64, max: u32 },
    /// A frame of length 0: no message is empty.
    #[error("empty frame")]
    Empty,
    /// The payload is not the message the stream expects.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Every type that travels as a peer frame (sealed: only this module's).
pub trait PeerMessage: Serialize + DeserializeOwned + sealed::Sealed {}

mod sealed {
    pub trait Sealed {}
}

macro_rules! peer_message {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl PeerMessage for $t {}
    )*};
}
peer_message!(Control, StreamHead, EdgeMsg, OwnerMsg, AdminMsg, ChatMsg, SwimMsg, MigrateMsg);

/// The payload's length as a frame header, after checking it against
/// `max_frame` (the sender's own limit: a frame its peer would refuse is
/// an error here rather than a broken stream there).
pub fn frame_header(len: usize, max_frame: u32) -> Result<[u8; LEN_PREFIX], FrameError> {
    match u32::try_from(len) {
        Ok(0) => Err(FrameError::Empty),
        Ok(n) if n <= max_frame => Ok(n.to_be_bytes()),
        _ => Err(FrameError::TooLarge {
            len: len as u64,
            max: max_frame,
        }),
    }
}

/// The payload length a received header announces, refused over
/// `max_frame` before anything is read or allocated.
pub fn frame_len(header: [u8; LEN_PREFIX], max_frame: u32) -> Result<usize, FrameError> {
    match u32::from_be_bytes(header) {
        0 => Err(FrameError::Empty),
        n if n <= max_frame => Ok(n as usize),
        n => Err(FrameError::TooLarge {
            len: u64::from(n),
            max: max_frame,
        }),
    }
}

/// A message's MessagePack payload, without the length prefix.
pub fn encode_payload<T: PeerMessage>(msg: &T) -> Vec<u8> {
    crate::codec::encode(msg)
}

/// A whole frame: the length prefix, then the payload.
pub fn encode_frame<T: PeerMessage>(msg: &T, max_frame: u32) -> Result<Vec<u8>, FrameError> {
    let payload = encode_payload(msg);
    let header = frame_header(payload.len(), max_frame)?;
    let mut out = Vec::with_capacity(LEN_PREFIX + payload.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&payload);
    Ok(out)
}

/// Decode one payload (the bytes after a length prefix).
pub fn decode_payload<T: PeerMessage>(payload: &[u8], max_frame: u32) -> Result<T, DecodeError> {
    crate::codec::decode_in_place(payload, max_frame as usize)
}

/// The first whole frame's payload in `buf` and how many bytes it took
/// (prefix included), or `None` while `buf` holds only part of it.
pub fn split_frame(buf: &[u8], max_frame: u32) -> Result<Option<(&[u8], usize)>, FrameError> {
    let Some(header) = buf.first_chunk::<LEN_PREFIX>() else {
        return Ok(None);
    };
    let len = frame_len(*header, max_frame)?;
    let end = LEN_PREFIX + len;
    Ok(buf.get(LEN_PREFIX..end).map(|payload| (payload, end)))
}

/// Decode the first whole frame in `buf`: the message and the bytes it
/// took, or `None` while the frame is incomplete.
pub fn decode_frame<T: PeerMessage>(
    buf: &[u8],
    max_frame: u32,
) -> Result<Option<(T, usize)>, FrameError> {
    match split_frame(buf, max_frame)? {
        None => Ok(None),
        Some((payload, used)) => Ok(Some((decode_payload(payload, max_frame)?, used))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_length_is_an_error_before_any_read() {
        let header = 5000u32.to_be_bytes();
        assert_eq!(
            frame_len(header, 4096),
            Err(FrameError::TooLarge {
                len: 5000,
                max: 4096
            })
        );
        // Only the header is there: the length alone decides.
        assert_eq!(
            split_frame(&header, 4096),
            Err(FrameError::TooLarge {
                len: 5000,
                max: 4096
            })
        );
        assert_eq!(frame_len([0; 4], 4096), Err(FrameError::Empty));
        assert!(frame_header(5000, 4096).is_err());
        assert_eq!(frame_header(7, 4096), Ok([0, 0, 0, 7]));
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let frame = encode_frame(&Control::Ping(Heartbeat { seq: 1, sent_us: 2 }), 4096).unwrap();
        for cut in 0..frame.len() {
            assert_eq!(decode_frame::<Control>(&frame[..cut], 4096), Ok(None));
        }
        let (msg, used) = decode_frame::<Control>(&frame, 4096).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(msg, Control::Ping(Heartbeat { seq: 1, sent_us: 2 }));
    }

    #[test]
    fn payloads_decode_in_place_to_what_the_copying_decoder_gives() {
        let mut b = TickBuilder::new("m01", 9).implied();
        let moved = b.entry(4, EntryKind::Moved, || {
            bytes::Bytes::from_static(&[0x94, 0x04, 0x01, 0x02, 0x03])
        });
        b.view(7, Vec::new(), vec![moved], vec![3], false);
        let msgs = [
            OwnerMsg::Tick(b.finish()),
            OwnerMsg::Closed(Closed {
                code: 3005,
                reason: "gone".into(),
            }),
        ];
        for msg in msgs {
            let payload = encode_payload(&msg);
            let copied: OwnerMsg = crate::codec::decode(&payload, 4096).unwrap();
            assert_eq!(decode_payload::<OwnerMsg>(&payload, 4096), Ok(copied));
            // Every error is the copying decoder's: trailing bytes, a cut
            // payload, garbage, too large, empty.
            let mut trailing = payload.clone();
            trailing.extend_from_slice(&[0x01, 0x02]);
            let mut garbage = payload.clone();
            garbage.push(0xc1);
            let bad: [&[u8]; 5] = [
                &trailing,
                &payload[..payload.len() - 1],
                &garbage,
                &payload,
                &[],
            ];
            for (i, bytes) in bad.into_iter().enumerate() {
                let max = if i == 3 { payload.len() - 1 } else { 4096 };
                let expected = crate::codec::decode::<OwnerMsg>(bytes, max);
                assert!(expected.is_err(), "case {i}");
                assert_eq!(
                    decode_payload::<OwnerMsg>(bytes, max as u32),
                    expected,
                    "case {i}"
                );
            }
        }
    }
}
