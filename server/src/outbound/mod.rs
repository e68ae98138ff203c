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
//! A connection that stands still holds no frame buffers: the session's
//! housekeeping asks [`Outbound::trim_idle`] once a second, and a queue
//! that got nothing since the last time gives its capacity back, and the
//! writer its batch's (an idle connection's memory is counted in
//! BENCHMARKS.md, issue 12).
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
//! A frame pushed while the socket is free is written at once by the
//! pusher ("immediate" writes): when the queue is empty and the connection
//! has left the socket with nothing half-written (its writer idle,
//! tungstenite's own replies flushed), [`Outbound::push_state`] and the
//! other pushes write the frame with one `send` from the pushing thread (a
//! room's tick, usually) under the queue's lock, which the connection also
//! takes before it writes to the socket (reading it, with nothing owed to
//! the client, takes neither the lock nor the socket: a connection woken
//! by a client's frame with nothing queued does not touch the queue's
//! lock, only its `attention` flag). The session's task is then not woken
//! at all for that frame: no wake-up, no actor context poll, no batch; the
//! floor's single task per socket pays none of those either. A frame the
//! socket does not take whole is queued (its written part noted) and the
//! connection, woken, writes the rest first, so frames never interleave;
//! a socket that is not writable just queues as before. Plain TCP only:
//! a TLS connection's frames always go through its writer. A room's tick
//! makes at most `rooms.immediate_writes_per_tick` of them (see
//! `budget.rs`); the rest are queued for their sessions to write.
//!
//! The socket itself is a [`Conn`]: the WebSocket reads and writes through
//! it, and a [`Socket`] handle to the same TCP stream lets the close path
//! half-close it after the close frame and drain it after the WebSocket
//! stream gave up (a frame over the limit leaves its payload unread), so
//! that closing never resets a connection with input still unread and the
//! close frame is not lost (PROTOCOL.md, lifecycle rule 7).
//!
//! # Files
//!
//! - `mod.rs`: the [`Outbound`] queue (budget, epochs, resync flag) and
//!   the frames it holds.
//! - `writer.rs`: the [`Writer`] that drains a queue into the socket
//!   (direct writes or tungstenite's sink), and the [`Connection`] that
//!   reads and writes one socket from one task.
//! - `socket.rs`: [`Conn`], the TCP stream the WebSocket runs on, and the
//!   [`Socket`] handle of the close path.
//! - `budget.rs`: the per-thread budget of immediate writes a tick opens.

mod budget;
mod socket;
mod writer;

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use protocol::CloseCode;

use crate::metrics as m;

pub use budget::{immediate_budget, BudgetGuard};
pub use socket::{Conn, Socket};
pub use writer::{run_writer, Connection, Writer};

enum Frame {
    State(Bytes),
    Reliable(Bytes),
    Ping,
}

impl Frame {
    /// The frame's opcode and payload, borrowed.
    fn wire(&self) -> Wire<'_> {
        match self {
            Frame::State(b) | Frame::Reliable(b) => Wire::binary(b),
            Frame::Ping => Wire {
                opcode: 0x9,
                body: &[],
            },
        }
    }

    /// The frame's payload.
    fn body(&self) -> &[u8] {
        self.wire().body
    }

    /// See [`Wire::header`].
    fn header(&self, head: &mut [u8; MAX_HEADER]) -> usize {
        self.wire().header(head)
    }

    /// See [`Wire::len`].
    fn wire_len(&self) -> usize {
        self.wire().len()
    }
}

/// What a frame puts on the wire: its opcode and payload, borrowed, so
/// that an immediate write needs no [`Frame`] (nor a clone of a shared
/// payload) unless the frame ends up queued.
#[derive(Clone, Copy)]
struct Wire<'a> {
    opcode: u8,
    body: &'a [u8],
}

