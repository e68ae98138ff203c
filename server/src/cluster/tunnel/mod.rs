//! The peer hub: one authenticated, encrypted, multiplexed QUIC connection
//! per pair of shards, streams opened by protocol name, registries of
//! listeners, streams and peers, heartbeats that measure RTT, and flow
//! control on every outgoing stream. The wire format is
//! `protocol::peer` (PEER.md).
//!
//! # Layout
//!
//! - this file: [`PeerHub`] (start, `listen`, `open`, `snapshot`,
//!   `shutdown`), the [`Resolver`] seam the directory implements, and the
//!   hub's counters.
//! - [`settings`]: [`TunnelSettings`] (every limit, with defaults) and
//!   [`TunnelError`].
//! - `tls`: the QUIC endpoint, a self-signed certificate per start.
//! - `handshake`: hello / proof / refuse on a connection's control stream.
//! - `peers`: the peer table, dialling and redialling with backoff, one
//!   connection per pair, each connection's task (heartbeats, incoming
//!   streams routed to listeners).
//! - [`stream`]: [`PeerStream`]: a bounded sending queue (state frames
//!   latest-wins, reliable frames in order, reset on overflow) and a
//!   receiver of whole frames.
//!
//! ```text
//! PeerHub ─┬─ endpoint (UDP) ── accept loop ── handshake ── admit ─┐
//!          ├─ open(peer, proto) ── connector (resolve, dial, backoff) ─┤
//!          │                                                          ▼
//!          │                      connection task per peer: control stream
//!          │                      (ping/pong → RTT), accept_bi → `open` →
//!          │                      listener registry → Receiver<PeerStream>
//!          └─ tasks: every task spawned here; shutdown() waits for them
//! ```
//!
//! Which of two simultaneous dials survives: the connection dialled by
//! the lower shard id (string order); when both were dialled by the same
//! side, the newer (the older one is from before a restart). Both ends
//! apply the same rule, so they keep the same connection.

mod connection;
mod handshake;
mod peers;
pub mod settings;
pub mod stream;
mod tls;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use protocol::admin::{Peers, RefusalInfo, RefusedBy};
use protocol::peer::{RefuseCode, ResetCode};
use protocol::Version;
use quinn::{Endpoint, VarInt};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

pub use settings::{TunnelError, TunnelSettings, MIN_SECRET_BYTES};
pub use stream::{PeerStream, StatePush, StreamError, StreamReceiver, StreamSender};

use crate::metrics as m;
use peers::PeerSlot;
use stream::StreamEntry;

/// Where a shard's tunnel listens. The directory implements it
/// ([`super::peering::DirectoryResolver`]); tests
/// use [`StaticResolver`].
pub trait Resolver: Send + Sync + 'static {
    /// The address of `shard_id`'s tunnel, or `None` when the shard is not
    /// (or no longer) in the cluster: the hub stops dialling it.
    fn resolve<'a>(
        &'a self,
        shard_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<SocketAddr>> + Send + 'a>>;
}

/// A resolver from a map that can be changed while the hub runs.
#[derive(Default)]
pub struct StaticResolver(RwLock<HashMap<String, SocketAddr>>);

impl StaticResolver {
    pub fn new() -> StaticResolver {
        StaticResolver::default()
    }

    pub fn set(&self, shard_id: &str, addr: SocketAddr) {
        self.0.write().insert(shard_id.to_string(), addr);
    }

    pub fn remove(&self, shard_id: &str) {
        self.0.write().remove(shard_id);
    }
}

impl Resolver for StaticResolver {
    fn resolve<'a>(
        &'a self,
        shard_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<SocketAddr>> + Send + 'a>> {
        let addr = self.0.read().get(shard_id).copied();
        Box::pin(async move { addr })
    }
}

impl<R: Resolver> Resolver for Arc<R> {
    fn resolve<'a>(
        &'a self,
        shard_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<SocketAddr>> + Send + 'a>> {
        (**self).resolve(shard_id)
    }
}

/// Counters of the whole hub (the per-stream and per-peer ones live in
/// their entries).
#[derive(Default)]
pub(crate) struct HubStats {
    state_coalesced: AtomicU64,
    state_dropped: AtomicU64,
    resets: Mutex<BTreeMap<&'static str, u64>>,
}

impl HubStats {
    fn count_reset(&self, code: ResetCode) {
        *self.resets.lock().entry(code.name()).or_default() += 1;
        metrics::counter!(m::PEER_STREAM_RESETS, "reason" => code.name()).increment(1);
    }

    fn count_coalesced(&self) {
        self.state_coalesced.fetch_add(1, Relaxed);
        metrics::counter!(m::PEER_STATE_COALESCED).increment(1);
    }

    fn count_state_dropped(&self) {
        self.state_dropped.fetch_add(1, Relaxed);
        metrics::counter!(m::PEER_STATE_DROPPED).increment(1);
    }
}

