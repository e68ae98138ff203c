//! Store test support: a SecantusDB server (MongoDB wire protocol) on an
//! ephemeral loopback port, stopped on drop; one fixture per backend for
//! the conformance suite; and a fault-injecting [`Store`] wrapper that
//! simulates an outage of the embedded store.
//!
//! SecantusDB is found through `TESSERA_SECANTUSD` or at
//! `<repo>/.venv-secantus/bin/secantusd-py` (`scripts/secantus.sh` installs
//! it). A missing binary fails the test with that hint: never a silent skip.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use server::store::embedded::EmbeddedStore;
use server::store::model::DurableOp;
use server::store::mongo::MongoStore;
use server::store::{
    Backend, BatchReport, DurableAck, OpError, OpRecord, Persister, PlayerProfile, RoomState,
    Store, StoreConfig, StoreError, StoreFuture, TradeRecord, Volatile, VolatileKey,
};
use tempfile::TempDir;
use tokio::sync::watch;

/// How long SecantusDB may take to print its port.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,server=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The `secantusd-py` to run, or a panic that says how to install it.
pub fn secantusd() -> PathBuf {
    if let Some(path) = std::env::var_os("TESSERA_SECANTUSD") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "TESSERA_SECANTUSD={} does not exist; unset it or run scripts/secantus.sh",
            path.display()
        );
        return path;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the server crate lives in the workspace root");
    let path = repo.join(".venv-secantus/bin/secantusd-py");
    assert!(
        path.is_file(),
        "SecantusDB is not installed ({} is missing): run scripts/secantus.sh, \
         or point TESSERA_SECANTUSD at a secantusd-py",
        path.display()
    );
    path
}

