//! The shard is draining (a rolling deploy, cluster mode): tell the client
//! with notice 6004 and close with 4008, so it reconnects at once through
//! the same URL and resumes on another shard. The seat is kept for the
//! resume, as on any close the client did not ask for.

use actix::prelude::*;
use protocol::msg::Notice;
use protocol::{CloseCode, NoticeCode, ServerMsg};

use super::Session;

/// What a draining shard's sessions are told, and the close's reason.
pub const DRAIN_TEXT: &str = "shard draining, reconnect";

/// Ask a session to close because its shard drains.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

impl Handler<Drain> for Session {
    type Result = ();

    fn handle(&mut self, _: Drain, ctx: &mut Context<Self>) {
        self.guarded(ctx, "drain", |session, ctx| {
            session.send(&ServerMsg::Notice(Notice::new(
                NoticeCode::ShardDraining,
                DRAIN_TEXT,
            )));
            session.close(CloseCode::Draining, DRAIN_TEXT, ctx)
        });
    }
}
