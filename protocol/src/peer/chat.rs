//! The `/tessera/chat/1` stream: dispatcher topics that are cluster-wide,
//! crossing each tunnel once per message. The shard where an announcement
//! or a map broadcast is made publishes it to its own sessions and sends
//! it once to every connected peer, which publishes it to its own
//! sessions through its own dispatcher and never forwards it again (so a
//! message reaches each shard once, whatever the number of shards).
//! One stream per pair of shards and direction, opened by the sender;
//! messages are one-way, reliable and in order.

use serde::{Deserialize, Serialize};

/// A server announcement to every player of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub text: String,
}

/// An announcement to every player standing in one map, on any shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapBroadcast {
    pub map: String,
    pub text: String,
}

/// What travels on `/tessera/chat/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatMsg {
    Announce(Announce),
    MapBroadcast(MapBroadcast),
}
