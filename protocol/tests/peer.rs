//! The peer tunnel's golden vectors, round trips and random input.
//!
//! `tests/golden/peer_*.hex` are whole frames (length prefix included):
//! the tunnel's wire format. Regenerate them only for a new major version
//! of the tunnel, with `TESSERA_BLESS=1 cargo test -p protocol --test peer`.

use bytes::Bytes;
use proptest::prelude::*;
use protocol::assemble::{encode_entity, encode_moved};
use protocol::msg::{Entity, Moved};
use protocol::peer::room::{
    Closed, Inputs, JoinRefused, Member, Reliable, RemoteChat, RemoteJoin, RemoteJoined,
};
use protocol::peer::swim::{Ack, Ping, PingReq};
use protocol::peer::*;
use protocol::Version;

const MAX: u32 = 64 * 1024;

fn hello(id: &str, nonce: u8) -> PeerHello {
    PeerHello {
        cluster: "tessera".into(),
        shard_id: id.into(),
        version: Version { major: 1, minor: 0 },
        nonce: Bytes32([nonce; 32]),
    }
}

fn control_samples() -> Vec<(&'static str, Control)> {
    vec![
        ("peer_hello", Control::Hello(hello("shard-a", 7))),
        (
            "peer_proof",
            Control::Proof(Proof {
                mac: Bytes32(proof_mac(
                    b"0123456789abcdef0123456789abcdef",
                    Role::Dialer,
                    &hello("shard-a", 7),
                    &hello("shard-b", 9),
                    &[1; 32],
                )),
            }),
        ),
        (
            "peer_refuse",
            Control::Refuse(Refuse::new(
                RefuseCode::Version,
                "peer speaks tunnel 2.0, this shard 1.0",
            )),
        ),
        (
            "peer_ping",
            Control::Ping(Heartbeat {
                seq: 3,
                sent_us: 1_500_000,
            }),
        ),
        (
            "peer_pong",
            Control::Pong(Heartbeat {
                seq: 3,
                sent_us: 1_500_000,
            }),
        ),
    ]
}

fn head_samples() -> Vec<(&'static str, StreamHead)> {
    vec![
        (
            "peer_open",
            StreamHead::Open(Open {
                protocol: ROOM_PROTOCOL.into(),
            }),
        ),
        ("peer_accept", StreamHead::Accept(Accept {})),
        (
            "peer_open_refused",
            StreamHead::Refuse(Refuse::new(
                RefuseCode::UnknownProtocol,
                "no listener for /tessera/nope/1",
            )),
        ),
    ]
}

fn edge_samples() -> Vec<(&'static str, EdgeMsg)> {
    vec![
        (
            "peer_room_join",
            EdgeMsg::Join(RemoteJoin {
                session: 17,
                player: "g-1".into(),
                name: "ada".into(),
                room: "lobby#2".into(),
                resume: false,
                at: None,
                implied_moved: false,
            }),
        ),
        (
            "peer_room_join_at",
            EdgeMsg::Join(RemoteJoin {
                session: 17,
                player: "g-1".into(),
                name: "ada".into(),
                room: "lobby".into(),
                resume: true,
                at: Some([12.5, 40.0]),
                implied_moved: false,
            }),
        ),
        (
            "peer_room_join_implied",
            EdgeMsg::Join(RemoteJoin {
                session: 17,
                player: "g-1".into(),
                name: "ada".into(),
                room: "lobby".into(),
                resume: false,
                at: None,
                implied_moved: true,
            }),
        ),
        ("peer_room_leave", EdgeMsg::Leave(Member { session: 17 })),
        (
            "peer_room_disconnected",
            EdgeMsg::Disconnected(Member { session: 17 }),
        ),
        (
            "peer_room_inputs",
            EdgeMsg::Inputs(Inputs {
                batch: vec![
                    Input {
                        session: 17,
                        seq: 4,
                        dx: 1.0,
                        dy: 0.0,
                    },
                    Input {
                        session: 18,
                        seq: 9,
                        dx: -0.5,
                        dy: 0.5,
                    },
                ],
            }),
        ),
        ("peer_room_resync", EdgeMsg::Resync(Member { session: 17 })),
        (
            "peer_room_chat",
            EdgeMsg::Chat(RemoteChat {
                session: 17,
                text: "hi".into(),
            }),
        ),
        (
            "peer_room_who_is",
            EdgeMsg::WhoIs(WhoIs {
                call: 3,
                session: 17,
                entity: 2,
            }),
        ),
        (
            "peer_room_pick_up",
            EdgeMsg::PickUp(RemotePickUp {
                session: 17,
                req: 4,
                item: 12,
            }),
        ),
    ]
}

