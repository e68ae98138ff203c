//! A uniform spatial grid for interest management.
//!
//! Cells are `view_radius` wide, so everything within the radius of a point
//! lies in the 3×3 cells around it. Each cell keeps its entities' positions,
//! so a query reads no other structure.

use protocol::msg::EntityId;

use super::FastMap;

pub type Cell = (i32, i32);

pub struct Grid {
    cell_size: f32,
    cells: FastMap<Cell, Vec<(EntityId, f32, f32)>>,
}

impl Grid {
    pub fn new(cell_size: f32) -> Grid {
        Grid {
            cell_size,
            cells: FastMap::default(),
        }
    }

    pub fn cell_of(&self, x: f32, y: f32) -> Cell {
        (
            (x / self.cell_size).floor() as i32,
            (y / self.cell_size).floor() as i32,
        )
    }

    pub fn insert(&mut self, id: EntityId, x: f32, y: f32) -> Cell {
        let cell = self.cell_of(x, y);
        self.cells.entry(cell).or_default().push((id, x, y));
        cell
    }

    pub fn remove(&mut self, id: EntityId, cell: Cell) {
        if let Some(entries) = self.cells.get_mut(&cell) {
            entries.retain(|(e, _, _)| *e != id);
            if entries.is_empty() {
                self.cells.remove(&cell);
            }
        }
    }

    /// Record a new position; returns the entity's (possibly new) cell.
    pub fn update(&mut self, id: EntityId, from: Cell, x: f32, y: f32) -> Cell {
        let to = self.cell_of(x, y);
        if to == from {
            if let Some(entry) = self
                .cells
                .get_mut(&from)
                .and_then(|entries| entries.iter_mut().find(|(e, _, _)| *e == id))
            {
                entry.1 = x;
                entry.2 = y;
            }
            return from;
        }
        self.remove(id, from);
        self.insert(id, x, y)
    }

    /// Every entity within `radius` of `(x, y)`, in ascending id order.
    pub fn query(&self, x: f32, y: f32, radius: f32, out: &mut Vec<EntityId>) {
        out.clear();
        let (cx, cy) = self.cell_of(x, y);
        let reach = (radius / self.cell_size).ceil() as i32;
        let r2 = radius * radius;
        for gx in cx - reach..=cx + reach {
            for gy in cy - reach..=cy + reach {
                let Some(entries) = self.cells.get(&(gx, gy)) else {
                    continue;
                };
                for &(id, ex, ey) in entries {
                    let (dx, dy) = (ex - x, ey - y);
                    if dx * dx + dy * dy <= r2 {
                        out.push(id);
                    }
                }
            }
        }
        out.sort_unstable();
    }
}

/// The candidates around each cell, gathered once per tick: every member
/// in a cell looks at the same neighbouring cells, so they are read,
/// merged and sorted once for all of them (a room of 100 in a handful of
/// cells does a handful of gathers instead of 100 queries with a sort
/// each). Valid while no entity moves: clear it when positions change.
///
/// When every occupied cell lies within one neighbourhood's width (a
/// room whose players stand within a few view radii of each other, as
/// on the default 1000 x 1000 map), each neighbourhood holds most of the
/// room anyway: the whole room is gathered and sorted once and every
/// query reads it, instead of one sort per occupied cell (the sorts were
/// over a third of the query's time in a room of 100 on 9 cells).
#[derive(Default)]
pub struct Neighbourhoods {
    /// Cell -> its candidates' range in `entries`.
    ranges: FastMap<Cell, (u32, u32)>,
    /// The candidates of every gathered cell, each range in ascending id
    /// order.
    entries: Vec<(EntityId, f32, f32)>,
    span: Span,
}

/// Which candidates the queries of this tick read.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Span {
    /// Not decided yet (decided at the first query).
    #[default]
    Undecided,
    /// Each cell's own neighbourhood.
    PerCell,
    /// The whole room: this range of `entries`.
    Whole(u32, u32),
    /// The whole room, and everyone within the radius of everyone (the
    /// room's bounding box has a diagonal shorter than the radius): every
    /// query finds this range of `entries`, with no distance to check.
    Everyone(u32, u32),
}

impl Neighbourhoods {
    pub fn clear(&mut self) {
        self.ranges.clear();
        self.entries.clear();
        self.span = Span::Undecided;
    }

    /// Read each cell's own neighbourhood until the next clear, however
    /// the room lies: the way before the whole-room read, for
    /// `cargo bench -p server --bench view` to compare with.
    #[doc(hidden)]
    pub fn per_cell_only(&mut self) {
        self.span = Span::PerCell;
    }
}

