//! The owner's side of `/tessera/room/1`: each stream is one edge shard
//! for one room. Its members are seated in the local room like local
//! ones, with an owner-local session id (edge ids collide across shards)
//! and a [`RemoteSeat`] naming the stream's [`EdgeSink`]; the room sends
//! them one `tick` per tick and their reliable frames through it.
//!
//! When the stream ends (the edge went away or failed over), every member
//! it carried is disconnected: its seat is held for the resume grace, so
//! the player can resume on any shard.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use actix::prelude::*;
use protocol::peer::{EdgeMsg, JoinRefused, OwnerMsg, RemoteJoin, RemoteJoined};
use protocol::ErrorCode;
use tokio::sync::mpsc;

use super::RoomCluster;
use crate::auth::Identity;
use crate::cluster::tunnel::PeerStream;
use crate::ids::{RoomId, SessionId};
use crate::outbound::Outbound;
use crate::room::remote::{EdgeSink, RemoteSeat};
use crate::room::{
    ChatIn, Disconnected, Inputs, JoinError, JoinRoom, LeaveRoom, MemberLink, RoomEvent,
};

/// Accept room streams until the hub stops serving them.
pub(super) async fn serve(cluster: Weak<RoomCluster>, mut streams: mpsc::Receiver<PeerStream>) {
    while let Some(stream) = streams.recv().await {
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        actix::spawn(run_stream(cluster, stream));
    }
}

/// A remote member at the owner: its owner-local session and input queue.
struct Seated {
    session: SessionId,
    inputs: Arc<Inputs>,
    /// The member's queue at the owner: nobody reads it, but its resync
    /// flag is how the room learns the member is owed a full view.
    out: Arc<Outbound>,
}

/// Tells an edge when its room failed past its restart limit (the
/// supervisor tells each member's `events`).
struct EdgeEvents {
    sink: Arc<EdgeSink>,
}

impl Actor for EdgeEvents {
    type Context = Context<Self>;
}

impl Handler<RoomEvent> for EdgeEvents {
    type Result = ();

    fn handle(&mut self, msg: RoomEvent, ctx: &mut Context<Self>) {
        let RoomEvent::Failed { room } = msg;
        self.sink
            .close(ErrorCode::RoomFailed.as_u16(), &format!("{room} failed"));
        ctx.stop();
    }
}

async fn run_stream(cluster: Arc<RoomCluster>, stream: PeerStream) {
    let PeerStream {
        peer, tx, mut rx, ..
    } = stream;
    let sink = Arc::new(EdgeSink::new(cluster.next_sink(), peer.clone(), tx));
    let events = EdgeEvents { sink: sink.clone() }.start().recipient();
    let mut room: Option<RoomId> = None;
    let mut seated: HashMap<u64, Seated> = HashMap::new();
    while let Some(msg) = rx.recv_msg::<EdgeMsg>().await {
        let msg = match msg {
            Ok(msg) => msg,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "room stream from an edge ended");
                break;
            }
        };
        let Some(rooms) = cluster.rooms() else {
            break;
        };
        match msg {
            EdgeMsg::Join(join) => {
                let edge_session = join.session;
                if join.implied_moved {
                    sink.set_implied(!seated.is_empty());
                }
                match seat(&cluster, &sink, &events, &mut room, &seated, join).await {
                    Ok((ok, new)) => {
                        seated.insert(edge_session, new);
                        sink.send(&OwnerMsg::Joined(RemoteJoined {
                            session: edge_session,
                            you: ok,
                        }));
                    }
                    Err((code, message)) => {
                        sink.send(&OwnerMsg::JoinRefused(JoinRefused {
                            session: edge_session,
                            code: code.as_u16(),
                            message,
                        }));
                    }
                }
            }
            EdgeMsg::Leave(m) => {
                if let (Some(s), Some(id)) = (seated.remove(&m.session), &room) {
                    // do_send: a leave must not be lost to a full mailbox
                    // (one per member, and members are bounded).
                    if let Some(addr) = rooms.current(id) {
                        addr.do_send(LeaveRoom { session: s.session });
                    }
                }
            }
            EdgeMsg::Disconnected(m) => {
                if let (Some(s), Some(id)) = (seated.remove(&m.session), &room) {
                    if let Some(addr) = rooms.current(id) {
                        addr.do_send(Disconnected { session: s.session });
                    }
                }
            }
            EdgeMsg::Inputs(batch) => {
                for input in batch.batch {
                    let Some(s) = seated.get(&input.session) else {
                        continue;
                    };
                    if let Some((dx, dy)) = direction(input.dx, input.dy) {
                        s.inputs.push(input.seq, dx, dy);
                    }
                }
            }
            EdgeMsg::Resync(m) => {
                if let Some(s) = seated.get(&m.session) {
                    s.out.request_resync();
                }
            }
            EdgeMsg::WhoIs(asked) => {
                super::calls::answer_who_is(&cluster, &sink, room.as_ref(), asked)
            }
            EdgeMsg::PickUp(picked) => {
                let session = seated.get(&picked.session).map(|s| s.session);
                super::calls::run_pick_up(&rooms, &sink, room.as_ref(), session, picked);
            }
            EdgeMsg::Chat(chat) => {
                if let (Some(s), Some(id)) = (seated.get(&chat.session), &room) {
                    // The edge's session validated the line; a full mailbox
                    // drops it, as for a local member.
                    let _ = rooms.send(
                        id,
                        ChatIn {
                            session: s.session,
                            text: chat.text,
                        },
                    );
                }
            }
        }
    }
    // The edge is gone: every member's seat is held for a resume.
    if let (Some(rooms), Some(id)) = (cluster.rooms(), &room) {
        if let Some(addr) = rooms.current(id) {
            for s in seated.values() {
                addr.do_send(Disconnected { session: s.session });
            }
        }
    }
}

