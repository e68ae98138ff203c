//! Cluster mode's peer tunnel: the [`PeerHub`] a shard starts when
//! `cluster.redis` is set, configured from `[cluster]`, finding other
//! shards through the directory, and kept connected to them by the
//! supervised task "peers".
//!
//! ```text
//! [cluster] ──tunnel_settings()──▶ TunnelSettings ──▶ PeerHub::start(.., DirectoryResolver)
//!                                                          │ bound address
//!                                                          ▼
//!                      shard record "peer" field (other shards dial it)
//! task "peers", every cluster.heartbeat_ms:
//!     live shards in the directory, ids above ours ──▶ hub.connect(id)
//! ```
//!
//! The same task makes every live shard of the directory a SWIM member
//! (`cluster::membership`), and forgets members that are dead both to the
//! membership and to the directory. The task "swim" runs the failure
//! detector and, when a member dies, reads once what the directory says
//! of it (its record and the leases it still holds) and logs it: the
//! leases decide when its rooms may be taken over, the membership only
//! says when to look.
//!
//! Only the lower id of a pair dials: the tunnel keeps the connection the
//! lower id dialled when both dial at once, so dialling from one side only
//! avoids making (and then dropping) a second connection per pair. A peer
//! refused (wrong secret, another cluster) is redialled with the hub's
//! backoff; the refusals show in `GET /admin/peers` on both sides.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;

use super::directory::Directory;
use super::membership::{MemberEvent, Membership};
use super::tunnel::{PeerHub, Resolver, TunnelSettings};
use super::ShardId;
use crate::config::Config;
use crate::supervise::{Child, Outcome, Restart, Supervisor};

/// The hub's settings from `[cluster]`: the shard id the directory uses,
/// the cluster secret, `cluster.peer_addr` to listen on and
/// `cluster.key_prefix` as the cluster's name (peers of another prefix are
/// refused), and the limits of `[cluster.tunnel]`.
pub fn tunnel_settings(config: &Config, shard_id: &str) -> TunnelSettings {
    TunnelSettings {
        shard_id: shard_id.to_string(),
        secret: config.cluster.secret.as_bytes().to_vec(),
        listen: config.cluster.peer_addr,
        cluster: config.cluster.key_prefix.clone(),
        ..TunnelSettings::default()
    }
    .with_limits(&config.cluster.tunnel)
}

/// Shard id -> the `peer` address of its record in the directory, while
/// the shard is alive there. A host name (`cluster.advertise_host`) is
/// looked up; a shard the directory does not know, or knows dead, is not
/// dialled (the hub forgets it until asked again).
pub struct DirectoryResolver(pub Directory);

impl Resolver for DirectoryResolver {
    fn resolve<'a>(
        &'a self,
        shard_id: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<SocketAddr>> + Send + 'a>> {
        Box::pin(async move {
            let shards = match self.0.shards().await {
                Ok(shards) => shards,
                Err(e) => {
                    tracing::debug!(peer = shard_id, error = %e, "resolving a peer: directory unavailable");
                    return None;
                }
            };
            let info = shards
                .into_iter()
                .find(|s| s.id.as_str() == shard_id && s.alive)?;
            lookup(&info.record.peer_addr).await
        })
    }
}

/// `HOST:PORT` to its first address.
async fn lookup(addr: &str) -> Option<SocketAddr> {
    if addr.is_empty() {
        return None;
    }
    if let Ok(addr) = addr.parse() {
        return Some(addr);
    }
    tokio::net::lookup_host(addr).await.ok()?.next()
}

/// The task "peers" (a permanent child of the cluster's supervisor): every
/// `every`, make sure the hub has (or is making) a connection to each live
/// shard whose id is above this one's, and that every live shard is a
/// member. Redis being down skips a round.
pub async fn keep_peers(
    hub: PeerHub,
    membership: Membership,
    dir: Directory,
    every: Duration,
    mut stop_rx: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The select only waits: its branches hold the stop signal's guard,
        // which must not live across the directory call.
        let stop = tokio::select! {
            _ = stop_rx.wait_for(|s| *s) => true,
            _ = tick.tick() => false,
        };
        if stop {
            break;
        }
        let Ok(shards) = dir.shards().await else {
            continue;
        };
        for shard in &shards {
            let id = shard.id.as_str();
            if shard.alive && id > hub.shard_id() && !shard.record.peer_addr.is_empty() {
                hub.connect(id);
            }
            if shard.alive && id != hub.shard_id() && !shard.record.peer_addr.is_empty() {
                membership.join(id);
            }
        }
        for member in membership.members() {
            let listed_alive = shards
                .iter()
                .any(|s| s.alive && s.id.as_str() == member.shard_id);
            if member.state == protocol::peer::MemberState::Dead && !listed_alive {
                membership.forget(&member.shard_id);
            }
        }
    }
}