impl Grid {
    /// [`Grid::query`], through `cache`: the same result, in ascending id
    /// order.
    pub fn query_cached(
        &self,
        x: f32,
        y: f32,
        radius: f32,
        cache: &mut Neighbourhoods,
        out: &mut Vec<EntityId>,
    ) {
        out.clear();
        let reach = (radius / self.cell_size).ceil() as i32;
        if cache.span == Span::Undecided {
            cache.span = self.span(reach, radius, &mut cache.entries);
        }
        if let Span::Everyone(start, end) = cache.span {
            let everyone = &cache.entries[start as usize..end as usize];
            out.extend(everyone.iter().map(|e| e.0));
            return;
        }
        let cell = self.cell_of(x, y);
        let cached = match cache.span {
            Span::Whole(start, end) => Some((start, end)),
            _ => cache.ranges.get(&cell).copied(),
        };
        let (start, end) = match cached {
            Some(range) => range,
            None => {
                let start = cache.entries.len();
                let (cx, cy) = cell;
                for gx in cx - reach..=cx + reach {
                    for gy in cy - reach..=cy + reach {
                        if let Some(entries) = self.cells.get(&(gx, gy)) {
                            cache.entries.extend_from_slice(entries);
                        }
                    }
                }
                cache.entries[start..].sort_unstable_by_key(|e| e.0);
                let range = (start as u32, cache.entries.len() as u32);
                cache.ranges.insert(cell, range);
                range
            }
        };
        let r2 = radius * radius;
        // Without a branch per candidate (about half of them are in view,
        // at random): every id is written, and the end moves past it only
        // when it is within the radius.
        let candidates = &cache.entries[start as usize..end as usize];
        out.resize(candidates.len(), 0);
        let mut n = 0;
        for &(id, ex, ey) in candidates {
            let (dx, dy) = (ex - x, ey - y);
            out[n] = id;
            n += usize::from(dx * dx + dy * dy <= r2);
        }
        out.truncate(n);
    }

    /// [`Span::Whole`] (the room gathered into `entries`, in ascending id
    /// order) when every occupied cell lies within one block of
    /// `2 * reach + 1` cells a side, [`Span::Everyone`] when moreover the
    /// room fits within `radius` of each of its points; else
    /// [`Span::PerCell`]. Either way a query finds the same (the whole
    /// room holds every neighbourhood); only the cost differs.
    fn span(&self, reach: i32, radius: f32, entries: &mut Vec<(EntityId, f32, f32)>) -> Span {
        let width = 2 * i64::from(reach);
        let mut cells = self.cells.keys();
        let Some(&(x0, y0)) = cells.next() else {
            return Span::PerCell;
        };
        let (mut lo, mut hi) = ((x0, y0), (x0, y0));
        for &(x, y) in cells {
            lo = (lo.0.min(x), lo.1.min(y));
            hi = (hi.0.max(x), hi.1.max(y));
            if i64::from(hi.0) - i64::from(lo.0) > width
                || i64::from(hi.1) - i64::from(lo.1) > width
            {
                return Span::PerCell;
            }
        }
        let start = entries.len();
        for cell in self.cells.values() {
            entries.extend_from_slice(cell);
        }
        entries[start..].sort_unstable_by_key(|e| e.0);
        let (start, end) = (start as u32, entries.len() as u32);
        if within_one_radius(&entries[start as usize..], radius) {
            Span::Everyone(start, end)
        } else {
            Span::Whole(start, end)
        }
    }
}

