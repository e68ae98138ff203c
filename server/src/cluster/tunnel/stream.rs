//! One stream between two shards, after its `open` was accepted: a
//! sending half with a bounded queue and its writer task, a receiving
//! half that reads whole frames, and the registry entry both count into.
//!
//! The sending half follows the client rule (see `outbound`): the queue
//! holds at most `stream_budget_bytes`; a **state** frame carries a key
//! and replaces a queued frame of the same key (latest wins) or, when it
//! does not fit, is dropped (counted, and the caller told, so it can send
//! a full state later); a **reliable** frame keeps its order and, when it
//! does not fit, resets the stream with [`ResetCode::Overflow`]: what was
//! queued is lost and the peer reads the reset's code. Nothing grows
//! without bound.
//!
//! ```text
//! send_state / send_reliable ──▶ Queue (≤ budget) ──Notify──▶ writer task ──▶ QUIC send stream
//! QUIC recv stream ──▶ recv(): header, length ≤ max_frame checked, payload ──▶ caller
//! ```

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use protocol::admin::{StreamDirection, StreamInfo};
use protocol::peer::{decode_payload, frame_header, frame_len, PeerMessage, ResetCode, LEN_PREFIX};
use quinn::{ReadError, ReadExactError, RecvStream, SendStream, VarInt, WriteError};
use thiserror::Error;
use tokio::sync::{watch, Notify};

use super::HubStats;
use crate::metrics as m;

/// A stream's counters, shared by its halves, its writer task and (weakly)
/// the hub's stream registry: the entry leaves the registry when the last
/// of them is gone.
pub(super) struct StreamEntry {
    pub id: u64,
    pub peer: String,
    pub protocol: String,
    pub direction: StreamDirection,
    pub opened: Instant,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    frames_in: AtomicU64,
    frames_out: AtomicU64,
    queued_frames: AtomicUsize,
    queued_bytes: AtomicUsize,
    peer_totals: Arc<PeerTotals>,
    metric_in: metrics::Counter,
    metric_out: metrics::Counter,
}

/// A peer's traffic over all its streams (frames with their length
/// prefixes, the control stream included) and its last RTT.
#[derive(Default)]
pub(super) struct PeerTotals {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Microseconds; 0 until the first heartbeat came back.
    pub rtt_us: AtomicU64,
}

impl PeerTotals {
    pub fn count_in(&self, peer: &str, frame_bytes: usize) {
        self.bytes_in.fetch_add(frame_bytes as u64, Relaxed);
        metrics::counter!(m::PEER_BYTES, "peer" => peer.to_string(), "dir" => "in")
            .increment(frame_bytes as u64);
    }

    pub fn count_out(&self, peer: &str, frame_bytes: usize) {
        self.bytes_out.fetch_add(frame_bytes as u64, Relaxed);
        metrics::counter!(m::PEER_BYTES, "peer" => peer.to_string(), "dir" => "out")
            .increment(frame_bytes as u64);
    }
}

