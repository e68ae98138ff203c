//! A session's outbound queue and the task that writes it to the socket.
//!
//! Rooms and the session push already-encoded frames ([`Bytes`], shared
//! between recipients) into an [`Outbound`]; one writer task per connection
//! drains everything ready, `feed`s it to the socket and flushes once, so the
//! cost follows flushes, not messages.
//!
//! The queue has a byte budget. State frames (`update`) are latest-wins: one
//! that does not fit is dropped, counted, and the session is flagged for a
//! full resync, which its room sends once the queue has drained. Reliable
//! frames (chat, errors, joined, announcements) keep their order; one that
//! does not fit closes the socket with 4005, because silently losing it
//! would be worse.
//!
//! Room membership has an epoch: a room pushes with the epoch it was given
//! at join, and the session moves the epoch on when it leaves, so no frame
//! of a room the player has left can slip in after its `left` (the check and
//! the push happen under one lock).
//!
//! The socket itself is a [`Conn`]: the WebSocket reads and writes through
//! it, and a [`Socket`] handle to the same TCP stream lets the close path
//! half-close it after the close frame and drain it after the WebSocket
//! stream gave up (a frame over the limit leaves its payload unread), so
//! that closing never resets a connection with input still unread and the
//! close frame is not lost (PROTOCOL.md, lifecycle rule 7).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt};
use parking_lot::Mutex;
use protocol::CloseCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::metrics as m;

enum Frame {
    State(Bytes),
    Reliable(Bytes),
    Ping,
}

struct Queue {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// State frames were dropped since the last full update.
    resync: bool,
    /// Set once: the close frame to send after what is queued (`None` code:
    /// end without a close frame, like a dropped connection).
    close: Option<(Option<CloseCode>, String)>,
    /// The current room membership; frames of older ones are refused.
    room_epoch: u64,
}

/// Why a push did not queue its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The session is closing or closed, or the pushing room's membership
    /// ended; the frame was discarded.
    Closed,
    /// A reliable frame did not fit the budget: the session is now closing
    /// with 4005.
    Overflow,
}

pub struct Outbound {
    queue: Mutex<Queue>,
    wake: Notify,
    budget: usize,
    /// The connection's socket, for the writer's half-close; taken when the
    /// writer ends, so that rooms holding this queue (a held seat) do not
    /// keep the connection open.
    socket: Mutex<Option<Socket>>,
}

impl Outbound {
    pub fn new(budget: usize) -> Arc<Outbound> {
        Arc::new(Outbound {
            queue: Mutex::new(Queue {
                frames: VecDeque::new(),
                bytes: 0,
                resync: false,
                close: None,
                room_epoch: 0,
            }),
            wake: Notify::new(),
            budget,
            socket: Mutex::new(None),
        })
    }

    /// A queue for the connection on `socket`.
    pub fn for_socket(budget: usize, socket: Socket) -> Arc<Outbound> {
        let out = Outbound::new(budget);
        *out.socket.lock() = Some(socket);
        out
    }

    /// The connection's socket, while its writer runs.
    pub fn socket(&self) -> Option<Socket> {
        self.socket.lock().clone()
    }

    /// Start a new room membership; frames pushed with older epochs are
    /// refused from now on.
    pub fn begin_room(&self) -> u64 {
        let mut q = self.queue.lock();
        q.room_epoch += 1;
        q.room_epoch
    }

    /// Whether membership `epoch` is still the current one.
    pub fn is_member(&self, epoch: u64) -> bool {
        self.queue.lock().room_epoch == epoch
    }

    /// End the current room membership.
    pub fn end_room(&self) {
        self.queue.lock().room_epoch += 1;
    }

    /// Queue a state update from the room of membership `epoch`. Returns
    /// false when it was not queued; when it did not fit, the session is
    /// flagged for a full resync.
    pub fn push_state(&self, epoch: u64, frame: Bytes) -> bool {
        let mut q = self.queue.lock();
        if q.close.is_some() || q.room_epoch != epoch {
            return false;
        }
        if q.bytes + frame.len() > self.budget {
            q.resync = true;
            drop(q);
            metrics::counter!(m::OUTBOUND_DROPPED, "class" => "state").increment(1);
            return false;
        }
        q.bytes += frame.len();
        q.frames.push_back(Frame::State(frame));
        drop(q);
        self.wake.notify_one();
        true
    }

