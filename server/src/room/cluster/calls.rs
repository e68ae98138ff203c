//! Durable actions of remote members (`give`, `pick_up`) over
//! `/tessera/room/1`: both ends.
//!
//! ```text
//! edge shard (the giver's socket)                  owner shard (the room)
//! give: RoomRef::call_who_is ─who_is{call}──────▶  room WhoIs ─▶ player id and
//!        waits ≤ rooms.call_timeout_ms  ◀─target_is{call}─    the shard of its socket
//!        then ONE durable trade in the shared store (the giver's shard makes it),
//!        done ─▶ giver; inventory ─▶ the target's session, here or through the
//!        relay (admin stream `inventory`) on the shard holding its socket
//!
//! pick_up: RoomRef::cast_pick_up ─pick_up{session,req,item}─▶ room PickUp (owner-local
//!        session): the whole pick-up runs on the owner, which owns the ground;
//!        done / inventory / errors ◀─reliable─ come back as the member's frames
//! ```
//!
//! What an owner dying mid-action does: a `who_is` still open fails
//! (3004, nothing changed: no trade was made yet); a trade already sent
//! is the giver's shard's, so the owner's death does not touch it (its
//! answer, `done` or 5004 in doubt, is the store's). A pick-up in flight
//! is in the room document (write-through before the credit): the next
//! owner loads it and credits again under the same op id, fenced by its
//! own epoch, so the item is credited once or put back, never lost nor
//! doubled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use protocol::msg::{EntityId, ErrorMsg};
use protocol::peer::{EdgeMsg, RemotePickUp, TargetIs, WhoIs};
use protocol::{encode_server, ErrorCode, ServerMsg};
use tokio::sync::oneshot;

use super::{EdgeLink, RoomCluster};
use crate::ids::{RoomId, SessionId};
use crate::room::remote::EdgeSink;
use crate::room::{CallError, GiveTarget, PickUp, RoomSupervisor};

/// An edge link's open `who_is` questions, by correlation id.
#[derive(Default)]
pub(super) struct Calls {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<TargetIs>>>,
}

impl Calls {
    fn open(&self) -> (u64, oneshot::Receiver<TargetIs>) {
        let call = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().insert(call, tx);
        (call, rx)
    }

    /// The owner answered `answer.call` (a late answer finds nobody).
    pub(super) fn answer(&self, answer: TargetIs) {
        if let Some(tx) = self.waiting.lock().remove(&answer.call) {
            let _ = tx.send(answer);
        }
    }

    fn forget(&self, call: u64) {
        self.waiting.lock().remove(&call);
    }

    /// The stream ended: every open question is answered "closed" now.
    pub(super) fn fail_all(&self) {
        self.waiting.lock().clear();
    }

    #[cfg(test)]
    fn open_len(&self) -> usize {
        self.waiting.lock().len()
    }
}

impl EdgeLink {
    /// Who is the member with entity `entity` (asked for `session`'s
    /// `give`)? The owner answers within `timeout`. The target's shard is
    /// `None` when its socket is on this shard.
    pub async fn call_who_is(
        &self,
        me: &str,
        session: SessionId,
        entity: EntityId,
        timeout: Duration,
    ) -> Result<Option<GiveTarget>, CallError> {
        let (call, answer) = self.calls.open();
        let asked = EdgeMsg::WhoIs(WhoIs {
            call,
            session,
            entity,
        });
        if !self.send(&asked) {
            self.calls.forget(call);
            return Err(CallError::Closed);
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) if answer.unavailable => Err(CallError::Timeout),
            Ok(Ok(answer)) => Ok(answer.player.map(|player| GiveTarget {
                player,
                shard: answer.shard.filter(|s| s != me),
            })),
            // The stream ended before the answer: nothing was done.
            Ok(Err(_)) => Err(CallError::Closed),
            Err(_) => {
                self.calls.forget(call);
                Err(CallError::Timeout)
            }
        }
    }

    /// A validated `pick_up` of member `session`; the owner answers the
    /// member itself. False when there is no stream right now (the room
    /// is moving).
    pub fn cast_pick_up(&self, session: SessionId, req: u32, item: u64) -> bool {
        self.send(&EdgeMsg::PickUp(RemotePickUp { session, req, item }))
    }
}

/// The owner's answer to `asked`: the room looks the entity up (within
/// `rooms.call_timeout_ms`) and the answer goes back on the stream. Runs
/// as a task of its own, so the stream's other messages go on meanwhile.
pub(super) fn answer_who_is(
    cluster: &Arc<RoomCluster>,
    sink: &Arc<EdgeSink>,
    room: Option<&RoomId>,
    asked: WhoIs,
) {
    let addr = room.and_then(|id| cluster.rooms().and_then(|rooms| rooms.current(id)));
    let (sink, timeout) = (sink.clone(), cluster.settings().call_timeout);
    let here = cluster.shard().to_string();
    actix::spawn(async move {
        let found = match addr {
            Some(addr) => tokio::time::timeout(
                timeout,
                addr.send(crate::room::WhoIs {
                    entity: asked.entity,
                }),
            )
            .await
            .ok()
            .and_then(Result::ok),
            None => None,
        };
        let answer = match found {
            Some(target) => TargetIs {
                call: asked.call,
                shard: target
                    .as_ref()
                    .map(|t| t.shard.clone().unwrap_or_else(|| here.clone())),
                player: target.map(|t| t.player),
                unavailable: false,
            },
            // Not running here, or no answer in time: nothing looked up.
            None => TargetIs {
                call: asked.call,
                player: None,
                shard: None,
                unavailable: true,
            },
        };
        sink.send(&protocol::peer::OwnerMsg::TargetIs(answer));
    });
}

/// The owner runs member `picked.session`'s pick-up in its room (the
/// member's owner-local session is `session`, `None` if it is not seated
/// here). A pick-up the room cannot take is answered as a local session
/// answers a cast the room refused.
pub(super) fn run_pick_up(
    rooms: &RoomSupervisor,
    sink: &EdgeSink,
    room: Option<&RoomId>,
    session: Option<SessionId>,
    picked: RemotePickUp,
) {
    let sent = match (room, session) {
        (Some(id), Some(session)) => rooms
            .send(
                id,
                PickUp {
                    session,
                    req: picked.req,
                    item: picked.item,
                },
            )
            .map_err(|e| matches!(e, actix::prelude::SendError::Full(_))),
        _ => Err(false),
    };
    let text = match sent {
        Ok(()) => return,
        Err(true) => "room is busy; message dropped",
        Err(false) => "room is not running; join again",
    };
    let error = ServerMsg::Error(ErrorMsg::answering(
        picked.req,
        ErrorCode::RoomUnavailable,
        text,
    ));
    sink.reliable(picked.session, Bytes::from(encode_server(&error)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_reaches_its_call_once_and_a_failed_stream_closes_the_rest() {
        let calls = Calls::default();
        let (a, mut a_rx) = calls.open();
        let (b, mut b_rx) = calls.open();
        assert_ne!(a, b);
        let answer = TargetIs {
            call: a,
            player: Some("p".into()),
            shard: Some("c".into()),
            unavailable: false,
        };
        calls.answer(answer.clone());
        assert_eq!(a_rx.try_recv().unwrap(), answer);
        // A second (late) answer to the same call finds nobody.
        calls.answer(answer);
        assert_eq!(calls.open_len(), 1);
        calls.fail_all();
        assert!(b_rx.try_recv().is_err());
        assert_eq!(calls.open_len(), 0);
    }
}
