//! Which shard URL each bot connects to, decided once before the first bot
//! starts.
//!
//! - One `--url`: every bot goes there (as before several URLs existed).
//! - Several `--url`s without `--redis`: bot `i` goes to URL `i % N`. The
//!   shards are treated as independent: each runs its own copy of a room
//!   with the bots sent to it.
//! - With `--redis` (a cluster): each room slot has an **owner**, the shard
//!   its room lives on; `--remote-share F` of the room's bots go to other
//!   shards (round robin over them), the rest to the owner. The owner is
//!   read from the room's lease in the directory when there is one, and
//!   otherwise predicted the way the server places a new room: rendezvous
//!   hashing over the alive, ready shards (`ops::directory::placed_on`).
//!   Predicting is right because a room is placed on its first join and
//!   every shard computes the same answer from the same shard list; the
//!   lease is preferred when it exists because a room may have moved
//!   (migration, failover) since it was placed.
//!
//! The I/O-free part (who goes where, given the owners) is [`assign`], unit
//! tested; [`owners_from_directory`] does the reading.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Target};
use crate::scenario;

/// Where the bots go, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Index into `cfg.targets`, per bot.
    pub shard_of_bot: Vec<u16>,
    /// Per room slot: index of its owner in `cfg.targets` (cluster mode).
    pub owners: Option<Vec<usize>>,
    /// How each room's owner was found, per room slot (for the report).
    pub owner_source: Vec<OwnerSource>,
}

/// How a room's owner was known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerSource {
    /// The room's lease in the directory.
    Lease,
    /// No lease yet: rendezvous hashing over the ready shards.
    Rendezvous,
}

impl Placement {
    /// Every bot on URL `i % N`: one URL, or several without a directory.
    pub fn spread(bots: u32, urls: usize) -> Placement {
        let urls = urls.max(1);
        Placement {
            shard_of_bot: (0..bots).map(|i| (i as usize % urls) as u16).collect(),
            owners: None,
            owner_source: Vec::new(),
        }
    }

    pub fn shard_of(&self, bot: u32) -> usize {
        self.shard_of_bot.get(bot as usize).copied().unwrap_or(0) as usize
    }

    /// Bots per URL.
    pub fn counts(&self, urls: usize) -> Vec<u32> {
        let mut counts = vec![0u32; urls];
        for &s in &self.shard_of_bot {
            if let Some(n) = counts.get_mut(s as usize) {
                *n += 1;
            }
        }
        counts
    }

    /// Bots connected to a shard other than their room's owner.
    pub fn remote_bots(&self, rooms: u32) -> u32 {
        let Some(owners) = &self.owners else { return 0 };
        self.shard_of_bot
            .iter()
            .enumerate()
            .filter(|&(i, &s)| owners[scenario::room_of(i as u32, rooms) as usize] != s as usize)
            .count() as u32
    }
}

/// Whether the room's `k`-th bot (0-based, in bot order) is remote when a
/// share `share` of each room's bots is: spread evenly through the room
/// (Bresenham), `floor(n * share)` of `n` bots in all.
pub fn is_remote(k: u32, share: f64) -> bool {
    let k = f64::from(k);
    ((k + 1.0) * share).floor() > (k * share).floor()
}

/// Assigns every bot a URL, given each room slot's owner (`owners[room]`,
/// an index below `urls`): the room's remote bots go round robin over the
/// other URLs, the rest to the owner.
pub fn assign(bots: u32, rooms: u32, owners: &[usize], urls: usize, share: f64) -> Vec<u16> {
    let mut remote_seen = vec![0usize; owners.len()];
    (0..bots)
        .map(|i| {
            let room = scenario::room_of(i, rooms) as usize;
            let owner = owners[room];
            let k = i / rooms.max(1);
            if urls > 1 && is_remote(k, share) {
                let j = remote_seen[room];
                remote_seen[room] += 1;
                // The j-th URL that is not the owner.
                let other = j % (urls - 1);
                (if other >= owner { other + 1 } else { other }) as u16
            } else {
                owner as u16
            }
        })
        .collect()
}

