//! The admin API the ops console reads and acts through, against a real
//! shard: roles, the read views, kick, ban at hello, room restart, and the
//! audit trail in the events ring and in the store.

mod common;

use std::time::Duration;

use common::*;
use protocol::admin::{
    ActionReply, DispatcherReply, EventKind, EventsReply, PlayersReply, Presence, Role, RoomDetail,
    RoomsReply, ShardInfo, ShardState, WhoAmI,
};
use protocol::{CloseCode, ErrorCode, NoticeCode, ServerMsg};
use server::config::Config;
use server::store::embedded::EmbeddedStore;
use server::store::Store;
use server::ShardHandle;

const OPERATOR: &str = "operator-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789ab";
const LEGACY: &str = "legacy-admin-token-012345";
const SECRET: &str = "a-test-secret-of-32-bytes-length";

fn config() -> Config {
    let mut config = test_config();
    config.auth.secret = SECRET.into();
    config.admin.token = LEGACY.into();
    config.admin.tokens = operator_and_viewer(OPERATOR, VIEWER);
    config
}

async fn get<T: serde::de::DeserializeOwned>(shard: &ShardHandle, path: &str, token: &str) -> T {
    let (status, body) = http(
        "GET",
        &format!("http://{}{path}", shard.http_addr),
        Some(token),
        "",
    )
    .await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

async fn post(shard: &ShardHandle, path: &str, token: &str, body: &str) -> (u16, String) {
    http_post(
        &format!("http://{}{path}", shard.http_addr),
        Some(token),
        body,
    )
    .await
}

/// Poll `f` until it returns `Some`, within a generous deadline.
/// A new connection that says hello with `player`'s token (and waits for
/// nothing: the caller reads the answer).
async fn hello_as(shard: &ShardHandle, player: &str) -> Client {
    let mut client = Client::connect(shard.ws_addr).await;
    client
        .send(protocol::ClientMsg::Hello(protocol::msg::Hello {
            version: protocol::PROTOCOL_VERSION,
            token: Some(token(SECRET, player)),
            resume: None,
            name: None,
        }))
        .await;
    client
}

async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_viewer_reads_an_operator_acts_and_a_wrong_token_does_neither() {
    let shard = start(config());
    let who: WhoAmI = get(&shard, "/admin/whoami", VIEWER).await;
    assert_eq!((who.name.as_str(), who.role), ("victor", Role::Viewer));
    let who: WhoAmI = get(&shard, "/admin/whoami", LEGACY).await;
    assert_eq!((who.name.as_str(), who.role), ("admin", Role::Operator));
    let info: ShardInfo = get(&shard, "/admin/shard", VIEWER).await;
    assert_eq!(info.state, ShardState::Ready);
    assert!(!info.cluster);
    assert_eq!(info.id, shard.http_addr.to_string());

    let (status, body) = post(&shard, "/admin/players/anyone/kick", VIEWER, "").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("viewer"), "{body}");
    let (status, _) = post(&shard, "/admin/announce", VIEWER, r#"{"text":"hi"}"#).await;
    assert_eq!(status, 403);
    let (status, _) = post(&shard, "/admin/rooms/test/restart", VIEWER, "").await;
    assert_eq!(status, 403);
    let (status, _) = http(
        "GET",
        &format!("http://{}/admin/rooms", shard.http_addr),
        Some("not-a-configured-token!"),
        "",
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post(&shard, "/admin/announce", OPERATOR, r#"{"text":"hi"}"#).await;
    assert_eq!(status, 200);
    let (status, _) = http(
        "GET",
        &format!("http://{}/healthz/ready", shard.http_addr),
        None,
        "",
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_views_show_rooms_members_players_and_topics() {
    let shard = start(config());
    let (mut alice, joined) = Client::joined(shard.ws_addr, "alice", "test").await;
    alice.walk(1, 1.0, 0.0).await;
    let rooms: RoomsReply = eventually("the room is listed with its member", || async {
        let rooms: RoomsReply = get(&shard, "/admin/rooms", VIEWER).await;
        rooms
            .rooms
            .iter()
            .any(|r| r.id == "test" && r.members == 1)
            .then_some(rooms)
    })
    .await;
    let room = rooms.rooms.iter().find(|r| r.id == "test").unwrap();
    assert_eq!((room.map.as_str(), room.instance), ("test", 1));
    assert_eq!(room.owner, shard.http_addr.to_string());
    assert_eq!((room.epoch, room.members_remote), (0, 0));

    // The inspector shows alice moving right.
    let detail: RoomDetail = eventually("alice moved in the inspector", || async {
        let d: RoomDetail = get(&shard, "/admin/rooms/test", VIEWER).await;
        d.members.iter().any(|m| m.x > 500.0).then_some(d)
    })
    .await;
    assert_eq!(detail.width, 2_000.0);
    let me = &detail.members[0];
    assert_eq!(me.entity, joined.you);
    assert_eq!(me.name, "alice");
    assert!(me.connected);
    assert!(me.session_age_s.is_some());

    let found: PlayersReply = get(&shard, "/admin/players?q=ALI", VIEWER).await;
    assert_eq!(found.players.len(), 1, "{found:?}");
    assert_eq!(found.players[0].room.as_deref(), Some("test"));
    assert_eq!(found.players[0].presence, Presence::Connected);
    let none: PlayersReply = get(&shard, "/admin/players?q=nobody", VIEWER).await;
    assert!(none.players.is_empty());

    let topics: DispatcherReply = get(&shard, "/admin/dispatcher", VIEWER).await;
    let announcements = topics
        .topics
        .iter()
        .find(|t| t.topic == "announcements")
        .expect("the announcements topic");
    assert_eq!(announcements.subscribers, 1);

    let info: ShardInfo = get(&shard, "/admin/shard", VIEWER).await;
    assert_eq!((info.sessions, info.rooms), (1, 1));

    let (status, body) = http(
        "GET",
        &format!("http://{}/admin/rooms/atlantis", shard.http_addr),
        Some(VIEWER),
        "",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = http(
        "GET",
        &format!("http://{}/admin/events?since=soon", shard.http_addr),
        Some(VIEWER),
        "",
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_kick_disconnects_the_player_and_is_audited_in_events_and_the_store() {
    let shard = start(config());
    let (mut alice, welcome) = Client::welcomed(shard.ws_addr, "alice").await;
    alice.join("test").await;
    let path = format!("/admin/players/{}/kick", welcome.player_id);
    let (status, body) = post(&shard, &path, OPERATOR, r#"{"reason":"afk farming"}"#).await;
    assert_eq!(status, 200, "{body}");
    let reply: ActionReply = serde_json::from_str(&body).unwrap();
    assert_eq!(reply.result, "kicked");
    let error = alice
        .expect_refusal(ErrorCode::Kicked, CloseCode::Removed)
        .await;
    assert!(error.text.contains("afk farming"), "{}", error.text);

    // A kick of a player who is not here is refused, and audited as
    // refused.
    let (status, _) = post(&shard, "/admin/players/nobody/kick", OPERATOR, "").await;
    assert_eq!(status, 404);
    let (status, _) = post(&shard, &path, OPERATOR, "{not json").await;
    assert_eq!(status, 400);

    let events: EventsReply = get(&shard, "/admin/events?since=0", VIEWER).await;
    let actions: Vec<_> = events
        .events
        .iter()
        .filter(|e| e.kind == EventKind::AdminAction)
        .collect();
    assert_eq!(actions.len(), 2, "{events:?}");
    assert_eq!(actions[0].actor.as_deref(), Some("olga"));
    assert_eq!(actions[0].action.as_deref(), Some("kick"));
    assert_eq!(actions[0].result.as_deref(), Some("ok"));
    assert_eq!(actions[1].result.as_deref(), Some("refused 404"));
    let later: EventsReply = get(
        &shard,
        &format!("/admin/events?since={}", events.next),
        VIEWER,
    )
    .await;
    assert!(later.events.is_empty());

    // The store has both rows (a read-only handle beside the shard's).
    let store = EmbeddedStore::open_read_only(shard.data.path()).unwrap();
    let audit = store.load_audit(10).await.unwrap();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert_eq!(audit[0].actor.as_deref(), Some("olga"));
    assert_eq!(audit[0].subject, welcome.player_id);
}

#[tokio::test]
async fn a_ban_closes_the_session_holds_at_hello_across_a_restart_and_unban_lifts_it() {
    let config = config();
    let data = tempfile::tempdir().unwrap();
    let shard = start_on(config.clone(), data.path());
    let mut ada = Client::connect(shard.ws_addr).await;
    ada.hello_with(Some(token(SECRET, "ada")), "ada").await;
    let (status, body) = post(
        &shard,
        "/admin/players/ada/ban",
        OPERATOR,
        r#"{"reason":""}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        &shard,
        "/admin/players/ada/ban",
        OPERATOR,
        r#"{"reason":"griefing","duration_s":0}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(
        &shard,
        "/admin/players/ada/ban",
        OPERATOR,
        r#"{"reason":"griefing"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let error = ada
        .expect_refusal(ErrorCode::Banned, CloseCode::Removed)
        .await;
    assert!(error.text.contains("griefing"), "{}", error.text);

    hello_as(&shard, "ada")
        .await
        .expect_refusal(ErrorCode::Banned, CloseCode::Removed)
        .await;
    // Someone else still gets in.
    let mut bea = Client::connect(shard.ws_addr).await;
    bea.hello_with(Some(token(SECRET, "bea")), "bea").await;
    drop(bea);

    // The ban is in the store: a restarted shard still refuses ada.
    shard.shutdown();
    let shard = start_on(config, data.path());
    hello_as(&shard, "ada")
        .await
        .expect_refusal(ErrorCode::Banned, CloseCode::Removed)
        .await;

    let (status, body) = post(&shard, "/admin/players/ada/unban", OPERATOR, "").await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = post(&shard, "/admin/players/ada/unban", OPERATOR, "").await;
    assert_eq!(status, 404, "nothing left to lift");
    let mut back = Client::connect(shard.ws_addr).await;
    back.hello_with(Some(token(SECRET, "ada")), "ada").await;

    // A ban with a duration ends by itself.
    let (status, body) = post(
        &shard,
        "/admin/players/cid/ban",
        LEGACY,
        r#"{"reason":"cooling off","duration_s":1}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("until"), "{body}");
    eventually("the timed ban ended", || async {
        match hello_as(&shard, "cid").await.next_event(WAIT).await {
            Some(Event::Msg(ServerMsg::Welcome(_))) => Some(()),
            _ => None,
        }
    })
    .await;
}

#[tokio::test]
async fn a_room_restart_resyncs_its_members_and_shows_in_events() {
    let shard = start(config());
    let (mut alice, _) = Client::joined(shard.ws_addr, "alice", "test").await;
    let (status, body) = post(&shard, "/admin/rooms/test/restart", OPERATOR, "").await;
    assert_eq!(status, 200, "{body}");
    // The full view first, then the notice (as after a crash).
    alice
        .expect("full update", msg!(ServerMsg::Update(u) if u.full))
        .await;
    alice.expect_notice(NoticeCode::RoomRestarted).await;
    let events: EventsReply = eventually("the restart is an event", || async {
        let e: EventsReply = get(&shard, "/admin/events", VIEWER).await;
        e.events
            .iter()
            .any(|e| e.kind == EventKind::RoomRestarted && e.subject == "test")
            .then_some(e)
    })
    .await;
    let restarted = events
        .events
        .iter()
        .find(|e| e.kind == EventKind::RoomRestarted)
        .unwrap();
    assert!(restarted.detail.contains("operator"), "{restarted:?}");
    let rooms: RoomsReply = get(&shard, "/admin/rooms", VIEWER).await;
    assert_eq!(rooms.rooms[0].restarts, 1);
    let info: ShardInfo = get(&shard, "/admin/shard", VIEWER).await;
    assert_eq!(info.restarts, 1);
    let (status, _) = post(&shard, "/admin/rooms/atlantis/restart", OPERATOR, "").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn readiness_turns_503_while_the_shard_closes_its_sessions() {
    let shard = start(config());
    let url = format!("http://{}/healthz/ready", shard.http_addr);
    let (status, body) = http("GET", &url, None, "").await;
    assert_eq!(status, 200, "{body}");
    // A client that never answers the close keeps its session lingering
    // (server.close_linger_ms), so shutdown waits for it with HTTP up.
    let (alice, _) = Client::welcomed(shard.ws_addr, "alice").await;
    let common::TestShard { shard, data } = shard;
    let stopping = std::thread::spawn(move || shard.shutdown());
    let status = eventually("readiness says 503", || {
        let url = url.clone();
        async move {
            let (status, _) = http("GET", &url, None, "").await;
            (status == 503).then_some(status)
        }
    })
    .await;
    assert_eq!(status, 503);
    drop(alice);
    tokio::task::spawn_blocking(move || stopping.join().unwrap())
        .await
        .unwrap();
    drop(data);
}
