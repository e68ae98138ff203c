//! How many immediate writes the current thread may still make: a room's
//! tick (and an edge's fan-out of a remote room's tick) opens a budget of
//! `rooms.immediate_writes_per_tick`, so that a huge room does not spend
//! its whole tick writing to its members' sockets on its own thread. Past
//! the budget, frames are queued and their sessions write them, on the
//! sessions' threads, as before immediate writes. Outside a budget (a
//! session's own frames) there is no limit. This is tokio's cooperative
//! budget, for sockets: a thread-local count, opened and restored by a
//! guard.

use std::cell::Cell;

thread_local! {
    /// Writes left in the open budget; `None` when no budget is open.
    static LEFT: Cell<Option<u32>> = const { Cell::new(None) };
}

/// Allow `writes` immediate writes on this thread until the guard drops
/// (then the budget that was open before, if any, is back).
pub fn immediate_budget(writes: u32) -> BudgetGuard {
    BudgetGuard {
        previous: LEFT.replace(Some(writes)),
    }
}

/// Closes the budget [`immediate_budget`] opened.
#[must_use = "the budget closes when the guard drops"]
pub struct BudgetGuard {
    previous: Option<u32>,
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        LEFT.set(self.previous);
    }
}

/// Take one immediate write from the open budget; false when it is spent.
pub(super) fn take() -> bool {
    match LEFT.get() {
        None => true,
        Some(0) => false,
        Some(n) => {
            LEFT.set(Some(n - 1));
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_counts_down_nests_and_closes() {
        assert!(take(), "no budget open: no limit");
        {
            let _outer = immediate_budget(2);
            assert!(take());
            {
                let _inner = immediate_budget(0);
                assert!(!take());
            }
            // The outer budget is back with what it had left.
            assert!(take());
            assert!(!take());
        }
        assert!(take(), "closed: no limit again");
    }
}
