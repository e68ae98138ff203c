//! SWIM membership over the peer tunnels: which shards answer, which are
//! suspected, which are dead, spread by gossip piggybacked on the probes
//! (the idea behind HashiCorp's memberlist; wire format in PEER.md, "The
//! swim stream").
//!
//! # Layout
//!
//! - this file: [`Membership`] (the handle: `join`, `forget`,
//!   `subscribe`, `members`, the test hooks), [`SwimSettings`] and the
//!   metric names.
//! - [`table`]: the membership table as a pure state machine (incarnation
//!   rules, suspicion deadlines, the gossip queue), unit-tested.
//! - `probe`: the runtime: the protocol period, direct and indirect
//!   probes, one long-lived `/tessera/swim/1` stream per probed peer,
//!   answering peers' pings and ping-reqs.
//!
//! ```text
//! every swim_period: expire suspects ─▶ next member (round-robin, shuffled)
//!   ping ──(stream to it)──▶ ack within swim_probe_timeout? ── yes ─▶ done
//!                                         │ no
//!   ping_req ──▶ up to swim_indirect other members ──ping──▶ target
//!                 ack relayed back before the period ends? ── yes ─▶ done
//!                                         │ no
//!   suspect(target, inc) ── gossiped ──▶ not refuted within swim_suspect ─▶ dead
//! ```
//!
//! # Subscribing (for failover)
//!
//! [`Membership::subscribe`] hands out a `tokio::sync::broadcast` receiver
//! of [`MemberEvent`]s: `Alive`, `Suspected`, `Dead`, each with the shard
//! and the incarnation. A subscriber that falls more than
//! [`EVENT_BUFFER`] events behind gets `RecvError::Lagged` and should
//! re-read [`Membership::members`]. Suspicion is a hint, never a reason to
//! take a room over: on `Dead`, failover looks at the shard's leases in
//! the directory at once (instead of waiting for the next time it would
//! have looked) and takes a room only once its lease has expired. The
//! shard itself logs what the directory says of a dead member
//! (`cluster::peering::report_deaths`).
//!
//! # Detection time against false suspicion
//!
//! A dead shard is suspected within one protocol period plus the probe
//! and indirect timeouts of being probed, and every member is probed once
//! per round (n - 1 periods), so the expected detection time is about
//! `swim_period_ms × (n - 1) / 2 + swim_period_ms`, then `swim_suspect_ms`
//! until it is dead. A shorter probe timeout or suspicion timeout detects
//! sooner, but a shard that is only slow (a GC-like pause, a saturated
//! core) longer than `swim_probe_timeout_ms` is suspected, and one paused
//! longer than `swim_suspect_ms` is declared dead though it was alive.
//! Indirect probes (`swim_indirect` peers) keep one bad link from raising
//! a suspicion. Since the directory's leases decide failover, a false
//! `dead` costs a look at the directory, never a room.

mod probe;
pub mod table;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protocol::admin::{ClusterMember, Peers};
use tokio::sync::{broadcast, watch};

pub use table::{Applied, MemberEvent, Table, TableLimits};

use super::tunnel::PeerHub;
use probe::TaskSet;

/// How many membership events a subscriber may fall behind.
pub const EVENT_BUFFER: usize = 256;

/// Metric names of the membership.
pub mod metric {
    /// Direct probes started.
    pub const PROBES: &str = "tessera_swim_probes_total";
    /// Probes that got no ack, directly or through others.
    pub const PROBES_FAILED: &str = "tessera_swim_probes_failed_total";
    /// Members this shard started to suspect (its own probe, or gossip).
    pub const SUSPICIONS: &str = "tessera_swim_suspicions_total";
    /// Suspicions of this shard it refuted.
    pub const REFUTATIONS: &str = "tessera_swim_refutations_total";
    /// Members declared dead here.
    pub const DEATHS: &str = "tessera_swim_deaths_total";
    /// Members by state, now.
    pub const MEMBERS: &str = "tessera_swim_members";
}

