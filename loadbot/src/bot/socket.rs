//! Frames in and out of one bot's socket: read and classify what the server
//! sends, encode and send what the bot says, say goodbye, and name failures
//! with short stable keys (the keys of the report's `*_by_reason` maps).
//!
//! Nothing the server sends is trusted: frames that do not decode are
//! counted and skipped, never unwrapped.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::{ClientMsg, ServerMsg};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::{Bot, End};
use crate::fastpath::{self, Own};
use crate::stats::{client_kind, server_kind, Stats, UPDATE_KIND};

pub(super) type Ws = WebSocketStream<TcpStream>;

/// Largest server frame a bot decodes. The server's own limit is for client
/// frames; a `joined` in a crowded map can be much larger.
pub(super) const MAX_SERVER_FRAME: usize = 16 << 20;

/// Frames up to this many bytes wait in tungstenite's write buffer for the
/// flush that ends their write, so the frames of one write (a move and the
/// ping riding with it) leave in one segment; larger ones are written at
/// once. Every send flushes: nothing stays buffered between writes.
pub(super) const WRITE_BUFFER: usize = 256;
/// Time a stopping bot waits for the server's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Why a connect or join did not succeed, as a short stable key.
pub(super) struct Failure(pub(super) String);

impl Failure {
    pub(super) fn io(err: &std::io::Error) -> Failure {
        use std::io::ErrorKind as K;
        let key = match (err.kind(), err.raw_os_error()) {
            (K::ConnectionRefused, _) => "refused".to_string(),
            (K::ConnectionReset, _) => "reset".to_string(),
            (K::AddrNotAvailable, _) | (_, Some(99)) => "no_local_port".to_string(),
            (_, Some(24)) => "too_many_open_files".to_string(),
            (kind, _) => format!("io_{kind:?}").to_lowercase(),
        };
        Failure(key)
    }

    pub(super) fn ws(err: &WsError) -> Failure {
        match err {
            WsError::Io(e) => Failure::io(e),
            WsError::Http(response) => Failure(format!("http_{}", response.status().as_u16())),
            WsError::ConnectionClosed | WsError::AlreadyClosed => Failure("closed".into()),
            WsError::Protocol(_) => Failure("ws_protocol".into()),
            WsError::Capacity(_) => Failure("frame_too_large".into()),
            _ => Failure("ws_other".into()),
        }
    }
}

/// A frame from the server, decoded, or how the stream ended.
pub(super) enum Incoming {
    Msg(ServerMsg),
    /// An update read by the fast path: the bot's own entry, if any.
    Update(Option<Own>),
    /// A frame that needs no handling (WebSocket ping/pong, undecodable).
    Skip,
    /// The server closed: its close code, if it sent one.
    Closed(Option<u16>),
    /// The socket failed or ended without a close frame.
    Broken(&'static str),
}

impl Bot {
    /// Reads the next frame, counting what arrives. Cancel-safe. With the
    /// bot's entity id (`you`), updates take the fast path.
    pub(super) async fn read(&self, ws: &mut Ws, you: Option<u32>) -> Incoming {
        let stats = self.stats();
        match ws.next().await {
            Some(Ok(Message::Binary(data))) => {
                match you.and_then(|you| fastpath::own_in_update(&data, you)) {
                    Some(Ok(own)) => {
                        stats.received(UPDATE_KIND, data.len());
                        self.shard_received(UPDATE_KIND, data.len());
                        return Incoming::Update(own);
                    }
                    Some(Err(err)) => {
                        stats.decode_errors.fetch_add(1, Relaxed);
                        stats.bytes_received.fetch_add(data.len() as u64, Relaxed);
                        tracing::debug!(%err, "undecodable update");
                        return Incoming::Skip;
                    }
                    None => {}
                }
                match protocol::decode_server(&data, MAX_SERVER_FRAME) {
                    Ok(msg) => {
                        stats.received(server_kind(&msg), data.len());
                        self.shard_received(server_kind(&msg), data.len());
                        Incoming::Msg(msg)
                    }
                    Err(err) => {
                        stats.decode_errors.fetch_add(1, Relaxed);
                        stats.bytes_received.fetch_add(data.len() as u64, Relaxed);
                        tracing::debug!(%err, "undecodable server frame");
                        Incoming::Skip
                    }
                }
            }
            Some(Ok(Message::Ping(_))) => {
                // tungstenite has queued the pong; it goes out with the next
                // read or write.
                stats.ws_pings.fetch_add(1, Relaxed);
                Incoming::Skip
            }
            Some(Ok(Message::Pong(_))) => Incoming::Skip,
            Some(Ok(Message::Text(_) | Message::Frame(_))) => {
                stats.unexpected_frames.fetch_add(1, Relaxed);
                Incoming::Skip
            }
            Some(Ok(Message::Close(frame))) => Incoming::Closed(frame.map(|f| u16::from(f.code))),
            Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                Incoming::Broken("no_close_frame")
            }
            Some(Err(WsError::Protocol(_))) => Incoming::Broken("no_close_frame"),
            Some(Err(_)) => Incoming::Broken("io_error"),
            None => Incoming::Broken("no_close_frame"),
        }
    }

