//! The peer table: one slot per shard this hub talks to, the connector
//! task that dials (and redials, with backoff) a slot's peer, the rule
//! that keeps one connection per pair, and the task of each live
//! connection (heartbeats, incoming streams).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use protocol::admin::{PeerInfo, PeerState, StreamDirection, StreamInfo};
use protocol::peer::{
    Accept, Control, Heartbeat, Open, Refuse, RefuseCode, StreamHead, MAX_PROTOCOL_NAME,
};
use quinn::{Connection, Incoming, RecvStream, SendStream, VarInt};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use super::handshake::{self, read_msg, read_sized, write_msg, ControlStream, Failed, ReadFailure};
use super::stream::{PeerStream, PeerTotals, StreamEntry, StreamParts};
use super::{Inner, TunnelError};
use crate::metrics as m;
use crate::supervise::Backoff;

/// A connection in use.
struct Live {
    conn: Connection,
    /// This shard dialled it.
    dialled: bool,
    generation: u64,
}

/// One peer's row.
pub(super) struct PeerSlot {
    state: PeerState,
    since: Instant,
    address: Option<SocketAddr>,
    live: Option<Live>,
    /// The live connection, for `open` to wait on.
    conn_tx: watch::Sender<Option<Connection>>,
    /// A connector task runs for this peer.
    connector: bool,
    /// The connector is in the middle of a dial (not in its backoff).
    dialing: bool,
    totals: Arc<PeerTotals>,
}

impl PeerSlot {
    fn new() -> PeerSlot {
        PeerSlot {
            state: PeerState::Connecting,
            since: Instant::now(),
            address: None,
            live: None,
            conn_tx: watch::channel(None).0,
            connector: false,
            dialing: false,
            totals: Arc::new(PeerTotals::default()),
        }
    }

    fn set_state(&mut self, state: PeerState) {
        if self.state != state {
            self.state = state;
            self.since = Instant::now();
        }
    }
}

/// Whether a connection dialled by us (`new_by_us`) replaces one dialled
/// as `old_by_us`: the one dialled by the lower shard id wins; between two
/// dialled by the same side, the newer.
fn new_wins(me: &str, peer: &str, new_by_us: bool, old_by_us: bool) -> bool {
    let by_lower = |by_us: bool| if by_us { me < peer } else { peer < me };
    match (by_lower(new_by_us), by_lower(old_by_us)) {
        (true, false) => true,
        (false, true) => false,
        _ => true,
    }
}

fn connected_gauge(peers: &std::collections::HashMap<String, PeerSlot>) {
    let n = peers.values().filter(|s| s.live.is_some()).count();
    metrics::gauge!(m::PEERS_CONNECTED).set(n as f64);
}

/// Make `conn` the peer's connection, or say which refusal it gets. On
/// success the connection's generation is returned.
fn admit(inner: &Arc<Inner>, peer: &str, conn: &Connection, dialled: bool) -> Result<u64, ()> {
    let me = inner.settings.shard_id.as_str();
    let mut peers = inner.peers.lock();
    let slot = peers.entry(peer.to_string()).or_insert_with(PeerSlot::new);
    let old = match &slot.live {
        Some(live) => Some(live.dialled),
        // Our own dial in flight counts as a connection dialled by us.
        None if slot.dialing && !dialled => Some(true),
        None => None,
    };
    if let Some(old_by_us) = old {
        if !new_wins(me, peer, dialled, old_by_us) {
            return Err(());
        }
    }
    let generation = inner.next_generation.fetch_add(1, Relaxed);
    if let Some(old) = slot.live.take() {
        old.conn.close(
            VarInt::from(RefuseCode::Duplicate.as_u16()),
            b"replaced by the connection dialled by the lower shard id",
        );
    }
    // A peer dials from its listening socket: either way this is where
    // its tunnel listens.
    slot.address = Some(conn.remote_address());
    slot.live = Some(Live {
        conn: conn.clone(),
        dialled,
        generation,
    });
    slot.set_state(PeerState::Connected);
    slot.conn_tx.send_replace(Some(conn.clone()));
    connected_gauge(&peers);
    tracing::info!(shard = %me, %peer, dialled, addr = %conn.remote_address(), "peer connected");
    Ok(generation)
}

