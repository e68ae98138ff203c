//! `[cluster]`: one world over many shards. Cluster mode is on iff
//! `cluster.redis` is set; with it empty the shard runs alone, exactly as
//! without this section (no Redis, no peers).
//!
//! # Lease timings: detection time against false failover
//!
//! A room's owner renews its lease every `renew_ms`; the lease lives
//! `lease_ms`. A dead owner's rooms are free after at most `lease_ms`, so
//! that is the failover time. A shorter lease fails over faster, but a
//! stall of the owner (a GC-like pause, a slow Redis, a saturated core)
//! longer than `lease_ms - renew_ms` loses the lease to another shard even
//! though the owner was alive. `renew_ms < lease_ms / 2` guarantees at
//! least two renewals per lease, so one lost round trip never costs a
//! lease. The owner stops a room it could not renew before the lease's
//! deadline minus one renewal period (the margin), so it has stopped
//! writing before anyone else may take the room; the store's epoch fence
//! catches whatever is still in flight. The defaults (3 s lease, 1 s
//! renewal) fail over within about 3 s and tolerate a 2 s stall.
//!
//! The `swim_*` settings tune the failure detector that runs beside the
//! leases (see `cluster::membership` for its trade-off): it makes a dead
//! shard *looked at* sooner, never taken over sooner than its leases.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::tunnel::TunnelConfig;
use super::Config;

/// The shortest cluster secret accepted: 32 bytes (256 bits).
pub const MIN_CLUSTER_SECRET: usize = 32;

/// The largest `cluster.relay_queue`: the queue is allocated lazily, but
/// a bound that large is a typo.
pub const MAX_RELAY_QUEUE: u64 = 1 << 20;

/// The most members one failed probe asks to probe indirectly.
pub const MAX_SWIM_INDIRECT: usize = 16;

/// The most membership changes one swim message carries.
pub const MAX_SWIM_PIGGYBACK: usize = 64;

