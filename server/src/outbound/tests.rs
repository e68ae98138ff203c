//! The queue's budget and epochs, and the writer through an in-memory
//! WebSocket and a real TCP socket.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::CloseCode;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use super::*;

#[test]
fn state_frames_over_budget_are_dropped_and_flag_a_resync() {
    let out = Outbound::new(10);
    let epoch = out.begin_room();
    assert!(out.push_state(epoch, &Bytes::from_static(b"123456")));
    assert!(!out.push_state(epoch, &Bytes::from_static(b"123456")));
    assert!(
        !out.take_resync(),
        "no resync while the queue is still full"
    );
    out.queue.lock().frames.clear();
    out.queue.lock().bytes = 0;
    assert!(out.take_resync());
    assert!(!out.take_resync(), "the flag is taken once");
}

#[test]
fn reliable_overflow_closes_with_slow_consumer() {
    let out = Outbound::new(10);
    out.push_reliable(Bytes::from_static(b"12345678")).unwrap();
    assert_eq!(
        out.push_reliable(Bytes::from_static(b"12345678")),
        Err(PushError::Overflow)
    );
    assert!(out.is_closing());
    let close = *out.queue.lock().close.clone().unwrap();
    assert_eq!(close.0, Some(CloseCode::SlowConsumer));
    assert_eq!(
        out.push_reliable(Bytes::from_static(b"1")),
        Err(PushError::Closed)
    );
    assert!(!out.push_state(0, &Bytes::from_static(b"1")));
}

#[tokio::test]
async fn the_writer_sends_in_order_then_closes() {
    let out = Outbound::new(1024);
    out.push_reliable(Bytes::from_static(b"a")).unwrap();
    out.push_state(0, &Bytes::from_static(b"b"));
    out.close(CloseCode::GoingAway, "bye");
    let mut got: Vec<Message> = Vec::new();
    let sink = (&mut got).sink_map_err(|_| WsError::ConnectionClosed);
    run_writer(out, sink, Duration::from_secs(1)).await;
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], Message::Binary(Bytes::from_static(b"a")));
    assert_eq!(got[1], Message::Binary(Bytes::from_static(b"b")));
    assert!(matches!(&got[2], Message::Close(Some(f)) if u16::from(f.code) == 1001));
}

/// A server-side connection and the client's end of it, in memory.
async fn pair(
    out: &Arc<Outbound>,
) -> (
    Connection<WebSocketStream<tokio::io::DuplexStream>, ()>,
    WebSocketStream<tokio::io::DuplexStream>,
) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = WebSocketStream::from_raw_socket(a, Role::Server, None).await;
    let client = WebSocketStream::from_raw_socket(b, Role::Client, None).await;
    let writer = Writer::new(out.clone(), Duration::from_secs(5));
    (Connection::new(server, writer, ()), client)
}

#[tokio::test]
async fn one_connection_reads_and_writes_its_socket() {
    let out = Outbound::new(1024);
    let (mut conn, mut client) = pair(&out).await;
    // Queued frames go out when the connection is polled for input.
    out.push_reliable(Bytes::from_static(b"hello")).unwrap();
    client
        .send(Message::Binary(Bytes::from_static(b"move")))
        .await
        .unwrap();
    let got = conn.next().await.unwrap().unwrap();
    assert_eq!(got, Message::Binary(Bytes::from_static(b"move")));
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Binary(Bytes::from_static(b"hello"))
    );
    // A push from elsewhere wakes the connection's task by itself.
    let reader = tokio::spawn(async move {
        let next = conn.next().await;
        (conn, next)
    });
    out.push_reliable(Bytes::from_static(b"later")).unwrap();
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Binary(Bytes::from_static(b"later"))
    );
    // The client says goodbye: the server sees it, and answers it once
    // the session closes; then the connection ends.
    client.close(None).await.unwrap();
    let (mut conn, next) = reader.await.unwrap();
    assert!(matches!(next, Some(Ok(Message::Close(_)))));
    out.close(CloseCode::Normal, "goodbye");
    let client_side = tokio::spawn(async move {
        let reply = client.next().await;
        let end = client.next().await;
        (reply, end)
    });
    let end = tokio::time::timeout(Duration::from_secs(5), conn.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "ends once written and read: {end:?}"
    );
    drop(conn);
    let (reply, end) = client_side.await.unwrap();
    assert!(
        matches!(reply, Some(Ok(Message::Close(_)))),
        "the reply to the client's close: {reply:?}"
    );
    assert!(end.is_none(), "the close handshake completed");
}

