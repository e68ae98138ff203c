//! Golden byte vectors, round trips and every decode error path.
//!
//! The golden files under `tests/golden/` are the wire format: a change that
//! alters any of them breaks deployed clients. Regenerate them only for a new
//! major version, with `TESSERA_BLESS=1 cargo test -p protocol --test wire`.

use protocol::msg::*;
use protocol::{
    decode_client, decode_server, encode_client, encode_server, ClientMsg, DecodeError, ErrorCode,
    Limits, NoticeCode, ServerMsg, Version,
};

/// The golden vectors were written by a 1.0 peer; later minors must still
/// read them byte for byte.
const V1_0: Version = Version { major: 1, minor: 0 };

const MAX: usize = 64 * 1024;

fn client_samples() -> Vec<(&'static str, ClientMsg)> {
    vec![
        (
            "client_hello",
            ClientMsg::Hello(Hello {
                version: V1_0,
                token: None,
                resume: None,
                name: Some("ada".into()),
            }),
        ),
        (
            "client_hello_token",
            ClientMsg::Hello(Hello {
                version: V1_0,
                token: Some("tok".into()),
                resume: Some("res".into()),
                name: None,
            }),
        ),
        (
            "client_join",
            ClientMsg::Join(Join {
                map: "lobby".into(),
            }),
        ),
        ("client_leave", ClientMsg::Leave(Leave {})),
        (
            "client_move",
            ClientMsg::Move(Move {
                seq: 42,
                dx: 1.0,
                dy: -0.5,
            }),
        ),
        (
            "client_chat",
            ClientMsg::Chat(ChatSend { text: "hi".into() }),
        ),
        ("client_ping", ClientMsg::Ping(Ping { t: 123_456 })),
        (
            "client_give",
            ClientMsg::Give(Give {
                req: 9,
                to: 2,
                currency: 25,
                items: [("gem".to_string(), 1)].into(),
            }),
        ),
        (
            "client_pick_up",
            ClientMsg::PickUp(PickUp { req: 3, item: 12 }),
        ),
    ]
}

/// Ada, alone, joins the lobby (instance `instance`, with `items` on the
/// ground): the `joined` of several golden vectors.
fn ada_joins_the_lobby(items: Vec<GroundItem>, instance: u32) -> Joined {
    Joined {
        map: MapInfo {
            name: "lobby".into(),
            width: 1000.0,
            height: 1000.0,
            tick_hz: 20,
            view_radius: 400.0,
            speed: 200.0,
        },
        you: 1,
        tick: 7,
        entities: vec![Entity {
            id: 1,
            name: "ada".into(),
            x: 500.0,
            y: 500.0,
            seq: 0,
        }],
        items,
        instance,
    }
}

fn server_samples() -> Vec<(&'static str, ServerMsg)> {
    vec![
        (
            "server_welcome",
            ServerMsg::Welcome(Welcome {
                version: V1_0,
                player_id: "g-1".into(),
                name: "ada".into(),
                session_id: "s-1".into(),
                resume_token: "r".into(),
                tick_hz: 20,
                limits: Limits {
                    max_frame_bytes: 4096,
                    move_per_sec: 30,
                    move_burst: 60,
                    chat_per_sec: 2,
                    chat_burst: 5,
                    control_per_sec: 10,
                    control_burst: 20,
                    chat_max_chars: 200,
                    idle_timeout_ms: 30_000,
                },
                maps: vec!["lobby".into()],
                last_map: None,
            }),
        ),
        (
            "server_joined",
            ServerMsg::Joined(ada_joins_the_lobby(vec![], FIRST_INSTANCE)),
        ),
        (
            "server_joined_items",
            ServerMsg::Joined(ada_joins_the_lobby(
                vec![GroundItem {
                    id: 12,
                    kind: "gem".into(),
                    count: 1,
                    x: 250.0,
                    y: 100.0,
                }],
                FIRST_INSTANCE,
            )),
        ),
        (
            // Since 1.4: a second instance of the map says which.
            "server_joined_instance",
            ServerMsg::Joined(ada_joins_the_lobby(vec![], 2)),
        ),
        (
            "server_left",
            ServerMsg::Left(Left {
                map: "lobby".into(),
            }),
        ),
        (
            "server_update",
            ServerMsg::Update(Update {
                tick: 8,
                entered: vec![Entity {
                    id: 2,
                    name: "bob".into(),
                    x: 10.0,
                    y: 20.0,
                    seq: 3,
                }],
                moved: vec![Moved {
                    id: 1,
                    x: 510.0,
                    y: 500.0,
                    seq: 42,
                }],
                left: vec![3],
                full: false,
            }),
        ),
        (
            "server_update_full",
            ServerMsg::Update(Update {
                tick: 9,
                entered: vec![],
                moved: vec![],
                left: vec![],
                full: true,
            }),
        ),
        (
            "server_chat",
            ServerMsg::Chat(Chat {
                from: 1,
                name: "ada".into(),
                text: "hi".into(),
            }),
        ),
        (
            "server_announce",
            ServerMsg::Announce(Announce {
                text: "restart in 5 min".into(),
            }),
        ),
        (
            "server_pong",
            ServerMsg::Pong(Pong {
                t: 123_456,
                server_ms: 1_700_000_000_000,
            }),
        ),
        (
            "server_error",
            ServerMsg::Error(ErrorMsg::new(ErrorCode::IllegalState, "join a map first")),
        ),
        (
            "server_error_req",
            ServerMsg::Error(ErrorMsg::answering(
                9,
                ErrorCode::Insufficient,
                "not enough currency",
            )),
        ),
        (
            "server_notice",
            ServerMsg::Notice(Notice::new(NoticeCode::RoomRestarted, "room restarted")),
        ),
        (
            "server_done",
            ServerMsg::Done(Done {
                req: 9,
                inventory: Inventory {
                    currency: 75,
                    items: Default::default(),
                },
            }),
        ),
        (
            "server_inventory",
            ServerMsg::Inventory(Inventory {
                currency: 125,
                items: [("gem".to_string(), 1)].into(),
            }),
        ),
        (
            "server_items",
            ServerMsg::Items(Items {
                added: vec![GroundItem {
                    id: 13,
                    kind: "gem".into(),
                    count: 2,
                    x: 10.0,
                    y: 20.0,
                }],
                removed: vec![12],
            }),
        ),
    ]
}