/// Seat `join` in its room here: the room is leased (if it is not yet)
/// and started. The entity id, or the refusal's code and message.
async fn seat(
    cluster: &Arc<RoomCluster>,
    sink: &Arc<EdgeSink>,
    events: &Recipient<RoomEvent>,
    room: &mut Option<RoomId>,
    seated: &HashMap<u64, Seated>,
    join: RemoteJoin,
) -> Result<(protocol::msg::EntityId, Seated), (ErrorCode, String)> {
    let id: RoomId = join
        .room
        .parse()
        .map_err(|_| (ErrorCode::UnknownMap, format!("no room {:?}", join.room)))?;
    if room.as_ref().is_some_and(|r| *r != id) {
        return Err((ErrorCode::IllegalState, "one room per stream".to_string()));
    }
    let rooms = cluster
        .rooms()
        .ok_or((ErrorCode::RoomUnavailable, "shutting down".to_string()))?;
    if !rooms.has_map(id.map()) {
        return Err((
            ErrorCode::UnknownMap,
            format!("no map named {:?}", id.map()),
        ));
    }
    match cluster.ensure_local(&id).await {
        Ok(None) => {}
        Ok(Some(other)) => {
            return Err((
                ErrorCode::RoomUnavailable,
                format!("{id} runs on shard {other}"),
            ))
        }
        Err(e) => return Err(refusal(e, &id)),
    }
    *room = Some(id.clone());
    // The same edge session joining again keeps its owner-local id (a
    // `join` of the map it stands in).
    let session = seated
        .get(&join.session)
        .map_or_else(|| cluster.next_session(), |s| s.session);
    let inputs = Arc::new(Inputs::new(cluster.settings().input_queue));
    // Nobody reads this queue: the member's frames go to the edge. It
    // carries the membership epoch the room checks.
    let out = Outbound::new(0);
    let epoch = out.begin_room();
    let kept = out.clone();
    let link = MemberLink {
        session,
        identity: Arc::new(Identity {
            player_id: join.player,
            name: join.name,
        }),
        out,
        inputs: inputs.clone(),
        epoch,
        events: events.clone(),
        remote: Some(RemoteSeat {
            edge: sink.clone(),
            session: join.session,
        }),
    };
    let addr = rooms
        .start(&id)
        .ok_or((ErrorCode::UnknownMap, format!("no room {id}")))?;
    // Every remote join takes over a seat the player holds here, whatever
    // session (on whatever shard) held it: session ids are per shard, so
    // the player's id is what names the seat, and a player who dropped on
    // one shard comes back through another.
    let request = JoinRoom {
        link,
        resume: Some(session),
        seat_only: false,
        spawn_at: join
            .at
            .filter(|[x, y]| x.is_finite() && y.is_finite())
            .map(|[x, y]| (x, y)),
    };
    let reply = tokio::time::timeout(cluster.settings().call_timeout, addr.send(request)).await;
    match reply {
        Ok(Ok(Ok(ok))) => {
            if join.resume {
                // A member back after a drop or a move: its edge gets full
                // views at the next tick.
                sink.want_full();
            }
            Ok((
                ok.entity,
                Seated {
                    session,
                    inputs,
                    out: kept,
                },
            ))
        }
        Ok(Ok(Err(e))) => Err(refusal(e, &id)),
        Ok(Err(_)) | Err(_) => Err((ErrorCode::RoomUnavailable, format!("{id} did not answer"))),
    }
}

/// A join error as the client code the edge answers with.
fn refusal(e: JoinError, id: &RoomId) -> (ErrorCode, String) {
    match e {
        JoinError::Full => (ErrorCode::RoomFull, format!("{id} is full")),
        JoinError::Refused(code) => (
            ErrorCode::from_u16(code).unwrap_or(ErrorCode::RoomUnavailable),
            format!("{id} could not be joined"),
        ),
        JoinError::Crashed | JoinError::SeatGone => {
            (ErrorCode::RoomUnavailable, format!("{id} did not answer"))
        }
    }
}

/// A move's direction as a session validates it: finite, length at most 1.
fn direction(dx: f32, dy: f32) -> Option<(f32, f32)> {
    if !(dx.is_finite() && dy.is_finite()) {
        return None;
    }
    let len = f64::from(dx).hypot(f64::from(dy));
    if len > 1.0 {
        Some(((f64::from(dx) / len) as f32, (f64::from(dy) / len) as f32))
    } else {
        Some((dx, dy))
    }
}