    /// A decoded frame of `kind`, `len` bytes, for the bot's shard figures.
    fn shard_received(&self, kind: usize, len: usize) {
        let shard = self.shard();
        shard.bytes_received.fetch_add(len as u64, Relaxed);
        if kind == UPDATE_KIND {
            shard.updates_received.fetch_add(1, Relaxed);
        }
    }

    /// Sends in the play loop: a failed write counts as a disconnect and ends
    /// the session as lost.
    pub(super) async fn send_or_end(&self, ws: &mut Ws, msg: &ClientMsg) -> Result<(), End> {
        let sent = send(ws, self.stats(), msg).await;
        sent.map_err(|e| self.lost(e))
    }

    /// [`send_pair`] in the play loop, ending the session as
    /// [`Bot::send_or_end`] does.
    pub(super) async fn send_pair_or_end(
        &self,
        ws: &mut Ws,
        first: &ClientMsg,
        second: &ClientMsg,
    ) -> Result<(), End> {
        let sent = send_pair(ws, self.stats(), first, second).await;
        sent.map_err(|e| self.lost(e))
    }

    /// A failed write: counted as a disconnect; the session is lost.
    fn lost(&self, e: WsError) -> End {
        let key = match e {
            WsError::Io(_) => "io_error",
            _ => "no_close_frame",
        };
        self.stats().disconnected(key);
        End::Lost
    }
}

/// Encodes, sends and flushes one message; counts it once it is written.
pub(super) async fn send(ws: &mut Ws, stats: &Stats, msg: &ClientMsg) -> Result<(), WsError> {
    let bytes = protocol::encode_client(msg);
    let len = bytes.len();
    ws.send(Message::binary(bytes)).await?;
    stats.sent(client_kind(msg), len);
    Ok(())
}

/// Encodes `first` and `second` and writes them with one flush: two
/// WebSocket frames, one write (a ping riding with a move).
pub(super) async fn send_pair(
    ws: &mut Ws,
    stats: &Stats,
    first: &ClientMsg,
    second: &ClientMsg,
) -> Result<(), WsError> {
    let (a, b) = (
        protocol::encode_client(first),
        protocol::encode_client(second),
    );
    let (len_a, len_b) = (a.len(), b.len());
    ws.feed(Message::binary(a)).await?;
    ws.feed(Message::binary(b)).await?;
    ws.flush().await?;
    stats.sent(client_kind(first), len_a);
    stats.sent(client_kind(second), len_b);
    Ok(())
}

/// Says goodbye (close 1000) and waits briefly for the server's reply.
pub(super) async fn close(ws: &mut Ws) {
    let frame = CloseFrame {
        code: WsCloseCode::Normal,
        reason: "run over".into(),
    };
    let goodbye = async {
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        // Bounded by CLOSE_GRACE below; frames still in flight are dropped.
        while let Some(Ok(_)) = ws.next().await {}
    };
    let _ = timeout(CLOSE_GRACE, goodbye).await;
}

/// `close_4004`, or `close_none` when the close frame carried no code.
pub(super) fn close_key(prefix: &str, code: Option<u16>) -> String {
    let code = code.map_or_else(|| "none".to_string(), |c| c.to_string());
    if prefix.is_empty() {
        code
    } else {
        format!("{prefix}_{code}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_keys() {
        assert_eq!(close_key("close", Some(4003)), "close_4003");
        assert_eq!(close_key("", None), "none");
        assert_eq!(close_key("", Some(1001)), "1001");
    }
}
