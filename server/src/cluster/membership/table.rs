//! The membership table as a pure state machine: who is alive, suspect
//! or dead at which incarnation, the suspicion deadlines, and the queue of
//! changes waiting to be piggybacked. No I/O and no clock of its own:
//! every call that needs the time takes `now`, so the rules are tested in
//! memory (below) and the runtime ([`super::probe`]) only moves messages.
//!
//! The rules (PEER.md, "The swim stream"): news about a member replaces
//! what is known when [`Update::overrides`] says so (a higher incarnation,
//! or at the same one a stronger state: `dead` > `suspect` > `alive`).
//! News that this shard is suspect or dead at its incarnation or above is
//! refuted by bumping the incarnation past it and gossiping `alive`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use protocol::admin::ClusterMember;
use protocol::peer::{MemberState, Update};

/// A membership change, as subscribers of [`super::Membership::subscribe`]
/// see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// The shard is a member again (joined, or refuted a suspicion, or came
    /// back from the dead at a higher incarnation).
    Alive { shard: String, incarnation: u64 },
    /// A probe of the shard failed, here or at another member: it has the
    /// suspicion timeout to refute. A hint only: the directory's leases
    /// stay the authority over rooms.
    Suspected { shard: String, incarnation: u64 },
    /// The suspicion was not refuted in time. Final for this incarnation;
    /// look at the shard's leases in the directory now rather than when
    /// they expire.
    Dead { shard: String, incarnation: u64 },
}

impl MemberEvent {
    pub fn shard(&self) -> &str {
        match self {
            MemberEvent::Alive { shard, .. }
            | MemberEvent::Suspected { shard, .. }
            | MemberEvent::Dead { shard, .. } => shard,
        }
    }

    fn of(shard: &str, state: MemberState, incarnation: u64) -> MemberEvent {
        let shard = shard.to_string();
        match state {
            MemberState::Alive => MemberEvent::Alive { shard, incarnation },
            MemberState::Suspect => MemberEvent::Suspected { shard, incarnation },
            MemberState::Dead => MemberEvent::Dead { shard, incarnation },
        }
    }
}

/// What applying one update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Old news, or about a dead shard this table never knew.
    Nothing,
    /// Newer incarnation, same state: gossiped on, nobody told.
    Updated,
    /// The member's state changed.
    Changed(MemberEvent),
    /// It was about this shard being suspect or dead: refuted.
    Refuted { incarnation: u64 },
}

struct Row {
    state: MemberState,
    inc: u64,
    since: Instant,
    /// While suspect: when it turns dead.
    deadline: Option<Instant>,
    /// Whether any news of it came (from itself or others): a member only
    /// joined (from the directory) and never heard from is not suspected
    /// by this shard's probes, which may fail only because the tunnel is
    /// not up yet; the directory's TTL covers a shard that never came up.
    heard: bool,
}

struct Pending {
    update: Update,
    sent: u32,
}

/// The limits of the table (from [`super::SwimSettings`]).
#[derive(Debug, Clone, Copy)]
pub struct TableLimits {
    pub suspect_timeout: Duration,
    /// Updates per message at most.
    pub piggyback: usize,
    /// Each update is sent `retransmit × ⌈log10(n + 1)⌉` times.
    pub retransmit: u32,
}

pub struct Table {
    me: String,
    inc: u64,
    limits: TableLimits,
    rows: BTreeMap<String, Row>,
    gossip: Vec<Pending>,
}

impl Table {
    pub fn new(me: &str, incarnation: u64, limits: TableLimits) -> Table {
        Table {
            me: me.to_string(),
            inc: incarnation,
            limits,
            rows: BTreeMap::new(),
            gossip: Vec::new(),
        }
    }

    pub fn incarnation(&self) -> u64 {
        self.inc
    }

    /// Add `shard` as alive at incarnation 0 (any message from it brings
    /// its real one) unless known. The event when it is new.
    pub fn join(&mut self, shard: &str, now: Instant) -> Option<MemberEvent> {
        if shard == self.me || self.rows.contains_key(shard) {
            return None;
        }
        self.rows.insert(
            shard.to_string(),
            Row {
                state: MemberState::Alive,
                inc: 0,
                since: now,
                deadline: None,
                heard: false,
            },
        );
        Some(MemberEvent::of(shard, MemberState::Alive, 0))
    }

    /// Drop a member the cluster no longer lists (it left for good).
    pub fn forget(&mut self, shard: &str) {
        self.rows.remove(shard);
        self.gossip.retain(|p| p.update.shard != shard);
    }

    pub fn state(&self, shard: &str) -> Option<(MemberState, u64)> {
        self.rows.get(shard).map(|r| (r.state, r.inc))
    }

