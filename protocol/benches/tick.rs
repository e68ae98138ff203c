//! What one edge's `tick` costs on the tunnel, against what the same
//! members' sockets carry: a room of 100 players on a 1000 x 1000 map with
//! the default view radius (400), a third of them on the owner and a third
//! on each of two edges, about half of everyone moving each tick (bots at
//! 10 Hz, ticks at 20 Hz). Deterministic (a fixed-seed generator), so the
//! byte counts are exact; the times are medians over many ticks.
//!
//!     cargo bench -p protocol --bench tick
//!     cargo bench -p protocol --bench tick -- --players 100 --edges 2 --ticks 2000
//!
//! Reported per tick: the tunnel bytes of both edges' ticks (with `moved`
//! implied, with `moved` listed, and in the earliest encoding: views as
//! maps with field names and index arrays), the members' socket bytes (every
//! player's `update` frame, the owner's local players included), their
//! ratio, and the time to build, encode, decode and lay out an edge's
//! tick.

use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::assemble::{encode_entity, encode_moved, write_update};
use protocol::msg::{Entity, EntityId, Moved};
use protocol::peer::{
    decode_frame, encode_frame, EntryKind, KnownView, OwnerMsg, TickBuilder, TickIds,
};
use serde::Serialize;

const MAP: f32 = 1000.0;
const RADIUS: f32 = 400.0;
const MAX_FRAME: u32 = 16 << 20;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: enough for positions, and the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

struct Player {
    id: EntityId,
    x: f32,
    y: f32,
    seq: u32,
    moved: bool,
    /// Who it saw last tick, ascending.
    visible: Vec<EntityId>,
    /// Its view as its edge tracks it (implied `moved`).
    known: KnownView,
}

/// The earlier wire form of a view, for the comparison.
#[derive(Serialize)]
struct OldView<'a> {
    sessions: &'a [u64],
    #[serde(skip_serializing_if = "<[u32]>::is_empty")]
    entered: &'a [u32],
    #[serde(skip_serializing_if = "<[u32]>::is_empty")]
    moved: &'a [u32],
    #[serde(skip_serializing_if = "<[EntityId]>::is_empty")]
    left: &'a [EntityId],
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    full: bool,
}

