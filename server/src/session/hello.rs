//! `hello`: authentication, resume or takeover, the profile load, the
//! welcome and the starter purse. In cluster mode the resume or takeover
//! is decided by the directory (one session per player cluster-wide), and
//! a session on another shard is replaced over the tunnel.

use std::sync::Arc;

use actix::prelude::*;
use protocol::msg::{Hello, Welcome};
use protocol::peer::{AdminMsg, Replace};
use protocol::{CloseCode, ErrorCode, ServerMsg, PROTOCOL_VERSION};

use super::{MapGuarded, Replaced, Session, State};
use crate::auth::{unix_now, Identity};
use crate::cluster::Claim;
use crate::presence::{ResumeError, Seat, Takeover};
use crate::store::{ids, Adjust, DurableError, DurableOp, PlayerProfile};
use crate::wire;

/// The progress counter that says the starter purse was granted.
const STARTER_MARK: &str = "starter_purse";

impl Session {
    pub(super) fn on_hello(&mut self, hello: Hello, ctx: &mut Context<Self>) {
        if !matches!(self.state, State::AwaitingHello) {
            self.send_error(ErrorCode::IllegalState, "hello was already received");
            return;
        }
        if !PROTOCOL_VERSION.accepts(hello.version) {
            let text = format!(
                "protocol {} is not supported; this server speaks {}",
                hello.version, PROTOCOL_VERSION
            );
            self.refuse(
                ErrorCode::VersionMismatch,
                &text,
                CloseCode::VersionMismatch,
                ctx,
            );
            return;
        }
        let now = unix_now();
        let (identity, resumed) = match self.deps.auth.authenticate(&hello, now) {
            Ok(pair) => pair,
            Err(err) => {
                self.refuse(err.code(), &err.to_string(), CloseCode::AuthFailed, ctx);
                return;
            }
        };
        if let Some(ban) = self
            .deps
            .bans
            .in_force(&identity.player_id, crate::bans::now_ms())
        {
            let text = crate::bans::ban_text(&ban);
            self.refuse(ErrorCode::Banned, &text, CloseCode::Removed, ctx);
            return;
        }
        if let Some(claimed) = &resumed {
            self.sid = ids::session_id(self.id, Some(claimed)).into();
        }
        let sid = self.sid();
        let guest = hello.token.is_none() && resumed.is_none();
        if let (Some(cluster), true) = (&self.deps.cluster, guest) {
            // A guest is a new player id: nobody else can hold it, so its
            // login does not wait for the directory (its entry is written
            // when Redis answers).
            cluster.seats.guest(&identity.player_id, &sid);
        }
        if let (Some(cluster), false) = (self.deps.cluster.clone(), guest) {
            // One player, one session cluster-wide: the directory decides
            // (and checks a resume token against the player's latest
            // session, wherever it was issued), within the wait.
            self.state = State::Loading { join: None };
            let wait = cluster.directory.settings().wait;
            let claim = {
                let (player, sid) = (identity.player_id.clone(), sid.clone());
                async move {
                    let claim =
                        cluster
                            .directory
                            .claim_player_checked(&player, &sid, resumed.as_deref());
                    tokio::time::timeout(wait, claim).await
                }
            };
            ctx.spawn(
                claim
                    .into_actor(self)
                    .map_guarded("claim", move |claim, session, ctx| {
                        let claim = match claim {
                            Ok(result) => result.map_err(|e| e.to_string()),
                            Err(_) => Err(format!("no answer within {} ms", wait.as_millis())),
                        };
                        session.claimed(identity, sid, now, claim, ctx);
                    }),
            );
            return;
        }
        let takeover = match resumed {
            Some(claimed) => {
                match self
                    .deps
                    .presence
                    .resume(&identity.player_id, &claimed, &sid, self.id)
                {
                    Ok(takeover) => takeover,
                    Err(ResumeError::Reused) => {
                        self.refuse(
                            ErrorCode::ResumeRejected,
                            "resume token already used",
                            CloseCode::AuthFailed,
                            ctx,
                        );
                        return;
                    }
                }
            }
            None => self
                .deps
                .presence
                .welcomed(&identity.player_id, &sid, self.id),
        };
        self.admitted(identity, sid, now, takeover, ctx);
    }

