//! One player per cluster: real shards in cluster mode (in this process,
//! each with its own embedded store and peer tunnel on 127.0.0.1 port 0)
//! over one real `redis-server`, and real WebSocket clients. A second
//! login on another shard replaces the first session; a resume token
//! works on any shard, once; announcements cross each tunnel once; a
//! Redis outage refuses logins with 5005 and disconnects no one; kicks
//! and bans reach the shard holding the player. Every wait is for a
//! condition, with a generous deadline.

mod common;
mod redis_support;

use std::time::{Duration, Instant};

use common::{http, token, Client, Event, TestShard};
use protocol::admin::{PeerState, Peers, Role};
use protocol::msg::{Announce, Hello, Join, Ping};
use protocol::{ClientMsg, CloseCode, ErrorCode, ServerMsg, PROTOCOL_VERSION};
use redis_support::RedisServer;
use server::config::{AdminToken, Config};

const SECRET: &str = "a-test-secret-of-32-bytes-length";
const CLUSTER_SECRET: &str = "a cluster secret of at least 32 bytes!";
const OPERATOR: &str = "operator-token-0123456789";
const PATIENCE: Duration = Duration::from_secs(30);
/// How long a login waits for Redis in these tests (`cluster.redis_wait_ms`):
/// below the test client's 5 s wait for an answer.
const REDIS_WAIT_MS: u64 = 3_000;

/// Shards of one cluster over one Redis, stopped when dropped.
struct Cluster {
    shards: Vec<TestShard>,
}

impl Cluster {
    /// `ids.len()` shards under key prefix `prefix`, every tunnel up.
    async fn start(redis: &RedisServer, prefix: &str, ids: &[&str]) -> Cluster {
        Cluster::start_with(redis, prefix, ids, |config| {
            config.auth.secret = SECRET.into();
        })
        .await
    }

    /// [`Cluster::start`], with `tweak` applied to each shard's config.
    async fn start_with(
        redis: &RedisServer,
        prefix: &str,
        ids: &[&str],
        tweak: fn(&mut Config),
    ) -> Cluster {
        let mut shards = Vec::new();
        for id in ids {
            let mut config = common::test_config();
            config.admin.tokens = vec![AdminToken {
                token: OPERATOR.into(),
                role: Role::Operator,
                name: "olga".into(),
            }];
            let c = &mut config.cluster;
            c.redis = redis.url();
            c.secret = CLUSTER_SECRET.into();
            c.key_prefix = prefix.into();
            c.shard_id = (*id).into();
            c.peer_addr = "127.0.0.1:0".parse().unwrap();
            c.heartbeat_ms = 200;
            c.shard_ttl_ms = 2_000;
            c.redis_wait_ms = REDIS_WAIT_MS;
            // Longer than the default's 500 ms: these tests share two
            // cores with other builds (below renew_ms, as required).
            c.redis_timeout_ms = 900;
            tweak(&mut config);
            let shard = tokio::task::spawn_blocking(move || common::start(config))
                .await
                .unwrap();
            shards.push(shard);
        }
        let cluster = Cluster { shards };
        let n = ids.len();
        for shard in &cluster.shards {
            common::eventually(
                PATIENCE,
                "every shard's tunnel to every other is up",
                || async {
                    let peers: Peers = admin_get(shard, "/admin/peers").await;
                    peers
                        .peers
                        .iter()
                        .filter(|p| p.state == PeerState::Connected)
                        .count()
                        == n - 1
                },
            )
            .await;
        }
        cluster
    }

    fn shard(&self, i: usize) -> &TestShard {
        &self.shards[i]
    }

    async fn stop(self) {
        tokio::task::spawn_blocking(move || drop(self.shards))
            .await
            .unwrap();
    }
}

