//! `join`, `leave`, `move` and `chat`: the session's side of a room,
//! reached through its [`RoomRef`] only.

use std::sync::Arc;

use actix::prelude::*;
use protocol::msg::{ChatSend, Join, Left, Move};
use protocol::{ErrorCode, ServerMsg};

use super::{MapGuarded, Session, State};
use crate::auth::Identity;
use crate::config::ms;
use crate::ids::{RoomId, SessionId};
use crate::metrics as m;
use crate::room::{CallError, CastError, Inputs, JoinError, JoinRoom, MemberLink, RoomRef};

impl Session {
    pub(super) fn on_join(&mut self, join: Join, ctx: &mut Context<Self>) {
        let Some(identity) = self.identity.clone() else {
            // Sent behind the hello, before the welcome (since 1.6): held
            // until the welcome, then handled as if sent right after it.
            if let State::Loading { join: held } = &mut self.state {
                *held = Some(Box::new(join));
                return;
            }
            self.send_error(ErrorCode::IllegalState, "say hello first");
            return;
        };
        if !self.deps.rooms.has_map(&join.map) {
            self.send_error(
                ErrorCode::UnknownMap,
                format!("no map named {:?}", join.map),
            );
            return;
        }
        if let State::InRoom { room } = &self.state {
            if **room.id().map() == *join.map {
                // Joining the map it stands in: `joined` again for the same
                // entity (in the same instance), with a fresh view.
                let room = room.clone();
                self.join_room(room, identity, Some(self.id), false, 1, ctx);
                return;
            }
            self.leave_room(true);
        }
        let Some(room) = self.deps.rooms.room_for_join(&join.map) else {
            self.send_error(
                ErrorCode::UnknownMap,
                format!("no map named {:?}", join.map),
            );
            return;
        };
        self.join_room(room, identity, None, false, 1, ctx);
    }

    /// Ask `room` to take this player (or give back the seat of session
    /// `resume`; with `seat_only`, that seat or nothing). State moves to
    /// `InRoom` at once so inputs sent right after `joined` route; a failed
    /// join moves it back. A room found full when the map runs several
    /// instances (another join took the last place first) is retried in
    /// the instance the supervisor names next.
    pub(super) fn join_room(
        &mut self,
        room: RoomRef,
        identity: Arc<Identity>,
        resume: Option<SessionId>,
        seat_only: bool,
        retries: u8,
        ctx: &mut Context<Self>,
    ) {
        self.state = State::InRoom { room: room.clone() };
        self.sit(&identity.player_id, Some(room.id()));
        let map = room.id().map().clone();
        let epoch = self.out.begin_room();
        let spawn_at = match self.saved_position.take() {
            Some(saved) if saved.0 == map => Some((saved.1, saved.2)),
            other => {
                self.saved_position = other;
                None
            }
        };
        self.inputs = Arc::new(Inputs::new(self.deps.config.rooms.input_queue));
        let request = JoinRoom {
            link: MemberLink {
                session: self.id,
                identity: identity.clone(),
                out: self.out.clone(),
                inputs: self.inputs.clone(),
                epoch,
                events: ctx.address().recipient(),
                remote: None,
            },
            resume,
            seat_only,
            spawn_at,
        };
        let timeout = ms(self.deps.config.rooms.call_timeout_ms);
        let reply = {
            let room = room.clone();
            async move { room.call_join(request, timeout).await }
        };
        ctx.spawn(reply.into_actor(self).map_guarded("join_reply", move |reply, session, ctx| {
            let still_joining = matches!(&session.state, State::InRoom { room: current } if current.id() == room.id())
                && session.out.is_member(epoch);
            if !still_joining {
                return;
            }
            match reply {
                Ok(Ok(_)) => {}
                Ok(Err(JoinError::Full)) => {
                    let next = (!seat_only && retries > 0)
                        .then(|| session.deps.rooms.room_for_join(&map))
                        .flatten()
                        .filter(|next| next.id() != room.id());
                    session.abandon_join(&room);
                    match next {
                        Some(next) => session.join_room(next, identity, None, false, retries - 1, ctx),
                        None => session.send_error(ErrorCode::RoomFull, format!("{map} is full")),
                    }
                }
                // The seat's grace ran out: the player stands in no map,
                // and `welcome.last_map` says where to go back to.
                Ok(Err(JoinError::SeatGone)) => session.abandon_join(&room),
                Err(CallError::Closed) | Ok(Err(JoinError::Crashed)) if retries > 0 => {
                    // The room stopped or crashed between lookup and join;
                    // the supervisor has a fresh incarnation by now.
                    session.out.end_room();
                    session.join_room(room, identity, resume, seat_only, retries - 1, ctx);
                }
                // Cluster mode: the directory did not answer (5005), or the
                // room's owner refused with a code of its own.
                Ok(Err(JoinError::Refused(code))) => {
                    session.abandon_join(&room);
                    let code = ErrorCode::from_u16(code).unwrap_or(ErrorCode::RoomUnavailable);
                    session.send_error(code, format!("{map} could not be joined ({})", code.name()));
                }
                Err(_) | Ok(Err(JoinError::Crashed)) => {
                    session.abandon_join(&room);
                    session.send_error(ErrorCode::RoomUnavailable, format!("{map} did not answer"));
                }
            }
        }));
    }

