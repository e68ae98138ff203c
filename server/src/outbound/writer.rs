//! The [`Writer`] (a queue drained into the socket) and the
//! [`Connection`] that owns one socket (see the module docs of
//! [`crate::outbound`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, Stream};
use protocol::CloseCode;
use tokio::io::Interest;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{
    Frame, Outbound, Socket, COUNT_EVERY, FRAMES_PER_WRITE, KEEP_FRAMES, MAX_HEADER, SMALL_WRITE,
};
use crate::metrics as m;

/// The writers' counters (frames sent, flushes), looked up once for the
/// process: a handle is an allocation of the recorder's, and two per
/// writer were 64 bytes of every connection.
pub(super) fn counters() -> &'static (metrics::Counter, metrics::Counter, metrics::Counter) {
    static COUNTERS: OnceLock<(metrics::Counter, metrics::Counter, metrics::Counter)> =
        OnceLock::new();
    COUNTERS.get_or_init(|| {
        // The shard's recorder first, so the handles are its own.
        crate::metrics::prometheus();
        (
            metrics::counter!(m::FRAMES_SENT),
            metrics::counter!(m::FLUSHES),
            metrics::counter!(m::FRAMES_IMMEDIATE),
        )
    })
}

/// Where a [`Writer`] is.
enum Stage {
    /// Waiting for frames.
    Idle,
    /// Writing `batch` from `next`, then one flush. Direct writes: `offset`
    /// bytes of frame `next` are written, and `flushed` says tungstenite's
    /// own buffer was flushed before the batch's first byte.
    Writing {
        next: usize,
        offset: usize,
        flushed: bool,
    },
    /// The close frame (taken when sent), then the close handshake's flush.
    /// Boxed: a `Message` inline would make every connection's writer 40
    /// bytes larger for a frame written once, at its end.
    Closing { frame: Option<Box<Message>> },
    /// Closed, aborted or failed: nothing more is written.
    Done,
}

/// Drains an [`Outbound`] into a WebSocket sink, driven by polls (see
/// [`Connection`]). Each batch must be written within `write_timeout`, so
/// a client that stops reading cannot hold its connection forever.
pub struct Writer {
    out: Arc<Outbound>,
    batch: Vec<Frame>,
    stage: Stage,
    /// In milliseconds: 4 bytes instead of a `Duration`'s 16 keep the
    /// connection (socket, WebSocket and writer, boxed in the session's
    /// context) within 512 bytes, a smaller size class than 640.
    write_timeout_ms: u32,
    /// When the current batch or close must be written by.
    deadline: Instant,
    /// The timer, armed only when a write had to wait (most batches go out
    /// at once and never touch it); made the first time, so an idle
    /// connection has none.
    timer: Option<Pin<Box<Sleep>>>,
    timer_armed: bool,
    /// The TCP stream, for direct writes (plain connections; see the
    /// module docs); `None`: frames go through the WebSocket sink.
    direct: Option<Socket>,
    /// Frames and flushes not yet added to the counters (published every
    /// `COUNT_EVERY` flushes, so 32 bits hold them).
    uncounted: (u32, u32),
    /// Bytes of the batch's first frame its pusher already wrote (see
    /// `Outbound::poll_batch`).
    written: usize,
    /// The waker registered with the queue (its data pointer; 0: none),
    /// for `Outbound::poll_batch`'s look without the lock.
    registered: usize,
    /// The socket is lent to pushers (immediate writes): the connection
    /// takes it back before it writes.
    lent: bool,
}

impl Writer {
    pub fn new(out: Arc<Outbound>, write_timeout: Duration) -> Writer {
        Writer {
            out,
            batch: Vec::new(),
            stage: Stage::Idle,
            write_timeout_ms: u32::try_from(write_timeout.as_millis()).unwrap_or(u32::MAX),
            deadline: Instant::now(),
            timer: None,
            timer_armed: false,
            direct: None,
            uncounted: (0, 0),
            written: 0,
            registered: 0,
            lent: false,
        }
    }

    /// Lend the socket to pushers, unless it is lent already.
    fn lend(&mut self) {
        if !self.lent {
            self.lent = self.out.free_socket();
        }
    }

    /// Make the next poll look at the queue under its lock (and so take
    /// the socket back from pushers), as before tungstenite writes a reply
    /// of its own.
    fn look_again(&mut self) {
        self.registered = 0;
    }