async fn admin_get<T: serde::de::DeserializeOwned>(shard: &TestShard, path: &str) -> T {
    let url = format!("http://{}{path}", shard.http_addr);
    let (status, body) = http("GET", &url, Some(OPERATOR), "").await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

async fn admin_post(shard: &TestShard, path: &str, body: &str) -> (u16, String) {
    let url = format!("http://{}{path}", shard.http_addr);
    http("POST", &url, Some(OPERATOR), body).await
}

/// A client of `shard` signed in as `player` (a token of the shared
/// secret), with its welcome.
async fn login(shard: &TestShard, player: &str) -> (Client, protocol::msg::Welcome) {
    let mut client = Client::connect(shard.ws_addr).await;
    let welcome = client.hello_with(Some(token(SECRET, player)), player).await;
    (client, welcome)
}

async fn resume(shard: &TestShard, resume_token: &str) -> Client {
    let mut client = Client::connect(shard.ws_addr).await;
    client.send_resume(resume_token.to_string()).await;
    client
}

/// Ada resumes with `token` on `shard` (id `id`): welcomed as ada, held
/// there by the directory in her seat in `test`, and the new session's
/// token recorded as her current one once its welcome went.
async fn resumed_in_seat(
    shard: &TestShard,
    id: &str,
    token: &str,
) -> (Client, protocol::msg::Welcome) {
    let mut client = resume(shard, token).await;
    let resumed = client
        .expect(&format!("welcome on {id}"), msg!(ServerMsg::Welcome))
        .await;
    assert_eq!(resumed.player_id, "ada");
    common::eventually(PATIENCE, "ada held here, still seated in test", || async {
        entry(shard, "ada").await == Some((id.into(), "test".into()))
    })
    .await;
    common::eventually(
        PATIENCE,
        "this session's token is ada's current one",
        || async { token_of(shard, "ada").await == resumed.session_id },
    )
    .await;
    (client, resumed)
}

/// Ada logs in on `a` and joins `test`; returned once the directory
/// seats her there.
async fn seated_on_a(a: &TestShard) -> (Client, protocol::msg::Welcome) {
    let (mut ada, welcome) = login(a, "ada").await;
    ada.join("test").await;
    common::eventually(PATIENCE, "the directory seats ada in test on a", || async {
        entry(a, "ada").await == Some(("a".into(), "test".into()))
    })
    .await;
    (ada, welcome)
}

/// The shard id holding `player` in the directory, and its room.
async fn entry(shard: &TestShard, player: &str) -> Option<(String, String)> {
    let dir = shard.cluster.as_ref().expect("cluster mode");
    dir.player(player)
        .await
        .ok()
        .flatten()
        .map(|e| (e.shard.to_string(), e.room))
}

/// The session id of `player`'s current resume token, as the directory
/// says.
async fn token_of(shard: &TestShard, player: &str) -> String {
    let dir = shard.cluster.as_ref().expect("cluster mode");
    dir.player(player)
        .await
        .ok()
        .flatten()
        .map(|e| e.resume)
        .unwrap_or_default()
}

/// What a fresh login of `player` on `shard` is answered first: a
/// welcome, or an error's code (0: no answer).
async fn hello_answer(shard: &TestShard, player: &str) -> Result<(), u16> {
    let mut client = Client::connect(shard.ws_addr).await;
    client
        .send(ClientMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            token: Some(token(SECRET, player)),
            resume: None,
            name: Some(player.into()),
        }))
        .await;
    match client.next_event(Duration::from_secs(10)).await {
        Some(Event::Msg(ServerMsg::Welcome(_))) => Ok(()),
        Some(Event::Msg(ServerMsg::Error(e))) => Err(e.code),
        // Closed, or nothing in time on a loaded machine: ask again.
        _ => Err(0),
    }
}

/// Whether the socket still answers a ping.
async fn answers_ping(client: &mut Client, t: u64) -> bool {
    client.send(ClientMsg::Ping(Ping { t })).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await {
            Some(Event::Msg(ServerMsg::Pong(p))) if p.t == t => return true,
            Some(Event::Msg(_)) => continue,
            Some(Event::Closed(_)) | None => return false,
        }
    }
}

