//! The play loop of a bot standing in a map: one `select!` over the stop
//! signal, the server's frames and the scenario's clocks.
//!
//! | clock | scenarios         | does                                            |
//! |-------|-------------------|-------------------------------------------------|
//! | move  | move, chat, churn | a random-walk step at `--move-hz`               |
//! | ping  | all               | `ping` on the run's clock (with the next move   |
//! |       |                   | when moving); rejoin if moved out               |
//! | chat  | chat              | a line at `--chat-hz`                           |
//! | durable | any, with `--durable-rate` | a `give` of one coin ([`super::durable`]) |
//! | churn | churn             | drop and resume, or hop ([`super::resume`])     |
//!
//! The clocks are phased by bot index (see [`crate::scenario::phase`]) so a
//! swarm's sends spread over the period instead of landing in one burst.
//! The socket is read in the same loop, so tungstenite answers the server's
//! WebSocket pings while the bot plays.

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use protocol::msg::{ChatSend, Join, Move, Ping};
use protocol::{ClientMsg, CloseCode, ServerMsg};
use tokio::time::{Instant, Interval, Sleep};

use super::measure::{own_seq, MoveRing, Room};
use super::resume::ChurnStep;
use super::socket::{close_key, Incoming, Ws};
use super::{stopped, Bot, End};
use crate::config::Scenario;
use crate::fastpath;
use crate::scenario::{self, Wander};

/// A bot the server moved out of its map without a new `joined` (not a
/// failed room's fallback, which comes at once) joins again after this.
const REJOIN_AFTER: Duration = Duration::from_secs(1);

impl Bot {
    /// The scenario loop of a bot standing in a map.
    pub(super) async fn play(&mut self, ws: &mut Ws, room: Room) -> End {
        let shared = Arc::clone(&self.shared);
        let cfg = &shared.cfg;
        let (t0, index) = (shared.t0, self.index);
        let period = |hz: f64| Duration::from_secs_f64(1.0 / hz);
        let mut ping = scenario::clock(
            t0,
            scenario::phase(index, 1, cfg.ping_interval),
            cfg.ping_interval,
        );
        let mut moves = cfg.scenario.moves().then(|| {
            let p = period(cfg.move_hz);
            scenario::clock(t0, scenario::phase(index, 0, p), p)
        });
        let mut durable = (cfg.durable.rate > 0.0).then(|| {
            let p = period(cfg.durable.rate);
            scenario::clock(t0, scenario::phase(index, 3, p), p)
        });
        let mut chat = (cfg.scenario == Scenario::Chat).then(|| {
            let p = period(cfg.chat_hz);
            scenario::clock(t0, scenario::phase(index, 2, p), p)
        });
        let mut churn = (cfg.scenario == Scenario::Churn).then(|| {
            Box::pin(tokio::time::sleep(scenario::churn_delay(
                &mut self.rng,
                cfg.churn_interval,
            )))
        });
        let mut wander = Wander::new(&mut self.rng);
        let mut room = Some(room);
        // Set while a hop's join is unanswered: when it was sent.
        let mut hop_sent: Option<Instant> = None;
        // Since when the bot stands in no map without having asked for it.
        let mut out_since: Option<Instant> = None;
        let mut chats: u32 = 0;
        // A ping fell due while the bot moves: it rides with the next move.
        let mut ping_due = false;
        let mut stop = self.stop.clone();

        let end = loop {
            tokio::select! {
                biased;
                _ = stopped(&mut stop) => break End::Stop,
                incoming = self.read(ws, room.as_ref().map(|r| r.you)) => {
                    let msg = match incoming {
                        Incoming::Msg(msg) => msg,
                        Incoming::Update(own) => {
                            if let Some(r) = room.as_mut() {
                                self.on_update(r, own);
                            }
                            continue;
                        }
                        Incoming::Skip => continue,
                        Incoming::Closed(code) => {
                            shared.stats.disconnected(&close_key("", code));
                            if code == Some(CloseCode::Draining.as_u16()) {
                                break End::Moved;
                            }
                            break End::Lost;
                        }
                        Incoming::Broken(why) => {
                            shared.stats.disconnected(why);
                            break End::Lost;
                        }
                    };
                    if let Some(end) = self.on_message(msg, &mut room, &mut hop_sent) {
                        break end;
                    }
                    if room.is_none() && hop_sent.is_none() {
                        out_since.get_or_insert_with(Instant::now);
                    }
                }
                _ = tick(&mut moves) => {
                    let Some(r) = room.as_mut().filter(|_| hop_sent.is_none()) else { continue };
                    let (dx, dy) = wander.step(&mut self.rng, r.x, r.y, r.width, r.height);
                    self.seq = self.seq.wrapping_add(1);
                    let msg = ClientMsg::Move(Move { seq: self.seq, dx, dy });
                    let sent = if std::mem::take(&mut ping_due) {
                        let ping = ClientMsg::Ping(Ping { t: shared.now_us() });
                        self.send_pair_or_end(ws, &msg, &ping).await
                    } else {
                        self.send_or_end(ws, &msg).await
                    };
                    if let Err(end) = sent {
                        break end;
                    }
                    if r.pending.push(self.seq, shared.now_us()) {
                        shared.stats.moves_unconfirmed.fetch_add(1, Relaxed);
                    }
                }
                _ = ping.tick() => {
                    // A moving bot's ping goes with its next move, in one
                    // write (the floor's client does the same), unless
                    // `--ping-apart`; a ping still due from the last tick
                    // goes now.
                    let moving = moves.is_some() && room.is_some() && hop_sent.is_none();
                    if moving && !cfg.ping_apart && !ping_due {
                        ping_due = true;
                    } else {
                        ping_due = false;
                        let msg = ClientMsg::Ping(Ping { t: shared.now_us() });
                        if let Err(end) = self.send_or_end(ws, &msg).await {
                            break end;
                        }
                    }
                    if room.is_some() || hop_sent.is_some() {
                        out_since = None;
                    } else if out_since.is_some_and(|t| t.elapsed() >= REJOIN_AFTER) {
                        // The server moved the bot out of its map and into no
                        // other: go back, as a player would.
                        let Some(map) = scenario::map_of(self.room, shared.maps()) else {
                            break End::Failed;
                        };
                        let msg = ClientMsg::Join(Join { map: map.to_string() });
                        if let Err(end) = self.send_or_end(ws, &msg).await {
                            break end;
                        }
                        hop_sent = Some(Instant::now());
                        out_since = None;
                    }
                }
                _ = tick(&mut durable) => {
                    if room.is_none() || hop_sent.is_some() {
                        continue;
                    }
                    let Some(msg) = self.next_give() else { continue };
                    if let Err(end) = self.send_or_end(ws, &msg).await {
                        break end;
                    }
                }
                _ = tick(&mut chat) => {
                    if room.is_none() || hop_sent.is_some() {
                        continue;
                    }
                    chats = chats.wrapping_add(1);
                    let text = format!("{}{} says hi #{chats}", cfg.name_prefix, index);
                    let msg = ClientMsg::Chat(ChatSend { text });
                    if let Err(end) = self.send_or_end(ws, &msg).await {
                        break end;
                    }
                }
                _ = sleep_opt(&mut churn) => {
                    let next = scenario::churn_delay(&mut self.rng, cfg.churn_interval);
                    if let Some(sleep) = churn.as_mut() {
                        sleep.as_mut().reset(Instant::now() + next);
                    }
                    match self.churn(hop_sent.is_some()) {
                        ChurnStep::Stay => {}
                        ChurnStep::Drop => break End::Churn,
                        ChurnStep::Hop(msg) => {
                            if let Err(end) = self.send_or_end(ws, &msg).await {
                                break end;
                            }
                            shared.stats.map_hops.fetch_add(1, Relaxed);
                            hop_sent = Some(Instant::now());
                        }
                    }
                }
            }
        };
        if let Some(mut room) = room {
            if matches!(end, End::Stop) {
                // Moves in flight when the run ends are not lost, just unseen.
                room.pending = MoveRing::default();
            }
            self.leave_room(room);
        }
        end
    }

