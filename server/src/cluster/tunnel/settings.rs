//! What a hub is started with, and what can go wrong.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::peer::RefuseCode;
use thiserror::Error;

use crate::config::TunnelConfig;

/// The shortest cluster secret accepted: 32 bytes, an HMAC-SHA256 key's
/// full strength.
pub const MIN_SECRET_BYTES: usize = 32;

/// A hub's settings. The shard maps its `[cluster]` configuration onto
/// this; every limit is here, none is a constant in the code.
#[derive(Clone)]
pub struct TunnelSettings {
    /// This shard's id in the cluster (unique; compared as strings to
    /// decide which of two simultaneous dials wins: the lower id's).
    pub shard_id: String,
    /// The cluster secret, at least [`MIN_SECRET_BYTES`]. Peers prove they
    /// hold it; it never crosses the wire.
    pub secret: Vec<u8>,
    /// The UDP address the tunnel listens on (port 0: any free port; see
    /// [`super::PeerHub::local_addr`]). Default `127.0.0.1:0`.
    pub listen: SocketAddr,
    /// The cluster's name (its key prefix): peers of another cluster are
    /// refused. Default `tessera`.
    pub cluster: String,
    /// The largest frame accepted or sent, in bytes. Default 1 MiB.
    pub max_frame: u32,
    /// Bytes an outgoing stream may queue before state frames are dropped
    /// and a reliable frame resets the stream. Default 1 MiB.
    pub stream_budget_bytes: usize,
    /// The QUIC receive window of one stream (how much a peer may send
    /// before this side reads), in bytes. Default 1 MiB.
    pub stream_window: u32,
    /// Streams a peer may have open to this shard at once. Default 256.
    pub max_streams: u32,
    /// Incoming streams waiting for a listener to take them, per
    /// protocol; past it an open is refused `busy`. Default 64.
    pub accept_queue: usize,
    /// A connection without any packet for this long is closed. Default
    /// 10 s.
    pub idle_timeout: Duration,
    /// QUIC keep-alive: a packet at least this often. Default 2 s.
    pub keep_alive: Duration,
    /// Heartbeats (RTT) on the control stream. Default 1 s.
    pub ping_interval: Duration,
    /// The handshake, and a stream's `open` → `accept`, must finish
    /// within this. Default 5 s.
    pub handshake_timeout: Duration,
    /// How long `open` waits for a connection to the peer. Default 5 s.
    pub dial_timeout: Duration,
    /// Redial backoff: the first delay and the ceiling (with jitter).
    /// Defaults 100 ms and 5 s.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Refusals kept for the admin view. Default 32.
    pub refusal_log: usize,
    /// Incoming connections in their handshake at once; more are refused
    /// before any TLS work. Default 64.
    pub max_handshakes: usize,
    /// Ack-eliciting packets a peer may receive before it must ACK at
    /// once (QUIC ACK frequency extension). Default 8.
    pub ack_eliciting_threshold: u32,
    /// The longest a peer may hold an ACK back. Default 25 ms.
    pub max_ack_delay: Duration,
    /// The largest UDP payload sent or accepted (path MTU discovery's
    /// ceiling). Default 1452.
    pub max_udp_payload: u16,
}

impl Default for TunnelSettings {
    /// No identity yet, `127.0.0.1:0`, cluster `tessera`, and the limits of
    /// a default `[cluster.tunnel]`.
    fn default() -> Self {
        TunnelSettings {
            shard_id: String::new(),
            secret: Vec::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            cluster: "tessera".into(),
            max_frame: 0,
            stream_budget_bytes: 0,
            stream_window: 0,
            max_streams: 0,
            accept_queue: 0,
            idle_timeout: Duration::ZERO,
            keep_alive: Duration::ZERO,
            ping_interval: Duration::ZERO,
            handshake_timeout: Duration::ZERO,
            dial_timeout: Duration::ZERO,
            reconnect_min: Duration::ZERO,
            reconnect_max: Duration::ZERO,
            refusal_log: 0,
            max_handshakes: 0,
            ack_eliciting_threshold: 0,
            max_ack_delay: Duration::ZERO,
            max_udp_payload: 0,
        }
        .with_limits(&TunnelConfig::default())
    }
}

