//! One way to start a shard and one test client, shared by the integration
//! tests. The shard is the real thing (`server::start`) on loopback port 0;
//! the client speaks the real protocol over tokio-tungstenite.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use protocol::msg::*;
use protocol::{decode_server, encode_client, ClientMsg, ServerMsg, PROTOCOL_VERSION};
use server::config::{Config, MapConfig};
use server::ShardHandle;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);

/// A picker for [`Client::expect`] (or any `&ServerMsg` filter): the
/// message's payload if it is that variant, cloned; with a guard, only a
/// payload the guard accepts; with `=> expr`, that expression of it.
///
/// ```ignore
/// client.expect("joined", msg!(ServerMsg::Joined)).await;
/// client.expect("left", msg!(ServerMsg::Left(l) if l.map == "test")).await;
/// client.expect("announce", msg!(ServerMsg::Announce(a) => a.text.clone())).await;
/// ```
#[macro_export]
macro_rules! msg {
    ($enum:ident :: $variant:ident) => {
        |m: &$enum| match m {
            $enum::$variant(x) => Some(x.clone()),
            _ => None,
        }
    };
    ($enum:ident :: $variant:ident ($x:ident) if $guard:expr => $out:expr) => {
        |m: &$enum| match m {
            $enum::$variant($x) if $guard => Some($out),
            _ => None,
        }
    };
    ($enum:ident :: $variant:ident ($x:ident) if $guard:expr) => {
        |m: &$enum| match m {
            $enum::$variant($x) if $guard => Some($x.clone()),
            _ => None,
        }
    };
    ($enum:ident :: $variant:ident ($x:ident) => $out:expr) => {
        |m: &$enum| match m {
            $enum::$variant($x) => Some($out),
            _ => None,
        }
    };
}

/// A picker for [`Client::expect`]: `entity`'s move `seq`, once an update
/// shows it applied.
pub fn own_move(entity: EntityId, seq: u32) -> impl FnMut(&ServerMsg) -> Option<Moved> {
    move |m| match m {
        ServerMsg::Update(u) => u
            .moved
            .iter()
            .find(|m| m.id == entity && m.seq == seq)
            .copied(),
        _ => None,
    }
}

/// An operator's and a viewer's admin token (`olga` and `victor`), for
/// tests of who may do what.
pub fn operator_and_viewer(operator: &str, viewer: &str) -> Vec<server::config::AdminToken> {
    use protocol::admin::Role;
    use server::config::AdminToken;
    vec![
        AdminToken {
            token: operator.into(),
            role: Role::Operator,
            name: "olga".into(),
        },
        AdminToken {
            token: viewer.into(),
            role: Role::Viewer,
            name: "victor".into(),
        },
    ]
}

/// A config for tests: loopback port 0, one worker, and a `test` map where
/// players spawn on one spot, see 100 units and walk 1000 units a second.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.ws_addr = "127.0.0.1:0".parse().unwrap();
    config.server.http_addr = "127.0.0.1:0".parse().unwrap();
    config.server.workers = 2;
    config.rooms.arbiters = 2;
    config.server.shutdown_grace_ms = 3_000;
    config.supervision.fallback_map = "other".into();
    config.maps = vec![
        MapConfig {
            name: "test".into(),
            width: 2_000.0,
            height: 2_000.0,
            spawn: [500.0, 500.0],
            spawn_radius: 0.0,
            speed: 1_000.0,
            view_radius: Some(100.0),
            ..MapConfig::default()
        },
        MapConfig {
            name: "other".into(),
            spawn_radius: 0.0,
            ..MapConfig::default()
        },
    ];
    config
}

/// A test shard and the directory of its embedded store, removed after.
pub struct TestShard {
    pub shard: ShardHandle,
    pub data: tempfile::TempDir,
}

impl std::ops::Deref for TestShard {
    type Target = ShardHandle;
    fn deref(&self) -> &ShardHandle {
        &self.shard
    }
}

/// Start a shard on an existing store directory (a restart).
pub fn start_on(mut config: Config, dir: &std::path::Path) -> ShardHandle {
    config.store.embedded.dir = dir.to_path_buf();
    server::start(config).expect("test shard starts")
}

/// Start a shard with its own embedded store directory.
pub fn start(mut config: Config) -> TestShard {
    let data = tempfile::tempdir().expect("temp dir");
    config.store.embedded.dir = data.path().to_path_buf();
    let shard = server::start(config).expect("test shard starts");
    TestShard { shard, data }
}