    /// Cluster mode: what the directory said to this login. Redis not
    /// answering in time refuses the login with 5005 (close 1013, try
    /// again later); a used resume token with 2004. Otherwise this session
    /// is the player's, the shard that held it before (if another) is told
    /// to close its session, and the seat it held (a local one, else the
    /// room the directory records) is taken over by this session's join.
    fn claimed(
        &mut self,
        identity: Identity,
        sid: String,
        now: u64,
        claim: Result<Claim, String>,
        ctx: &mut Context<Self>,
    ) {
        if !matches!(self.state, State::Loading { .. }) {
            return;
        }
        let Some(cluster) = self.deps.cluster.clone() else {
            return;
        };
        let previous = match claim {
            Ok(Claim::Taken(previous)) => previous,
            Ok(Claim::Reused) => {
                self.refuse(
                    ErrorCode::ResumeRejected,
                    "resume token already used",
                    CloseCode::AuthFailed,
                    ctx,
                );
                return;
            }
            Err(e) => {
                metrics::counter!(crate::cluster::metric::LOGINS_UNAVAILABLE).increment(1);
                tracing::warn!(session = self.id, player = %identity.player_id, error = %e, "login refused: the cluster directory did not answer");
                self.refuse(
                    ErrorCode::DirectoryUnavailable,
                    "the cluster directory is unavailable; try again in a moment",
                    CloseCode::TryAgainLater,
                    ctx,
                );
                return;
            }
        };
        if self.deps.presence.was_replaced(&sid) {
            // A newer login elsewhere replaced this one before its own
            // answer came back: it ends as a replaced session does.
            self.refuse(
                ErrorCode::SessionReplaced,
                "the player signed in again elsewhere; this session ends",
                CloseCode::Replaced,
                ctx,
            );
            return;
        }
        let mut takeover = self
            .deps
            .presence
            .welcomed(&identity.player_id, &sid, self.id);
        if let Some(previous) = previous {
            let elsewhere = previous.shard != *cluster.directory.shard();
            if elsewhere && !previous.session.is_empty() {
                cluster.relay.admin(
                    previous.shard.as_str(),
                    &AdminMsg::Replace(Replace {
                        player: identity.player_id.clone(),
                        session: previous.session.clone(),
                        seat_taken: !previous.room.is_empty(),
                    }),
                );
            }
            if takeover.seat.is_none() || elsewhere {
                // The seat is where the directory says: the join resumes
                // it by player (the room takes over the seat it holds for
                // this player, whichever session held it).
                takeover.seat = previous.room.parse().ok().map(|room| Seat {
                    room,
                    session: self.id,
                });
            }
        }
        self.admitted(identity, sid, now, takeover, ctx);
    }

    /// The login is accepted: replace the player's older session on this
    /// shard, read the profile, then welcome.
    fn admitted(
        &mut self,
        identity: Identity,
        sid: String,
        now: u64,
        takeover: Takeover,
        ctx: &mut Context<Self>,
    ) {
        self.deps
            .presence
            .named(&identity.player_id, &identity.name);
        let Takeover { previous, seat } = takeover;
        if let Some(previous) = previous.filter(|p| *p != self.id) {
            let session = self.deps.presence.session(previous);
            if let Some(session) = session {
                // do_send: one message per login, and logins are bounded
                // by the connection cap and the control rate.
                session.do_send(Replaced {
                    seat_taken: seat.as_ref().is_some_and(|s| s.session == previous),
                });
            }
        }
        // Read the profile before the welcome, so it can carry the last map
        // and be followed by the inventory. The store answers within its
        // durable timeout, or at once while it is down; then the player
        // plays without a profile (no durable actions) rather than waiting.
        // (Still loading after a cluster claim: a join held meanwhile stays.)
        if !matches!(self.state, State::Loading { .. }) {
            self.state = State::Loading { join: None };
        }
        let identity = Arc::new(identity);
        let load = self
            .deps
            .persister
            .load_profile(&identity.player_id, &identity.name);
        ctx.spawn(
            load.into_actor(self)
                .map_guarded("welcome", move |loaded, session, ctx| {
                    session.welcome(identity, sid, now, seat, loaded, ctx);
                }),
        );
    }