    /// Write data frames straight to `socket`, the plain TCP stream under
    /// the WebSocket (see the module docs). Not for TLS connections.
    pub fn direct(mut self, socket: Socket) -> Writer {
        self.direct = Some(socket);
        self
    }

    /// Nothing more will be written.
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }

    /// Direct writes, idle: nothing half-written, nothing to write. The
    /// socket may be lent to pushers (immediate writes).
    fn is_idle_direct(&self) -> bool {
        self.direct.is_some() && matches!(self.stage, Stage::Idle) && self.batch.is_empty()
    }

    /// A batch is partly on the wire (direct writes): nothing else may
    /// write to the socket until it is complete.
    fn mid_batch(&self) -> bool {
        self.direct.is_some()
            && matches!(self.stage, Stage::Writing { next, offset, .. } if next > 0 || offset > 0)
    }

    /// Count a written batch; the shared counters are updated every
    /// `COUNT_EVERY` flushes.
    fn count(&mut self, frames: usize) {
        self.uncounted.0 = self.uncounted.0.saturating_add(frames as u32);
        self.uncounted.1 += 1;
        if u64::from(self.uncounted.1) >= COUNT_EVERY {
            self.publish_counts();
        }
    }

    fn publish_counts(&mut self) {
        let (frames, flushes) = std::mem::take(&mut self.uncounted);
        if flushes > 0 {
            let (frames_sent, flushes_counted, _) = counters();
            frames_sent.increment(u64::from(frames));
            flushes_counted.increment(u64::from(flushes));
        }
    }

    /// Write what is queued; `Ready` once the writer is done (after the
    /// close frame, an abort, or a failed or late write).
    pub fn poll_write<S>(&mut self, mut sink: Pin<&mut S>, cx: &mut Context<'_>) -> Poll<()>
    where
        S: Sink<Message, Error = WsError>,
    {
        loop {
            match &mut self.stage {
                Stage::Done => return Poll::Ready(()),
                Stage::Idle => match self.out.poll_batch(
                    cx,
                    &mut self.batch,
                    &mut self.written,
                    &mut self.registered,
                    &mut self.lent,
                ) {
                    Poll::Pending => {
                        if self.out.take_trim() && self.batch.is_empty() {
                            // An idle connection (`Outbound::trim_idle`).
                            self.batch = Vec::new();
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(None) => {
                        self.start_deadline();
                        // A frame partly written by its pusher goes on from
                        // there; tungstenite had nothing pending then (the
                        // socket was free), and must not write now.
                        let offset = std::mem::take(&mut self.written);
                        self.stage = Stage::Writing {
                            next: 0,
                            offset,
                            flushed: offset > 0,
                        };
                    }
                    Poll::Ready(Some((Some(code), reason))) => {
                        let frame = CloseFrame {
                            code: WsCloseCode::from(code.as_u16()),
                            reason: reason.into(),
                        };
                        self.start_deadline();
                        self.stage = Stage::Closing {
                            frame: Some(Box::new(Message::Close(Some(frame)))),
                        };
                    }
                    // Aborted: the socket just goes when the connection is
                    // dropped.
                    Poll::Ready(Some((None, _))) => self.finish(false),
                },
                Stage::Writing {
                    next,
                    offset,
                    flushed,
                } => {
                    if let Some(socket) = &self.direct {
                        if !*flushed {
                            // tungstenite's own frames (a pong) go first, whole.
                            match sink.as_mut().poll_flush(cx) {
                                Poll::Ready(Ok(())) => *flushed = true,
                                Poll::Ready(Err(_)) => return self.fail(),
                                Poll::Pending => return self.wait(cx),
                            }
                        }
                        match write_direct(socket, &self.batch, next, offset, cx) {
                            Poll::Ready(Ok(())) => {}
                            Poll::Ready(Err(_)) => return self.fail(),
                            Poll::Pending => return self.wait(cx),
                        }
                    } else {
                        while *next < self.batch.len() {
                            match sink.as_mut().poll_ready(cx) {
                                Poll::Ready(Ok(())) => {}
                                Poll::Ready(Err(_)) => return self.fail(),
                                Poll::Pending => return self.wait(cx),
                            }
                            // Moved out; the placeholder costs nothing.
                            let message =
                                match std::mem::replace(&mut self.batch[*next], Frame::Ping) {
                                    Frame::State(b) | Frame::Reliable(b) => Message::Binary(b),
                                    Frame::Ping => Message::Ping(Bytes::new()),
                                };
                            *next += 1;
                            if sink.as_mut().start_send(message).is_err() {
                                return self.fail();
                            }
                        }
                        match sink.as_mut().poll_flush(cx) {
                            Poll::Ready(Ok(())) => {}
                            Poll::Ready(Err(_)) => return self.fail(),
                            Poll::Pending => return self.wait(cx),
                        }
                    }
                    self.count(self.batch.len());
                    self.batch.clear();
                    if self.batch.capacity() > KEEP_FRAMES {
                        self.batch.shrink_to(KEEP_FRAMES);
                    }
                    self.timer_armed = false;
                    self.stage = Stage::Idle;
                }
                Stage::Closing { frame } => {
                    if frame.is_some() {
                        match sink.as_mut().poll_ready(cx) {
                            Poll::Ready(Ok(())) => {}
                            Poll::Ready(Err(_)) => return self.close_done(),
                            Poll::Pending => return self.wait(cx),
                        }
                        let frame = frame.take().expect("checked above");
                        if sink.as_mut().start_send(*frame).is_err() {
                            return self.close_done();
                        }
                    }
                    match sink.as_mut().poll_close(cx) {
                        Poll::Ready(_) => return self.close_done(),
                        Poll::Pending => return self.wait(cx),
                    }
                }
            }
        }
    }

    fn start_deadline(&mut self) {
        self.deadline = Instant::now() + Duration::from_millis(u64::from(self.write_timeout_ms));
        self.timer_armed = false;
    }

    /// The socket is not ready: wait for it, or give up at the deadline.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.timer_armed {
            timer.as_mut().reset(deadline);
            self.timer_armed = true;
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        match self.stage {
            // A close that cannot be written in time ends all the same.
            Stage::Closing { .. } => self.close_done(),
            _ => self.fail(),
        }
    }

    /// The close frame went (or could not): nothing follows it, so send
    /// FIN now; the client sees the end right after it and closes its side,
    /// while the session goes on reading until then.
    fn close_done(&mut self) -> Poll<()> {
        self.finish(true);
        Poll::Ready(())
    }

    fn fail(&mut self) -> Poll<()> {
        self.batch.clear();
        self.out.close(CloseCode::InternalError, "write failed");
        self.finish(false);
        Poll::Ready(())
    }

    fn finish(&mut self, shutdown: bool) {
        self.publish_counts();
        // Rooms holding the queue (a held seat) must not keep the
        // connection open.
        if let Some(socket) = self.out.take_socket() {
            if shutdown {
                socket.shutdown_write();
            }
        }
        self.stage = Stage::Done;
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.publish_counts();
    }
}

/// Write `frames` from byte `offset` of frame `next` to `socket` with
/// vectored writes (each frame's header, then its shared payload), until
/// all of them are written or the socket is full.
fn write_direct(
    socket: &Socket,
    frames: &[Frame],
    next: &mut usize,
    offset: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    while *next < frames.len() {
        let chunk = &frames[*next..frames.len().min(*next + FRAMES_PER_WRITE)];
        let mut heads = [[0u8; MAX_HEADER]; FRAMES_PER_WRITE];
        let mut head_lens = [0usize; FRAMES_PER_WRITE];
        for (i, frame) in chunk.iter().enumerate() {
            head_lens[i] = frame.header(&mut heads[i]);
        }
        let mut slices = [io::IoSlice::new(&[]); 2 * FRAMES_PER_WRITE];
        let mut n = 0;
        let mut skip = *offset;
        for (i, frame) in chunk.iter().enumerate() {
            let head = &heads[i][..head_lens[i]];
            let body = frame.body();
            let (head, body) = if skip >= head.len() {
                (&[][..], &body[skip - head.len()..])
            } else {
                (&head[skip..], body)
            };
            skip = 0;
            for part in [head, body] {
                if !part.is_empty() {
                    slices[n] = io::IoSlice::new(part);
                    n += 1;
                }
            }
        }
        // Tried before asking for readiness: the socket is writable
        // nearly always, and tokio's `try_*` checks its cached readiness
        // anyway (no syscall when it is known not ready).
        let slices = &slices[..n];
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let sent = if total <= SMALL_WRITE {
            // Most batches are one tick's frame of a few hundred bytes:
            // copied once, it goes with a plain `send`, the kernel's
            // cheapest path.
            let mut buf = [0u8; SMALL_WRITE];
            let mut len = 0;
            for slice in slices {
                buf[len..len + slice.len()].copy_from_slice(slice);
                len += slice.len();
            }
            socket.0.try_write(&buf[..len])
        } else {
            // `sendmsg`: a socket's own vectored call (`writev` would go
            // through the VFS layer, measurably dearer per call).
            socket.0.try_io(Interest::WRITABLE, || {
                socket2::SockRef::from(&*socket.0).send_vectored(slices)
            })
        };
        let mut written = match sent {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(written) => written,
            // Not writable (now known): wait for it, which registers the
            // waker.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                ready!(socket.0.poll_write_ready(cx))?;
                continue;
            }
            Err(e) => return Poll::Ready(Err(e)),
        };
        while written > 0 {
            let left = frames[*next].wire_len() - *offset;
            if written >= left {
                written -= left;
                *next += 1;
                *offset = 0;
            } else {
                *offset += written;
                written = 0;
            }
        }
    }
    Poll::Ready(Ok(()))
}

