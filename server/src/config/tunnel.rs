//! `[cluster.tunnel]`: the limits of the peer tunnels between shards.
//! The defaults and the rules live here, once: the tunnel's own settings
//! (`crate::cluster::tunnel::TunnelSettings`) start from these defaults and
//! check their limits with [`TunnelConfig::check`], so a bad value is
//! refused at start with its field named, and a hub started with bad
//! settings is refused the same way.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TunnelConfig {
    /// The largest frame accepted or sent on a stream, in bytes.
    pub max_frame: u32,
    /// Bytes an outgoing stream may queue before state frames are dropped
    /// and a reliable frame resets the stream.
    pub stream_budget_bytes: usize,
    /// The QUIC receive window of one stream, in bytes.
    pub stream_window: u32,
    /// Streams a peer may have open to this shard at once.
    pub max_streams: u32,
    /// Incoming streams waiting for their protocol's listener; past it an
    /// open is refused `busy`.
    pub accept_queue: usize,
    /// A connection without any packet for this long is closed.
    pub idle_timeout_ms: u64,
    /// QUIC keep-alive: a packet at least this often (below
    /// `idle_timeout_ms`).
    pub keep_alive_ms: u64,
    /// Heartbeats that measure each peer's RTT.
    pub ping_interval_ms: u64,
    /// The handshake, and a stream's open, must finish within this.
    pub handshake_timeout_ms: u64,
    /// How long opening a stream waits for a connection to the peer.
    pub dial_timeout_ms: u64,
    /// Redial backoff: the first delay and the ceiling (with jitter).
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    /// Refusals kept for `GET /admin/peers`.
    pub refusal_log: usize,
    /// Incoming connections in their handshake at once.
    pub max_handshakes: usize,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            max_frame: protocol::peer::DEFAULT_MAX_FRAME,
            stream_budget_bytes: 1024 * 1024,
            stream_window: 1024 * 1024,
            max_streams: 256,
            accept_queue: 64,
            idle_timeout_ms: 10_000,
            keep_alive_ms: 2_000,
            ping_interval_ms: 1_000,
            handshake_timeout_ms: 5_000,
            dial_timeout_ms: 5_000,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5_000,
            refusal_log: 32,
            max_handshakes: 64,
        }
    }
}

impl TunnelConfig {
    /// The first limit that is out of bounds: its field and why.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let bad = |field: &'static str, reason: &str| Err((field, reason.to_string()));
        if self.max_frame < 1024 {
            return bad("max_frame", "must be at least 1024 bytes");
        }
        if self.stream_budget_bytes < self.max_frame as usize {
            return bad(
                "stream_budget_bytes",
                "must be at least max_frame (one frame must fit)",
            );
        }
        if self.stream_window < 1024 {
            return bad("stream_window", "must be at least 1024 bytes");
        }
        for (field, n) in [
            ("max_streams", self.max_streams as usize),
            ("accept_queue", self.accept_queue),
            ("max_handshakes", self.max_handshakes),
        ] {
            if n == 0 {
                return bad(field, "must be at least 1");
            }
        }
        for (field, ms) in [
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("keep_alive_ms", self.keep_alive_ms),
            ("ping_interval_ms", self.ping_interval_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("dial_timeout_ms", self.dial_timeout_ms),
            ("reconnect_min_ms", self.reconnect_min_ms),
            ("reconnect_max_ms", self.reconnect_max_ms),
        ] {
            if ms == 0 {
                return bad(field, "must be above zero");
            }
        }
        if self.keep_alive_ms >= self.idle_timeout_ms {
            return bad(
                "keep_alive_ms",
                "must be shorter than idle_timeout_ms, or live connections time out",
            );
        }
        if self.reconnect_max_ms < self.reconnect_min_ms {
            return bad("reconnect_max_ms", "must be at least reconnect_min_ms");
        }
        Ok(())
    }

    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        if let Err((field, reason)) = self.check() {
            errors.push(format!("cluster.tunnel.{field} {reason}"));
        }
    }
}
