//! Round-trip time measurement.

use serde::{Deserialize, Serialize};

/// `t` is any value of the client's choosing (typically its clock in
/// microseconds); the server echoes it in the pong.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ping {
    pub t: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pong {
    /// The ping's `t`, unchanged.
    pub t: u64,
    /// The server's wall clock, milliseconds since the Unix epoch.
    pub server_ms: u64,
}
