//! `[cluster.tunnel]`: the limits of the peer tunnels between shards.
//! The defaults and the rules live here, once: the tunnel's own settings
//! (`crate::cluster::tunnel::TunnelSettings`) start from these defaults and
//! check their limits with [`TunnelConfig::check`], so a bad value is
//! refused at start with its field named, and a hub started with bad
//! settings is refused the same way.

use serde::{Deserialize, Serialize};

/// The highest `ack_eliciting_threshold`: QUIC's initial congestion window
/// is about 10 packets, and a sender whose whole window waits for an ACK
/// held back stalls until the ACK delay runs out.
pub const MAX_ACK_ELICITING_THRESHOLD: u32 = 9;

/// The longest `max_ack_delay_ms` accepted: quinn sends no more than 25 ms
/// (or the RTT, when that is longer) whatever is asked.
pub const MAX_ACK_DELAY_MS: u64 = 25;

/// The smallest `max_udp_payload`: QUIC's own minimum datagram.
pub const MIN_UDP_PAYLOAD: u16 = 1200;

/// The largest `max_udp_payload`: the most a UDP datagram carries over
/// IPv6 (quinn's own ceiling).
pub const MAX_UDP_PAYLOAD: u16 = 65527;

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
    /// Ack-eliciting packets a peer may receive before it must send an
    /// ACK at once, asked of it with QUIC's ACK frequency extension
    /// (QUIC's own rule is 1: an ACK for every other packet). Between two
    /// shards data flows both ways all the time, so with a higher
    /// threshold the ACKs ride on data packets instead of costing a
    /// datagram (and a send, a receive and a decryption) of their own.
    pub ack_eliciting_threshold: u32,
    /// The longest a peer may hold an ACK back, asked with the same
    /// extension. QUIC caps it at the larger of the RTT and 25 ms.
    pub max_ack_delay_ms: u64,
    /// The largest UDP payload a tunnel sends or accepts, in bytes. Each
    /// connection starts at 1200 and discovers its path's MTU up to this
    /// (QUIC path MTU discovery: probes, and a fall back to 1200 when a
    /// path stops carrying them), and tells its peer it accepts no more
    /// (QUIC's `max_udp_payload_size`), so a high value is safe on any
    /// network. The default stays within Ethernet's 1500 bytes over IPv4
    /// and IPv6. Shards on one machine (loopback) or on a network with
    /// jumbo frames (most cloud networks inside one region: 9000) may
    /// raise it, 8952 say: the same bytes in fewer, larger datagrams (a
    /// third fewer on the benchmark's loopback, BENCHMARKS.md). The cost:
    /// the tunnel endpoint's receive buffer grows with it (2,048
    /// datagrams' worth, allocated at start, its pages filled as
    /// datagrams arrive: 3 MiB at 1452, 18 MiB at 8952).
    pub max_udp_payload: u16,
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
            ack_eliciting_threshold: 8,
            max_ack_delay_ms: 25,
            max_udp_payload: 1452,
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
        if self.ack_eliciting_threshold > MAX_ACK_ELICITING_THRESHOLD {
            return bad(
                "ack_eliciting_threshold",
                &format!("must be at most {MAX_ACK_ELICITING_THRESHOLD} (a congestion window's worth of packets unacknowledged stalls the sender)"),
            );
        }
        if !(MIN_UDP_PAYLOAD..=MAX_UDP_PAYLOAD).contains(&self.max_udp_payload) {
            return bad(
                "max_udp_payload",
                &format!("must be {MIN_UDP_PAYLOAD} to {MAX_UDP_PAYLOAD} bytes (QUIC's minimum datagram to UDP's largest)"),
            );
        }
        if !(1..=MAX_ACK_DELAY_MS).contains(&self.max_ack_delay_ms) {
            return bad(
                "max_ack_delay_ms",
                &format!("must be 1 to {MAX_ACK_DELAY_MS} (QUIC caps a requested ACK delay at 25 ms on a fast path)"),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(config: TunnelConfig) -> Vec<String> {
        let mut errors = Vec::new();
        config.validate(&mut errors);
        errors
    }

    #[test]
    fn the_ack_frequency_defaults_are_valid_and_ask_for_fewer_acks_than_quic() {
        let config = TunnelConfig::default();
        assert_eq!(config.check(), Ok(()));
        assert!(config.ack_eliciting_threshold > 1, "QUIC's own rule is 1");
        assert_eq!(config.max_ack_delay_ms, 25, "QUIC's default delay");
    }

    #[test]
    fn ack_frequency_out_of_range_is_refused_by_name() {
        let at = |threshold, delay| TunnelConfig {
            ack_eliciting_threshold: threshold,
            max_ack_delay_ms: delay,
            ..TunnelConfig::default()
        };
        // QUIC's own behaviour (ACK every other packet, or every one) stays
        // available.
        assert_eq!(at(0, 1).check(), Ok(()));
        assert_eq!(at(1, 25).check(), Ok(()));
        assert_eq!(at(MAX_ACK_ELICITING_THRESHOLD, 25).check(), Ok(()));
        let errors = refused(at(MAX_ACK_ELICITING_THRESHOLD + 1, 25));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("cluster.tunnel.ack_eliciting_threshold "),
            "{errors:?}"
        );
        for delay in [0, 26, 1000] {
            let errors = refused(at(8, delay));
            assert!(
                errors.len() == 1 && errors[0].starts_with("cluster.tunnel.max_ack_delay_ms "),
                "{delay}: {errors:?}"
            );
        }
    }

    #[test]
    fn ack_frequency_reads_from_toml() {
        let config: TunnelConfig =
            toml::from_str("ack_eliciting_threshold = 3\nmax_ack_delay_ms = 10\n").unwrap();
        assert_eq!(
            (config.ack_eliciting_threshold, config.max_ack_delay_ms),
            (3, 10)
        );
        assert_eq!(config.max_streams, TunnelConfig::default().max_streams);
    }
}
