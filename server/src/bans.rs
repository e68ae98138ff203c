//! Bans in force on this shard: a table in memory, checked at every
//! `hello` without a store round trip. The store keeps them (`bans`, both
//! backends); the shard loads them at start and every ban or unban made
//! through its admin API updates both. A ban made on another shard of the
//! same store is seen after that shard's next start; in a cluster, every
//! ban and unban is also sent to every connected shard over the tunnel
//! (`/tessera/admin/1`), which puts it in its own table at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use protocol::admin::Ban;

#[derive(Default)]
pub struct Bans {
    by_player: RwLock<HashMap<String, Ban>>,
    loaded: AtomicBool,
}

impl Bans {
    /// Take the stored bans (a ban made here meanwhile stays).
    pub fn load(&self, bans: Vec<Ban>) {
        let mut table = self.by_player.write();
        for ban in bans {
            table.entry(ban.player.clone()).or_insert(ban);
        }
        self.loaded.store(true, Ordering::Release);
    }

    /// Whether the stored bans were read.
    pub fn loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// Put (or replace) a ban.
    pub fn insert(&self, ban: Ban) {
        self.by_player.write().insert(ban.player.clone(), ban);
    }

    /// Lift a player's ban; whether there was one.
    pub fn remove(&self, player: &str) -> bool {
        self.by_player.write().remove(player).is_some()
    }

    /// The ban in force on `player` at `now_ms`, if any. An expired one is
    /// not in force (and is forgotten).
    pub fn in_force(&self, player: &str, now_ms: u64) -> Option<Ban> {
        let ban = self.by_player.read().get(player).cloned()?;
        if ban.until_ms.is_some_and(|until| until <= now_ms) {
            self.by_player.write().remove(player);
            return None;
        }
        Some(ban)
    }

    pub fn len(&self) -> usize {
        self.by_player.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a banned player is told (error 2007): until when and why.
pub fn ban_text(ban: &Ban) -> String {
    let until = ban
        .until_ms
        .map_or("for good".to_string(), |ms| format!("until {ms} (unix ms)"));
    format!("banned {until}: {}", ban.reason)
}

/// Milliseconds since the Unix epoch: what ban times are in.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(player: &str, until_ms: Option<u64>) -> Ban {
        Ban {
            player: player.into(),
            reason: "griefing".into(),
            by: "ops".into(),
            at_ms: 1,
            until_ms,
        }
    }

    #[test]
    fn a_ban_holds_until_it_expires_or_is_lifted() {
        let bans = Bans::default();
        bans.insert(ban("a", None));
        bans.insert(ban("b", Some(1_000)));
        assert!(bans.in_force("a", u64::MAX).is_some(), "forever");
        assert!(bans.in_force("b", 999).is_some());
        assert!(bans.in_force("b", 1_000).is_none(), "expired");
        assert_eq!(bans.len(), 1, "the expired one was forgotten");
        assert!(bans.remove("a"));
        assert!(!bans.remove("a"));
        assert!(bans.in_force("a", 0).is_none());
        assert!(bans.is_empty());
    }
}
