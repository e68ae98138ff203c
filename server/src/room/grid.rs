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
    fn negative_and_edge_coordinates_land_in_cells() {
        let mut g = Grid::new(10.0);
        assert_eq!(g.cell_of(-0.5, 0.0), (-1, 0));
        g.insert(9, 0.0, 0.0);
        let mut out = Vec::new();
        g.query(-5.0, 0.0, 5.0, &mut out);
        assert_eq!(out, vec![9]);
    }
}