/// The settings of the failure detector (`[cluster]` `swim_*`).
#[derive(Debug, Clone)]
pub struct SwimSettings {
    /// One probe per period.
    pub period: Duration,
    /// A direct ping's answer must come within this (dial time included).
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly after a direct probe failed.
    pub indirect: usize,
    /// A suspect that does not refute within this is dead.
    pub suspect_timeout: Duration,
    /// Updates piggybacked per message at most.
    pub piggyback: usize,
    /// Each update is sent `retransmit × ⌈log10(n + 1)⌉` times.
    pub retransmit: u32,
}

impl Default for SwimSettings {
    fn default() -> Self {
        SwimSettings {
            period: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(200),
            indirect: 3,
            suspect_timeout: Duration::from_millis(2_000),
            piggyback: 8,
            retransmit: 4,
        }
    }
}

impl SwimSettings {
    /// `[cluster]`'s `swim_*` fields (validated with the config).
    pub fn from_config(config: &crate::config::Config) -> SwimSettings {
        let c = &config.cluster;
        SwimSettings {
            period: Duration::from_millis(c.swim_period_ms),
            probe_timeout: Duration::from_millis(c.swim_probe_timeout_ms),
            indirect: c.swim_indirect,
            suspect_timeout: Duration::from_millis(c.swim_suspect_ms),
            piggyback: c.swim_piggyback,
            retransmit: c.swim_retransmit,
        }
    }
}

/// Test hooks: faults a test injects to see the detector cope.
#[derive(Default)]
struct Faults {
    /// Acks this shard sends are delayed by this much (a slow shard).
    ack_delay: Mutex<Duration>,
    /// Shards this one neither sends to nor hears from over swim (a
    /// broken direct path).
    blocked: Mutex<HashSet<String>>,
}

/// This shard's own probe counts (the metrics add up every membership of
/// the process; these are one shard's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStats {
    /// Probes started.
    pub probes: u64,
    /// Probes that got no ack, directly or through others.
    pub failed: u64,
    /// Probes answered only after the direct ping's timeout: through
    /// others (`ping_req`), or by a late direct ack.
    pub indirect: u64,
}

/// Probe counts per probed shard (a probe runs once per protocol period,
/// so one lock is no contention).
#[derive(Default)]
struct Counters {
    by_target: Mutex<HashMap<String, ProbeStats>>,
}

impl Counters {
    fn count(&self, target: &str, f: impl FnOnce(&mut ProbeStats)) {
        let mut by_target = self.by_target.lock();
        match by_target.get_mut(target) {
            Some(stats) => f(stats),
            None => f(by_target.entry(target.to_owned()).or_default()),
        }
    }
}

pub(crate) struct Inner {
    hub: PeerHub,
    counters: Counters,
    settings: SwimSettings,
    table: Mutex<Table>,
    events: broadcast::Sender<MemberEvent>,
    links: probe::Links,
    next_seq: AtomicU64,
    faults: Faults,
    tasks: TaskSet,
    /// Whether this shard reaches the directory now (said in every swim
    /// message); unset: it never says so.
    reaches_directory: OnceLock<DirectoryProbe>,
    /// What each peer said of the directory last, and when.
    directory_seen: Mutex<HashMap<String, (bool, Instant)>>,
}

/// Whether this shard reaches the cluster directory now.
pub type DirectoryProbe = Box<dyn Fn() -> bool + Send + Sync>;

/// The membership of one shard: `Clone + Send + Sync`. Its work runs in
/// [`Membership::run`], which the shard supervises as the task "swim".
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

