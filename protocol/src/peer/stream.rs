//! The head of every stream but the control stream: the opener's first
//! frame names the protocol ([`Open`]), the other side answers [`Accept`]
//! or [`super::Refuse`] (code [`super::RefuseCode::UnknownProtocol`] when
//! nobody listens for it). After `accept`, frames are the protocol's own.

use serde::{Deserialize, Serialize};

use super::Refuse;

/// Open a stream for a protocol (`/tessera/room/1`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    pub protocol: String,
}

/// The stream is served. (A body with no fields: `{"accept": {}}`.)
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Accept {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamHead {
    Open(Open),
    Accept(Accept),
    Refuse(Refuse),
}

/// The application error codes a stream is reset (QUIC `RESET_STREAM` /
/// `STOP_SENDING`) or a connection closed with. QUIC carries no text with
/// a reset, so the code is the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ResetCode {
    /// Closed in order by its owner.
    Closed = 0,
    /// Reliable frames overflowed the stream's byte budget: the reader is
    /// too slow; what was queued is lost, the stream is reset.
    Overflow = 1,
    /// A frame over the receiver's maximum size, or not decodable.
    BadFrame = 2,
    /// The shard is shutting down.
    ShuttingDown = 3,
    /// The connection was replaced by another one between the same two
    /// shards.
    Replaced = 4,
    /// The peer stopped answering heartbeats.
    Unresponsive = 5,
}

impl ResetCode {
    pub const ALL: [ResetCode; 6] = [
        ResetCode::Closed,
        ResetCode::Overflow,
        ResetCode::BadFrame,
        ResetCode::ShuttingDown,
        ResetCode::Replaced,
        ResetCode::Unresponsive,
    ];

    pub fn as_u32(self) -> u32 {
        self as u32
    }

    pub fn from_u32(code: u32) -> Option<ResetCode> {
        Self::ALL.into_iter().find(|c| c.as_u32() == code)
    }

    /// A short stable name, for logs and the `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            ResetCode::Closed => "closed",
            ResetCode::Overflow => "overflow",
            ResetCode::BadFrame => "bad_frame",
            ResetCode::ShuttingDown => "shutting_down",
            ResetCode::Replaced => "replaced",
            ResetCode::Unresponsive => "unresponsive",
        }
    }
}