/// The accept loop: each incoming connection's handshake in its own task.
pub(super) async fn accept_loop(inner: Arc<Inner>) {
    let mut stop = inner.stop.subscribe();
    loop {
        let incoming = tokio::select! {
            i = inner.endpoint.accept() => i,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some(incoming) = incoming else { return };
        // Handshakes in flight are bounded: past `max_handshakes` a new
        // connection is refused before any TLS work is done for it.
        match inner.handshakes.clone().try_acquire_owned() {
            Ok(permit) => inner
                .tasks
                .spawn(accept_one(inner.clone(), incoming, permit)),
            Err(_) => {
                let addr = incoming.remote_address();
                tracing::warn!(%addr, "too many peer handshakes at once: refused");
                incoming.refuse();
            }
        }
    }
}

async fn accept_one(inner: Arc<Inner>, incoming: Incoming, permit: OwnedSemaphorePermit) {
    let address = incoming.remote_address();
    let timeout = inner.settings.handshake_timeout;
    let conn = match tokio::time::timeout(timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(%address, error = %e, "peer connection failed in TLS");
            return;
        }
        Err(_) => return,
    };
    let accepted = tokio::time::timeout(timeout, handshake::accept(&inner.settings, &conn)).await;
    let (mut control, ours, keying) = match accepted {
        Ok(Ok(done)) => done,
        Ok(Err(failed)) => return handshake_failed(&inner, address, failed),
        Err(_) => {
            handshake::refuse(&conn, None, RefuseCode::Timeout, "handshake timed out", 0).await;
            return;
        }
    };
    drop(permit);
    let peer = control.peer.shard_id.clone();
    let Ok(generation) = admit(&inner, &peer, &conn, false) else {
        let reason = "a connection between these shards already exists (the lower id's dial wins)";
        let max = inner.settings.max_frame;
        handshake::refuse(
            &conn,
            Some(&mut control.send),
            RefuseCode::Duplicate,
            reason,
            max,
        )
        .await;
        tracing::debug!(%peer, "duplicate connection refused");
        return;
    };
    if let Err(failed) =
        handshake::send_listener_proof(&inner.settings, &mut control, &ours, &keying).await
    {
        // The connection is going or gone: its task below sees it closed
        // and frees the slot it was admitted to.
        handshake_failed(&inner, address, failed);
    }
    run_connection(inner, peer, conn, generation, control).await;
}

fn handshake_failed(inner: &Arc<Inner>, address: SocketAddr, failed: Failed) {
    match failed {
        Failed::Refused {
            by_us,
            peer,
            code,
            reason,
        } => {
            // Duplicates are the normal end of simultaneous dials.
            if code == RefuseCode::Duplicate.as_u16() {
                tracing::debug!(?peer, %address, "duplicate connection refused");
            } else {
                inner.record_refusal(peer, address, by_us, code, reason);
            }
        }
        Failed::Io(text) => {
            tracing::debug!(%address, error = %text, "peer handshake failed");
        }
    }
}

/// Start a connector for `peer` unless one runs or a connection is live.
fn ensure_connector(inner: &Arc<Inner>, peer: &str) -> watch::Receiver<Option<Connection>> {
    let mut peers = inner.peers.lock();
    let slot = peers.entry(peer.to_string()).or_insert_with(PeerSlot::new);
    let rx = slot.conn_tx.subscribe();
    if slot.live.is_none() && !slot.connector && !inner.stopping() {
        slot.connector = true;
        inner
            .tasks
            .spawn(connector(inner.clone(), peer.to_string()));
    }
    rx
}

