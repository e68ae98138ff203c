//! The accept loop: TCP accept, per-IP limits and the connection cap, TLS
//! (when configured), WebSocket upgrade, and one [`Session`] per socket on
//! the next worker Arbiter.
//!
//! The accept loop runs on the system Arbiter; each accepted socket moves to
//! a worker Arbiter (as a std socket, so it registers with that Arbiter's
//! reactor) where the upgrade, the session actor and its writer task live.
//!
//! A socket over a limit (`server.per_ip_handshakes_per_sec`,
//! `server.per_ip_max_connections`, `server.max_connections`) is still
//! upgraded, so that it can be told: error 5002 `server_busy`, close 1013,
//! then a bounded read for the client's close (PROTOCOL.md lifecycle rule
//! 7). At most `server.max_refusing` refusals run at once; past that a socket is
//! dropped unanswered. Every refusal is counted by reason.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use protocol::msg::ErrorMsg;
use protocol::{encode_server, CloseCode, ErrorCode, ServerMsg};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::config::{ms, IpNet, ServerConfig};
use crate::metrics as m;
use crate::outbound::{self, Connection, Outbound, Socket, Writer};
use crate::session::{self, Session};
use crate::tls::Conn;
use tokio_rustls::TlsAcceptor;

/// How long the refusal's error and close frames may take to write.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

pub fn ws_config(config: &ServerConfig) -> WebSocketConfig {
    let mut ws = WebSocketConfig::default();
    ws.read_buffer_size = config.read_buffer_bytes;
    ws.write_buffer_size = config.write_buffer_bytes;
    ws.max_write_buffer_size = config.write_buffer_bytes + 4 * config.outbound_budget_bytes;
    ws.max_frame_size = Some(config.max_frame_bytes);
    ws.max_message_size = Some(config.max_frame_bytes);
    ws
}

/// Why a connection is turned away; the `reason` label of
/// `tessera_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `server.max_connections` reached.
    MaxConnections,
    /// `server.per_ip_max_connections` reached for the peer's address.
    PerIpConnections,
    /// `server.per_ip_handshakes_per_sec` exceeded by the peer's address.
    PerIpRate,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::PerIpConnections => "per_ip_connections",
            Refusal::PerIpRate => "per_ip_rate",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "server at its connection cap",
            Refusal::PerIpConnections => "too many connections from your address",
            Refusal::PerIpRate => "too many new connections from your address",
        }
    }
}

/// What one accepted socket may do: a connection's permits, or a refusal
/// (with the permit that bounds refusals in progress).
enum Admission {
    Admitted(OwnedSemaphorePermit, IpSlot),
    Refused(Refusal, OwnedSemaphorePermit),
}

/// Per-IP bookkeeping: open connections and a handshake token bucket per
/// address. An entry goes once its address has nothing open and a full
/// bucket, so the table holds only addresses active within the last
/// `burst / rate` seconds.
pub struct PerIp {
    max_connections: usize,
    rate: f64,
    burst: f64,
    exempt: Vec<IpNet>,
    table: Mutex<IpTable>,
}

struct IpTable {
    entries: HashMap<IpAddr, IpEntry>,
    last_sweep: Instant,
}

struct IpEntry {
    open: usize,
    tokens: f64,
    refilled: Instant,
}

/// One open connection counted against its address; released on drop.
pub struct IpSlot {
    owner: Option<(Arc<PerIp>, IpAddr)>,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((per_ip, ip)) = self.owner.take() {
            let mut table = per_ip.table.lock();
            if let Some(entry) = table.entries.get_mut(&ip) {
                entry.open = entry.open.saturating_sub(1);
            }
        }
    }
}

