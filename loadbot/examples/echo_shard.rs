//! A trivially cheap stand-in for a shard, to calibrate the loadbot itself:
//! it answers `hello`, `join` and `ping` like a shard, and every `move` with
//! an `update` carrying only the mover's own entity, at once (no ticks, no
//! rooms, no fan-out). Whatever latency the loadbot reports against it is
//! the loadbot's (and the kernel's) own.
//!
//! ```sh
//! cargo run --release -p loadbot --example echo_shard -- 127.0.0.1:7399
//! target/release/loadbot --url ws://127.0.0.1:7399 --bots 2000 --rooms 20
//! ```
//!
//! Loopback only, for measurement; it stops after an hour at most.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::msg::{Entity, Joined, Left, MapInfo, Moved, Pong, Update, Welcome};
use protocol::{ClientMsg, Limits, ServerMsg, PROTOCOL_VERSION};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

static NEXT_ID: AtomicU32 = AtomicU32::new(1);

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7399".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("ws listening on {}", listener.local_addr()?);
    let serve = async {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = session(tcp).await;
            });
        }
    };
    // Bounded in time like every loop here.
    let _ = tokio::time::timeout(Duration::from_secs(3600), serve).await;
    Ok(())
}

async fn session(tcp: TcpStream) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async(tcp).await?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut tick = 0u64;
    let (mut x, mut y) = (500.0f32, 500.0f32);
    while let Some(frame) = ws.next().await {
        let Message::Binary(data) = frame? else {
            continue;
        };
        let Ok(msg) = protocol::decode_client(&data, 4096) else {
            continue;
        };
        tick += 1;
        let reply = match msg {
            ClientMsg::Hello(_) => ServerMsg::Welcome(Welcome {
                version: PROTOCOL_VERSION,
                player_id: format!("g-{id}"),
                name: format!("echo-{id}"),
                session_id: format!("s-{id}"),
                resume_token: format!("r-{id}"),
                tick_hz: 20,
                limits: Limits {
                    max_frame_bytes: 4096,
                    move_per_sec: 1000,
                    move_burst: 1000,
                    chat_per_sec: 100,
                    chat_burst: 100,
                    control_per_sec: 100,
                    control_burst: 100,
                    chat_max_chars: 200,
                    idle_timeout_ms: 30_000,
                },
                maps: (1..=100).map(|i| format!("m{i:03}")).collect(),
                last_map: None,
            }),
            ClientMsg::Join(join) => ServerMsg::Joined(Joined {
                map: MapInfo {
                    name: join.map,
                    width: 1000.0,
                    height: 1000.0,
                    tick_hz: 20,
                    view_radius: 400.0,
                    speed: 200.0,
                },
                you: id,
                tick,
                entities: vec![Entity {
                    id,
                    name: format!("echo-{id}"),
                    x,
                    y,
                    seq: 0,
                }],
                items: vec![],
                instance: protocol::msg::FIRST_INSTANCE,
            }),
            ClientMsg::Leave(_) => ServerMsg::Left(Left { map: "m001".into() }),
            ClientMsg::Move(m) => {
                x = (x + m.dx).clamp(0.0, 1000.0);
                y = (y + m.dy).clamp(0.0, 1000.0);
                ServerMsg::Update(Update {
                    tick,
                    moved: vec![Moved {
                        id,
                        x,
                        y,
                        seq: m.seq,
                    }],
                    ..Update::default()
                })
            }
            ClientMsg::Chat(c) => ServerMsg::Chat(protocol::msg::Chat {
                from: id,
                name: format!("echo-{id}"),
                text: c.text,
            }),
            ClientMsg::Ping(p) => ServerMsg::Pong(Pong {
                t: p.t,
                server_ms: 0,
            }),
            ClientMsg::Give(g) => ServerMsg::Done(protocol::msg::Done {
                req: g.req,
                inventory: Default::default(),
            }),
            ClientMsg::PickUp(p) => ServerMsg::Done(protocol::msg::Done {
                req: p.req,
                inventory: Default::default(),
            }),
        };
        ws.send(Message::binary(protocol::encode_server(&reply)))
            .await?;
    }
    Ok(())
}