/// The placement of a run: [`Placement::spread`] without `--redis`,
/// else each room's owner from the directory and [`assign`].
pub async fn place(cfg: &Config) -> anyhow::Result<Placement> {
    let Some(dir) = cfg.directory.clone() else {
        return Ok(Placement::spread(cfg.bots, cfg.targets.len()));
    };
    let rooms: Vec<String> = (0..cfg.rooms)
        .map(|r| {
            scenario::map_of(r, &cfg.maps)
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let targets = cfg.targets.clone();
    let timeout = cfg.connect_timeout;
    let (owners, owner_source) = tokio::task::spawn_blocking(move || {
        owners_from_directory(&dir.redis, &dir.prefix, timeout, &rooms, &targets)
    })
    .await
    .context("the directory read's thread failed")??;
    let shard_of_bot = assign(
        cfg.bots,
        cfg.rooms,
        &owners,
        cfg.targets.len(),
        cfg.remote_share,
    );
    Ok(Placement {
        shard_of_bot,
        owners: Some(owners),
        owner_source,
    })
}

/// Each room's owner as an index into `targets`: its lease's holder, or
/// the rendezvous choice over the ready shards. An owner that is not among
/// `targets` (matched by the shard record's `ws` address) is an error
/// naming it: the bots would not reach the room's owner at all.
pub fn owners_from_directory(
    redis: &str,
    prefix: &str,
    timeout: Duration,
    rooms: &[String],
    targets: &[Target],
) -> anyhow::Result<(Vec<usize>, Vec<OwnerSource>)> {
    let dir = ops::directory::ShardDirectory::new(redis, prefix, timeout)
        .with_context(|| format!("--redis {redis:?}"))?;
    let shards = dir.shards().context("reading the cluster directory")?;
    if shards.is_empty() {
        bail!("the directory at {redis} (prefix {prefix:?}) lists no shard: is --cluster-prefix the shards' cluster.key_prefix?");
    }
    let leases = dir.leases_of(rooms).context("reading room leases")?;
    let mut owners = Vec::with_capacity(rooms.len());
    let mut sources = Vec::with_capacity(rooms.len());
    for (room, lease) in rooms.iter().zip(leases) {
        let (id, source) = match lease {
            Some(lease) => (lease.shard, OwnerSource::Lease),
            None => match ops::directory::placed_on(room, &shards) {
                Some(s) => (s.id.clone(), OwnerSource::Rendezvous),
                None => bail!("room {room:?} has no lease and no shard is ready to place it"),
            },
        };
        let Some(record) = shards.iter().find(|s| s.id == id) else {
            bail!("room {room:?} is held by shard {id:?}, which the directory does not list");
        };
        let Some(index) = targets.iter().position(|t| t.authority == record.ws) else {
            bail!(
                "room {room:?} lives on shard {id:?} (ws {}), which is not one of the --url \
                 values: give every shard's ws address as printed by the shard",
                record.ws
            );
        };
        owners.push(index);
        sources.push(source);
    }
    Ok((owners, sources))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_or_no_directory_spreads_round_robin() {
        let p = Placement::spread(7, 3);
        assert_eq!(p.shard_of_bot, vec![0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(p.counts(3), vec![3, 2, 2]);
        assert_eq!(Placement::spread(4, 1).counts(1), vec![4]);
        assert_eq!(p.remote_bots(1), 0, "no owners, no remote bots");
    }

    #[test]
    fn the_remote_share_is_exact_and_spread_through_the_room() {
        for (n, share, want) in [
            (100, 0.0, 0),
            (100, 1.0, 100),
            (100, 0.25, 25),
            (10, 0.5, 5),
        ] {
            let remote = (0..n).filter(|&k| is_remote(k, share)).count();
            assert_eq!(remote, want, "{n} bots at {share}");
        }
        // Half: every other bot, not the first half.
        let half: Vec<bool> = (0..4).map(|k| is_remote(k, 0.5)).collect();
        assert_eq!(half, vec![false, true, false, true]);
    }

    #[test]
    fn all_local_goes_to_the_owners() {
        // 2 rooms owned by URLs 2 and 0; bot i is in room i % 2.
        let s = assign(6, 2, &[2, 0], 3, 0.0);
        assert_eq!(s, vec![2, 0, 2, 0, 2, 0]);
    }

    #[test]
    fn all_remote_avoids_the_owner_and_uses_every_other_shard() {
        let owners = [1];
        let s = assign(6, 1, &owners, 3, 1.0);
        assert!(s.iter().all(|&u| u != 1), "{s:?}");
        assert_eq!(s, vec![0, 2, 0, 2, 0, 2]);
        let p = Placement {
            shard_of_bot: s,
            owners: Some(owners.to_vec()),
            owner_source: vec![OwnerSource::Rendezvous],
        };
        assert_eq!(p.remote_bots(1), 6);
    }

    #[test]
    fn a_share_sends_that_part_of_each_room_elsewhere() {
        // 3 rooms of 20 bots, owners 0, 1, 2; 30% remote.
        let owners = [0, 1, 2];
        let s = assign(60, 3, &owners, 3, 0.3);
        for room in 0..3u32 {
            let members: Vec<u16> = (0..60u32)
                .filter(|i| i % 3 == room)
                .map(|i| s[i as usize])
                .collect();
            let away = members
                .iter()
                .filter(|&&u| u as usize != owners[room as usize])
                .count();
            assert_eq!(away, 6, "room {room}: {members:?}");
        }
        let p = Placement {
            shard_of_bot: s,
            owners: Some(owners.to_vec()),
            owner_source: vec![OwnerSource::Lease; 3],
        };
        assert_eq!(p.remote_bots(3), 18);
    }
}
