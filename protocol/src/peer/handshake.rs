//! The control stream: the handshake (`hello` both ways, then `proof`
//! both ways, or `refuse`), then heartbeats for the connection's life.
//!
//! ```text
//! dialer                                   listener
//!   ── hello {cluster, shard_id, version, nonce} ──▶
//!   ◀── hello {…} ─────────────── (or refuse: version, cluster, wrong shard)
//!   ── proof {mac(dialer)} ────────────────────────▶
//!   ◀── proof {mac(listener)} ─── (or refuse: bad proof, duplicate)
//!   ── ping {seq, sent_us} ─▶  ◀─ pong {seq, sent_us}   (both ways, forever)
//! ```
//!
//! The MAC ([`proof_mac`]) covers the role, both hellos and the TLS
//! exporter keying material of this connection, so a proof seen on one
//! connection is worth nothing on another (PEER.md says why that is
//! enough).

use hmac::{Hmac, Mac};
use serde::de::{Error as _, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::Sha256;

use crate::Version;

/// 32 bytes, as a MessagePack `bin` (a nonce, a MAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bytes32(pub [u8; 32]);

impl Serialize for Bytes32 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Bytes32 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Bytes32;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("32 bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes32, E> {
                <[u8; 32]>::try_from(v)
                    .map(Bytes32)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V).map_err(D::Error::custom)
    }
}

/// Each side's first frame on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerHello {
    /// The cluster's name (its key prefix in the directory): two clusters
    /// sharing a network never join by mistake.
    pub cluster: String,
    /// Who is speaking.
    pub shard_id: String,
    /// The tunnel version ([`super::PEER_VERSION`]).
    pub version: Version,
    /// Fresh random bytes for this connection.
    pub nonce: Bytes32,
}

/// A side's proof that it holds the cluster secret, for this connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proof {
    pub mac: Bytes32,
}

/// Why a connection or a stream was turned away. The connection (or
/// stream) is closed after it; a QUIC connection is closed with `code`
/// as its application error code and `reason` as its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refuse {
    /// A [`RefuseCode`]; kept a number on the wire so a newer peer's code
    /// still reads.
    pub code: u16,
    pub reason: String,
}

impl Refuse {
    pub fn new(code: RefuseCode, reason: impl Into<String>) -> Refuse {
        Refuse {
            code: code.as_u16(),
            reason: reason.into(),
        }
    }

    /// The code, when this crate knows it.
    pub fn kind(&self) -> Option<RefuseCode> {
        RefuseCode::from_u16(self.code)
    }
}

/// A heartbeat: `ping` carries the sender's clock, `pong` echoes it back,
/// so the sender alone measures the round trip with its own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub seq: u64,
    /// Microseconds on the sender's monotonic clock.
    pub sent_us: u64,
}

/// Everything said on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    Hello(PeerHello),
    Proof(Proof),
    Refuse(Refuse),
    Ping(Heartbeat),
    Pong(Heartbeat),
}

/// Codes of [`Refuse`], for connections and streams alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RefuseCode {
    /// The peer speaks another major version of the tunnel.
    Version = 1,
    /// The peer belongs to another cluster.
    Cluster = 2,
    /// The proof does not match: the peer does not hold the cluster
    /// secret, or the proof was made for another connection.
    BadProof = 3,
    /// The two shards already have a connection (or are making one that
    /// wins: the one dialled by the lower shard id).
    Duplicate = 4,
    /// The dialler wanted another shard id than the one it reached (a
    /// stale directory entry).
    WrongShard = 5,
    /// A stream's protocol has no listener on this shard.
    UnknownProtocol = 6,
    /// A frame that is not the message expected at this point.
    Malformed = 7,
    /// This shard is shutting down.
    ShuttingDown = 8,
    /// The handshake (or a stream's `open`) did not finish in time.
    Timeout = 9,
    /// Too many streams open to this peer.
    TooManyStreams = 10,
    /// The protocol's listener has too many streams waiting to be taken.
    Busy = 11,
}

impl RefuseCode {
    pub const ALL: [RefuseCode; 11] = [
        RefuseCode::Version,
        RefuseCode::Cluster,
        RefuseCode::BadProof,
        RefuseCode::Duplicate,
        RefuseCode::WrongShard,
        RefuseCode::UnknownProtocol,
        RefuseCode::Malformed,
        RefuseCode::ShuttingDown,
        RefuseCode::Timeout,
        RefuseCode::TooManyStreams,
        RefuseCode::Busy,
    ];

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    pub fn from_u16(code: u16) -> Option<RefuseCode> {
        Self::ALL.into_iter().find(|c| c.as_u16() == code)
    }

