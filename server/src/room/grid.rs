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
#[derive(Default)]
pub struct Neighbourhoods {
    /// Cell -> its candidates' range in `entries`.
    ranges: FastMap<Cell, (u32, u32)>,
    /// The candidates of every gathered cell, each range in ascending id
    /// order.
    entries: Vec<(EntityId, f32, f32)>,
}

impl Neighbourhoods {
    pub fn clear(&mut self) {
        self.ranges.clear();
        self.entries.clear();
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
        let cell = self.cell_of(x, y);
        let (start, end) = match cache.ranges.get(&cell) {
            Some(&range) => range,
            None => {
                let start = cache.entries.len();
                let (cx, cy) = cell;
                let reach = (radius / self.cell_size).ceil() as i32;
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
}