/// Dial `peer` until a connection is live (ours or theirs), the resolver
/// no longer knows it, or the hub stops; with backoff between attempts.
async fn connector(inner: Arc<Inner>, peer: String) {
    let settings = &inner.settings;
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    let mut stop = inner.stop.subscribe();
    loop {
        if inner.stopping() {
            break;
        }
        let go_on = match inner.peers.lock().get_mut(&peer) {
            Some(slot) if slot.live.is_none() => {
                slot.dialing = true;
                true
            }
            _ => false,
        };
        if !go_on {
            break;
        }
        let addr = inner.resolver.resolve(&peer).await;
        let Some(addr) = addr else {
            // Gone from the cluster: forget it (unless it dialled us
            // meanwhile); whoever waits in `open` is told it is unknown.
            tracing::info!(%peer, "peer not in the directory: not dialling it");
            let mut peers = inner.peers.lock();
            match peers.get_mut(&peer) {
                Some(slot) if slot.live.is_none() => {
                    peers.remove(&peer);
                }
                Some(slot) => {
                    slot.connector = false;
                    slot.dialing = false;
                }
                None => {}
            }
            return;
        };
        if let Some(slot) = inner.peers.lock().get_mut(&peer) {
            slot.address = Some(addr);
        }
        let outcome = dial(&inner, &peer, addr).await;
        if let Some(slot) = inner.peers.lock().get_mut(&peer) {
            slot.dialing = false;
        }
        match outcome {
            Ok(()) => break,
            Err(Failed::Refused { code, .. }) if code == RefuseCode::Duplicate.as_u16() => {
                // The peer's dial to us wins: wait for it to land here.
                let mut rx = inner.peers.lock().get(&peer).map(|s| s.conn_tx.subscribe());
                if let Some(rx) = rx.as_mut() {
                    let wait = rx.wait_for(|c| c.is_some());
                    if tokio::time::timeout(settings.handshake_timeout, wait)
                        .await
                        .is_ok_and(|r| r.is_ok())
                    {
                        break;
                    }
                }
            }
            Err(failed) => handshake_failed(&inner, addr, failed),
        }
        if let Some(slot) = inner.peers.lock().get_mut(&peer) {
            if slot.live.is_some() {
                break;
            }
            slot.set_state(PeerState::Reconnecting);
        }
        let delay = backoff.delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Some(slot) = inner.peers.lock().get_mut(&peer) {
        slot.connector = false;
        slot.dialing = false;
    }
}

/// One dial: connect, handshake as the dialer, admit; on success the
/// connection's task is running.
async fn dial(inner: &Arc<Inner>, peer: &str, addr: SocketAddr) -> Result<(), Failed> {
    let timeout = inner.settings.handshake_timeout;
    let connecting = inner
        .endpoint
        .connect(addr, super::tls::SERVER_NAME)
        .map_err(|e| Failed::Io(e.to_string()))?;
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            return Err(match handshake::application_close(&e) {
                Some((code, reason)) if code != 0 => Failed::Refused {
                    by_us: false,
                    peer: Some(peer.to_string()),
                    code,
                    reason,
                },
                _ => Failed::Io(e.to_string()),
            })
        }
        Err(_) => return Err(Failed::Io(format!("no answer from {addr}"))),
    };
    let control =
        match tokio::time::timeout(timeout, handshake::dial(&inner.settings, &conn, peer)).await {
            Ok(result) => result?,
            Err(_) => {
                handshake::refuse(&conn, None, RefuseCode::Timeout, "handshake timed out", 0).await;
                return Err(Failed::Io("handshake timed out".into()));
            }
        };
    let Ok(generation) = admit(inner, peer, &conn, true) else {
        // The peer's connection to us won while we dialled.
        conn.close(
            VarInt::from(RefuseCode::Duplicate.as_u16()),
            b"the connection dialled by the lower shard id wins",
        );
        return Ok(());
    };
    inner.tasks.spawn(run_connection(
        inner.clone(),
        peer.to_string(),
        conn,
        generation,
        control,
    ));
    Ok(())
}

