//! Random input never panics the decoders.

use proptest::prelude::*;
use protocol::msg::*;
use protocol::{decode_client, decode_server, encode_client, ClientMsg};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_client(&bytes, 4096);
        let _ = decode_server(&bytes, 4096);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        seq in any::<u32>(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = encode_client(&ClientMsg::Move(Move { seq, dx: 0.5, dy: -1.0 }));
        for (at, value) in flips {
            let i = at % bytes.len();
            bytes[i] = value;
        }
        let _ = decode_client(&bytes, 4096);
    }

    #[test]
    fn any_move_round_trips(seq in any::<u32>(), dx in -1.0f32..1.0, dy in -1.0f32..1.0) {
        let msg = ClientMsg::Move(Move { seq, dx, dy });
        prop_assert_eq!(decode_client(&encode_client(&msg), 4096).unwrap(), msg);
    }

    #[test]
    fn any_chat_round_trips(text in ".{0,64}") {
        let msg = ClientMsg::Chat(ChatSend { text });
        prop_assert_eq!(decode_client(&encode_client(&msg), 4096).unwrap(), msg);
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    // 100k nested one-element arrays.
    let mut bytes = vec![0x91u8; 100_000];
    bytes.push(0xc0);
    assert!(decode_client(&bytes, usize::MAX).is_err());
}