/// Drain `out` into `sink` until the session closes or the socket fails
/// (a [`Writer`] on a task of its own; the gateway drives its writers from
/// the [`Connection`] instead).
pub async fn run_writer<S>(out: Arc<Outbound>, mut sink: S, write_timeout: Duration)
where
    S: Sink<Message, Error = WsError> + Unpin,
{
    let mut writer = Writer::new(out, write_timeout);
    std::future::poll_fn(|cx| writer.poll_write(Pin::new(&mut sink), cx)).await
}

/// A client connection: the WebSocket and its [`Writer`], one owner. As a
/// [`Stream`] it yields the client's messages; every poll first writes what
/// is queued. After the client's side ends, it keeps writing (the close
/// frame, say) and ends once the writer is done too. `H` is held for the
/// connection's life (its admission slots).
pub struct Connection<W, H> {
    ws: W,
    writer: Writer,
    read_done: bool,
    /// tungstenite may hold a reply (a pong, a close) of its own since the
    /// last read: flushed before the socket is lent to pushers.
    reply_owed: bool,
    _held: H,
}

impl<W, H> Connection<W, H> {
    pub fn new(ws: W, writer: Writer, held: H) -> Connection<W, H> {
        Connection {
            ws,
            writer,
            read_done: false,
            reply_owed: false,
            _held: held,
        }
    }