    /// A short stable name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            RefuseCode::Version => "version",
            RefuseCode::Cluster => "cluster",
            RefuseCode::BadProof => "bad_proof",
            RefuseCode::Duplicate => "duplicate",
            RefuseCode::WrongShard => "wrong_shard",
            RefuseCode::UnknownProtocol => "unknown_protocol",
            RefuseCode::Malformed => "malformed",
            RefuseCode::ShuttingDown => "shutting_down",
            RefuseCode::Timeout => "timeout",
            RefuseCode::TooManyStreams => "too_many_streams",
            RefuseCode::Busy => "busy",
        }
    }
}

/// Which end of the connection a proof speaks for: a dialer's proof can
/// never be reflected back as the listener's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Listener,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Dialer => b"dialer",
            Role::Listener => b"listener",
        }
    }
}

/// The TLS exporter label both sides derive the connection's keying
/// material with (RFC 5705 / RFC 8446 section 7.5), 32 bytes, empty
/// context.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-tessera-peer-proof";

/// The MAC a side of `role` sends as its proof: HMAC-SHA256 keyed with
/// the cluster secret over a domain tag, the role, both nonces, both shard
/// ids, the cluster and the connection's exporter keying material. Every
/// variable-length field is length-prefixed so no two inputs collide.
pub fn proof_mac(
    secret: &[u8],
    role: Role,
    dialer: &PeerHello,
    listener: &PeerHello,
    exporter: &[u8],
) -> [u8; 32] {
    mac(secret, role, dialer, listener, exporter)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `proof` is what a side of `role` holding `secret` would send,
/// compared in constant time.
pub fn verify_proof(
    secret: &[u8],
    role: Role,
    dialer: &PeerHello,
    listener: &PeerHello,
    exporter: &[u8],
    proof: &Proof,
) -> bool {
    mac(secret, role, dialer, listener, exporter)
        .verify_slice(&proof.mac.0)
        .is_ok()
}

fn mac(
    secret: &[u8],
    role: Role,
    dialer: &PeerHello,
    listener: &PeerHello,
    exporter: &[u8],
) -> Hmac<Sha256> {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    let mut field = |bytes: &[u8]| {
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    };
    field(b"tessera-peer-proof-v1");
    field(role.label());
    field(&dialer.nonce.0);
    field(&listener.nonce.0);
    field(dialer.shard_id.as_bytes());
    field(listener.shard_id.as_bytes());
    field(dialer.cluster.as_bytes());
    field(exporter);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: &str, n: u8) -> PeerHello {
        PeerHello {
            cluster: "c".into(),
            shard_id: id.into(),
            version: super::super::PEER_VERSION,
            nonce: Bytes32([n; 32]),
        }
    }

    #[test]
    fn a_proof_is_bound_to_role_secret_and_connection() {
        let (d, l) = (hello("a", 1), hello("b", 2));
        let proof = Proof {
            mac: Bytes32(proof_mac(b"secret", Role::Dialer, &d, &l, b"conn-1")),
        };
        assert!(verify_proof(
            b"secret",
            Role::Dialer,
            &d,
            &l,
            b"conn-1",
            &proof
        ));
        assert!(!verify_proof(
            b"secret",
            Role::Listener,
            &d,
            &l,
            b"conn-1",
            &proof
        ));
        assert!(!verify_proof(
            b"other",
            Role::Dialer,
            &d,
            &l,
            b"conn-1",
            &proof
        ));
        assert!(!verify_proof(
            b"secret",
            Role::Dialer,
            &d,
            &l,
            b"conn-2",
            &proof
        ));
        assert!(!verify_proof(
            b"secret",
            Role::Dialer,
            &l,
            &d,
            b"conn-1",
            &proof
        ));
    }

    #[test]
    fn refuse_codes_round_trip_by_number() {
        for code in RefuseCode::ALL {
            assert_eq!(RefuseCode::from_u16(code.as_u16()), Some(code));
        }
        assert_eq!(RefuseCode::from_u16(999), None);
    }
}