/// How often the per-IP table is swept of idle addresses, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl PerIp {
    pub fn new(config: &ServerConfig) -> Arc<PerIp> {
        Arc::new(PerIp {
            max_connections: config.per_ip_max_connections,
            rate: config.per_ip_handshakes_per_sec,
            burst: f64::from(config.per_ip_handshake_burst),
            // Validated at start; an entry that does not parse exempts
            // nothing.
            exempt: config
                .per_ip_exempt
                .iter()
                .filter_map(|net| IpNet::parse(net).ok())
                .collect(),
            table: Mutex::new(IpTable {
                entries: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        })
    }

    /// Count a new connection from `ip`: a slot to hold while it is open,
    /// or why it is refused. A refused attempt still spends a handshake
    /// token, so hammering does not pay.
    pub fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<IpSlot, Refusal> {
        let ip = ip.to_canonical();
        if self.exempt.iter().any(|net| net.contains(ip))
            || (self.max_connections == 0 && self.rate == 0.0)
        {
            return Ok(IpSlot { owner: None });
        }
        let ip = limit_key(ip);
        let mut table = self.table.lock();
        if now.duration_since(table.last_sweep) >= SWEEP_EVERY {
            table.last_sweep = now;
            let (rate, burst) = (self.rate, self.burst);
            table
                .entries
                .retain(|_, e| e.open > 0 || (rate > 0.0 && refill(e, rate, burst, now) < burst));
        }
        let entry = table.entries.entry(ip).or_insert(IpEntry {
            open: 0,
            tokens: self.burst,
            refilled: now,
        });
        if self.rate > 0.0 {
            if refill(entry, self.rate, self.burst, now) < 1.0 {
                return Err(Refusal::PerIpRate);
            }
            entry.tokens -= 1.0;
        }
        if self.max_connections > 0 && entry.open >= self.max_connections {
            return Err(Refusal::PerIpConnections);
        }
        entry.open += 1;
        Ok(IpSlot {
            owner: Some((self.clone(), ip)),
        })
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.table.lock().entries.len()
    }
}

/// The address a limit is counted against: IPv4 as it is, IPv6 by its /64
/// (one subscriber's network: a host picks any address in it at will).
fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

/// Top `entry`'s bucket up to `now`; returns its tokens.
fn refill(entry: &mut IpEntry, rate: f64, burst: f64, now: Instant) -> f64 {
    let elapsed = now.duration_since(entry.refilled).as_secs_f64();
    entry.tokens = (entry.tokens + elapsed * rate).min(burst);
    entry.refilled = now;
    entry.tokens
}

/// The accept loop's state. Everything that must survive a restart of the
/// loop (the connection count, session ids) lives here behind `Arc`s, so
/// the supervisor can start a fresh loop from a clone.
#[derive(Clone)]
pub struct Gateway {
    /// What every session it starts is given.
    sessions: Arc<session::Deps>,
    /// TLS on the game listener, when `[tls]` configures it.
    tls: Option<TlsAcceptor>,
    workers: Vec<ArbiterHandle>,
    done: mpsc::Sender<()>,
    /// One permit per open connection (`server.max_connections`).
    permits: Arc<Semaphore>,
    /// Sockets over a cap being told so.
    refusing: Arc<Semaphore>,
    per_ip: Arc<PerIp>,
    next_worker: Arc<AtomicUsize>,
    /// Session ids are unique for the shard's life, across restarts.
    next_session: Arc<AtomicU64>,
}

impl Gateway {
    /// `done` is cloned into every session, so that shutdown
    /// can wait for them all.
    pub fn new(
        sessions: Arc<session::Deps>,
        tls: Option<TlsAcceptor>,
        workers: Vec<ArbiterHandle>,
        done: mpsc::Sender<()>,
    ) -> Self {
        Gateway {
            permits: Arc::new(Semaphore::new(sessions.config.server.max_connections)),
            refusing: Arc::new(Semaphore::new(sessions.config.server.max_refusing)),
            per_ip: PerIp::new(&sessions.config.server),
            next_worker: Arc::new(AtomicUsize::new(0)),
            next_session: Arc::new(AtomicU64::new(1)),
            sessions,
            tls,
            workers,
            done,
        }
    }

    /// The per-IP rule first (it is the cheaper answer to a flood from one
    /// address), then the shard's cap.
    fn admit(&self, peer: SocketAddr) -> Option<Admission> {
        let refusal = match self.per_ip.admit(peer.ip(), Instant::now()) {
            Ok(slot) => match self.permits.clone().try_acquire_owned() {
                Ok(permit) => return Some(Admission::Admitted(permit, slot)),
                Err(_) => Refusal::MaxConnections,
            },
            Err(refusal) => refusal,
        };
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => refusal.label()).increment(1);
        match self.refusing.clone().try_acquire_owned() {
            Ok(refusing) => Some(Admission::Refused(refusal, refusing)),
            Err(_) => {
                // Too many refusals in flight already: this one is dropped
                // unanswered rather than queued.
                metrics::counter!(m::CONNECTIONS_REFUSED_UNANSWERED).increment(1);
                None
            }
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
            let Some(admission) = self.admit(peer) else {
                continue;
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
            let (deps, tls) = (self.sessions.clone(), self.tls.clone());
            let done = self.done.clone();
            let id = self.next_session.fetch_add(1, Ordering::Relaxed);
            worker.spawn(async move {
                match TcpStream::from_std(std_tcp) {
                    Ok(tcp) => serve(tcp, peer, id, admission, deps, tls, done).await,
                    Err(err) => tracing::warn!(error = %err, "socket handover failed"),
                }
            });
        }
        tracing::info!("gateway stopped accepting");
    }
}

/// TLS (when configured) and the WebSocket upgrade, within the handshake
/// timeout.
async fn upgrade(
    tcp: TcpStream,
    peer: SocketAddr,
    config: &ServerConfig,
    tls: Option<&TlsAcceptor>,
) -> Option<(WebSocketStream<Conn>, Socket)> {
    let timeout = ms(config.handshake_timeout_ms);
    let started = tokio::time::Instant::now();
    // The close path keeps a handle to the TCP stream (see `outbound`).
    let tcp = outbound::Conn::new(tcp);
    let socket = tcp.socket();
    let conn = match tls {
        None => Conn::Plain(tcp),
        Some(acceptor) => match Conn::tls(acceptor, tcp, timeout).await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::debug!(%peer, error = %err, "tls handshake failed");
                return None;
            }
        },
    };
    // Boxed: the upgrade future is large and would otherwise live inside
    // this task for the connection's whole life.
    let upgrade = Box::pin(tokio_tungstenite::accept_async_with_config(
        conn,
        Some(ws_config(config)),
    ));
    match tokio::time::timeout_at(started + timeout, upgrade).await {
        Ok(Ok(ws)) => Some((ws, socket)),
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "websocket upgrade failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "websocket upgrade timed out");
            None
        }
    }
}

