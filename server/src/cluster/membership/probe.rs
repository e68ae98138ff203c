//! The failure detector's runtime: the protocol period, direct and
//! indirect probes, the swim streams, and the answers to peers' probes.
//!
//! Streams: this shard opens one `/tessera/swim/1` stream to each member
//! it probes (a [`Links`] slot, reopened when it breaks) and sends `ping`
//! and `ping_req` on it; the answers (`ack`) come back on it. The streams
//! peers opened arrive through the hub's listener; their `ping`s and
//! `ping_req`s are answered on them. A probe's timeout runs from its
//! start, so the time the tunnel takes to (re)dial counts against it: a
//! ping that waited for a dial is not an answer. As everywhere in the
//! cluster, only the lower shard id of a pair dials; the higher one opens
//! its swim stream over the connection once it is up.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use protocol::peer::swim::{Ack, Ping, PingReq};
use protocol::peer::{MemberState, ResetCode, SwimMsg, Update, SWIM_PROTOCOL};
use rand::seq::SliceRandom;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::{timeout_at, Instant as TokioInstant};

use super::table::{Applied, MemberEvent};
use super::{metric, Inner};
use crate::cluster::tunnel::{PeerStream, StreamSender};

/// Every task the membership spawns, so that `run` ends them all.
#[derive(Default)]
pub(crate) struct TaskSet(Mutex<JoinSet<()>>);

impl TaskSet {
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let mut set = self.0.lock();
        while set.try_join_next().is_some() {}
        set.spawn(task);
    }

    fn abort_all(&self) {
        self.0.lock().abort_all();
    }
}

/// One outgoing swim stream per member: `(generation, sender)` once open.
struct Slot {
    tx: watch::Sender<Option<(u64, StreamSender)>>,
    opening: bool,
}

#[derive(Default)]
pub(crate) struct Links {
    slots: Mutex<HashMap<String, Slot>>,
    /// Probes waiting for an ack, by seq.
    waiting: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_generation: std::sync::atomic::AtomicU64,
}

impl Links {
    pub fn drop_link(&self, peer: &str) {
        self.slots.lock().remove(peer);
    }

    fn clear(&self, peer: &str, generation: u64) {
        if let Some(slot) = self.slots.lock().get(peer) {
            slot.tx.send_if_modified(|cur| {
                let mine = cur.as_ref().is_some_and(|(g, _)| *g == generation);
                if mine {
                    *cur = None;
                }
                mine
            });
        }
    }
}

/// The period loop, until `stop`.
pub(super) async fn run(inner: Arc<Inner>, mut stop: watch::Receiver<bool>) {
    let mut incoming = inner.hub.listen(SWIM_PROTOCOL);
    let mut period = tokio::time::interval(inner.settings.period);
    period.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut order: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            stream = incoming.recv() => match stream {
                Some(stream) => inner.tasks.spawn(serve(inner.clone(), stream)),
                // The hub shut down.
                None => break,
            },
            _ = period.tick() => {
                let dead = inner.table.lock().expire(Instant::now());
                for event in dead {
                    inner.links.drop_link(event.shard());
                    publish(&inner, event);
                }
                if let Some(target) = next_target(&inner, &mut order) {
                    inner.tasks.spawn(probe(inner.clone(), target));
                }
            }
        }
    }
    inner.tasks.abort_all();
    inner.links.slots.lock().clear();
    inner.links.waiting.lock().clear();
}

/// Round-robin over a shuffled list of the probeable members, reshuffled
/// each round (so every member is probed once per round, in no fixed
/// order).
fn next_target(inner: &Inner, order: &mut Vec<String>) -> Option<String> {
    loop {
        if order.is_empty() {
            *order = inner.table.lock().probeable();
            if order.is_empty() {
                return None;
            }
            order.shuffle(&mut rand::rng());
        }
        let candidate = order.pop()?;
        // It may have died or left since the round began.
        if inner.table.lock().probeable().contains(&candidate) {
            return Some(candidate);
        }
    }
}

/// Tell subscribers and count.
pub(super) fn publish(inner: &Inner, event: MemberEvent) {
    match &event {
        MemberEvent::Suspected { shard, incarnation } => {
            metrics::counter!(metric::SUSPICIONS).increment(1);
            tracing::warn!(shard = %inner.hub.shard_id(), member = %shard, incarnation, "swim: member suspected");
        }
        MemberEvent::Dead { shard, incarnation } => {
            metrics::counter!(metric::DEATHS).increment(1);
            tracing::warn!(shard = %inner.hub.shard_id(), member = %shard, incarnation, "swim: member dead");
        }
        MemberEvent::Alive { shard, incarnation } => {
            tracing::info!(shard = %inner.hub.shard_id(), member = %shard, incarnation, "swim: member alive");
        }
    }
    let counts = inner.table.lock().members(Instant::now());
    for state in [MemberState::Alive, MemberState::Suspect, MemberState::Dead] {
        let n = counts.iter().filter(|m| m.state == state).count();
        metrics::gauge!(metric::MEMBERS, "state" => state.name()).set(n as f64);
    }
    // No subscriber is fine.
    let _ = inner.events.send(event);
}