fn owner_samples() -> Vec<(&'static str, OwnerMsg)> {
    let mut entity = Vec::new();
    encode_entity(
        &Entity {
            id: 1,
            name: "ada".into(),
            x: 10.0,
            y: 20.0,
            seq: 4,
        },
        &mut entity,
    );
    let mut moved = Vec::new();
    encode_moved(
        &Moved {
            id: 2,
            x: 11.0,
            y: 21.0,
            seq: 9,
        },
        &mut moved,
    );
    vec![
        (
            "peer_room_joined",
            OwnerMsg::Joined(RemoteJoined {
                session: 17,
                you: 1,
            }),
        ),
        (
            "peer_room_join_refused",
            OwnerMsg::JoinRefused(JoinRefused {
                session: 17,
                code: 3002,
                message: "room full".into(),
            }),
        ),
        (
            "peer_room_tick",
            OwnerMsg::Tick(Tick {
                room: "lobby".into(),
                tick: 120,
                entries: vec![Bytes::from(entity.clone()), Bytes::from(moved.clone())],
                views: vec![
                    View {
                        sessions: vec![17, 18],
                        moved: vec![1],
                        ..View::default()
                    },
                    View {
                        sessions: vec![19],
                        entered: vec![0],
                        moved: vec![1],
                        left: vec![5],
                        full: false,
                    },
                ],
                implied: false,
            }),
        ),
        (
            "peer_room_tick_implied",
            OwnerMsg::Tick(Tick {
                room: "lobby".into(),
                tick: 120,
                entries: vec![Bytes::from(entity), Bytes::from(moved)],
                views: vec![
                    View {
                        sessions: vec![17, 18],
                        ..View::default()
                    },
                    View {
                        sessions: vec![19],
                        entered: vec![0],
                        left: vec![5],
                        ..View::default()
                    },
                ],
                implied: true,
            }),
        ),
        (
            "peer_room_reliable",
            OwnerMsg::Reliable(Reliable {
                session: 17,
                frame: Bytes::from_static(&[
                    0x81, 0xa4, b'p', b'o', b'n', b'g', 0x81, 0xa1, b't', 1,
                ]),
            }),
        ),
        (
            "peer_room_closed",
            OwnerMsg::Closed(Closed {
                code: 3005,
                reason: "room failed".into(),
            }),
        ),
        (
            "peer_room_fanout",
            OwnerMsg::Fanout(Fanout {
                sessions: vec![17, 18],
                frame: Bytes::from_static(&[0x81, 0xa4, 0x70, 0x6f, 0x6e, 0x67, 0x80]),
            }),
        ),
        (
            "peer_room_target_is",
            OwnerMsg::TargetIs(TargetIs {
                call: 3,
                player: Some("p-2".into()),
                shard: Some("c".into()),
                unavailable: false,
            }),
        ),
        (
            "peer_room_target_is_none",
            OwnerMsg::TargetIs(TargetIs {
                call: 3,
                player: None,
                shard: None,
                unavailable: false,
            }),
        ),
        (
            "peer_room_target_is_unavailable",
            OwnerMsg::TargetIs(TargetIs {
                call: 3,
                player: None,
                shard: None,
                unavailable: true,
            }),
        ),
        (
            "peer_room_moving",
            OwnerMsg::Moving(RoomMoving { to: "b".into() }),
        ),
    ]
}

