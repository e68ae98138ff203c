//! The room tick's own work per member, without the sends (issue 12):
//! a room of 100 players on a 1000 x 1000 map with the default view
//! radius (400), moving as the loadbot's bots do (speed 200, 20 Hz ticks,
//! a random walk that turns now and then and heads home near the edges;
//! `--moving` sets how many of them move, in percent). Each tick does
//! what `Room::publish_views` does for a local member: the grid query
//! through the neighbourhood cache, the view diff, and the diff's frame
//! (one per distinct diff). Deterministic (a fixed-seed generator).
//!
//!     cargo bench -p server --bench view
//!     cargo bench -p server --bench view -- --players 100 --moving 100 --ticks 4000
//!     cargo bench -p server --bench view -- --radius 2000     # the whole map: everyone in view
//!
//! Two pipelines run alternately over the same positions:
//! - **plain**: as before issue 12's tick pass: the query reads each
//!   cell's neighbourhood (one sort per occupied cell), the diff is the
//!   merge as first written (`ViewDiff::compute_plain`: a branch per id,
//!   a walk along the changed list) and every `moved` entry is looked up
//!   by entity id;
//! - **now**: the query reads the whole room sorted once when it lies
//!   within one neighbourhood, `ViewDiff::compute` (an unchanged view
//!   skips the merge; positions in the changed list from a table) and the
//!   entries taken by position from the tick's `MovedEntries`.
//!
//! Both must give the same frames, byte for byte (checked every tick).
//! Reported: nanoseconds per member per tick (median over rounds) of the
//! grid query alone, the diff alone (query + diff less the query), query
//! + diff, and query + diff + frame.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use protocol::assemble::{encode_entity, encode_moved};
use protocol::msg::{Entity, EntityId, Moved};
use server::room::grid::{Cell, Grid, Neighbourhoods};
use server::room::view::{write_diff, Changed, MovedEntries, TickFrames, ViewDiff};

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

const MAP: f32 = 1000.0;
/// The default view radius (`--radius` sets another: 2000 is the whole
/// map, where everyone sees everyone).
const RADIUS: usize = 400;
const SPEED: f32 = 200.0;
const TICK_HZ: f32 = 20.0;
/// The loadbot's random walk (`loadbot/src/scenario.rs`): the chance of a
/// turn per move, and how near an edge (a share of the map) turns home.
const TURN_CHANCE: f32 = 0.05;
const EDGE: f32 = 0.1;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: the same positions every run.
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
    x: f32,
    y: f32,
    dir: (f32, f32),
    moving: bool,
    cell: Cell,
    seq: u32,
    visible: Vec<EntityId>,
    moved: Vec<u8>,
    entity: Vec<u8>,
}

impl Player {
    fn encode(&mut self, id: EntityId) {
        self.moved.clear();
        let m = Moved {
            id,
            x: self.x,
            y: self.y,
            seq: self.seq,
        };
        encode_moved(&m, &mut self.moved);
        self.entity.clear();
        let e = Entity {
            id,
            name: format!("bot-{id}"),
            x: self.x,
            y: self.y,
            seq: self.seq,
        };
        encode_entity(&e, &mut self.entity);
    }
}

/// One room, with its own scratch, run by one pipeline.
struct Room {
    players: FastMap<EntityId, Player>,
    ids: Vec<EntityId>,
    /// The ids in a fixed shuffled order: the order a room's map yields
    /// them in, the same in every run.
    order: Vec<EntityId>,
    grid: Grid,
    /// The tick's moved players, in the map's order; then ascending
    /// (plain) or in `table` (now).
    changed: Vec<EntityId>,
    table: Changed,
    entries: MovedEntries,
    cache: Neighbourhoods,
    previous: Vec<EntityId>,
    diff: ViewDiff,
    frames: TickFrames,
    rng: Rng,
    tick: u64,
    radius: f32,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Pipeline {
    Plain,
    Now,
}

/// How far a tick goes: the grid query alone, then the diff, then the
/// frame. Each is timed as whole ticks in a room of its own (a timer per
/// member would cost about as much as a diff).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Query,
    Diff,
    Frame,
}