/// Apply a message's news: its sender is alive at its `inc`, then its
/// gossip.
fn absorb(inner: &Inner, from: &str, msg: &SwimMsg) {
    let now = Instant::now();
    inner
        .directory_seen
        .lock()
        .insert(from.to_string(), (msg.dir(), now));
    let sender = Update {
        shard: from.to_string(),
        state: MemberState::Alive,
        inc: msg.inc(),
    };
    let mut events = Vec::new();
    {
        let mut table = inner.table.lock();
        for update in std::iter::once(&sender).chain(msg.gossip()) {
            match table.apply(update, now) {
                Applied::Changed(event) => events.push(event),
                Applied::Refuted { incarnation } => {
                    metrics::counter!(metric::REFUTATIONS).increment(1);
                    tracing::info!(shard = %inner.hub.shard_id(), incarnation, by = %from, "swim: refuted a suspicion of this shard");
                }
                Applied::Nothing | Applied::Updated => {}
            }
        }
    }
    for event in events {
        if matches!(event, MemberEvent::Dead { .. }) {
            inner.links.drop_link(event.shard());
        }
        publish(inner, event);
    }
}

fn blocked(inner: &Inner, peer: &str) -> bool {
    inner.faults.blocked.lock().contains(peer)
}

/// This shard's incarnation and the gossip for one message.
fn news(inner: &Inner) -> (u64, Vec<Update>, bool) {
    let dir = inner.reaches_directory.get().is_some_and(|f| f());
    let mut table = inner.table.lock();
    (table.incarnation(), table.take_gossip(), dir)
}

/// The open swim stream to `peer`, opening it (in the background, so a
/// probe that gives up does not cancel the dial) when there is none.
async fn link(inner: &Arc<Inner>, peer: &str) -> Option<StreamSender> {
    let mut rx = {
        let mut slots = inner.links.slots.lock();
        let slot = slots.entry(peer.to_string()).or_insert_with(|| Slot {
            tx: watch::channel(None).0,
            opening: false,
        });
        // Only the lower id of a pair dials (see `cluster::peering`): the
        // higher one opens its stream once the connection is up, and until
        // then its probes of the lower one go unanswered.
        let may_open = peer > inner.hub.shard_id() || inner.hub.is_connected(peer);
        if slot.tx.borrow().is_none() && !slot.opening && may_open {
            slot.opening = true;
            inner.tasks.spawn(open(inner.clone(), peer.to_string()));
        }
        slot.tx.subscribe()
    };
    let got = rx.wait_for(Option::is_some).await.ok()?;
    got.as_ref().map(|(_, tx)| tx.clone())
}

async fn open(inner: Arc<Inner>, peer: String) {
    let opened = inner.hub.open(&peer, SWIM_PROTOCOL).await;
    let mut slots = inner.links.slots.lock();
    let Some(slot) = slots.get_mut(&peer) else {
        return;
    };
    slot.opening = false;
    match opened {
        Ok(stream) => {
            let generation = inner.links.next_generation.fetch_add(1, Relaxed);
            slot.tx.send_replace(Some((generation, stream.tx.clone())));
            inner
                .tasks
                .spawn(read_acks(inner.clone(), stream, generation));
        }
        Err(e) => {
            tracing::debug!(shard = %inner.hub.shard_id(), %peer, error = %e, "swim: no stream to the member");
        }
    }
}

/// The answers on a stream this shard opened.
async fn read_acks(inner: Arc<Inner>, mut stream: PeerStream, generation: u64) {
    while let Some(Ok(msg)) = stream.rx.recv_msg::<SwimMsg>().await {
        if blocked(&inner, &stream.peer) {
            continue;
        }
        absorb(&inner, &stream.peer, &msg);
        match msg {
            SwimMsg::Ack(ack) => {
                if let Some(waiter) = inner.links.waiting.lock().remove(&ack.seq) {
                    let _ = waiter.send(());
                }
            }
            SwimMsg::Ping(_) | SwimMsg::PingReq(_) => {
                tracing::warn!(peer = %stream.peer, "swim: a probe on a stream this shard opened");
                stream.tx.reset(ResetCode::BadFrame);
                break;
            }
        }
    }
    inner.links.clear(&stream.peer, generation);
}

/// Send `msg` to `peer` on its swim stream; false when it could not go.
async fn send(inner: &Arc<Inner>, peer: &str, msg: SwimMsg) -> bool {
    if blocked(inner, peer) {
        return false;
    }
    let Some(tx) = link(inner, peer).await else {
        return false;
    };
    match tx.send_msg(&msg) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(shard = %inner.hub.shard_id(), %peer, error = %e, "swim: send failed");
            false
        }
    }
}

/// Wait for an ack of `seq` until `deadline`.
async fn acked(rx: &mut oneshot::Receiver<()>, deadline: TokioInstant) -> bool {
    matches!(timeout_at(deadline, rx).await, Ok(Ok(())))
}