/// Longest shard id; ids appear in Redis keys, lease values and logs.
pub const MAX_SHARD_ID: usize = 64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://HOST:PORT/DB` of the directory. Empty: no cluster.
    pub redis: String,
    /// This shard's id, unique in the cluster. Empty: derived from the
    /// host name and the ws/http ports (see [`Config::shard_id`]).
    pub shard_id: String,
    /// The peer tunnel listener (port 0 picks a free port).
    pub peer_addr: SocketAddr,
    /// The host other shards dial to reach this one. Empty: the IP the
    /// listeners are bound to.
    pub advertise_host: String,
    /// Shared by every shard of the cluster; peers prove they hold it.
    /// At least 32 bytes; required in cluster mode. Best set through
    /// `TESSERA_CLUSTER__SECRET` rather than a file.
    pub secret: String,
    /// Every Redis key starts with `{key_prefix}:`, so several clusters
    /// can share one Redis.
    pub key_prefix: String,
    /// A room lease's time to live: how long a dead owner holds its rooms.
    pub lease_ms: u64,
    /// How often an owner renews all its leases (one batch); below
    /// `lease_ms / 2`.
    pub renew_ms: u64,
    /// A shard's alive key lives this long; past it the shard is dead.
    pub shard_ttl_ms: u64,
    /// How often a shard renews its alive key and reports its load; below
    /// `shard_ttl_ms / 2`.
    pub heartbeat_ms: u64,
    /// One Redis operation is given up after this.
    pub redis_timeout_ms: u64,
    /// An operation that needs Redis (placing a room, a login checking
    /// presence) waits this long for it to come back before failing.
    pub redis_wait_ms: u64,
    /// The events stream is trimmed to about this many entries.
    pub events_max_len: u64,
    /// When a room's owner goes away, how long this shard keeps trying to
    /// move its members to the room's new owner (the old lease must expire
    /// first: above `lease_ms`) before they get the room-failed path.
    pub failover_budget_ms: u64,
    /// An `instances = "auto"` join that found an instance full on its
    /// owner skips that instance for this long.
    pub full_hint_ms: u64,
    /// A shard playing a room owned elsewhere sends its players' inputs
    /// this long before the owner's next tick (timed from the least
    /// delayed of the owner's recent tick messages), so they are applied
    /// on that tick; at most half the tick period. Covers the tunnel's
    /// round trip.
    pub input_lead_ms: u64,
    /// The same shard sends the inputs that came after that batch once
    /// more, this long before the same tick, so that they too are applied
    /// on it instead of one tick later; 0: no second batch. Below
    /// `input_lead_ms`. How much later than a local one a remote
    /// player's move is seen comes down to about this. Fixed unless
    /// `input_late_lead_min_ms` is below it; then the lead starts here and
    /// adapts, and this is its ceiling.
    pub input_late_lead_ms: u64,
    /// The floor of the second batch's lead: it is lowered step by step
    /// while the batches make their tick and raised at once when one
    /// misses, within `[input_late_lead_min_ms, input_late_lead_ms]`.
    /// Equal to `input_late_lead_ms`: a fixed lead. Ignored when that
    /// is 0.
    pub input_late_lead_min_ms: u64,
    /// A shard playing a room owned elsewhere computes its players'
    /// `moved` itself from the views it sent them, and says so in its
    /// joins (`implied_moved` in PEER.md): the owner then leaves `moved`
    /// out of its ticks, which makes them smaller. Off: the owner lists
    /// `moved` per view, as a shard from before this option gets.
    pub implied_moved: bool,
    /// SWIM: one member is probed per period.
    pub swim_period_ms: u64,
    /// SWIM: a direct ping's ack must come within this (dialling
    /// included); below `swim_period_ms`.
    pub swim_probe_timeout_ms: u64,
    /// SWIM: members asked to probe indirectly after a failed direct
    /// probe (0: no indirect probes).
    pub swim_indirect: usize,
    /// SWIM: a suspect that does not refute within this is dead; at least
    /// 2 × `swim_period_ms`.
    pub swim_suspect_ms: u64,
    /// SWIM: membership changes piggybacked on one message at most.
    pub swim_piggyback: usize,
    /// SWIM: each change is sent `swim_retransmit × ⌈log10(n + 1)⌉` times.
    pub swim_retransmit: u32,
    /// A drain (SIGTERM in cluster mode, `POST /admin/shards/drain`) ends
    /// with the process exiting within this.
    pub drain_budget_ms: u64,
    /// Live migration: how long a room has to answer the pause (it does
    /// at its next tick boundary); one that does not (stuck in a handler)
    /// is moved from its last snapshot instead.
    pub migrate_pause_ms: u64,
    /// Live migration: how long the target has to take the room (lease
    /// moved, room started) before the room resumes on the source.
    pub migrate_answer_ms: u64,
    /// A migration asked of a shard that does not own the room is
    /// forwarded to the owner (`/tessera/admin/1`, one hop): how long the
    /// asking shard waits for the owner's answer. Above
    /// `migrate_pause_ms + migrate_answer_ms` (the owner's own bound).
    pub migrate_forward_ms: u64,
    /// An owner that cannot renew a room's lease while a peer still
    /// reaches the directory freezes the room at once (another shard may
    /// take it) and, still cut off after this long, hands it over: the
    /// room stops here and its edges move to whichever shard takes it.
    /// 0: never hand over (frozen until the lease is re-asserted or
    /// lost). Otherwise at least `renew_ms`, so the lease has expired in
    /// Redis by then.
    pub partition_handover_ms: u64,
    /// Messages for other shards (session takeovers, kicks, bans,
    /// announcements) queued at most, in all and per peer; past it they
    /// are dropped and counted (`tessera_relay_dropped_total`).
    pub relay_queue: u64,
    /// A dead shard's record stays in the directory (for the console) this
    /// long after its last heartbeat, then any live shard removes it.
    pub dead_shard_keep_ms: u64,
    /// `[cluster.tunnel]`: the peer tunnels' limits.
    pub tunnel: TunnelConfig,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            redis: String::new(),
            shard_id: String::new(),
            peer_addr: SocketAddr::from(([127, 0, 0, 1], 7352)),
            advertise_host: String::new(),
            secret: String::new(),
            key_prefix: "tessera".into(),
            lease_ms: 3_000,
            renew_ms: 1_000,
            shard_ttl_ms: 3_000,
            heartbeat_ms: 1_000,
            redis_timeout_ms: 500,
            redis_wait_ms: 2_000,
            events_max_len: 10_000,
            failover_budget_ms: 10_000,
            full_hint_ms: 2_000,
            input_lead_ms: 10,
            input_late_lead_ms: 3,
            input_late_lead_min_ms: 3,
            implied_moved: true,
            swim_period_ms: 500,
            swim_probe_timeout_ms: 200,
            swim_indirect: 3,
            swim_suspect_ms: 2_000,
            swim_piggyback: 8,
            swim_retransmit: 4,
            drain_budget_ms: 15_000,
            migrate_pause_ms: 250,
            migrate_answer_ms: 2_000,
            migrate_forward_ms: 10_000,
            partition_handover_ms: 3_000,
            relay_queue: 1_024,
            dead_shard_keep_ms: 3_600_000,
            tunnel: TunnelConfig::default(),
        }
    }
}

