//! The console's own JSON documents: the shards' admin documents
//! ([`protocol::admin`]) gathered into one view of all of them.

use protocol::admin::{Event, RoomInfo, ShardInfo, TopicInfo};
use serde::{Deserialize, Serialize};

/// One shard as the console last saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardStatus {
    /// Its HTTP base URL, as the console reaches it.
    pub url: String,
    /// `ready`, `starting`, `draining`, `stopping`, or `dead` when it did
    /// not answer.
    pub state: String,
    pub info: Option<ShardInfo>,
    pub topics: Vec<TopicInfo>,
    /// Why it is `dead`, or what part of it could not be read.
    pub error: Option<String>,
}

/// A room, with the shard that reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRoom {
    pub shard: String,
    #[serde(flatten)]
    pub room: RoomInfo,
}

/// Everything the pages show, refreshed about once a second.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    pub at_ms: u64,
    /// The shards run as a cluster: migrate and drain are offered.
    pub cluster: bool,
    pub shards: Vec<ShardStatus>,
    pub rooms: Vec<ClusterRoom>,
    /// The tunnel matrix: one entry per (shard, peer) pair, as each shard
    /// reports its side (empty outside a cluster).
    #[serde(default)]
    pub tunnels: Vec<TunnelLink>,
    /// The directory's view (`--redis` only): every registered shard with
    /// its state and leases.
    #[serde(default)]
    pub directory: Option<DirectoryView>,
}

/// One shard's tunnel to one peer, from the shard's `GET /admin/peers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelLink {
    /// The reporting shard's id.
    pub from: String,
    /// How the console reaches it.
    pub from_url: String,
    /// The peer's shard id.
    pub to: String,
    /// `connecting`, `connected` or `reconnecting`.
    pub state: String,
    /// The last heartbeat's round trip.
    pub rtt_ms: Option<f64>,
    /// Totals since the connection began.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Since the console's previous reading (none on the first).
    pub bytes_in_per_s: Option<f64>,
    pub bytes_out_per_s: Option<f64>,
    /// Open streams on the tunnel.
    pub streams: usize,
    /// The tunnel version the peer said in its hello (`1.2`), none while
    /// it is not connected or before shards reported it. Two versions in
    /// one matrix are a rolling upgrade under way.
    #[serde(default)]
    pub version: Option<String>,
}

/// The directory as the console read it at this refresh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryView {
    pub shards: Vec<DirectoryShardView>,
    /// The shards' `cluster.lease_ms` the ages are computed with
    /// (`--lease-ms`).
    pub lease_ms: u64,
    /// Why the directory could not be read (then `shards` is empty).
    pub error: Option<String>,
}

/// One registered shard as the directory records it, with its leases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DirectoryShardView {
    pub id: String,
    /// `ready`, `draining`, ... or `dead` once its alive key expired.
    pub state: String,
    pub ws: String,
    pub http: String,
    pub version: String,
    /// Room leases it holds now.
    pub leases: usize,
    /// The stalest lease: milliseconds since its last renewal (a healthy
    /// shard keeps this under `cluster.renew_ms`).
    pub lease_age_max_ms: Option<u64>,
    /// Milliseconds until its closest lease expires unless renewed.
    pub lease_ttl_min_ms: Option<u64>,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: Option<u64>,
}

/// Every shard's recent events, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsView {
    pub events: Vec<Event>,
    /// Shards that could not be read (and the directory, if it could not).
    pub errors: Vec<String>,
    /// The directory's event stream (`--redis` only), oldest first.
    #[serde(default)]
    pub cluster_events: Vec<crate::directory::ClusterEvent>,
}

/// What an action did on each shard it went to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub shard: String,
    pub ok: bool,
    pub result: String,
}