/// Upgrade one socket and start its session, or tell it why not.
async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    id: u64,
    admission: Admission,
    deps: Arc<session::Deps>,
    tls: Option<TlsAcceptor>,
    done: mpsc::Sender<()>,
) {
    let Some((ws, socket)) = upgrade(tcp, peer, &deps.config.server, tls.as_ref()).await else {
        return;
    };
    let (permit, ip_slot) = match admission {
        Admission::Admitted(permit, slot) => (permit, slot),
        Admission::Refused(refusal, _refusing) => {
            tracing::debug!(%peer, reason = refusal.label(), "connection refused");
            refuse(ws, refusal, ms(deps.config.server.close_linger_ms)).await;
            return;
        }
    };
    let config = &deps.config.server;
    let out = Outbound::for_socket(config.outbound_budget_bytes, socket.clone());
    let mut writer = Writer::new(out.clone(), ms(config.write_timeout_ms));
    if tls.is_none() {
        // Plain TCP: data frames go straight to the socket (see `outbound`).
        writer = writer.direct(socket);
    }
    // The admission slots are held for as long as the connection lives.
    let connection = Connection::new(ws, writer, (permit, ip_slot));
    tracing::debug!(%peer, session = id, "connected");
    Session::create(move |ctx| {
        ctx.add_stream(connection);
        Session::new(id, deps, out, done)
    });
}