impl ClusterConfig {
    /// Whether this shard is part of a cluster.
    pub fn enabled(&self) -> bool {
        !self.redis.is_empty()
    }

    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        if !self.enabled() {
            return;
        }
        if let Err(message) = check_redis_url(&self.redis) {
            errors.push(format!("cluster.redis {:?}: {message}", self.redis));
        }
        if self.secret.len() < MIN_CLUSTER_SECRET {
            errors.push(format!(
                "cluster.secret must be at least {MIN_CLUSTER_SECRET} bytes in cluster mode \
                 (set TESSERA_CLUSTER__SECRET)"
            ));
        }
        if !self.shard_id.is_empty() {
            if let Err(message) = check_shard_id(&self.shard_id) {
                errors.push(format!("cluster.shard_id {:?}: {message}", self.shard_id));
            }
        }
        if self.key_prefix.is_empty()
            || self.key_prefix.len() > MAX_SHARD_ID
            || !self.key_prefix.bytes().all(id_byte)
        {
            errors.push(format!(
                "cluster.key_prefix must be 1-{MAX_SHARD_ID} characters of a-z, A-Z, 0-9, _, - or ."
            ));
        }
        if self.advertise_host.contains(['/', ' ']) {
            errors.push("cluster.advertise_host must be a host name or IP".into());
        }
        for (name, value) in [
            ("cluster.lease_ms", self.lease_ms),
            ("cluster.renew_ms", self.renew_ms),
            ("cluster.shard_ttl_ms", self.shard_ttl_ms),
            ("cluster.heartbeat_ms", self.heartbeat_ms),
            ("cluster.redis_timeout_ms", self.redis_timeout_ms),
            ("cluster.redis_wait_ms", self.redis_wait_ms),
            ("cluster.events_max_len", self.events_max_len),
            ("cluster.failover_budget_ms", self.failover_budget_ms),
            ("cluster.full_hint_ms", self.full_hint_ms),
            ("cluster.input_lead_ms", self.input_lead_ms),
            ("cluster.relay_queue", self.relay_queue),
            ("cluster.dead_shard_keep_ms", self.dead_shard_keep_ms),
            ("cluster.swim_period_ms", self.swim_period_ms),
            ("cluster.swim_probe_timeout_ms", self.swim_probe_timeout_ms),
            ("cluster.swim_suspect_ms", self.swim_suspect_ms),
            ("cluster.swim_piggyback", self.swim_piggyback as u64),
            ("cluster.swim_retransmit", u64::from(self.swim_retransmit)),
            ("cluster.drain_budget_ms", self.drain_budget_ms),
            ("cluster.migrate_pause_ms", self.migrate_pause_ms),
            ("cluster.migrate_answer_ms", self.migrate_answer_ms),
            ("cluster.migrate_forward_ms", self.migrate_forward_ms),
        ] {
            if value == 0 {
                errors.push(format!("{name} must be greater than 0"));
            }
        }
        if self.relay_queue > MAX_RELAY_QUEUE {
            errors.push(format!(
                "cluster.relay_queue must be at most {MAX_RELAY_QUEUE}"
            ));
        }
        if self.input_late_lead_ms != 0 && self.input_late_lead_ms >= self.input_lead_ms {
            errors.push(
                "cluster.input_late_lead_ms must be below input_lead_ms (or 0: no second batch)"
                    .into(),
            );
        }
        // With no second batch (0) the floor means nothing.
        if self.input_late_lead_ms != 0 && self.input_late_lead_min_ms > self.input_late_lead_ms {
            errors.push("cluster.input_late_lead_min_ms must be at most input_late_lead_ms".into());
        }
        if self.renew_ms.saturating_mul(2) >= self.lease_ms {
            errors.push("cluster.renew_ms must be below lease_ms / 2".into());
        }
        if self.failover_budget_ms <= self.lease_ms {
            errors.push(
                "cluster.failover_budget_ms must be above lease_ms (a dead owner's lease must expire first)"
                    .into(),
            );
        }
        if self.migrate_pause_ms.saturating_add(self.migrate_answer_ms) >= self.drain_budget_ms {
            errors.push(
                "cluster.migrate_pause_ms + migrate_answer_ms must be below drain_budget_ms (a drain migrates its rooms within its budget)"
                    .into(),
            );
        }
        if self.migrate_forward_ms <= self.migrate_pause_ms.saturating_add(self.migrate_answer_ms) {
            errors.push(
                "cluster.migrate_forward_ms must be above migrate_pause_ms + migrate_answer_ms (a forwarded migration waits for the owner's whole move)"
                    .into(),
            );
        }
        if self.partition_handover_ms != 0 && self.partition_handover_ms < self.renew_ms {
            errors.push(
                "cluster.partition_handover_ms must be 0 (never) or at least renew_ms (the lease must have expired)"
                    .into(),
            );
        }
        if self.heartbeat_ms.saturating_mul(2) >= self.shard_ttl_ms {
            errors.push("cluster.heartbeat_ms must be below shard_ttl_ms / 2".into());
        }
        self.tunnel.validate(errors);
        if self.swim_probe_timeout_ms >= self.swim_period_ms {
            errors.push("cluster.swim_probe_timeout_ms must be below swim_period_ms".into());
        }
        if self.swim_suspect_ms < self.swim_period_ms.saturating_mul(2) {
            errors.push(
                "cluster.swim_suspect_ms must be at least 2 × swim_period_ms (a suspect needs \
                 time to hear of it and refute)"
                    .into(),
            );
        }
        if self.swim_indirect > MAX_SWIM_INDIRECT {
            errors.push(format!(
                "cluster.swim_indirect must be at most {MAX_SWIM_INDIRECT}"
            ));
        }
        if self.swim_piggyback > MAX_SWIM_PIGGYBACK {
            errors.push(format!(
                "cluster.swim_piggyback must be at most {MAX_SWIM_PIGGYBACK}"
            ));
        }
        if self.redis_timeout_ms >= self.renew_ms {
            errors.push(
                "cluster.redis_timeout_ms must be below renew_ms (a renewal must end before the next)"
                    .into(),
            );
        }
    }
}