fn golden_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.hex"))
}

fn check_golden(name: &str, bytes: &[u8]) -> String {
    let hex = hex::encode(bytes);
    let path = golden_path(name);
    if std::env::var_os("TESSERA_BLESS").is_some() {
        std::fs::write(&path, format!("{hex}\n")).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string();
    assert_eq!(
        hex, golden,
        "{name}: encoding differs from the golden vector"
    );
    golden
}

#[test]
fn client_messages_match_golden_vectors_and_round_trip() {
    for (name, msg) in client_samples() {
        let golden = check_golden(name, &encode_client(&msg));
        let decoded = decode_client(&hex::decode(golden).unwrap(), MAX).unwrap();
        assert_eq!(decoded, msg, "{name}");
    }
}

#[test]
fn server_messages_match_golden_vectors_and_round_trip() {
    for (name, msg) in server_samples() {
        let golden = check_golden(name, &encode_server(&msg));
        let decoded = decode_server(&hex::decode(golden).unwrap(), MAX).unwrap();
        assert_eq!(decoded, msg, "{name}");
    }
}

#[test]
fn protocol_md_shows_every_golden_vector() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("PROTOCOL.md"),
    )
    .unwrap();
    let squashed: String = doc.split_whitespace().collect();
    let names = client_samples()
        .into_iter()
        .map(|(n, _)| n)
        .chain(server_samples().into_iter().map(|(n, _)| n));
    for name in names {
        let hex = std::fs::read_to_string(golden_path(name)).unwrap();
        assert!(
            squashed.contains(hex.trim()),
            "PROTOCOL.md lacks the hex example of {name}"
        );
    }
}

#[test]
fn truncated_frames_are_reported_as_truncated() {
    for (name, msg) in client_samples() {
        let bytes = encode_client(&msg);
        for cut in 1..bytes.len() {
            let err = decode_client(&bytes[..cut], MAX).unwrap_err();
            assert!(
                matches!(err, DecodeError::Truncated),
                "{name} cut at {cut}: {err:?}"
            );
        }
    }
}

#[test]
fn wrong_types_are_reported() {
    // A ping whose `t` is a string.
    let bytes = hex::decode("81a470696e6781a174a3616263").unwrap();
    assert!(matches!(
        decode_client(&bytes, MAX),
        Err(DecodeError::WrongType(_))
    ));
    // An array or a nil instead of a message map.
    for bytes in [&[0x90u8][..], &[0xc0], &[0x92, 0x01, 0x02]] {
        let err = decode_client(bytes, MAX).unwrap_err();
        assert!(
            matches!(err, DecodeError::WrongType(_)),
            "{bytes:?}: {err:?}"
        );
    }
    // A move with a missing field.
    let bytes = hex::decode("81a46d6f766581a373657101").unwrap();
    assert!(matches!(
        decode_client(&bytes, MAX),
        Err(DecodeError::Invalid(_))
    ));
}

#[test]
fn unknown_variants_are_reported() {
    // {"teleport": {}}
    let bytes = hex::decode("81a874656c65706f727480").unwrap();
    let err = decode_client(&bytes, MAX).unwrap_err();
    assert!(matches!(err, DecodeError::UnknownVariant(_)), "{err:?}");
    assert_eq!(err.code(), ErrorCode::Malformed);
    // A variant index past the last message.
    let err = decode_client(&[0x08], MAX).unwrap_err();
    assert!(matches!(err, DecodeError::UnknownVariant(_)), "{err:?}");
    // A server message is not a client message.
    let pong = encode_server(&ServerMsg::Pong(Pong { t: 1, server_ms: 2 }));
    assert!(matches!(
        decode_client(&pong, MAX),
        Err(DecodeError::UnknownVariant(_))
    ));
}

