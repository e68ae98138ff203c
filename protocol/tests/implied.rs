//! Implied `moved`, end to end in memory: an owner model that computes
//! every member's view and the `update` frame a local member would get,
//! builds each edge's tick with `TickBuilder::implied`, sends it through
//! the tunnel's framing, and an edge that lays out each recipient's frame
//! from its `KnownView`. Every frame must be byte for byte the local one,
//! across entered, moved, left and full views; ticks lost on a slow tunnel
//! (replaced in the queue) force full views, after which nothing drifts.

use bytes::Bytes;
use protocol::assemble::{encode_entity, encode_moved, write_update};
use protocol::msg::{Entity, EntityId, Joined, MapInfo, Moved};
use protocol::peer::{
    decode_frame, encode_frame, EntryKind, KnownView, OwnerMsg, Tick, TickBuilder, TickIds,
};
use protocol::{encode_server, ServerMsg};

const MAX: u32 = 16 << 20;
const SIDE: f32 = 300.0;
const RADIUS: f32 = 80.0;

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
    /// The owner's view of it (itself included, as the room's grid query).
    visible: Vec<EntityId>,
    /// The edge's tracking of its view.
    known: KnownView,
    /// Owed a full view (a member whose slow socket shed updates).
    resync: bool,
}

fn entity(p: &Player) -> Entity {
    Entity {
        id: p.id,
        name: format!("p{}", p.id),
        x: p.x,
        y: p.y,
        seq: p.seq,
    }
}

fn entity_bytes(p: &Player) -> Bytes {
    let mut b = Vec::new();
    encode_entity(&entity(p), &mut b);
    Bytes::from(b)
}

fn moved_bytes(p: &Player) -> Bytes {
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
}

fn joined_frame(all: &[Player], me: usize, view: &[EntityId]) -> Vec<u8> {
    encode_server(&ServerMsg::Joined(Joined {
        map: MapInfo {
            name: "m".into(),
            width: SIDE,
            height: SIDE,
            tick_hz: 20,
            view_radius: RADIUS,
            speed: 1.0,
        },
        you: all[me].id,
        tick: 0,
        entities: view.iter().map(|&e| entity(&all[e as usize - 1])).collect(),
        items: Vec::new(),
        instance: 1,
    }))
}

fn in_view(all: &[Player], me: usize) -> Vec<EntityId> {
    let (x, y) = (all[me].x, all[me].y);
    all.iter()
        .filter(|o| (o.x - x).hypot(o.y - y) <= RADIUS)
        .map(|o| o.id)
        .collect()
}

/// Run `ticks` ticks of `players` members, all on one edge, losing the
/// ticks `lost` says; the number of frames compared.
fn run(players: usize, ticks: u64, seed: u64, lost: impl Fn(u64) -> bool) -> usize {
    let mut rng = Rng(seed);
    // Reread each tick, as the edge does: nothing of one tick may be left
    // in the next.
    let mut ids = TickIds::default();
    let mut all: Vec<Player> = (0..players)
        .map(|i| Player {
            id: i as EntityId + 1,
            x: rng.unit() * SIDE,
            y: rng.unit() * SIDE,
            seq: 0,
            moved: false,
            visible: Vec::new(),
            known: KnownView::default(),
            resync: false,
        })
        .collect();
    // Every member joins: the owner's view and the `joined` frame the
    // edge passes through (and follows).
    for i in 0..players {
        let view = in_view(&all, i);
        let frame = joined_frame(&all, i, &view);
        assert!(all[i].known.observe_frame(&frame));
        all[i].visible = view;
    }
    let mut full_due = false;
    // The tick right after a lost one was built against views the edge
    // never saw: its frames may differ (the client missed a tick anyway).
    let mut stale = false;
    let mut compared = 0;
    for tick in 1..=ticks {
        for p in all.iter_mut() {
            p.moved = rng.next() % 2 == 0;
            if p.moved {
                // Big steps, so views change often.
                p.x = (p.x + (rng.unit() - 0.5) * 60.0).clamp(0.0, SIDE);
                p.y = (p.y + (rng.unit() - 0.5) * 60.0).clamp(0.0, SIDE);
                p.seq += 1;
            }
        }
        if rng.next() % 23 == 0 {
            let who = rng.next() as usize % players;
            all[who].resync = true;
        }
        let mut builder = TickBuilder::new("m", tick).implied();
        let mut explicit = TickBuilder::new("m", tick);
        let mut local = Vec::new();
        let mut views = Vec::new();
        for i in 0..players {
            let now = in_view(&all, i);
            let full = full_due || std::mem::take(&mut all[i].resync);
            let prev = &all[i].visible;
            let (entered, mv, left): (Vec<EntityId>, Vec<EntityId>, Vec<EntityId>) = if full {
                (now.clone(), Vec::new(), Vec::new())
            } else {
                (
                    now.iter().copied().filter(|e| !prev.contains(e)).collect(),
                    now.iter()
                        .copied()
                        .filter(|e| prev.contains(e) && all[*e as usize - 1].moved)
                        .collect(),
                    prev.iter().copied().filter(|e| !now.contains(e)).collect(),
                )
            };
            views.push(now);
            if !full && entered.is_empty() && mv.is_empty() && left.is_empty() {
                continue;
            }
            // The frame a local member with this view gets.
            let e: Vec<Bytes> = entered
                .iter()
                .map(|&e| entity_bytes(&all[e as usize - 1]))
                .collect();
            let m: Vec<Bytes> = mv
                .iter()
                .map(|&e| moved_bytes(&all[e as usize - 1]))
                .collect();
            let mut frame = Vec::new();
            write_update(
                &mut frame,
                tick,
                e.iter().map(|b| &b[..]),
                m.iter().map(|b| &b[..]),
                &left,
                full,
            );
            local.push((i as u64 + 1, frame));
            for b in [&mut builder, &mut explicit] {
                let ei = entered
                    .iter()
                    .map(|&e| b.entry(e, EntryKind::Entered, || entity_bytes(&all[e as usize - 1])))
                    .collect();
                let mi = mv
                    .iter()
                    .map(|&e| b.entry(e, EntryKind::Moved, || moved_bytes(&all[e as usize - 1])))
                    .collect();
                b.view(i as u64 + 1, ei, mi, left.clone(), full);
            }
        }
        for (p, now) in all.iter_mut().zip(views) {
            p.visible = now;
        }
        full_due = false;
        let (tick_msg, explicit) = (builder.finish(), explicit.finish());
        assert!(tick_msg.views.len() <= explicit.views.len());
        assert!(tick_msg.views.iter().all(|v| v.moved.is_empty()));
        if lost(tick) {
            // Replaced in the tunnel's queue: the owner hears of it when it
            // sends the next one, and gives full views the tick after.
            stale = true;
            continue;
        }
        let wire = encode_frame(&OwnerMsg::Tick(tick_msg), MAX).unwrap();
        let Some((OwnerMsg::Tick(back), _)) = decode_frame::<OwnerMsg>(&wire, MAX).unwrap() else {
            panic!("a tick decodes to a tick");
        };
        assert!(back.implied);
        let got = edge_frames(&back, &mut all, &mut ids);
        if std::mem::take(&mut stale) {
            full_due = true;
            continue;
        }
        assert_eq!(
            got.len(),
            local.len(),
            "tick {tick}: one frame per member with a change"
        );
        for ((s, want), (s2, frame)) in local.iter().zip(&got) {
            assert_eq!(s, s2);
            assert_eq!(frame, want, "tick {tick}: member {s}'s frame");
            compared += 1;
        }
        for p in &all {
            assert_eq!(
                p.known.ids(),
                p.visible,
                "tick {tick}: the edge's view of {}",
                p.id
            );
        }
    }
    compared
}