/// A refusal, either way, for the admin view.
struct Refusal {
    peer: Option<String>,
    address: SocketAddr,
    by: RefusedBy,
    code: u16,
    reason: String,
    at: Instant,
}

/// Every task the hub spawns, so that shutdown can end and wait for them.
/// They all run on the runtime the hub was started on, which is where
/// QUIC's endpoint and connection drivers run too, whatever thread asks
/// (a stream opened from a session's thread included): a stream's writer
/// then hands its frames to QUIC without a wake-up across threads.
struct TaskSet {
    set: Mutex<JoinSet<()>>,
    runtime: tokio::runtime::Handle,
}

impl TaskSet {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut set = self.set.lock();
        // Reap the finished ones so the set holds only live tasks.
        while set.try_join_next().is_some() {}
        set.spawn_on(task, &self.runtime);
    }
}

pub(crate) struct Inner {
    settings: TunnelSettings,
    endpoint: Endpoint,
    local_addr: SocketAddr,
    resolver: Box<dyn Resolver>,
    /// The clock of heartbeats (`sent_us`).
    started: Instant,
    peers: Mutex<HashMap<String, PeerSlot>>,
    listeners: Mutex<BTreeMap<String, mpsc::Sender<PeerStream>>>,
    streams: Mutex<Vec<Weak<StreamEntry>>>,
    next_stream: AtomicU64,
    /// Bumped per installed connection: tells a connection's task whether
    /// its connection is still the peer's.
    next_generation: AtomicU64,
    refusals: Mutex<VecDeque<Refusal>>,
    /// Permits for incoming handshakes in flight (`max_handshakes`).
    handshakes: Arc<Semaphore>,
    stats: Arc<HubStats>,
    tasks: TaskSet,
    stop: watch::Sender<bool>,
}

impl Inner {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    fn record_refusal(
        &self,
        peer: Option<String>,
        address: SocketAddr,
        by_us: bool,
        code: u16,
        reason: String,
    ) {
        let name = RefuseCode::from_u16(code).map_or("unknown", RefuseCode::name);
        let by = if by_us {
            RefusedBy::Us
        } else {
            RefusedBy::Them
        };
        let by_label = if by_us { "us" } else { "them" };
        tracing::warn!(
            shard = %self.settings.shard_id,
            peer = peer.as_deref().unwrap_or("?"),
            %address,
            refused_by = by_label,
            code,
            name,
            %reason,
            "peer connection refused"
        );
        metrics::counter!(m::PEER_REFUSED, "reason" => name, "by" => by_label).increment(1);
        let mut log = self.refusals.lock();
        if log.len() >= self.settings.refusal_log {
            log.pop_front();
        }
        log.push_back(Refusal {
            peer,
            address,
            by,
            code,
            reason,
            at: Instant::now(),
        });
    }

    fn register_stream(&self, entry: &Arc<StreamEntry>) {
        let mut streams = self.streams.lock();
        streams.retain(|w| w.strong_count() > 0);
        streams.push(Arc::downgrade(entry));
    }
}

/// The hub: `Clone + Send + Sync`, one per shard.
#[derive(Clone)]
pub struct PeerHub {
    inner: Arc<Inner>,
}

impl PeerHub {
    /// Bind the tunnel listener and start accepting peers. Needs a tokio
    /// runtime (the hub's tasks run on it).
    pub async fn start(
        settings: TunnelSettings,
        resolver: impl Resolver,
    ) -> Result<PeerHub, TunnelError> {
        settings.validate()?;
        let endpoint = tls::endpoint(&settings)?;
        let local_addr = endpoint.local_addr().map_err(|e| TunnelError::Bind {
            addr: settings.listen,
            reason: e.to_string(),
        })?;
        let max_handshakes = settings.max_handshakes;
        let inner = Arc::new(Inner {
            settings,
            endpoint,
            local_addr,
            resolver: Box::new(resolver),
            started: Instant::now(),
            peers: Mutex::new(HashMap::new()),
            listeners: Mutex::new(BTreeMap::new()),
            streams: Mutex::new(Vec::new()),
            next_stream: AtomicU64::new(1),
            next_generation: AtomicU64::new(1),
            refusals: Mutex::new(VecDeque::new()),
            handshakes: Arc::new(Semaphore::new(max_handshakes)),
            stats: Arc::new(HubStats::default()),
            tasks: TaskSet {
                set: Mutex::new(JoinSet::new()),
                runtime: tokio::runtime::Handle::current(),
            },
            stop: watch::channel(false).0,
        });
        inner.tasks.spawn(peers::accept_loop(inner.clone()));
        tracing::info!(
            shard = %inner.settings.shard_id,
            addr = %local_addr,
            "peer listening on {local_addr}"
        );
        Ok(PeerHub { inner })
    }