impl Room {
    fn new(players: usize, moving_percent: usize, radius: f32) -> Room {
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let mut grid = Grid::new(radius);
        let mut map = FastMap::default();
        for i in 0..players {
            let id = i as EntityId + 1;
            let (x, y) = (rng.unit() * MAP, rng.unit() * MAP);
            let angle = rng.unit() * std::f32::consts::TAU;
            let mut p = Player {
                x,
                y,
                dir: (angle.cos(), angle.sin()),
                moving: i * 100 < players * moving_percent,
                cell: grid.insert(id, x, y),
                seq: 0,
                visible: Vec::new(),
                moved: Vec::new(),
                entity: Vec::new(),
            };
            p.encode(id);
            map.insert(id, p);
        }
        let mut ids: Vec<EntityId> = map.keys().copied().collect();
        ids.sort_unstable();
        let mut order = ids.clone();
        for i in (1..order.len()).rev() {
            order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        let mut room = Room {
            order,
            players: map,
            ids,
            grid,
            changed: Vec::new(),
            table: Changed::default(),
            entries: MovedEntries::default(),
            cache: Neighbourhoods::default(),
            previous: Vec::new(),
            diff: ViewDiff::default(),
            frames: TickFrames::default(),
            rng,
            tick: 0,
            radius,
        };
        for &id in &room.ids {
            let p = &room.players[&id];
            let mut view = Vec::new();
            room.grid.query(p.x, p.y, radius, &mut view);
            room.players.get_mut(&id).unwrap().visible = view;
        }
        room
    }

    /// Move everyone that moves one tick, as the loadbot's walk does (a
    /// new direction at most every other tick: bots send 10 moves a
    /// second), and re-encode their entries.
    fn simulate(&mut self) {
        self.tick += 1;
        let step = SPEED / TICK_HZ;
        self.changed.clear();
        for &id in &self.order {
            let p = self.players.get_mut(&id).unwrap();
            if !p.moving {
                continue;
            }
            if self.tick % 2 == 0 {
                let near = |v: f32| !(MAP * EDGE..=MAP * (1.0 - EDGE)).contains(&v);
                if near(p.x) || near(p.y) {
                    let (cx, cy) = (MAP / 2.0 - p.x, MAP / 2.0 - p.y);
                    let len = (cx * cx + cy * cy).sqrt().max(f32::EPSILON);
                    p.dir = (cx / len, cy / len);
                } else if self.rng.unit() < TURN_CHANCE {
                    let angle = self.rng.unit() * std::f32::consts::TAU;
                    p.dir = (angle.cos(), angle.sin());
                }
                p.seq += 1;
            }
            p.x = (p.x + p.dir.0 * step).clamp(0.0, MAP);
            p.y = (p.y + p.dir.1 * step).clamp(0.0, MAP);
            p.cell = self.grid.update(id, p.cell, p.x, p.y);
            p.encode(id);
            self.changed.push(id);
        }
    }

    /// One tick's views and frames, as far as `stage`; `sink` gets every
    /// frame sent. Returns the tick's nanoseconds.
    fn publish(&mut self, pipeline: Pipeline, stage: Stage, sink: &mut Vec<Bytes>) -> u64 {
        let started = Instant::now();
        self.entries.clear();
        match pipeline {
            Pipeline::Plain => self.changed.sort_unstable(),
            Pipeline::Now => {
                self.table.clear();
                for &id in &self.changed {
                    self.table.push(id);
                }
                self.table.seal();
                for id in self.table.ids() {
                    self.entries.push(&self.players[id].moved);
                }
            }
        }
        self.frames.clear();
        self.cache.clear();
        if pipeline == Pipeline::Plain {
            self.cache.per_cell_only();
        }
        for &id in &self.ids {
            let me = self.players.get_mut(&id).unwrap();
            self.grid
                .query_cached(me.x, me.y, self.radius, &mut self.cache, &mut self.previous);
            std::mem::swap(&mut me.visible, &mut self.previous);
            if stage == Stage::Query {
                black_box(&me.visible);
                continue;
            }
            let players = &self.players;
            let me = &players[&id];
            match pipeline {
                Pipeline::Plain => {
                    self.diff
                        .compute_plain(&self.previous, &me.visible, &self.changed)
                }
                Pipeline::Now => self.diff.compute(&self.previous, &me.visible, &self.table),
            }
            if stage == Stage::Diff || self.diff.is_empty() {
                black_box(&self.diff);
                continue;
            }
            let tick = self.tick;
            let entries = &self.entries;
            let frame = self.frames.frame(&self.diff, |diff, out| match pipeline {
                Pipeline::Plain => write_diff(
                    out,
                    tick,
                    diff,
                    |e| players[&e].entity.as_slice(),
                    |e, _| players[&e].moved.as_slice(),
                ),
                Pipeline::Now => write_diff(
                    out,
                    tick,
                    diff,
                    |e| players[&e].entity.as_slice(),
                    |_, at| entries.get(at),
                ),
            });
            sink.push(frame.clone());
        }
        started.elapsed().as_nanos() as u64
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let players = arg("--players", 100);
    let moving = arg("--moving", 100).min(100);
    let ticks = arg("--ticks", 4000);
    let rounds = arg("--rounds", 9).max(1);
    let radius = arg("--radius", RADIUS).max(1) as f32;
    println!(
        "room of {players}, {moving}% moving, map {MAP}x{MAP}, view radius {radius}, \
         {ticks} ticks a round, {rounds} rounds, pipelines alternating"
    );
    // Query alone, query + diff and query + diff + frame, per pipeline.
    let runs = [
        (Pipeline::Plain, Stage::Query),
        (Pipeline::Now, Stage::Query),
        (Pipeline::Plain, Stage::Diff),
        (Pipeline::Now, Stage::Diff),
        (Pipeline::Plain, Stage::Frame),
        (Pipeline::Now, Stage::Frame),
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); runs.len()];
    let (mut frames, mut distinct, mut bytes) = (0usize, 0usize, 0usize);
    for round in 0..rounds {
        // The same walk for all: each run its own room from the same
        // seed, stepped together; the two pipelines' frames are compared
        // tick by tick.
        let mut rooms: Vec<Room> = runs
            .iter()
            .map(|_| Room::new(players, moving, radius))
            .collect();
        let mut sums = vec![0u64; runs.len()];
        let mut sinks: Vec<Vec<Bytes>> = vec![Vec::new(); runs.len()];
        for t in 0..ticks {
            // Each tick a different run goes first: none gets the warmer
            // cache every time.
            for k in 0..runs.len() {
                let r = (k + t) % runs.len();
                let (pipeline, stage) = runs[r];
                rooms[r].simulate();
                sinks[r].clear();
                sums[r] += rooms[r].publish(pipeline, stage, &mut sinks[r]);
            }
            assert_eq!(sinks[4], sinks[5], "the frames of tick {t} differ");
            if round == 0 {
                frames += sinks[5].len();
                distinct += rooms[5].frames.len();
                bytes += sinks[5].iter().map(Bytes::len).sum::<usize>();
            }
        }
        let per = (ticks * players) as f64;
        for (r, sum) in results.iter_mut().zip(&sums) {
            r.push(*sum as f64 / per);
        }
    }
    println!(
        "per tick: {:.1} frames sent, {:.1} distinct, {:.0} bytes sent",
        frames as f64 / ticks as f64,
        distinct as f64 / ticks as f64,
        bytes as f64 / ticks as f64
    );
    let m: Vec<f64> = results.iter_mut().map(|r| median(r)).collect();
    println!("ns per member per tick (median of {rounds} rounds)");
    println!(
        "{:<8} {:>8} {:>8} {:>12} {:>18}",
        "", "query", "diff", "query+diff", "query+diff+frame"
    );
    for (name, q, d, f) in [("plain", m[0], m[2], m[4]), ("now", m[1], m[3], m[5])] {
        println!(
            "{:<8} {:>8.1} {:>8.1} {:>12.1} {:>18.1}",
            name,
            q,
            d - q,
            d,
            f
        );
    }
    let change = |now: f64, plain: f64| 100.0 * (now / plain - 1.0);
    println!(
        "{:<8} {:>7.0}% {:>7.0}% {:>11.0}% {:>17.0}%",
        "change",
        change(m[1], m[0]),
        change(m[3] - m[1], m[2] - m[0]),
        change(m[3], m[2]),
        change(m[5], m[4])
    );
}