/// A live connection's life: heartbeats on the control stream, incoming
/// streams, and when it ends, the slot freed and a redial started.
async fn run_connection(
    inner: Arc<Inner>,
    peer: String,
    conn: Connection,
    generation: u64,
    control: ControlStream,
) {
    let totals = match inner.peers.lock().get(&peer) {
        Some(slot) => slot.totals.clone(),
        None => return,
    };
    let (pong_tx, pong_rx) = mpsc::channel(16);
    let ControlStream { send, recv, .. } = control;
    inner.tasks.spawn(heartbeat_writer(
        inner.clone(),
        peer.clone(),
        send,
        pong_rx,
        totals.clone(),
    ));
    inner.tasks.spawn(control_reader(
        inner.clone(),
        peer.clone(),
        conn.clone(),
        recv,
        pong_tx,
        totals.clone(),
    ));
    let mut stop = inner.stop.subscribe();
    loop {
        let next = tokio::select! {
            bi = conn.accept_bi() => bi,
            _ = stop.wait_for(|s| *s) => break,
        };
        match next {
            Ok((send, recv)) => {
                inner.tasks.spawn(incoming_stream(
                    inner.clone(),
                    peer.clone(),
                    send,
                    recv,
                    totals.clone(),
                ));
            }
            Err(_) => break,
        }
    }
    let reason = conn.close_reason().map(|e| e.to_string());
    let mut peers = inner.peers.lock();
    let Some(slot) = peers.get_mut(&peer) else {
        return;
    };
    if slot.live.as_ref().map(|l| l.generation) != Some(generation) {
        // Replaced: the slot holds the newer connection.
        return;
    }
    slot.live = None;
    slot.conn_tx.send_replace(None);
    slot.set_state(PeerState::Reconnecting);
    connected_gauge(&peers);
    drop(peers);
    tracing::warn!(shard = %inner.settings.shard_id, %peer, reason = reason.as_deref().unwrap_or("?"), "peer disconnected");
    if !inner.stopping() {
        ensure_connector(&inner, &peer);
    }
}

async fn heartbeat_writer(
    inner: Arc<Inner>,
    peer: String,
    mut send: SendStream,
    mut pongs: mpsc::Receiver<Heartbeat>,
    totals: Arc<PeerTotals>,
) {
    let max = inner.settings.max_frame;
    let mut every = tokio::time::interval(inner.settings.ping_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        let msg = tokio::select! {
            _ = every.tick() => {
                seq += 1;
                Control::Ping(Heartbeat { seq, sent_us: inner.now_us() })
            }
            pong = pongs.recv() => match pong {
                Some(hb) => Control::Pong(hb),
                None => return,
            },
        };
        match write_msg(&mut send, &msg, max).await {
            Ok(n) => totals.count_out(&peer, n),
            Err(_) => return,
        }
    }
}

async fn control_reader(
    inner: Arc<Inner>,
    peer: String,
    conn: Connection,
    mut recv: RecvStream,
    pongs: mpsc::Sender<Heartbeat>,
    totals: Arc<PeerTotals>,
) {
    let max = inner.settings.max_frame;
    loop {
        let msg = match read_sized::<Control>(&mut recv, max).await {
            Ok((msg, size)) => {
                totals.count_in(&peer, size);
                msg
            }
            Err(ReadFailure::Bad(text)) => {
                tracing::warn!(%peer, error = %text, "bad frame on the control stream");
                conn.close(
                    VarInt::from(RefuseCode::Malformed.as_u16()),
                    text.as_bytes(),
                );
                return;
            }
            Err(_) => return,
        };
        match msg {
            Control::Ping(hb) => {
                // A full queue means pongs are already going out late.
                let _ = pongs.try_send(hb);
            }
            Control::Pong(hb) => {
                let rtt = inner.now_us().saturating_sub(hb.sent_us).max(1);
                totals.rtt_us.store(rtt, Relaxed);
                metrics::gauge!(m::PEER_RTT, "peer" => peer.clone()).set(rtt as f64 / 1e6);
            }
            Control::Refuse(r) => {
                tracing::warn!(%peer, code = r.code, reason = %r.reason, "peer refused the connection");
            }
            Control::Hello(_) | Control::Proof(_) => {
                let reason = "handshake message after the handshake";
                conn.close(
                    VarInt::from(RefuseCode::Malformed.as_u16()),
                    reason.as_bytes(),
                );
                return;
            }
        }
    }
}

