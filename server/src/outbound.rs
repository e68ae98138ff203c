//! A session's outbound queue, and the [`Connection`] that owns its socket.
//!
//! Rooms and the session push already-encoded frames ([`Bytes`], shared
//! between recipients) into an [`Outbound`]. The socket has one owner, the
//! session's [`Connection`]: a stream of the client's messages that, each
//! time it is polled, first drains everything ready in the queue into the
//! WebSocket and flushes once (the cost follows flushes, not messages), then
//! reads. So one task (the session actor's) reads and writes its socket:
//! there is no split into halves behind a lock and no second task to wake
//! per batch.
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
//! On a plain TCP connection the writer lays out each data frame's header
//! itself and hands the header and the shared frame bytes to one vectored
//! `sendmsg` for the whole batch, or copies a small batch (a tick's frame)
//! to the stack for one `send` ("direct" writes): nothing is copied into
//! tungstenite's write buffer, which would otherwise keep, per connection,
//! the capacity of the largest batch it ever wrote. tungstenite still
//! writes the close frame and its own replies (a pong to a client's ping),
//! so the writer flushes it before a batch, and the connection does not
//! read (tungstenite may answer a ping while reading) while a batch is
//! half written.
//!
//! The socket itself is a [`Conn`]: the WebSocket reads and writes through
//! it, and a [`Socket`] handle to the same TCP stream lets the close path
//! half-close it after the close frame and drain it after the WebSocket
//! stream gave up (a frame over the limit leaves its payload unread), so
//! that closing never resets a connection with input still unread and the
//! close frame is not lost (PROTOCOL.md, lifecycle rule 7).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use futures_util::{Sink, Stream};
use parking_lot::Mutex;
use protocol::CloseCode;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::metrics as m;

enum Frame {
    State(Bytes),
    Reliable(Bytes),
    Ping,
}

impl Frame {
    /// The frame's payload.
    fn body(&self) -> &[u8] {
        match self {
            Frame::State(b) | Frame::Reliable(b) => b,
            Frame::Ping => &[],
        }
    }

