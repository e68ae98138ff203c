//! The relay: what this shard tells other shards about players and
//! dispatcher topics, on the `/tessera/admin/1` and `/tessera/chat/1`
//! streams (`protocol::peer::{admin, chat}`, PEER.md).
//!
//! ```text
//! hello / admin API ──admin(shard, msg) / chat_all(msg)──▶ queue (bounded: full = dropped, counted)
//!                                                            │ task "relay"
//!                                                            ▼
//!                          one worker per peer (bounded queue) ── one stream per protocol,
//!                          opened on first use, reopened once after a reset ──▶ tunnel
//! ```
//!
//! Sending never waits: callers are a session's `hello` and an operator's
//! request. Every message is one-way and reliable; a peer that cannot be
//! reached loses it (logged and counted), which is the same as that peer
//! having been down when it was sent. Only messages made on this shard
//! are sent: the receiving side ([`crate::peer_inbox`]) applies what it
//! receives locally and never relays it, so a message crosses each tunnel
//! once and nothing loops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::admin::PeerState;
use protocol::peer::{encode_payload, AdminMsg, ChatMsg, ADMIN_PROTOCOL, CHAT_PROTOCOL};
use tokio::sync::{mpsc, watch, Mutex};
use tokio::task::JoinSet;

use super::metric;
use super::tunnel::{PeerHub, PeerStream};

/// At shutdown, how long the workers may take to send what they hold.
const STOP_GRACE: Duration = Duration::from_secs(1);

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum To {
    Shard(String),
    /// Every peer connected now.
    Peers,
}

struct Outgoing {
    to: To,
    protocol: &'static str,
    payload: Bytes,
}

/// The sending half, `Clone + Send + Sync`; [`Relay::run`] is the task
/// that delivers.
#[derive(Clone)]
pub struct Relay {
    hub: PeerHub,
    queue_tx: mpsc::Sender<Outgoing>,
    /// Taken by the running task; kept across its restarts.
    queue_rx: Arc<Mutex<mpsc::Receiver<Outgoing>>>,
    capacity: usize,
}

impl Relay {
    /// A relay over `hub` whose queues (the shared one, and each peer's)
    /// hold at most `capacity` messages (`cluster.relay_queue`).
    pub fn new(hub: PeerHub, capacity: usize) -> Relay {
        let (queue_tx, queue_rx) = mpsc::channel(capacity.max(1));
        Relay {
            hub,
            queue_tx,
            queue_rx: Arc::new(Mutex::new(queue_rx)),
            capacity: capacity.max(1),
        }
    }

    /// This shard's id.
    pub fn shard_id(&self) -> &str {
        self.hub.shard_id()
    }

    /// Tell shard `shard` (not this one) `msg` on the admin stream.
    pub fn admin(&self, shard: &str, msg: &AdminMsg) {
        if shard != self.shard_id() {
            self.queue(
                To::Shard(shard.to_string()),
                ADMIN_PROTOCOL,
                encode_payload(msg),
            );
        }
    }

    /// Tell every connected peer `msg` on the admin stream.
    pub fn admin_all(&self, msg: &AdminMsg) {
        self.queue(To::Peers, ADMIN_PROTOCOL, encode_payload(msg));
    }

    /// Send `msg` once to every connected peer on the chat stream.
    pub fn chat_all(&self, msg: &ChatMsg) {
        self.queue(To::Peers, CHAT_PROTOCOL, encode_payload(msg));
    }

    fn queue(&self, to: To, protocol: &'static str, payload: Vec<u8>) {
        let msg = Outgoing {
            to,
            protocol,
            payload: Bytes::from(payload),
        };
        if self.queue_tx.try_send(msg).is_err() {
            dropped(protocol, "queue_full");
        }
    }