impl StreamEntry {
    pub fn new(
        id: u64,
        peer: &str,
        protocol: &str,
        direction: StreamDirection,
        peer_totals: Arc<PeerTotals>,
    ) -> StreamEntry {
        StreamEntry {
            id,
            peer: peer.to_string(),
            protocol: protocol.to_string(),
            direction,
            opened: Instant::now(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            queued_frames: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            peer_totals,
            metric_in: metrics::counter!(m::PEER_BYTES, "peer" => peer.to_string(), "dir" => "in"),
            metric_out: metrics::counter!(m::PEER_BYTES, "peer" => peer.to_string(), "dir" => "out"),
        }
    }

    fn count_in(&self, payload: usize) {
        let frame = (LEN_PREFIX + payload) as u64;
        self.bytes_in.fetch_add(payload as u64, Relaxed);
        self.frames_in.fetch_add(1, Relaxed);
        self.peer_totals.bytes_in.fetch_add(frame, Relaxed);
        self.metric_in.increment(frame);
    }

    fn count_out(&self, payload: usize) {
        let frame = (LEN_PREFIX + payload) as u64;
        self.bytes_out.fetch_add(payload as u64, Relaxed);
        self.frames_out.fetch_add(1, Relaxed);
        self.peer_totals.bytes_out.fetch_add(frame, Relaxed);
        self.metric_out.increment(frame);
    }

    /// The registry row (byte counts are payload bytes, without length
    /// prefixes: what the callers sent and received).
    pub fn info(&self) -> StreamInfo {
        StreamInfo {
            id: self.id,
            peer: self.peer.clone(),
            protocol: self.protocol.clone(),
            direction: self.direction,
            age_ms: self.opened.elapsed().as_millis() as u64,
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            frames_in: self.frames_in.load(Relaxed),
            frames_out: self.frames_out.load(Relaxed),
            queued_frames: self.queued_frames.load(Relaxed),
            queued_bytes: self.queued_bytes.load(Relaxed),
        }
    }
}

/// Why a stream cannot be used (any more).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum StreamError {
    /// Reset, by this side or the peer, with a code ([`ResetCode`] when
    /// known).
    #[error("stream reset: {}", reset_name(*.0))]
    Reset(u32),
    /// This side closed its sending half.
    #[error("stream closed")]
    Closed,
    /// A frame over the maximum size: not sent (this side), or the stream
    /// broken off (the peer's).
    #[error("frame of {len} bytes is over the limit of {max}")]
    TooLarge { len: u64, max: u32 },
    /// The peer sent bytes that are not a frame of this stream.
    #[error("bad frame from the peer: {0}")]
    BadFrame(String),
    /// The connection under the stream is gone.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
}

fn reset_name(code: u32) -> &'static str {
    ResetCode::from_u32(code).map_or("unknown code", ResetCode::name)
}

impl StreamError {
    /// The reset's code, when this is a reset with a known one.
    pub fn reset_code(&self) -> Option<ResetCode> {
        match self {
            StreamError::Reset(code) => ResetCode::from_u32(*code),
            _ => None,
        }
    }
}

/// What became of a state frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatePush {
    /// Queued behind what was there.
    Queued,
    /// It replaced a queued frame of the same key (latest wins).
    Replaced,
    /// It did not fit the budget and was dropped: the peer misses this
    /// state until a later one (send a full state when it matters).
    Dropped,
}

struct Item {
    /// `Some` for a state frame.
    key: Option<u64>,
    payload: Bytes,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Send what is queued, then finish.
    Closing,
    /// Reset with this code; the queue was dropped.
    Reset(u32),
}

struct Queue {
    items: VecDeque<Item>,
    bytes: usize,
    phase: Phase,
}

/// The state shared by the sender handles and the writer task.
struct SendShared {
    queue: Mutex<Queue>,
    wake: Notify,
    entry: Arc<StreamEntry>,
    budget: usize,
    max_frame: u32,
    stats: Arc<HubStats>,
}

impl SendShared {
    fn publish_depth(&self, q: &Queue) {
        self.entry.queued_frames.store(q.items.len(), Relaxed);
        self.entry.queued_bytes.store(q.bytes, Relaxed);
    }

    fn check(&self, payload: &Bytes, q: &Queue) -> Result<(), StreamError> {
        match q.phase {
            Phase::Open => {}
            Phase::Closing => return Err(StreamError::Closed),
            Phase::Reset(code) => return Err(StreamError::Reset(code)),
        }
        frame_header(payload.len(), self.max_frame).map_err(|_| StreamError::TooLarge {
            len: payload.len() as u64,
            max: self.max_frame,
        })?;
        Ok(())
    }

    fn reset(&self, q: &mut Queue, code: ResetCode) {
        if matches!(q.phase, Phase::Reset(_)) {
            return;
        }
        q.items.clear();
        q.bytes = 0;
        q.phase = Phase::Reset(code.as_u32());
        self.publish_depth(q);
        self.stats.count_reset(code);
        self.wake.notify_one();
    }
}