/// Error 5002, then close 1013, then (PROTOCOL.md lifecycle rule 7) read
/// and ignore the client's frames until its close or `linger`
/// (`server.close_linger_ms`), so
/// that unread input does not turn the close into a TCP reset.
async fn refuse<S>(mut ws: WebSocketStream<S>, refusal: Refusal, linger: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let text = refusal.text();
    let error = encode_server(&ServerMsg::Error(ErrorMsg::new(
        ErrorCode::ServerBusy,
        text,
    )));
    let close = CloseFrame {
        code: WsCloseCode::from(CloseCode::TryAgainLater.as_u16()),
        reason: text.into(),
    };
    let sent = tokio::time::timeout(REFUSAL_WRITE, async {
        ws.feed(Message::Binary(error.into())).await?;
        ws.send(Message::Close(Some(close))).await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        return;
    }
    let _ = tokio::time::timeout(linger, async {
        while let Some(Ok(message)) = ws.next().await {
            if message.is_close() {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_ip(max_connections: usize, rate: f64, burst: u32) -> Arc<PerIp> {
        PerIp::new(&ServerConfig {
            per_ip_max_connections: max_connections,
            per_ip_handshakes_per_sec: rate,
            per_ip_handshake_burst: burst,
            per_ip_exempt: vec!["10.0.0.9".into()],
            ..ServerConfig::default()
        })
    }

    #[test]
    fn open_connections_are_capped_per_address_and_released_on_drop() {
        let limits = per_ip(2, 0.0, 0);
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let first = limits.admit(a, now).unwrap();
        let _second = limits.admit(a, now).unwrap();
        assert_eq!(limits.admit(a, now).err(), Some(Refusal::PerIpConnections));
        // Another address has its own count; an exempt one has none.
        assert!(limits.admit("10.0.0.2".parse().unwrap(), now).is_ok());
        let exempt: Vec<IpSlot> = (0..5)
            .map(|_| limits.admit("10.0.0.9".parse().unwrap(), now).unwrap())
            .collect();
        assert_eq!(exempt.len(), 5);
        drop(first);
        assert!(limits.admit(a, now).is_ok());
    }

    #[test]
    fn handshakes_are_a_token_bucket_per_address() {
        let limits = per_ip(0, 2.0, 3);
        let start = Instant::now();
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        for _ in 0..3 {
            drop(limits.admit(a, start).unwrap());
        }
        assert_eq!(limits.admit(a, start).err(), Some(Refusal::PerIpRate));
        // Half a second later one token (2 per second) is back.
        let later = start + Duration::from_millis(500);
        assert!(limits.admit(a, later).is_ok());
        assert_eq!(limits.admit(a, later).err(), Some(Refusal::PerIpRate));
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        let limits = per_ip(1, 0.0, 0);
        let now = Instant::now();
        let _one = limits
            .admit("2001:db8:1:2::1".parse().unwrap(), now)
            .unwrap();
        assert_eq!(
            limits
                .admit("2001:db8:1:2:ffff::9".parse().unwrap(), now)
                .err(),
            Some(Refusal::PerIpConnections)
        );
        assert!(limits
            .admit("2001:db8:1:3::1".parse().unwrap(), now)
            .is_ok());
        let _v4 = limits.admit("198.51.100.1".parse().unwrap(), now).unwrap();
        assert_eq!(
            limits
                .admit("::ffff:198.51.100.1".parse().unwrap(), now)
                .err(),
            Some(Refusal::PerIpConnections)
        );
    }

    #[test]
    fn idle_addresses_are_swept() {
        let limits = per_ip(4, 10.0, 2);
        let start = Instant::now();
        for i in 0..100u8 {
            drop(limits.admit(IpAddr::from([10, 1, 0, i]), start).unwrap());
        }
        let held = limits.admit("10.2.0.1".parse().unwrap(), start).unwrap();
        assert_eq!(limits.tracked(), 101);
        // Two seconds on, every bucket is full again: only the address
        // with an open connection (and the one just admitted) stays.
        let later = start + Duration::from_secs(2);
        let _next = limits.admit("10.3.0.1".parse().unwrap(), later).unwrap();
        assert_eq!(limits.tracked(), 2);
        drop(held);
    }
}

#[cfg(test)]
mod sizes {
    //! Every joined connection holds one of each; at 10,000 idle
    //! connections a size class is 1.3 MB (BENCHMARKS.md, issue 12).

    use std::mem::size_of;

    /// The connection as the session's context holds it: boxed in an
    /// `ActorStream` (8 more bytes). jemalloc's classes go 512, 640: one
    /// byte over 504 costs every connection 128 bytes.
    #[test]
    fn a_plain_connection_fits_in_512_bytes() {
        type Plain = super::Connection<
            super::WebSocketStream<crate::tls::Conn>,
            (super::OwnedSemaphorePermit, super::IpSlot),
        >;
        let size = size_of::<Plain>();
        assert!(size + 8 <= 512, "Connection is {size} bytes");
    }

    /// Every connection's queue, in an `Arc` (16 bytes more): jemalloc's
    /// classes go 160, 192.
    #[test]
    fn an_outbound_queue_fits_in_160_bytes() {
        let size = size_of::<crate::outbound::Outbound>();
        assert!(size + 16 <= 160, "Outbound is {size} bytes");
    }

    /// The session's task: tokio's cell is the actor's context future
    /// plus about 104 bytes, in steps of 128 (its alignment): 656 bytes
    /// of future make a 768-byte cell, 672 made an 896-byte one.
    #[test]
    fn the_session_task_fits_in_768_bytes() {
        type Task = actix::dev::ContextFut<
            crate::session::Session,
            actix::Context<crate::session::Session>,
        >;
        let size = size_of::<Task>();
        assert!(size <= 656, "the session's context future is {size} bytes");
    }
}