    /// The WebSocket header of this frame from the server (unmasked, one
    /// fragment) into `head`; returns its length.
    fn header(&self, head: &mut [u8; MAX_HEADER]) -> usize {
        let (opcode, len) = match self {
            Frame::State(b) | Frame::Reliable(b) => (0x2, b.len()),
            Frame::Ping => (0x9, 0),
        };
        head[0] = 0x80 | opcode;
        if len < 126 {
            head[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            head[1] = 126;
            head[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    }

    /// Header and payload: the bytes this frame takes on the wire.
    fn wire_len(&self) -> usize {
        let len = self.body().len();
        len + match len {
            0..=125 => 2,
            126..=0xFFFF => 4,
            _ => 10,
        }
    }
}

/// The longest WebSocket header of an unmasked frame.
const MAX_HEADER: usize = 10;

/// Frames per vectored write (two slices each), well under `IOV_MAX`.
const FRAMES_PER_WRITE: usize = 32;

/// Batches of at most this many bytes are copied into one buffer on the
/// stack and sent with `send`; larger ones go with `sendmsg` as they are.
const SMALL_WRITE: usize = 1024;

/// How many flushes a writer counts before it adds them to the shared
/// counters (an atomic add each), and at its end.
const COUNT_EVERY: u64 = 16;

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
    /// The connection's task, woken when something is queued.
    wake: AtomicWaker,
    /// `Queue::resync`, readable without the lock: a room asks every
    /// member each tick, and almost always the answer is no.
    resync_due: AtomicBool,
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
            wake: AtomicWaker::new(),
            resync_due: AtomicBool::new(false),
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
            self.resync_due.store(true, Ordering::Relaxed);
            drop(q);
            metrics::counter!(m::OUTBOUND_DROPPED, "class" => "state").increment(1);
            return false;
        }
        q.bytes += frame.len();
        q.frames.push_back(Frame::State(frame));
        drop(q);
        self.wake.wake();
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
            self.wake.wake();
            return Err(PushError::Overflow);
        }
        q.bytes += frame.len();
        q.frames.push_back(Frame::Reliable(frame));
        drop(q);
        self.wake.wake();
        Ok(())
    }

    pub fn push_ping(&self) {
        let mut q = self.queue.lock();
        if q.close.is_none() {
            q.frames.push_back(Frame::Ping);
            drop(q);
            self.wake.wake();
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
            self.wake.wake();
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
            self.wake.wake();
        }
    }

    pub fn is_closing(&self) -> bool {
        self.queue.lock().close.is_some()
    }

    /// Whether state updates were dropped and the queue has room again, in
    /// which case the flag is cleared and the caller owes a full update.
    pub fn take_resync(&self) -> bool {
        // Set under the lock by the tick that dropped a frame, read by the
        // room's own later tick: no ordering beyond the lock is needed.
        if !self.resync_due.load(Ordering::Relaxed) {
            return false;
        }
        let mut q = self.queue.lock();
        if q.resync && q.bytes <= self.budget / 2 {
            q.resync = false;
            self.resync_due.store(false, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Owe the client a full update: its room sends one at its next tick
    /// (as after dropped state frames). Cluster mode: a member whose room
    /// moved to this shard.
    pub fn request_resync(&self) {
        let mut q = self.queue.lock();
        q.resync = true;
        self.resync_due.store(true, Ordering::Relaxed);
    }

    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().bytes
    }

    /// Everything ready now, or the close once the queue is empty;
    /// `Pending` (and a wake-up when something is queued) when there is
    /// nothing.
    fn poll_batch(
        &self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Frame>,
    ) -> Poll<Option<(Option<CloseCode>, String)>> {
        // Registered before looking, so a push in between is not missed.
        self.wake.register(cx.waker());
        let mut q = self.queue.lock();
        if !q.frames.is_empty() {
            batch.extend(q.frames.drain(..));
            q.bytes = 0;
            return Poll::Ready(None);
        }
        match &q.close {
            Some(close) => Poll::Ready(Some(close.clone())),
            None => Poll::Pending,
        }
    }
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
    Closing { frame: Option<Message> },
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
    write_timeout: Duration,
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
    /// Frames and flushes not yet added to the counters.
    uncounted: (u64, u64),
    frames_sent: metrics::Counter,
    flushes: metrics::Counter,
}

impl Writer {
    pub fn new(out: Arc<Outbound>, write_timeout: Duration) -> Writer {
        Writer {
            out,
            batch: Vec::new(),
            stage: Stage::Idle,
            write_timeout,
            deadline: Instant::now(),
            timer: None,
            timer_armed: false,
            direct: None,
            uncounted: (0, 0),
            // Handles looked up once, not per batch.
            frames_sent: metrics::counter!(m::FRAMES_SENT),
            flushes: metrics::counter!(m::FLUSHES),
        }
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

    /// A batch is partly on the wire (direct writes): nothing else may
    /// write to the socket until it is complete.
    fn mid_batch(&self) -> bool {
        self.direct.is_some()
            && matches!(self.stage, Stage::Writing { next, offset, .. } if next > 0 || offset > 0)
    }

    /// Count a written batch; the shared counters are updated every
    /// `COUNT_EVERY` flushes.
    fn count(&mut self, frames: usize) {
        self.uncounted.0 += frames as u64;
        self.uncounted.1 += 1;
        if self.uncounted.1 >= COUNT_EVERY {
            self.publish_counts();
        }
    }

    fn publish_counts(&mut self) {
        let (frames, flushes) = std::mem::take(&mut self.uncounted);
        if flushes > 0 {
            self.frames_sent.increment(frames);
            self.flushes.increment(flushes);
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
                Stage::Idle => match ready!(self.out.poll_batch(cx, &mut self.batch)) {
                    None => {
                        self.start_deadline();
                        self.stage = Stage::Writing {
                            next: 0,
                            offset: 0,
                            flushed: false,
                        };
                    }
                    Some((Some(code), reason)) => {
                        let frame = CloseFrame {
                            code: WsCloseCode::from(code.as_u16()),
                            reason: reason.into(),
                        };
                        self.start_deadline();
                        self.stage = Stage::Closing {
                            frame: Some(Message::Close(Some(frame))),
                        };
                    }
                    // Aborted: the socket just goes when the connection is
                    // dropped.
                    Some((None, _)) => self.finish(false),
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
                        if sink.as_mut().start_send(frame).is_err() {
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
        self.deadline = Instant::now() + self.write_timeout;
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
        if let Some(socket) = self.out.socket.lock().take() {
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
        ready!(socket.0.poll_write_ready(cx))?;
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
            // Readiness was stale; the next poll registers the waker.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
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
    _held: H,
}

impl<W, H> Connection<W, H> {
    pub fn new(ws: W, writer: Writer, held: H) -> Connection<W, H> {
        Connection {
            ws,
            writer,
            read_done: false,
            _held: held,
        }
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
        let written = this.writer.poll_write(Pin::new(&mut this.ws), cx);
        // While a batch is half written, reading waits: tungstenite may
        // write a reply (a pong) when it reads, which must not land inside
        // a frame. The socket's write readiness wakes this task.
        if !this.read_done && !this.writer.mid_batch() {
            match Pin::new(&mut this.ws).poll_next(cx) {
                Poll::Ready(Some(Ok(message))) => return Poll::Ready(Some(Ok(message))),
                Poll::Ready(Some(Err(err))) => {
                    // The WebSocket ends after an error; the writer may
                    // still have the close frame to send.
                    this.read_done = true;
                    return Poll::Ready(Some(Err(err)));
                }
                Poll::Ready(None) => this.read_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        if written.is_ready() {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
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
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

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

    /// A server-side connection and the client's end of it, in memory.
    async fn pair(
        out: &Arc<Outbound>,
    ) -> (
        Connection<WebSocketStream<tokio::io::DuplexStream>, ()>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
        let writer = Writer::new(out.clone(), Duration::from_secs(5));
        (Connection::new(server, writer, ()), client)
    }

    #[tokio::test]
    async fn one_connection_reads_and_writes_its_socket() {
        let out = Outbound::new(1024);
        let (mut conn, mut client) = pair(&out).await;
        // Queued frames go out when the connection is polled for input.
        out.push_reliable(Bytes::from_static(b"hello")).unwrap();
        client
            .send(Message::Binary(Bytes::from_static(b"move")))
            .await
            .unwrap();
        let got = conn.next().await.unwrap().unwrap();
        assert_eq!(got, Message::Binary(Bytes::from_static(b"move")));
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(b"hello"))
        );
        // A push from elsewhere wakes the connection's task by itself.
        let reader = tokio::spawn(async move {
            let next = conn.next().await;
            (conn, next)
        });
        out.push_reliable(Bytes::from_static(b"later")).unwrap();
        assert_eq!(
            client.next().await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(b"later"))
        );
        // The client says goodbye: the server sees it, and answers it once
        // the session closes; then the connection ends.
        client.close(None).await.unwrap();
        let (mut conn, next) = reader.await.unwrap();
        assert!(matches!(next, Some(Ok(Message::Close(_)))));
        out.close(CloseCode::Normal, "goodbye");
        let client_side = tokio::spawn(async move {
            let reply = client.next().await;
            let end = client.next().await;
            (reply, end)
        });
        let end = tokio::time::timeout(Duration::from_secs(5), conn.next()).await;
        assert!(
            matches!(end, Ok(None)),
            "ends once written and read: {end:?}"
        );
        drop(conn);
        let (reply, end) = client_side.await.unwrap();
        assert!(
            matches!(reply, Some(Ok(Message::Close(_)))),
            "the reply to the client's close: {reply:?}"
        );
        assert!(end.is_none(), "the close handshake completed");
    }

    /// A plain TCP connection with direct writes, and the client's end.
    async fn direct_pair(
        out: &Arc<Outbound>,
    ) -> (
        Connection<WebSocketStream<Conn>, ()>,
        WebSocketStream<TcpStream>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let connect = tokio::spawn(TcpStream::connect(listener.local_addr().unwrap()));
        let (tcp, _) = listener.accept().await.unwrap();
        let client = connect.await.unwrap().unwrap();
        let conn = Conn::new(tcp);
        let socket = conn.socket();
        let server = WebSocketStream::from_raw_socket(conn, Role::Server, None).await;
        let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let writer = Writer::new(out.clone(), Duration::from_secs(20)).direct(socket);
        (Connection::new(server, writer, ()), client)
    }

    fn payload(i: usize, len: usize) -> Bytes {
        (0..len)
            .map(|k| (i * 31 + k) as u8)
            .collect::<Vec<u8>>()
            .into()
    }

    #[tokio::test]
    async fn direct_writes_keep_every_frame_whole_through_a_full_socket() {
        let out = Outbound::new(64 << 20);
        let (mut conn, mut client) = direct_pair(&out).await;
        // Every header length (2, 4 and 10 bytes), more frames than one
        // vectored write takes, and far more bytes than the socket
        // buffers hold while the client is not reading yet: the batch is
        // written in pieces, some of them ending inside a frame.
        let mut sizes = vec![0, 1, 125, 126, 127, 65_535, 65_536, 300_000];
        sizes.extend(std::iter::repeat_n(1_000_000, 16));
        sizes.extend(std::iter::repeat_n(40, 3 * FRAMES_PER_WRITE));
        for (i, &len) in sizes.iter().enumerate() {
            out.push_reliable(payload(i, len)).unwrap();
            if i == 9 {
                out.push_ping();
            }
        }
        let server = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(item) = conn.next().await {
                got.push(item);
            }
            got
        });
        // A ping from the client while the server is mid-batch: its pong
        // must not land inside a frame.
        client
            .send(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
        let mut data = Vec::new();
        let mut pings = 0;
        let mut pong = false;
        while data.len() < sizes.len() || !pong {
            match client.next().await {
                Some(Ok(Message::Binary(b))) => data.push(b),
                Some(Ok(Message::Ping(p))) => {
                    assert!(p.is_empty());
                    assert_eq!(data.len(), 10, "the ping comes after frame 9");
                    pings += 1;
                }
                Some(Ok(Message::Pong(p))) => {
                    assert_eq!(&p[..], b"p");
                    pong = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(pings, 1);
        for (i, (got, &len)) in data.iter().zip(&sizes).enumerate() {
            assert!(got[..] == payload(i, len)[..], "frame {i} of {len} bytes");
        }
        // A small batch (a tick's frame) goes through the stack buffer.
        out.push_state(0, payload(7, 300));
        out.push_reliable(payload(8, 200)).unwrap();
        for (i, len) in [(7, 300), (8, 200)] {
            match client.next().await {
                Some(Ok(Message::Binary(b))) => assert!(b[..] == payload(i, len)[..]),
                other => panic!("expected frame {i}, got {other:?}"),
            }
        }
        out.close(CloseCode::Normal, "bye");
        let close = match client.next().await {
            Some(Ok(Message::Close(frame))) => frame,
            other => panic!("expected the close, got {other:?}"),
        };
        assert_eq!(close.map(|f| u16::from(f.code)), Some(1000));
        // The client answers the close; the server's connection then ends.
        assert!(client.next().await.is_none());
        let seen = tokio::time::timeout(Duration::from_secs(20), server)
            .await
            .unwrap()
            .unwrap();
        assert!(seen.iter().any(|m| matches!(m, Ok(Message::Close(_)))));
    }

    #[tokio::test]
    async fn after_a_short_read_the_next_message_still_wakes_the_reader() {
        let out = Outbound::new(1024);
        let (mut conn, mut client) = direct_pair(&out).await;
        // One message at a time, each sent only after the previous one was
        // read (every read is short and clears the readiness): each must
        // still wake the connection.
        for i in 0..50u8 {
            client
                .send(Message::Binary(vec![i; 20].into()))
                .await
                .unwrap();
            let got = tokio::time::timeout(Duration::from_secs(10), conn.next()).await;
            match got {
                Ok(Some(Ok(Message::Binary(b)))) => assert_eq!(&b[..], &[i; 20][..]),
                other => panic!("message {i}: {other:?}"),
            }
        }
        // A message and the end of the stream in one go: the message, then
        // the end (the close is the client's; the writer ends with the
        // session, which is not running here).
        client
            .send(Message::Binary(vec![9; 20].into()))
            .await
            .unwrap();
        let mut raw = client.into_inner();
        tokio::io::AsyncWriteExt::shutdown(&mut raw).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), conn.next()).await;
        assert!(matches!(got, Ok(Some(Ok(Message::Binary(_))))), "{got:?}");
        let end = tokio::time::timeout(Duration::from_secs(10), conn.next()).await;
        assert!(
            matches!(end, Ok(Some(Err(_)))),
            "the end of stream: {end:?}"
        );
    }

    #[tokio::test]
    async fn after_a_read_error_the_close_frame_is_still_written() {
        let out = Outbound::new(1024);
        let (mut conn, mut client) = pair(&out).await;
        // An unmasked frame from a client: a protocol error.
        let mut raw = client.into_inner();
        tokio::io::AsyncWriteExt::write_all(&mut raw, &[0x82, 0x01, 0x41])
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(2), conn.next()).await;
        assert!(matches!(first, Ok(Some(Err(_)))), "{first:?}");
        out.close(CloseCode::PolicyViolation, "bad frame");
        let end = tokio::time::timeout(Duration::from_secs(2), conn.next()).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
        client = WebSocketStream::from_raw_socket(raw, Role::Client, None).await;
        match client.next().await {
            Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1008),
            other => panic!("expected the close frame, got {other:?}"),
        }
    }
}
