//! The churn scenario: drop the socket without a close frame, as when a
//! phone loses its network, and come back with the resume token; or hop to
//! another map on the same socket.
//!
//! After a drop the server holds the player's seat for a grace period: a
//! resumed session gets `joined` for the old map right after `welcome`
//! (then notice 6002) without asking. A bot waits [`SEAT_WAIT`] for that
//! (in `connect`, `Bot::joined_session`), then joins on its own. A token
//! the server refuses (errors 2002 to 2004) is forgotten, and the bot comes
//! back as a fresh session.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use protocol::msg::Join;
use protocol::ClientMsg;

use super::Bot;
use crate::scenario::{self, Churn};
use crate::stats::Stats;

/// After a resume, how long a bot waits for its seat to come back by itself
/// (`joined` right after `welcome`) before it joins on its own.
pub(super) const SEAT_WAIT: Duration = Duration::from_secs(1);

/// What the churn timer does this time.
pub(super) enum ChurnStep {
    /// Nothing: a hop is in flight, or there is no map to hop to.
    Stay,
    /// Drop the socket without a close frame and resume.
    Drop,
    /// Send this `join` of another map (then count the hop).
    Hop(ClientMsg),
}

/// What a bot carries from one session to the next (a churn drop, a
/// drain's 4008, a lost socket).
#[derive(Default)]
pub(super) struct Resume {
    /// The resume token and player id of the last welcome.
    token: Option<Box<str>>,
    player_id: Option<Box<str>>,
    /// A churn drop or drain move whose bot is not back in a map yet.
    pending: bool,
}

impl Resume {
    /// The token the next hello carries, if any.
    pub(super) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Whether the next session starts as a resume.
    pub(super) fn resuming(&self) -> bool {
        self.token.is_some()
    }

    /// A welcome came: when it answered a resume, count whether the server
    /// gave back the same player.
    pub(super) fn welcomed(&self, stats: &Stats, player_id: &str) {
        if self.token.is_some() {
            let counter = if self.player_id.as_deref() == Some(player_id) {
                &stats.resumed_same_player
            } else {
                &stats.resumed_new_player
            };
            counter.fetch_add(1, Relaxed);
        }
    }

    /// Keeps the welcome's token and player id for the next drop.
    pub(super) fn keep(&mut self, token: String, player_id: String) {
        self.token = Some(token.into_boxed_str());
        self.player_id = Some(player_id.into_boxed_str());
    }

    /// A connect failed with `reason`: a refused resume token is forgotten,
    /// so the bot comes back as a fresh session.
    pub(super) fn connect_failed(&mut self, reason: &str) {
        if matches!(reason, "error_2002" | "error_2003" | "error_2004") {
            self.token = None;
        }
    }

    /// The bot dropped its socket on purpose and will resume.
    pub(super) fn dropped(&mut self) {
        self.pending = true;
    }

    /// The bot stands in a map again.
    pub(super) fn back_in_map(&mut self) {
        self.pending = false;
    }

    /// A drop whose bot never made it back into a map before the run ended.
    pub(super) fn unfinished(&self) -> bool {
        self.pending
    }
}

impl Bot {
    /// The churn timer fired in the play loop: what to do this time. Not
    /// while a hop's join is unanswered (`hopping`). Sending stays in the
    /// play loop, so a bot's future nests no extra state for it.
    pub(super) fn churn(&mut self, hopping: bool) -> ChurnStep {
        if hopping {
            return ChurnStep::Stay;
        }
        match Churn::pick(&mut self.rng) {
            Churn::Reconnect => ChurnStep::Drop,
            Churn::Hop => {
                let maps = self.shared.maps();
                let span = scenario::maps_in_use(self.shared.cfg.rooms, true, maps.len());
                self.room = scenario::hop_target(&mut self.rng, self.room, span);
                match scenario::map_of(self.room, maps) {
                    Some(map) => ChurnStep::Hop(ClientMsg::Join(Join {
                        map: map.to_string(),
                    })),
                    None => ChurnStep::Stay,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resume_counts_whether_the_player_came_back_the_same() {
        let stats = Stats::new();
        let mut resume = Resume::default();
        resume.welcomed(&stats, "p1");
        assert_eq!(stats.resumed_same_player.load(Relaxed), 0, "not a resume");
        assert!(!resume.resuming());

        resume.keep("token-1".into(), "p1".into());
        assert!(resume.resuming());
        assert_eq!(resume.token(), Some("token-1"));
        resume.welcomed(&stats, "p1");
        resume.welcomed(&stats, "p2");
        assert_eq!(stats.resumed_same_player.load(Relaxed), 1);
        assert_eq!(stats.resumed_new_player.load(Relaxed), 1);
    }

    #[test]
    fn only_a_refused_token_is_forgotten() {
        let mut resume = Resume::default();
        resume.keep("token".into(), "p1".into());
        for reason in [
            "timeout",
            "refused",
            "close_4006",
            "error_2001",
            "error_2005",
        ] {
            resume.connect_failed(reason);
            assert!(resume.resuming(), "{reason} keeps the token");
        }
        for reason in ["error_2002", "error_2003", "error_2004"] {
            resume.keep("token".into(), "p1".into());
            resume.connect_failed(reason);
            assert!(!resume.resuming(), "{reason} forgets the token");
        }
    }

    #[test]
    fn a_drop_is_unfinished_until_the_bot_is_back_in_a_map() {
        let mut resume = Resume::default();
        assert!(!resume.unfinished());
        resume.dropped();
        assert!(resume.unfinished());
        resume.back_in_map();
        assert!(!resume.unfinished());
    }
}
