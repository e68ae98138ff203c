//! A peer built by hand from PEER.md, for the tests that need a shard's
//! tunnel to meet a peer no hub plays: another version, a forged proof, a
//! peer that answers streams itself.

#![allow(dead_code)]

use protocol::peer::{
    encode_frame, proof_mac, verify_proof, Bytes32, Control, PeerHello, PeerMessage, Proof, Role,
    EXPORTER_LABEL,
};
use protocol::Version;

/// A QUIC client that accepts any certificate (a peer proves itself with
/// the cluster secret, not the certificate), speaking the tunnel's ALPN.
pub mod raw {
    use std::sync::Arc;

    use quinn::crypto::rustls::QuicClientConfig;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct Any;

    impl ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            Ok(HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    pub async fn connect(addr: std::net::SocketAddr) -> quinn::Connection {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Any))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"tessera-peer/1".to_vec()];
        let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(config);
        endpoint
            .connect(addr, "tessera-peer")
            .unwrap()
            .await
            .unwrap()
    }
}

/// The largest frame this peer reads (and writes).
const MAX_FRAME: u32 = 1 << 20;

/// Read one frame (a 4-byte length, then the payload) as a `T`; `None`
/// when the stream ends first, the length is over [`MAX_FRAME`] (nothing
/// is allocated for it) or the frame is not one.
pub async fn read_msg<T: PeerMessage>(recv: &mut quinn::RecvStream) -> Option<T> {
    let mut header = [0u8; 4];
    recv.read_exact(&mut header).await.ok()?;
    let len = u32::from_be_bytes(header);
    if len > MAX_FRAME {
        return None;
    }
    let mut payload = vec![0u8; len as usize];
    recv.read_exact(&mut payload).await.ok()?;
    protocol::peer::decode_payload(&payload, MAX_FRAME).ok()
}

/// Read a control message, or `None` when the stream ends first.
pub async fn read_control(recv: &mut quinn::RecvStream) -> Option<Control> {
    read_msg(recv).await
}

/// A dialer's handshake done by hand from PEER.md, as shard `shard_id` of
/// cluster `cluster` holding `secret`: hello (saying tunnel `version`),
/// read hello, proof over the nonces, ids and `exporter`, read and check
/// the proof. `Ok` is the control stream (keep it: the connection lives
/// with it); `Err` is the refusal's code and reason.
pub async fn raw_handshake(
    conn: &quinn::Connection,
    exporter: [u8; 32],
    secret: &[u8],
    cluster: &str,
    shard_id: &str,
    version: Version,
) -> Result<(quinn::SendStream, quinn::RecvStream), (u16, String)> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let ours = PeerHello {
        cluster: cluster.into(),
        shard_id: shard_id.into(),
        version,
        nonce: Bytes32([5; 32]),
    };
    let frame = encode_frame(&Control::Hello(ours.clone()), MAX_FRAME).unwrap();
    send.write_all(&frame).await.unwrap();
    let Some(Control::Hello(theirs)) = read_control(&mut recv).await else {
        panic!("the hub answers hello with hello");
    };
    let mac = proof_mac(secret, Role::Dialer, &ours, &theirs, &exporter);
    let frame = encode_frame(&Control::Proof(Proof { mac: Bytes32(mac) }), MAX_FRAME).unwrap();
    send.write_all(&frame).await.unwrap();
    match read_control(&mut recv).await {
        Some(Control::Proof(proof)) => {
            assert!(
                verify_proof(secret, Role::Listener, &ours, &theirs, &exporter, &proof),
                "the hub's proof checks out"
            );
            Ok((send, recv))
        }
        Some(Control::Refuse(r)) => Err((r.code, r.reason)),
        other => match conn.closed().await {
            quinn::ConnectionError::ApplicationClosed(close) => Err((
                close.error_code.into_inner() as u16,
                String::from_utf8_lossy(&close.reason).into_owned(),
            )),
            closed => panic!("no proof, no refusal: {other:?} {closed:?}"),
        },
    }
}

/// The connection's TLS exporter, which a proof is bound to.
pub fn exporter(conn: &quinn::Connection) -> [u8; 32] {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .unwrap();
    out
}