impl<'a> Wire<'a> {
    fn binary(body: &'a [u8]) -> Wire<'a> {
        Wire { opcode: 0x2, body }
    }

    /// The WebSocket header of this frame from the server (unmasked, one
    /// fragment) into `head`; returns its length.
    fn header(&self, head: &mut [u8; MAX_HEADER]) -> usize {
        let len = self.body.len();
        head[0] = 0x80 | self.opcode;
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
    fn len(&self) -> usize {
        let len = self.body.len();
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

/// A queue or a writer's batch keeps room for this many frames once
/// drained: a few ticks' frames, the common case, need no allocation; a
/// burst's larger capacity is given back (about 40 bytes a frame; at the
/// join ramp's peak a connection could otherwise keep kilobytes of it).
const KEEP_FRAMES: usize = 16;

/// How many flushes a writer counts before it adds them to the shared
/// counters (an atomic add each), and at its end.
const COUNT_EVERY: u64 = 16;

/// Frames of up to this many bytes on the wire are written at once by the
/// pusher when the socket is free; larger ones go through the writer.
const IMMEDIATE_MAX: usize = 64 * 1024;

struct Queue {
    frames: VecDeque<Frame>,
    bytes: usize,
    /// State frames were dropped since the last full update.
    resync: bool,
    /// Set once: the close frame to send after what is queued (`None` code:
    /// end without a close frame, like a dropped connection). Boxed: every
    /// connection's queue is 24 bytes smaller for what is set at its end.
    close: Option<Box<(Option<CloseCode>, String)>>,
    /// The current room membership; frames of older ones are refused.
    room_epoch: u64,
    /// Something was queued since the last [`Outbound::trim_idle`].
    pushed: bool,
    /// The socket is free for an immediate write (see the module docs):
    /// set by the connection when it leaves the socket idle, cleared when
    /// it touches it again.
    free: bool,
    /// Frames written immediately and not yet added to the shared
    /// counters.
    uncounted: u8,
    /// Bytes of the first queued frame already on the wire (an immediate
    /// write the socket took in part).
    head_written: u32,
    /// The connection's socket, for the writer's half-close and immediate
    /// writes; taken when the writer ends, so that rooms holding this queue
    /// (a held seat) do not keep the connection open.
    socket: Option<Socket>,
}

/// What an immediate write did.
enum Immediate {
    /// Not written: the socket is not free, or frames are queued.
    No,
    /// The whole frame is on the wire.
    Sent,
    /// Only this many bytes are.
    Part(usize),
}

impl Queue {
    /// Write `frame` now if the socket is free and nothing waits before it
    /// (see the module docs). Called under the queue's lock.
    fn write_now(&mut self, frame: Wire<'_>) -> Immediate {
        if !self.free || !self.frames.is_empty() {
            return Immediate::No;
        }
        let Some(socket) = &self.socket else {
            return Immediate::No;
        };
        let wire = frame.len();
        if wire > IMMEDIATE_MAX || !budget::take() {
            return Immediate::No;
        }
        let mut head = [0u8; MAX_HEADER];
        let head_len = frame.header(&mut head);
        let head = &head[..head_len];
        // Straight to the socket, not through tokio's readiness check
        // (`try_write`): that reads the socket's readiness word, a cache
        // miss per member per tick, and only saves a `send` that would
        // fail. A write that does fail leaves tokio's readiness stale; the
        // writer's next write through tokio then fails too, clears it and
        // waits for the socket as usual.
        let sock = socket2::SockRef::from(&*socket.0);
        let sent = if wire <= SMALL_WRITE {
            // A tick's frame: copied once, sent with `send` (see
            // `writer::write_direct`).
            let mut buf = [0u8; SMALL_WRITE];
            buf[..head.len()].copy_from_slice(head);
            buf[head.len()..wire].copy_from_slice(frame.body);
            sock.send(&buf[..wire])
        } else {
            let slices = [io::IoSlice::new(head), io::IoSlice::new(frame.body)];
            sock.send_vectored(&slices)
        };
        match sent {
            Ok(n) if n >= wire => {
                self.count_immediate();
                Immediate::Sent
            }
            Ok(n) => {
                self.free = false;
                if n == 0 {
                    Immediate::No
                } else {
                    Immediate::Part(n)
                }
            }
            // Not writable, or failed: the writer queues, waits and finds
            // out as usual (see above).
            Err(_) => {
                self.free = false;
                Immediate::No
            }
        }
    }

    fn count_immediate(&mut self) {
        self.uncounted += 1;
        if u64::from(self.uncounted) >= COUNT_EVERY {
            self.publish_counts();
        }
    }

    fn publish_counts(&mut self) {
        let frames = u64::from(std::mem::take(&mut self.uncounted));
        if frames > 0 {
            let (sent, flushes, immediate) = writer::counters();
            sent.increment(frames);
            flushes.increment(frames);
            immediate.increment(frames);
        }
    }

    /// Queue `frame` after an immediate write that did not take it whole
    /// (or at all): the connection writes it, from where the socket left
    /// it, before anything else.
    fn queue_after(&mut self, tried: Immediate, frame: Frame) {
        if let Immediate::Part(n) = tried {
            self.head_written = n as u32;
        }
        self.bytes += frame.body().len();
        self.pushed = true;
        self.frames.push_back(frame);
    }

    /// Drop every queued frame but one partly on the wire (which must be
    /// finished before a close frame may follow).
    fn clear_frames(&mut self) {
        if self.head_written > 0 {
            self.frames.truncate(1);
            self.bytes = self.frames.front().map_or(0, |f| f.body().len());
        } else {
            self.frames.clear();
            self.bytes = 0;
        }
    }
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
    /// Something for the connection to look at (a frame queued, a close,
    /// a trim) since its last look, which cleared it; set before every
    /// wake-up. While it is clear, the waker the connection registered
    /// then is still there (a wake-up takes it), so the connection's
    /// next poll needs neither the lock nor a new registration: a read
    /// with nothing to write costs one load (see [`Outbound::poll_batch`]).
    attention: AtomicBool,
    /// `Queue::resync`, readable without the lock: a room asks every
    /// member each tick, and almost always the answer is no.
    resync_due: AtomicBool,
    budget: usize,
    /// The queue was trimmed: the writer gives its batch's capacity back at
    /// its next poll with nothing to write.
    trim_batch: AtomicBool,
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
                pushed: false,
                free: false,
                uncounted: 0,
                head_written: 0,
                socket: None,
            }),
            wake: AtomicWaker::new(),
            attention: AtomicBool::new(false),
            resync_due: AtomicBool::new(false),
            budget,
            trim_batch: AtomicBool::new(false),
        })
    }

    /// A queue for the connection on `socket`.
    pub fn for_socket(budget: usize, socket: Socket) -> Arc<Outbound> {
        let out = Outbound::new(budget);
        out.queue.lock().socket = Some(socket);
        out
    }

    /// The connection's socket, while its writer runs.
    pub fn socket(&self) -> Option<Socket> {
        self.queue.lock().socket.clone()
    }

    /// The writer is done: no more writes, immediate or not; the socket is
    /// handed back (for a half-close) and the queue's counts published.
    fn take_socket(&self) -> Option<Socket> {
        let mut q = self.queue.lock();
        q.free = false;
        q.publish_counts();
        q.socket.take()
    }

    /// The connection leaves the socket with nothing half-written and
    /// tungstenite flushed: pushers may write to it at once until
    /// [`Outbound::poll_batch`] takes it back (when there is something to
    /// write, or before a read that may write). Whether it was lent.
    fn free_socket(&self) -> bool {
        let mut q = self.queue.lock();
        if q.close.is_none() && q.socket.is_some() {
            q.free = true;
        }
        q.free
    }

    /// Wake the connection to look at its queue.
    fn notify(&self) {
        // Before the wake-up, which takes the registered waker: a poll
        // that finds the flag clear knows its waker is still registered.
        self.attention.store(true, Ordering::Release);
        self.wake.wake();
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
    ///
    /// The frame is borrowed: a frame shared by many members (one `Bytes`
    /// behind them all) is cloned only for those whose socket does not
    /// take it at once.
    pub fn push_state(&self, epoch: u64, frame: &Bytes) -> bool {
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
        let tried = q.write_now(Wire::binary(frame));
        if let Immediate::Sent = tried {
            return true;
        }
        q.queue_after(tried, Frame::State(frame.clone()));
        drop(q);
        self.notify();
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
            q.clear_frames();
            q.close = Some(Box::new((
                Some(CloseCode::SlowConsumer),
                "outbound budget exceeded".into(),
            )));
            drop(q);
            metrics::counter!(m::OUTBOUND_DROPPED, "class" => "reliable").increment(1);
            metrics::counter!(m::SESSIONS_CLOSED, "code" => "4005").increment(1);
            self.notify();
            return Err(PushError::Overflow);
        }
        let tried = q.write_now(Wire::binary(&frame));
        if let Immediate::Sent = tried {
            return Ok(());
        }
        q.queue_after(tried, Frame::Reliable(frame));
        drop(q);
        self.notify();
        Ok(())
    }

    pub fn push_ping(&self) {
        let mut q = self.queue.lock();
        if q.close.is_none() {
            let tried = q.write_now(Frame::Ping.wire());
            if let Immediate::Sent = tried {
                return;
            }
            q.queue_after(tried, Frame::Ping);
            drop(q);
            self.notify();
        }
    }

    /// Send what is queued, then a close frame with `code`, then end the
    /// writer. Only the first close counts.
    pub fn close(&self, code: CloseCode, reason: &str) {
        let mut q = self.queue.lock();
        if q.close.is_none() {
            q.close = Some(Box::new((Some(code), reason.to_string())));
            drop(q);
            metrics::counter!(m::SESSIONS_CLOSED, "code" => code.as_u16().to_string()).increment(1);
            self.notify();
        }
    }

    /// End the connection at once, without a close frame (fault injection:
    /// what a pulled cable looks like to the client).
    pub fn abort(&self) {
        let mut q = self.queue.lock();
        if q.close.is_none() {
            q.clear_frames();
            q.close = Some(Box::new((None, String::new())));
            drop(q);
            self.notify();
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

    /// Give an idle connection's buffers back: when nothing was queued
    /// since the last call and nothing waits, the queue's capacity now, and
    /// the writer's batch at its next poll (woken for it). The session's
    /// housekeeping calls this once a second, so a connection that stands
    /// still holds no frame buffers (two of 160 bytes each after any
    /// frame: 4 % of an idle connection's memory), while one that receives
    /// frames every tick keeps them and never reallocates.
    pub fn trim_idle(&self) {
        let mut q = self.queue.lock();
        let idle = !std::mem::take(&mut q.pushed) && q.frames.is_empty() && q.close.is_none();
        if !idle || q.frames.capacity() == 0 {
            return;
        }
        q.frames = VecDeque::new();
        drop(q);
        self.trim_batch.store(true, Ordering::Relaxed);
        self.notify();
    }

    /// The writer's side of [`Outbound::trim_idle`]: whether it should give
    /// its batch's capacity back now.
    fn take_trim(&self) -> bool {
        self.trim_batch.load(Ordering::Relaxed) && self.trim_batch.swap(false, Ordering::Relaxed)
    }

    pub fn queued_bytes(&self) -> usize {
        self.queue.lock().bytes
    }

    /// Everything ready now (with `written`, the bytes of its first frame
    /// already on the wire), or the close once the queue is empty;
    /// `Pending` (and a wake-up when something is queued) when there is
    /// nothing. The connection is about to use the socket: it is no longer
    /// free for immediate writes.
    ///
    /// `registered` is the caller's note of the waker it registered (its
    /// data pointer, which tells a task's wakers apart; 0 for none), `lent`
    /// whether it lent the socket. When that is this poll's waker and
    /// nothing called for attention since, nothing was queued: `Pending`
    /// at the cost of one load, and the socket stays lent to pushers
    /// (reading a data frame writes nothing; before a read that may write,
    /// the connection forgets `registered`, so this takes the socket
    /// back, with whatever a pusher left half-written).
    fn poll_batch(
        &self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Frame>,
        written: &mut usize,
        registered: &mut usize,
        lent: &mut bool,
    ) -> Poll<Option<(Option<CloseCode>, String)>> {
        let waker = cx.waker().data() as usize;
        if *registered == waker && !self.attention.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        // Cleared, then registered, then looked: a push after the look
        // sets the flag again and wakes this waker.
        self.attention.store(false, Ordering::Relaxed);
        self.wake.register(cx.waker());
        // Kept only when this look finds nothing: after a batch, the next
        // poll looks again (for the close that waits behind it).
        *registered = 0;
        let mut q = self.queue.lock();
        q.free = false;
        *lent = false;
        if !q.frames.is_empty() {
            batch.extend(q.frames.drain(..));
            q.bytes = 0;
            *written = std::mem::take(&mut q.head_written) as usize;
            // A burst (the join ramp, a slow moment) must not leave its
            // capacity with every connection for good.
            if q.frames.capacity() > KEEP_FRAMES {
                q.frames.shrink_to(KEEP_FRAMES);
            }
            return Poll::Ready(None);
        }
        match &q.close {
            Some(close) => Poll::Ready(Some((**close).clone())),
            None => {
                *registered = waker;
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests;