/// Both ends of a loopback TCP connection: the server's as a [`Conn`].
async fn tcp_pair() -> (Conn, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let connect = tokio::spawn(TcpStream::connect(listener.local_addr().unwrap()));
    let (tcp, _) = listener.accept().await.unwrap();
    (Conn::new(tcp), connect.await.unwrap().unwrap())
}

/// A plain TCP connection with direct writes, and the client's end.
async fn direct_pair(
    out: &Arc<Outbound>,
) -> (
    Connection<WebSocketStream<Conn>, ()>,
    WebSocketStream<TcpStream>,
) {
    let (conn, client) = tcp_pair().await;
    let socket = conn.socket();
    let server = WebSocketStream::from_raw_socket(conn, Role::Server, None).await;
    let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    let writer = Writer::new(out.clone(), Duration::from_secs(20)).direct(socket);
    (Connection::new(server, writer, ()), client)
}

fn payload(i: usize, len: usize) -> Bytes {
    (0..len)
        .map(|k| (i * 31 + k) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test]
async fn direct_writes_keep_every_frame_whole_through_a_full_socket() {
    let out = Outbound::new(64 << 20);
    let (mut conn, mut client) = direct_pair(&out).await;
    // Every header length (2, 4 and 10 bytes), more frames than one
    // vectored write takes, and far more bytes than the socket
    // buffers hold while the client is not reading yet: the batch is
    // written in pieces, some of them ending inside a frame.
    let mut sizes = vec![0, 1, 125, 126, 127, 65_535, 65_536, 300_000];
    sizes.extend(std::iter::repeat_n(1_000_000, 16));
    sizes.extend(std::iter::repeat_n(40, 3 * FRAMES_PER_WRITE));
    for (i, &len) in sizes.iter().enumerate() {
        out.push_reliable(payload(i, len)).unwrap();
        if i == 9 {
            out.push_ping();
        }
    }
    let server = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(item) = conn.next().await {
            got.push(item);
        }
        got
    });
    // A ping from the client while the server is mid-batch: its pong
    // must not land inside a frame.
    client
        .send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    let mut data = Vec::new();
    let mut pings = 0;
    let mut pong = false;
    while data.len() < sizes.len() || !pong {
        match client.next().await {
            Some(Ok(Message::Binary(b))) => data.push(b),
            Some(Ok(Message::Ping(p))) => {
                assert!(p.is_empty());
                assert_eq!(data.len(), 10, "the ping comes after frame 9");
                pings += 1;
            }
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"p");
                pong = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pings, 1);
    for (i, (got, &len)) in data.iter().zip(&sizes).enumerate() {
        assert!(got[..] == payload(i, len)[..], "frame {i} of {len} bytes");
    }
    // A small batch (a tick's frame) goes through the stack buffer.
    out.push_state(0, &payload(7, 300));
    out.push_reliable(payload(8, 200)).unwrap();
    for (i, len) in [(7, 300), (8, 200)] {
        match client.next().await {
            Some(Ok(Message::Binary(b))) => assert!(b[..] == payload(i, len)[..]),
            other => panic!("expected frame {i}, got {other:?}"),
        }
    }
    out.close(CloseCode::Normal, "bye");
    let close = match client.next().await {
        Some(Ok(Message::Close(frame))) => frame,
        other => panic!("expected the close, got {other:?}"),
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1000));
    // The client answers the close; the server's connection then ends.
    assert!(client.next().await.is_none());
    let seen = tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .unwrap()
        .unwrap();
    assert!(seen.iter().any(|m| matches!(m, Ok(Message::Close(_)))));
}

