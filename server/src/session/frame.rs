//! Frame handling: what arrives on the socket, its size and rate limits,
//! its decoding, the state check and the dispatch to a message family; the
//! heartbeat and idle timeout.

use std::time::Instant;

use actix::prelude::*;
use protocol::msg::{Ping, Pong};
use protocol::{ClientMsg, CloseCode, ErrorCode, ServerMsg};
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{Session, State};
use crate::config::ms;
use crate::metrics as m;

/// The three rate-limited message classes.
#[derive(Clone, Copy)]
enum Class {
    Move,
    Chat,
    Control,
}

impl Class {
    fn of(msg: &ClientMsg) -> Class {
        match msg {
            ClientMsg::Move(_) => Class::Move,
            ClientMsg::Chat(_) => Class::Chat,
            ClientMsg::Hello(_)
            | ClientMsg::Join(_)
            | ClientMsg::Leave(_)
            | ClientMsg::Ping(_)
            | ClientMsg::Give(_)
            | ClientMsg::PickUp(_) => Class::Control,
        }
    }
}

impl StreamHandler<Result<Message, WsError>> for Session {
    fn handle(&mut self, item: Result<Message, WsError>, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        if matches!(self.state, State::Closing) {
            // Drain until the client's close; see the module docs. After an
            // error the stream ends and `finished` drains the raw socket.
            if matches!(item, Ok(Message::Close(_))) {
                ctx.stop();
            }
            return;
        }
        self.guarded(ctx, "frame", |session, ctx| session.on_item(item, ctx));
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        let closing = matches!(self.state, State::Closing) && ctx.state() == ActorState::Running;
        match self.socket.clone() {
            // The stream gave up before the client's close (it ends after
            // any error, e.g. a frame over the limit, whose payload is still
            // unread): read and drop the rest of the input raw until the
            // client's end of stream, within the linger set by `close`.
            Some(socket) if closing => {
                let drain = async move { socket.drain().await };
                ctx.spawn(drain.into_actor(self).map(|(), _, ctx| ctx.stop()));
            }
            _ => ctx.stop(),
        }
    }
}

impl Session {
    pub(super) fn on_frame(&mut self, bytes: &[u8], ctx: &mut Context<Self>) {
        let msg = match protocol::decode_client(bytes, self.deps.config.server.max_frame_bytes) {
            Ok(msg) => msg,
            Err(err) => {
                m::count_client_message("malformed");
                self.send_error(err.code(), err.to_string());
                self.strike(ctx);
                return;
            }
        };
        m::count_client_message(msg.kind());
        let bucket = &mut self.buckets[Class::of(&msg) as usize];
        // The frame's arrival time, read once per frame (`handle`).
        if !bucket.allow(self.last_seen) {
            let req = match &msg {
                ClientMsg::Give(give) => Some(give.req),
                ClientMsg::PickUp(pick) => Some(pick.req),
                ClientMsg::Hello(_)
                | ClientMsg::Join(_)
                | ClientMsg::Leave(_)
                | ClientMsg::Move(_)
                | ClientMsg::Chat(_)
                | ClientMsg::Ping(_) => None,
            };
            self.send_error_to(
                req,
                ErrorCode::RateLimited,
                format!("{} over its rate limit", msg.kind()),
            );
            self.strike(ctx);
            return;
        }
        match msg {
            ClientMsg::Hello(hello) => self.on_hello(hello, ctx),
            ClientMsg::Join(join) => self.on_join(join, ctx),
            ClientMsg::Leave(_) => self.on_leave(),
            ClientMsg::Move(mv) => self.on_move(mv),
            ClientMsg::Chat(chat) => self.on_chat(chat),
            ClientMsg::Ping(ping) => self.on_ping(ping),
            ClientMsg::Give(give) => self.on_give(give, ctx),
            ClientMsg::PickUp(pick) => self.on_pick_up(pick),
        }
    }

    pub(super) fn on_ping(&mut self, ping: Ping) {
        if matches!(self.state, State::AwaitingHello) {
            self.send_error(ErrorCode::IllegalState, "say hello first");
            return;
        }
        let server_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.send(&ServerMsg::Pong(Pong {
            t: ping.t,
            server_ms,
        }));
    }

    pub(super) fn housekeeping(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.state, State::Closing) {
            return;
        }
        if self.out.is_closing() {
            // The queue closed itself (slow consumer 4005, write failure):
            // its close frame is on its way; linger for the client's close
            // like any other close (`close` keeps the first code queued).
            self.close(CloseCode::InternalError, "write failed", ctx);
            return;
        }
        let config = &self.deps.config.server;
        if self.last_seen.elapsed() >= ms(config.idle_timeout_ms) {
            self.close(CloseCode::IdleTimeout, "idle timeout", ctx);
            return;
        }
        if self.last_ping_sent.elapsed() >= ms(config.heartbeat_interval_ms) {
            self.last_ping_sent = Instant::now();
            self.out.push_ping();
        }
        self.out.trim_idle();
    }

    pub(super) fn on_item(&mut self, item: Result<Message, WsError>, ctx: &mut Context<Self>) {
        match item {
            Ok(Message::Binary(bytes)) => self.on_frame(&bytes, ctx),
            Ok(Message::Text(_)) => {
                m::count_client_message("text");
                self.send_error(ErrorCode::TextFrame, "frames must be binary MessagePack");
                self.strike(ctx);
            }
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
            Ok(Message::Close(_)) => {
                // A close frame is a goodbye, not a dropped connection: the
                // entity leaves at once instead of standing for the grace.
                // The session ends once its reply is written (the
                // connection then ends).
                self.logged_out = true;
                self.leave_room(false);
                self.close(CloseCode::Normal, "goodbye", ctx);
            }
            Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                let text = format!("frame of {size} bytes is over the limit of {max_size}");
                self.refuse(
                    ErrorCode::FrameTooLarge,
                    &text,
                    CloseCode::MessageTooBig,
                    ctx,
                );
            }
            Err(err) => {
                tracing::debug!(session = self.id, error = %err, "read failed");
                self.release_seat();
                ctx.stop();
            }
        }
    }
}
