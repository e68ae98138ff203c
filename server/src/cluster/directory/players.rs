//! Players: which shard holds each player's socket, which session, which
//! room and resume token, so one player has one seat cluster-wide.

use std::collections::HashMap;

use super::scripts::{CLAIM_PLAYER, RELEASE_PLAYER, UPDATE_PLAYER};
use super::{unix_ms, Directory, PlayerEntry, Result, ShardId};

/// Who held a player before a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousHolder {
    pub shard: ShardId,
    pub session: String,
    /// The room the player was seated in there; empty: none.
    pub room: String,
}

impl Directory {
    /// This shard's `session` takes `player` over (a login or a resume).
    /// Atomic: of two logins anywhere, the later learns the earlier's
    /// shard and session, to tell that shard to drop the old seat. Waits
    /// up to `cluster.redis_wait_ms` for Redis.
    pub async fn claim_player(
        &self,
        player: &str,
        session: &str,
    ) -> Result<Option<PreviousHolder>> {
        self.waiting(|| self.try_claim_player(player, session))
            .await
    }

    async fn try_claim_player(
        &self,
        player: &str,
        session: &str,
    ) -> Result<Option<PreviousHolder>> {
        let key = self.key(&["player", player]);
        let shard = self.shard().to_string();
        let session = session.to_string();
        let ttl = self.settings().player_ttl.as_millis() as u64;
        let mut script = CLAIM_PLAYER.prepare_invoke();
        script
            .key(key)
            .arg(shard)
            .arg(session)
            .arg("")
            .arg("")
            .arg(unix_ms())
            .arg(ttl);
        let (prev_shard, prev_session, prev_room): (String, String, String) =
            self.run("claim_player", &script).await?;
        Ok(ShardId::new(&prev_shard).ok().map(|shard| PreviousHolder {
            shard,
            session: prev_session,
            room: prev_room,
        }))
    }

    /// Record the room (empty: none) and resume token id of `player`,
    /// and refresh its TTL, if this shard's `session` still holds it.
    /// Returns false if another session took the player over.
    pub async fn update_player(
        &self,
        player: &str,
        session: &str,
        room: &str,
        resume: &str,
    ) -> Result<bool> {
        let key = self.key(&["player", player]);
        let shard = self.shard().to_string();
        let (session, room, resume) = (session.to_string(), room.to_string(), resume.to_string());
        let ttl = self.settings().player_ttl.as_millis() as u64;
        let mut script = UPDATE_PLAYER.prepare_invoke();
        script
            .key(key)
            .arg(shard)
            .arg(session)
            .arg("room")
            .arg(room)
            .arg("resume")
            .arg(resume)
            .arg("updated_at")
            .arg(unix_ms())
            .arg(ttl);
        let updated: i64 = self.run("update_player", &script).await?;
        Ok(updated == 1)
    }

    /// Where `player` is, if anywhere.
    pub async fn player(&self, player: &str) -> Result<Option<PlayerEntry>> {
        let key = self.key(&["player", player]);
        let hash: HashMap<String, String> =
            self.run("player", redis::cmd("HGETALL").arg(key)).await?;
        Ok(PlayerEntry::from_hash(&hash))
    }

    /// Forget `player` if this shard's `session` still holds it (a logout,
    /// or a seat whose grace ended). Returns whether it did.
    pub async fn release_player(&self, player: &str, session: &str) -> Result<bool> {
        let key = self.key(&["player", player]);
        let shard = self.shard().to_string();
        let session = session.to_string();
        let mut script = RELEASE_PLAYER.prepare_invoke();
        script.key(key).arg(shard).arg(session);
        let released: i64 = self.run("release_player", &script).await?;
        Ok(released == 1)
    }
}