fn parts(
    inner: &Arc<Inner>,
    peer: &str,
    protocol: &str,
    dir: StreamDirection,
    totals: Arc<PeerTotals>,
) -> StreamParts {
    let id = inner.next_stream.fetch_add(1, Relaxed);
    let entry = Arc::new(StreamEntry::new(id, peer, protocol, dir, totals));
    inner.register_stream(&entry);
    StreamParts {
        entry,
        budget: inner.settings.stream_budget_bytes,
        max_frame: inner.settings.max_frame,
        stats: inner.stats.clone(),
        stop: inner.stop.subscribe(),
    }
}

/// A stream the peer opened: read its `open`, find the listener, answer.
async fn incoming_stream(
    inner: Arc<Inner>,
    peer: String,
    mut send: SendStream,
    mut recv: RecvStream,
    totals: Arc<PeerTotals>,
) {
    let max = inner.settings.max_frame;
    let head = tokio::time::timeout(
        inner.settings.handshake_timeout,
        read_msg::<StreamHead>(&mut recv, max),
    )
    .await;
    let protocol = match head {
        Ok(Ok(StreamHead::Open(Open { protocol }))) if protocol.len() <= MAX_PROTOCOL_NAME => {
            protocol
        }
        Ok(Ok(_)) => {
            let refuse = Refuse::new(RefuseCode::Malformed, "a stream starts with open");
            let _ = write_msg(&mut send, &StreamHead::Refuse(refuse), max).await;
            let _ = send.finish();
            return;
        }
        _ => return,
    };
    let sender = inner.listeners.lock().get(&protocol).cloned();
    let permit = match sender.as_ref().map(|tx| tx.try_reserve()) {
        Some(Ok(permit)) => permit,
        Some(Err(mpsc::error::TrySendError::Full(()))) => {
            let reason = format!("the listener of {protocol} has too many streams waiting");
            let refuse = Refuse::new(RefuseCode::Busy, reason);
            let _ = write_msg(&mut send, &StreamHead::Refuse(refuse), max).await;
            let _ = send.finish();
            return;
        }
        Some(Err(mpsc::error::TrySendError::Closed(()))) | None => {
            let reason = format!("no listener for {protocol} on this shard");
            tracing::debug!(%peer, %protocol, "stream for an unknown protocol refused");
            let refuse = Refuse::new(RefuseCode::UnknownProtocol, reason);
            let _ = write_msg(&mut send, &StreamHead::Refuse(refuse), max).await;
            let _ = send.finish();
            return;
        }
    };
    if write_msg(&mut send, &StreamHead::Accept(Accept {}), max)
        .await
        .is_err()
    {
        return;
    }
    let parts = parts(&inner, &peer, &protocol, StreamDirection::Inbound, totals);
    let (stream, writer) = PeerStream::new(parts, send, recv);
    inner.tasks.spawn(writer);
    permit.send(stream);
}