#[test]
fn oversize_and_empty_frames_are_refused() {
    let bytes = encode_client(&ClientMsg::Chat(ChatSend {
        text: "x".repeat(100),
    }));
    let err = decode_client(&bytes, 50).unwrap_err();
    assert!(matches!(err, DecodeError::TooLarge { .. }));
    assert_eq!(err.code(), ErrorCode::FrameTooLarge);
    assert_eq!(decode_client(&[], MAX), Err(DecodeError::Empty));
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = encode_client(&ClientMsg::Ping(Ping { t: 1 }));
    bytes.extend_from_slice(&[0xc0, 0xc0]);
    assert_eq!(
        decode_client(&bytes, MAX),
        Err(DecodeError::TrailingBytes(2))
    );
}

#[test]
fn integer_and_float64_directions_decode() {
    // What a JavaScript encoder produces: {"move":{"seq":1,"dx":1,"dy":0.5 as float64}}
    let bytes = hex::decode("81a46d6f766583a373657101a2647801a26479cb3fe0000000000000").unwrap();
    assert_eq!(
        decode_client(&bytes, MAX).unwrap(),
        ClientMsg::Move(Move {
            seq: 1,
            dx: 1.0,
            dy: 0.5
        })
    );
}

#[test]
fn directions_beyond_f32_range_keep_their_direction_and_non_finite_ones_stay() {
    let mv = |dx: f64, dy: f64| {
        let mut bytes = hex::decode("81a46d6f766583a373657101a26478cb").unwrap();
        bytes.extend_from_slice(&dx.to_be_bytes());
        bytes.extend_from_slice(&hex::decode("a26479cb").unwrap());
        bytes.extend_from_slice(&dy.to_be_bytes());
        match decode_client(&bytes, MAX).unwrap() {
            ClientMsg::Move(m) => m,
            other => panic!("{other:?}"),
        }
    };
    let m = mv(-1e300, 0.0);
    assert_eq!((m.dx, m.dy), (-1.0, 0.0));
    let m = mv(f64::MAX, f64::MAX);
    assert!(
        (m.dx - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6,
        "{m:?}"
    );
    assert!(
        (m.dy - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6,
        "{m:?}"
    );
    let m = mv(3e38 * 10.0, -1.0);
    assert!(m.dx > 0.999 && m.dy < 0.0 && m.dy > -1e-30, "{m:?}");
    // Within f32's range nothing changes (the server clamps).
    let m = mv(3.0, -4.0);
    assert_eq!((m.dx, m.dy), (3.0, -4.0));
    // NaN and infinities stay what they are, for the server to refuse.
    assert!(mv(f64::NAN, 1e300).dx.is_nan());
    assert!(mv(1.0, f64::INFINITY).dy.is_infinite());
}

#[test]
fn an_error_echoes_the_req_it_answers_and_older_errors_decode_without_one() {
    let err = decode_server(&hex::decode(GOLDEN_ERROR_1_0).unwrap(), MAX).unwrap();
    assert!(matches!(err, ServerMsg::Error(ErrorMsg { req: None, .. })));
    let bytes = encode_server(&ServerMsg::Error(ErrorMsg::answering(
        7,
        ErrorCode::OutOfReach,
        "far",
    )));
    match decode_server(&bytes, MAX).unwrap() {
        ServerMsg::Error(e) => {
            assert_eq!(e.req, Some(7));
            assert_eq!(e.error_code(), Some(ErrorCode::OutOfReach));
        }
        other => panic!("{other:?}"),
    }
}

/// An error frame as a 1.0 to 1.2 server wrote it (no `req`).
const GOLDEN_ERROR_1_0: &str =
    "81a56572726f7282a4636f6465cd03eba474657874b06a6f696e2061206d6170206669727374";

#[test]
fn newer_minor_fields_are_ignored() {
    // {"join": {"map": "lobby", "party": 7}}: a field a later minor might add.
    let bytes = hex::decode("81a46a6f696e82a36d6170a56c6f626279a5706172747907").unwrap();
    assert_eq!(
        decode_client(&bytes, MAX).unwrap(),
        ClientMsg::Join(Join {
            map: "lobby".into()
        })
    );
}

#[test]
fn version_in_hello_is_a_map() {
    let v = Version { major: 2, minor: 1 };
    let msg = ClientMsg::Hello(Hello {
        version: v,
        token: None,
        resume: None,
        name: None,
    });
    let back = decode_client(&encode_client(&msg), MAX).unwrap();
    assert_eq!(back, msg);
}