    /// The bound tunnel address (the port, when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub fn shard_id(&self) -> &str {
        &self.inner.settings.shard_id
    }

    /// Serve `protocol`: streams peers open for it arrive here. Listening
    /// again replaces the earlier receiver; dropping the receiver stops
    /// serving it (opens are then refused `unknown_protocol`).
    pub fn listen(&self, protocol: &str) -> mpsc::Receiver<PeerStream> {
        let (tx, rx) = mpsc::channel(self.inner.settings.accept_queue);
        self.inner.listeners.lock().insert(protocol.to_string(), tx);
        rx
    }

    /// Make sure a connection to `peer` exists or is being made (dialled
    /// through the resolver, redialled with backoff), without opening a
    /// stream: the cluster keeps its shards connected this way.
    pub fn connect(&self, peer: &str) {
        if peer != self.shard_id() {
            let _ = peers::ensure_connector(&self.inner, peer);
        }
    }

    /// Close the live connection to `peer`, if any: its streams fail at
    /// once (their readers see the end) instead of hanging until the idle
    /// timeout, and opens to it wait for a new dial. For a peer the failure
    /// detector declared dead: a connection to a killed process looks alive
    /// until `idle_timeout_ms`. The connector dials it again as usual, so a
    /// peer that comes back is reached again. True if one was closed.
    pub fn disconnect(&self, peer: &str, reason: &str) -> bool {
        peers::disconnect(&self.inner, peer, reason)
    }

    /// Whether a live connection to `peer` is up now (no dial is started).
    pub fn is_connected(&self, peer: &str) -> bool {
        self.inner
            .peers
            .lock()
            .get(peer)
            .is_some_and(|slot| slot.live.is_some())
    }

    /// The tunnel version `peer` said in its hello on the live connection
    /// (none while there is none): a message a minor added is asked only
    /// of a peer that speaks that minor.
    pub fn peer_version(&self, peer: &str) -> Option<Version> {
        self.inner
            .peers
            .lock()
            .get(peer)
            .and_then(|slot| slot.live.as_ref())
            .map(|live| live.version)
    }

    /// Open a stream to `peer` for `protocol`, dialling the peer first if
    /// there is no connection yet (reused afterwards).
    pub async fn open(&self, peer: &str, protocol: &str) -> Result<PeerStream, TunnelError> {
        connection::open(&self.inner, peer, protocol).await
    }

    /// The listener, stream and peer registries and the refusal log, as
    /// `GET /admin/peers` serves them.
    pub fn snapshot(&self) -> Peers {
        let inner = &self.inner;
        inner.listeners.lock().retain(|_, tx| !tx.is_closed());
        let listeners = inner.listeners.lock().keys().cloned().collect();
        let mut streams: Vec<_> = inner
            .streams
            .lock()
            .iter()
            .filter_map(Weak::upgrade)
            .map(|e| e.info())
            .collect();
        streams.sort_by_key(|s| s.id);
        let mut peers = peers::table(inner, &streams);
        peers.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        let refusals = inner
            .refusals
            .lock()
            .iter()
            .map(|r| RefusalInfo {
                peer: r.peer.clone(),
                address: r.address.to_string(),
                by: r.by,
                code: r.code,
                name: RefuseCode::from_u16(r.code)
                    .map_or("unknown", RefuseCode::name)
                    .to_string(),
                reason: r.reason.clone(),
                age_ms: r.at.elapsed().as_millis() as u64,
            })
            .collect();
        let stream_resets = inner
            .stats
            .resets
            .lock()
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        Peers {
            cluster: true,
            shard_id: Some(inner.settings.shard_id.clone()),
            listen: Some(inner.local_addr.to_string()),
            note: None,
            listeners,
            peers,
            streams,
            refusals,
            stream_resets,
            state_coalesced: inner.stats.state_coalesced.load(Relaxed),
            state_dropped: inner.stats.state_dropped.load(Relaxed),
            // Filled in by the membership, which runs above the hub.
            incarnation: None,
            members: Vec::new(),
        }
    }

    /// Close every connection (peers see `shutting_down`), stop the
    /// listener and wait for every task of the hub, at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        if inner.stop.send_replace(true) {
            return;
        }
        let code = VarInt::from(RefuseCode::ShuttingDown.as_u16());
        inner.endpoint.close(code, b"shard shutting down");
        peers::drop_all(inner);
        inner.listeners.lock().clear();
        let mut set = std::mem::take(&mut *inner.tasks.set.lock());
        let waited =
            tokio::time::timeout(grace, async { while set.join_next().await.is_some() {} }).await;
        if waited.is_err() {
            set.abort_all();
            while set.join_next().await.is_some() {}
        }
        let _ = tokio::time::timeout(grace, inner.endpoint.wait_idle()).await;
        tracing::info!(shard = %inner.settings.shard_id, "peer hub shut down");
    }
}
