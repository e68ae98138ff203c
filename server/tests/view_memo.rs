//! Where everyone sees everyone, a room tick diffs about one view, not one
//! per member: a member whose views before and after are the last
//! member's gets that member's frame (`tessera_view_diffs_total` against
//! `tessera_update_frames_total`). Nothing else fails if that memo never
//! hits: the frames are the same either way, only slower to make. A test
//! binary of its own: the metrics recorder is per process.

mod common;

use std::time::Duration;

use common::*;
use protocol::ServerMsg;
use server::config::MapConfig;

async fn counter(shard: &TestShard, name: &str) -> f64 {
    let text = common::metrics(shard).await;
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Drain every client until none got anything for a while; the updates
/// they got.
async fn quiet(clients: &mut [Client]) -> usize {
    let mut updates = 0;
    loop {
        let mut got = 0;
        for c in clients.iter_mut() {
            got += c
                .drain(Duration::from_millis(150))
                .await
                .iter()
                .filter(|m| matches!(m, ServerMsg::Update(_)))
                .count();
        }
        if got == 0 {
            return updates;
        }
        updates += got;
    }
}

#[tokio::test]
async fn a_room_in_one_view_diffs_one_view_a_tick() {
    const PLAYERS: usize = 8;
    let mut config = test_config();
    // 200 x 200 with a view of 1000: every member sees every other.
    config.maps.push(MapConfig {
        name: "arena".into(),
        width: 200.0,
        height: 200.0,
        spawn: [100.0, 100.0],
        spawn_radius: 50.0,
        speed: 100.0,
        view_radius: Some(1_000.0),
        ..MapConfig::default()
    });
    let shard = start(config);
    let mut clients = Vec::new();
    for i in 0..PLAYERS {
        let (client, _) = Client::joined(shard.ws_addr, &format!("p{i}"), "arena").await;
        clients.push(client);
    }
    quiet(&mut clients).await;

    let diffs = counter(&shard, "tessera_view_diffs_total").await;
    let frames = counter(&shard, "tessera_update_frames_total").await;
    // Each player in turn walks for a tick or two and stops: every member
    // sees it.
    for client in clients.iter_mut() {
        client.walk(1, 0.3, 0.1).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
        client.walk(2, 0.0, 0.0).await;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    let received = quiet(&mut clients).await;
    let diffs = counter(&shard, "tessera_view_diffs_total").await - diffs;
    let frames = counter(&shard, "tessera_update_frames_total").await - frames;

    assert!(
        received >= PLAYERS * PLAYERS,
        "every member saw every step: {received} updates"
    );
    assert_eq!(frames as usize, received, "every update frame was counted");
    assert!(diffs >= 1.0, "the ticks diffed the first member's view");
    // One diff a tick with a move in it, against one frame per member:
    // a memo that never hit would diff every frame.
    assert!(
        diffs * 4.0 <= frames,
        "{diffs} views diffed for {frames} frames: members with the same views were diffed again"
    );
}
