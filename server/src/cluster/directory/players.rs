//! Players: which shard holds each player's socket, which session, which
//! room and resume token, so one player has one seat cluster-wide.

use std::collections::HashMap;

use super::scripts::{CLAIM_CHECKED, CLAIM_PLAYER, REASSERT_PLAYER, RELEASE_PLAYER, UPDATE_PLAYER};
use super::{unix_ms, Directory, PlayerEntry, Result, ShardId};

/// Who held a player before a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousHolder {
    pub shard: ShardId,
    pub session: String,
    /// The room the player was seated in there; empty: none.
    pub room: String,
}

/// What a checked claim came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// This session holds the player now; who held it before, if anyone.
    Taken(Option<PreviousHolder>),
    /// A resume whose session is no longer the player's, nor its token the
    /// current one: the token was used already (by a session that was
    /// welcomed), or a newer login came since. Nothing changed.
    Reused,
}

impl Directory {
    /// This shard's `session` takes `player` over, at a login (`resumes`
    /// `None`) or at a resume of session `resumes` (refused as
    /// [`Claim::Reused`] unless that session is the player's, or the
    /// player has no entry). Atomic, so of two resumes with one token
    /// anywhere in the cluster only one succeeds. The entry keeps the
    /// room the player sits in. Waits up to `cluster.redis_wait_ms`.
    pub async fn claim_player_checked(
        &self,
        player: &str,
        session: &str,
        resumes: Option<&str>,
    ) -> Result<Claim> {
        self.waiting(|| async {
            let mut script = CLAIM_CHECKED.prepare_invoke();
            script
                .key(self.key(&["player", player]))
                .arg(self.shard().to_string())
                .arg(session.to_string())
                .arg(resumes.unwrap_or_default().to_string())
                .arg(unix_ms())
                .arg(self.settings().player_ttl.as_millis() as u64);
            let (status, shard, session, room): (String, String, String, String) =
                self.run("claim_player_checked", &script).await?;
            if status == "reused" {
                return Ok(Claim::Reused);
            }
            Ok(Claim::Taken(ShardId::new(&shard).ok().map(|shard| {
                PreviousHolder {
                    shard,
                    session,
                    room,
                }
            })))
        })
        .await
    }

    /// Set this shard's players marker if it is missing, and say whether it
    /// was: a missing marker means Redis lost what it held (it restarted
    /// without a disk) or the marker outlived its TTL (`player_ttl`), and
    /// this shard's player entries should be written again.
    pub async fn players_marker_missing(&self) -> Result<bool> {
        let key = self.key(&["players_marker", self.shard().as_str()]);
        let ttl = self.settings().player_ttl.as_millis() as u64;
        let set: Option<String> = self
            .run(
                "players_marker",
                redis::cmd("SET")
                    .arg(key)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl),
            )
            .await?;
        Ok(set.is_some())
    }

    /// Write `player`'s entry (held by this shard's `session`, seated in
    /// `room`) if it is absent or still this session's: after Redis came
    /// back, possibly empty. Returns whether it wrote.
    pub async fn reassert_player(&self, player: &str, session: &str, room: &str) -> Result<bool> {
        let mut script = REASSERT_PLAYER.prepare_invoke();
        script
            .key(self.key(&["player", player]))
            .arg(self.shard().to_string())
            .arg(session.to_string())
            .arg(room.to_string())
            .arg(unix_ms())
            .arg(self.settings().player_ttl.as_millis() as u64);
        let wrote: i64 = self.run("reassert_player", &script).await?;
        Ok(wrote == 1)
    }

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

    /// The welcome carrying session `session`'s own resume token was sent:
    /// it becomes `player`'s current token (the one a resume claimed stops
    /// working), if this shard's `session` still holds the player.
    pub async fn token_issued(&self, player: &str, session: &str) -> Result<bool> {
        let mut script = UPDATE_PLAYER.prepare_invoke();
        script
            .key(self.key(&["player", player]))
            .arg(self.shard().to_string())
            .arg(session.to_string())
            .arg("resume")
            .arg(session.to_string())
            .arg("updated_at")
            .arg(unix_ms())
            .arg(self.settings().player_ttl.as_millis() as u64);
        let updated: i64 = self.run("token_issued", &script).await?;
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