pub enum Event {
    Msg(ServerMsg),
    Closed(Option<u16>),
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
            .await
            .expect("websocket connects");
        Client { ws }
    }

    /// Connect, say hello as `name`, and return the welcome.
    pub async fn welcomed(addr: SocketAddr, name: &str) -> (Client, Welcome) {
        let mut client = Client::connect(addr).await;
        let welcome = client.hello(name).await;
        (client, welcome)
    }

    /// Connect, hello, join `map`; returns the client and its `joined`.
    pub async fn joined(addr: SocketAddr, name: &str, map: &str) -> (Client, Joined) {
        let (mut client, _) = Client::welcomed(addr, name).await;
        let joined = client.join(map).await;
        (client, joined)
    }

    pub async fn send(&mut self, msg: ClientMsg) {
        self.ws
            .send(Message::Binary(encode_client(&msg).into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send raw");
    }

    /// Send `msgs` in one write, as a client that does not wait for
    /// answers (`hello` and `join` in one flight).
    pub async fn send_in_one_flight(&mut self, msgs: &[ClientMsg]) {
        for msg in msgs {
            let frame = Message::Binary(encode_client(msg).into());
            self.ws.feed(frame).await.expect("send");
        }
        self.ws.flush().await.expect("send");
    }

    /// Everything up to the first `joined` within `patience`, and that
    /// `joined`; an error frame or a close fails.
    pub async fn until_joined(&mut self, patience: Duration) -> (Vec<ServerMsg>, Joined) {
        let deadline = tokio::time::Instant::now() + patience;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Msg(ServerMsg::Joined(joined))) => return (before, joined),
                Some(Event::Msg(ServerMsg::Error(e))) => {
                    panic!("error frame {e:?} after {before:?}")
                }
                Some(Event::Msg(msg)) => before.push(msg),
                Some(Event::Closed(code)) => panic!("closed {code:?} after {before:?}"),
                None => panic!("no joined within {patience:?}, after {before:?}"),
            }
        }
    }

    /// The next server message or the close, skipping WebSocket pings.
    pub async fn next_event(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            match frame {
                None | Some(Err(_)) => return Some(Event::Closed(None)),
                Some(Ok(Message::Binary(bytes))) => {
                    let msg = decode_server(&bytes, 1 << 20).expect("server frames decode");
                    return Some(Event::Msg(msg));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Some(Event::Closed(frame.map(|f| u16::from(f.code))))
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Wait for the first message `pick` accepts, skipping the others.
    pub async fn expect<T>(
        &mut self,
        what: &str,
        mut pick: impl FnMut(&ServerMsg) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Msg(msg)) => {
                    if let Some(found) = pick(&msg) {
                        return found;
                    }
                }
                Some(Event::Closed(code)) => panic!("closed ({code:?}) while waiting for {what}"),
                None => panic!("timed out waiting for {what}"),
            }
        }
    }

    pub async fn expect_error(&mut self, code: protocol::ErrorCode) -> ErrorMsg {
        self.expect(
            &format!("error {code:?}"),
            msg!(ServerMsg::Error(e) if e.code == code.as_u16()),
        )
        .await
    }

    pub async fn expect_notice(&mut self, code: protocol::NoticeCode) -> Notice {
        self.expect(
            &format!("notice {code:?}"),
            msg!(ServerMsg::Notice(n) if n.code == code.as_u16()),
        )
        .await
    }

    /// Wait for error `code`, then for the server to close with `close`:
    /// how the server refuses a connection.
    pub async fn expect_refusal(
        &mut self,
        code: protocol::ErrorCode,
        close: protocol::CloseCode,
    ) -> ErrorMsg {
        let error = self.expect_error(code).await;
        assert_eq!(self.expect_close().await, Some(close.as_u16()));
        error
    }

    /// Read until the socket closes; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.next_event(WAIT).await {
                Some(Event::Msg(_)) => continue,
                Some(Event::Closed(code)) => return code,
                None => panic!("socket still open after {WAIT:?}"),
            }
        }
    }

    /// Collect every message for `wait`.
    pub async fn drain(&mut self, wait: Duration) -> Vec<ServerMsg> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_event(left).await {
                Some(Event::Msg(msg)) => got.push(msg),
                Some(Event::Closed(_)) | None => return got,
            }
        }
    }

    pub async fn hello(&mut self, name: &str) -> Welcome {
        self.hello_with(None, name).await
    }

    /// Say hello with only a resume token.
    pub async fn send_resume(&mut self, resume: String) {
        self.send(ClientMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            token: None,
            resume: Some(resume),
            name: None,
        }))
        .await;
    }

    /// Hello with a session token (a stable identity across shards).
    pub async fn hello_with(&mut self, token: Option<String>, name: &str) -> Welcome {
        self.send(ClientMsg::Hello(Hello {
            version: PROTOCOL_VERSION,
            token,
            resume: None,
            name: Some(name.into()),
        }))
        .await;
        self.expect("welcome", msg!(ServerMsg::Welcome)).await
    }

    pub async fn join(&mut self, map: &str) -> Joined {
        self.send(ClientMsg::Join(Join { map: map.into() })).await;
        self.expect("joined", msg!(ServerMsg::Joined)).await
    }

    pub async fn walk(&mut self, seq: u32, dx: f32, dy: f32) {
        self.send(ClientMsg::Move(Move { seq, dx, dy })).await;
    }

    /// Wait for an `inventory` frame with `currency`.
    pub async fn expect_currency(&mut self, currency: i64) -> Inventory {
        self.expect(
            &format!("inventory with {currency}"),
            msg!(ServerMsg::Inventory(i) if i.currency == currency),
        )
        .await
    }

    pub async fn give(&mut self, req: u32, to: EntityId, currency: i64) {
        self.send(ClientMsg::Give(Give {
            req,
            to,
            currency,
            items: Default::default(),
        }))
        .await;
    }

    pub async fn expect_done(&mut self, req: u32) -> Done {
        self.expect(
            &format!("done {req}"),
            msg!(ServerMsg::Done(d) if d.req == req),
        )
        .await
    }

    pub async fn chat(&mut self, text: &str) {
        self.send(ClientMsg::Chat(ChatSend { text: text.into() }))
            .await;
    }
}

