//! `tessera_update_frames_total` counts only frames queued to an open
//! client. A test binary of its own: the metrics recorder is per process,
//! and no other test may add to the counter while this one reads it.

mod common;

use std::time::Duration;

use common::*;
use protocol::msg::Join;
use protocol::{ClientMsg, ServerMsg};
use tokio::net::TcpSocket;
use tokio_tungstenite::MaybeTlsStream;

const ADMIN: &str = "update-frames-admin-token";

async fn metric(shard: &TestShard, line_prefix: &str) -> Option<f64> {
    let text = common::metrics(shard).await;
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Updates `client` receives until none came for a while.
async fn updates_until_quiet(client: &mut Client) -> usize {
    let mut updates = 0;
    loop {
        let got = client.drain(Duration::from_millis(600)).await;
        let n = got
            .iter()
            .filter(|m| matches!(m, ServerMsg::Update(_)))
            .count();
        if n == 0 {
            return updates;
        }
        updates += n;
    }
}

#[tokio::test]
async fn frames_refused_by_a_closed_client_are_not_counted() {
    let mut config = test_config();
    config.admin.token = ADMIN.into();
    config.server.write_timeout_ms = 200;
    let shard = start(config);
    let (mut bob, _) = Client::joined(shard.ws_addr, "bob", "test").await;

    // Alice joins through a socket with a tiny receive buffer, then stops
    // reading: her writer's next write times out and closes her outbound
    // queue, while her room still counts her as connected.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let tcp = socket.connect(shard.ws_addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        format!("ws://{}/", shard.ws_addr),
        MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    let mut alice = Client { ws };
    alice.hello("alice").await;
    alice
        .send(ClientMsg::Join(Join { map: "test".into() }))
        .await;
    alice.expect("joined", msg!(ServerMsg::Joined)).await;

    let url = format!("http://{}/admin/announce", shard.http_addr);
    let text = "x".repeat(780);
    let body = format!(r#"{{"text":"{text}"}}"#);
    // The kernel's send buffer for alice can autotune up to tcp_wmem's
    // maximum (4 MiB by default) before her writer blocks, and her queue
    // then holds `outbound_budget_bytes` more: announce up to 9.4 MB, well
    // past both (3.1 MB once fell short), and stop as soon as she is closed.
    let mut closed = false;
    for round in 0..600 {
        for _ in 0..20 {
            let (status, reply) = http_post(&url, Some(ADMIN), &body).await;
            assert_eq!(status, 200, "{reply}");
        }
        let write_failed = metric(&shard, "tessera_sessions_closed_total{code=\"1011\"}").await;
        let overflowed = metric(&shard, "tessera_sessions_closed_total{code=\"4005\"}").await;
        if write_failed.is_some() || overflowed.is_some() {
            closed = true;
            break;
        }
        // Bob keeps up.
        if round % 5 == 0 {
            bob.drain(Duration::from_millis(50)).await;
        }
    }
    assert!(closed, "alice's outbound queue never closed");
    updates_until_quiet(&mut bob).await;

    let before = metric(&shard, "tessera_update_frames_total")
        .await
        .unwrap_or(0.0);
    // Bob walks a few ticks (staying in alice's view), then stops.
    bob.walk(1, 0.1, 0.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.walk(2, 0.0, 0.0).await;
    let received = updates_until_quiet(&mut bob).await;
    let after = metric(&shard, "tessera_update_frames_total")
        .await
        .unwrap_or(0.0);
    assert!(received > 0, "bob saw himself move");
    assert_eq!(
        (after - before) as usize,
        received,
        "only the frames queued to bob count, none of those alice's closed queue refused"
    );
    drop(alice);
}