    /// Queue a frame from the room of membership `epoch` that must arrive,
    /// in order.
    pub fn push_room_reliable(&self, epoch: u64, frame: Bytes) -> Result<(), PushError> {
        self.push_reliable_checked(Some(epoch), frame)
    }

    /// Queue a frame of the session's own that must arrive, in order.
    pub fn push_reliable(&self, frame: Bytes) -> Result<(), PushError> {
        self.push_reliable_checked(None, frame)
    }

    fn push_reliable_checked(&self, epoch: Option<u64>, frame: Bytes) -> Result<(), PushError> {
        let mut q = self.queue.lock();
        if q.close.is_some() || epoch.is_some_and(|e| e != q.room_epoch) {
            return Err(PushError::Closed);
        }
        if q.bytes + frame.len() > self.budget {
            // The client cannot keep up even after state updates were shed.
            // Nothing queued can reach it in time; send the close at once.
            q.frames.clear();
            q.bytes = 0;
            q.close = Some((
                Some(CloseCode::SlowConsumer),
                "outbound budget exceeded".into(),
            ));
            drop(q);
            metrics::counter!(m::OUTBOUND_DROPPED, "class" => "reliable").increment(1);
            metrics::counter!(m::SESSIONS_CLOSED, "code" => "4005").increment(1);
            self.wake.notify_one();
            return Err(PushError::Overflow);
        }
        q.bytes += frame.len();
        q.frames.push_back(Frame::Reliable(frame));
        drop(q);
        self.wake.notify_one();
        Ok(())
    }

    pub fn push_ping(&self) {
        let mut q = self.queue.lock();
        if q.close.is_none() {
            q.frames.push_back(Frame::Ping);
            drop(q);
            self.wake.notify_one();
        }
    }

    /// Send what is queued, then a close frame with `code`, then end the
    /// writer. Only the first close counts.
    pub fn close(&self, code: CloseCode, reason: &str) {
        let mut q = self.queue.lock();
        if q.close.is_none() {
            q.close = Some((Some(code), reason.to_string()));
            drop(q);
            metrics::counter!(m::SESSIONS_CLOSED, "code" => code.as_u16().to_string()).increment(1);
            self.wake.notify_one();
        }
    }

    /// End the connection at once, without a close frame (fault injection:
    /// what a pulled cable looks like to the client).
    pub fn abort(&self) {
        let mut q = self.queue.lock();
        if q.close.is_none() {
            q.frames.clear();
            q.bytes = 0;
            q.close = Some((None, String::new()));
            drop(q);
            self.wake.notify_one();
        }
    }

    pub fn is_closing(&self) -> bool {
        self.queue.lock().close.is_some()
    }

    /// Whether state updates were dropped and the queue has room again, in
    /// which case the flag is cleared and the caller owes a full update.
    pub fn take_resync(&self) -> bool {
        let mut q = self.queue.lock();
        if q.resync && q.bytes <= self.budget / 2 {
            q.resync = false;
            true
        } else {
            false
        }
    }

    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().bytes
    }

    /// Everything ready now, or the close once the queue is empty; waits when
    /// there is nothing.
    async fn next_batch(&self, batch: &mut Vec<Frame>) -> Option<(Option<CloseCode>, String)> {
        loop {
            {
                let mut q = self.queue.lock();
                if !q.frames.is_empty() {
                    batch.extend(q.frames.drain(..));
                    q.bytes = 0;
                    return None;
                }
                if let Some(close) = &q.close {
                    return Some(close.clone());
                }
            }
            self.wake.notified().await;
        }
    }
}

