//! The TCP stream under a plain WebSocket connection, shared by the
//! WebSocket and the close path (see the module docs of
//! [`crate::outbound`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream shared between the WebSocket that reads and writes it and
/// the [`Socket`] handles of the close path. Reads and writes go through
/// tokio's readiness API, which takes `&TcpStream`, so the handles need no
/// lock; only one task reads at a time (the WebSocket, then, once it gave
/// up, the drain).
pub struct Conn(Arc<TcpStream>);

impl Conn {
    pub fn new(tcp: TcpStream) -> Conn {
        Conn(Arc::new(tcp))
    }

    pub fn socket(&self) -> Socket {
        Socket(self.0.clone())
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            // Nothing to read into; an empty read would look like EOF.
            return Poll::Ready(Ok(()));
        }
        loop {
            // Tried before asking for readiness (tokio's `try_read` checks
            // the cached readiness first: no syscall when it is known not
            // ready); a `WouldBlock` below registers the waker.
            let room = buf.remaining();
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    if n > 0 && n < room {
                        // A short read emptied the receive queue. Clear the
                        // readiness now, so that the next read waits for
                        // the next event instead of making a `recv` that
                        // fails with EAGAIN (one per message otherwise).
                        // Data arriving after this read raises a new edge
                        // event; tokio keeps a seen end of stream.
                        let _ = self.0.try_io(Interest::READABLE, || {
                            Err::<(), _>(io::ErrorKind::WouldBlock.into())
                        });
                    }
                    return Poll::Ready(Ok(()));
                }
                // Not readable (now known): wait for it, which registers
                // the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.0.poll_read_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the kernel; there is no buffer to flush.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// A handle to a connection's TCP stream for the close path.
#[derive(Clone)]
pub struct Socket(pub(super) Arc<TcpStream>);

impl Socket {
    /// Send FIN: this side writes nothing more. Errors mean the connection
    /// is gone already.
    pub fn shutdown_write(&self) {
        let _ = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write);
    }

    /// Read and discard everything until the peer's end of stream (or a
    /// read error), so that closing the socket afterwards does not reset
    /// the connection. Callers bound it with a timeout.
    pub async fn drain(&self) {
        let mut scratch = [0u8; 4096];
        loop {
            if self.0.readable().await.is_err() {
                return;
            }
            match self.0.try_read(&mut scratch) {
                Ok(0) => return,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return,
            }
        }
    }
}
