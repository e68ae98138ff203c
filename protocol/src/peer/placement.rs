//! Where a new room goes: rendezvous (highest random weight) hashing.
//!
//! Every shard, and `tessera-ops` predicting placement, must compute the
//! same weight for a room on a shard, so the function lives here, in the
//! crate both link, with its values pinned by a test. The server places a
//! room on the alive, ready shard of the highest `(weight, id)`; one
//! shard leaving moves only its own rooms.

/// The weight of `shard` for `room`: 64-bit FNV-1a over both (a `0xff`
/// byte between them, which no UTF-8 text holds), finished with
/// splitmix64's mixer so that close names spread.
pub fn rendezvous(room: &str, shard: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in room.bytes().chain([0xff]).chain(shard.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Golden values: a change here moves rooms between shards of a
    /// cluster whose shards run different builds.
    #[test]
    fn weights_are_pinned() {
        let pinned = [
            ("lobby", "shard-1", 0x262f_bd38_5e8e_04bc_u64),
            ("lobby", "shard-2", 0xd6cc_f7e1_c7a3_d719),
            ("lobby", "shard-3", 0xcf93_6ff3_baef_a311),
            ("m001", "shard-1", 0xec86_2310_bf7e_8f4d),
            ("arena#2", "eu-1", 0xd66c_232d_c5fd_16d5),
            ("", "", 0x4f2d_b50f_1240_40cd),
        ];
        for (room, shard, value) in pinned {
            assert_eq!(rendezvous(room, shard), value, "{room} on {shard}");
        }
    }

    #[test]
    fn rooms_spread_and_few_move_when_a_shard_goes() {
        fn pick(room: &str, shards: &[&'static str]) -> &'static str {
            shards
                .iter()
                .copied()
                .max_by_key(|s| rendezvous(room, s))
                .expect("shards is not empty")
        }
        let shards = ["a", "b", "c"];
        let rooms: Vec<String> = (0..300).map(|i| format!("lobby#{i}")).collect();
        let mut counts = BTreeMap::new();
        for r in &rooms {
            *counts.entry(pick(r, &shards)).or_insert(0) += 1;
        }
        assert!(counts.values().all(|&n| n > 60), "{counts:?}");
        // Without "c", only c's rooms move.
        for r in &rooms {
            let before = pick(r, &shards);
            if before != "c" {
                assert_eq!(before, pick(r, &["a", "b"]));
            }
        }
    }
}
