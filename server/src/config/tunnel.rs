//! `[cluster.tunnel]`: the limits of the peer tunnels between shards
//! (`crate::cluster::tunnel::TunnelSettings`, where each is explained).
//! Every field has the tunnel's default; the tunnel's own rules check
//! them, so a bad value is refused at start with its field named.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cluster::tunnel::{TunnelError, TunnelSettings};

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
        let d = TunnelSettings::default();
        let ms = |d: Duration| d.as_millis() as u64;
        TunnelConfig {
            max_frame: d.max_frame,
            stream_budget_bytes: d.stream_budget_bytes,
            stream_window: d.stream_window,
            max_streams: d.max_streams,
            accept_queue: d.accept_queue,
            idle_timeout_ms: ms(d.idle_timeout),
            keep_alive_ms: ms(d.keep_alive),
            ping_interval_ms: ms(d.ping_interval),
            handshake_timeout_ms: ms(d.handshake_timeout),
            dial_timeout_ms: ms(d.dial_timeout),
            reconnect_min_ms: ms(d.reconnect_min),
            reconnect_max_ms: ms(d.reconnect_max),
            refusal_log: d.refusal_log,
            max_handshakes: d.max_handshakes,
        }
    }
}

impl TunnelConfig {
    /// `base` (identity, secret, address) with these limits.
    pub fn apply(&self, base: TunnelSettings) -> TunnelSettings {
        let ms = Duration::from_millis;
        TunnelSettings {
            max_frame: self.max_frame,
            stream_budget_bytes: self.stream_budget_bytes,
            stream_window: self.stream_window,
            max_streams: self.max_streams,
            accept_queue: self.accept_queue,
            idle_timeout: ms(self.idle_timeout_ms),
            keep_alive: ms(self.keep_alive_ms),
            ping_interval: ms(self.ping_interval_ms),
            handshake_timeout: ms(self.handshake_timeout_ms),
            dial_timeout: ms(self.dial_timeout_ms),
            reconnect_min: ms(self.reconnect_min_ms),
            reconnect_max: ms(self.reconnect_max_ms),
            refusal_log: self.refusal_log,
            max_handshakes: self.max_handshakes,
            ..base
        }
    }

    /// The tunnel's own checks of these limits, each error naming its
    /// `cluster.tunnel.*` field (identity and secret are checked with
    /// `[cluster]`).
    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        let probe = self.apply(TunnelSettings {
            shard_id: "probe".into(),
            secret: vec![0; crate::cluster::tunnel::MIN_SECRET_BYTES],
            ..TunnelSettings::default()
        });
        if let Err(TunnelError::Settings { field, reason }) = probe.validate() {
            let key = match field {
                "idle_timeout" | "keep_alive" | "ping_interval" | "handshake_timeout"
                | "dial_timeout" | "reconnect_min" | "reconnect_max" => format!("{field}_ms"),
                other => other.to_string(),
            };
            errors.push(format!("cluster.tunnel.{key} {reason}"));
        }
    }
}
