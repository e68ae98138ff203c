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
}

/// Every shard's recent events, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventsView {
    pub events: Vec<Event>,
    /// Shards that could not be read.
    pub errors: Vec<String>,
}

/// What an action did on each shard it went to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOutcome {
    pub shard: String,
    pub ok: bool,
    pub result: String,
}
