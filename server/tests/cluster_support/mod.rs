//! Three in-process shards, `a`, `b` and `c`, in one cluster over a real
//! `redis-server` (started on a free loopback port, stopped on drop), for
//! the tests of rooms played across shards. Each test file gives the
//! shards' configuration.

#![allow(dead_code)]

use std::time::Duration;

use server::cluster::{Directory, ShardId};
use server::config::Config;
use server::ids::RoomId;

use crate::common::{self, TestShard};
use crate::redis_support::RedisServer;

/// The cluster secret every test shard holds.
pub const SECRET: &str = "ssssssssssssssssssssssssssssssss";

/// The shards' ids, by index.
pub const ID: [&str; 3] = ["a", "b", "c"];

/// A shard of a test cluster: cluster mode over `redis_url` under the key
/// prefix `prefix`, with timings slower than the defaults (the tests share
/// two cores with builds) and clients that may wait through failovers
/// without a word. Each test file sets what it needs on top.
pub fn shard_config(redis_url: String, prefix: &str, id: &str) -> Config {
    let mut config = common::test_config();
    config.cluster.redis = redis_url;
    config.cluster.secret = SECRET.into();
    config.cluster.key_prefix = prefix.into();
    config.cluster.shard_id = id.into();
    config.cluster.peer_addr = "127.0.0.1:0".parse().unwrap();
    config.cluster.lease_ms = 6_000;
    config.cluster.renew_ms = 2_000;
    config.cluster.shard_ttl_ms = 6_000;
    config.cluster.heartbeat_ms = 1_000;
    config.cluster.redis_timeout_ms = 1_500;
    config.cluster.redis_wait_ms = 5_000;
    config.cluster.failover_budget_ms = 30_000;
    config.server.idle_timeout_ms = 120_000;
    config.rooms.call_timeout_ms = 5_000;
    config
}

pub struct Cluster {
    pub shards: Vec<Option<TestShard>>,
    pub dir: Directory,
    pub redis: RedisServer,
}

impl Cluster {
    /// Three shards, each with `config(redis, id)`, registered and ready
    /// within `patience`.
    pub async fn start(
        config: impl Fn(&RedisServer, &str) -> Config,
        patience: Duration,
    ) -> Cluster {
        Cluster::start_on(RedisServer::start(), config, patience).await
    }

    /// [`Cluster::start`] over a `redis-server` the test started (to put
    /// something between it and the shards, say).
    pub async fn start_on(
        redis: RedisServer,
        config: impl Fn(&RedisServer, &str) -> Config,
        patience: Duration,
    ) -> Cluster {
        let mut shards = Vec::new();
        for id in ID {
            let config = config(&redis, id);
            let shard = tokio::task::spawn_blocking(move || common::start(config))
                .await
                .unwrap();
            shards.push(Some(shard));
        }
        let dir = shards[0].as_ref().unwrap().cluster.clone().unwrap();
        let cluster = Cluster { shards, dir, redis };
        let dir = cluster.dir.clone();
        common::eventually(patience, "three shards ready", || {
            let dir = dir.clone();
            async move {
                dir.shards()
                    .await
                    .map(|s| s.iter().filter(|s| s.alive && s.placeable()).count() == 3)
                    .unwrap_or(false)
            }
        })
        .await;
        cluster
    }

    pub fn shard(&self, i: usize) -> &TestShard {
        self.shards[i].as_ref().expect("shard running")
    }

    pub fn index_of(&self, id: &ShardId) -> usize {
        ID.iter()
            .position(|s| *s == id.as_str())
            .expect("one of a, b, c")
    }

    /// The index of the shard that owns `room` now, and its lease epoch.
    pub async fn owner(&self, room: &str) -> (usize, u64) {
        let room: RoomId = room.parse().unwrap();
        let (shard, epoch) = self
            .dir
            .owner(&room)
            .await
            .unwrap()
            .expect("the room has an owner");
        (self.index_of(&shard), epoch)
    }

    /// Shut shard `i` down (in order, as a stopped process would).
    pub async fn stop(&mut self, i: usize) {
        let shard = self.shards[i].take().expect("shard running");
        tokio::task::spawn_blocking(move || drop(shard))
            .await
            .unwrap();
    }

    pub async fn close(mut self) {
        for i in 0..self.shards.len() {
            if self.shards[i].is_some() {
                self.stop(i).await;
            }
        }
    }
}

/// Wait until every shard in `edges` has heard from `owner` (SWIM's
/// failure detector declares dead only a member it has heard from),
/// asking each one's `GET /admin/peers` with `admin_token`.
pub async fn heard_from(edges: &[&TestShard], owner: &str, admin_token: &str, patience: Duration) {
    for shard in edges {
        let url = format!("http://{}/admin/peers", shard.http_addr);
        common::eventually(patience, "the edge has heard from the owner", || {
            let url = url.clone();
            async move {
                let (_, body) = common::http("GET", &url, Some(admin_token), "").await;
                serde_json::from_str::<protocol::admin::Peers>(&body)
                    .map(|p| {
                        p.members
                            .iter()
                            .any(|m| m.shard_id == owner && m.incarnation > 0)
                    })
                    .unwrap_or(false)
            }
        })
        .await;
    }
}