    pub(super) fn welcome(
        &mut self,
        identity: Arc<Identity>,
        sid: String,
        now: u64,
        seat: Option<Seat>,
        loaded: Result<PlayerProfile, DurableError>,
        ctx: &mut Context<Self>,
    ) {
        let held = match &mut self.state {
            State::Loading { join } => join.take(),
            _ => return,
        };
        let profile = match loaded {
            Ok(profile) => Some(profile),
            Err(err) => {
                tracing::warn!(session = self.id, player = %identity.player_id, error = %err, "profile not loaded; playing without durable state");
                None
            }
        };
        let last_map = profile
            .as_ref()
            .map(|p| p.state.map.clone())
            .filter(|m| self.deps.rooms.has_map(m));
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            player_id: identity.player_id.clone(),
            name: identity.name.clone(),
            resume_token: self.deps.auth.resume_token(&identity, &sid, now),
            session_id: sid.clone(),
            tick_hz: self.deps.config.rooms.tick_hz,
            limits: self.deps.limits.clone(),
            maps: self.deps.rooms.map_names(),
            last_map: last_map.clone(),
        };
        // Subscribed before the welcome is queued: a client that has its
        // welcome gets every announcement published after it (one
        // published before this handler returns is handled after it, so
        // still after the welcome). Subscribed after, a welcome flushed by
        // the writer at once left a window in which an announcement made
        // on seeing it was missed.
        let recipient = ctx.address().recipient();
        self.announcements = Some(self.deps.dispatcher.announcements.subscribe(recipient));
        self.send(&ServerMsg::Welcome(welcome));
        if let Some(cluster) = &self.deps.cluster {
            // Only now is the token a resume used spent (see
            // `Seats::welcomed`).
            cluster.seats.welcomed(&identity.player_id, &sid);
        }
        tracing::debug!(session = self.id, player = %identity.player_id, resumed = seat.is_some(), "welcomed");
        self.identity = Some(identity.clone());
        self.state = State::Lobby;
        if let Some(profile) = profile {
            self.profile_loaded = true;
            if let Some(map) = last_map {
                self.saved_position =
                    Some(Box::new((Arc::from(map), profile.state.x, profile.state.y)));
            }
            // One inventory, the real one: after the starter purse when
            // this login grants it.
            if !self.grant_starter(&identity, &profile, ctx) {
                self.send(&ServerMsg::Inventory(wire::inventory(&profile.inventory)));
            }
        }
        // The held seat or nothing: a seat whose grace ran out leaves the
        // player in no map, as PROTOCOL.md says.
        let held_seat =
            seat.and_then(|seat| Some((seat.session, self.deps.rooms.room_ref(&seat.room)?)));
        if let Some((session, room)) = held_seat {
            self.join_room(room, identity, Some(session), true, 1, ctx);
        }
        // A join sent before the welcome, as if sent right after it (a
        // join of the restored seat's map answers `joined` again).
        if let Some(join) = held {
            self.on_join(*join, ctx);
        }
    }

    /// A player's first login brings a starter purse: one idempotent
    /// adjustment (fixed op id, remembered by a progress marker). Returns
    /// whether it was started; then it sends the inventory when it is done.
    pub(super) fn grant_starter(
        &mut self,
        identity: &Identity,
        profile: &PlayerProfile,
        ctx: &mut Context<Self>,
    ) -> bool {
        let amount = self.deps.config.economy.starter_currency;
        if amount == 0 || profile.progress.contains_key(STARTER_MARK) {
            return false;
        }
        let before = wire::inventory(&profile.inventory);
        let op = DurableOp::Adjust(Adjust {
            op_id: format!("starter:{}", identity.player_id),
            player: identity.player_id.clone(),
            currency: amount,
            items: Default::default(),
            progress: [(STARTER_MARK.to_string(), 1)].into(),
            fence: None,
        });
        let player = identity.player_id.clone();
        let applied = self.deps.persister.durable(op);
        ctx.spawn(applied.into_actor(self).map_guarded(
            "starter",
            move |result, session, _| {
                let inventory = match result {
                    Ok(ack) => ack.inventory(&player).map(wire::inventory).unwrap_or(before),
                    // The next login tries again: the marker was not
                    // written.
                    Err(err) => {
                        tracing::warn!(player = %player, error = %err, "starter purse not granted");
                        before
                    }
                };
                session.send(&ServerMsg::Inventory(inventory));
            },
        ));
        true
    }
}
