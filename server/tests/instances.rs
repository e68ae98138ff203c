//! A map run as several instances (`instances = "auto"`): a full instance
//! spills joins into a second one, both tick, and the empty extra instance
//! stops after the map's `idle_stop_ms`.

mod common;

use std::time::Duration;

use common::{http_get, start, test_config, Client};
use protocol::msg::*;
use protocol::{ClientMsg, ErrorCode, ServerMsg};
use server::config::{Instances, MapConfig};

/// `test_config` plus `crowd`: two players per instance, instances as
/// needed, an empty room stops after 300 ms.
fn config() -> server::Config {
    let mut config = test_config();
    config.maps.push(MapConfig {
        name: "crowd".into(),
        spawn_radius: 0.0,
        speed: 1_000.0,
        view_radius: Some(100.0),
        max_players: Some(2),
        instances: Instances::Auto,
        idle_stop_ms: Some(300),
        ..MapConfig::default()
    });
    config
}

async fn rooms_running(shard: &common::TestShard) -> u64 {
    let body = http_get(&format!("http://{}/healthz", shard.http_addr)).await;
    let doc: serde_json::Value = serde_json::from_str(&body).expect("healthz is JSON");
    doc["rooms"].as_u64().expect("healthz counts rooms")
}

/// Wait until `client` sees entity `id` move with input `seq` applied.
async fn sees_move(client: &mut Client, id: EntityId, seq: u32) {
    client
        .expect("a move in view", |m| match m {
            ServerMsg::Update(u) => u.moved.iter().find(|m| m.id == id && m.seq == seq).copied(),
            _ => None,
        })
        .await;
}

#[tokio::test]
async fn a_full_instance_spills_into_a_second_both_tick_and_the_empty_one_stops() {
    let shard = start(config());
    let (mut ann, a) = Client::joined(shard.ws_addr, "ann", "crowd").await;
    let (mut ben, b) = Client::joined(shard.ws_addr, "ben", "crowd").await;
    assert_eq!((a.instance, b.instance), (1, 1));
    assert_eq!(a.map.name, "crowd");
    // The first instance is full: the next two players get a second one.
    let (mut cal, c) = Client::joined(shard.ws_addr, "cal", "crowd").await;
    let (mut dee, d) = Client::joined(shard.ws_addr, "dee", "crowd").await;
    assert_eq!((c.instance, d.instance), (2, 2));
    assert_eq!(c.map.name, "crowd", "an instance runs the same map");
    assert_eq!(rooms_running(&shard).await, 2);

    // Both instances tick: each player's move reaches its instance mate.
    ann.walk(1, 1.0, 0.0).await;
    sees_move(&mut ben, a.you, 1).await;
    cal.walk(1, 0.0, 1.0).await;
    sees_move(&mut dee, c.you, 1).await;
    // Instances are apart: cal spawned on the spot where ann and ben
    // stand, and saw only itself.
    let seen: Vec<EntityId> = c.entities.iter().map(|e| e.id).collect();
    assert_eq!(seen, vec![c.you]);
    ann.chat("hello first").await;
    let heard = ben
        .expect("chat", |m| match m {
            ServerMsg::Chat(c) => Some(c.text.clone()),
            _ => None,
        })
        .await;
    assert_eq!(heard, "hello first");
    assert!(!cal
        .drain(Duration::from_millis(200))
        .await
        .iter()
        .any(|m| matches!(m, ServerMsg::Chat(_))));

    // The second instance empties and stops; the first keeps running.
    cal.send(ClientMsg::Leave(Leave {})).await;
    dee.send(ClientMsg::Leave(Leave {})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rooms_running(&shard).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the empty instance never stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ann.walk(2, -1.0, 0.0).await;
    sees_move(&mut ben, a.you, 2).await;

    // A later join of the full map starts the second instance again.
    let (_eve, e) = Client::joined(shard.ws_addr, "eve", "crowd").await;
    assert_eq!(e.instance, 2);
}

#[tokio::test]
async fn a_join_goes_to_a_running_instance_with_room_before_starting_another() {
    let shard = start(config());
    let (mut ann, _) = Client::joined(shard.ws_addr, "ann", "crowd").await;
    let (mut ben, _) = Client::joined(shard.ws_addr, "ben", "crowd").await;
    let (_cal, c) = Client::joined(shard.ws_addr, "cal", "crowd").await;
    assert_eq!(c.instance, 2);
    // The first instance empties and stops; the second runs with cal.
    ann.send(ClientMsg::Leave(Leave {})).await;
    ben.send(ClientMsg::Leave(Leave {})).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rooms_running(&shard).await != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the empty instance never stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Dee joins cal rather than starting the first instance again.
    let (_dee, d) = Client::joined(shard.ws_addr, "dee", "crowd").await;
    assert_eq!(d.instance, 2);
    let seen: Vec<EntityId> = d.entities.iter().map(|e| e.id).collect();
    assert!(seen.contains(&c.you), "{seen:?}");
    assert_eq!(rooms_running(&shard).await, 1);
}

#[tokio::test]
async fn a_map_with_one_instance_still_refuses_a_join_past_max_players() {
    let mut config = config();
    config.maps[2].instances = Instances::One;
    let shard = start(config);
    let (_ann, a) = Client::joined(shard.ws_addr, "ann", "crowd").await;
    let (_ben, b) = Client::joined(shard.ws_addr, "ben", "crowd").await;
    assert_eq!((a.instance, b.instance), (1, 1));
    let (mut cal, _) = Client::welcomed(shard.ws_addr, "cal").await;
    cal.send(ClientMsg::Join(Join {
        map: "crowd".into(),
    }))
    .await;
    cal.expect_error(ErrorCode::RoomFull).await;
}

#[test]
fn maps_choose_their_instances_and_idle_stop_in_the_config_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tessera.toml");
    let write = |text: &str| std::fs::write(&path, text).expect("config written");
    write(
        "[rooms]\nidle_stop_ms = 9000\n\n[supervision]\nfallback_map = \"hall\"\n\n\
         [[maps]]\nname = \"crowd\"\ninstances = \"auto\"\nidle_stop_ms = 500\n\n\
         [[maps]]\nname = \"hall\"\n",
    );
    let config = server::Config::load(Some(&path), Vec::new()).expect("a valid config");
    config.validate().expect("valid");
    let defs = config.map_defs();
    assert_eq!(
        (defs[0].instances, defs[0].idle_stop_ms),
        (Instances::Auto, 500)
    );
    assert_eq!(
        (defs[1].instances, defs[1].idle_stop_ms),
        (Instances::One, 9000)
    );
    write("[[maps]]\nname = \"crowd\"\ninstances = \"many\"\n");
    assert!(server::Config::load(Some(&path), Vec::new()).is_err());
    write("[supervision]\nfallback_map = \"\"\n\n[[maps]]\nname = \"crowd\"\nidle_stop_ms = 0\n");
    let zero = server::Config::load(Some(&path), Vec::new()).expect("it parses");
    let error = zero.validate().expect_err("idle_stop_ms = 0 is refused");
    assert!(format!("{error:?}").contains("idle_stop_ms"), "{error:?}");
}