/// Open a stream to `peer` for `protocol`.
pub(super) async fn open(
    inner: &Arc<Inner>,
    peer: &str,
    protocol: &str,
) -> Result<PeerStream, TunnelError> {
    if inner.stopping() {
        return Err(TunnelError::ShutDown);
    }
    if peer == inner.settings.shard_id {
        return Err(TunnelError::SelfDial);
    }
    let mut rx = ensure_connector(inner, peer);
    let dial_timeout = inner.settings.dial_timeout;
    let conn = match tokio::time::timeout(dial_timeout, rx.wait_for(|c| c.is_some())).await {
        Ok(Ok(conn)) => conn.clone().expect("wait_for returned a Some"),
        // The slot was dropped: the hub stopped, or the peer left the
        // directory.
        Ok(Err(_)) if inner.stopping() => return Err(TunnelError::ShutDown),
        Ok(Err(_)) => return Err(TunnelError::UnknownShard(peer.to_string())),
        Err(_) => {
            let known = inner.resolver.resolve(peer).await.is_some();
            return Err(if known {
                TunnelError::Timeout {
                    peer: peer.to_string(),
                    ms: dial_timeout.as_millis() as u64,
                }
            } else {
                TunnelError::UnknownShard(peer.to_string())
            });
        }
    };
    let io = |e: String| TunnelError::Io {
        peer: peer.to_string(),
        reason: e,
    };
    let max = inner.settings.max_frame;
    let head_timeout = inner.settings.handshake_timeout;
    let timed_out = || TunnelError::Timeout {
        peer: peer.to_string(),
        ms: head_timeout.as_millis() as u64,
    };
    // Waits while the peer's limit of open streams (`max_streams`) is
    // reached.
    let (mut send, mut recv) = tokio::time::timeout(head_timeout, conn.open_bi())
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| io(e.to_string()))?;
    let open = StreamHead::Open(Open {
        protocol: protocol.to_string(),
    });
    write_msg(&mut send, &open, max).await.map_err(io)?;
    let head = tokio::time::timeout(head_timeout, read_msg::<StreamHead>(&mut recv, max))
        .await
        .map_err(|_| timed_out())?;
    match head {
        Ok(StreamHead::Accept(_)) => {}
        Ok(StreamHead::Refuse(r)) => {
            return Err(TunnelError::Refused {
                peer: peer.to_string(),
                code: r.code,
                reason: r.reason,
            })
        }
        Ok(StreamHead::Open(_)) => {
            return Err(TunnelError::Misbehaved {
                peer: peer.to_string(),
                reason: "answered an open with an open".into(),
            })
        }
        Err(failure) => return Err(io(format!("{failure:?}"))),
    }
    let totals = inner
        .peers
        .lock()
        .get(peer)
        .map(|s| s.totals.clone())
        .unwrap_or_default();
    let parts = parts(inner, peer, protocol, StreamDirection::Outbound, totals);
    let (stream, writer) = PeerStream::new(parts, send, recv);
    inner.tasks.spawn(writer);
    Ok(stream)
}

/// The peer table as the admin view shows it.
pub(super) fn table(inner: &Inner, streams: &[StreamInfo]) -> Vec<PeerInfo> {
    let peers = inner.peers.lock();
    peers
        .iter()
        .map(|(id, slot)| {
            let rtt = slot.totals.rtt_us.load(Relaxed);
            PeerInfo {
                shard_id: id.clone(),
                address: slot
                    .live
                    .as_ref()
                    .map(|l| l.conn.remote_address())
                    .or(slot.address)
                    .map(|a| a.to_string()),
                state: slot.state,
                dialled: slot.live.as_ref().is_some_and(|l| l.dialled),
                rtt_ms: (rtt > 0).then(|| rtt as f64 / 1000.0),
                bytes_in: slot.totals.bytes_in.load(Relaxed),
                bytes_out: slot.totals.bytes_out.load(Relaxed),
                streams: streams.iter().filter(|s| &s.peer == id).count(),
                state_age_ms: slot.since.elapsed().as_millis() as u64,
            }
        })
        .collect()
}

/// At shutdown: close every connection and forget the peers.
pub(super) fn drop_all(inner: &Inner) {
    let mut peers = inner.peers.lock();
    for slot in peers.values_mut() {
        if let Some(live) = slot.live.take() {
            live.conn.close(
                VarInt::from(RefuseCode::ShuttingDown.as_u16()),
                b"shard shutting down",
            );
        }
        slot.conn_tx.send_replace(None);
    }
    peers.clear();
    connected_gauge(&peers);
}

#[cfg(test)]
mod tests {
    use super::new_wins;

    #[test]
    fn the_connection_dialled_by_the_lower_id_wins() {
        // "a" < "b". At a: a new connection a dialled beats one b dialled.
        assert!(new_wins("a", "b", true, false));
        assert!(!new_wins("a", "b", false, true));
        // At b, the same decisions from the other end.
        assert!(new_wins("b", "a", false, true));
        assert!(!new_wins("b", "a", true, false));
        // Two dialled by the same side: the newer (the older is stale).
        assert!(new_wins("a", "b", true, true));
        assert!(new_wins("a", "b", false, false));
    }
}