    /// The task "relay": hand each message to its peers' workers until
    /// `stop_rx` says stop, then let the workers finish what they hold,
    /// for at most a second.
    pub async fn run(self, mut stop_rx: watch::Receiver<bool>) {
        let mut queue_rx = self.queue_rx.lock().await;
        let mut workers: HashMap<String, mpsc::Sender<Outgoing>> = HashMap::new();
        let mut tasks = JoinSet::new();
        loop {
            let msg = tokio::select! {
                _ = stop_rx.wait_for(|s| *s) => break,
                msg = queue_rx.recv() => match msg {
                    Some(msg) => msg,
                    None => break,
                },
                // Reap finished workers (their peer went away).
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            };
            let peers = match &msg.to {
                To::Shard(shard) => vec![shard.clone()],
                To::Peers => connected_peers(&self.hub),
            };
            for peer in peers {
                let worker = workers
                    .entry(peer.clone())
                    .and_modify(|tx| {
                        if tx.is_closed() {
                            *tx = spawn_worker(&mut tasks, &self.hub, &peer, self.capacity);
                        }
                    })
                    .or_insert_with(|| spawn_worker(&mut tasks, &self.hub, &peer, self.capacity));
                let copy = Outgoing {
                    to: To::Shard(peer.clone()),
                    protocol: msg.protocol,
                    payload: msg.payload.clone(),
                };
                if worker.try_send(copy).is_err() {
                    dropped(msg.protocol, "peer_queue_full");
                }
            }
        }
        // What the workers hold is sent if the peers answer within the
        // grace; a worker still dialling an unreachable peer after it is
        // ended (its messages are lost, as if the peer had been down).
        drop(workers);
        let drained = tokio::time::timeout(STOP_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
    }
}

/// The peers whose connection is up now.
fn connected_peers(hub: &PeerHub) -> Vec<String> {
    hub.snapshot()
        .peers
        .into_iter()
        .filter(|p| p.state == PeerState::Connected)
        .map(|p| p.shard_id)
        .collect()
}

fn spawn_worker(
    tasks: &mut JoinSet<()>,
    hub: &PeerHub,
    peer: &str,
    capacity: usize,
) -> mpsc::Sender<Outgoing> {
    let (tx, rx) = mpsc::channel(capacity);
    tasks.spawn(worker(hub.clone(), peer.to_string(), rx));
    tx
}

/// One peer's sender: its streams by protocol, opened on first use. A
/// send that finds the stream broken (the peer restarted, the stream was
/// reset) opens a fresh one and tries once more.
async fn worker(hub: PeerHub, peer: String, mut rx: mpsc::Receiver<Outgoing>) {
    let mut streams: HashMap<&'static str, PeerStream> = HashMap::new();
    while let Some(msg) = rx.recv().await {
        let mut sent = false;
        for _attempt in 0..2 {
            if !streams.contains_key(msg.protocol) {
                match hub.open(&peer, msg.protocol).await {
                    Ok(stream) => {
                        streams.insert(msg.protocol, stream);
                    }
                    Err(e) => {
                        tracing::warn!(peer, protocol = msg.protocol, error = %e, "relay: cannot open a stream to the peer");
                        break;
                    }
                }
            }
            let Some(stream) = streams.get(msg.protocol) else {
                break;
            };
            match stream.tx.send_reliable(msg.payload.clone()) {
                Ok(()) => {
                    sent = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(peer, protocol = msg.protocol, error = %e, "relay: stream broken; reopening");
                    streams.remove(msg.protocol);
                }
            }
        }
        if sent {
            metrics::counter!(metric::RELAY_SENT, "protocol" => msg.protocol).increment(1);
        } else {
            dropped(msg.protocol, "unreachable");
        }
    }
    for stream in streams.values() {
        stream.tx.close();
    }
}

fn dropped(protocol: &'static str, reason: &'static str) {
    metrics::counter!(metric::RELAY_DROPPED, "protocol" => protocol, "reason" => reason)
        .increment(1);
    tracing::warn!(
        protocol,
        reason,
        "relay: a message for other shards was dropped"
    );
}
