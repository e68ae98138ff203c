//! The accept loop: TCP accept, connection cap, WebSocket upgrade, and one
//! [`Session`] per socket on the next worker Arbiter.
//!
//! The accept loop runs on the system Arbiter; each accepted socket moves to
//! a worker Arbiter (as a std socket, so it registers with that Arbiter's
//! reactor) where the upgrade, the session actor and its writer task live.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::{SinkExt, StreamExt};
use protocol::CloseCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;

use crate::config::{ms, ServerConfig};
use crate::metrics as m;
use crate::outbound::{run_writer, Conn, Outbound};
use crate::session::Session;
use crate::shard::Shared;

/// Sockets over the connection cap that may be in the middle of being told
/// so (upgrade, then close 1013) at once; past that they are dropped.
const MAX_REFUSING: usize = 64;

pub fn ws_config(config: &ServerConfig) -> WebSocketConfig {
    let mut ws = WebSocketConfig::default();
    ws.read_buffer_size = config.read_buffer_bytes;
    ws.write_buffer_size = config.write_buffer_bytes;
    ws.max_write_buffer_size = config.write_buffer_bytes + 4 * config.outbound_budget_bytes;
    ws.max_frame_size = Some(config.max_frame_bytes);
    ws.max_message_size = Some(config.max_frame_bytes);
    ws
}

/// The accept loop's state. Everything that must survive a restart of the
/// loop (the connection count, session ids) lives here behind `Arc`s, so
/// the supervisor can start a fresh loop from a clone.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
    workers: Vec<ArbiterHandle>,
    done: mpsc::Sender<()>,
    /// One permit per open connection (`server.max_connections`).
    permits: Arc<Semaphore>,
    /// Sockets over the cap being told so.
    refusing: Arc<Semaphore>,
    next_worker: Arc<AtomicUsize>,
    /// Session ids are unique for the shard's life, across restarts.
    next_session: Arc<AtomicU64>,
}

impl Gateway {
    /// `done` is cloned into every session and writer, so that shutdown
    /// can wait for them all.
    pub fn new(shared: Arc<Shared>, workers: Vec<ArbiterHandle>, done: mpsc::Sender<()>) -> Self {
        Gateway {
            permits: Arc::new(Semaphore::new(shared.config.server.max_connections)),
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
            next_worker: Arc::new(AtomicUsize::new(0)),
            next_session: Arc::new(AtomicU64::new(1)),
            shared,
            workers,
            done,
        }
    }

    /// Accept until `shutdown` turns true. The listener is shared so that a
    /// restarted loop accepts on the same port.
    pub async fn run(self, listener: Arc<TcpListener>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            metrics::counter!(m::CONNECTIONS_ACCEPTED).increment(1);
            let permit = match self.permits.clone().try_acquire_owned() {
                Ok(permit) => Ok(permit),
                Err(_) => match self.refusing.clone().try_acquire_owned() {
                    Ok(refusal) => Err(refusal),
                    Err(_) => {
                        metrics::counter!(m::CONNECTIONS_REFUSED).increment(1);
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let std_tcp = match tcp.into_std() {
                Ok(s) => s,
                Err(err) => {
                    tracing::warn!(error = %err, "socket handover failed");
                    continue;
                }
            };
            let worker = &self.workers
                [self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len()];
            let shared = self.shared.clone();
            let done = self.done.clone();
            let id = self.next_session.fetch_add(1, Ordering::Relaxed);
            worker.spawn(async move {
                match TcpStream::from_std(std_tcp) {
                    Ok(tcp) => serve(tcp, peer, id, permit, shared, done).await,
                    Err(err) => tracing::warn!(error = %err, "socket handover failed"),
                }
            });
        }
        tracing::info!("gateway stopped accepting");
    }
}

/// Upgrade one socket and start its session, or tell it the server is full.
async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    permit: Result<OwnedSemaphorePermit, OwnedSemaphorePermit>,
    shared: Arc<Shared>,
    done: mpsc::Sender<()>,
) {
    let config = &shared.config.server;
    // The close path keeps a handle to the socket (see `outbound`).
    let tcp = Conn::new(tcp);
    let socket = tcp.socket();
    // Boxed: the upgrade future is large and would otherwise live inside
    // this task for the connection's whole life.
    let upgrade = Box::pin(tokio_tungstenite::accept_async_with_config(
        tcp,
        Some(ws_config(config)),
    ));
    let ws = match tokio::time::timeout(ms(config.handshake_timeout_ms), upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "websocket upgrade failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "websocket upgrade timed out");
            return;
        }
    };
    let permit = match permit {
        Ok(permit) => permit,
        Err(_refusal) => {
            metrics::counter!(m::CONNECTIONS_REFUSED).increment(1);
            let mut ws = ws;
            let frame = CloseFrame {
                code: WsCloseCode::from(CloseCode::TryAgainLater.as_u16()),
                reason: "server at its connection cap".into(),
            };
            let _ =
                tokio::time::timeout(Duration::from_secs(1), ws.send(Message::Close(Some(frame))))
                    .await;
            return;
        }
    };
    let (sink, stream) = ws.split();
    let out = Outbound::for_socket(config.outbound_budget_bytes, socket);
    let writer = run_writer(out.clone(), sink, ms(config.write_timeout_ms));
    let writer_done = done.clone();
    actix::spawn(async move {
        writer.await;
        drop(permit);
        drop(writer_done);
    });
    tracing::debug!(%peer, session = id, "connected");
    Session::create(move |ctx| {
        ctx.add_stream(stream);
        Session::new(id, shared, out, done)
    });
}