fn migrate_samples() -> Vec<(&'static str, MigrateMsg)> {
    use protocol::peer::migrate::*;
    let item = MovingItem {
        id: 7,
        kind: "coin".into(),
        count: 3,
        x: 4.0,
        y: 5.0,
    };
    vec![
        (
            "peer_migrate_offer",
            MigrateMsg::Offer(Offer {
                room: "lobby".into(),
                from: "a".into(),
                epoch: 4,
                state: RoomState {
                    tick: 120,
                    next_tick_us: 0,
                    next_entity: 3,
                    members: vec![
                        MovingMember {
                            entity: 1,
                            player: "p1".into(),
                            name: "ada".into(),
                            x: 10.0,
                            y: 20.0,
                            dir: [1.0, 0.0],
                            seq: 9,
                            held: false,
                            pending: vec![(10, 0.0, 1.0)],
                        },
                        MovingMember {
                            entity: 2,
                            player: "p2".into(),
                            name: "bob".into(),
                            x: 1.0,
                            y: 2.0,
                            dir: [0.0, 0.0],
                            seq: 0,
                            held: true,
                            pending: vec![],
                        },
                    ],
                    ground: MovingGround {
                        loaded: true,
                        rev: 5,
                        next_item: 9,
                        epoch: "e1".into(),
                        owner_epoch: 4,
                        items: vec![item.clone()],
                        pending: vec![MovingPickup {
                            op_id: "pickup:lobby:e1:8".into(),
                            player: "p1".into(),
                            item: MovingItem { id: 8, ..item },
                        }],
                    },
                },
            }),
        ),
        (
            "peer_migrate_accepted",
            MigrateMsg::Accepted(Accepted {
                room: "lobby".into(),
                epoch: 5,
            }),
        ),
        (
            "peer_migrate_refused",
            MigrateMsg::Refused(Refused {
                room: "lobby".into(),
                code: MigrateRefusal::Draining,
                reason: "shard b is draining".into(),
            }),
        ),
    ]
}

fn admin_samples() -> Vec<(&'static str, AdminMsg)> {
    vec![
        (
            "peer_admin_replace",
            AdminMsg::Replace(Replace {
                player: "p-1".into(),
                session: "s-1".into(),
                seat_taken: true,
            }),
        ),
        (
            "peer_admin_kick",
            AdminMsg::Kick(Kick {
                player: "p-1".into(),
                text: "kicked".into(),
            }),
        ),
        (
            "peer_admin_ban",
            AdminMsg::Ban(BanPlayer {
                player: "p-1".into(),
                reason: "spam".into(),
                by: "ops".into(),
                at_ms: 1_000,
                until_ms: Some(61_000),
            }),
        ),
        (
            "peer_admin_unban",
            AdminMsg::Unban(Unban {
                player: "p-1".into(),
            }),
        ),
        (
            "peer_admin_inventory",
            AdminMsg::Inventory(InventoryPush {
                player: "p-1".into(),
                inventory: protocol::msg::Inventory {
                    currency: 25,
                    items: [("gem".to_string(), 1)].into(),
                },
            }),
        ),
        (
            "peer_admin_migrate",
            AdminMsg::Migrate(MigrateRoom {
                room: "lobby".into(),
                to: Some("c".into()),
            }),
        ),
        (
            "peer_admin_migrate_answer",
            AdminMsg::MigrateAnswer(MigrateAnswer {
                status: 200,
                message: String::new(),
                moved: Some(RoomMoved {
                    room: "lobby".into(),
                    from: "a".into(),
                    to: "c".into(),
                    epoch: 7,
                    pause_us: 1_500,
                }),
            }),
        ),
        (
            "peer_admin_migrate_refused",
            AdminMsg::MigrateAnswer(MigrateAnswer {
                status: 409,
                message: "lobby is being migrated already".into(),
                moved: None,
            }),
        ),
    ]
}

fn chat_samples() -> Vec<(&'static str, ChatMsg)> {
    vec![
        (
            "peer_chat_announce",
            ChatMsg::Announce(protocol::peer::chat::Announce { text: "hi".into() }),
        ),
        (
            "peer_chat_map_broadcast",
            ChatMsg::MapBroadcast(MapBroadcast {
                map: "lobby".into(),
                text: "hi".into(),
            }),
        ),
    ]
}

