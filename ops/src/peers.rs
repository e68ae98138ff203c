//! `tessera-ops peers`: a shard's peer tunnels as text, like `ipfs p2p ls`
//! (listeners) and `ipfs p2p stream ls` (streams), with the peer table and
//! the latest refusals.

use std::fmt::Write as _;

use protocol::admin::{PeerState, Peers, RefusedBy, StreamDirection};

/// The document as the terminal shows it: one section per registry.
pub fn render(doc: &Peers) -> String {
    let mut out = String::new();
    if !doc.cluster {
        let note = doc.note.as_deref().unwrap_or("not in cluster mode");
        let _ = writeln!(out, "{note}");
        return out;
    }
    // Writing into a String cannot fail.
    let _ = writeln!(
        out,
        "shard {} listening on {}",
        doc.shard_id.as_deref().unwrap_or("?"),
        doc.listen.as_deref().unwrap_or("?")
    );
    let _ = writeln!(out, "\nlisteners ({})", doc.listeners.len());
    for protocol in &doc.listeners {
        let _ = writeln!(out, "  {protocol}");
    }
    let _ = writeln!(out, "\npeers ({})", doc.peers.len());
    let _ = writeln!(
        out,
        "  {:<16} {:<22} {:<12} {:<6} {:>9} {:>12} {:>12} {:>7}",
        "SHARD", "ADDRESS", "STATE", "TUNNEL", "RTT ms", "BYTES IN", "BYTES OUT", "STREAMS"
    );
    for p in &doc.peers {
        let state = match p.state {
            PeerState::Connecting => "connecting",
            PeerState::Connected => "connected",
            PeerState::Reconnecting => "reconnecting",
        };
        let rtt = p.rtt_ms.map_or("-".to_string(), |ms| format!("{ms:.3}"));
        let version = p.version.map_or("-".to_string(), |v| v.to_string());
        let _ = writeln!(
            out,
            "  {:<16} {:<22} {:<12} {:<6} {:>9} {:>12} {:>12} {:>7}",
            p.shard_id,
            p.address.as_deref().unwrap_or("-"),
            state,
            version,
            rtt,
            p.bytes_in,
            p.bytes_out,
            p.streams
        );
    }
    if let Some(inc) = doc.incarnation {
        let _ = writeln!(
            out,
            "\nmembers ({}), this shard at incarnation {inc}",
            doc.members.len()
        );
        let _ = writeln!(
            out,
            "  {:<16} {:<8} {:>16} {:>9}",
            "SHARD", "STATE", "INCARNATION", "SINCE s"
        );
        for m in &doc.members {
            let _ = writeln!(
                out,
                "  {:<16} {:<8} {:>16} {:>9.1}",
                m.shard_id,
                m.state.name(),
                m.incarnation,
                m.since_ms as f64 / 1000.0
            );
        }
    }
    let _ = writeln!(out, "\nstreams ({})", doc.streams.len());
    let _ = writeln!(
        out,
        "  {:>5} {:<16} {:<20} {:<4} {:>8} {:>12} {:>12} {:>9} {:>9} {:>6}",
        "ID",
        "PEER",
        "PROTOCOL",
        "DIR",
        "AGE s",
        "BYTES IN",
        "BYTES OUT",
        "FRAMES IN",
        "FRAMES OUT",
        "QUEUE"
    );
    for s in &doc.streams {
        let dir = match s.direction {
            StreamDirection::Outbound => "out",
            StreamDirection::Inbound => "in",
        };
        let _ = writeln!(
            out,
            "  {:>5} {:<16} {:<20} {:<4} {:>8.1} {:>12} {:>12} {:>9} {:>9} {:>6}",
            s.id,
            s.peer,
            s.protocol,
            dir,
            s.age_ms as f64 / 1000.0,
            s.bytes_in,
            s.bytes_out,
            s.frames_in,
            s.frames_out,
            s.queued_frames
        );
    }
    if !doc.refusals.is_empty() {
        let _ = writeln!(out, "\nrefusals (latest {})", doc.refusals.len());
        for r in &doc.refusals {
            let by = match r.by {
                RefusedBy::Us => "refused by us",
                RefusedBy::Them => "refused by them",
            };
            let _ = writeln!(
                out,
                "  {} {} {by}: {} ({}) {} s ago",
                r.peer.as_deref().unwrap_or("?"),
                r.address,
                r.name,
                r.reason,
                r.age_ms / 1000
            );
        }
    }
    if !doc.stream_resets.is_empty() || doc.state_coalesced > 0 || doc.state_dropped > 0 {
        let resets: Vec<String> = doc
            .stream_resets
            .iter()
            .map(|(reason, n)| format!("{reason}={n}"))
            .collect();
        let _ = writeln!(
            out,
            "\nstream resets: {}; state frames coalesced {}, dropped {}",
            if resets.is_empty() {
                "none".to_string()
            } else {
                resets.join(" ")
            },
            doc.state_coalesced,
            doc.state_dropped
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use protocol::admin::{ClusterMember, PeerInfo, RefusalInfo, StreamInfo};
    use protocol::peer::MemberState;

    use super::*;

    #[test]
    fn a_shard_alone_says_so() {
        assert_eq!(
            render(&Peers::standalone()),
            "not in cluster mode: this shard has no peers\n"
        );
    }

    #[test]
    fn every_registry_is_shown() {
        let doc = Peers {
            cluster: true,
            shard_id: Some("a".into()),
            listen: Some("127.0.0.1:7390".into()),
            note: None,
            listeners: vec!["/tessera/room/1".into()],
            peers: vec![PeerInfo {
                shard_id: "b".into(),
                address: Some("127.0.0.1:7391".into()),
                state: PeerState::Connected,
                dialled: true,
                rtt_ms: Some(0.25),
                bytes_in: 10,
                bytes_out: 20,
                streams: 1,
                state_age_ms: 5,
                quic: None,
                version: Some(protocol::peer::PEER_VERSION),
            }],
            streams: vec![StreamInfo {
                id: 7,
                peer: "b".into(),
                protocol: "/tessera/room/1".into(),
                direction: StreamDirection::Outbound,
                age_ms: 1500,
                bytes_in: 1,
                bytes_out: 2,
                frames_in: 3,
                frames_out: 4,
                queued_frames: 5,
                queued_bytes: 6,
            }],
            refusals: vec![RefusalInfo {
                peer: Some("c".into()),
                address: "127.0.0.1:7392".into(),
                by: RefusedBy::Us,
                code: 3,
                name: "bad_proof".into(),
                reason: "no secret".into(),
                age_ms: 2000,
            }],
            stream_resets: [("overflow".to_string(), 2)].into(),
            state_coalesced: 9,
            state_dropped: 1,
            incarnation: Some(1_700_000_000_000),
            members: vec![ClusterMember {
                shard_id: "c".into(),
                state: MemberState::Suspect,
                incarnation: 12,
                since_ms: 1500,
            }],
        };
        let text = render(&doc);
        for needle in [
            "shard a listening on 127.0.0.1:7390",
            "  /tessera/room/1",
            "connected",
            "0.250",
            "127.0.0.1:7391",
            "refused by us: bad_proof (no secret) 2 s ago",
            "overflow=2",
            "coalesced 9, dropped 1",
            "members (1), this shard at incarnation 1700000000000",
        ] {
            assert!(text.contains(needle), "{needle:?} in\n{text}");
        }
        let stream_row = text
            .lines()
            .find(|l| l.trim_start().starts_with("7 "))
            .unwrap();
        assert!(stream_row.contains("out"), "{stream_row}");
        let peer_row = text
            .lines()
            .find(|l| l.trim_start().starts_with("b "))
            .unwrap();
        let tunnel = protocol::peer::PEER_VERSION.to_string();
        assert!(peer_row.contains(&format!(" {tunnel} ")), "{peer_row}");
        let member_row = text
            .lines()
            .find(|l| l.trim_start().starts_with("c "))
            .unwrap();
        assert!(
            member_row.contains("suspect") && member_row.contains("12"),
            "{member_row}"
        );
    }
}
