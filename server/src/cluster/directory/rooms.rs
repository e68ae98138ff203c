//! Room leases and placement.
//!
//! # Placement: rendezvous hashing over the ready shards
//!
//! A new room goes to the alive, ready shard with the highest
//! `hash(room, shard)` (highest random weight). Chosen over "least
//! loaded" because every shard computes the same answer from the same
//! list with no coordination: two shards placing the same new room at
//! the same moment agree, so they do not race for its lease; adding or
//! removing a shard moves only the rooms that hash to it (about 1/N); and
//! it needs no fresh load figures, where least-loaded reads loads up to
//! one heartbeat old and herds a burst of new rooms onto the shard that
//! looked idle. Rooms are many and alike, so the hash spreads them evenly
//! enough; a shard that is draining, starting or dead is never chosen.
//! The weight is `protocol::peer::rendezvous`, which `tessera-ops` uses
//! too to say where a room will go.

use std::collections::BTreeMap;
use std::time::Instant;

use protocol::peer::rendezvous;

use super::scripts::{ACQUIRE, RELEASE, RENEW};
use super::{Directory, DirectoryError, Held, Lease, Result, ShardId};
use crate::cluster::metric;
use crate::ids::RoomId;

/// The outcome of one renewal batch, per room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RenewReport {
    pub renewed: Vec<RoomId>,
    /// The lease was gone (expired, or Redis lost it) and was set again
    /// with the same epoch.
    pub reasserted: Vec<RoomId>,
    pub lost: Vec<(RoomId, u64)>,
}

impl Directory {
    /// Take `room`'s lease for this shard. `floor` is the owner epoch the
    /// store last saw for the room (0 if none): the new epoch is above it
    /// and above every epoch the directory handed out before. Taking a
    /// lease this process already holds renews it and returns its epoch;
    /// one that names this shard but was taken by a former process with
    /// its id (a restart within the lease) is taken at a new epoch, so the
    /// old process is fenced. `Held` naming this shard: a later process
    /// with this shard's id took it, this one is stale.
    /// Waits up to `cluster.redis_wait_ms` for Redis.
    pub async fn acquire_room(&self, room: &RoomId, floor: u64) -> Result<Lease> {
        self.waiting(|| self.try_acquire(room, floor)).await
    }

    async fn try_acquire(&self, room: &RoomId, floor: u64) -> Result<Lease> {
        let name = room.to_string();
        let lease_key = self.key(&["room", &name]);
        let counter = self.key(&["epoch", &name]);
        let set = self.key(&["rooms", self.shard().as_str()]);
        let shard = self.shard().to_string();
        let lease_ms = self.settings().lease.as_millis() as u64;
        // What makes this process's lease its own: a lease naming this
        // shard at another epoch is a former (or later) incarnation's.
        let held = self.held_epoch(room).unwrap_or(0);
        let sent = Instant::now();
        let mut script = ACQUIRE.prepare_invoke();
        script
            .key(lease_key)
            .key(counter)
            .key(set)
            .arg(shard)
            .arg(floor)
            .arg(lease_ms)
            .arg(name)
            .arg(held);
        let (taken, value): (i64, String) = self.run("acquire_room", &script).await?;
        if taken != 1 {
            let (shard, epoch) = parse_lease(&value)?;
            return Err(DirectoryError::Held {
                room: room.clone(),
                shard,
                epoch,
            });
        }
        self.granted(room, &value, "acquire", sent)
    }

    /// A script (`what`) granted this shard `room` and answered its epoch
    /// (`value`): hold the lease, valid for a lease from `sent` (when the
    /// script was sent, so the lease is never thought longer than Redis
    /// keeps it), and renew it from now on.
    pub(super) fn granted(
        &self,
        room: &RoomId,
        value: &str,
        what: &str,
        sent: Instant,
    ) -> Result<Lease> {
        let epoch = value
            .parse::<u64>()
            .map_err(|_| DirectoryError::Protocol(format!("{what} answered epoch {value:?}")))?;
        let mut held = self.inner.held.lock();
        held.insert(
            room.clone(),
            Held {
                epoch,
                valid_until: sent + self.settings().lease,
                expired: false,
            },
        );
        self.held_changed(&held);
        Ok(Lease {
            room: room.clone(),
            shard: self.shard().clone(),
            epoch,
        })
    }

    /// Give `room` up: its lease is deleted if it is still ours, and this
    /// shard stops renewing it at once (so when Redis does not answer, the
    /// lease still ends, at its expiry). `NotOwner` if this shard did not
    /// hold it, or another shard did by then.
    pub async fn release_room(&self, room: &RoomId) -> Result<()> {
        let epoch = {
            let mut held = self.inner.held.lock();
            let epoch = held.remove(room).map(|h| h.epoch);
            self.held_changed(&held);
            epoch
        };
        let Some(epoch) = epoch else {
            return Err(DirectoryError::NotOwner {
                room: room.clone(),
                shard: self.shard().clone(),
            });
        };
        let name = room.to_string();
        let lease_key = self.key(&["room", &name]);
        let set = self.key(&["rooms", self.shard().as_str()]);
        let mine = format!("{}:{epoch}", self.shard());
        let mut script = RELEASE.prepare_invoke();
        script.key(lease_key).key(set).arg(mine).arg(name);
        let released: i64 = self.run("release_room", &script).await?;
        if released == 1 {
            Ok(())
        } else {
            Err(DirectoryError::NotOwner {
                room: room.clone(),
                shard: self.shard().clone(),
            })
        }
    }