fn swim_samples() -> Vec<(&'static str, SwimMsg)> {
    let gossip = vec![
        Update {
            shard: "shard-c".into(),
            state: MemberState::Suspect,
            inc: 1_700_000_000_000,
        },
        Update {
            shard: "shard-b".into(),
            state: MemberState::Alive,
            inc: 1_700_000_000_001,
        },
    ];
    vec![
        (
            "peer_swim_ping",
            SwimMsg::Ping(Ping {
                seq: 41,
                inc: 1_700_000_000_000,
                gossip: gossip.clone(),
                dir: false,
            }),
        ),
        (
            "peer_swim_ping_req",
            SwimMsg::PingReq(PingReq {
                seq: 42,
                inc: 1_700_000_000_000,
                target: "shard-c".into(),
                gossip: Vec::new(),
                dir: false,
            }),
        ),
        (
            "peer_swim_ack",
            SwimMsg::Ack(Ack {
                seq: 42,
                inc: 1_700_000_000_002,
                gossip: vec![Update {
                    shard: "shard-d".into(),
                    state: MemberState::Dead,
                    inc: 7,
                }],
                dir: false,
            }),
        ),
        (
            "peer_swim_ack_dir",
            SwimMsg::Ack(Ack {
                seq: 43,
                inc: 1_700_000_000_002,
                gossip: Vec::new(),
                dir: true,
            }),
        ),
    ]
}

fn golden_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.hex"))
}

/// Compare a frame with its golden vector (or write it when blessing) and
/// give back the golden bytes.
fn check_golden(name: &str, frame: &[u8]) -> Vec<u8> {
    let hex = hex::encode(frame);
    let path = golden_path(name);
    if std::env::var_os("TESSERA_BLESS").is_some() {
        std::fs::write(&path, format!("{hex}\n")).unwrap();
    }
    let golden =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        hex,
        golden.trim(),
        "{name}: encoding differs from the golden vector"
    );
    hex::decode(golden.trim()).unwrap()
}

fn check_all<T: PeerMessage + PartialEq + std::fmt::Debug>(samples: Vec<(&'static str, T)>) {
    for (name, msg) in samples {
        let golden = check_golden(name, &encode_frame(&msg, MAX).unwrap());
        let (back, used) = decode_frame::<T>(&golden, MAX).unwrap().unwrap();
        assert_eq!(used, golden.len(), "{name}: one frame, all of it");
        assert_eq!(back, msg, "{name}: decodes back to what was encoded");
    }
}

#[test]
fn control_frames_match_golden_vectors_and_round_trip() {
    check_all(control_samples());
}

#[test]
fn stream_heads_match_golden_vectors_and_round_trip() {
    check_all(head_samples());
}

#[test]
fn room_frames_match_golden_vectors_and_round_trip() {
    check_all(edge_samples());
    check_all(owner_samples());
}

#[test]
fn migrate_frames_match_golden_vectors_and_round_trip() {
    check_all(migrate_samples());
}

#[test]
fn admin_and_chat_frames_match_golden_vectors_and_round_trip() {
    check_all(admin_samples());
    check_all(chat_samples());
}

#[test]
fn a_replace_without_the_seat_leaves_the_flag_out_and_a_ban_for_good_its_end() {
    let replace = AdminMsg::Replace(Replace {
        player: "p".into(),
        session: "s".into(),
        seat_taken: false,
    });
    let frame = encode_frame(&replace, MAX).unwrap();
    assert!(!frame.windows(10).any(|w| w == b"seat_taken"));
    assert_eq!(
        decode_frame::<AdminMsg>(&frame, MAX).unwrap().unwrap().0,
        replace
    );
    let ban = AdminMsg::Ban(BanPlayer {
        player: "p".into(),
        reason: "r".into(),
        by: "o".into(),
        at_ms: 1,
        until_ms: None,
    });
    let frame = encode_frame(&ban, MAX).unwrap();
    assert!(!frame.windows(8).any(|w| w == b"until_ms"));
    assert_eq!(
        decode_frame::<AdminMsg>(&frame, MAX).unwrap().unwrap().0,
        ban
    );
}

#[test]
fn swim_frames_match_golden_vectors_and_round_trip() {
    check_all(swim_samples());
}

#[test]
fn peer_md_shows_every_golden_vector() {
    let doc =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("PEER.md"))
            .unwrap();
    let squashed: String = doc.split_whitespace().collect();
    let names = control_samples()
        .into_iter()
        .map(|(n, _)| n)
        .chain(head_samples().into_iter().map(|(n, _)| n))
        .chain(edge_samples().into_iter().map(|(n, _)| n))
        .chain(owner_samples().into_iter().map(|(n, _)| n))
        .chain(admin_samples().into_iter().map(|(n, _)| n))
        .chain(chat_samples().into_iter().map(|(n, _)| n))
        .chain(swim_samples().into_iter().map(|(n, _)| n))
        .chain(migrate_samples().into_iter().map(|(n, _)| n));
    for name in names {
        let hex = std::fs::read_to_string(golden_path(name)).unwrap();
        assert!(
            squashed.contains(hex.trim()),
            "PEER.md lacks the hex example of {name}"
        );
    }
}