fn id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

/// A shard id: 1-64 characters of a safe alphabet (no `:`, which separates
/// the shard from the epoch in a lease).
pub fn check_shard_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_SHARD_ID || !id.bytes().all(id_byte) {
        return Err(format!(
            "must be 1-{MAX_SHARD_ID} characters of a-z, A-Z, 0-9, _, - or ."
        ));
    }
    Ok(())
}

fn check_redis_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or("must start with redis://")?;
    let host_port = rest.split('/').next().unwrap_or_default();
    let host_port = host_port.rsplit('@').next().unwrap_or_default();
    if host_port.is_empty() {
        return Err("names no host".into());
    }
    if let Some(db) = rest.split_once('/').map(|(_, db)| db) {
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err("the database after / must be a number".into());
        }
    }
    Ok(())
}

/// A shard id from the host name and the two ports: the same on every
/// restart of the same shard on the same host with the same ports.
pub fn derive_shard_id(host: &str, ws_port: u16, http_port: u16) -> String {
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii() && id_byte(c as u8) {
                c
            } else {
                '-'
            }
        })
        .take(MAX_SHARD_ID - 12)
        .collect();
    let host = if host.is_empty() {
        "shard".into()
    } else {
        host
    };
    format!("{host}-{ws_port}-{http_port}")
}