    /// Renew every lease this shard holds, in one script call. Leases lost
    /// are forgotten; re-asserted ones are valid again.
    pub async fn renew_all(&self) -> Result<RenewReport> {
        let held: Vec<(RoomId, u64)> = self
            .inner
            .held
            .lock()
            .iter()
            .map(|(r, h)| (r.clone(), h.epoch))
            .collect();
        if held.is_empty() {
            return Ok(RenewReport::default());
        }
        let sent = Instant::now();
        let lease = self.settings().lease;
        let mut invocation = RENEW.prepare_invoke();
        invocation
            .arg(lease.as_millis() as u64)
            .arg(self.shard().as_str());
        for (room, epoch) in &held {
            let name = room.to_string();
            invocation
                .key(self.key(&["room", &name]))
                .key(self.key(&["epoch", &name]))
                .arg(name)
                .arg(*epoch);
        }
        invocation.key(self.key(&["rooms", self.shard().as_str()]));
        let answers: Vec<i64> = self.run("renew_leases", &invocation).await?;
        if answers.len() != held.len() {
            return Err(DirectoryError::Protocol(format!(
                "renewal answered {} results for {} leases",
                answers.len(),
                held.len()
            )));
        }
        let mut report = RenewReport::default();
        let mut table = self.inner.held.lock();
        for ((room, epoch), answer) in held.into_iter().zip(answers) {
            // A lease released or re-acquired meanwhile is not ours to judge.
            let Some(h) = table.get_mut(&room).filter(|h| h.epoch == epoch) else {
                continue;
            };
            match answer {
                1 | 2 => {
                    h.valid_until = sent + lease;
                    if answer == 2 || h.expired {
                        h.expired = false;
                        report.reasserted.push(room);
                    } else {
                        report.renewed.push(room);
                    }
                }
                _ => {
                    table.remove(&room);
                    metrics::counter!(metric::LEASES_LOST).increment(1);
                    report.lost.push((room, epoch));
                }
            }
        }
        self.held_changed(&table);
        Ok(report)
    }

    /// Leases past `valid_until - margin` that are not marked yet: marked
    /// expired and returned (the caller tells the room side).
    pub(crate) fn mark_expiring(&self, margin: std::time::Duration) -> Vec<(RoomId, u64)> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (room, h) in self.inner.held.lock().iter_mut() {
            if !h.expired && now + margin >= h.valid_until {
                h.expired = true;
                out.push((room.clone(), h.epoch));
            }
        }
        out
    }

    /// Who holds `room` now, at which epoch.
    pub async fn owner(&self, room: &RoomId) -> Result<Option<(ShardId, u64)>> {
        let key = self.key(&["room", &room.to_string()]);
        let value: Option<String> = self.run("owner", redis::cmd("GET").arg(key)).await?;
        value.as_deref().map(parse_lease).transpose()
    }

    /// The rooms shard `shard` took leases on (its room set): some may
    /// have expired since; [`Directory::owner`] says who holds each now.
    pub async fn rooms_of(&self, shard: &ShardId) -> Result<Vec<RoomId>> {
        let key = self.key(&["rooms", shard.as_str()]);
        let names: Vec<String> = self
            .run("rooms_of", redis::cmd("SMEMBERS").arg(key))
            .await?;
        let mut rooms: Vec<RoomId> = names.iter().filter_map(|n| n.parse().ok()).collect();
        rooms.sort();
        Ok(rooms)
    }

    /// Every lease in the cluster right now, by room (for the console).
    pub async fn leases(&self) -> Result<BTreeMap<RoomId, (ShardId, u64)>> {
        let mut out = BTreeMap::new();
        for shard in self.shard_ids().await? {
            for room in self.rooms_of(&shard).await? {
                if let Some(owner) = self.owner(&room).await? {
                    out.insert(room, owner);
                }
            }
        }
        Ok(out)
    }

    /// The shard a new room goes to: rendezvous hashing over the alive,
    /// ready shards (see the module doc). Waits up to
    /// `cluster.redis_wait_ms` for Redis.
    pub async fn place(&self, room: &RoomId) -> Result<ShardId> {
        let shards = self.waiting(|| self.shards()).await?;
        let name = room.to_string();
        shards
            .into_iter()
            .filter(|s| s.placeable())
            .max_by_key(|s| (rendezvous(&name, s.id.as_str()), s.id.clone()))
            .map(|s| s.id)
            .ok_or_else(|| DirectoryError::NoShard(room.clone()))
    }
}

/// `shard:epoch` into its parts.
pub(super) fn parse_lease(value: &str) -> Result<(ShardId, u64)> {
    let bad = || DirectoryError::Protocol(format!("a lease holds {value:?}"));
    let (shard, epoch) = value.rsplit_once(':').ok_or_else(bad)?;
    Ok((
        ShardId::new(shard).map_err(|_| bad())?,
        epoch.parse().map_err(|_| bad())?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_parse_and_bad_ones_are_errors() {
        let (shard, epoch) = parse_lease("eu-1:42").unwrap();
        assert_eq!((shard.as_str(), epoch), ("eu-1", 42));
        assert!(parse_lease("nocolon").is_err());
        assert!(parse_lease("a:b").is_err());
    }
}
