//! The `peer_frame` target: bytes as a peer would send them on a tunnel
//! stream, through the framing and every peer decoder.

use protocol::peer::{
    decode_payload, encode_payload, split_frame, Control, EdgeMsg, KnownView, OwnerMsg,
    PeerMessage, StreamHead, TickIds,
};

use crate::Outcome;

/// The tunnel's frame limit in this target (small, so the length check
/// is reached as often as the decoders).
pub const PEER_MAX_FRAME: u32 = 4 * 1024;

/// At most this many frames per input are followed.
const MAX_FRAMES: usize = 16;

/// Split `data` into frames and decode each as every peer message type;
/// what decodes must re-encode to bytes that decode to the same encoding,
/// and a decoded `tick` must lay out each of its views (or refuse a bad
/// index) without panicking.
pub fn peer_frame(data: &[u8]) -> Outcome {
    let mut outcome = Vec::new();
    let mut rest = data;
    for _ in 0..MAX_FRAMES {
        match split_frame(rest, PEER_MAX_FRAME) {
            Ok(None) => {
                outcome.push("partial".to_string());
                break;
            }
            Err(err) => {
                outcome.push(format!("frame:{err:?}").chars().take(24).collect());
                break;
            }
            Ok(Some((payload, used))) => {
                outcome.push(decode_all(payload));
                rest = &rest[used..];
                if rest.is_empty() {
                    break;
                }
            }
        }
    }
    outcome.join(" ")
}

fn decode_all(payload: &[u8]) -> String {
    let mut kinds = String::new();
    kinds.push_str(round_trip::<Control>(payload, "c"));
    kinds.push_str(round_trip::<StreamHead>(payload, "s"));
    kinds.push_str(round_trip::<EdgeMsg>(payload, "e"));
    kinds.push_str(round_trip::<OwnerMsg>(payload, "o"));
    if let Ok(OwnerMsg::Tick(tick)) = decode_payload::<OwnerMsg>(payload, PEER_MAX_FRAME) {
        // An edge's view tracking too (an implied tick's `moved`): each
        // view applied to one known view, which must never panic.
        let ids = TickIds::read(&tick);
        let mut known = KnownView::default();
        let mut moved = Vec::new();
        for view in &tick.views {
            let mut out = Vec::new();
            let laid = tick.write_update(view, &mut out);
            kinds.push_str(if laid.is_ok() { "+" } else { "!" });
            if known.advance(&tick, &ids, view, &mut moved).is_ok() {
                tick.write_view(view, &moved, &mut out)
                    .expect("advance checked every index");
            }
        }
    }
    kinds
}

fn round_trip<T: PeerMessage + std::fmt::Debug>(payload: &[u8], tag: &'static str) -> &'static str {
    let Ok(msg) = decode_payload::<T>(payload, PEER_MAX_FRAME) else {
        return "-";
    };
    let encoded = encode_payload(&msg);
    let again: T = decode_payload(&encoded, u32::MAX)
        .unwrap_or_else(|e| panic!("{msg:?} re-encoded does not decode: {e}"));
    assert_eq!(
        encode_payload(&again),
        encoded,
        "{msg:?} does not round-trip"
    );
    tag
}