#[test]
fn an_oversized_frame_is_refused_by_its_length_alone() {
    // A header announcing 4 GiB, and no body: refused without waiting for
    // (or allocating) the body.
    let header = u32::MAX.to_be_bytes();
    assert_eq!(
        decode_frame::<Control>(&header, MAX),
        Err(FrameError::TooLarge {
            len: u64::from(u32::MAX),
            max: MAX
        })
    );
    // A sender refuses to write what the receiver would refuse.
    let big = OwnerMsg::Reliable(Reliable {
        session: 1,
        frame: Bytes::from(vec![0u8; 2000]),
    });
    assert!(matches!(
        encode_frame(&big, 1000),
        Err(FrameError::TooLarge { .. })
    ));
}

#[test]
fn a_message_of_the_wrong_stream_is_an_error() {
    let frame = encode_frame(&StreamHead::Accept(Accept {}), MAX).unwrap();
    assert!(decode_frame::<Control>(&frame, MAX).is_err());
    let frame = encode_frame(&EdgeMsg::Leave(Member { session: 1 }), MAX).unwrap();
    assert!(decode_frame::<OwnerMsg>(&frame, MAX).is_err());
}

#[test]
fn a_nonce_of_the_wrong_length_is_an_error() {
    // A hello whose nonce is 31 bytes.
    let mut frame = encode_frame(&Control::Hello(hello("a", 1)), MAX).unwrap();
    let at = frame
        .windows(2)
        .position(|w| w == [0xc4, 32])
        .expect("the nonce is a bin 8 of 32");
    frame[at + 1] = 31;
    frame.remove(at + 2);
    let len = (frame.len() - LEN_PREFIX) as u32;
    frame[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    assert!(decode_frame::<Control>(&frame, MAX).is_err());
}

#[test]
fn a_newer_minor_field_is_ignored() {
    // {"ping": {"seq": 1, "sent_us": 2, "later": true}}
    let mut payload = vec![0x81, 0xa4];
    payload.extend_from_slice(b"ping");
    payload.push(0x83);
    payload.extend_from_slice(&[0xa3, b's', b'e', b'q', 1]);
    payload.extend_from_slice(&[0xa7]);
    payload.extend_from_slice(b"sent_us");
    payload.push(2);
    payload.push(0xa5);
    payload.extend_from_slice(b"later");
    payload.push(0xc3);
    let msg: Control = decode_payload(&payload, MAX).unwrap();
    assert_eq!(msg, Control::Ping(Heartbeat { seq: 1, sent_us: 2 }));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn random_bytes_never_panic_any_peer_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = decode_frame::<Control>(&bytes, 4096);
        let _ = decode_frame::<StreamHead>(&bytes, 4096);
        let _ = decode_frame::<EdgeMsg>(&bytes, 4096);
        let _ = decode_frame::<OwnerMsg>(&bytes, 4096);
        let _ = decode_payload::<OwnerMsg>(&bytes, 4096);
        let _ = decode_payload::<Control>(&bytes, 4096);
        let _ = decode_frame::<SwimMsg>(&bytes, 4096);
    }

    #[test]
    fn mutated_ticks_never_panic_and_bad_indices_are_errors(
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let (_, tick) = owner_samples().remove(2);
        let mut frame = encode_frame(&tick, MAX).unwrap();
        for (at, value) in flips {
            let i = LEN_PREFIX + at % (frame.len() - LEN_PREFIX);
            frame[i] = value;
        }
        if let Ok(Some((OwnerMsg::Tick(tick), _))) = decode_frame::<OwnerMsg>(&frame, MAX) {
            for view in &tick.views {
                let _ = tick.write_update(view, &mut Vec::new());
            }
        }
    }
}