#[tokio::test]
async fn after_a_short_read_the_next_message_still_wakes_the_reader() {
    let out = Outbound::new(1024);
    let (mut conn, mut client) = direct_pair(&out).await;
    // One message at a time, each sent only after the previous one was
    // read (every read is short and clears the readiness): each must
    // still wake the connection.
    for i in 0..50u8 {
        client
            .send(Message::Binary(vec![i; 20].into()))
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), conn.next()).await;
        match got {
            Ok(Some(Ok(Message::Binary(b)))) => assert_eq!(&b[..], &[i; 20][..]),
            other => panic!("message {i}: {other:?}"),
        }
    }
    // A message and the end of the stream in one go: the message, then
    // the end (the close is the client's; the writer ends with the
    // session, which is not running here).
    client
        .send(Message::Binary(vec![9; 20].into()))
        .await
        .unwrap();
    let mut raw = client.into_inner();
    tokio::io::AsyncWriteExt::shutdown(&mut raw).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), conn.next()).await;
    assert!(matches!(got, Ok(Some(Ok(Message::Binary(_))))), "{got:?}");
    let end = tokio::time::timeout(Duration::from_secs(10), conn.next()).await;
    assert!(
        matches!(end, Ok(Some(Err(_)))),
        "the end of stream: {end:?}"
    );
}

#[tokio::test]
async fn after_a_read_error_the_close_frame_is_still_written() {
    let out = Outbound::new(1024);
    let (mut conn, mut client) = pair(&out).await;
    // An unmasked frame from a client: a protocol error.
    let mut raw = client.into_inner();
    tokio::io::AsyncWriteExt::write_all(&mut raw, &[0x82, 0x01, 0x41])
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(2), conn.next()).await;
    assert!(matches!(first, Ok(Some(Err(_)))), "{first:?}");
    out.close(CloseCode::PolicyViolation, "bad frame");
    let end = tokio::time::timeout(Duration::from_secs(2), conn.next()).await;
    assert!(matches!(end, Ok(None)), "{end:?}");
    client = WebSocketStream::from_raw_socket(raw, Role::Client, None).await;
    match client.next().await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 1008),
        other => panic!("expected the close frame, got {other:?}"),
    }
}

#[test]
fn a_drained_burst_gives_its_capacity_back() {
    let out = Outbound::new(1 << 20);
    let epoch = out.begin_room();
    for _ in 0..200 {
        assert!(out.push_state(epoch, &Bytes::from_static(b"frame")));
    }
    let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
    let mut batch = Vec::new();
    assert!(out
        .poll_batch(&mut cx, &mut batch, &mut 0, &mut 0, &mut false)
        .is_ready());
    assert_eq!(batch.len(), 200, "the whole burst in one batch");
    let kept = out.queue.lock().frames.capacity();
    assert!(kept <= KEEP_FRAMES, "the queue keeps {kept} slots");
    // A tick's frame afterwards needs no more than what was kept.
    assert!(out.push_state(epoch, &Bytes::from_static(b"next")));
    assert!(out.queue.lock().frames.capacity() <= KEEP_FRAMES);
}

#[tokio::test]
async fn an_idle_connection_gives_its_frame_buffers_back() {
    let out = Outbound::new(1024);
    let (mut conn, mut client) = pair(&out).await;
    out.push_reliable(Bytes::from_static(b"pong")).unwrap();
    client
        .send(Message::Binary(Bytes::from_static(b"ping")))
        .await
        .unwrap();
    assert!(conn.next().await.unwrap().is_ok());
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Binary(Bytes::from_static(b"pong"))
    );
    let held = (out.queue.lock().frames.capacity(), conn.batch_capacity());
    assert!(
        held.0 > 0 && held.1 > 0,
        "a frame went through both: {held:?}"
    );
    // Housekeeping right after a frame: the connection is active and keeps
    // its buffers.
    out.trim_idle();
    assert_eq!(
        (out.queue.lock().frames.capacity(), conn.batch_capacity()),
        held
    );
    // A second one with nothing queued in between: both are given back,
    // the batch at the connection's next poll.
    out.trim_idle();
    assert_eq!(out.queue.lock().frames.capacity(), 0);
    let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
    assert!(futures_util::Stream::poll_next(std::pin::Pin::new(&mut conn), &mut cx).is_pending());
    assert_eq!(conn.batch_capacity(), 0);
    // And the connection goes on as before.
    out.push_reliable(Bytes::from_static(b"again")).unwrap();
    let reader = tokio::spawn(async move {
        let next = conn.next().await;
        (conn, next)
    });
    assert_eq!(
        client.next().await.unwrap().unwrap(),
        Message::Binary(Bytes::from_static(b"again"))
    );
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
}