impl TunnelSettings {
    /// These settings with the limits of `limits` (`[cluster.tunnel]`).
    pub fn with_limits(self, limits: &TunnelConfig) -> TunnelSettings {
        let ms = Duration::from_millis;
        TunnelSettings {
            max_frame: limits.max_frame,
            stream_budget_bytes: limits.stream_budget_bytes,
            stream_window: limits.stream_window,
            max_streams: limits.max_streams,
            accept_queue: limits.accept_queue,
            idle_timeout: ms(limits.idle_timeout_ms),
            keep_alive: ms(limits.keep_alive_ms),
            ping_interval: ms(limits.ping_interval_ms),
            handshake_timeout: ms(limits.handshake_timeout_ms),
            dial_timeout: ms(limits.dial_timeout_ms),
            reconnect_min: ms(limits.reconnect_min_ms),
            reconnect_max: ms(limits.reconnect_max_ms),
            refusal_log: limits.refusal_log,
            max_handshakes: limits.max_handshakes,
            ack_eliciting_threshold: limits.ack_eliciting_threshold,
            max_ack_delay: ms(limits.max_ack_delay_ms),
            max_udp_payload: limits.max_udp_payload,
            ..self
        }
    }

    /// The limits of these settings, as `[cluster.tunnel]` says them.
    fn limits(&self) -> TunnelConfig {
        let ms = |d: Duration| d.as_millis() as u64;
        TunnelConfig {
            max_frame: self.max_frame,
            stream_budget_bytes: self.stream_budget_bytes,
            stream_window: self.stream_window,
            max_streams: self.max_streams,
            accept_queue: self.accept_queue,
            idle_timeout_ms: ms(self.idle_timeout),
            keep_alive_ms: ms(self.keep_alive),
            ping_interval_ms: ms(self.ping_interval),
            handshake_timeout_ms: ms(self.handshake_timeout),
            dial_timeout_ms: ms(self.dial_timeout),
            reconnect_min_ms: ms(self.reconnect_min),
            reconnect_max_ms: ms(self.reconnect_max),
            refusal_log: self.refusal_log,
            max_handshakes: self.max_handshakes,
            ack_eliciting_threshold: self.ack_eliciting_threshold,
            max_ack_delay_ms: ms(self.max_ack_delay),
            max_udp_payload: self.max_udp_payload,
        }
    }
}

impl std::fmt::Debug for TunnelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("TunnelSettings")
            .field("shard_id", &self.shard_id)
            .field("listen", &self.listen)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

impl TunnelSettings {
    /// Every field checked; the error names the first bad one.
    pub fn validate(&self) -> Result<(), TunnelError> {
        let bad =
            |field: &'static str, reason: String| Err(TunnelError::Settings { field, reason });
        if self.shard_id.is_empty() || self.shard_id.len() > 128 {
            return bad("shard_id", "must be 1 to 128 bytes".into());
        }
        if self.secret.len() < MIN_SECRET_BYTES {
            return bad(
                "secret",
                format!(
                    "must be at least {MIN_SECRET_BYTES} bytes, is {}",
                    self.secret.len()
                ),
            );
        }
        if self.cluster.is_empty() {
            return bad("cluster", "must not be empty".into());
        }
        // The limits' rules are `[cluster.tunnel]`'s; a duration is named
        // here without its `_ms`.
        self.limits()
            .check()
            .or_else(|(field, reason)| bad(field.strip_suffix("_ms").unwrap_or(field), reason))?;
        Ok(())
    }
}

