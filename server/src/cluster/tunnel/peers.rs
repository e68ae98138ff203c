//! The peer table: one slot per shard this hub talks to, the connector
//! task that dials (and redials, with backoff) a slot's peer, the rule
//! that keeps one connection per pair, and the task of each live
//! connection (heartbeats, incoming streams).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use protocol::admin::{PeerInfo, PeerState, QuicCounters, StreamInfo};
use protocol::peer::RefuseCode;
use protocol::Version;
use quinn::{Connection, Incoming, VarInt};
use tokio::sync::{watch, OwnedSemaphorePermit};

use super::handshake::{self, Failed};
use super::stream::PeerTotals;
use super::Inner;
use crate::metrics as m;
use crate::supervise::Backoff;

/// A connection in use.
pub(super) struct Live {
    pub conn: Connection,
    /// This shard dialled it.
    pub dialled: bool,
    pub generation: u64,
    /// The tunnel version the peer said in its hello on this connection:
    /// what it can be asked (a minor adds messages).
    pub version: Version,
}

/// One peer's row.
pub(super) struct PeerSlot {
    pub(super) state: PeerState,
    pub(super) since: Instant,
    pub(super) address: Option<SocketAddr>,
    pub(super) live: Option<Live>,
    /// The live connection, for `open` to wait on.
    pub(super) conn_tx: watch::Sender<Option<Connection>>,
    /// A connector task runs for this peer.
    pub(super) connector: bool,
    /// The connector is in the middle of a dial (not in its backoff).
    pub(super) dialing: bool,
    pub(super) totals: Arc<PeerTotals>,
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

    pub(super) fn set_state(&mut self, state: PeerState) {
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

pub(super) fn connected_gauge(peers: &std::collections::HashMap<String, PeerSlot>) {
    let n = peers.values().filter(|s| s.live.is_some()).count();
    metrics::gauge!(m::PEERS_CONNECTED).set(n as f64);
}

/// Make `conn` the peer's connection, or say which refusal it gets. On
/// success the connection's generation is returned.
fn admit(
    inner: &Arc<Inner>,
    peer: &str,
    version: Version,
    conn: &Connection,
    dialled: bool,
) -> Result<u64, ()> {
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
        version,
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
    let Ok(generation) = admit(&inner, &peer, control.peer.version, &conn, false) else {
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
    super::connection::run_connection(inner, peer, conn, generation, control).await;
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
pub(super) fn ensure_connector(
    inner: &Arc<Inner>,
    peer: &str,
) -> watch::Receiver<Option<Connection>> {
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
    let Ok(generation) = admit(inner, peer, control.peer.version, &conn, true) else {
        // The peer's connection to us won while we dialled.
        conn.close(
            VarInt::from(RefuseCode::Duplicate.as_u16()),
            b"the connection dialled by the lower shard id wins",
        );
        return Ok(());
    };
    inner.tasks.spawn(super::connection::run_connection(
        inner.clone(),
        peer.to_string(),
        conn,
        generation,
        control,
    ));
    Ok(())
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
                quic: slot.live.as_ref().map(|l| quic_counters(&l.conn)),
                version: slot.live.as_ref().map(|l| l.version),
            }
        })
        .collect()
}

fn quic_counters(conn: &Connection) -> QuicCounters {
    let stats = conn.stats();
    QuicCounters {
        datagrams_in: stats.udp_rx.datagrams,
        datagrams_out: stats.udp_tx.datagrams,
        sends: stats.udp_tx.ios,
        acks_out: stats.frame_tx.acks,
        stream_frames_out: stats.frame_tx.stream,
        lost_packets: stats.path.lost_packets,
        mtu: stats.path.current_mtu,
    }
}

/// Close `peer`'s live connection (see [`super::PeerHub::disconnect`]) and
/// free its slot at once, as the connection's task does when a connection
/// ends, so no `open` after this returns gets the closed connection; then
/// dial it again.
pub(super) fn disconnect(inner: &Arc<Inner>, peer: &str, reason: &str) -> bool {
    let mut peers = inner.peers.lock();
    let Some(slot) = peers.get_mut(peer) else {
        return false;
    };
    let Some(live) = slot.live.take() else {
        return false;
    };
    live.conn.close(
        VarInt::from(RefuseCode::Timeout.as_u16()),
        reason.as_bytes(),
    );
    slot.conn_tx.send_replace(None);
    slot.set_state(PeerState::Reconnecting);
    connected_gauge(&peers);
    drop(peers);
    tracing::warn!(shard = %inner.settings.shard_id, %peer, reason, "peer disconnected");
    if !inner.stopping() {
        ensure_connector(inner, peer);
    }
    true
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
