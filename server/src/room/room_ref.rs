//! [`RoomRef`]: the one handle a session talks to its room through.
//!
//! Method names say what kind of message it is (as ractor names them):
//! `cast_*` is fire and forget, refused at once when the room's mailbox is
//! full or the room is not running; `call_*` waits for a reply, always
//! within a timeout. The only implementation today is local (the room is an
//! actor on this shard, reached through the [`RoomSupervisor`]'s one sender
//! per room, so a restarted incarnation is reached too). In cluster mode
//! [`RoomRef::call_join`] asks the cluster where the room runs (leasing
//! and starting it here when it is placed here); a room owned by another
//! shard is [`Target::Remote`]: the session's calls and casts go through
//! this shard's one link to it ([`EdgeLink`]), which carries them over
//! the tunnel. A member whose room moved (failover) is found wherever its
//! room runs now, without the session knowing.

use std::sync::Arc;
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::prelude::*;

use super::supervisor::RoomSupervisor;
use super::{
    ChatIn, Disconnected, GiveTarget, JoinError, JoinOk, JoinRoom, LeaveRoom, PickUp, Room, WhoIs,
};
use crate::ids::{RoomId, SessionId};
use crate::room::cluster::{EdgeLink, Located};

/// Why a cast was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CastError {
    /// The room's mailbox is full: the message is dropped.
    #[error("the room is busy")]
    Full,
    /// The room is not running (it stopped, or failed).
    #[error("the room is not running")]
    Closed,
}

/// Why a call got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No reply within the timeout (the room may still apply the message).
    #[error("the room did not answer in time")]
    Timeout,
    /// The room stopped before it answered, or its map does not exist.
    #[error("the room is gone")]
    Closed,
}

/// A room, by id, wherever it runs.
#[derive(Clone)]
pub struct RoomRef {
    id: RoomId,
    supervisor: Arc<RoomSupervisor>,
}

/// Where a room runs, for one member.
enum Target {
    /// On this shard, under its room supervisor.
    Local(Arc<RoomSupervisor>),
    /// On another shard, through this shard's link to it.
    Remote(Arc<EdgeLink>),
}

impl RoomRef {
    pub(super) fn local(id: RoomId, supervisor: Arc<RoomSupervisor>) -> RoomRef {
        RoomRef { id, supervisor }
    }

    /// Where `session`'s membership is: its remote link if it is a member
    /// through one, else here.
    fn target(&self, session: SessionId) -> Target {
        match self
            .supervisor
            .cluster()
            .and_then(|c| c.edge_of(&self.id, session))
        {
            Some(link) => Target::Remote(link),
            None => Target::Local(self.supervisor.clone()),
        }
    }

    pub fn id(&self) -> &RoomId {
        &self.id
    }

    /// The player left on purpose (see [`LeaveRoom`]).
    pub fn cast_leave(&self, session: SessionId) -> Result<(), CastError> {
        match self.target(session) {
            Target::Remote(link) => {
                link.leave(session);
                Ok(())
            }
            Target::Local(_) => self.cast(LeaveRoom { session }),
        }
    }

    /// The player's connection went away; its seat is held (see
    /// [`Disconnected`]).
    pub fn cast_disconnected(&self, session: SessionId) -> Result<(), CastError> {
        match self.target(session) {
            Target::Remote(link) => {
                link.disconnected(session);
                Ok(())
            }
            Target::Local(_) => self.cast(Disconnected { session }),
        }
    }

    /// A validated chat line.
    pub fn cast_chat(&self, session: SessionId, text: String) -> Result<(), CastError> {
        match self.target(session) {
            Target::Remote(link) => link
                .chat(session, text)
                .then_some(())
                .ok_or(CastError::Closed),
            Target::Local(_) => self.cast(ChatIn { session, text }),
        }
    }

    /// A validated `pick_up`; the room answers the client itself (a room
    /// on another shard through the member's edge link: the pick-up runs
    /// on the owner).
    pub fn cast_pick_up(&self, session: SessionId, req: u32, item: u64) -> Result<(), CastError> {
        match self.target(session) {
            Target::Remote(link) => link
                .cast_pick_up(session, req, item)
                .then_some(())
                .ok_or(CastError::Closed),
            Target::Local(_) => self.cast(PickUp { session, req, item }),
        }
    }

    /// Join the room (starting it if it is not running) and wait at most
    /// `timeout` for its answer. In cluster mode the room is looked up
    /// first: run here (leased first) or joined on its owner.
    pub async fn call_join(
        &self,
        join: JoinRoom,
        timeout: Duration,
    ) -> Result<Result<JoinOk, JoinError>, CallError> {
        let target = match self.supervisor.cluster() {
            None => Target::Local(self.supervisor.clone()),
            Some(cluster) => match cluster.locate(&self.id).await {
                Ok(Located::Local) => Target::Local(self.supervisor.clone()),
                Ok(Located::Remote(link)) => Target::Remote(link),
                Err(e) => return Ok(Err(e)),
            },
        };
        match target {
            Target::Local(supervisor) => {
                let addr = supervisor.start(&self.id).ok_or(CallError::Closed)?;
                call(addr.send(join), timeout).await
            }
            Target::Remote(link) => link.call_join(join, timeout).await,
        }
    }

    /// The member with entity `entity` (the target of `session`'s
    /// `give`), within `timeout`: its player id and, when its socket is
    /// on another shard, that shard. A room that is not running is
    /// [`CallError::Closed`] (it is not started for this); a room on
    /// another shard is asked through the member's edge link.
    pub async fn call_who_is(
        &self,
        session: SessionId,
        entity: protocol::msg::EntityId,
        timeout: Duration,
    ) -> Result<Option<GiveTarget>, CallError> {
        match self.target(session) {
            Target::Remote(link) => {
                let cluster = self.supervisor.cluster().ok_or(CallError::Closed)?;
                link.call_who_is(cluster.shard().as_str(), session, entity, timeout)
                    .await
            }
            Target::Local(_) => {
                let addr = self.supervisor.current(&self.id).ok_or(CallError::Closed)?;
                call(addr.send(WhoIs { entity }), timeout).await
            }
        }
    }

    fn cast<M>(&self, msg: M) -> Result<(), CastError>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        Room: Handler<M>,
        <Room as Actor>::Context: ToEnvelope<Room, M>,
    {
        self.supervisor.send(&self.id, msg).map_err(|e| match e {
            SendError::Full(_) => CastError::Full,
            SendError::Closed(_) => CastError::Closed,
        })
    }
}

impl std::fmt::Debug for RoomRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RoomRef")
            .field(&self.id.to_string())
            .finish()
    }
}

/// A request whose reply is awaited at most `timeout`.
async fn call<R>(
    request: impl std::future::Future<Output = Result<R, MailboxError>>,
    timeout: Duration,
) -> Result<R, CallError> {
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(MailboxError::Closed)) => Err(CallError::Closed),
        Ok(Err(MailboxError::Timeout)) | Err(_) => Err(CallError::Timeout),
    }
}