/// The sending half of a stream. Clones share one queue; when the last
/// clone is dropped, what is queued is sent and the stream finished.
#[derive(Clone)]
pub struct StreamSender {
    guard: Arc<SenderGuard>,
}

struct SenderGuard(Arc<SendShared>);

impl Drop for SenderGuard {
    fn drop(&mut self) {
        let shared = &self.0;
        let mut q = shared.queue.lock();
        if q.phase == Phase::Open {
            q.phase = Phase::Closing;
        }
        shared.wake.notify_one();
    }
}

impl StreamSender {
    fn shared(&self) -> &SendShared {
        &self.guard.0
    }

    /// Queue a frame that must arrive, in order with the other reliable
    /// frames. Over the budget the stream is reset ([`ResetCode::Overflow`])
    /// and this and every later send fail.
    pub fn send_reliable(&self, payload: Bytes) -> Result<(), StreamError> {
        let shared = self.shared();
        let mut q = shared.queue.lock();
        shared.check(&payload, &q)?;
        if q.bytes + payload.len() > shared.budget {
            shared.reset(&mut q, ResetCode::Overflow);
            tracing::warn!(
                peer = %shared.entry.peer,
                protocol = %shared.entry.protocol,
                budget = shared.budget,
                "peer stream over its budget with reliable frames: reset"
            );
            return Err(StreamError::Reset(ResetCode::Overflow.as_u32()));
        }
        q.bytes += payload.len();
        q.items.push_back(Item { key: None, payload });
        shared.publish_depth(&q);
        drop(q);
        shared.wake.notify_one();
        Ok(())
    }

    /// Queue a state frame: it replaces a queued frame with the same `key`
    /// (in that frame's place), or is dropped when it does not fit.
    pub fn send_state(&self, key: u64, payload: Bytes) -> Result<StatePush, StreamError> {
        let shared = self.shared();
        let mut q = shared.queue.lock();
        shared.check(&payload, &q)?;
        let len = payload.len();
        let outcome = if let Some(i) = q.items.iter().position(|it| it.key == Some(key)) {
            let old = q.items[i].payload.len();
            if q.bytes - old + len > shared.budget {
                // Even in place the newer one does not fit: keep neither
                // half-way, drop the newer one (the older one still says
                // something true, if late).
                StatePush::Dropped
            } else {
                q.bytes = q.bytes - old + len;
                q.items[i].payload = payload;
                StatePush::Replaced
            }
        } else if q.bytes + len > shared.budget {
            StatePush::Dropped
        } else {
            q.bytes += len;
            q.items.push_back(Item {
                key: Some(key),
                payload,
            });
            StatePush::Queued
        };
        shared.publish_depth(&q);
        drop(q);
        match outcome {
            StatePush::Queued => shared.wake.notify_one(),
            StatePush::Replaced => shared.stats.count_coalesced(),
            StatePush::Dropped => shared.stats.count_state_dropped(),
        }
        Ok(outcome)
    }

    /// Encode and send a typed message reliably.
    pub fn send_msg<T: PeerMessage>(&self, msg: &T) -> Result<(), StreamError> {
        self.send_reliable(Bytes::from(protocol::peer::encode_payload(msg)))
    }

    /// Send what is queued, then finish the stream (the peer reads its
    /// end after the last frame).
    pub fn close(&self) {
        let shared = self.shared();
        let mut q = shared.queue.lock();
        if q.phase == Phase::Open {
            q.phase = Phase::Closing;
        }
        drop(q);
        shared.wake.notify_one();
    }

    /// Drop what is queued and reset the stream with `code`.
    pub fn reset(&self, code: ResetCode) {
        let shared = self.shared();
        let mut q = shared.queue.lock();
        shared.reset(&mut q, code);
    }

    /// Frames and bytes waiting to be written.
    pub fn queued(&self) -> (usize, usize) {
        let q = self.shared().queue.lock();
        (q.items.len(), q.bytes)
    }
}

