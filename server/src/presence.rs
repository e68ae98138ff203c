//! The presence table: who is connected, with which session, seated where.
//! One table, behind a small API, for what the session, the shard's
//! shutdown and the admin API need to know about players and sessions (a
//! cluster's directory will mirror it).
//!
//! It holds two things, under one lock each:
//!
//! - **Connected sessions**: every live session by [`SessionId`], with a
//!   handle `H` to reach it (the session actor's address; generic so this
//!   module does not depend on the session). A session registers when it
//!   starts and deregisters when it stops.
//! - **Players**: each player's latest session and seat, for resume tokens.
//!   One player, one session, one entity: a new session of a player, by
//!   resume or by a fresh login, becomes the player's latest and is handed
//!   the [`Takeover`]: the session it replaces (closed with 4006 if still
//!   open) and the seat that session held, which the new one takes over.
//!
//! A resume token names the session it was issued to (`sid`). It is good
//! once: resuming makes the new session the player's latest, so the old
//! token no longer matches and is refused as reused. The seat itself (the
//! entity standing in the room) lives in the room, which keeps a
//! disconnected member for the grace period; this table only says where to
//! look.
//!
//! Player entries expire with the last resume token issued for them, so the
//! table holds at most the players seen within `auth.resume_ttl_s`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::ids::{RoomId, SessionId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeError {
    /// The token's session is not the player's latest: it was used already.
    Reused,
}

/// What a new session of a player takes over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Takeover {
    /// The player's session before this one, if this server knows of one.
    pub previous: Option<SessionId>,
    /// Where the player sat, and under which session the room holds it.
    pub seat: Option<Seat>,
}

/// Where a resumed player sat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    pub room: RoomId,
    /// The session that held the seat.
    pub session: SessionId,
}

struct Entry {
    latest_sid: String,
    /// The player's latest session.
    session: SessionId,
    /// Where the player sits, and the session the room holds the seat under.
    /// A resumed session that never reached the room (it dropped while
    /// loading) leaves this as it was, so the next resume still finds the
    /// seat under the session that really holds it.
    seat: Option<Seat>,
    expires: Instant,
    /// The player's display name (for the admin API's search).
    name: String,
    /// When the latest session signed in.
    since: Instant,
}

/// A player as the admin API's search sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayerSeen {
    pub player: String,
    pub name: String,
    pub room: Option<RoomId>,
    /// When its latest session signed in.
    pub since: Instant,
    /// Its latest session is connected (else it holds a resume seat).
    pub connected: bool,
}

pub struct Presence<H> {
    sessions: Mutex<HashMap<SessionId, H>>,
    players: Mutex<HashMap<String, Entry>>,
    ttl: Duration,
    /// Session ids another shard replaced before this shard knew them as
    /// the latest (a takeover that overtook the login's own reply from
    /// the directory); the login finds itself here and ends.
    replaced: Mutex<VecDeque<(String, Instant)>>,
}

/// How many early takeovers are remembered, and for how long: a login's
/// directory reply comes within `cluster.redis_wait_ms`.
const REPLACED_KEPT: usize = 1024;
const REPLACED_FOR: Duration = Duration::from_secs(60);

impl<H: Clone> Presence<H> {
    /// Player entries live `ttl` after their last resume token was issued.
    pub fn new(ttl: Duration) -> Presence<H> {
        Presence {
            sessions: Mutex::new(HashMap::new()),
            players: Mutex::new(HashMap::new()),
            ttl,
            replaced: Mutex::new(VecDeque::new()),
        }
    }

    /// Session `id` started and is reached through `handle`.
    pub fn connected(&self, id: SessionId, handle: H) {
        self.sessions.lock().insert(id, handle);
    }

    /// Session `id` stopped. Its player's entry stays: the seat is held
    /// for a resume.
    pub fn disconnected(&self, id: SessionId) {
        self.sessions.lock().remove(&id);
    }

    /// The handle of a connected session.
    pub fn session(&self, id: SessionId) -> Option<H> {
        self.sessions.lock().get(&id).cloned()
    }

    /// Every connected session (for shutdown).
    pub fn sessions(&self) -> Vec<H> {
        self.sessions.lock().values().cloned().collect()
    }

    /// How many sessions are connected.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// The player's latest session, if it is connected.
    pub fn player_session(&self, player: &str) -> Option<H> {
        let id = self.latest_session(player)?;
        self.session(id)
    }

    /// The player's latest session if it is `sid` and connected: what a
    /// takeover from another shard of the cluster closes (a session that
    /// is no longer the latest here was replaced already).
    pub fn session_of(&self, player: &str, sid: &str) -> Option<H> {
        let id = {
            let players = self.players.lock();
            let entry = players.get(player).filter(|e| e.latest_sid == sid)?;
            entry.session
        };
        self.session(id)
    }