/// Drain `out` into `sink` until the session closes or the socket fails.
/// Each write must complete within `write_timeout`, so a client that stops
/// reading cannot hold the task forever.
pub async fn run_writer<S>(out: Arc<Outbound>, mut sink: S, write_timeout: Duration)
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let mut batch = Vec::new();
    // Handles looked up once, not per batch.
    let frames_sent = metrics::counter!(m::FRAMES_SENT);
    let flushes = metrics::counter!(m::FLUSHES);
    loop {
        let close = out.next_batch(&mut batch).await;
        if let Some((code, reason)) = close {
            if let Some(code) = code {
                let frame = CloseFrame {
                    code: WsCloseCode::from(code.as_u16()),
                    reason: reason.into(),
                };
                let message = Message::Close(Some(frame));
                let _ = tokio::time::timeout(write_timeout, sink.send(message)).await;
                let _ = tokio::time::timeout(write_timeout, sink.close()).await;
                // Nothing follows the close frame: send FIN now, so the
                // client sees the end right after it and closes its side,
                // while the session goes on reading until then.
                if let Some(socket) = out.socket.lock().take() {
                    socket.shutdown_write();
                }
            }
            // Aborted: the socket just goes when both halves are dropped.
            out.socket.lock().take();
            return;
        }
        let frames = batch.len() as u64;
        // One deadline for the whole batch: a client that cannot take it in
        // `write_timeout` is too slow either way, and one timer per batch
        // is cheaper than one per frame.
        let write = async {
            for frame in batch.drain(..) {
                let message = match frame {
                    Frame::State(b) | Frame::Reliable(b) => Message::Binary(b),
                    Frame::Ping => Message::Ping(Bytes::new()),
                };
                sink.feed(message).await?;
            }
            sink.flush().await
        };
        let ok = matches!(tokio::time::timeout(write_timeout, write).await, Ok(Ok(())));
        frames_sent.increment(frames);
        flushes.increment(1);
        if !ok {
            batch.clear();
            out.close(CloseCode::InternalError, "write failed");
            out.socket.lock().take();
            return;
        }
    }
}

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
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; it is cleared now, so the next poll
                // registers the waker.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
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
pub struct Socket(Arc<TcpStream>);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_frames_over_budget_are_dropped_and_flag_a_resync() {
        let out = Outbound::new(10);
        let epoch = out.begin_room();
        assert!(out.push_state(epoch, Bytes::from_static(b"123456")));
        assert!(!out.push_state(epoch, Bytes::from_static(b"123456")));
        assert!(
            !out.take_resync(),
            "no resync while the queue is still full"
        );
        out.queue.lock().frames.clear();
        out.queue.lock().bytes = 0;
        assert!(out.take_resync());
        assert!(!out.take_resync(), "the flag is taken once");
    }

    #[test]
    fn reliable_overflow_closes_with_slow_consumer() {
        let out = Outbound::new(10);
        out.push_reliable(Bytes::from_static(b"12345678")).unwrap();
        assert_eq!(
            out.push_reliable(Bytes::from_static(b"12345678")),
            Err(PushError::Overflow)
        );
        assert!(out.is_closing());
        let close = out.queue.lock().close.clone().unwrap();
        assert_eq!(close.0, Some(CloseCode::SlowConsumer));
        assert_eq!(
            out.push_reliable(Bytes::from_static(b"1")),
            Err(PushError::Closed)
        );
        assert!(!out.push_state(0, Bytes::from_static(b"1")));
    }

    #[tokio::test]
    async fn the_writer_sends_in_order_then_closes() {
        let out = Outbound::new(1024);
        out.push_reliable(Bytes::from_static(b"a")).unwrap();
        out.push_state(0, Bytes::from_static(b"b"));
        out.close(CloseCode::GoingAway, "bye");
        let mut got: Vec<Message> = Vec::new();
        let sink = (&mut got).sink_map_err(|_| WsError::ConnectionClosed);
        run_writer(out, sink, Duration::from_secs(1)).await;
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], Message::Binary(Bytes::from_static(b"a")));
        assert_eq!(got[1], Message::Binary(Bytes::from_static(b"b")));
        assert!(matches!(&got[2], Message::Close(Some(f)) if u16::from(f.code) == 1001));
    }
}