enum Next {
    Write(Bytes),
    Wait,
    Finish,
    Reset(u32),
}

/// The writer task: one frame at a time from the queue to the stream, so
/// a blocked write (the peer reads slowly: QUIC flow control) leaves every
/// later frame in the queue, where the budget and latest-wins apply.
async fn write_loop(
    shared: Arc<SendShared>,
    mut send: SendStream,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let next = {
            let mut q = shared.queue.lock();
            match q.phase {
                Phase::Reset(code) => Next::Reset(code),
                Phase::Open | Phase::Closing => match q.items.pop_front() {
                    Some(item) => {
                        q.bytes -= item.payload.len();
                        shared.publish_depth(&q);
                        Next::Write(item.payload)
                    }
                    None if q.phase == Phase::Closing => Next::Finish,
                    None => Next::Wait,
                },
            }
        };
        match next {
            Next::Wait => {
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    // The hub shuts down while the stream idles: do not
                    // keep shutdown waiting for its owner to drop it.
                    _ = stop.wait_for(|s| *s) => {
                        let _ = send.reset(VarInt::from_u32(ResetCode::ShuttingDown.as_u32()));
                        return;
                    }
                }
            }
            Next::Finish => {
                let _ = send.finish();
                return;
            }
            Next::Reset(code) => {
                let _ = send.reset(VarInt::from_u32(code));
                return;
            }
            Next::Write(payload) => {
                let len = payload.len();
                // Checked against max_frame when queued.
                let Ok(header) = frame_header(len, u32::MAX) else {
                    continue;
                };
                let mut chunks = [Bytes::copy_from_slice(&header), payload];
                if let Err(err) = send.write_all_chunks(&mut chunks).await {
                    let mut q = shared.queue.lock();
                    q.items.clear();
                    q.bytes = 0;
                    q.phase = Phase::Reset(match err {
                        WriteError::Stopped(code) => code.into_inner() as u32,
                        _ => ResetCode::Closed.as_u32(),
                    });
                    shared.publish_depth(&q);
                    return;
                }
                shared.entry.count_out(len);
            }
        }
    }
}

/// The receiving half of a stream.
pub struct StreamReceiver {
    recv: RecvStream,
    /// What was read from the stream and not returned yet: the rest of
    /// the last chunk QUIC handed out.
    buffered: Bytes,
    entry: Arc<StreamEntry>,
    max_frame: u32,
}

impl StreamReceiver {
    /// The next frame's payload; `None` once the peer finished the
    /// stream. Not cancel-safe (a frame read half-way is lost): call it
    /// from one task, not from a `select!` arm that may lose the race.
    ///
    /// The stream is read a chunk at a time (`read_chunk`: what a packet
    /// carried, without a copy), and a frame that lies within one chunk,
    /// as a tick or an input batch does, is a slice of it: no buffer to
    /// zero and fill, and one read of the stream instead of two.
    pub async fn recv(&mut self) -> Option<Result<Bytes, StreamError>> {
        let header = match self.take(LEN_PREFIX).await {
            Ok(header) => header,
            Err(ReadExactError::FinishedEarly(0)) => return None,
            Err(err) => return Some(Err(read_error(err))),
        };
        let header: [u8; LEN_PREFIX] = header[..]
            .try_into()
            .expect("take returns exactly the bytes asked for");
        let len = match frame_len(header, self.max_frame) {
            Ok(len) => len,
            Err(_) => {
                let _ = self
                    .recv
                    .stop(VarInt::from_u32(ResetCode::BadFrame.as_u32()));
                return Some(Err(StreamError::TooLarge {
                    len: u64::from(u32::from_be_bytes(header)),
                    max: self.max_frame,
                }));
            }
        };
        // Gathered (when it spans chunks) only after the length was
        // checked.
        let payload = match self.take(len).await {
            Ok(payload) => payload,
            Err(err) => return Some(Err(read_error(err))),
        };
        self.entry.count_in(len);
        Some(Ok(payload))
    }