/// Wait until every thread of `pid` shows the stopped state (`T`) in
/// `/proc`, after a SIGSTOP: `kill` returns when the stop is asked for,
/// and a thread running on the other CPU may still take a request sent
/// right after. Where `/proc` cannot be read (not Linux), returns at once.
pub fn wait_stopped(pid: u32, limit: Duration) {
    let task_dir = format!("/proc/{pid}/task");
    let deadline = Instant::now() + limit;
    loop {
        let Ok(tasks) = std::fs::read_dir(&task_dir) else {
            return;
        };
        let running: Vec<String> = tasks
            .flatten()
            .filter_map(|task| {
                let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
                // `tid (comm) state ...`: the state follows the last `)`.
                let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
                (!matches!(state, "T" | "t" | "Z" | "X"))
                    .then(|| format!("{:?} {state}", task.file_name()))
            })
            .collect();
        if running.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} not stopped {limit:?} after SIGSTOP: threads {running:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A SecantusDB server on 127.0.0.1, with its data in a temporary
/// directory. Stopped (SIGKILL) on drop.
pub struct Secantus {
    bin: PathBuf,
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    paused: bool,
}

impl Secantus {
    /// Start on a port the OS picks.
    pub fn start() -> Secantus {
        Self::start_on(0)
    }

    /// Start on `port` (0: any).
    pub fn start_on(port: u16) -> Secantus {
        let dir = tempfile::Builder::new()
            .prefix("secantus-")
            .tempdir()
            .expect("a temporary directory for SecantusDB");
        let bin = secantusd();
        let (child, port) = spawn(&bin, port, dir.path());
        Secantus {
            bin,
            child: Some(child),
            port,
            dir,
            paused: false,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn uri(&self) -> String {
        uri(self.port)
    }

    fn signal(&self, sig: &str) {
        let Some(child) = &self.child else { return };
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status()
            .expect("running kill(1)");
        assert!(status.success(), "kill -{sig} {} failed", child.id());
    }

    /// Freeze the server (SIGSTOP): connections stay open, nothing answers.
    /// Returns once every thread of the server is stopped: `kill` returns
    /// when the stop is asked for, and on a loaded machine a server thread
    /// running on the other CPU can still read and answer a request sent
    /// right after it (seen once: a flush "succeeded" against a frozen
    /// server).
    pub fn pause(&mut self) {
        self.signal("STOP");
        self.paused = true;
        if let Some(child) = &self.child {
            wait_stopped(child.id(), Duration::from_secs(5));
        }
    }

    pub fn resume(&mut self) {
        self.signal("CONT");
        self.paused = false;
    }

    /// Stop the server (SIGTERM, so it closes its files cleanly); the port
    /// refuses connections until [`Secantus::restart`].
    pub fn stop(&mut self) {
        if self.paused {
            self.resume();
        }
        self.signal("TERM");
        if let Some(mut child) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start again on the same port with the same data.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart after stop");
        // The port was just released; a few tries cover a slow release.
        let mut last = None;
        for _ in 0..20 {
            match try_spawn(&self.bin, self.port, self.dir.path()) {
                Ok((child, port)) => {
                    assert_eq!(port, self.port);
                    self.child = Some(child);
                    return;
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!("SecantusDB did not restart on port {}: {last:?}", self.port);
    }
}

impl Drop for Secantus {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn uri(port: u16) -> String {
    format!("mongodb://127.0.0.1:{port}/?directConnection=true")
}

fn spawn(bin: &Path, port: u16, dir: &Path) -> (Child, u16) {
    try_spawn(bin, port, dir).unwrap_or_else(|e| panic!("{e}"))
}

/// Start `secantusd-py` and read the port it bound from its log. Its
/// output goes on to `<dir>/secantusd.log`.
fn try_spawn(bin: &Path, port: u16, dir: &Path) -> Result<(Child, u16), String> {
    let log_path = dir.join("secantusd.log");
    let mut child = Command::new(bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--storage-path")
        .arg(dir.join("data"))
        .args(["--cache-size", "64M", "--log-level", "INFO"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stderr = child.stderr.take().expect("stderr was piped");
    let (port_tx, port_rx) = std::sync::mpsc::channel();
    let log_for_thread = log_path.clone();
    std::thread::spawn(move || {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_for_thread)
            .ok();
        // Runs until SecantusDB closes its stderr (when it exits).
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(log) = log.as_mut() {
                let _ = writeln!(log, "{line}");
            }
            if let Some(rest) = line.split("listening on 127.0.0.1:").nth(1) {
                if let Ok(port) = rest.trim().parse::<u16>() {
                    let _ = port_tx.send(port);
                }
            }
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(port) = port_rx.recv_timeout(Duration::from_millis(50)) {
            return Ok((child, port));
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "SecantusDB exited ({status}) before listening; its log:\n{log}"
            ));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "SecantusDB did not report its port within {START_TIMEOUT:?}; its log:\n{log}"
            ));
        }
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Embedded,
    Mongo,
}

/// One backend under test, with what the suite needs around it.
pub struct Fixture {
    pub kind: Kind,
    pub secantus: Option<Secantus>,
    pub dir: TempDir,
    pub database: String,
    /// The embedded store's outage switch.
    pub faults: Option<Faults>,
}

impl Fixture {
    pub fn new(kind: Kind) -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix("tessera-store-")
            .tempdir()
            .expect("a temporary directory");
        let secantus = (kind == Kind::Mongo).then(Secantus::start);
        Fixture {
            kind,
            secantus,
            dir,
            database: "tessera_test".into(),
            faults: None,
        }
    }

    /// A configuration tuned for tests: short intervals and timeouts.
    pub fn config(&self) -> StoreConfig {
        let mut c = StoreConfig {
            flush_interval_ms: 200,
            flush_timeout_ms: 5_000,
            durable_timeout_ms: 1_500,
            retry_min_ms: 50,
            retry_max_ms: 400,
            shutdown_flush_deadline_ms: 5_000,
            ..StoreConfig::default()
        };
        c.embedded.dir = self.dir.path().join("embedded");
        // The smallest page cache: the suite runs with pages evicted and
        // read back from the file, not all held in memory.
        c.embedded.cache_mb = 1;
        c.mongodb.database = self.database.clone();
        c.mongodb.server_selection_timeout_ms = 700;
        c.mongodb.connect_timeout_ms = 700;
        match &self.secantus {
            Some(s) => {
                c.backend = Backend::Mongodb;
                c.mongodb.uri = s.uri();
            }
            None => c.backend = Backend::Embedded,
        }
        c
    }

    /// Start a persister on this backend and wait until it is ready. The
    /// embedded store is wrapped in [`FaultStore`] so that the suite can
    /// take it down.
    pub async fn persister(&mut self, config: StoreConfig) -> Persister {
        let p = match self.kind {
            Kind::Mongo => Persister::start(config).expect("starting the persister"),
            Kind::Embedded => {
                let store = EmbeddedStore::open_with(&config.embedded).expect("opening redb");
                let (faulty, faults) = FaultStore::wrap(Arc::new(store));
                self.faults = Some(faults);
                Persister::with_store(config, Arc::new(faulty)).expect("starting the persister")
            }
        };
        assert!(
            p.wait_ready(Duration::from_secs(20)).await,
            "the store did not become ready"
        );
        p
    }

    /// A separate handle on the same data: a new Mongo client, or a
    /// read-only redb handle. What it reads was acknowledged by the store,
    /// not just by the persister's memory.
    pub async fn fresh(&self) -> Arc<dyn Store> {
        let config = self.config();
        match self.kind {
            Kind::Mongo => Arc::new(
                MongoStore::connect(&config.mongodb)
                    .await
                    .expect("a new Mongo client"),
            ),
            Kind::Embedded => Arc::new(
                EmbeddedStore::open_read_only(&config.embedded.dir)
                    .expect("a read-only redb handle"),
            ),
        }
    }

    /// Take the store down: SIGSTOP for SecantusDB (requests hang), a hang
    /// for the embedded store.
    pub fn outage_begin(&mut self) {
        match self.kind {
            Kind::Mongo => self.secantus.as_mut().expect("mongo fixture").pause(),
            Kind::Embedded => self
                .faults
                .as_ref()
                .expect("persister started")
                .set(Mode::Hang),
        }
    }

    pub fn outage_end(&mut self) {
        match self.kind {
            Kind::Mongo => self.secantus.as_mut().expect("mongo fixture").resume(),
            Kind::Embedded => self
                .faults
                .as_ref()
                .expect("persister started")
                .set(Mode::Normal),
        }
    }

    /// A second kind of outage: SecantusDB stopped and restarted on the
    /// same port and data (connections refused meanwhile); the embedded
    /// store fails every call.
    pub fn crash_begin(&mut self) {
        match self.kind {
            Kind::Mongo => self.secantus.as_mut().expect("mongo fixture").stop(),
            Kind::Embedded => self
                .faults
                .as_ref()
                .expect("persister started")
                .set(Mode::Fail),
        }
    }

    pub fn crash_end(&mut self) {
        match self.kind {
            Kind::Mongo => self.secantus.as_mut().expect("mongo fixture").restart(),
            Kind::Embedded => self
                .faults
                .as_ref()
                .expect("persister started")
                .set(Mode::Normal),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Calls wait until the mode changes, then go through.
    Hang,
    /// Calls fail at once as unavailable.
    Fail,
}

#[derive(Clone)]
pub struct Faults {
    mode: Arc<watch::Sender<Mode>>,
    refused: Arc<Mutex<HashSet<VolatileKey>>>,
}

impl Faults {
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Refuse (as a bad document would be) every batch holding `key`.
    pub fn refuse(&self, key: VolatileKey) {
        self.refused.lock().expect("refused keys").insert(key);
    }
}

/// A [`Store`] that passes every call to another one unless told to hang
/// or fail.
pub struct FaultStore {
    inner: Arc<dyn Store>,
    mode: watch::Receiver<Mode>,
    refused: Arc<Mutex<HashSet<VolatileKey>>>,
}

impl FaultStore {
    pub fn wrap(inner: Arc<dyn Store>) -> (FaultStore, Faults) {
        let (tx, rx) = watch::channel(Mode::Normal);
        let refused = Arc::new(Mutex::new(HashSet::new()));
        let faults = Faults {
            mode: Arc::new(tx),
            refused: refused.clone(),
        };
        (
            FaultStore {
                inner,
                mode: rx,
                refused,
            },
            faults,
        )
    }

    async fn gate(&self) -> Result<(), StoreError> {
        let mut rx = self.mode.clone();
        let mode = *rx
            .wait_for(|m| *m != Mode::Hang)
            .await
            .map_err(|_| StoreError::Unavailable("fault switch gone".into()))?;
        match mode {
            Mode::Fail => Err(StoreError::Unavailable("injected outage".into())),
            _ => Ok(()),
        }
    }
}

impl Store for FaultStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn prepare(&self) -> StoreFuture<'_, ()> {
        async move {
            self.gate().await?;
            self.inner.prepare().await
        }
        .boxed()
    }

    fn ping(&self) -> StoreFuture<'_, ()> {
        async move {
            self.gate().await?;
            self.inner.ping().await
        }
        .boxed()
    }

    fn write_volatile(&self, batch: Vec<Volatile>) -> StoreFuture<'_, BatchReport> {
        async move {
            self.gate().await?;
            let refused = {
                let keys = self.refused.lock().expect("refused keys");
                batch
                    .iter()
                    .find(|d| keys.contains(&d.key()))
                    .map(|d| d.key())
            };
            if let Some(key) = refused {
                return Err(StoreError::Backend(format!("injected refusal of {key}")));
            }
            self.inner.write_volatile(batch).await
        }
        .boxed()
    }

    fn write_room(&self, room: RoomState) -> StoreFuture<'_, bool> {
        async move {
            self.gate().await?;
            self.inner.write_room(room).await
        }
        .boxed()
    }

    fn claim_room(&self, room: String, epoch: u64) -> StoreFuture<'_, u64> {
        async move {
            self.gate().await?;
            self.inner.claim_room(room, epoch).await
        }
        .boxed()
    }

    fn apply(&self, op: DurableOp) -> BoxFuture<'_, Result<DurableAck, OpError>> {
        async move {
            self.gate().await?;
            self.inner.apply(op).await
        }
        .boxed()
    }

    fn load_or_create_player(&self, id: String, name: String) -> StoreFuture<'_, PlayerProfile> {
        async move {
            self.gate().await?;
            self.inner.load_or_create_player(id, name).await
        }
        .boxed()
    }

    fn load_player(&self, id: String) -> StoreFuture<'_, Option<PlayerProfile>> {
        async move {
            self.gate().await?;
            self.inner.load_player(id).await
        }
        .boxed()
    }

    fn load_room(&self, map: String) -> StoreFuture<'_, Option<RoomState>> {
        async move {
            self.gate().await?;
            self.inner.load_room(map).await
        }
        .boxed()
    }

    fn load_rooms(&self) -> StoreFuture<'_, Vec<RoomState>> {
        async move {
            self.gate().await?;
            self.inner.load_rooms().await
        }
        .boxed()
    }

    fn load_trade(&self, id: String) -> StoreFuture<'_, Option<TradeRecord>> {
        async move {
            self.gate().await?;
            self.inner.load_trade(id).await
        }
        .boxed()
    }

    fn recover_trades(&self, older_than: Duration) -> StoreFuture<'_, usize> {
        async move {
            self.gate().await?;
            self.inner.recover_trades(older_than).await
        }
        .boxed()
    }

    fn prune_ledger(&self, retention: Duration) -> StoreFuture<'_, usize> {
        async move {
            self.gate().await?;
            self.inner.prune_ledger(retention).await
        }
        .boxed()
    }

    fn load_op(&self, id: String) -> StoreFuture<'_, Option<OpRecord>> {
        async move {
            self.gate().await?;
            self.inner.load_op(id).await
        }
        .boxed()
    }

    fn put_raw(
        &self,
        collection: &'static str,
        doc: mongodb::bson::Document,
    ) -> StoreFuture<'_, ()> {
        async move {
            self.gate().await?;
            self.inner.put_raw(collection, doc).await
        }
        .boxed()
    }

    fn put_ban(&self, ban: protocol::admin::Ban) -> StoreFuture<'_, ()> {
        async move {
            self.gate().await?;
            self.inner.put_ban(ban).await
        }
        .boxed()
    }

    fn delete_ban(&self, player: String) -> StoreFuture<'_, bool> {
        async move {
            self.gate().await?;
            self.inner.delete_ban(player).await
        }
        .boxed()
    }

    fn load_bans(&self) -> StoreFuture<'_, Vec<protocol::admin::Ban>> {
        async move {
            self.gate().await?;
            self.inner.load_bans().await
        }
        .boxed()
    }

    fn append_audit(&self, event: protocol::admin::Event) -> StoreFuture<'_, ()> {
        async move {
            self.gate().await?;
            self.inner.append_audit(event).await
        }
        .boxed()
    }

    fn load_audit(&self, limit: usize) -> StoreFuture<'_, Vec<protocol::admin::Event>> {
        async move {
            self.gate().await?;
            self.inner.load_audit(limit).await
        }
        .boxed()
    }
}