    pub(super) fn abandon_join(&mut self, room: &RoomRef) {
        self.state = State::Lobby;
        self.out.end_room();
        let _ = room.cast_leave(self.id);
        if let Some(identity) = &self.identity {
            self.sit(&identity.player_id, None);
        }
    }

    /// Leave the current room on purpose. With `notify` the player is told
    /// `left`; nothing the room sends after this point reaches it.
    pub(super) fn leave_room(&mut self, notify: bool) {
        if let State::InRoom { room } = std::mem::replace(&mut self.state, State::Lobby) {
            self.out.end_room();
            if notify {
                self.send(&ServerMsg::Left(Left {
                    map: room.id().map().to_string(),
                }));
            }
            // Membership changes are rate-limited by the control class, so
            // this cannot flood the room; a full mailbox is a lost leave that
            // the seat's grace period cleans up.
            let _ = room.cast_leave(self.id);
            if let Some(identity) = &self.identity {
                self.sit(&identity.player_id, None);
            }
        }
    }

    /// The connection is going: keep the seat for a resume.
    pub(super) fn release_seat(&mut self) {
        if let State::InRoom { room } = std::mem::replace(&mut self.state, State::Lobby) {
            let _ = room.cast_disconnected(self.id);
        }
    }

    pub(super) fn on_leave(&mut self) {
        if matches!(self.state, State::InRoom { .. }) {
            self.leave_room(true);
        } else {
            self.send_error(ErrorCode::IllegalState, "not in a map");
        }
    }

    pub(super) fn on_move(&mut self, mv: Move) {
        if !matches!(self.state, State::InRoom { .. }) {
            self.send_error(ErrorCode::IllegalState, "join a map before moving");
            return;
        }
        if !(mv.dx.is_finite() && mv.dy.is_finite()) {
            self.send_error(ErrorCode::InvalidInput, "direction must be finite");
            return;
        }
        // In f64 so that huge components keep their direction instead of
        // overflowing to an infinite length.
        let len = f64::from(mv.dx).hypot(f64::from(mv.dy));
        let (dx, dy) = if len > 1.0 {
            (
                (f64::from(mv.dx) / len) as f32,
                (f64::from(mv.dy) / len) as f32,
            )
        } else {
            (mv.dx, mv.dy)
        };
        self.inputs.push(mv.seq, dx, dy);
    }

    pub(super) fn on_chat(&mut self, chat: ChatSend) {
        let State::InRoom { room } = &self.state else {
            self.send_error(ErrorCode::IllegalState, "join a map before chatting");
            return;
        };
        let chars = chat.text.chars().count();
        let max = self.deps.config.limits.chat_max_chars as usize;
        if chars == 0 || chars > max || chat.text.chars().any(|c| c.is_control()) {
            self.send_error(
                ErrorCode::InvalidInput,
                format!("chat text must be 1 to {max} printable characters"),
            );
            return;
        }
        let sent = room.cast_chat(self.id, chat.text);
        self.after_room_cast(sent, None);
    }

    /// What a cast to the room came to. Casts go through the supervisor's
    /// one sender per room, so a room's mailbox holds at most its capacity
    /// plus one; past that, messages are dropped, counted and the client is
    /// told.
    pub(super) fn after_room_cast(&mut self, sent: Result<(), CastError>, req: Option<u32>) {
        match sent {
            Ok(()) => {}
            Err(CastError::Full) => {
                metrics::counter!(m::ROOM_INPUTS_DROPPED, "reason" => m::DROPPED_ROOM_BUSY)
                    .increment(1);
                self.send_error_to(
                    req,
                    ErrorCode::RoomUnavailable,
                    "room is busy; message dropped",
                );
            }
            Err(CastError::Closed) => {
                // The room failed or stopped; its failure notice moves us.
                self.send_error_to(
                    req,
                    ErrorCode::RoomUnavailable,
                    "room is not running; join again",
                );
            }
        }
    }

    pub(super) fn on_room_failed(&mut self, failed: RoomId, ctx: &mut Context<Self>) {
        let State::InRoom { room } = &self.state else {
            return;
        };
        if *room.id() != failed {
            return;
        }
        self.state = State::Lobby;
        self.out.end_room();
        self.send_error(
            ErrorCode::RoomFailed,
            format!("{failed} failed; moving you to the fallback map"),
        );
        self.send(&ServerMsg::Left(Left {
            map: failed.map().to_string(),
        }));
        let fallback = self
            .deps
            .rooms
            .fallback_map()
            .filter(|f| **f != **failed.map())
            .and_then(|f| self.deps.rooms.room_for_join(f));
        match (fallback, self.identity.clone()) {
            (Some(fallback), Some(identity)) => {
                self.join_room(fallback, identity, None, false, 1, ctx)
            }
            _ => {
                if let Some(identity) = &self.identity {
                    self.sit(&identity.player_id, None);
                }
            }
        }
    }
}
