//! `[rooms]`, `[[maps]]` and `[economy]`: what the shard serves. A map
//! configured here is resolved against the `[rooms]` defaults into a
//! [`MapDef`], what a room runs.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::Config;

/// The highest player cap of a room (`rooms.max_players`, a map's
/// `max_players`): entity ids come in blocks of twice the cap (see the
/// room's `entity_ids`), and eight of them fit in 32 bits.
pub const MAX_PLAYERS_CAP: usize = 1_000_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// actix Arbiters (threads) hosting rooms, apart from the sessions' so a
    /// stalled room cannot freeze sessions; 0 = one per core.
    pub arbiters: usize,
    /// Run rooms on the sessions' Arbiters instead (`arbiters` is then
    /// unused): a room's frames wake its members' connections on the same
    /// thread, with no cross-thread wake-up per member per tick and fewer
    /// threads on few cores; but a room stuck in a handler then freezes
    /// the sessions on its thread too until the watchdog restarts it
    /// elsewhere.
    pub on_session_threads: bool,
    /// Frames a room's tick writes to its members' sockets itself
    /// ("immediate" writes, one `send` each, about 10 µs) at most; the
    /// rest are queued and written by their sessions on the sessions'
    /// threads. The default keeps a tick's sends under about 5 ms (a tenth
    /// of a 20 Hz period) and never binds for rooms of up to 500 members;
    /// 0 queues every frame.
    pub immediate_writes_per_tick: u32,
    /// Default tick rate of a map that sets none.
    pub tick_hz: u32,
    /// Default view radius of a map that sets none.
    pub view_radius: f32,
    /// Default player cap of a map that sets none (1 to
    /// [`MAX_PLAYERS_CAP`]).
    pub max_players: usize,
    /// An empty room stops after this long.
    pub idle_stop_ms: u64,
    /// Actor messages (join, leave, chat, pick-up, ...) queued to one room
    /// at most; a client's message into a full room is dropped, counted
    /// and answered with an error. Moves do not use it: they go into each
    /// member's input queue, which the room drains at its tick.
    pub mailbox_capacity: usize,
    /// A member's moves queued between two ticks at most; past it the
    /// oldest is dropped (and counted), so a room that fell behind applies
    /// the latest ones.
    pub input_queue: usize,
    /// How long a session waits for a room to answer a join.
    pub call_timeout_ms: u64,
    /// How close (in map units) a player's entity must stand to a ground
    /// item to pick it up.
    pub pickup_radius: f32,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        RoomsConfig {
            arbiters: 0,
            on_session_threads: false,
            immediate_writes_per_tick: 500,
            tick_hz: 20,
            view_radius: 400.0,
            max_players: 1_000,
            idle_stop_ms: 30_000,
            mailbox_capacity: 4_096,
            input_queue: 32,
            call_timeout_ms: 2_000,
            pickup_radius: 48.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapConfig {
    pub name: String,
    pub width: f32,
    pub height: f32,
    /// Where players appear, and how far around it they are scattered.
    pub spawn: [f32; 2],
    pub spawn_radius: f32,
    /// Units per second at full stick.
    pub speed: f32,
    pub tick_hz: Option<u32>,
    pub view_radius: Option<f32>,
    pub max_players: Option<usize>,
    /// Item spawners: what appears lying on this map, and how often.
    pub items: Vec<SpawnerConfig>,
    /// `"one"` (the default): one room runs the map, and a join past
    /// `max_players` is refused. `"auto"`: a join of the map goes to an
    /// instance with room, starting one when all are full (see
    /// [`crate::ids::RoomId`]).
    pub instances: Instances,
    /// How long an empty room of this map runs before it stops (extra
    /// instances included); `rooms.idle_stop_ms` when absent.
    pub idle_stop_ms: Option<u64>,
}

/// How many rooms a map runs as (`maps[].instances`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Instances {
    /// One room; joins past `max_players` are refused.
    #[default]
    One,
    /// As many rooms as the players need, each up to `max_players`.
    Auto,
}

impl Default for MapConfig {
    fn default() -> Self {
        MapConfig {
            name: String::new(),
            width: 1_000.0,
            height: 1_000.0,
            spawn: [500.0, 500.0],
            spawn_radius: 50.0,
            speed: 200.0,
            tick_hz: None,
            view_radius: None,
            max_players: None,
            items: Vec::new(),
            instances: Instances::One,
            idle_stop_ms: None,
        }
    }
}

/// One item spawner of a map: every `every_ms`, while fewer than
/// `max_on_ground` items of `kind` lie on the map, one more (a stack of
/// `count`) appears at a random spot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpawnerConfig {
    /// Item kind, as it appears in inventories: 1-32 characters of a-z,
    /// A-Z, 0-9, _ or -, once per map.
    pub kind: String,
    /// Items in one stack.
    pub count: i64,
    /// No more spawns while this many of `kind` lie on the map.
    pub max_on_ground: u32,
    pub every_ms: u64,
}

impl Default for SpawnerConfig {
    fn default() -> Self {
        SpawnerConfig {
            kind: String::new(),
            count: 1,
            max_on_ground: 8,
            every_ms: 5_000,
        }
    }
}

/// The demo economy behind the durable `give` action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EconomyConfig {
    /// Currency a player is granted once, on its first login (a durable,
    /// idempotent adjustment), so there is something to give.
    pub starter_currency: i64,
    /// Most item kinds one `give` may carry.
    pub max_give_kinds: usize,
}

impl Default for EconomyConfig {
    fn default() -> Self {
        EconomyConfig {
            starter_currency: 100,
            max_give_kinds: 16,
        }
    }
}

