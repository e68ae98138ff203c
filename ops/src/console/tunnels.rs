//! The tunnel matrix: one [`TunnelLink`] per (shard, peer) pair from each
//! shard's `GET /admin/peers`, with bytes per second each way.
//!
//! A shard reports byte *totals*; rates need two readings. The console
//! keeps the last reading per pair ([`Rates`]) and turns the difference
//! into bytes/s. Readings closer together than [`MIN_GAP_MS`] (several
//! pages streaming at once) keep the previous rate instead of dividing
//! by almost nothing; a total that went down (the peer reconnected and
//! its counters started over) starts the pair over.

use std::collections::HashMap;
use std::sync::Mutex;

use protocol::admin::{PeerState, Peers};

use super::model::TunnelLink;

/// Readings closer than this keep the previous rate.
pub const MIN_GAP_MS: u64 = 500;
/// Pairs not seen for this long are forgotten (a peer that left).
const FORGET_MS: u64 = 10 * 60 * 1000;

#[derive(Debug, Clone, Copy)]
struct Reading {
    at_ms: u64,
    bytes_in: u64,
    bytes_out: u64,
    rates: Option<(f64, f64)>,
}

/// The last reading of every pair, shared by every page's stream.
#[derive(Default)]
pub struct Rates(Mutex<HashMap<(String, String), Reading>>);

impl Rates {
    /// The links of one shard's peer document, read at `now_ms`; `url` is
    /// how the console reaches that shard.
    pub fn links(&self, url: &str, doc: &Peers, now_ms: u64) -> Vec<TunnelLink> {
        if !doc.cluster {
            return Vec::new();
        }
        let from = doc.shard_id.clone().unwrap_or_else(|| url.to_string());
        // A panic elsewhere while holding it leaves readings, not broken ones.
        let mut table = self.0.lock().unwrap_or_else(|e| e.into_inner());
        table.retain(|_, r| now_ms.saturating_sub(r.at_ms) < FORGET_MS);
        doc.peers
            .iter()
            .map(|p| {
                let key = (from.clone(), p.shard_id.clone());
                let last = table.get(&key).copied();
                let rates = match last {
                    // Within the gap: the last rate, and the reading stays.
                    Some(last)
                        if now_ms.saturating_sub(last.at_ms) < MIN_GAP_MS
                            && p.bytes_in >= last.bytes_in
                            && p.bytes_out >= last.bytes_out =>
                    {
                        last.rates
                    }
                    _ => {
                        let rates = last
                            .filter(|l| p.bytes_in >= l.bytes_in && p.bytes_out >= l.bytes_out)
                            .map(|l| {
                                let secs = (now_ms - l.at_ms) as f64 / 1000.0;
                                (
                                    (p.bytes_in - l.bytes_in) as f64 / secs,
                                    (p.bytes_out - l.bytes_out) as f64 / secs,
                                )
                            });
                        table.insert(
                            key,
                            Reading {
                                at_ms: now_ms,
                                bytes_in: p.bytes_in,
                                bytes_out: p.bytes_out,
                                rates,
                            },
                        );
                        rates
                    }
                };
                TunnelLink {
                    from: from.clone(),
                    from_url: url.to_string(),
                    to: p.shard_id.clone(),
                    state: match p.state {
                        PeerState::Connecting => "connecting",
                        PeerState::Connected => "connected",
                        PeerState::Reconnecting => "reconnecting",
                    }
                    .to_string(),
                    rtt_ms: p.rtt_ms,
                    bytes_in: p.bytes_in,
                    bytes_out: p.bytes_out,
                    bytes_in_per_s: rates.map(|r| round1(r.0)),
                    bytes_out_per_s: rates.map(|r| round1(r.1)),
                    streams: p.streams,
                    version: p.version.map(|v| v.to_string()),
                }
            })
            .collect()
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::admin::PeerInfo;

    fn doc(bytes_in: u64, bytes_out: u64) -> Peers {
        let mut doc = Peers::standalone();
        doc.cluster = true;
        doc.shard_id = Some("a".into());
        doc.peers = vec![PeerInfo {
            shard_id: "b".into(),
            address: Some("127.0.0.1:1".into()),
            state: PeerState::Connected,
            dialled: true,
            rtt_ms: Some(0.25),
            bytes_in,
            bytes_out,
            streams: 2,
            state_age_ms: 10,
            quic: None,
            version: Some(protocol::Version { major: 1, minor: 2 }),
        }];
        doc
    }

    #[test]
    fn rates_come_from_two_readings_and_restart_after_a_reset() {
        let rates = Rates::default();
        let first = rates.links("http://a", &doc(1000, 500), 10_000);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].from.as_str(), first[0].to.as_str()), ("a", "b"));
        assert_eq!(first[0].bytes_in_per_s, None, "one reading has no rate");
        assert_eq!(first[0].streams, 2);
        assert_eq!(first[0].version.as_deref(), Some("1.2"));
        let second = rates.links("http://a", &doc(3000, 1500), 12_000);
        assert_eq!(second[0].bytes_in_per_s, Some(1000.0));
        assert_eq!(second[0].bytes_out_per_s, Some(500.0));
        // A second page a moment later: the same rate, not a division by ~0.
        let close = rates.links("http://a", &doc(3010, 1500), 12_010);
        assert_eq!(close[0].bytes_in_per_s, Some(1000.0));
        // Counters started over: no rate until the next reading.
        let reset = rates.links("http://a", &doc(10, 10), 14_000);
        assert_eq!(reset[0].bytes_in_per_s, None);
        let after = rates.links("http://a", &doc(2010, 10), 16_000);
        assert_eq!(after[0].bytes_in_per_s, Some(1000.0));
    }

    #[test]
    fn a_standalone_shard_has_no_links() {
        assert!(Rates::default()
            .links("http://a", &Peers::standalone(), 1)
            .is_empty());
    }
}