    /// The stream's next `n` bytes: a slice of one chunk when it holds
    /// them, else gathered from several. `FinishedEarly(k)`: the stream
    /// ended after `k` of them.
    async fn take(&mut self, n: usize) -> Result<Bytes, ReadExactError> {
        if self.buffered.len() >= n {
            return Ok(self.buffered.split_to(n));
        }
        let mut gathered = BytesMut::new();
        if !self.buffered.is_empty() {
            gathered.reserve(n);
            gathered.extend_from_slice(&std::mem::take(&mut self.buffered));
        }
        loop {
            let mut chunk = match self.recv.read_chunk(usize::MAX, true).await {
                Ok(Some(chunk)) => chunk.bytes,
                Ok(None) => return Err(ReadExactError::FinishedEarly(gathered.len())),
                Err(err) => return Err(ReadExactError::ReadError(err)),
            };
            let want = n - gathered.len();
            if chunk.len() > want {
                self.buffered = chunk.split_off(want);
            }
            if gathered.is_empty() && chunk.len() == n {
                return Ok(chunk);
            }
            if gathered.capacity() == 0 {
                gathered.reserve(n);
            }
            gathered.extend_from_slice(&chunk);
            if gathered.len() == n {
                return Ok(gathered.freeze());
            }
        }
    }

    /// The next frame decoded as `T`; a frame that is not one is an error
    /// (and stops the stream).
    pub async fn recv_msg<T: PeerMessage>(&mut self) -> Option<Result<T, StreamError>> {
        let payload = match self.recv().await? {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        Some(decode_payload(&payload, self.max_frame).map_err(|e| {
            let _ = self
                .recv
                .stop(VarInt::from_u32(ResetCode::BadFrame.as_u32()));
            StreamError::BadFrame(e.to_string())
        }))
    }
}

fn read_error(err: ReadExactError) -> StreamError {
    match err {
        ReadExactError::FinishedEarly(n) => {
            StreamError::BadFrame(format!("stream ended inside a frame ({n} bytes of it)"))
        }
        ReadExactError::ReadError(ReadError::Reset(code)) => {
            StreamError::Reset(code.into_inner() as u32)
        }
        ReadExactError::ReadError(ReadError::ConnectionLost(e)) => {
            StreamError::ConnectionLost(e.to_string())
        }
        ReadExactError::ReadError(other) => StreamError::ConnectionLost(other.to_string()),
    }
}

/// An open stream: who it is with, for what, and its two halves.
pub struct PeerStream {
    pub peer: String,
    pub protocol: String,
    pub tx: StreamSender,
    pub rx: StreamReceiver,
}

/// What [`PeerStream`]s are built with.
pub(super) struct StreamParts {
    pub entry: Arc<StreamEntry>,
    pub budget: usize,
    pub max_frame: u32,
    pub stats: Arc<HubStats>,
    /// The hub's shutdown signal.
    pub stop: watch::Receiver<bool>,
}

impl PeerStream {
    /// Wrap an accepted QUIC stream; the writer future is returned for the
    /// hub to spawn where shutdown can wait for it.
    pub(super) fn new(
        parts: StreamParts,
        send: SendStream,
        recv: RecvStream,
    ) -> (
        PeerStream,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let shared = Arc::new(SendShared {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                phase: Phase::Open,
            }),
            wake: Notify::new(),
            entry: parts.entry.clone(),
            budget: parts.budget,
            max_frame: parts.max_frame,
            stats: parts.stats,
        });
        let stream = PeerStream {
            peer: parts.entry.peer.clone(),
            protocol: parts.entry.protocol.clone(),
            tx: StreamSender {
                guard: Arc::new(SenderGuard(shared.clone())),
            },
            rx: StreamReceiver {
                recv,
                buffered: Bytes::new(),
                entry: parts.entry,
                max_frame: parts.max_frame,
            },
        };
        (stream, write_loop(shared, send, parts.stop))
    }
}