/// Entities a client knows of, kept from `joined` and `update`s.
#[derive(Default, Debug)]
pub struct View {
    pub entities: std::collections::BTreeMap<EntityId, (f32, f32, u32)>,
}

impl View {
    pub fn from_joined(joined: &Joined) -> View {
        let mut view = View::default();
        for e in &joined.entities {
            view.entities.insert(e.id, (e.x, e.y, e.seq));
        }
        view
    }

    pub fn apply(&mut self, update: &Update) {
        if update.full {
            self.entities.clear();
        }
        for e in &update.entered {
            self.entities.insert(e.id, (e.x, e.y, e.seq));
        }
        for m in &update.moved {
            self.entities.insert(m.id, (m.x, m.y, m.seq));
        }
        for id in &update.left {
            self.entities.remove(id);
        }
    }
}

/// A minimal HTTP/1.1 request over a raw socket (the tests need no HTTP
/// client crate); returns the status and the body.
pub async fn http(method: &str, url: &str, bearer: Option<&str>, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http:// url");
    let (host, path) = rest.split_once('/').expect("url with a path");
    let mut stream = TcpStream::connect(host).await.expect("http connect");
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("http write");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("http read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("http status");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub async fn http_post(url: &str, bearer: Option<&str>, body: &str) -> (u16, String) {
    http("POST", url, bearer, body).await
}

pub async fn http_get(url: &str) -> String {
    http("GET", url, None, "").await.1
}

/// The shard's `/metrics` text.
pub async fn metrics(shard: &ShardHandle) -> String {
    http_get(&format!("http://{}/metrics", shard.http_addr)).await
}

/// Point `config` at a MongoDB (SecantusDB) at `uri`, with timeouts short
/// enough for an outage test to see the store go down and come back.
pub fn use_mongo(config: &mut Config, uri: String, database: &str) {
    let store = &mut config.store;
    store.backend = server::config::Backend::Mongodb;
    store.mongodb.uri = uri;
    store.mongodb.database = database.into();
    store.mongodb.server_selection_timeout_ms = 700;
    store.mongodb.connect_timeout_ms = 700;
    store.durable_timeout_ms = 1_500;
    store.retry_min_ms = 50;
    store.retry_max_ms = 500;
}

/// Sign in as `name` (a token signed with `secret`) once the shard's store
/// answers, and join `map`. A login before the persister has connected
/// plays without a profile, so this signs in again until the starter purse
/// (currency 100) comes, within `patience`.
pub async fn signed_in_and_joined(
    addr: SocketAddr,
    secret: &str,
    name: &str,
    map: &str,
    patience: Duration,
) -> (Client, Joined) {
    let deadline = Instant::now() + patience;
    let mut client = loop {
        let mut client = Client::connect(addr).await;
        client.hello_with(Some(token(secret, name)), name).await;
        let mut purse = false;
        while let Some(Event::Msg(msg)) = client.next_event(Duration::from_secs(2)).await {
            if matches!(msg, ServerMsg::Inventory(i) if i.currency == 100) {
                purse = true;
                break;
            }
        }
        if purse {
            break client;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: the store never answered a login"
        );
    };
    client.send(ClientMsg::Join(Join { map: map.into() })).await;
    let joined = wait_for(patience, &mut client, "joined", |m| match m {
        ServerMsg::Joined(j) => Some(j.clone()),
        _ => None,
    })
    .await;
    (client, joined)
}

/// A session token for `player` signed with `secret`, valid for 10 minutes.
pub fn token(secret: &str, player: &str) -> String {
    server::auth::mint_with_key(
        secret.as_bytes(),
        &server::auth::Claims {
            sub: player.into(),
            name: player.into(),
            exp: server::auth::unix_now() + 600,
            sid: None,
        },
    )
}

/// The real `tessera-server` binary in a process of its own (for crash
/// tests), SIGKILLed when dropped.
pub struct ServerProcess(std::process::Child);

impl ServerProcess {
    /// Start it with ws and http on port 0 and `envs`; returns once it
    /// printed its ws address.
    pub fn spawn(envs: &[(&str, &std::ffi::OsStr)]) -> (ServerProcess, SocketAddr) {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let mut child = Command::new(env!("CARGO_BIN_EXE_tessera-server"))
            .args(["--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .envs(envs.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the server binary starts");
        let line = BufReader::new(child.stdout.take().expect("piped stdout"))
            .lines()
            .next()
            .expect("the server prints its ws address")
            .expect("readable stdout");
        let addr = line
            .strip_prefix("ws listening on ")
            .expect("the first line is the ws address")
            .parse()
            .expect("a socket address");
        (ServerProcess(child), addr)
    }

    /// SIGKILL, as a crash: no shutdown, no flush.
    pub fn kill_hard(mut self) {
        self.0.kill().expect("SIGKILL the server");
        let _ = self.0.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait until `check` holds, polling every 50 ms; panic naming `what`
/// once `patience` has passed. Tests wait for conditions, never for a time.
pub async fn eventually<F, Fut>(patience: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + patience;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within {patience:?}");
}

/// Poll `check` until it finds something; panic naming `what` once
/// `patience` has passed.
pub async fn found<T, F, Fut>(patience: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + patience;
    while tokio::time::Instant::now() < deadline {
        if let Some(found) = check().await {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: not within {patience:?}");
}

/// The first message `pick` accepts within `patience`, skipping others;
/// a close or the deadline panics naming `what`.
pub async fn wait_for<T>(
    patience: Duration,
    client: &mut Client,
    what: &str,
    mut pick: impl FnMut(&ServerMsg) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_event(left).await {
            Some(Event::Msg(msg)) => {
                if let Some(found) = pick(&msg) {
                    return found;
                }
            }
            Some(Event::Closed(code)) => panic!("closed ({code:?}) while waiting for {what}"),
            None => panic!("timed out waiting for {what}"),
        }
    }
}

/// A player signed in at `addr` with a token for `name` signed by
/// `secret`, joined to `map` within `patience`: its client and entity.
pub async fn signed_in_player(
    addr: SocketAddr,
    secret: &str,
    name: &str,
    map: &str,
    patience: Duration,
) -> (Client, EntityId) {
    let mut client = Client::connect(addr).await;
    client.hello_with(Some(token(secret, name)), name).await;
    client.send(ClientMsg::Join(Join { map: map.into() })).await;
    let you = wait_for(patience, &mut client, "joined", |m| match m {
        ServerMsg::Joined(j) => Some(j.you),
        _ => None,
    })
    .await;
    (client, you)
}
