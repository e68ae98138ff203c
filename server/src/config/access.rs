//! `[auth]`, `[limits]` and `[admin]`: who may connect, how much a client
//! may send, and who may call the admin API.

use serde::{Deserialize, Serialize};

use super::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// A hello without a token gets a guest identity.
    Dev,
    /// Only signed, unexpired tokens are accepted.
    Production,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// HMAC-SHA256 key for session and resume tokens. Required (at least 16
    /// bytes) in production mode; in dev mode an empty secret means a random
    /// one per process.
    pub secret: String,
    /// Lifetime of the resume token handed out in `welcome`.
    pub resume_ttl_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::Dev,
            secret: String::new(),
            resume_ttl_s: 3_600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub move_per_sec: u32,
    pub move_burst: u32,
    pub chat_per_sec: u32,
    pub chat_burst: u32,
    /// join, leave, ping, hello.
    pub control_per_sec: u32,
    pub control_burst: u32,
    pub chat_max_chars: u32,
    /// Strikes (malformed frames, text frames, rate-limit hits) within
    /// `abuse_window_ms` that close the socket with 1008.
    pub abuse_strikes: u32,
    pub abuse_window_ms: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            move_per_sec: 30,
            move_burst: 60,
            chat_per_sec: 2,
            chat_burst: 5,
            control_per_sec: 10,
            control_burst: 20,
            chat_max_chars: 200,
            abuse_strikes: 10,
            abuse_window_ms: 10_000,
        }
    }
}

impl Config {
    /// The limits announced in `welcome`: `[limits]` with the frame size
    /// and idle timeout of `[server]`. The one place the configuration
    /// becomes [`protocol::Limits`].
    pub fn welcome_limits(&self) -> protocol::Limits {
        let l = &self.limits;
        protocol::Limits {
            max_frame_bytes: self.server.max_frame_bytes as u32,
            move_per_sec: l.move_per_sec,
            move_burst: l.move_burst,
            chat_per_sec: l.chat_per_sec,
            chat_burst: l.chat_burst,
            control_per_sec: l.control_per_sec,
            control_burst: l.control_burst,
            chat_max_chars: l.chat_max_chars,
            idle_timeout_ms: self.server.idle_timeout_ms.min(u64::from(u32::MAX)) as u32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token for `/admin/*` on the HTTP listener. Empty turns the
    /// admin endpoints off.
    pub token: String,
    /// Allow `/admin/faults/*` (panic or stall a room, kill a session) for
    /// tests and drills. Off by default; needs `token` too. Game clients can
    /// never reach it.
    pub fault_injection: bool,
}
