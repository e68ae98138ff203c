//! A drain moves the shard's rooms live before it closes its sockets:
//! every room this shard runs under a lease is migrated to the ready
//! shard the placement picks (a few at a time, within the drain's share
//! of `cluster.drain_budget_ms`). A room that cannot move (no other shard
//! is ready, the target refused, the budget ran out) is left to today's
//! cold path: stopped and saved with the shard, its lease released, and
//! found again by its players' shards.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};

use super::super::RoomCluster;
use crate::ids::RoomId;

/// Rooms migrated at once during a drain.
const AT_ONCE: usize = 4;

/// What a drain's migrations came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainMoves {
    pub moved: Vec<RoomId>,
    /// Left to the cold path, with why.
    pub stayed: Vec<(RoomId, String)>,
}

impl RoomCluster {
    /// Migrate every room this shard owns, within `budget`.
    pub async fn migrate_all(self: &Arc<Self>, budget: Duration) -> DrainMoves {
        let Some(rooms) = self.rooms() else {
            return DrainMoves::default();
        };
        let owned: Vec<RoomId> = rooms
            .running_rooms()
            .into_iter()
            .filter(|r| rooms.epoch(r) > 0)
            .collect();
        let mut report = DrainMoves::default();
        if owned.is_empty() {
            return report;
        }
        let moves = stream::iter(owned.clone())
            .map(|room| {
                let cluster = self.clone();
                async move {
                    let result = cluster.migrate(&room, None).await;
                    (room, result)
                }
            })
            .buffer_unordered(AT_ONCE)
            .collect::<Vec<_>>();
        match tokio::time::timeout(budget, moves).await {
            Ok(results) => {
                for (room, result) in results {
                    match result {
                        Ok(_) => report.moved.push(room),
                        Err(e) => report.stayed.push((room, e.to_string())),
                    }
                }
            }
            Err(_) => {
                // Whatever did not move in time stays for the cold path;
                // a migration still under way finishes or resumes on its
                // own (each is bounded by its own budgets).
                for room in owned {
                    if rooms.runs(&room) {
                        report.stayed.push((room, "drain budget ran out".into()));
                    } else {
                        report.moved.push(room);
                    }
                }
            }
        }
        tracing::info!(
            moved = report.moved.len(),
            stayed = report.stayed.len(),
            "drain: rooms migrated"
        );
        for (room, why) in &report.stayed {
            tracing::warn!(%room, why, "drain: room not migrated; it stops with the shard");
        }
        report
    }
}
