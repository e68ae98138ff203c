//! Unit tests of the model: round trips, migrations, op rules.

use super::migrations::decode;
use super::*;
use mongodb::bson::doc;

#[test]
fn profiles_round_trip_through_bson() {
    let mut p = PlayerProfile::new("p1", "ada");
    p.state.map = "lobby".into();
    p.state.x = 12.5;
    p.inventory.currency = 7;
    p.inventory.items.insert("sword".into(), 2);
    p.progress.insert("quest-1".into(), 3);
    let (back, migrated) = decode_player(to_document(&p)).unwrap();
    assert_eq!(back, p);
    assert!(!migrated);
}

#[test]
fn version_1_players_migrate() {
    let v1 = doc! {
        "_id": "old", "name": "bob", "gold": 42_i32,
        "items": ["potion", "potion", "sword"],
        "map": "arena", "pos": { "x": 3.0, "y": 4_i32 },
    };
    let (p, migrated) = decode_player(v1).unwrap();
    assert!(migrated);
    assert_eq!(p.v, PLAYER_SCHEMA);
    assert_eq!(p.inventory.currency, 42);
    assert_eq!(p.inventory.items["potion"], 2);
    assert_eq!(p.inventory.items["sword"], 1);
    assert_eq!(p.state.map, "arena");
    assert_eq!((p.state.x, p.state.y), (3.0, 4.0));
}

#[test]
fn version_1_rooms_migrate() {
    let v1 = doc! {
        "_id": "arena", "v": 1,
        "items": [
            { "id": "7", "kind": "gem", "count": 1_i64, "x": 1.0, "y": 2.0 },
            { "id": "old-sword", "kind": "sword", "count": 1_i64, "x": 3.0, "y": 4.0 },
        ],
    };
    let (room, migrated) = decode_room(v1).unwrap();
    assert!(migrated);
    assert_eq!(room.v, ROOM_SCHEMA);
    assert_eq!(room.rev, 0);
    let ids: Vec<u64> = room.items.iter().map(|i| i.id).collect();
    assert_eq!(ids, vec![7, 8]);
    assert_eq!(room.next_item, 9);
    assert!(room.pending.is_empty());
    let (back, migrated) = decode_room(to_document(&room)).unwrap();
    assert_eq!(back, room);
    assert!(!migrated);
}

#[test]
fn bad_and_future_documents_name_their_id() {
    let err = decode_player(doc! { "_id": "x", "v": 99 }).unwrap_err();
    assert_eq!(err.id, "x");
    assert!(err.reason.contains("newer"), "{err}");
    let err = decode_player(doc! { "_id": "y", "v": 2, "name": 5 }).unwrap_err();
    assert_eq!(err.id, "y");
    let err = decode_player(doc! { "_id": "z", "gold": "lots" }).unwrap_err();
    assert!(err.reason.contains("gold"), "{err}");
}

#[test]
fn adjust_refuses_to_go_negative() {
    let mut p = PlayerProfile::new("p", "");
    let op = |id: &str, c: i64| Adjust {
        op_id: id.into(),
        player: "p".into(),
        currency: c,
        ..Adjust::default()
    };
    assert_eq!(apply_adjust(&mut p, &op("a", 10)), Ok(()));
    assert!(apply_adjust(&mut p, &op("b", -11)).is_err());
    assert_eq!(p.inventory.currency, 10);
    let record = OpRecord::new(&op("a", 10), OpState::Done, 0);
    assert!(record.matches(&op("a", 10)));
    assert!(!record.matches(&op("a", 11)));
    let (back, _) = decode(OPS, to_document(&record), OP_SCHEMA, migrate_op).unwrap();
    assert_eq!(record, back);
}

#[test]
fn keys_are_checked() {
    assert!(valid_key("sword_2-x"));
    assert!(!valid_key("a.b"));
    assert!(!valid_key("$set"));
    assert!(!valid_key(""));
    let t = Trade {
        id: "t".into(),
        a: "p".into(),
        b: "p".into(),
        a_gives: Bundle::default(),
        b_gives: Bundle::default(),
    };
    assert!(t.validate().is_err());
}
