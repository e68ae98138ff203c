//! The circuit breaker in front of the store: the health flag.
//!
//! Closed (healthy): durable calls go through. A call that finds the store
//! unavailable, breaks mid-flight or gets no answer in time opens it
//! (unhealthy): durable calls then fail at once with
//! [`DurableError::Unavailable`], nothing sent, while the flusher keeps
//! probing (a flush, or a ping with nothing to flush) with backoff; the
//! first success closes it again. The breaker starts open: the store has
//! not been reached yet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::DurableError;
use crate::store::{metric, OpError, Rejection, StoreError};

/// The health flag and the last store error (shown in `/healthz` and in
/// every fail-fast error).
pub(super) struct Breaker {
    healthy: AtomicBool,
    last_error: Mutex<String>,
    /// The flag went down since the store was first reached, so its coming
    /// back is news worth a log line.
    was_down: AtomicBool,
}

impl Breaker {
    /// Open: the store has not been reached yet.
    pub(super) fn new() -> Breaker {
        Breaker {
            healthy: AtomicBool::new(false),
            last_error: Mutex::new("not connected yet".into()),
            was_down: AtomicBool::new(false),
        }
    }

    pub(super) fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub(super) fn last_error(&self) -> String {
        self.last_error.lock().clone()
    }

    /// Remember `error` without moving the flag (a failure that says
    /// nothing about the store as a whole, or one while it is down anyway).
    pub(super) fn record_error(&self, error: &str) {
        *self.last_error.lock() = error.to_string();
    }

    /// Close (`healthy`) or open the breaker; a change is logged once, a
    /// recovery only if the store had been reached before.
    pub(super) fn set(&self, healthy: bool, error: Option<&str>, backend: &str) {
        if let Some(error) = error {
            self.record_error(error);
        }
        let was = self.healthy.swap(healthy, Ordering::AcqRel);
        if was != healthy {
            if healthy {
                // The first "healthy" is the store being reached at start
                // (logged as "store ready"), not a recovery.
                if self.was_down.swap(false, Ordering::AcqRel) {
                    tracing::info!(backend, "store is answering again");
                }
            } else {
                self.was_down.store(true, Ordering::Release);
                tracing::warn!(
                    backend,
                    error = error.unwrap_or(""),
                    "store is down: durable writes fail fast, volatile writes queue"
                );
            }
        }
        metrics::gauge!(metric::HEALTHY).set(if healthy { 1.0 } else { 0.0 });
    }

    /// Fail fast while open.
    pub(super) fn admit(&self) -> Result<(), DurableError> {
        if self.healthy() {
            return Ok(());
        }
        Err(DurableError::Unavailable(format!(
            "store is down, retrying in the background: {}",
            self.last_error.lock()
        )))
    }

    /// What a durable store call's answer (`None`: none within `timeout`)
    /// means for the caller, opening the breaker when the store itself is
    /// at fault (unavailable, broken mid-call, silent). A refusal or a bad
    /// document is the op's problem, not the store's.
    pub(super) fn judge<T>(
        &self,
        answer: Option<Result<T, OpError>>,
        timeout: Duration,
        backend: &str,
    ) -> Result<T, DurableError> {
        let Some(answer) = answer else {
            let e = format!("no answer within {timeout:?}");
            self.set(false, Some(&e), backend);
            return Err(DurableError::InDoubt(e));
        };
        match answer {
            Ok(value) => Ok(value),
            Err(OpError::Rejected(why)) => Err(DurableError::Rejected(why)),
            Err(OpError::Store(StoreError::Fenced(f))) => {
                Err(DurableError::Rejected(Rejection::Fenced(f)))
            }
            Err(OpError::InDoubt(e)) => {
                self.set(false, Some(&e), backend);
                Err(DurableError::InDoubt(e))
            }
            Err(OpError::Store(e)) => match e {
                StoreError::Unavailable(m) => {
                    self.set(false, Some(&m), backend);
                    Err(DurableError::Unavailable(m))
                }
                StoreError::Interrupted(m) => {
                    self.set(false, Some(&m), backend);
                    Err(DurableError::InDoubt(m))
                }
                StoreError::BadDocument(d) => Err(DurableError::BadDocument(d)),
                StoreError::Backend(m) | StoreError::Config(m) => Err(DurableError::Failed(m)),
                StoreError::Fenced(f) => Err(DurableError::Rejected(Rejection::Fenced(f))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Rejection;

    const T: Duration = Duration::from_millis(5);

    #[test]
    fn it_starts_open_and_fails_fast_until_closed() {
        let b = Breaker::new();
        assert!(!b.healthy());
        let err = b.admit().unwrap_err();
        assert!(
            matches!(&err, DurableError::Unavailable(m) if m.contains("not connected yet")),
            "{err:?}"
        );
        b.set(true, None, "test");
        assert_eq!(b.admit(), Ok(()));
    }

    #[test]
    fn the_store_at_fault_opens_it_and_the_op_at_fault_does_not() {
        let b = Breaker::new();
        b.set(true, None, "test");
        // The op's problem: the breaker stays closed.
        let nobody = Rejection::NoSuchPlayer("ann".into());
        let refused = b.judge::<()>(Some(Err(OpError::Rejected(nobody.clone()))), T, "test");
        assert_eq!(refused, Err(DurableError::Rejected(nobody)));
        let failed = b.judge::<()>(
            Some(Err(OpError::Store(StoreError::Backend("bug".into())))),
            T,
            "test",
        );
        assert_eq!(failed, Err(DurableError::Failed("bug".into())));
        assert!(b.healthy());
        assert_eq!(b.judge(Some(Ok(7)), T, "test"), Ok(7));
        // The store's: open, with the error kept for the fail-fast message.
        for (answer, expected) in [
            (
                Some(Err(OpError::Store(StoreError::Unavailable(
                    "refused".into(),
                )))),
                DurableError::Unavailable("refused".into()),
            ),
            (
                Some(Err(OpError::Store(StoreError::Interrupted("reset".into())))),
                DurableError::InDoubt("reset".into()),
            ),
            (
                Some(Err(OpError::InDoubt("lost".into()))),
                DurableError::InDoubt("lost".into()),
            ),
            (
                None,
                DurableError::InDoubt(format!("no answer within {T:?}")),
            ),
        ] {
            b.set(true, None, "test");
            assert_eq!(b.judge::<()>(answer, T, "test"), Err(expected.clone()));
            assert!(!b.healthy(), "{expected:?}");
            let DurableError::Unavailable(message) = b.admit().unwrap_err() else {
                panic!("fail fast is Unavailable");
            };
            assert!(message.ends_with(&b.last_error()), "{message}");
        }
    }
}