impl Membership {
    /// A membership over `hub`, starting at `incarnation` (the shard uses
    /// its start time in Unix milliseconds, so a restarted shard outranks
    /// its previous life).
    pub fn new(hub: PeerHub, settings: SwimSettings, incarnation: u64) -> Membership {
        let limits = TableLimits {
            suspect_timeout: settings.suspect_timeout,
            piggyback: settings.piggyback,
            retransmit: settings.retransmit,
        };
        let table = Table::new(hub.shard_id(), incarnation, limits);
        // Present from the start, so a rate over them is 0 rather than
        // missing until the first suspicion.
        for name in [
            metric::PROBES,
            metric::PROBES_FAILED,
            metric::SUSPICIONS,
            metric::REFUTATIONS,
            metric::DEATHS,
        ] {
            metrics::counter!(name).increment(0);
        }
        Membership {
            inner: Arc::new(Inner {
                hub,
                counters: Counters::default(),
                settings,
                table: Mutex::new(table),
                events: broadcast::channel(EVENT_BUFFER).0,
                links: probe::Links::default(),
                next_seq: AtomicU64::new(1),
                faults: Faults::default(),
                tasks: TaskSet::default(),
                reaches_directory: OnceLock::new(),
                directory_seen: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Probe and answer until `stop` turns true. Restartable: the table
    /// lives in the handle, so a restart after a panic loses nothing.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        probe::run(self.inner.clone(), stop).await;
    }

    /// Make `shard` a member (alive until a probe says otherwise), e.g.
    /// because the directory lists it.
    pub fn join(&self, shard: &str) {
        let event = self.inner.table.lock().join(shard, Instant::now());
        if let Some(event) = event {
            probe::publish(&self.inner, event);
        }
    }

    /// Say in every swim message whether this shard reaches the
    /// directory, as `probe` tells (set once; later calls are ignored).
    pub fn tell_directory_reach(&self, probe: DirectoryProbe) {
        let _ = self.inner.reaches_directory.set(probe);
    }

    /// Whether some peer said, in a swim message received within
    /// `within`, that it reaches the directory: then this shard's leases
    /// can be taken while it cannot renew them (see
    /// `room::cluster::partition`). Only the latest word of each peer
    /// counts, so a cluster-wide Redis outage reads `false` once every
    /// peer has spoken since it began.
    pub fn directory_seen_by_peer(&self, within: Duration) -> bool {
        let now = Instant::now();
        self.inner
            .directory_seen
            .lock()
            .values()
            .any(|&(dir, at)| dir && now.saturating_duration_since(at) <= within)
    }

    /// Forget `shard` (it left the cluster for good).
    pub fn forget(&self, shard: &str) {
        self.inner.table.lock().forget(shard);
        self.inner.links.drop_link(shard);
        self.inner.directory_seen.lock().remove(shard);
    }

    /// Membership changes from now on (see the module doc).
    pub fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        self.inner.events.subscribe()
    }

    /// Every member as this shard sees it.
    pub fn members(&self) -> Vec<ClusterMember> {
        self.inner.table.lock().members(Instant::now())
    }

    /// Membership changes still waiting to be piggybacked (0 once the news
    /// this shard knows has been spread).
    pub fn gossip_queued(&self) -> usize {
        self.inner.table.lock().gossip_queued()
    }

    /// This shard's probe counts since it started.
    pub fn probe_stats(&self) -> ProbeStats {
        let by_target = self.inner.counters.by_target.lock();
        by_target
            .values()
            .fold(ProbeStats::default(), |sum, s| ProbeStats {
                probes: sum.probes + s.probes,
                failed: sum.failed + s.failed,
                indirect: sum.indirect + s.indirect,
            })
    }

    /// This shard's probe counts of one member since it started.
    pub fn probe_stats_of(&self, shard: &str) -> ProbeStats {
        let by_target = self.inner.counters.by_target.lock();
        by_target.get(shard).copied().unwrap_or_default()
    }

    /// This shard's incarnation now.
    pub fn incarnation(&self) -> u64 {
        self.inner.table.lock().incarnation()
    }

    /// The hub's admin document with the membership filled in.
    pub fn snapshot(&self) -> Peers {
        let mut doc = self.inner.hub.snapshot();
        doc.incarnation = Some(self.incarnation());
        doc.members = self.members();
        doc
    }

    /// Test hook: delay every ack this shard sends (a shard that is slow
    /// but alive). `Duration::ZERO` ends it.
    pub fn set_ack_delay(&self, delay: Duration) {
        *self.inner.faults.ack_delay.lock() = delay;
    }

    /// Test hook: cut (or, with `false`, restore) the direct swim path to
    /// `shard`: nothing is sent to it or taken from it. Indirect probes
    /// through other members still reach it.
    pub fn block(&self, shard: &str, blocked: bool) {
        let mut set = self.inner.faults.blocked.lock();
        if blocked {
            set.insert(shard.to_string());
        } else {
            set.remove(shard);
        }
    }
}