/// The task "swim": the failure detector, and on each death the tunnel to
/// the dead shard closed (streams to a killed process would otherwise hang
/// until the idle timeout) and a look at what the directory says of it
/// (once, logged).
pub async fn run_swim(
    hub: PeerHub,
    membership: Membership,
    dir: Directory,
    stop_rx: watch::Receiver<bool>,
) {
    let mut events = membership.subscribe();
    let mut stop = stop_rx.clone();
    let report = async {
        loop {
            match events.recv().await {
                Ok(MemberEvent::Dead { shard, incarnation }) => {
                    if hub.disconnect(&shard, "declared dead by the failure detector") {
                        tracing::info!(peer = %shard, "tunnel to a dead member closed");
                    }
                    report_dead(&dir, &shard, incarnation).await;
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "swim: membership events missed");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    };
    tokio::select! {
        _ = membership.run(stop_rx) => {}
        _ = report => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

/// Log the directory's view of a shard the membership declared dead: its
/// record (alive key, state) and the leases it still holds. Failover
/// (remote rooms) subscribes to the same events and acts on the leases.
async fn report_dead(dir: &Directory, shard: &str, incarnation: u64) {
    let Ok(id) = ShardId::new(shard) else {
        return;
    };
    let record = dir.shards().await.map(|all| {
        all.into_iter()
            .find(|s| s.id.as_str() == shard)
            .map(|s| (s.alive, s.state.name()))
    });
    let rooms = dir.rooms_of(&id).await;
    match (record, rooms) {
        (Ok(record), Ok(rooms)) => tracing::warn!(
            member = shard,
            incarnation,
            directory_alive = record.map(|r| r.0),
            directory_state = record.map(|r| r.1),
            leases = rooms.len(),
            rooms = ?rooms.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "swim: member dead; its leases expire on their own (the directory decides failover)"
        ),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(member = shard, error = %e, "swim: member dead; the directory did not answer")
        }
    }
}

/// The tunnel's children of the cluster's supervisor: "peers"
/// ([`keep_peers`], every `every`) and "swim" ([`run_swim`]), spawned on
/// the current Arbiter.
pub fn supervise_tunnel(
    supervisor: &Supervisor,
    hub: &PeerHub,
    membership: &Membership,
    dir: &Directory,
    every: Duration,
    stop_rx: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<Outcome>> {
    let peers = {
        let (hub, members, dir, stop_rx) = (
            hub.clone(),
            membership.clone(),
            dir.clone(),
            stop_rx.clone(),
        );
        Child::new("peers", Restart::Permanent, move || {
            keep_peers(
                hub.clone(),
                members.clone(),
                dir.clone(),
                every,
                stop_rx.clone(),
            )
        })
    };
    let swim = {
        let (hub, members, dir, stop_rx) = (
            hub.clone(),
            membership.clone(),
            dir.clone(),
            stop_rx.clone(),
        );
        Child::new("swim", Restart::Permanent, move || {
            run_swim(hub.clone(), members.clone(), dir.clone(), stop_rx.clone())
        })
    };
    vec![
        actix::spawn(supervisor.supervise(peers)),
        actix::spawn(supervisor.supervise(swim)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_section_maps_onto_the_tunnel() {
        let mut config = Config::default();
        config.cluster.secret = "s".repeat(40);
        config.cluster.key_prefix = "blue".into();
        config.cluster.peer_addr = "127.0.0.1:0".parse().unwrap();
        let settings = tunnel_settings(&config, "shard-a");
        assert_eq!(settings.shard_id, "shard-a");
        assert_eq!(settings.secret, "s".repeat(40).into_bytes());
        assert_eq!(settings.cluster, "blue");
        assert_eq!(settings.listen, config.cluster.peer_addr);
        assert_eq!(settings.max_frame, TunnelSettings::default().max_frame);
        assert!(settings.validate().is_ok());
    }

    #[tokio::test]
    async fn addresses_and_host_names_resolve() {
        assert_eq!(
            lookup("127.0.0.1:9").await,
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(lookup("localhost:9").await.map(|a| a.port()), Some(9));
        assert_eq!(lookup("").await, None);
    }
}
