//! The registry of supervised children ([`Tasks`]): what `/healthz` and
//! `/admin/tasks` show, and where fault injection finds a child by name.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;

use super::children::{ChildState, Restart};

/// One child's entry, shared by its supervision loop and the registry.
pub(super) struct Cell {
    pub(super) restart: Restart,
    pub(super) state: Mutex<ChildState>,
    pub(super) restarts: AtomicU64,
    pub(super) panics: AtomicU64,
    /// Set by fault injection; the child panics at its next poll.
    pub(super) fault: Notify,
}

/// One child as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChildReport {
    pub restart: Restart,
    pub state: ChildState,
    pub restarts: u64,
    pub panics: u64,
}

/// The registry of supervised children: their state for `/healthz`, and
/// fault injection by name. One per shard, shared by every supervisor in
/// it (the persister's included).
#[derive(Clone, Default)]
pub struct Tasks {
    children: Arc<Mutex<BTreeMap<String, Arc<Cell>>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no task named {name:?} (tasks: {known})")]
pub struct UnknownTask {
    pub name: String,
    pub known: String,
}

impl Tasks {
    /// A child's entry; a second child of the same name replaces the
    /// first's.
    pub(super) fn register(&self, name: &str, restart: Restart) -> Arc<Cell> {
        let cell = Arc::new(Cell {
            restart,
            state: Mutex::new(ChildState::Up),
            restarts: AtomicU64::new(0),
            panics: AtomicU64::new(0),
            fault: Notify::new(),
        });
        self.children.lock().insert(name.to_string(), cell.clone());
        cell
    }

    /// Every child's state, by name.
    pub fn states(&self) -> BTreeMap<String, ChildState> {
        self.children
            .lock()
            .iter()
            .map(|(name, cell)| (name.clone(), *cell.state.lock()))
            .collect()
    }

    /// Every child in full, by name.
    pub fn report(&self) -> BTreeMap<String, ChildReport> {
        self.children
            .lock()
            .iter()
            .map(|(name, cell)| {
                let report = ChildReport {
                    restart: cell.restart,
                    state: *cell.state.lock(),
                    restarts: cell.restarts.load(Ordering::Relaxed),
                    panics: cell.panics.load(Ordering::Relaxed),
                };
                (name.clone(), report)
            })
            .collect()
    }

    pub fn state(&self, name: &str) -> Option<ChildState> {
        self.children.lock().get(name).map(|c| *c.state.lock())
    }

    pub fn restarts(&self, name: &str) -> Option<u64> {
        self.children
            .lock()
            .get(name)
            .map(|c| c.restarts.load(Ordering::Relaxed))
    }

    /// Whether some child was given up.
    pub fn any_failed(&self) -> bool {
        self.children
            .lock()
            .values()
            .any(|c| *c.state.lock() == ChildState::Failed)
    }

    /// Make `name` panic at its next poll (at once if it is running, or as
    /// soon as its next incarnation starts). Returns its state now.
    pub fn inject_panic(&self, name: &str) -> Result<ChildState, UnknownTask> {
        let children = self.children.lock();
        let Some(cell) = children.get(name) else {
            return Err(UnknownTask {
                name: name.to_string(),
                known: children.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        tracing::warn!(child = name, "injecting a panic into task");
        cell.fault.notify_one();
        let state = *cell.state.lock();
        Ok(state)
    }
}