/// Ping `target` and wait for its ack until `deadline` (the dial
/// included). Used for this shard's probes and for relayed ones.
async fn ping(inner: &Arc<Inner>, target: &str, deadline: TokioInstant) -> bool {
    let seq = inner.next_seq.fetch_add(1, Relaxed);
    let (tx, mut rx) = oneshot::channel();
    inner.links.waiting.lock().insert(seq, tx);
    let (inc, gossip, dir) = news(inner);
    let msg = SwimMsg::Ping(Ping {
        seq,
        inc,
        gossip,
        dir,
    });
    let ok = matches!(
        timeout_at(deadline, send(inner, target, msg)).await,
        Ok(true)
    ) && acked(&mut rx, deadline).await;
    inner.links.waiting.lock().remove(&seq);
    ok
}

/// One probe of `target`: direct, then indirect, then suspicion.
async fn probe(inner: Arc<Inner>, target: String) {
    metrics::counter!(metric::PROBES).increment(1);
    inner.counters.count(&target, |s| s.probes += 1);
    let start = TokioInstant::now();
    let direct = start + inner.settings.probe_timeout;
    let seq = inner.next_seq.fetch_add(1, Relaxed);
    let (tx, mut rx) = oneshot::channel();
    inner.links.waiting.lock().insert(seq, tx);
    let (inc, gossip, dir) = news(&inner);
    let ping = SwimMsg::Ping(Ping {
        seq,
        inc,
        gossip,
        dir,
    });
    let sent = matches!(
        timeout_at(direct, send(&inner, &target, ping)).await,
        Ok(true)
    );
    if sent && acked(&mut rx, direct).await {
        return;
    }
    // Ask others, under the same seq: an ack relayed by any of them, or a
    // late direct one, ends the probe. They get until the period ends (and
    // at least one more probe timeout, so a relay has time for its ping).
    let indirect_wait = inner
        .settings
        .period
        .saturating_sub(inner.settings.probe_timeout)
        .max(inner.settings.probe_timeout * 2);
    let end = direct + indirect_wait;
    let mut helpers: Vec<String> = inner
        .table
        .lock()
        .probeable()
        .into_iter()
        .filter(|m| *m != target)
        .collect();
    helpers.shuffle(&mut rand::rng());
    helpers.truncate(inner.settings.indirect);
    for helper in helpers {
        let (inc, gossip, dir) = news(&inner);
        let req = SwimMsg::PingReq(PingReq {
            seq,
            inc,
            target: target.clone(),
            gossip,
            dir,
        });
        let inner2 = inner.clone();
        inner.tasks.spawn(async move {
            let _ = timeout_at(end, send(&inner2, &helper, req)).await;
        });
    }
    let ok = acked(&mut rx, end).await;
    inner.links.waiting.lock().remove(&seq);
    if ok {
        inner.counters.count(&target, |s| s.indirect += 1);
        return;
    }
    metrics::counter!(metric::PROBES_FAILED).increment(1);
    inner.counters.count(&target, |s| s.failed += 1);
    tracing::debug!(shard = %inner.hub.shard_id(), %target, sent, seq, "swim: probe failed, directly and indirectly");
    let event = inner.table.lock().suspect(&target, Instant::now());
    if let Some(event) = event {
        publish(&inner, event);
    }
}

/// A stream a peer opened: answer its pings and ping-reqs.
async fn serve(inner: Arc<Inner>, mut stream: PeerStream) {
    let peer = stream.peer.clone();
    while let Some(Ok(msg)) = stream.rx.recv_msg::<SwimMsg>().await {
        if blocked(&inner, &peer) {
            continue;
        }
        absorb(&inner, &peer, &msg);
        match msg {
            SwimMsg::Ping(p) => answer(&inner, &stream.tx, p.seq),
            SwimMsg::PingReq(req) => {
                let (inner2, tx) = (inner.clone(), stream.tx.clone());
                inner.tasks.spawn(async move {
                    let deadline = TokioInstant::now() + inner2.settings.probe_timeout;
                    if ping(&inner2, &req.target, deadline).await {
                        answer(&inner2, &tx, req.seq);
                    }
                });
            }
            SwimMsg::Ack(_) => {
                tracing::warn!(%peer, "swim: an ack on a stream the peer opened");
                stream.tx.reset(ResetCode::BadFrame);
                return;
            }
        }
    }
}

/// Ack `seq` on `tx`, after the test hook's delay when one is set.
fn answer(inner: &Arc<Inner>, tx: &StreamSender, seq: u64) {
    let delay = *inner.faults.ack_delay.lock();
    let (inner2, tx) = (inner.clone(), tx.clone());
    let send = async move {
        let (inc, gossip, dir) = news(&inner2);
        let _ = tx.send_msg(&SwimMsg::Ack(Ack {
            seq,
            inc,
            gossip,
            dir,
        }));
    };
    if delay.is_zero() {
        inner.tasks.spawn(send);
    } else {
        inner.tasks.spawn(async move {
            tokio::time::sleep(delay).await;
            send.await;
        });
    }
}