    /// Apply one piece of news (gossip, or a message's sender incarnation).
    pub fn apply(&mut self, update: &Update, now: Instant) -> Applied {
        if update.shard == self.me {
            if update.state != MemberState::Alive && update.inc >= self.inc {
                self.inc = update.inc + 1;
                let me = self.me.clone();
                self.queue(Update {
                    shard: me,
                    state: MemberState::Alive,
                    inc: self.inc,
                });
                return Applied::Refuted {
                    incarnation: self.inc,
                };
            }
            return Applied::Nothing;
        }
        let changed = match self.rows.get_mut(&update.shard) {
            None if update.state == MemberState::Dead => return Applied::Nothing,
            None => {
                self.rows.insert(
                    update.shard.clone(),
                    Row {
                        state: update.state,
                        inc: update.inc,
                        since: now,
                        deadline: None,
                        heard: true,
                    },
                );
                true
            }
            Some(row) if update.overrides(row.state, row.inc) => {
                row.heard = true;
                let changed = row.state != update.state;
                row.inc = update.inc;
                if changed {
                    row.state = update.state;
                    row.since = now;
                }
                changed
            }
            Some(row) => {
                row.heard = true;
                return Applied::Nothing;
            }
        };
        if let Some(row) = self.rows.get_mut(&update.shard) {
            // A new suspicion (a new state, or a suspicion at a newer
            // incarnation) gets the whole timeout.
            row.deadline =
                (row.state == MemberState::Suspect).then(|| now + self.limits.suspect_timeout);
        }
        self.queue(update.clone());
        if changed {
            Applied::Changed(MemberEvent::of(&update.shard, update.state, update.inc))
        } else {
            Applied::Updated
        }
    }

    /// A probe of `shard` failed here: suspect it at its incarnation.
    pub fn suspect(&mut self, shard: &str, now: Instant) -> Option<MemberEvent> {
        let row = self.rows.get(shard)?;
        if row.state != MemberState::Alive || !row.heard {
            return None;
        }
        let update = Update {
            shard: shard.to_string(),
            state: MemberState::Suspect,
            inc: row.inc,
        };
        match self.apply(&update, now) {
            Applied::Changed(event) => Some(event),
            _ => None,
        }
    }

    /// Suspects whose timeout passed become dead (and are gossiped so).
    pub fn expire(&mut self, now: Instant) -> Vec<MemberEvent> {
        let due: Vec<(String, u64)> = self
            .rows
            .iter()
            .filter(|(_, r)| {
                r.state == MemberState::Suspect && r.deadline.is_some_and(|d| d <= now)
            })
            .map(|(id, r)| (id.clone(), r.inc))
            .collect();
        due.into_iter()
            .filter_map(|(shard, inc)| {
                let update = Update {
                    shard,
                    state: MemberState::Dead,
                    inc,
                };
                match self.apply(&update, now) {
                    Applied::Changed(event) => Some(event),
                    _ => None,
                }
            })
            .collect()
    }