/// The built-in demo maps, used when the configuration names none.
pub fn builtin_maps() -> Vec<MapConfig> {
    vec![
        MapConfig {
            name: "lobby".into(),
            items: vec![SpawnerConfig {
                kind: "gem".into(),
                count: 1,
                max_on_ground: 8,
                every_ms: 5_000,
            }],
            ..MapConfig::default()
        },
        MapConfig {
            name: "arena".into(),
            width: 600.0,
            height: 600.0,
            spawn: [300.0, 300.0],
            spawn_radius: 100.0,
            speed: 250.0,
            items: vec![SpawnerConfig {
                kind: "potion".into(),
                count: 1,
                max_on_ground: 4,
                every_ms: 8_000,
            }],
            ..MapConfig::default()
        },
        MapConfig {
            name: "plains".into(),
            width: 4_000.0,
            height: 4_000.0,
            spawn: [2_000.0, 2_000.0],
            spawn_radius: 1_500.0,
            speed: 300.0,
            items: vec![SpawnerConfig {
                kind: "wood".into(),
                count: 3,
                max_on_ground: 40,
                every_ms: 2_000,
            }],
            ..MapConfig::default()
        },
    ]
}

/// A map with every default resolved: what a room runs.
#[derive(Debug, Clone, PartialEq)]
pub struct MapDef {
    pub name: String,
    pub width: f32,
    pub height: f32,
    pub spawn: [f32; 2],
    pub spawn_radius: f32,
    pub speed: f32,
    pub tick_hz: u32,
    pub view_radius: f32,
    pub max_players: usize,
    pub items: Vec<SpawnerConfig>,
    /// `rooms.pickup_radius`.
    pub pickup_radius: f32,
    pub instances: Instances,
    /// How long an empty room of this map runs before it stops.
    pub idle_stop_ms: u64,
}

impl Config {
    /// Every map with defaults resolved.
    pub fn map_defs(&self) -> Vec<MapDef> {
        let maps = if self.maps.is_empty() {
            builtin_maps()
        } else {
            self.maps.clone()
        };
        maps.into_iter()
            .map(|m| MapDef {
                tick_hz: m.tick_hz.unwrap_or(self.rooms.tick_hz),
                view_radius: m.view_radius.unwrap_or(self.rooms.view_radius),
                max_players: m.max_players.unwrap_or(self.rooms.max_players),
                name: m.name,
                width: m.width,
                height: m.height,
                spawn: m.spawn,
                spawn_radius: m.spawn_radius,
                speed: m.speed,
                items: m.items,
                pickup_radius: self.rooms.pickup_radius,
                instances: m.instances,
                idle_stop_ms: m.idle_stop_ms.unwrap_or(self.rooms.idle_stop_ms),
            })
            .collect()
    }
}

/// Check one configured map (`at` is its path, `maps[i]`).
pub(super) fn validate_map(at: &str, m: &MapConfig, errors: &mut Vec<String>) {
    let valid_name = !m.name.is_empty()
        && m.name.len() <= 64
        && m.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name {
        errors.push(format!(
            "{at}.name {:?} must be 1-64 characters of a-z, 0-9, - or _",
            m.name
        ));
    }
    let positive = |v: f32| v.is_finite() && v > 0.0;
    if !positive(m.width) || !positive(m.height) {
        errors.push(format!("{at}.width and .height must be positive numbers"));
    }
    if !positive(m.speed) {
        errors.push(format!("{at}.speed must be a positive number"));
    }
    let [x, y] = m.spawn;
    if !(x.is_finite()
        && y.is_finite()
        && (0.0..=m.width).contains(&x)
        && (0.0..=m.height).contains(&y))
    {
        errors.push(format!("{at}.spawn must lie inside the map"));
    }
    if !(m.spawn_radius.is_finite() && m.spawn_radius >= 0.0) {
        errors.push(format!("{at}.spawn_radius must be 0 or more"));
    }
    if m.tick_hz.is_some_and(|t| t == 0 || t > 1_000) {
        errors.push(format!("{at}.tick_hz must be 1 to 1000"));
    }
    if m.view_radius.is_some_and(|r| !positive(r)) {
        errors.push(format!("{at}.view_radius must be a positive number"));
    }
    if m.max_players.is_some_and(|n| n == 0 || n > MAX_PLAYERS_CAP) {
        errors.push(format!("{at}.max_players must be 1 to {MAX_PLAYERS_CAP}"));
    }
    if m.idle_stop_ms == Some(0) {
        errors.push(format!("{at}.idle_stop_ms must be greater than 0"));
    }
    let mut kinds = BTreeSet::new();
    for (j, sp) in m.items.iter().enumerate() {
        let at = format!("{at}.items[{j}]");
        let valid_kind = !sp.kind.is_empty()
            && sp.kind.len() <= 32
            && sp
                .kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_kind {
            errors.push(format!(
                "{at}.kind {:?} must be 1-32 characters of a-z, A-Z, 0-9, _ or -",
                sp.kind
            ));
        } else if !kinds.insert(sp.kind.as_str()) {
            errors.push(format!(
                "{at}.kind {:?} has another spawner on this map",
                sp.kind
            ));
        }
        if !(1..=1_000_000).contains(&sp.count) {
            errors.push(format!("{at}.count must be 1 to 1000000"));
        }
        if !(1..=1_000).contains(&sp.max_on_ground) {
            errors.push(format!("{at}.max_on_ground must be 1 to 1000"));
        }
        if sp.every_ms < 10 {
            errors.push(format!("{at}.every_ms must be at least 10"));
        }
    }
}