    /// The frames its writer's batch has room for.
    #[cfg(test)]
    pub(super) fn batch_capacity(&self) -> usize {
        self.writer.batch.capacity()
    }
}

impl<W, H> Stream for Connection<W, H>
where
    W: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
    H: Unpin,
{
    type Item = Result<Message, WsError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.reply_owed {
            // tungstenite writes its reply (a pong) when it reads next: the
            // socket must not be lent then, nor hold half a pushed frame.
            this.writer.look_again();
        }
        let written = this.writer.poll_write(Pin::new(&mut this.ws), cx);
        // While a batch is half written, reading waits: tungstenite may
        // write a reply (a pong) when it reads, which must not land inside
        // a frame. The socket's write readiness wakes this task.
        if !this.read_done && !this.writer.mid_batch() {
            match Pin::new(&mut this.ws).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => {
                    if !matches!(message, Message::Binary(_) | Message::Text(_)) {
                        this.reply_owed = true;
                    }
                    return Poll::Ready(Some(Ok(message)));
                }
                Poll::Ready(Some(Err(err))) => {
                    // The WebSocket ends after an error; the writer may
                    // still have the close frame to send.
                    this.read_done = true;
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => this.read_done = true,
                Poll::Pending => {
                    this.lend_socket(cx);
                    return Poll::Pending;
                }
            }
        }
        if written.is_ready() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

impl<W, H> Connection<W, H>
where
    W: Sink<Message, Error = WsError> + Unpin,
{
    /// Waiting for the client with nothing to write: lend the socket to
    /// pushers (immediate writes, see the module docs of
    /// [`crate::outbound`]) once tungstenite's own replies are out.
    fn lend_socket(&mut self, cx: &mut Context<'_>) {
        if !self.writer.is_idle_direct() {
            return;
        }
        if self.reply_owed {
            match Pin::new(&mut self.ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.reply_owed = false,
                // Not out yet (the socket's readiness wakes this task), or
                // failed (the writer finds out).
                _ => return,
            }
        }
        self.writer.lend();
    }
}

impl<W, H> Drop for Connection<W, H> {
    fn drop(&mut self) {
        if !self.writer.is_done() {
            // The session ended first (fault injection, shutdown): the
            // socket goes with this connection.
            self.writer.finish(false);
        }
    }
}