    /// Members worth probing: every one not dead, in id order.
    pub fn probeable(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter(|(_, r)| r.state != MemberState::Dead)
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn queue(&mut self, update: Update) {
        // The newest news about a shard replaces what was still queued.
        self.gossip.retain(|p| p.update.shard != update.shard);
        self.gossip.push(Pending { update, sent: 0 });
    }

    /// How many times each update is sent before it leaves the queue.
    pub fn retransmit_limit(&self) -> u32 {
        let n = self.rows.len() as f64 + 1.0;
        self.limits.retransmit * ((n + 1.0).log10().ceil() as u32).max(1)
    }

    /// The updates for the next message: the least-sent first, at most
    /// `piggyback`; each is counted as sent once more and leaves the queue
    /// at the retransmit limit.
    pub fn take_gossip(&mut self) -> Vec<Update> {
        let limit = self.retransmit_limit();
        self.gossip.sort_by_key(|p| p.sent);
        let take = self.gossip.len().min(self.limits.piggyback);
        let out = self.gossip[..take]
            .iter_mut()
            .map(|p| {
                p.sent += 1;
                p.update.clone()
            })
            .collect();
        self.gossip.retain(|p| p.sent < limit);
        out
    }

    pub fn gossip_queued(&self) -> usize {
        self.gossip.len()
    }

    /// The admin view of every member.
    pub fn members(&self, now: Instant) -> Vec<ClusterMember> {
        self.rows
            .iter()
            .map(|(id, r)| ClusterMember {
                shard_id: id.clone(),
                state: r.state,
                incarnation: r.inc,
                since_ms: now.saturating_duration_since(r.since).as_millis() as u64,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MemberState::*;

    fn limits() -> TableLimits {
        TableLimits {
            suspect_timeout: Duration::from_secs(2),
            piggyback: 2,
            retransmit: 2,
        }
    }

    fn up(shard: &str, state: MemberState, inc: u64) -> Update {
        Update {
            shard: shard.into(),
            state,
            inc,
        }
    }

    fn table() -> (Table, Instant) {
        let now = Instant::now();
        let mut t = Table::new("a", 100, limits());
        t.join("b", now);
        t.join("c", now);
        (t, now)
    }

    #[test]
    fn a_member_never_heard_from_is_not_suspected_by_a_failed_probe() {
        let (mut t, now) = table();
        assert_eq!(t.suspect("b", now), None);
        assert_eq!(t.state("b"), Some((Alive, 0)));
        // Once it spoke (at any incarnation), a failed probe suspects it.
        t.apply(&up("b", Alive, 0), now);
        assert!(t.suspect("b", now).is_some());
    }

    #[test]
    fn a_higher_incarnation_overrides_any_state() {
        let (mut t, now) = table();
        t.apply(&up("c", Dead, 3), now);
        assert_eq!(t.state("c"), Some((Dead, 3)));
        let applied = t.apply(&up("c", Alive, 4), now);
        assert_eq!(
            applied,
            Applied::Changed(MemberEvent::Alive {
                shard: "c".into(),
                incarnation: 4
            })
        );
        // Same state, newer incarnation: recorded and gossiped, no event.
        assert_eq!(t.apply(&up("c", Alive, 5), now), Applied::Updated);
        assert_eq!(t.state("c"), Some((Alive, 5)));
    }

    #[test]
    fn suspect_at_equal_incarnation_overrides_alive_but_not_the_reverse() {
        let (mut t, now) = table();
        t.apply(&up("b", Alive, 7), now);
        assert!(matches!(
            t.apply(&up("b", Suspect, 7), now),
            Applied::Changed(MemberEvent::Suspected { .. })
        ));
        assert_eq!(t.apply(&up("b", Alive, 7), now), Applied::Nothing);
        assert_eq!(t.state("b"), Some((Suspect, 7)));
        // Older news changes nothing.
        assert_eq!(t.apply(&up("b", Dead, 6), now), Applied::Nothing);
    }

    #[test]
    fn dead_is_final_for_its_incarnation() {
        let (mut t, now) = table();
        t.apply(&up("b", Dead, 7), now);
        assert_eq!(t.apply(&up("b", Alive, 7), now), Applied::Nothing);
        assert_eq!(t.apply(&up("b", Suspect, 7), now), Applied::Nothing);
        assert_eq!(t.state("b"), Some((Dead, 7)));
        assert!(!t.probeable().contains(&"b".to_string()));
        // Unknown shards are not brought in dead.
        assert_eq!(t.apply(&up("z", Dead, 1), now), Applied::Nothing);
        assert_eq!(t.state("z"), None);
    }

    #[test]
    fn a_suspicion_of_this_shard_is_refuted_with_a_higher_incarnation() {
        let (mut t, now) = table();
        assert_eq!(
            t.apply(&up("a", Suspect, 100), now),
            Applied::Refuted { incarnation: 101 }
        );
        assert_eq!(t.incarnation(), 101);
        assert!(t.take_gossip().contains(&up("a", Alive, 101)));
        // A stale suspicion needs no answer; dead news is refuted too.
        assert_eq!(t.apply(&up("a", Suspect, 50), now), Applied::Nothing);
        assert_eq!(
            t.apply(&up("a", Dead, 101), now),
            Applied::Refuted { incarnation: 102 }
        );
    }

    #[test]
    fn an_unrefuted_suspect_turns_dead_at_its_deadline() {
        let (mut t, now) = table();
        t.apply(&up("b", Alive, 3), now);
        t.apply(&up("c", Alive, 0), now);
        assert!(matches!(
            t.suspect("b", now),
            Some(MemberEvent::Suspected { incarnation: 3, .. })
        ));
        // Suspecting again changes nothing.
        assert_eq!(t.suspect("b", now), None);
        assert!(t.expire(now + Duration::from_secs(1)).is_empty());
        assert_eq!(
            t.expire(now + Duration::from_secs(2)),
            vec![MemberEvent::Dead {
                shard: "b".into(),
                incarnation: 3
            }]
        );
        // A refutation before the deadline would have cleared it.
        t.suspect("c", now);
        t.apply(&up("c", Alive, 1), now);
        assert!(t.expire(now + Duration::from_secs(10)).is_empty());
        assert_eq!(t.state("c"), Some((Alive, 1)));
    }

    #[test]
    fn gossip_is_bounded_per_message_and_retransmitted_a_bounded_number_of_times() {
        let (mut t, now) = table();
        for (i, id) in ["b", "c", "d"].into_iter().enumerate() {
            t.apply(&up(id, Suspect, 10 + i as u64), now);
        }
        // 3 members: limit 2 × ⌈log10(5)⌉ = 2 sends each.
        assert_eq!(t.retransmit_limit(), 2);
        let mut sends = 0;
        while t.gossip_queued() > 0 {
            let batch = t.take_gossip();
            assert!(batch.len() <= 2, "{batch:?}");
            sends += batch.len();
            assert!(sends <= 6, "an update was sent too often");
        }
        assert_eq!(sends, 6);
        assert!(t.take_gossip().is_empty());
    }
}