    /// Another shard replaced session `sid`, which is not (yet) the
    /// player's latest here: remember it for the login still waiting.
    pub fn replaced_early(&self, sid: &str) {
        let mut replaced = self.replaced.lock();
        let now = Instant::now();
        while replaced
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) > REPLACED_FOR)
            || replaced.len() >= REPLACED_KEPT
        {
            replaced.pop_front();
        }
        replaced.push_back((sid.to_string(), now));
    }

    /// Whether session `sid` was replaced before it became the latest.
    pub fn was_replaced(&self, sid: &str) -> bool {
        self.replaced.lock().iter().any(|(s, _)| s == sid)
    }

    /// A new session of `player` (not a resume) logged in: it becomes the
    /// latest (older resume tokens stop working) and takes over whatever
    /// seat the player still holds.
    pub fn welcomed(&self, player: &str, sid: &str, session: SessionId) -> Takeover {
        // Until the new session's join reaches the room, the seat stays
        // recorded under the session that holds it (as for a resume).
        self.become_latest(&mut self.players.lock(), player, sid, session)
    }

    /// Session `new_session` (id `new_sid`) presents a resume token for
    /// `claimed_sid`. On success it becomes the latest, and the seat of the
    /// old session (if it was in a map) is returned. A player this server has
    /// no entry for (it restarted since) resumes with no seat.
    pub fn resume(
        &self,
        player: &str,
        claimed_sid: &str,
        new_sid: &str,
        new_session: SessionId,
    ) -> Result<Takeover, ResumeError> {
        let mut players = self.players.lock();
        if players
            .get(player)
            .is_some_and(|entry| entry.latest_sid != claimed_sid)
        {
            return Err(ResumeError::Reused);
        }
        Ok(self.become_latest(&mut players, player, new_sid, new_session))
    }

    /// `session` (id `sid`) becomes the player's latest: older resume tokens
    /// stop working, and it takes over the player's name and the seat still
    /// recorded (under the session that holds it).
    fn become_latest(
        &self,
        players: &mut HashMap<String, Entry>,
        player: &str,
        sid: &str,
        session: SessionId,
    ) -> Takeover {
        let old = players.get(player);
        let previous = old.map(|e| e.session);
        let seat = old.and_then(|e| e.seat.clone());
        let name = old.map(|e| e.name.clone()).unwrap_or_default();
        let now = Instant::now();
        players.insert(
            player.to_string(),
            Entry {
                latest_sid: sid.to_string(),
                session,
                seat: seat.clone(),
                expires: now + self.ttl,
                name,
                since: now,
            },
        );
        Takeover { previous, seat }
    }

    /// Session `session` of `player` now sits in `room` (or in none): its
    /// join (or leave) is on its way to the room, ahead of any later
    /// session's resume.
    pub fn seated(&self, player: &str, session: SessionId, room: Option<RoomId>) {
        if let Some(entry) = self.players.lock().get_mut(player) {
            if entry.session == session {
                entry.seat = room.map(|room| Seat { room, session });
            }
        }
    }

    /// The player's latest session, if it has one this server knows of.
    pub fn latest_session(&self, player: &str) -> Option<SessionId> {
        self.players.lock().get(player).map(|e| e.session)
    }

    /// Drop player entries whose resume tokens have all expired.
    pub fn prune(&self) {
        let now = Instant::now();
        self.players.lock().retain(|_, e| e.expires > now);
    }

    /// Record the display name of `player` (once welcomed).
    pub fn named(&self, player: &str, name: &str) {
        if let Some(entry) = self.players.lock().get_mut(player) {
            name.clone_into(&mut entry.name);
        }
    }

    /// When the player's latest session signed in.
    pub fn since(&self, player: &str) -> Option<Instant> {
        self.players.lock().get(player).map(|e| e.since)
    }

    /// Players whose id or name contains `q` (case-insensitive; every
    /// player for an empty `q`), sorted by id, at most `limit`; and
    /// whether more matched.
    pub fn search(&self, q: &str, limit: usize) -> (Vec<PlayerSeen>, bool) {
        let q = q.to_lowercase();
        let mut found: Vec<PlayerSeen> = {
            let players = self.players.lock();
            players
                .iter()
                .filter(|(id, e)| {
                    q.is_empty()
                        || id.to_lowercase().contains(&q)
                        || e.name.to_lowercase().contains(&q)
                })
                .map(|(id, e)| PlayerSeen {
                    player: id.clone(),
                    name: e.name.clone(),
                    room: e.seat.as_ref().map(|s| s.room.clone()),
                    since: e.since,
                    connected: false,
                })
                .collect()
        };
        {
            let sessions = self.sessions.lock();
            let players = self.players.lock();
            for seen in &mut found {
                seen.connected = players
                    .get(&seen.player)
                    .is_some_and(|e| sessions.contains_key(&e.session));
            }
        }
        found.sort_by(|a, b| a.player.cmp(&b.player));
        let truncated = found.len() > limit;
        found.truncate(limit);
        (found, truncated)
    }

    /// How many players have an entry.
    pub fn player_count(&self) -> usize {
        self.players.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Seats = Presence<()>;

    #[test]
    fn a_resume_token_works_once_and_carries_the_seat() {
        let seats = Seats::new(Duration::from_secs(60));
        seats.welcomed("p", "s-1", 1);
        seats.seated("p", 1, Some(RoomId::first("lobby")));
        let takeover = seats.resume("p", "s-1", "s-2", 2).unwrap();
        assert_eq!(takeover.previous, Some(1));
        assert_eq!(
            takeover.seat.unwrap(),
            Seat {
                room: RoomId::first("lobby"),
                session: 1
            }
        );
        assert_eq!(seats.resume("p", "s-1", "s-3", 3), Err(ResumeError::Reused));
        // The new session's own token works, and the seat moved with it
        // once its join went out.
        seats.seated("p", 2, Some(RoomId::first("lobby")));
        let seat = seats.resume("p", "s-2", "s-4", 4).unwrap().seat.unwrap();
        assert_eq!(seat.session, 2);
    }

    #[test]
    fn an_unknown_player_resumes_without_a_seat_and_stale_sessions_do_not_move_seats() {
        let seats = Seats::new(Duration::from_secs(60));
        assert_eq!(
            seats.resume("q", "s-9", "s-10", 10),
            Ok(Takeover::default())
        );
        seats.seated("q", 99, Some(RoomId::first("arena")));
        let takeover = seats.resume("q", "s-10", "s-11", 11).unwrap();
        assert_eq!(takeover.seat, None);
    }

    #[test]
    fn a_session_that_dropped_before_reaching_the_room_passes_the_seat_on() {
        let seats = Seats::new(Duration::from_secs(60));
        seats.welcomed("p", "s-1", 1);
        seats.seated("p", 1, Some(RoomId::first("lobby")));
        // Session 2 resumes and drops while loading, before its join.
        let seat = seats.resume("p", "s-1", "s-2", 2).unwrap().seat.unwrap();
        assert_eq!(seat.session, 1);
        // The room still holds the seat under session 1.
        let seat = seats.resume("p", "s-2", "s-3", 3).unwrap().seat.unwrap();
        assert_eq!(
            seat,
            Seat {
                room: RoomId::first("lobby"),
                session: 1
            }
        );
        // Once session 3 joins, the seat is its.
        seats.seated("p", 3, Some(RoomId::first("lobby")));
        assert_eq!(
            seats
                .resume("p", "s-3", "s-4", 4)
                .unwrap()
                .seat
                .unwrap()
                .session,
            3
        );
    }

    #[test]
    fn a_fresh_login_takes_over_the_seat_and_voids_older_resume_tokens() {
        let seats = Seats::new(Duration::from_secs(60));
        assert_eq!(seats.welcomed("p", "s-1", 1), Takeover::default());
        seats.seated("p", 1, Some(RoomId::first("lobby")));
        let takeover = seats.welcomed("p", "s-2", 2);
        assert_eq!(takeover.previous, Some(1));
        assert_eq!(
            takeover.seat,
            Some(Seat {
                room: RoomId::first("lobby"),
                session: 1
            })
        );
        assert_eq!(seats.resume("p", "s-1", "s-3", 3), Err(ResumeError::Reused));
        // Session 2 never reached the room: a resume of it still finds the
        // seat under session 1.
        let seat = seats.resume("p", "s-2", "s-3", 3).unwrap().seat.unwrap();
        assert_eq!(seat.session, 1);
    }

    #[test]
    fn expired_entries_are_pruned() {
        let seats = Seats::new(Duration::ZERO);
        seats.welcomed("p", "s-1", 1);
        seats.prune();
        assert_eq!(seats.player_count(), 0);
    }
}

#[cfg(test)]
mod session_tests {
    use super::*;

    #[test]
    fn connected_sessions_are_found_by_id_and_by_their_player() {
        let presence = Presence::<&str>::new(Duration::from_secs(60));
        presence.connected(1, "one");
        presence.connected(2, "two");
        assert_eq!(presence.session_count(), 2);
        assert_eq!(presence.player_session("p"), None);
        presence.welcomed("p", "s-2", 2);
        assert_eq!(presence.player_session("p"), Some("two"));
        assert_eq!(presence.session_of("p", "s-2"), Some("two"));
        assert_eq!(presence.session_of("p", "s-1"), None);
        assert!(!presence.was_replaced("s-9"));
        presence.replaced_early("s-9");
        assert!(presence.was_replaced("s-9"));
        presence.disconnected(2);
        assert_eq!(presence.session_of("p", "s-2"), None);
        assert_eq!(presence.session(2), None);
        assert_eq!(presence.player_session("p"), None);
        // The player's entry outlives the session, for a resume.
        assert_eq!(presence.latest_session("p"), Some(2));
        assert_eq!(presence.sessions(), vec!["one"]);
    }
}
