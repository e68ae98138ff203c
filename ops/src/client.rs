//! One shard's HTTP API, typed: every call of the CLI and the console goes
//! through [`Shard`], with a timeout, and fails with a [`CallError`] that
//! keeps the shard's status (so the console can answer a viewer's action
//! with the shard's own 403) and its message.

use std::fmt;
use std::time::Duration;

use protocol::admin::{
    ActionReply, AnnounceReply, AnnounceRequest, BanRequest, DispatcherReply, ErrorReply,
    EventsReply, Health, KickRequest, Peers, PlayersReply, RoomDetail, RoomMigrated, RoomsReply,
    ShardInfo, WhoAmI,
};
use serde::de::DeserializeOwned;

/// A call that failed: the shard's status and message, or no status when
/// the shard was not reached (or answered something unreadable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    pub status: Option<u16>,
    pub message: String,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "{status}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for CallError {}

pub type CallResult<T> = Result<T, CallError>;

/// One shard's HTTP API.
#[derive(Clone)]
pub struct Shard {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

/// A path segment with everything but unreserved characters escaped (room
/// ids carry `#`).
pub fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Shard {
    /// `http` is `HOST:PORT` or `http://HOST:PORT`.
    pub fn new(http: &str, token: Option<String>, timeout: Duration) -> Shard {
        let base = if http.starts_with("http://") || http.starts_with("https://") {
            http.trim_end_matches('/').to_string()
        } else {
            format!("http://{}", http.trim_end_matches('/'))
        };
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Shard { base, token, agent }
    }

    /// The same shard, called with another token (the console forwards
    /// each caller's own).
    pub fn with_token(&self, token: Option<String>) -> Shard {
        Shard {
            token,
            ..self.clone()
        }
    }

    /// `http://HOST:PORT`.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn unreached(&self, method: &str, path: &str, e: impl fmt::Display) -> CallError {
        CallError {
            status: None,
            message: format!("{method} {}{path}: {e}", self.base),
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<String>) -> CallResult<String> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let response = if method == "GET" {
            let mut request = self.agent.get(&url);
            if let Some(auth) = &auth {
                request = request.header("authorization", auth);
            }
            request.call()
        } else {
            let mut request = self
                .agent
                .post(&url)
                .header("content-type", "application/json");
            if let Some(auth) = &auth {
                request = request.header("authorization", auth);
            }
            request.send(body.unwrap_or_default().as_str())
        };
        let mut response = response.map_err(|e| self.unreached(method, path, e))?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| self.unreached(method, path, e))?;
        if !status.is_success() {
            let message = serde_json::from_str::<ErrorReply>(&text).map_or(text, |e| e.error);
            return Err(CallError {
                status: Some(status.as_u16()),
                message: format!("{method} {}{path}: {message}", self.base),
            });
        }
        Ok(text)
    }

    fn parse<R: DeserializeOwned>(&self, path: &str, text: &str) -> CallResult<R> {
        serde_json::from_str(text).map_err(|e| CallError {
            status: None,
            message: format!("{}{path}: unexpected reply ({e}): {text}", self.base),
        })
    }

    fn get_json<R: DeserializeOwned>(&self, path: &str) -> CallResult<R> {
        let text = self.call("GET", path, None)?;
        self.parse(path, &text)
    }

    /// An admin GET: needs a token.
    fn view<R: DeserializeOwned>(&self, path: &str) -> CallResult<R> {
        self.need_token()?;
        self.get_json(path)
    }

    fn need_token(&self) -> CallResult<()> {
        if self.token.is_none() {
            return Err(CallError {
                status: None,
                message: "admin calls need a token (--token or TESSERA_ADMIN__TOKEN)".into(),
            });
        }
        Ok(())
    }

    /// POST a JSON body to an admin route, with the token.
    fn act<R: DeserializeOwned>(&self, path: &str, body: &impl serde::Serialize) -> CallResult<R> {
        self.need_token()?;
        let body = serde_json::to_string(body).map_err(|e| CallError {
            status: None,
            message: format!("request body: {e}"),
        })?;
        let text = self.call("POST", path, Some(body))?;
        self.parse(path, &text)
    }

    /// The shard's health document.
    pub fn health(&self) -> CallResult<Health> {
        self.get_json("/healthz")
    }

    /// The shard's Prometheus metrics, as text.
    pub fn metrics(&self) -> CallResult<String> {
        self.call("GET", "/metrics", None)
    }

    /// The shard's peer tunnels: listeners, peers, streams, refusals.
    pub fn peers(&self) -> CallResult<Peers> {
        self.view("/admin/peers")
    }

    pub fn whoami(&self) -> CallResult<WhoAmI> {
        self.view("/admin/whoami")
    }

    pub fn info(&self) -> CallResult<ShardInfo> {
        self.view("/admin/shard")
    }

    pub fn rooms(&self) -> CallResult<RoomsReply> {
        self.view("/admin/rooms")
    }

    pub fn room(&self, room: &str) -> CallResult<RoomDetail> {
        self.view(&format!("/admin/rooms/{}", escape(room)))
    }

    pub fn players(&self, q: &str) -> CallResult<PlayersReply> {
        self.view(&format!("/admin/players?q={}", escape(q)))
    }

    pub fn dispatcher(&self) -> CallResult<DispatcherReply> {
        self.view("/admin/dispatcher")
    }

    pub fn events(&self, since: u64) -> CallResult<EventsReply> {
        self.view(&format!("/admin/events?since={since}"))
    }

    /// Announce `text` to every player, or to the players of `map`.
    pub fn announce(&self, text: &str, map: Option<&str>) -> CallResult<AnnounceReply> {
        let request = AnnounceRequest {
            text: text.to_string(),
            map: map.map(str::to_string),
        };
        self.act("/admin/announce", &request)
    }

    /// Kick `player`; `local_only` when the caller asks every shard itself
    /// (see [`KickRequest::local_only`]).
    pub fn kick(
        &self,
        player: &str,
        reason: Option<&str>,
        local_only: bool,
    ) -> CallResult<ActionReply> {
        let request = KickRequest {
            reason: reason.map(str::to_string),
            local_only,
        };
        self.act(&format!("/admin/players/{}/kick", escape(player)), &request)
    }

    pub fn ban(&self, player: &str, request: &BanRequest) -> CallResult<ActionReply> {
        self.act(&format!("/admin/players/{}/ban", escape(player)), request)
    }

    pub fn unban(&self, player: &str) -> CallResult<ActionReply> {
        self.act(
            &format!("/admin/players/{}/unban", escape(player)),
            &serde_json::Value::Null,
        )
    }

    pub fn restart_room(&self, room: &str) -> CallResult<ActionReply> {
        self.act(
            &format!("/admin/rooms/{}/restart", escape(room)),
            &serde_json::Value::Null,
        )
    }

    /// Move a room to shard `to` (or the placement's pick of the other
    /// ready shards), live (cluster mode). A shard that does not run the
    /// room forwards the request to its owner.
    pub fn migrate_room(&self, room: &str, to: Option<&str>) -> CallResult<RoomMigrated> {
        let query = to.map(|t| format!("?to={}", escape(t))).unwrap_or_default();
        self.act(
            &format!("/admin/rooms/{}/migrate{query}", escape(room)),
            &serde_json::Value::Null,
        )
    }

    /// Drain the shard (cluster mode): it tells its players to reconnect
    /// elsewhere, stops its rooms, releases its leases and exits.
    pub fn drain(&self) -> CallResult<ActionReply> {
        self.act("/admin/shards/drain", &serde_json::Value::Null)
    }

    /// POST to an admin route this crate has no type for yet (the cluster's
    /// migrate and drain), passing the body and the reply through.
    pub fn post_raw(&self, path: &str, body: &serde_json::Value) -> CallResult<serde_json::Value> {
        self.act(path, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_ids_are_escaped_in_paths() {
        assert_eq!(escape("lobby#2"), "lobby%232");
        assert_eq!(escape("a b/c"), "a%20b%2Fc");
        assert_eq!(escape("plain-id_1.x~"), "plain-id_1.x~");
    }

    #[test]
    fn addresses_become_urls() {
        let t = Duration::from_secs(1);
        assert_eq!(
            Shard::new("127.0.0.1:7380", None, t).url(),
            "http://127.0.0.1:7380"
        );
        assert_eq!(Shard::new("http://h:1/", None, t).url(), "http://h:1");
    }
}