/// Whether every two of `points` lie within `radius` of each other, as
/// the queries' own test would find (`dx * dx + dy * dy <= r * r` in
/// `f32`): their bounding box's diagonal is shorter than the radius by a
/// margin far above `f32` rounding, so no pair the box holds could be
/// found out of view by that test.
fn within_one_radius(points: &[(EntityId, f32, f32)], radius: f32) -> bool {
    let Some(&(_, x0, y0)) = points.first() else {
        return true;
    };
    let (mut lo, mut hi) = ((x0, y0), (x0, y0));
    for &(_, x, y) in points {
        if !(x.is_finite() && y.is_finite()) {
            // Never in anyone's view by the queries' test.
            return false;
        }
        lo = (lo.0.min(x), lo.1.min(y));
        hi = (hi.0.max(x), hi.1.max(y));
    }
    let (w, h) = (
        f64::from(hi.0) - f64::from(lo.0),
        f64::from(hi.1) - f64::from(lo.1),
    );
    let r = f64::from(radius);
    w * w + h * h <= r * r * (1.0 - 1e-4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_finds_exactly_what_is_within_the_radius() {
        let mut g = Grid::new(100.0);
        let a = g.insert(1, 50.0, 50.0);
        g.insert(2, 140.0, 50.0);
        g.insert(3, 151.0, 50.0);
        g.insert(4, 50.0, 349.0);
        let mut out = Vec::new();
        g.query(50.0, 50.0, 100.0, &mut out);
        assert_eq!(out, vec![1, 2]);
        // Moving across a cell boundary keeps the grid consistent.
        let a = g.update(1, a, 250.0, 50.0);
        assert_eq!(a, (2, 0));
        g.query(200.0, 50.0, 60.0, &mut out);
        assert_eq!(out, vec![1, 2, 3]);
        g.remove(1, a);
        g.query(200.0, 50.0, 60.0, &mut out);
        assert_eq!(out, vec![2, 3]);
    }

    #[test]
    fn a_cached_query_finds_what_a_query_finds() {
        let mut g = Grid::new(50.0);
        // A deterministic scatter over a few cells, some on cell edges.
        let mut positions = Vec::new();
        for id in 0..200u32 {
            let x = ((id * 37) % 300) as f32 - 20.0;
            let y = ((id * 91) % 260) as f32 - 10.0;
            g.insert(id, x, y);
            positions.push((x, y));
        }
        let mut cache = Neighbourhoods::default();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for &(x, y) in &positions {
            g.query(x, y, 50.0, &mut a);
            g.query_cached(x, y, 50.0, &mut cache, &mut b);
            assert_eq!(a, b, "at ({x}, {y})");
        }
        // A radius wider than a cell reaches further cells.
        cache.clear();
        g.query(100.0, 100.0, 120.0, &mut a);
        g.query_cached(100.0, 100.0, 120.0, &mut cache, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn negative_and_edge_coordinates_land_in_cells() {
        let mut g = Grid::new(10.0);
        assert_eq!(g.cell_of(-0.5, 0.0), (-1, 0));
        g.insert(9, 0.0, 0.0);
        let mut out = Vec::new();
        g.query(-5.0, 0.0, 5.0, &mut out);
        assert_eq!(out, vec![9]);
    }

    #[test]
    fn a_cached_query_over_the_whole_room_or_per_cell_finds_what_a_query_finds() {
        // Rooms within one radius (everyone in view), packed into a few
        // cells (read as a whole) and spread over many (read per cell),
        // with random radii and positions; the same cache reused across
        // ticks, as a room reuses it.
        let mut seed = 0x2545_f491_u64;
        let mut unit = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32
        };
        let mut cache = Neighbourhoods::default();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut spans = (0, 0, 0);
        for round in 0..300 {
            let radius = 50.0 + unit() * 400.0;
            let mut g = Grid::new(radius);
            // Within a box of diagonal 0.85 radius, within 3 cells (-1 to
            // 1) a side, or over about 20.
            let extent = radius * [0.6, 2.0, 20.0][round % 3];
            let mut positions = Vec::new();
            for id in 0..(1 + (unit() * 150.0) as u32) {
                // Ids out of order, as joins and leaves leave them.
                let id = id.wrapping_mul(2_654_435_761) >> 8;
                let (x, y) = (unit() * extent - extent / 4.0, unit() * extent);
                g.insert(id, x, y);
                positions.push((x, y));
            }
            cache.clear();
            for &(x, y) in &positions {
                g.query(x, y, radius, &mut a);
                g.query_cached(x, y, radius, &mut cache, &mut b);
                assert_eq!(a, b, "round {round} at ({x}, {y})");
            }
            match cache.span {
                Span::Everyone(..) => spans.0 += 1,
                Span::Whole(..) => spans.1 += 1,
                _ => spans.2 += 1,
            }
        }
        assert!(
            spans.0 > 50 && spans.1 > 50 && spans.2 > 50,
            "every way was taken: {spans:?}"
        );
    }

    #[test]
    fn everyone_in_view_is_decided_with_a_margin_and_never_wrongly() {
        let p = |x: f32, y: f32| (0, x, y);
        // A diagonal of 0.99 radius: everyone is in view.
        assert!(within_one_radius(&[p(0.0, 0.0), p(70.0, 70.0)], 100.0));
        assert!(within_one_radius(&[p(5.0, 5.0)], 1.0));
        assert!(within_one_radius(&[], 1.0));
        // Exactly one radius apart, or beyond: each distance is checked.
        assert!(!within_one_radius(&[p(0.0, 0.0), p(100.0, 0.0)], 100.0));
        assert!(!within_one_radius(&[p(0.0, 0.0), p(0.0, 100.1)], 100.0));
        // Two points in view of each other need not make a box that is.
        assert!(!within_one_radius(
            &[p(0.0, 0.0), p(80.0, 10.0), p(10.0, 80.0)],
            100.0
        ));
        assert!(!within_one_radius(&[p(0.0, f32::NAN)], 100.0));
        assert!(!within_one_radius(&[p(0.0, 0.0), p(1.0, f32::NAN)], 100.0));
        // Just inside the margin, the queries' own test agrees: every
        // pair of the box is within the radius.
        let r = 1000.0f32;
        let side = r / 2f32.sqrt() * 0.99993;
        let corners = [p(0.0, 0.0), p(side, side), p(0.0, side), p(side, 0.0)];
        assert!(within_one_radius(&corners, r));
        for a in &corners {
            for b in &corners {
                let (dx, dy) = (a.1 - b.1, a.2 - b.2);
                assert!(dx * dx + dy * dy <= r * r);
            }
        }
    }
}
