//! A room's snapshot (what a restart after a panic and a live migration go
//! on from) as the supervisor keeps it: every member with its position
//! and its links to its session. Real rooms under a real `RoomSupervisor`
//! and store.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use server::auth::Identity;
use server::config::{Config, MapConfig};
use server::dispatcher::Dispatcher;
use server::ids::RoomId;
use server::outbound::Outbound;
use server::room::supervisor::Settings;
use server::room::{Inputs, JoinRoom, MemberLink, MemberState, RoomEvent, RoomSupervisor};
use server::store::Persister;

struct Rooms {
    rooms: Arc<RoomSupervisor>,
    _persister: Persister,
    _arbiter: Arbiter,
    _data: tempfile::TempDir,
}

/// A supervisor over one map `hall` and one room thread.
fn rooms() -> Rooms {
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.store.embedded.dir = data.path().to_path_buf();
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
        _persister: persister,
        _arbiter: arbiter,
        _data: data,
    }
}

/// Takes a room's events for a session that is not there.
struct NoSession;

impl Actor for NoSession {
    type Context = Context<Self>;
}

impl Handler<RoomEvent> for NoSession {
    type Result = ();

    fn handle(&mut self, _: RoomEvent, _: &mut Context<Self>) {}
}

fn join(
    session: u64,
    player: &str,
    resume: Option<u64>,
    at: (f32, f32),
) -> (JoinRoom, Arc<Outbound>) {
    let out = Outbound::new(64 * 1024);
    let link = MemberLink {
        session,
        identity: Arc::new(Identity {
            player_id: format!("p-{player}"),
            name: player.into(),
        }),
        epoch: out.begin_room(),
        out: out.clone(),
        inputs: Arc::new(Inputs::new(8)),
        events: NoSession.start().recipient(),
        remote: None,
    };
    let join = JoinRoom {
        link,
        resume,
        seat_only: false,
        spawn_at: Some(at),
    };
    (join, out)
}

/// The hall's snapshot once it holds `sessions` (sorted), within a
/// generous deadline.
async fn snapshot_with(rooms: &RoomSupervisor, sessions: &[u64]) -> Vec<(u32, MemberState)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hall = RoomId::first("hall");
        if let Some(view) = rooms.views().into_iter().find(|v| v.id == hall) {
            let mut members = view.snapshot.members.clone();
            members.sort_by_key(|(id, _)| *id);
            let mut have: Vec<u64> = members.iter().map(|(_, m)| m.link.session).collect();
            have.sort_unstable();
            if have == sessions {
                return members;
            }
        }
        assert!(Instant::now() < deadline, "no snapshot with {sessions:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix::test]
async fn a_snapshot_shares_its_members_links_and_a_takeover_puts_in_new_ones() {
    let Rooms { rooms, .. } = rooms();
    let hall = rooms.room_for_join("hall").expect("hall is a map");
    let wait = Duration::from_secs(10);
    let (alice, alice_out) = join(1, "alice", None, (100.0, 200.0));
    let alice_id = hall.call_join(alice, wait).await.unwrap().unwrap().entity;
    let (bob, _bob_out) = join(2, "bob", None, (300.0, 400.0));
    let bob_id = hall.call_join(bob, wait).await.unwrap().unwrap().entity;

    let first = snapshot_with(&rooms, &[1, 2]).await;
    let member = |snap: &[(u32, MemberState)], id: u32| {
        snap.iter()
            .find(|(e, _)| *e == id)
            .map(|(_, m)| m.clone())
            .expect("member in the snapshot")
    };
    let a = member(&first, alice_id);
    assert_eq!((a.x, a.y, a.link.session), (100.0, 200.0, 1));
    assert!(
        Arc::ptr_eq(&a.link.out, &alice_out),
        "the snapshot reaches the member's own queue"
    );
    assert!(alice_out.is_member(a.link.epoch));

    // Alice's next session takes her seat over: same entity and identity,
    // the new session's ends. Bob's link is the very one of the last
    // snapshot (shared, not copied); Alice's is a new one.
    let (again, again_out) = join(3, "alice", Some(1), (0.0, 0.0));
    let resumed = hall.call_join(again, wait).await.unwrap().unwrap();
    assert_eq!((resumed.entity, resumed.resumed), (alice_id, true));
    let second = snapshot_with(&rooms, &[2, 3]).await;
    let a2 = member(&second, alice_id);
    assert_eq!((a2.x, a2.y, a2.link.session), (100.0, 200.0, 3));
    assert_eq!(a2.link.identity.name, "alice");
    assert!(Arc::ptr_eq(&a2.link.identity, &a.link.identity));
    assert!(Arc::ptr_eq(&a2.link.out, &again_out));
    assert!(!Arc::ptr_eq(&a2.link, &a.link));
    assert!(Arc::ptr_eq(
        &member(&second, bob_id).link,
        &member(&first, bob_id).link
    ));
}