/// What the edge sends each recipient of `tick`, by session.
fn edge_frames(tick: &Tick, all: &mut [Player], ids: &mut TickIds) -> Vec<(u64, Vec<u8>)> {
    ids.reread(tick);
    let ids = &*ids;
    let mut out = Vec::new();
    let mut moved = Vec::new();
    for view in &tick.views {
        for &s in &view.sessions {
            let p = &mut all[s as usize - 1];
            p.known.advance(tick, ids, view, &mut moved).unwrap();
            let mut frame = Vec::new();
            tick.write_view(view, &moved, &mut frame).unwrap();
            out.push((s, frame));
        }
    }
    out.sort_by_key(|(s, _)| *s);
    out
}

#[test]
fn every_recipient_gets_the_local_members_bytes() {
    let compared = run(40, 300, 0x1111, |_| false);
    assert!(compared > 5_000, "only {compared} frames compared");
}

#[test]
fn after_lost_ticks_full_views_bring_the_edge_back_in_step() {
    // Every 7th tick is lost, and twice two in a row.
    let compared = run(40, 300, 0x2222, |t| t % 7 == 3 || t == 100 || t == 101);
    assert!(compared > 4_000, "only {compared} frames compared");
}

#[test]
fn a_view_that_does_not_fit_is_reported() {
    let mut known = KnownView::default();
    let moved = {
        let mut b = Vec::new();
        encode_moved(
            &Moved {
                id: 4,
                x: 0.0,
                y: 0.0,
                seq: 1,
            },
            &mut b,
        );
        Bytes::from(b)
    };
    let mut b = TickBuilder::new("m", 1).implied();
    let m = b.entry(4, EntryKind::Moved, || moved.clone());
    // Entity 9 leaves a view the edge never saw it in.
    b.view(1, vec![], vec![m], vec![9], false);
    let tick = b.finish();
    let ids = TickIds::read(&tick);
    let mut out = Vec::new();
    assert_eq!(
        known.advance(&tick, &ids, &tick.views[0], &mut out),
        Ok(false)
    );
    assert!(
        out.is_empty(),
        "4 is not in view: not moved for this member"
    );
    // A view with nothing entering or leaving, where nothing in the
    // tracked view moved: the owner would not have sent it.
    let mut b = TickBuilder::new("m", 2).implied();
    let m = b.entry(4, EntryKind::Moved, || moved.clone());
    b.view(1, vec![], vec![m], vec![], false);
    let quiet = b.finish();
    let ids2 = TickIds::read(&quiet);
    assert_eq!(
        KnownView::default().advance(&quiet, &ids2, &quiet.views[0], &mut out),
        Ok(false)
    );
    assert!(out.is_empty());
    // A bad index is an error, not a panic.
    let mut bad = tick.views[0].clone();
    bad.entered = vec![7];
    assert!(known.advance(&tick, &ids, &bad, &mut out).is_err());
}
