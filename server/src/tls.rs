//! Optional TLS (rustls, `ring` provider) on the game and HTTP listeners.
//!
//! [`Tls::from_config`] reads the PEM files named in `[tls]` once, at start,
//! and fails with a [`ConfigError`] naming the field whose file is missing
//! or unusable. [`Conn`] is what both listeners hand on: a plain socket, or
//! a TLS one. The gateway finishes the TLS handshake in the connection's
//! own task (under the handshake timeout), before the WebSocket upgrade;
//! the HTTP listener hands out a [`Conn::Handshaking`] that completes on
//! its first read or write, so one slow client cannot hold up the accept
//! loop.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The TCP stream under either kind of connection: shared with the close
/// path's [`crate::outbound::Socket`] handle (FIN, then drain).
type Tcp = crate::outbound::Conn;
use tokio_rustls::server::TlsStream;
use tokio_rustls::{Accept, TlsAcceptor};

use crate::config::{ConfigError, TlsConfig, TlsFiles};

/// The acceptors in force: `None` is plain TCP on that listener.
#[derive(Clone, Default)]
pub struct Tls {
    pub ws: Option<TlsAcceptor>,
    pub http: Option<TlsAcceptor>,
}

impl Tls {
    /// Load the certificates and keys `[tls]` names.
    pub fn from_config(config: &TlsConfig) -> Result<Tls, ConfigError> {
        let mut errors = Vec::new();
        let mut load = |files: Option<TlsFiles>, alpn: &[&[u8]]| {
            let files = files?;
            match acceptor(&files, alpn) {
                Ok(acceptor) => Some(acceptor),
                Err(message) => {
                    errors.push(message);
                    None
                }
            }
        };
        // The WebSocket upgrade is an HTTP/1.1 request; so is every route
        // of the HTTP listener (axum is served as HTTP/1 only).
        let (ws_files, http_files) = (config.ws_files(), config.http_files());
        let same = ws_files == http_files;
        let ws = load(ws_files, &[b"http/1.1"]);
        // One pair for both listeners is read (and reported) once.
        let http = if same {
            ws.clone()
        } else {
            load(http_files, &[b"http/1.1"])
        };
        if errors.is_empty() {
            Ok(Tls { ws, http })
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}

fn acceptor(files: &TlsFiles, alpn: &[&[u8]]) -> Result<TlsAcceptor, String> {
    let TlsFiles {
        cert_field,
        cert_path,
        key_field,
        key_path,
    } = files;
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!("{cert_field} {cert_path:?}: not a readable PEM certificate chain: {e}")
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{cert_field} {cert_path:?}: no CERTIFICATE block in the file"
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| format!("{key_field} {key_path:?}: not a readable PEM private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{cert_field}: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{key_field} {key_path:?} does not fit {cert_field}: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// One accepted connection of either listener.
pub enum Conn {
    Plain(Tcp),
    /// Boxed: a TLS stream carries its buffers, and a plain connection
    /// should not pay for them.
    Tls(Box<TlsStream<Tcp>>),
    /// A TLS handshake that completes on first use, or fails at its
    /// deadline.
    Handshaking(Box<Handshake>),
    /// The handshake failed; every use is an error.
    Failed,
}

pub struct Handshake {
    accept: Accept<Tcp>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Conn {
    /// A plain (no TLS) connection.
    pub fn plain(tcp: TcpStream) -> Conn {
        Conn::Plain(Tcp::new(tcp))
    }

    /// A TLS connection whose handshake runs on first use, within `timeout`.
    pub fn lazy_tls(acceptor: &TlsAcceptor, tcp: TcpStream, timeout: Duration) -> Conn {
        Conn::Handshaking(Box::new(Handshake {
            accept: acceptor.accept(Tcp::new(tcp)),
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }))
    }

    /// Complete the TLS handshake now, within `timeout`.
    pub async fn tls(acceptor: &TlsAcceptor, tcp: Tcp, timeout: Duration) -> io::Result<Conn> {
        match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Ok(Conn::Tls(Box::new(stream))),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "tls handshake timed out",
            )),
        }
    }

    /// Drive a pending handshake; `Ready(Ok)` once the stream is usable.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Conn::Handshaking(handshake) = self else {
            return match self {
                Conn::Failed => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "tls handshake failed",
                ))),
                _ => Poll::Ready(Ok(())),
            };
        };
        let done = match Pin::new(&mut handshake.accept).poll(cx) {
            Poll::Ready(result) => result,
            Poll::Pending => {
                if handshake.deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "tls handshake timed out",
                ))
            }
        };
        match done {
            Ok(stream) => {
                *self = Conn::Tls(Box::new(stream));
                Poll::Ready(Ok(()))
            }
            Err(err) => {
                *self = Conn::Failed;
                Poll::Ready(Err(err))
            }
        }
    }
}

/// A usable stream, once any handshake is done.
enum Io<'a> {
    Plain(&'a mut Tcp),
    Tls(&'a mut TlsStream<Tcp>),
}

impl Conn {
    fn ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Io<'_>>> {
        ready!(self.poll_handshake(cx))?;
        Poll::Ready(match self {
            Conn::Plain(s) => Ok(Io::Plain(s)),
            Conn::Tls(s) => Ok(Io::Tls(s)),
            Conn::Handshaking(_) | Conn::Failed => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "tls handshake failed",
            )),
        })
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match ready!(self.get_mut().ready(cx))? {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match ready!(self.get_mut().ready(cx))? {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(self.get_mut().ready(cx))? {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(self.get_mut().ready(cx))? {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