    /// Handles one message in the play loop; Some to end the session.
    fn on_message(
        &mut self,
        msg: ServerMsg,
        room: &mut Option<Room>,
        hop_sent: &mut Option<Instant>,
    ) -> Option<End> {
        self.durable_message(&msg);
        let stats = &self.shared.stats;
        match msg {
            ServerMsg::Update(update) => {
                if let Some(r) = room.as_mut() {
                    self.on_update(r, fastpath::own_in(&update, r.you));
                }
            }
            ServerMsg::Pong(pong) => self.on_pong(pong.t),
            ServerMsg::Joined(joined) => {
                if let Some(old) = room.take() {
                    self.leave_room(old);
                }
                let sent = hop_sent.take().unwrap_or_else(Instant::now);
                self.on_joined(sent);
                self.durable_joined(&joined);
                self.seq = self.seq.max(own_seq(&joined));
                *room = Some(Room::from_joined(&joined));
            }
            ServerMsg::Left(_) => {
                if let Some(old) = room.take() {
                    self.leave_room(old);
                }
            }
            ServerMsg::Error(e) => {
                stats.error_frame(e.code);
                self.shard().error_frames.fetch_add(1, Relaxed);
                let join_error = (3001..=3004).contains(&e.code);
                if join_error && hop_sent.take().is_some() {
                    stats.error_frames_in_failures.fetch_add(1, Relaxed);
                    stats.join_failed(&format!("error_{}", e.code));
                    if room.is_none() {
                        // Out of the old map and not in the new one.
                        return Some(End::Failed);
                    }
                }
            }
            ServerMsg::Notice(notice) => stats.notice(notice.code),
            ServerMsg::Welcome(_)
            | ServerMsg::Chat(_)
            | ServerMsg::Announce(_)
            | ServerMsg::Done(_)
            | ServerMsg::Inventory(_)
            | ServerMsg::Items(_) => {}
        }
        None
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_opt(sleep: &mut Option<Pin<Box<Sleep>>>) {
    match sleep {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}
