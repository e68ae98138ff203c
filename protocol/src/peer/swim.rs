//! The `/tessera/swim/1` stream: failure detection and membership in the
//! SWIM manner (the idea behind HashiCorp's memberlist).
//!
//! Each shard opens one long-lived stream to every peer it probes and
//! sends [`SwimMsg::Ping`] and [`SwimMsg::PingReq`] on it; the peer answers
//! each with an [`SwimMsg::Ack`] on the same stream, carrying the `seq` it
//! answers. A `ping_req` asks the peer to ping `target` itself and, when
//! the target answers, to ack the asker's `seq`. Every message names its
//! sender's own incarnation (`inc`) and piggybacks a bounded list of
//! membership changes ([`Update`]), so a change spreads with the probes
//! and needs no traffic of its own.
//!
//! Which update wins: the one with the higher incarnation; at the same
//! incarnation `dead` beats `suspect`, which beats `alive`
//! ([`Update::overrides`]). A shard that hears it is suspected (or dead)
//! at its own incarnation or above answers with `alive` at a higher one:
//! the refutation.

use serde::{Deserialize, Serialize};

/// A member's state, as gossip carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    Alive,
    Suspect,
    Dead,
}

impl MemberState {
    /// Precedence at equal incarnation: alive < suspect < dead.
    pub fn rank(self) -> u8 {
        match self {
            MemberState::Alive => 0,
            MemberState::Suspect => 1,
            MemberState::Dead => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Dead => "dead",
        }
    }
}

/// One membership change: `shard` is `state` at incarnation `inc`, as a
/// compact array `[shard, state, inc]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    from = "(String, MemberState, u64)",
    into = "(String, MemberState, u64)"
)]
pub struct Update {
    pub shard: String,
    pub state: MemberState,
    pub inc: u64,
}

impl From<(String, MemberState, u64)> for Update {
    fn from((shard, state, inc): (String, MemberState, u64)) -> Update {
        Update { shard, state, inc }
    }
}

impl From<Update> for (String, MemberState, u64) {
    fn from(u: Update) -> Self {
        (u.shard, u.state, u.inc)
    }
}

impl Update {
    /// Whether this update replaces what is known as `(state, inc)`: a
    /// higher incarnation always does; at the same one only a stronger
    /// state (so `dead` is final for its incarnation).
    pub fn overrides(&self, state: MemberState, inc: u64) -> bool {
        (self.inc, self.state.rank()) > (inc, state.rank())
    }
}

/// A direct probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub seq: u64,
    /// The sender's own incarnation.
    pub inc: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gossip: Vec<Update>,
    /// The sender reaches the cluster directory (Redis) now; absent when
    /// it does not. An owner cut off from Redis freezes its rooms only
    /// while some peer says it reaches it (added in 1.1).
    #[serde(default, skip_serializing_if = "is_false")]
    pub dir: bool,
}

/// Ask the receiver to probe `target` on the sender's behalf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingReq {
    pub seq: u64,
    pub inc: u64,
    pub target: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gossip: Vec<Update>,
    /// The sender reaches the cluster directory (Redis) now; absent when
    /// it does not. An owner cut off from Redis freezes its rooms only
    /// while some peer says it reaches it (added in 1.1).
    #[serde(default, skip_serializing_if = "is_false")]
    pub dir: bool,
}

/// The answer to a `ping`, or to a `ping_req` whose target answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The `seq` of the ping or ping-req answered.
    pub seq: u64,
    pub inc: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gossip: Vec<Update>,
    /// The sender reaches the cluster directory (Redis) now; absent when
    /// it does not. An owner cut off from Redis freezes its rooms only
    /// while some peer says it reaches it (added in 1.1).
    #[serde(default, skip_serializing_if = "is_false")]
    pub dir: bool,
}

/// Every message of the swim stream, both ways.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SwimMsg {
    Ping(Ping),
    PingReq(PingReq),
    Ack(Ack),
}

impl SwimMsg {
    /// The gossip the message carries.
    pub fn gossip(&self) -> &[Update] {
        match self {
            SwimMsg::Ping(p) => &p.gossip,
            SwimMsg::PingReq(p) => &p.gossip,
            SwimMsg::Ack(a) => &a.gossip,
        }
    }

    /// Whether the sender reaches the cluster directory.
    pub fn dir(&self) -> bool {
        match self {
            SwimMsg::Ping(p) => p.dir,
            SwimMsg::PingReq(p) => p.dir,
            SwimMsg::Ack(a) => a.dir,
        }
    }

    /// The sender's incarnation.
    pub fn inc(&self) -> u64 {
        match self {
            SwimMsg::Ping(p) => p.inc,
            SwimMsg::PingReq(p) => p.inc,
            SwimMsg::Ack(a) => a.inc,
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(state: MemberState, inc: u64) -> Update {
        Update {
            shard: "c".into(),
            state,
            inc,
        }
    }

    #[test]
    fn incarnation_rules() {
        use MemberState::*;
        // A higher incarnation overrides anything.
        assert!(up(Alive, 2).overrides(Dead, 1));
        assert!(up(Alive, 2).overrides(Suspect, 1));
        // Suspect at equal incarnation overrides alive, not the reverse.
        assert!(up(Suspect, 1).overrides(Alive, 1));
        assert!(!up(Alive, 1).overrides(Suspect, 1));
        // Dead is final for its incarnation.
        assert!(up(Dead, 1).overrides(Suspect, 1));
        assert!(!up(Suspect, 1).overrides(Dead, 1));
        assert!(!up(Alive, 1).overrides(Dead, 1));
        // An older incarnation never overrides.
        assert!(!up(Dead, 0).overrides(Alive, 1));
        // The same news twice is not news.
        assert!(!up(Suspect, 1).overrides(Suspect, 1));
    }
}
