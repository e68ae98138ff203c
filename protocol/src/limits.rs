//! The limits a server enforces, announced to the client in its welcome so a
//! well-behaved client can stay inside them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest binary frame the server reads; a larger one closes the socket
    /// with close code 1009.
    pub max_frame_bytes: u32,
    /// Sustained `move` messages per second, and the burst above it.
    pub move_per_sec: u32,
    pub move_burst: u32,
    /// Sustained `chat` messages per second, and the burst above it.
    pub chat_per_sec: u32,
    pub chat_burst: u32,
    /// Sustained other messages (join, leave, ping) per second, and burst.
    pub control_per_sec: u32,
    pub control_burst: u32,
    /// Longest chat text, in characters (Unicode scalar values).
    pub chat_max_chars: u32,
    /// A session that sends nothing (not even a WebSocket pong) for this long
    /// is closed with code 4004.
    pub idle_timeout_ms: u32,
}