/// What the hub's calls fail with. "The peer refused" and "the peer
/// misbehaved" are apart from "the network failed".
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum TunnelError {
    #[error("tunnel setting `{field}`: {reason}")]
    Settings { field: &'static str, reason: String },
    #[error("tunnel listener on {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("shard {0} is not in the directory")]
    UnknownShard(String),
    #[error("a shard does not open streams to itself")]
    SelfDial,
    #[error("refused by {peer}: {} ({reason})", code_name(*.code))]
    Refused {
        peer: String,
        code: u16,
        reason: String,
    },
    #[error("peer {peer} broke the protocol: {reason}")]
    Misbehaved { peer: String, reason: String },
    #[error("no connection to {peer} within {ms} ms")]
    Timeout { peer: String, ms: u64 },
    #[error("connection to {peer} failed: {reason}")]
    Io { peer: String, reason: String },
    #[error("the hub is shut down")]
    ShutDown,
}

fn code_name(code: u16) -> &'static str {
    RefuseCode::from_u16(code).map_or("unknown code", RefuseCode::name)
}

impl TunnelError {
    /// The refusal's code, when this is one.
    pub fn refused(&self) -> Option<RefuseCode> {
        match self {
            TunnelError::Refused { code, .. } => RefuseCode::from_u16(*code),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> TunnelSettings {
        TunnelSettings {
            shard_id: "a".into(),
            secret: vec![7; 32],
            ..TunnelSettings::default()
        }
    }

    #[test]
    fn the_defaults_with_an_id_and_a_secret_are_valid() {
        assert_eq!(good().validate(), Ok(()));
    }

    #[test]
    fn limits_come_from_cluster_tunnel() {
        let limits = TunnelConfig {
            max_streams: 9,
            ping_interval_ms: 250,
            ..TunnelConfig::default()
        };
        let s = good().with_limits(&limits);
        assert_eq!((s.max_streams, s.shard_id.as_str()), (9, "a"));
        assert_eq!(s.ping_interval, Duration::from_millis(250));
        assert_eq!(s.limits(), limits);
        assert_eq!(good().limits(), TunnelConfig::default());
    }

    #[test]
    fn a_bad_field_is_named() {
        let field = |s: TunnelSettings| match s.validate() {
            Err(TunnelError::Settings { field, .. }) => field,
            other => panic!("expected a settings error, got {other:?}"),
        };
        assert_eq!(
            field(TunnelSettings {
                secret: vec![1; 31],
                ..good()
            }),
            "secret"
        );
        assert_eq!(
            field(TunnelSettings {
                shard_id: String::new(),
                ..good()
            }),
            "shard_id"
        );
        assert_eq!(
            field(TunnelSettings {
                stream_budget_bytes: 10,
                ..good()
            }),
            "stream_budget_bytes"
        );
        assert_eq!(
            field(TunnelSettings {
                keep_alive: Duration::from_secs(20),
                ..good()
            }),
            "keep_alive"
        );
        assert_eq!(
            field(TunnelSettings {
                ack_eliciting_threshold: 10,
                ..good()
            }),
            "ack_eliciting_threshold"
        );
        assert_eq!(
            field(TunnelSettings {
                max_ack_delay: Duration::from_millis(26),
                ..good()
            }),
            "max_ack_delay"
        );
        assert_eq!(
            field(TunnelSettings {
                max_ack_delay: Duration::ZERO,
                ..good()
            }),
            "max_ack_delay"
        );
        for payload in [0, 1199, 65528] {
            assert_eq!(
                field(TunnelSettings {
                    max_udp_payload: payload,
                    ..good()
                }),
                "max_udp_payload",
                "{payload}"
            );
        }
        for payload in [1200, 1472, 8952, 65527] {
            let settings = TunnelSettings {
                max_udp_payload: payload,
                ..good()
            };
            assert_eq!(settings.validate(), Ok(()), "{payload}");
        }
    }
}
