//! `[auth]`, `[limits]` and `[admin]`: who may connect, how much a client
//! may send, and who may call the admin API.

use protocol::admin::Role;
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token for `/admin/*` on the HTTP listener, with the
    /// `operator` role under the name "admin". Empty (and no `tokens`)
    /// turns the admin endpoints off.
    pub token: String,
    /// Allow `/admin/faults/*` (panic or stall a room, kill a session) for
    /// tests and drills. Off by default; needs `token` too. Game clients can
    /// never reach it.
    pub fault_injection: bool,
    /// Events kept in the shard's in-memory ring (`GET /admin/events`);
    /// the oldest go first.
    pub events_capacity: usize,
    /// Players `GET /admin/players?q=` returns at most.
    pub search_limit: usize,
    /// Characters a ban's reason may have.
    pub ban_reason_max_chars: usize,
    /// More tokens, each with a role and a name (the name is what the audit
    /// trail records): `[[admin.tokens]]` with `token`, `role` ("viewer" or
    /// "operator") and `name`.
    pub tokens: Vec<AdminToken>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token: String::new(),
            fault_injection: false,
            events_capacity: 1_000,
            search_limit: 50,
            ban_reason_max_chars: 200,
            tokens: Vec::new(),
        }
    }
}

/// One admin token of `admin.tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminToken {
    /// At least 16 bytes.
    pub token: String,
    pub role: Role,
    /// Who holds it, as the audit trail names them.
    pub name: String,
}

/// The name `admin.token` acts under in the audit trail.
pub const ADMIN_TOKEN_NAME: &str = "admin";

impl AdminConfig {
    /// Whether the admin API is on: some token is configured.
    pub fn enabled(&self) -> bool {
        !self.token.is_empty() || !self.tokens.is_empty()
    }

    /// The name and role of the token `given`, compared in constant time
    /// against every configured one (lengths are not secret).
    pub fn role_of(&self, given: &str) -> Option<(&str, Role)> {
        let legacy = (!self.token.is_empty()).then_some((
            self.token.as_str(),
            ADMIN_TOKEN_NAME,
            Role::Operator,
        ));
        let mut found = None;
        for (token, name, role) in legacy.into_iter().chain(
            self.tokens
                .iter()
                .map(|t| (t.token.as_str(), t.name.as_str(), t.role)),
        ) {
            if constant_time_eq(token.as_bytes(), given.as_bytes()) && found.is_none() {
                found = Some((name, role));
            }
        }
        found
    }

    pub(super) fn validate(&self, errors: &mut Vec<String>) {
        if self.fault_injection && !self.enabled() {
            errors.push("admin.fault_injection needs admin.token".into());
        }
        if !self.token.is_empty() && self.token.len() < 16 {
            errors.push("admin.token must be empty (admin off) or at least 16 bytes".into());
        }
        if !(1..=1_000_000).contains(&self.events_capacity) {
            errors.push("admin.events_capacity must be 1 to 1000000".into());
        }
        if !(1..=10_000).contains(&self.search_limit) {
            errors.push("admin.search_limit must be 1 to 10000".into());
        }
        if !(1..=10_000).contains(&self.ban_reason_max_chars) {
            errors.push("admin.ban_reason_max_chars must be 1 to 10000".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        if !self.token.is_empty() {
            seen.insert(self.token.as_str());
        }
        for (i, t) in self.tokens.iter().enumerate() {
            if t.token.len() < 16 {
                errors.push(format!("admin.tokens[{i}].token must be at least 16 bytes"));
            }
            if t.name.trim().is_empty() {
                errors.push(format!("admin.tokens[{i}].name must not be empty"));
            }
            if !seen.insert(t.token.as_str()) {
                errors.push(format!("admin.tokens[{i}].token is used twice"));
            }
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
