//! The directory's part of the cluster page: every registered shard with
//! its state (`dead` once its record's alive key expired) and its room
//! leases (how many, the stalest renewal, the closest expiry).

use crate::directory::Snapshot;

use super::model::{DirectoryShardView, DirectoryView, ShardStatus};

/// The view of one directory read (`Err`: why it failed) at `now_ms`.
pub fn directory_view(read: Result<Snapshot, String>, lease_ms: u64, now_ms: u64) -> DirectoryView {
    let snap = match read {
        Ok(snap) => snap,
        Err(error) => {
            return DirectoryView {
                shards: Vec::new(),
                lease_ms,
                error: Some(error),
            }
        }
    };
    let shards = snap
        .shards
        .iter()
        .map(|s| {
            let held: Vec<_> = snap.leases.iter().filter(|l| l.shard == s.id).collect();
            let ttl_min = held.iter().filter_map(|l| l.ttl_ms).min();
            DirectoryShardView {
                id: s.id.clone(),
                state: s.shown_state().to_string(),
                ws: s.ws.clone(),
                http: s.http.clone(),
                version: s.version.clone(),
                leases: held.len(),
                lease_age_max_ms: ttl_min.map(|ttl| snap.lease_ms.saturating_sub(ttl)),
                lease_ttl_min_ms: ttl_min,
                heartbeat_age_ms: (s.updated_at > 0).then(|| now_ms.saturating_sub(s.updated_at)),
            }
        })
        .collect();
    DirectoryView {
        shards,
        lease_ms: snap.lease_ms,
        error: None,
    }
}

/// A shard the directory holds dead is shown dead, even if its HTTP
/// port still answers (a shard cut off from Redis, or one being stopped):
/// to the cluster it is gone, its rooms are being taken over.
pub fn mark_dead(statuses: &mut [ShardStatus], view: &DirectoryView) {
    for status in statuses.iter_mut() {
        let dead = view
            .shards
            .iter()
            .any(|d| d.state == "dead" && status.url == format!("http://{}", d.http));
        if dead {
            status.state = "dead".to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{DirectoryShard, RoomLease};

    fn shard(id: &str, alive: bool) -> DirectoryShard {
        DirectoryShard {
            id: id.into(),
            state: "ready".into(),
            alive,
            ws: format!("{id}:1"),
            http: format!("{id}:2"),
            peer: String::new(),
            version: "0.1.0".into(),
            sessions: 0,
            rooms: 0,
            updated_at: 9_000,
        }
    }

    fn lease(room: &str, shard: &str, ttl: u64) -> RoomLease {
        RoomLease {
            room: room.into(),
            shard: shard.into(),
            epoch: 1,
            ttl_ms: Some(ttl),
        }
    }

    #[test]
    fn leases_are_counted_and_aged_per_shard_and_dead_shards_show_dead() {
        let snap = Snapshot {
            shards: vec![shard("a", true), shard("b", false)],
            leases: vec![lease("lobby", "a", 2500), lease("arena", "a", 2900)],
            lease_ms: 3000,
        };
        let view = directory_view(Ok(snap), 3000, 10_000);
        let a = &view.shards[0];
        assert_eq!(
            (a.leases, a.lease_ttl_min_ms, a.lease_age_max_ms),
            (2, Some(2500), Some(500))
        );
        assert_eq!(a.heartbeat_age_ms, Some(1000));
        assert_eq!(view.shards[1].state, "dead");
        assert_eq!(view.shards[1].leases, 0);

        let mut statuses = vec![ShardStatus {
            url: "http://b:2".into(),
            state: "ready".into(),
            info: None,
            topics: Vec::new(),
            error: None,
        }];
        mark_dead(&mut statuses, &view);
        assert_eq!(statuses[0].state, "dead");
    }

    #[test]
    fn a_directory_that_failed_says_why() {
        let view = directory_view(Err("no redis".into()), 3000, 1);
        assert!(view.shards.is_empty());
        assert_eq!(view.error.as_deref(), Some("no redis"));
    }
}
