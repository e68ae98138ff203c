//! Where sessions find rooms: one room per map, created on first join on the
//! next Arbiter in turn, forgotten when it stops.
//!
//! Sessions always look a room up here rather than keeping an address
//! across joins, so a room that stopped (idle) is simply created again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use parking_lot::Mutex;

use super::Room;
use crate::config::MapDef;
use crate::dispatcher::Dispatcher;

pub struct RoomRegistry {
    maps: HashMap<String, Arc<MapDef>>,
    rooms: Mutex<HashMap<String, Addr<Room>>>,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: AtomicUsize,
    dispatcher: Arc<Dispatcher>,
    idle_stop: Duration,
    mailbox_capacity: usize,
}

impl RoomRegistry {
    pub fn new(
        maps: Vec<MapDef>,
        arbiters: Vec<ArbiterHandle>,
        dispatcher: Arc<Dispatcher>,
        idle_stop: Duration,
        mailbox_capacity: usize,
    ) -> RoomRegistry {
        RoomRegistry {
            maps: maps
                .into_iter()
                .map(|m| (m.name.clone(), Arc::new(m)))
                .collect(),
            rooms: Mutex::new(HashMap::new()),
            arbiters,
            next_arbiter: AtomicUsize::new(0),
            dispatcher,
            idle_stop,
            mailbox_capacity,
        }
    }

    pub fn has_map(&self, name: &str) -> bool {
        self.maps.contains_key(name)
    }

    /// Map names, sorted.
    pub fn map_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.maps.keys().cloned().collect();
        names.sort();
        names
    }

    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    pub fn idle_stop(&self) -> Duration {
        self.idle_stop
    }

    /// The room of `map`, started if it is not running. `None` for a map
    /// that does not exist.
    pub fn room(self: &Arc<Self>, map: &str) -> Option<Addr<Room>> {
        let def = self.maps.get(map)?.clone();
        let mut rooms = self.rooms.lock();
        if let Some(addr) = rooms.get(map).filter(|a| a.connected()) {
            return Some(addr.clone());
        }
        let arbiter =
            &self.arbiters[self.next_arbiter.fetch_add(1, Ordering::Relaxed) % self.arbiters.len()];
        let registry = self.clone();
        let capacity = self.mailbox_capacity;
        let addr = Room::start_in_arbiter(arbiter, move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            Room::new(def, registry)
        });
        rooms.insert(map.to_string(), addr.clone());
        Some(addr)
    }

    /// Drop `addr` from the registry if it is still the room of `map`.
    pub fn forget(&self, map: &str, addr: &Addr<Room>) {
        let mut rooms = self.rooms.lock();
        if rooms.get(map) == Some(addr) {
            rooms.remove(map);
        }
    }

    pub fn running(&self) -> usize {
        self.rooms.lock().len()
    }
}