#[derive(Serialize)]
struct OldTick<'a> {
    room: &'a str,
    tick: u64,
    entries: &'a [Bytes],
    views: Vec<OldView<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum OldMsg<'a> {
    Tick(OldTick<'a>),
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let players = arg("--players", 100);
    let edges = arg("--edges", 2).max(1);
    let ticks = arg("--ticks", 2000).max(10);
    let mut rng = Rng(0x7e55_e7a0_0000_0001);
    let mut all: Vec<Player> = (0..players)
        .map(|i| Player {
            id: i as EntityId + 1,
            x: rng.unit() * MAP,
            y: rng.unit() * MAP,
            seq: 0,
            moved: false,
            visible: Vec::new(),
            known: KnownView::default(),
        })
        .collect();
    // Player i is on shard i % (edges + 1): 0 is the owner.
    let shard_of = |i: usize| i % (edges + 1);

    let (mut tunnel, mut tunnel_old, mut sockets) = (0usize, 0usize, 0usize);
    let (mut entry_bytes, mut view_count) = (0usize, 0usize);
    let (mut tunnel_implied, mut implied_views, mut implied_frames) = (0usize, 0usize, 0usize);
    let mut implied_t = Vec::new();
    let (mut build_t, mut encode_t, mut decode_t, mut layout_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut frame = Vec::new();
    for tick in 1..=ticks as u64 {
        // About half move (a bot moves at 10 Hz, the room ticks at 20 Hz).
        for p in all.iter_mut() {
            p.moved = rng.next() % 2 == 0;
            if p.moved {
                p.x = (p.x + (rng.unit() - 0.5) * 25.0).clamp(0.0, MAP);
                p.y = (p.y + (rng.unit() - 0.5) * 25.0).clamp(0.0, MAP);
                p.seq += 1;
            }
        }
        let entity = |p: &Player| {
            let mut b = Vec::new();
            encode_entity(
                &Entity {
                    id: p.id,
                    name: format!("bot-{}", p.id),
                    x: p.x,
                    y: p.y,
                    seq: p.seq,
                },
                &mut b,
            );
            Bytes::from(b)
        };
        let moved = |p: &Player| {
            let mut b = Vec::new();
            encode_moved(
                &Moved {
                    id: p.id,
                    x: p.x,
                    y: p.y,
                    seq: p.seq,
                },
                &mut b,
            );
            Bytes::from(b)
        };
        // Every player's new view and diff, as the room computes them.
        let started = Instant::now();
        let mut builders: Vec<TickBuilder> =
            (0..edges).map(|_| TickBuilder::new("m01", tick)).collect();
        let mut implied: Vec<TickBuilder> = (0..edges)
            .map(|_| TickBuilder::new("m01", tick).implied())
            .collect();
        let mut diffs = Vec::with_capacity(players);
        for (i, me) in all.iter().enumerate() {
            let now: Vec<EntityId> = all
                .iter()
                .filter(|o| o.id != me.id && (o.x - me.x).hypot(o.y - me.y) <= RADIUS)
                .map(|o| o.id)
                .collect();
            let entered: Vec<EntityId> = now
                .iter()
                .copied()
                .filter(|e| me.visible.binary_search(e).is_err())
                .collect();
            let left: Vec<EntityId> = me
                .visible
                .iter()
                .copied()
                .filter(|e| now.binary_search(e).is_err())
                .collect();
            let mv: Vec<EntityId> = now
                .iter()
                .copied()
                .filter(|e| me.visible.binary_search(e).is_ok() && all[*e as usize - 1].moved)
                .collect();
            // The socket's bytes: this player's own update frame.
            if !(entered.is_empty() && mv.is_empty() && left.is_empty()) {
                let e: Vec<Bytes> = entered
                    .iter()
                    .map(|&e| entity(&all[e as usize - 1]))
                    .collect();
                let m: Vec<Bytes> = mv.iter().map(|&e| moved(&all[e as usize - 1])).collect();
                frame.clear();
                write_update(
                    &mut frame,
                    tick,
                    e.iter().map(|b| &b[..]),
                    m.iter().map(|b| &b[..]),
                    &left,
                    false,
                );
                sockets += frame.len();
                if shard_of(i) != 0 {
                    for b in [
                        &mut builders[shard_of(i) - 1],
                        &mut implied[shard_of(i) - 1],
                    ] {
                        let ei = entered
                            .iter()
                            .map(|&e| {
                                b.entry(e, EntryKind::Entered, || entity(&all[e as usize - 1]))
                            })
                            .collect();
                        let mi = mv
                            .iter()
                            .map(|&e| b.entry(e, EntryKind::Moved, || moved(&all[e as usize - 1])))
                            .collect();
                        b.view(i as u64 + 1, ei, mi, left.clone(), false);
                    }
                }
            }
            diffs.push(now);
        }
        let ticks_out: Vec<_> = builders.into_iter().map(|b| b.finish()).collect();
        build_t.push(started.elapsed() / edges as u32);
        // The implied ticks: encoded, decoded, and each recipient's frame
        // laid out from the view its edge tracks.
        for t in implied.into_iter().map(|b| b.finish()) {
            implied_views += t.views.len();
            let bytes = encode_frame(&OwnerMsg::Tick(t), MAX_FRAME).unwrap();
            tunnel_implied += bytes.len();
            let Some((OwnerMsg::Tick(back), _)) =
                decode_frame::<OwnerMsg>(&bytes, MAX_FRAME).unwrap()
            else {
                panic!("a tick decodes to a tick");
            };
            let started = Instant::now();
            let ids = TickIds::read(&back);
            let mut mv = Vec::new();
            for view in &back.views {
                let mut laid: Vec<(Vec<u32>, Bytes)> = Vec::new();
                for &s in &view.sessions {
                    let p = &mut all[s as usize - 1];
                    assert_eq!(p.known.advance(&back, &ids, view, &mut mv), Ok(true));
                    if !laid.iter().any(|(m, _)| *m == mv) {
                        // As the edge does: each distinct frame in its own
                        // buffer, which becomes the frame's `Bytes`.
                        let mut out = Vec::new();
                        back.write_view(view, &mv, &mut out).unwrap();
                        laid.push((mv.clone(), Bytes::from(out)));
                        implied_frames += 1;
                    }
                }
            }
            implied_t.push(started.elapsed());
        }
        for (p, now) in all.iter_mut().zip(diffs) {
            p.visible = now;
        }
        for t in ticks_out {
            let old = OldMsg::Tick(OldTick {
                room: &t.room,
                tick: t.tick,
                entries: &t.entries,
                views: t
                    .views
                    .iter()
                    .map(|v| OldView {
                        sessions: &v.sessions,
                        entered: &v.entered,
                        moved: &v.moved,
                        left: &v.left,
                        full: v.full,
                    })
                    .collect(),
            });
            // Plus the 4-byte length prefix of every frame.
            tunnel_old += rmp_serde::to_vec_named(&old).unwrap().len() + 4;
            entry_bytes += t.entries.iter().map(Bytes::len).sum::<usize>();
            view_count += t.views.len();
            let msg = OwnerMsg::Tick(t);
            let started = Instant::now();
            let bytes = encode_frame(&msg, MAX_FRAME).unwrap();
            encode_t.push(started.elapsed());
            tunnel += bytes.len();
            let started = Instant::now();
            let Some((OwnerMsg::Tick(back), _)) =
                decode_frame::<OwnerMsg>(&bytes, MAX_FRAME).unwrap()
            else {
                panic!("a tick decodes to a tick");
            };
            decode_t.push(started.elapsed());
            let started = Instant::now();
            for view in &back.views {
                frame.clear();
                back.write_update(view, &mut frame).unwrap();
            }
            layout_t.push(started.elapsed());
        }
    }
    let per_tick = |n: usize| n as f64 / ticks as f64;
    println!("room of {players}, {edges} edges, {ticks} ticks, radius {RADIUS} on {MAP}x{MAP}");
    println!(
        "sockets (every player's update)  {:>9.0} B/tick",
        per_tick(sockets)
    );
    println!(
        "tunnel, moved implied            {:>9.0} B/tick  ratio {:.3}  ({:.1} views, {:.1} frames laid out per tick)",
        per_tick(tunnel_implied),
        tunnel_implied as f64 / sockets as f64,
        per_tick(implied_views),
        per_tick(implied_frames)
    );
    println!(
        "tunnel, moved listed             {:>9.0} B/tick  ratio {:.3}",
        per_tick(tunnel),
        tunnel as f64 / sockets as f64
    );
    println!(
        "tunnel, views as named maps      {:>9.0} B/tick  ratio {:.3}",
        per_tick(tunnel_old),
        tunnel_old as f64 / sockets as f64
    );
    println!(
        "of which entries                 {:>9.0} B/tick, {:.1} views per tick, {:.1} B per view",
        per_tick(entry_bytes),
        per_tick(view_count),
        (tunnel - entry_bytes) as f64 / view_count as f64
    );
    println!(
        "per edge tick, median: build {:?}  encode {:?}  decode {:?}  lay out {:?}",
        median(build_t),
        median(encode_t),
        median(decode_t),
        median(layout_t)
    );
    println!(
        "per edge tick, median, moved implied: track views and lay out {:?}",
        median(implied_t)
    );
}
