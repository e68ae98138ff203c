//! Operation ids that stay unique across restarts and shards.
//!
//! Every durable op carries an id the store remembers (the trade and op
//! ledgers), and those ledgers outlive the process. An id built from a
//! counter that starts again at 1 in every process (a session number, an
//! item number) would meet its namesake from an earlier process and be
//! taken for a replay. So every id a process mints is scoped by a nonce:
//!
//! - [`process_nonce`]: drawn once per process (milliseconds since the
//!   epoch and 64 random bits, like a ULID), so two boots, or two shards,
//!   never share it. Session ids embed it.
//! - [`fresh_nonce`]: a new one on every call, e.g. for a room document
//!   that is created (or rebuilt) and numbers its items from 1 again.

use std::sync::OnceLock;

/// A nonce: 12 hex digits of milliseconds since the epoch, then 16 of
/// randomness. Sorts by creation time; unique without coordination.
pub fn fresh_nonce() -> String {
    let ms = super::unix_ms().max(0) as u64 & 0xffff_ffff_ffff;
    format!("{ms:012x}{:016x}", rand::random::<u64>())
}

/// This process's nonce, drawn on first use.
pub fn process_nonce() -> &'static str {
    static NONCE: OnceLock<String> = OnceLock::new();
    NONCE.get_or_init(fresh_nonce)
}

/// The op scope of a session id: a session resumed from another carries
/// the scope of the first session of the chain (`<scope>/<own id>`), so a
/// request retried across a resume keeps its op id.
pub fn op_scope_of(session_id: &str) -> &str {
    session_id.split('/').next().unwrap_or(session_id)
}

/// The id of session number `n` of this process, resumed from the session
/// `resumed_from` (its id, from a verified resume token) if any.
pub fn session_id(n: u64, resumed_from: Option<&str>) -> String {
    let own = format!("s-{}-{n:x}", process_nonce());
    match resumed_from.map(op_scope_of).filter(|s| is_minted_scope(s)) {
        Some(scope) => format!("{scope}/{own}"),
        // A token from before scopes had nonces (`s-<n>`) names a scope
        // that other processes reused: start a fresh one.
        None => own,
    }
}

/// Whether `scope` is `s-<nonce>-<hex>`, as [`session_id`] mints them.
fn is_minted_scope(scope: &str) -> bool {
    let Some((nonce, n)) = scope.strip_prefix("s-").and_then(|r| r.split_once('-')) else {
        return false;
    };
    let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    nonce.len() == 28 && hex(nonce) && hex(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_differ_and_session_ids_carry_their_scope() {
        assert_ne!(fresh_nonce(), fresh_nonce());
        assert_eq!(fresh_nonce().len(), 28);
        assert_eq!(process_nonce(), process_nonce());
        let first = session_id(1, None);
        assert!(first.starts_with("s-") && first.contains(process_nonce()));
        assert_eq!(op_scope_of(&first), first);
        let resumed = session_id(2, Some(&first));
        assert_ne!(resumed, first);
        assert_eq!(op_scope_of(&resumed), first);
        // A resume of a resume keeps the first session's scope.
        let again = session_id(3, Some(&resumed));
        assert_eq!(op_scope_of(&again), first);
        assert_eq!(again.matches('/').count(), 1);
        // Ids from before nonces do not lend their (reused) scope.
        let legacy = session_id(4, Some("s-1"));
        assert_eq!(op_scope_of(&legacy), legacy);
        assert!(!legacy.contains("s-1/"));
    }
}