/// Read until every one of `ends` was announced; how many times `text`
/// was announced meanwhile.
async fn count_until(client: &mut Client, text: &str, ends: &[&str]) -> usize {
    let mut seen = 0;
    let mut left: Vec<&str> = ends.to_vec();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !left.is_empty() {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(wait).await {
            Some(Event::Msg(ServerMsg::Announce(Announce { text: t }))) => {
                if t == text {
                    seen += 1;
                }
                left.retain(|e| *e != t);
            }
            Some(Event::Msg(_)) => {}
            Some(Event::Closed(code)) => panic!("closed ({code:?}) waiting for {left:?}"),
            None => panic!("timed out waiting for {left:?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_login_on_another_shard_replaces_the_first_session() {
    let redis = RedisServer::start();
    let cluster = Cluster::start(&redis, "cp1", &["a", "b"]).await;
    let (a, b) = (cluster.shard(0), cluster.shard(1));
    let (mut first, _) = login(a, "ada").await;
    first.join("test").await;
    common::eventually(PATIENCE, "the directory seats ada in test on a", || async {
        entry(a, "ada").await == Some(("a".into(), "test".into()))
    })
    .await;

    let (mut second, _) = login(b, "ada").await;
    // The first session is closed exactly as a local takeover closes it.
    first
        .expect_refusal(ErrorCode::SessionReplaced, CloseCode::Replaced)
        .await;
    // The directory says b holds ada now; the room stays recorded until
    // the new session's join reaches it.
    let (shard, _) = entry(b, "ada").await.expect("ada has an entry");
    assert_eq!(shard, "b");
    second.join("test").await;
    common::eventually(PATIENCE, "the directory seats ada in test on b", || async {
        entry(b, "ada").await == Some(("b".into(), "test".into()))
    })
    .await;
    // The newer session plays on.
    assert!(answers_ping(&mut second, 7).await);

    // A logout (close frame) releases the entry.
    second.ws.close(None).await.unwrap();
    common::eventually(PATIENCE, "the logout released ada's entry", || async {
        entry(a, "ada").await.is_none()
    })
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_from_one_shard_works_on_another_and_only_once() {
    let redis = RedisServer::start();
    let cluster = Cluster::start(&redis, "cp2", &["a", "b", "c"]).await;
    let (a, b, c) = (cluster.shard(0), cluster.shard(1), cluster.shard(2));
    let (ada, welcome) = seated_on_a(a).await;
    // The connection drops (no close frame): the seat is kept.
    drop(ada);

    // Issued on a, resumed on b.
    // The token a resume used stays current until the new session's
    // welcome is sent; then b's own is.
    let (mut on_b, resumed) = resumed_in_seat(b, "b", &welcome.resume_token).await;

    // The same token again, on a third shard and on the shard that issued
    // it (whose own table still thinks it is the latest): used already.
    for shard in [c, a] {
        let mut again = resume(shard, &welcome.resume_token).await;
        again
            .expect_refusal(ErrorCode::ResumeRejected, CloseCode::AuthFailed)
            .await;
    }
    assert!(answers_ping(&mut on_b, 1).await, "b's session is untouched");

    // b's own token resumes on a, replacing b's session.
    let mut back = resume(a, &resumed.resume_token).await;
    back.expect("welcome on a", msg!(ServerMsg::Welcome)).await;
    on_b.expect_refusal(ErrorCode::SessionReplaced, CloseCode::Replaced)
        .await;
    assert_eq!(entry(a, "ada").await.map(|e| e.0), Some("a".into()));
    cluster.stop().await;
}

/// A shard that accepts a resume and dies before its welcome does not
/// burn the token: the claim keeps the token it used current until the
/// welcome carrying the new one is sent. The window is made certain with
/// the session fault point `welcome` (behind `admin.fault_injection`):
/// the resuming session dies after the directory gave it the player and
/// before anything is sent, which leaves the directory exactly as a shard
/// killed there would (the session writes nothing after its claim until
/// its welcome). The player resumes on another shard with the same token;
/// once that shard's welcome is out, the old token is spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_token_survives_a_shard_dying_between_the_claim_and_the_welcome() {
    let redis = RedisServer::start();
    let cluster = Cluster::start_with(&redis, "cp7", &["a", "b", "c"], |config| {
        config.auth.secret = SECRET.into();
        config.admin.fault_injection = true;
    })
    .await;
    let (a, b, c) = (cluster.shard(0), cluster.shard(1), cluster.shard(2));
    let (ada, welcome) = seated_on_a(a).await;
    drop(ada);

    // b takes the resume, then its session dies before the welcome.
    let (status, body) = admin_post(
        b,
        "/admin/faults/session",
        r#"{"kind": "panic", "at": "welcome"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut on_b = resume(b, &welcome.resume_token).await;
    loop {
        match on_b.next_event(PATIENCE).await {
            Some(Event::Msg(ServerMsg::Welcome(_))) => panic!("b welcomed ada"),
            Some(Event::Msg(_)) => {}
            Some(Event::Closed(_)) => break,
            None => panic!("b neither welcomed nor closed"),
        }
    }
    assert_eq!(
        entry(b, "ada").await,
        Some(("b".into(), "test".into())),
        "b's claim was taken"
    );

    // The same token on c: ada is back, in her seat.
    let (mut on_c, _) = resumed_in_seat(c, "c", &welcome.resume_token).await;
    // Spent now.
    let mut again = resume(a, &welcome.resume_token).await;
    again
        .expect_refusal(ErrorCode::ResumeRejected, CloseCode::AuthFailed)
        .await;
    assert!(answers_ping(&mut on_c, 1).await, "c's session is untouched");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_and_map_broadcasts_reach_every_shard_exactly_once() {
    let redis = RedisServer::start();
    let cluster = Cluster::start(&redis, "cp3", &["a", "b", "c"]).await;
    let mut clients = Vec::new();
    for (i, name) in ["ann", "ben", "cat"].into_iter().enumerate() {
        let (mut client, _) = login(cluster.shard(i), name).await;
        client.join("test").await;
        clients.push(client);
    }
    let (status, body) = admin_post(cluster.shard(0), "/admin/announce", r#"{"text": "x"}"#).await;
    assert_eq!(status, 200, "{body}");
    for client in &mut clients {
        client
            .expect(
                "the announcement",
                msg!(ServerMsg::Announce(a) if a.text == "x"),
            )
            .await;
    }
    // A map broadcast reaches the map's players on every shard.
    let (status, body) = admin_post(
        cluster.shard(1),
        "/admin/announce",
        r#"{"text": "in test", "map": "test"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for client in &mut clients {
        client
            .expect(
                "the map broadcast",
                msg!(ServerMsg::Announce(a) if a.text == "in test"),
            )
            .await;
    }
    // Every shard announces an end marker after it delivered "x": a copy
    // of "x" that any shard forwarded would travel ahead of its marker on
    // the same stream, so counting up to all three markers sees it.
    for (i, end) in ["end-a", "end-b", "end-c"].into_iter().enumerate() {
        let body = format!(r#"{{"text": "{end}"}}"#);
        let (status, _) = admin_post(cluster.shard(i), "/admin/announce", &body).await;
        assert_eq!(status, 200);
    }
    for client in &mut clients {
        let seen = count_until(client, "x", &["end-a", "end-b", "end-c"]).await;
        assert_eq!(seen, 0, "\"x\" arrived once, before the markers, not again");
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_refuses_logins_with_5005_and_disconnects_no_one() {
    let mut redis = RedisServer::start();
    let cluster = Cluster::start(&redis, "cp4", &["a", "b"]).await;
    let (a, b) = (cluster.shard(0), cluster.shard(1));
    let (mut ada, welcome) = login(a, "ada").await;
    ada.join("test").await;
    common::eventually(PATIENCE, "the directory seats ada", || async {
        entry(a, "ada").await == Some(("a".into(), "test".into()))
    })
    .await;

    redis.stop();
    let down_since = Instant::now();
    // A login must check presence: it waits for Redis, then 5005 and a
    // clean close (1013, try again later).
    let mut bea = Client::connect(b.ws_addr).await;
    bea.send(ClientMsg::Hello(Hello {
        version: PROTOCOL_VERSION,
        token: Some(token(SECRET, "bea")),
        resume: None,
        name: Some("bea".into()),
    }))
    .await;
    let error = bea.expect_error(ErrorCode::DirectoryUnavailable).await;
    assert!(error.text.contains("directory"), "{}", error.text);
    assert_eq!(
        bea.expect_close().await,
        Some(CloseCode::TryAgainLater.as_u16())
    );
    // A resume needs the directory too.
    let mut again = resume(b, &welcome.resume_token).await;
    again
        .expect_refusal(ErrorCode::DirectoryUnavailable, CloseCode::TryAgainLater)
        .await;
    // A guest is a new player nobody else can hold: its login needs no
    // check. Its join does: the room runs on a, and only the directory
    // says so; b waits for it, then answers 5005 and keeps the guest.
    let mut guest = Client::connect(b.ws_addr).await;
    guest.hello("gus").await;
    guest
        .send(ClientMsg::Join(Join { map: "test".into() }))
        .await;
    guest.expect_error(ErrorCode::DirectoryUnavailable).await;
    assert!(
        answers_ping(&mut guest, 9_999).await,
        "the guest is still connected"
    );
    // Ten seconds without Redis: the connected players play on.
    let mut seq = 1;
    while down_since.elapsed() < Duration::from_secs(10) {
        ada.walk(seq, 1.0, 0.0).await;
        assert!(
            answers_ping(&mut ada, u64::from(seq)).await,
            "ada is still connected"
        );
        seq += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    redis.restart();
    // Logins work again once Redis is back.
    common::eventually(PATIENCE, "a login on b works again", || async {
        hello_answer(b, "bea").await == Ok(())
    })
    .await;
    // Redis came back empty; a re-asserts the entry of the player it holds.
    common::eventually(PATIENCE, "ada's entry is back", || async {
        entry(a, "ada").await == Some(("a".into(), "test".into()))
    })
    .await;
    assert!(answers_ping(&mut ada, 999).await);
    assert!(answers_ping(&mut guest, 998).await);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_or_ban_made_on_one_shard_reaches_the_player_on_another() {
    let redis = RedisServer::start();
    let cluster = Cluster::start(&redis, "cp5", &["a", "b", "c"]).await;
    let (a, b, c) = (cluster.shard(0), cluster.shard(1), cluster.shard(2));

    let (mut kim, _) = login(b, "kim").await;
    kim.join("test").await;
    common::eventually(PATIENCE, "kim's entry names b", || async {
        entry(a, "kim").await.map(|e| e.0) == Some("b".into())
    })
    .await;
    // Asked to act only here (the console asks every shard): a shard
    // without her socket refuses, and relays nothing.
    let (status, body) = admin_post(a, "/admin/players/kim/kick", r#"{"local_only": true}"#).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("not connected to this shard"), "{body}");
    assert!(answers_ping(&mut kim, 997).await, "kim is still connected");
    let (status, body) = admin_post(a, "/admin/players/kim/kick", r#"{"reason": "afk"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("shard b"), "{body}");
    let error = kim
        .expect_refusal(ErrorCode::Kicked, CloseCode::Removed)
        .await;
    assert!(error.text.contains("afk"), "{}", error.text);
    // Nobody by that name anywhere: 404.
    let (status, _) = admin_post(a, "/admin/players/nobody/kick", "").await;
    assert_eq!(status, 404);

    let (mut bob, _) = login(b, "bob").await;
    bob.join("test").await;
    let (status, body) = admin_post(a, "/admin/players/bob/ban", r#"{"reason": "spam"}"#).await;
    assert_eq!(status, 200, "{body}");
    let error = bob
        .expect_refusal(ErrorCode::Banned, CloseCode::Removed)
        .await;
    assert!(error.text.contains("spam"), "{}", error.text);
    // Every shard refuses him at the next hello, though only a's store
    // holds the ban.
    for shard in [a, b, c] {
        common::eventually(PATIENCE, "the ban is in force on every shard", || async {
            hello_answer(shard, "bob").await == Err(ErrorCode::Banned.as_u16())
        })
        .await;
    }
    let (status, body) = admin_post(a, "/admin/players/bob/unban", "").await;
    assert_eq!(status, 200, "{body}");
    for shard in [c, b, a] {
        common::eventually(PATIENCE, "bob may sign in again everywhere", || async {
            hello_answer(shard, "bob").await == Ok(())
        })
        .await;
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_of_a_dev_mode_cluster_without_an_auth_secret_resumes_on_another_shard() {
    let redis = RedisServer::start();
    // No auth.secret: the shards sign with a key derived from the cluster
    // secret rather than a random one each.
    let cluster = Cluster::start_with(&redis, "cp6", &["a", "b"], |_| {}).await;
    let (a, b) = (cluster.shard(0), cluster.shard(1));
    let mut guest = Client::connect(a.ws_addr).await;
    let welcome = guest.hello("gus").await;
    guest.join("test").await;
    common::eventually(PATIENCE, "the guest's entry names a", || async {
        entry(a, &welcome.player_id).await.map(|e| e.0) == Some("a".into())
    })
    .await;
    drop(guest);
    let mut on_b = resume(b, &welcome.resume_token).await;
    let resumed = on_b.expect("welcome on b", msg!(ServerMsg::Welcome)).await;
    assert_eq!(resumed.player_id, welcome.player_id);
    cluster.stop().await;
}

/// Since 1.6, in cluster mode too: a `join` sent with a token's `hello`
/// waits through the directory's claim and the profile read, and is
/// answered after the welcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_sent_with_the_hello_waits_for_the_directory_and_the_welcome() {
    let redis = RedisServer::start();
    let cluster = Cluster::start(&redis, "cp7", &["a", "b"]).await;
    let b = cluster.shard(1);
    let mut ada = Client::connect(b.ws_addr).await;
    let hello = ClientMsg::Hello(Hello {
        version: PROTOCOL_VERSION,
        token: Some(token(SECRET, "ada")),
        resume: None,
        name: None,
    });
    let join = ClientMsg::Join(Join { map: "test".into() });
    ada.send_in_one_flight(&[hello, join]).await;
    let (before, joined) = ada.until_joined(PATIENCE).await;
    assert!(
        before.iter().any(|m| matches!(m, ServerMsg::Welcome(_))),
        "joined before the welcome: {before:?}"
    );
    assert_eq!(joined.map.name, "test");
    common::eventually(PATIENCE, "the directory seats ada in test on b", || async {
        entry(b, "ada").await == Some(("b".into(), "test".into()))
    })
    .await;
    cluster.stop().await;
}