/// A plain TCP connection whose queue knows its socket (as the gateway
/// makes them), so that pushes may be written at once; and the client.
async fn immediate_pair(
    budget: usize,
) -> (
    Arc<Outbound>,
    Connection<WebSocketStream<Conn>, ()>,
    WebSocketStream<TcpStream>,
) {
    let (conn, client) = tcp_pair().await;
    let out = Outbound::for_socket(budget, conn.socket());
    let writer = Writer::new(out.clone(), Duration::from_secs(20)).direct(conn.socket());
    let server = WebSocketStream::from_raw_socket(conn, Role::Server, None).await;
    let client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
    (out, Connection::new(server, writer, ()), client)
}

/// After `out.close`: the client gets the close frame, answers it, and the
/// server's connection task ends.
async fn closed_by_both(
    client: &mut WebSocketStream<TcpStream>,
    server: tokio::task::JoinHandle<()>,
) {
    assert!(matches!(client.next().await, Some(Ok(Message::Close(_)))));
    assert!(client.next().await.is_none());
    tokio::time::timeout(Duration::from_secs(20), server)
        .await
        .unwrap()
        .unwrap();
}

/// Counts the wake-ups of the task it stands for.
struct Wakes(std::sync::atomic::AtomicUsize);

impl futures_util::task::ArcWake for Wakes {
    fn wake_by_ref(this: &Arc<Self>) {
        this.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn a_frame_pushed_to_an_idle_connection_is_written_at_once_without_waking_it() {
    let (out, mut conn, mut client) = immediate_pair(1 << 20).await;
    let wakes = Arc::new(Wakes(Default::default()));
    let waker = futures_util::task::waker(wakes.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    // The connection, polled with nothing to read or write, lends its
    // socket.
    assert!(futures_util::Stream::poll_next(Pin::new(&mut conn), &mut cx).is_pending());
    let epoch = out.begin_room();
    assert!(out.push_state(epoch, &payload(1, 300)));
    out.push_reliable(payload(2, 5_000)).unwrap();
    out.push_ping();
    // Written by the pushes themselves: nothing queued, nobody woken, and
    // the client gets them although the connection is not polled again.
    assert_eq!(out.queued_bytes(), 0);
    assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
    for (i, len) in [(1, 300), (2, 5_000)] {
        match client.next().await {
            Some(Ok(Message::Binary(b))) => assert!(b[..] == payload(i, len)[..], "frame {i}"),
            other => panic!("expected frame {i}, got {other:?}"),
        }
    }
    assert!(matches!(client.next().await, Some(Ok(Message::Ping(p))) if p.is_empty()));

    // A frame over the immediate limit goes through the writer: queued,
    // and the connection woken for it.
    out.push_reliable(payload(3, IMMEDIATE_MAX + 1)).unwrap();
    assert!(out.queued_bytes() > 0);
    assert_eq!(wakes.0.load(Ordering::Relaxed), 1);
    // Until the connection has written it, the socket is its own: a small
    // frame queues behind the big one.
    assert!(out.push_state(epoch, &payload(4, 10)));
    assert!(out.queued_bytes() > IMMEDIATE_MAX);
    let server = tokio::spawn(async move { while conn.next().await.is_some() {} });
    for (i, len) in [(3, IMMEDIATE_MAX + 1), (4, 10)] {
        match client.next().await {
            Some(Ok(Message::Binary(b))) => assert!(b[..] == payload(i, len)[..], "frame {i}"),
            other => panic!("expected frame {i}, got {other:?}"),
        }
    }
    // A client's ping: the pong tungstenite owes goes out before the
    // socket is lent again, and never inside a frame.
    client
        .send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    match client.next().await {
        Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"p"),
        other => panic!("expected the pong, got {other:?}"),
    }
    out.close(CloseCode::Normal, "bye");
    assert!(!out.push_state(epoch, &payload(5, 10)), "closing: refused");
    closed_by_both(&mut client, server).await;
}

#[tokio::test]
async fn immediate_and_queued_frames_stay_whole_and_in_order_through_a_full_socket() {
    let (out, mut conn, mut client) = immediate_pair(256 << 20).await;
    let server = tokio::spawn(async move { while conn.next().await.is_some() {} });
    let epoch = out.begin_room();
    // Sizes on both sides of the stack-buffer copy and of the immediate
    // limit, pushed while the client does not read: the socket fills, so
    // some immediate writes are taken only in part and finished by the
    // writer, and later pushes queue behind them. The pushing task yields
    // after each push, so the connection goes idle and lends its socket
    // whenever it caught up.
    let sizes = [
        0,
        10,
        300,
        1_020,
        1_500,
        9_000,
        IMMEDIATE_MAX - 4,
        IMMEDIATE_MAX + 1,
    ];
    let total = 3_000;
    for i in 0..total {
        let len = sizes[i % sizes.len()];
        if i % 3 == 0 {
            assert!(out.push_state(epoch, &payload(i, len)));
        } else {
            out.push_reliable(payload(i, len)).unwrap();
        }
        tokio::task::yield_now().await;
    }
    // Now the client reads (and pings now and then): every frame, whole,
    // in the order pushed.
    let mut got = 0;
    let mut pongs = 0;
    let mut pings = 0;
    while got < total || pongs < pings {
        if got % 500 == 0 && pings * 500 <= got {
            client
                .send(Message::Ping(Bytes::from_static(b"p")))
                .await
                .unwrap();
            pings += 1;
        }
        match tokio::time::timeout(Duration::from_secs(20), client.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                let len = sizes[got % sizes.len()];
                assert!(b[..] == payload(got, len)[..], "frame {got} of {len} bytes");
                got += 1;
            }
            Ok(Some(Ok(Message::Pong(p)))) => {
                assert_eq!(&p[..], b"p");
                pongs += 1;
            }
            other => panic!("frame {got}: {other:?}"),
        }
    }
    out.close(CloseCode::Normal, "bye");
    closed_by_both(&mut client, server).await;
}

#[tokio::test]
async fn past_the_tick_budget_frames_are_queued_for_their_sessions() {
    let wakes = Arc::new(Wakes(Default::default()));
    let waker = futures_util::task::waker(wakes.clone());
    let mut cx = std::task::Context::from_waker(&waker);
    let mut members = Vec::new();
    for _ in 0..4 {
        let (out, mut conn, client) = immediate_pair(1 << 20).await;
        // Idle: the socket is lent for immediate writes.
        assert!(futures_util::Stream::poll_next(Pin::new(&mut conn), &mut cx).is_pending());
        let epoch = out.begin_room();
        members.push((out, conn, client, epoch));
    }
    {
        // A tick with a budget of two immediate writes.
        let _budget = super::immediate_budget(2);
        for (i, (out, _, _, epoch)) in members.iter().enumerate() {
            assert!(out.push_state(*epoch, &payload(i, 300)));
        }
    }
    // The first two were written by the pushes; the other two are queued
    // and their connections woken, once each.
    let queued: Vec<bool> = members.iter().map(|m| m.0.queued_bytes() > 0).collect();
    assert_eq!(queued, [false, false, true, true]);
    assert_eq!(wakes.0.load(Ordering::Relaxed), 2);
    // The budget closed with the tick: the next push is immediate again.
    let (out, _, _, epoch) = &members[0];
    assert!(out.push_state(*epoch, &payload(9, 10)));
    assert_eq!(out.queued_bytes(), 0);
    // Every client gets its frames, the queued ones once their connection
    // runs.
    for (i, (out, conn, mut client, _)) in members.into_iter().enumerate() {
        let server = tokio::spawn(async move {
            let mut conn = conn;
            while conn.next().await.is_some() {}
        });
        match client.next().await {
            Some(Ok(Message::Binary(b))) => assert!(b[..] == payload(i, 300)[..], "member {i}"),
            other => panic!("expected member {i}'s frame, got {other:?}"),
        }
        if i == 0 {
            match client.next().await {
                Some(Ok(Message::Binary(b))) => assert!(b[..] == payload(9, 10)[..]),
                other => panic!("expected the frame after the tick, got {other:?}"),
            }
        }
        out.close(CloseCode::Normal, "bye");
        closed_by_both(&mut client, server).await;
    }
}
