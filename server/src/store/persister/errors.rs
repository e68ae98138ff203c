//! Why a durable op, a load or a flush failed: the errors callers branch
//! on.

use std::time::Duration;

use crate::store::{DecodeError, Rejection};

/// Why a durable op (or a load) failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DurableError {
    /// The op itself is malformed. Nothing was sent.
    #[error("invalid durable op: {0}")]
    Invalid(String),
    /// The store refused it (not enough currency, no such player, ...).
    /// Nothing changed.
    #[error("refused: {0}")]
    Rejected(Rejection),
    /// The store is down, not ready yet, or overloaded. Nothing was sent,
    /// nothing changed; try again later.
    #[error("store unavailable, nothing was written: {0}")]
    Unavailable(String),
    /// Sent, but no answer in time (or the connection broke): it may or may
    /// not have been applied. Retrying the same op (same id) is safe: it is
    /// applied at most once. A caller that must know reloads the profile.
    #[error("no acknowledgement, the write may or may not have been applied: {0}")]
    InDoubt(String),
    /// A stored document cannot be read (reported with its id).
    #[error("bad document {0}")]
    BadDocument(DecodeError),
    /// The store answered with an error. Nothing changed.
    #[error("store error: {0}")]
    Failed(String),
    /// The persister has shut down.
    #[error("the persister has shut down")]
    ShutDown,
}

impl DurableError {
    /// The `result` label of the durable-op metrics.
    pub(super) fn label(&self) -> &'static str {
        match self {
            DurableError::Invalid(_) => "invalid",
            DurableError::Rejected(Rejection::Fenced(_)) => "fenced",
            DurableError::Rejected(_) => "rejected",
            DurableError::Unavailable(_) => "unavailable",
            DurableError::InDoubt(_) => "in_doubt",
            DurableError::BadDocument(_) => "bad_document",
            DurableError::Failed(_) => "failed",
            DurableError::ShutDown => "shut_down",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FlushError {
    #[error("flush not done within {after:?} ({dirty_keys} keys waiting; last store error: {last_error})")]
    Timeout {
        after: Duration,
        dirty_keys: usize,
        last_error: String,
    },
    #[error("the persister has shut down")]
    ShutDown,
}
