//! The panic boundary, the one every supervisor and actor uses: a closure
//! ([`catch`]: actor handlers and continuations) or a future
//! ([`catch_future`]: the task supervisor's children), with the panic's
//! message as the error ([`panic_text`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

/// The panic boundary every actor handler and continuation runs behind
/// (rooms: `Room::guarded`, sessions: `Session::guarded`): `f`'s result, or
/// the panic's message. What the actor does after a panic (restart from a
/// snapshot, close the connection) is its own.
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|payload| panic_text(payload.as_ref()))
}

/// [`catch`] for a future: its output, or the message of a panic in any
/// of its polls. The caller drops the future after a panic and never polls
/// it again, so no invariant broken inside it can be observed.
pub fn catch_future<F: Future>(future: F) -> impl Future<Output = Result<F::Output, String>> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .map(|ended| ended.map_err(|payload| panic_text(payload.as_ref())))
}

/// A panic payload as text (`panic!` with a literal or a format string;
/// anything else is named, not shown).
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_text_reads_both_payload_kinds() {
        let payload = std::panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        assert_eq!(panic_text(payload.as_ref()), "boom 7");
        let payload = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_text(payload.as_ref()), "plain");
        let payload = std::panic::catch_unwind(|| std::panic::panic_any(7_u8)).unwrap_err();
        assert_eq!(panic_text(payload.as_ref()), "non-string panic payload");
    }

    #[test]
    fn catch_returns_the_result_or_the_message() {
        assert_eq!(catch(|| 1 + 1), Ok(2));
        assert_eq!(
            catch(|| -> u8 { panic!("no {}", "luck") }),
            Err("no luck".into())
        );
    }

    #[tokio::test]
    async fn catch_future_catches_a_panic_in_a_later_poll() {
        assert_eq!(catch_future(async { 3 }).await, Ok(3));
        let later = async {
            tokio::task::yield_now().await;
            panic!("after a yield");
        };
        assert_eq!(
            catch_future(later).await,
            Err::<(), _>("after a yield".into())
        );
    }
}
