//! `RoomRef`: casts are refused at once when the room's mailbox is full or
//! the room is not running; calls always end, by reply or by timeout.
//! Real rooms under a real `RoomSupervisor` and store; the only trick is a
//! stalled room (the admin API's fault), which answers nothing.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use server::config::{Config, MapConfig};
use server::dispatcher::Dispatcher;
use server::ids::RoomId;
use server::room::supervisor::Settings;
use server::room::{CallError, CastError, Fault, FaultKind, RoomSupervisor};
use server::store::Persister;

struct Rooms {
    rooms: Arc<RoomSupervisor>,
    persister: Persister,
    _arbiter: Arbiter,
    _data: tempfile::TempDir,
}

/// A supervisor over one map `hall`, one room thread, and a room mailbox
/// of `capacity`.
fn rooms(capacity: usize) -> Rooms {
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.store.embedded.dir = data.path().to_path_buf();
    config.rooms.mailbox_capacity = capacity;
    config.maps = vec![MapConfig {
        name: "hall".into(),
        ..MapConfig::default()
    }];
    let persister = Persister::start(config.store.clone()).expect("the store opens");
    let arbiter = Arbiter::new();
    let rooms = Arc::new(RoomSupervisor::new(
        config.map_defs(),
        vec![arbiter.handle()],
        Arc::new(Dispatcher::default()),
        persister.handle(),
        Settings::from_config(&config),
    ));
    Rooms {
        rooms,
        persister,
        _arbiter: arbiter,
        _data: data,
    }
}

/// Start room `hall` and stall its thread for `stall`.
async fn stalled_hall(rooms: &Arc<RoomSupervisor>, stall: Duration) -> server::room::RoomRef {
    let hall = rooms.room_for_join("hall").expect("hall is a map");
    // A call to a room that does not run yet: `who_is` does not start it.
    assert_eq!(
        hall.call_who_is(1, 1, Duration::from_secs(5)).await,
        Err(CallError::Closed)
    );
    assert_eq!(hall.cast_leave(1), Err(CastError::Closed));
    let addr = rooms
        .start(hall.id())
        .expect("a room of a known map starts");
    assert_eq!(
        hall.call_who_is(1, 1, Duration::from_secs(5)).await,
        Ok(None)
    );
    addr.do_send(Fault(FaultKind::Stall(stall)));
    hall
}

#[actix::test]
async fn a_call_to_a_stalled_room_times_out_and_a_running_one_answers() {
    let Rooms {
        rooms, persister, ..
    } = rooms(64);
    let hall = stalled_hall(&rooms, Duration::from_millis(1_500)).await;
    assert_eq!(hall.id(), &RoomId::first("hall"));
    assert_eq!(
        hall.call_who_is(1, 1, Duration::from_millis(100)).await,
        Err(CallError::Timeout)
    );
    // Once the stall is over the room answers again (within a bound well
    // above the stall, so a slow machine does not fail the test).
    assert_eq!(
        hall.call_who_is(1, 1, Duration::from_secs(10)).await,
        Ok(None)
    );
    drop(rooms);
    persister.shutdown(Duration::from_secs(5)).await;
}

#[actix::test]
async fn a_cast_to_a_full_mailbox_is_refused_at_once() {
    let Rooms {
        rooms, persister, ..
    } = rooms(2);
    let hall = stalled_hall(&rooms, Duration::from_millis(1_500)).await;
    // The stalled room drains nothing: the mailbox fills (the fault may
    // still sit in it) and the casts past it are refused without waiting.
    let results: Vec<Result<(), CastError>> = (0..16)
        .map(|i| hall.cast_chat(1, format!("line {i}")))
        .collect();
    assert_eq!(results[0], Ok(()), "{results:?}");
    assert_eq!(results[15], Err(CastError::Full), "{results:?}");
    // And it is taken again once the room drained its mailbox.
    assert_eq!(
        hall.call_who_is(1, 1, Duration::from_secs(10)).await,
        Ok(None)
    );
    assert_eq!(hall.cast_chat(1, "again".into()), Ok(()));
    drop(rooms);
    persister.shutdown(Duration::from_secs(5)).await;
}