/// The machine's host name, or `localhost` when it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into())
}

impl Config {
    /// This shard's id: `cluster.shard_id`, or one derived from the host
    /// name and the configured ws/http ports. With a port 0 configured the
    /// shard derives it from the ports it bound instead
    /// ([`Config::shard_id_bound`]), which change on every start: set
    /// `cluster.shard_id` for a stable id then.
    pub fn shard_id(&self) -> String {
        self.shard_id_bound(self.server.ws_addr.port(), self.server.http_addr.port())
    }

    /// The shard id given the ports actually bound.
    pub fn shard_id_bound(&self, ws_port: u16, http_port: u16) -> String {
        if self.cluster.shard_id.is_empty() {
            derive_shard_id(&host_name(), ws_port, http_port)
        } else {
            self.cluster.shard_id.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Config {
        let mut config = Config::default();
        config.cluster.redis = "redis://127.0.0.1:6379/0".into();
        config.cluster.secret = "s".repeat(32);
        config
    }

    fn errors(config: &Config) -> String {
        config
            .validate()
            .map(|_| String::new())
            .unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn off_by_default_and_valid() {
        let config = Config::default();
        assert!(!config.cluster.enabled());
        config.validate().unwrap();
        cluster().validate().unwrap();
    }

    #[test]
    fn the_secret_is_required_in_cluster_mode() {
        let mut config = cluster();
        config.cluster.secret = "short".into();
        assert!(
            errors(&config).contains("cluster.secret"),
            "{}",
            errors(&config)
        );
        config.cluster.secret.clear();
        assert!(errors(&config).contains("cluster.secret"));
        // Outside cluster mode nobody needs it.
        config.cluster.redis.clear();
        config.validate().unwrap();
    }

    #[test]
    fn the_secret_comes_from_the_environment() {
        let config = Config::load(
            None,
            [
                (
                    "TESSERA_CLUSTER__REDIS".to_string(),
                    "redis://10.0.0.1:6380/2".to_string(),
                ),
                ("TESSERA_CLUSTER__SECRET".to_string(), "x".repeat(40)),
            ],
        )
        .unwrap();
        assert_eq!(config.cluster.secret.len(), 40);
        config.validate().unwrap();
    }

    #[test]
    fn validation_names_each_bad_field() {
        let mut config = cluster();
        config.cluster.redis = "http://x".into();
        config.cluster.shard_id = "a:b".into();
        config.cluster.key_prefix = String::new();
        config.cluster.lease_ms = 1_000;
        config.cluster.renew_ms = 600;
        config.cluster.redis_timeout_ms = 700;
        config.cluster.heartbeat_ms = 0;
        config.cluster.events_max_len = 0;
        let text = errors(&config);
        for field in [
            "cluster.redis",
            "cluster.shard_id",
            "cluster.key_prefix",
            "cluster.renew_ms must be below lease_ms / 2",
            "cluster.heartbeat_ms must be greater than 0",
            "cluster.events_max_len",
            "cluster.redis_timeout_ms must be below renew_ms",
        ] {
            assert!(text.contains(field), "{field} missing from {text}");
        }
        let mut config = cluster();
        config.cluster.swim_probe_timeout_ms = 600;
        config.cluster.swim_suspect_ms = 900;
        config.cluster.swim_indirect = 100;
        config.cluster.swim_piggyback = 0;
        config.cluster.drain_budget_ms = 0;
        config.cluster.input_late_lead_ms = config.cluster.input_lead_ms;
        config.cluster.input_late_lead_min_ms = config.cluster.input_lead_ms + 1;
        let text = errors(&config);
        for field in [
            "cluster.input_late_lead_ms must be below input_lead_ms",
            "cluster.input_late_lead_min_ms must be at most input_late_lead_ms",
            "cluster.swim_probe_timeout_ms must be below swim_period_ms",
            "cluster.swim_suspect_ms must be at least 2",
            "cluster.swim_indirect must be at most",
            "cluster.swim_piggyback must be greater than 0",
            "cluster.drain_budget_ms must be greater than 0",
        ] {
            assert!(text.contains(field), "{field} missing from {text}");
        }
        let mut config = cluster();
        config.cluster.redis = "redis://h:1/db".into();
        assert!(errors(&config).contains("database"));
    }

    #[test]
    fn migration_budgets_are_positive_and_fit_in_a_drain() {
        let mut config = cluster();
        config.cluster.migrate_pause_ms = 0;
        assert!(errors(&config).contains("cluster.migrate_pause_ms must be greater than 0"));
        let mut config = cluster();
        config.cluster.migrate_answer_ms = config.cluster.drain_budget_ms;
        assert!(errors(&config).contains("must be below drain_budget_ms"));
    }

    #[test]
    fn a_forwarded_migration_waits_longer_than_the_owners_own_move() {
        let mut config = cluster();
        config.cluster.migrate_forward_ms =
            config.cluster.migrate_pause_ms + config.cluster.migrate_answer_ms;
        assert!(errors(&config).contains(
            "cluster.migrate_forward_ms must be above migrate_pause_ms + migrate_answer_ms"
        ));
        config.cluster.migrate_forward_ms = 0;
        assert!(errors(&config).contains("cluster.migrate_forward_ms must be greater than 0"));
        config.cluster.migrate_forward_ms += 10_000;
        assert_eq!(errors(&cluster()), "");
    }

    #[test]
    fn a_partition_handover_waits_for_the_lease_or_never_comes() {
        let mut config = cluster();
        config.cluster.partition_handover_ms = config.cluster.renew_ms - 1;
        assert!(errors(&config)
            .contains("cluster.partition_handover_ms must be 0 (never) or at least renew_ms"));
        config.cluster.partition_handover_ms = 0;
        config.validate().unwrap();
        config.cluster.partition_handover_ms = config.cluster.renew_ms;
        config.validate().unwrap();
    }

    #[test]
    fn the_relay_queue_is_bounded_both_ways() {
        let mut config = cluster();
        config.cluster.relay_queue = 0;
        assert!(errors(&config).contains("cluster.relay_queue must be greater than 0"));
        config.cluster.relay_queue = MAX_RELAY_QUEUE + 1;
        assert!(errors(&config).contains("cluster.relay_queue must be at most"));
        config.cluster.relay_queue = MAX_RELAY_QUEUE;
        config.validate().unwrap();
    }

    #[test]
    fn the_derived_shard_id_is_stable_and_safe() {
        assert_eq!(
            derive_shard_id("box.example", 7350, 7351),
            "box.example-7350-7351"
        );
        assert_eq!(derive_shard_id("bad host:x", 1, 2), "bad-host-x-1-2");
        assert_eq!(derive_shard_id("", 1, 2), "shard-1-2");
        check_shard_id(&derive_shard_id(&"h".repeat(200), 65535, 65535)).unwrap();
        let config = cluster();
        assert_eq!(config.shard_id(), config.shard_id());
        let mut named = cluster();
        named.cluster.shard_id = "eu-1".into();
        assert_eq!(named.shard_id(), "eu-1");
        assert_eq!(named.shard_id_bound(1, 2), "eu-1");
    }
}
