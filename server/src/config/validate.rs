//! Checking a whole configuration once, at start: every problem is
//! reported with its field path, not only the first.

use std::collections::BTreeSet;

use super::supervision::{MAX_CHILD_BACKOFF_MS, MAX_EXTRA_ARBITERS};
use super::world::{validate_map, MAX_PLAYERS_CAP};
use super::{AuthMode, Config, ConfigError, IpNet};

impl Config {
    /// Check every field; the error lists each problem with its field path.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut positive = |name: &str, value: u64| {
            if value == 0 {
                errors.push(format!("{name} must be greater than 0"));
            }
        };
        let s = &self.server;
        positive("server.max_connections", s.max_connections as u64);
        positive("server.handshake_timeout_ms", s.handshake_timeout_ms);
        positive("server.close_linger_ms", s.close_linger_ms);
        positive("server.max_refusing", s.max_refusing as u64);
        positive("server.idle_timeout_ms", s.idle_timeout_ms);
        positive("server.heartbeat_interval_ms", s.heartbeat_interval_ms);
        positive("server.max_frame_bytes", s.max_frame_bytes as u64);
        positive("server.read_buffer_bytes", s.read_buffer_bytes as u64);
        positive(
            "server.outbound_budget_bytes",
            s.outbound_budget_bytes as u64,
        );
        positive("server.write_timeout_ms", s.write_timeout_ms);
        let l = &self.limits;
        positive("limits.move_per_sec", l.move_per_sec.into());
        positive("limits.move_burst", l.move_burst.into());
        positive("limits.chat_per_sec", l.chat_per_sec.into());
        positive("limits.chat_burst", l.chat_burst.into());
        positive("limits.control_per_sec", l.control_per_sec.into());
        positive("limits.control_burst", l.control_burst.into());
        positive("limits.chat_max_chars", l.chat_max_chars.into());
        positive("limits.abuse_strikes", l.abuse_strikes.into());
        positive("limits.abuse_window_ms", l.abuse_window_ms);
        let r = &self.rooms;
        positive("rooms.tick_hz", r.tick_hz.into());
        positive("rooms.max_players", r.max_players as u64);
        positive("rooms.mailbox_capacity", r.mailbox_capacity as u64);
        positive("rooms.input_queue", r.input_queue as u64);
        positive("rooms.call_timeout_ms", r.call_timeout_ms);
        positive("rooms.idle_stop_ms", r.idle_stop_ms);
        let sv = &self.supervision;
        positive("supervision.restart_window_ms", sv.restart_window_ms);
        positive("supervision.stall_timeout_ms", sv.stall_timeout_ms);
        positive("supervision.watchdog_interval_ms", sv.watchdog_interval_ms);
        positive("supervision.resume_grace_ms", sv.resume_grace_ms);
        positive("supervision.child_backoff_min_ms", sv.child_backoff_min_ms);
        positive(
            "supervision.child_backoff_reset_ms",
            sv.child_backoff_reset_ms,
        );
        positive(
            "supervision.child_restart_window_ms",
            sv.child_restart_window_ms,
        );
        if s.max_frame_bytes < 256 {
            errors.push("server.max_frame_bytes must be at least 256".into());
        }
        if !(s.per_ip_handshakes_per_sec.is_finite() && s.per_ip_handshakes_per_sec >= 0.0) {
            errors.push(
                "server.per_ip_handshakes_per_sec must be 0 (off) or a positive number".into(),
            );
        }
        if s.per_ip_handshakes_per_sec > 0.0 && s.per_ip_handshake_burst == 0 {
            errors.push(
                "server.per_ip_handshake_burst must be greater than 0 when per_ip_handshakes_per_sec is set"
                    .into(),
            );
        }
        for (i, net) in s.per_ip_exempt.iter().enumerate() {
            if let Err(message) = IpNet::parse(net) {
                errors.push(format!("server.per_ip_exempt[{i}] {net:?}: {message}"));
            }
        }
        self.tls.validate(&mut errors);
        if s.outbound_budget_bytes < 4 * 1024 {
            errors.push("server.outbound_budget_bytes must be at least 4096".into());
        }
        if !(r.view_radius.is_finite() && r.view_radius > 0.0) {
            errors.push("rooms.view_radius must be a positive number".into());
        }
        if !(r.pickup_radius.is_finite() && r.pickup_radius > 0.0) {
            errors.push("rooms.pickup_radius must be a positive number".into());
        }
        if r.tick_hz > 1_000 {
            errors.push("rooms.tick_hz must be at most 1000".into());
        }
        if self.auth.mode == AuthMode::Production && self.auth.secret.len() < 16 {
            errors.push("auth.secret must be at least 16 bytes in production mode".into());
        }
        if sv.child_backoff_max_ms < sv.child_backoff_min_ms {
            errors.push(
                "supervision.child_backoff_max_ms must be at least child_backoff_min_ms".into(),
            );
        }
        if sv.child_backoff_max_ms > MAX_CHILD_BACKOFF_MS {
            errors.push(format!(
                "supervision.child_backoff_max_ms must be at most {MAX_CHILD_BACKOFF_MS} (one hour)"
            ));
        }
        if sv.max_extra_arbiters > MAX_EXTRA_ARBITERS {
            errors.push(format!(
                "supervision.max_extra_arbiters must be at most {MAX_EXTRA_ARBITERS}"
            ));
        }
        if sv.watchdog_interval_ms >= sv.stall_timeout_ms {
            errors.push("supervision.watchdog_interval_ms must be below stall_timeout_ms".into());
        }
        let map_names: Vec<String> = self.map_defs().into_iter().map(|m| m.name).collect();
        if !sv.fallback_map.is_empty() && !map_names.contains(&sv.fallback_map) {
            errors.push(format!(
                "supervision.fallback_map {:?} names no map (maps: {})",
                sv.fallback_map,
                map_names.join(", ")
            ));
        }
        self.store.validate(&mut errors);
        self.cluster.validate(&mut errors);
        if self.economy.starter_currency < 0 {
            errors.push("economy.starter_currency must be 0 or more".into());
        }
        if self.economy.max_give_kinds == 0 {
            errors.push("economy.max_give_kinds must be greater than 0".into());
        }
        self.admin.validate(&mut errors);
        if self.auth.resume_ttl_s == 0 {
            errors.push("auth.resume_ttl_s must be greater than 0".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            errors.push(format!(
                "log.level {:?} is not a valid filter",
                self.log.level
            ));
        }
        if self.rooms.max_players > MAX_PLAYERS_CAP {
            errors.push(format!(
                "rooms.max_players must be at most {MAX_PLAYERS_CAP}"
            ));
        }
        let mut names = BTreeSet::new();
        for (i, m) in self.maps.iter().enumerate() {
            let at = format!("maps[{i}]");
            validate_map(&at, m, &mut errors);
            if !names.insert(m.name.clone()) {
                errors.push(format!("{at}.name {:?} is used twice", m.name));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }
}
