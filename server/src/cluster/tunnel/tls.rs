//! The QUIC endpoint: a self-signed certificate made at start, TLS 1.3
//! with rustls and ring, and a client side that accepts any certificate.
//!
//! Why accepting any certificate is sound here: TLS only encrypts. Who a
//! peer is, is proven by the HMAC proof of the handshake
//! (`protocol::peer::handshake`), which covers this connection's TLS
//! exporter keying material. A man in the middle terminating TLS towards
//! each side would see two connections with different keying material,
//! and could not forge either side's proof for the other one without the
//! cluster secret. A cluster CA would authenticate in TLS itself (and is
//! the stronger option, not done yet); PEER.md says more.

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    AckFrequencyConfig, ClientConfig, Endpoint, EndpointConfig, IdleTimeout, MtuDiscoveryConfig,
    ServerConfig, TokioRuntime, TransportConfig, VarInt,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::settings::{TunnelError, TunnelSettings};

/// The ALPN protocol of the tunnel: a QUIC connection for anything else
/// fails in the TLS handshake.
pub const ALPN: &[u8] = b"tessera-peer/1";

/// The name a dialler asks for (no certificate is checked against it).
pub const SERVER_NAME: &str = "tessera-peer";

/// A bound endpoint that accepts and dials.
pub fn endpoint(settings: &TunnelSettings) -> Result<Endpoint, TunnelError> {
    let bind_err = |reason: String| TunnelError::Bind {
        addr: settings.listen,
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let transport = Arc::new(transport(settings));

    let cert = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])
        .map_err(|e| bind_err(format!("self-signed certificate: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bind_err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(|e| bind_err(e.to_string()))?;
    server_tls.alpn_protocols = vec![ALPN.to_vec()];
    let server_crypto =
        QuicServerConfig::try_from(server_tls).map_err(|e| bind_err(e.to_string()))?;
    let mut server = ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());

    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| bind_err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![ALPN.to_vec()];
    let client_crypto =
        QuicClientConfig::try_from(client_tls).map_err(|e| bind_err(e.to_string()))?;
    let mut client = ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);

    let mut config = EndpointConfig::default();
    config
        .max_udp_payload_size(settings.max_udp_payload)
        .map_err(|e| bind_err(format!("max_udp_payload: {e}")))?;
    let socket = std::net::UdpSocket::bind(settings.listen).map_err(|e| bind_err(e.to_string()))?;
    let mut endpoint = Endpoint::new(config, Some(server), socket, Arc::new(TokioRuntime))
        .map_err(|e| bind_err(e.to_string()))?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

fn transport(settings: &TunnelSettings) -> TransportConfig {
    let mut t = TransportConfig::default();
    // An idle timeout beyond QUIC's range (about 146 years) is no timeout
    // worth keeping apart: clamp it.
    let idle = IdleTimeout::try_from(settings.idle_timeout)
        .unwrap_or_else(|_| IdleTimeout::from(VarInt::MAX));
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(settings.keep_alive))
        .max_concurrent_bidi_streams(VarInt::from_u32(settings.max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(settings.stream_window))
        .initial_rtt(Duration::from_millis(10))
        .ack_frequency_config(Some(ack_frequency(settings)))
        .mtu_discovery_config(Some(mtu_discovery(settings)));
    t
}

/// Path MTU discovery up to `max_udp_payload` (1452 by default, quinn's
/// own default: within Ethernet's MTU). The peer's own `max_udp_payload`
/// caps it too: the endpoint sends it in the handshake as QUIC's
/// `max_udp_payload_size`.
fn mtu_discovery(settings: &TunnelSettings) -> MtuDiscoveryConfig {
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(settings.max_udp_payload);
    mtu
}

/// What this side asks of its peer with QUIC's ACK frequency extension
/// (both sides are quinn, which supports it: each asks the other the
/// same). Ticks go one way and inputs the other all the time, so an ACK
/// held back a little rides on the next data packet instead of being a
/// datagram of its own: with QUIC's rule (an ACK for every other packet)
/// about a fifth of the tunnel's datagrams were ACKs alone, each a send,
/// a receive and a decryption (BENCHMARKS.md, "The hop's CPU, last
/// pass").
fn ack_frequency(settings: &TunnelSettings) -> AckFrequencyConfig {
    let mut ack = AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(settings.ack_eliciting_threshold))
        .max_ack_delay(Some(settings.max_ack_delay));
    ack
}

/// Accepts any certificate, but still checks that the handshake is signed
/// by the certificate's key (so the TLS session is a real one).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
