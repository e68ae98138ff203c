//! A live connection's tasks (heartbeats on the control stream, incoming
//! streams routed to their listeners) and opening a stream to a peer.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use protocol::admin::{PeerState, StreamDirection};
use protocol::peer::{
    Accept, Control, Heartbeat, Open, Refuse, RefuseCode, StreamHead, MAX_PROTOCOL_NAME,
};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;

use super::handshake::{read_msg, read_sized, write_msg, ControlStream, ReadFailure};
use super::peers::{connected_gauge, ensure_connector};
use super::stream::{PeerStream, PeerTotals, StreamEntry, StreamParts};
use super::{Inner, TunnelError};
use crate::metrics as m;

/// A live connection's life: heartbeats on the control stream, incoming
/// streams, and when it ends, the slot freed and a redial started.
pub(super) async fn run_connection(
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
    // The watch's guard is dropped here, not held across the awaits
    // below: `open` stays `Send`, so it can run in a spawned task.
    let waited = tokio::time::timeout(dial_timeout, rx.wait_for(|c| c.is_some()))
        .await
        .map(|r| r.map(|conn| conn.clone()));
    let conn = match waited {
        Ok(Ok(conn)) => conn.expect("wait_for returned a Some"),
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
