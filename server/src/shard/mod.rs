//! One shard: the actor system, its listeners, and an orderly shutdown.
//!
//! ```text
//! thread "tessera-store": the Persister (write-behind, write-through);
//!                         its flusher is the supervised task "persister"
//! thread "tessera-system" (actix System)
//! ├─ system Arbiter: task Supervisor over the gateway accept loop, the
//! │                  HTTP server, the sampler and the room watchdog
//! ├─ session Arbiter × N: Sessions and their writer tasks
//! ├─ room Arbiter × M: Rooms (under the RoomSupervisor); none with
//! │                  `rooms.on_session_threads`, rooms then run on the
//! │                  session Arbiters
//! ├─ extra room Arbiter × 0..supervision.max_extra_arbiters: started by the
//! │                  watchdog while every room thread is blocked, retired
//! │                  when one answers again (see [`crate::room::supervisor`])
//! ├─ in cluster mode: the "directory" task (its own supervisor and stop
//! │                  signal, so it renews leases until the rooms' state is
//! │                  flushed; then the shard leaves the cluster), and the
//! │                  "peers" task under the same supervisor, which keeps
//! │                  the peer hub (started before the listeners are
//! │                  announced; its own tasks run inside it) dialled to the
//! │                  shards in the directory; the hub closes after the
//! │                  flush
//! └─ shared state, handed to each part as the narrow handle it needs
//!    ([`session::Deps`] to the gateway and its sessions, [`crate::http::Deps`] to
//!    the HTTP server): Config, Auth, RoomSupervisor, Dispatcher, the
//!    presence table, the task registry
//! ```
//!
//! The long-lived tasks are children of a [`Supervisor`] (the whole tree is
//! drawn in [`crate::supervise`]): a panic in one is caught, logged and
//! counted, and the task is started again from its handle and its listener
//! after a backoff.
//!
//! [`start`] binds both listeners (so a port-0 address is known when it
//! returns) and runs the system on its own thread; [`ShardHandle::shutdown`]
//! stops accepting, announces the shutdown, closes every session with 1001,
//! waits for sessions and writers up to the grace period, stops the rooms
//! (which hand their last positions to the persister), flushes the
//! persister within `store.shutdown_flush_deadline_ms`, and stops the
//! system. The binary and the tests drive the same function.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::auth::Auth;
use crate::bans::Bans;
use crate::cluster::membership::Membership;
use crate::cluster::tunnel::PeerHub;
use crate::cluster::{
    run_agent, Directory, DirectorySettings, Link, LoadSource, Relay, Seats, ShardId, ShardLoad,
    ShardRecord, ShardState as DirState,
};
use crate::config::{ms, Config};
use crate::dispatcher::Dispatcher;
use crate::events::{Events, NewEvent};
use crate::gateway::Gateway;
use crate::http::Life;
use protocol::admin::{EventKind, ShardState};

use crate::presence::Presence;
use crate::room::supervisor::Settings;
use crate::room::RoomSupervisor;
use crate::session::{self, Session, Shutdown};
use crate::store::Persister;
use crate::supervise::{self, Child, FaultPoints, Restart, Supervisor, Tasks};

mod tasks;

use tasks::{load_bans, sample, watch_rooms, StopBudget};

pub struct ShardHandle {
    pub ws_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// In cluster mode: this shard's id and its directory handle.
    pub cluster: Option<Directory>,
    /// In cluster mode: the peer tunnel's bound (UDP) address.
    pub peer_addr: Option<SocketAddr>,
    stop_tx: watch::Sender<bool>,
    life: Arc<Life>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ShardHandle {
    /// Shut down gracefully and wait for it.
    pub fn shutdown(mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Wait for the shard's thread, e.g. after a signal triggered shutdown
    /// through [`ShardHandle::stopper`].
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// A handle that can trigger shutdown from elsewhere.
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop_tx.clone()
    }

    /// Drain (cluster mode: what SIGTERM does there): like shutdown, but
    /// the directory says draining and clients are told to reconnect
    /// elsewhere at once (notice 6004, close 4008). False outside a
    /// cluster (nothing done) or when a plain shutdown began already.
    pub fn drain(&self) -> bool {
        self.cluster.is_some() && self.life.drain()
    }

    /// Whether the stop under way (or asked for) is a drain.
    pub fn is_draining(&self) -> bool {
        self.cluster.is_some() && self.life.draining()
    }

    /// Set once the shard begins to stop, whoever asked (a signal, a drain
    /// over the admin API).
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop_tx.subscribe()
    }
}

impl Drop for ShardHandle {
    fn drop(&mut self) {
        let _ = self.stop_tx.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Start a shard with `config` (validated here) on a thread of its own.
pub fn start(config: Config) -> anyhow::Result<ShardHandle> {
    config.validate()?;
    let tls = crate::tls::Tls::from_config(&config.tls)?;
    crate::metrics::prometheus();
    crate::metrics::register_zeroes();
    // The store first: an embedded store that cannot be opened is fatal; a
    // MongoDB that is not reachable yet is retried in the background.
    let tasks = Tasks::default();
    let persister_supervision = supervise::Settings {
        // The flusher stops at the first await after the stop signal; the
        // final flush has the deadline to itself.
        shutdown: ms(config.store.shutdown_flush_deadline_ms) / 2,
        ..supervise::Settings::from_config(&config.supervision)
    };
    let persister =
        Persister::start_supervised(config.store.clone(), &tasks, persister_supervision)
            .map_err(|e| anyhow::anyhow!("store ({:?}): {e}", config.store.backend))?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let life = Arc::new(Life::new(stop_tx.clone()));
    let shard_life = life.clone();
    let thread = std::thread::Builder::new()
        .name("tessera-system".into())
        .spawn(move || {
            let system = System::new();
            system.block_on(run(
                config, tls, persister, tasks, ready_tx, stop_rx, shard_life,
            ));
        })
        .context("spawning the shard thread")?;
    let Bound {
        ws: ws_addr,
        http: http_addr,
        peer: peer_addr,
        cluster,
    } = ready_rx
        .recv()
        .context("the shard stopped while starting")??;
    Ok(ShardHandle {
        ws_addr,
        http_addr,
        cluster,
        peer_addr,
        stop_tx,
        life,
        thread: Some(thread),
    })
}

/// How long start waits for the embedded store to be ready.
const EMBEDDED_READY_WAIT: Duration = Duration::from_secs(5);

/// What `start` learns once the shard is up.
struct Bound {
    ws: SocketAddr,
    http: SocketAddr,
    peer: Option<SocketAddr>,
    cluster: Option<Directory>,
}

type Ready = std::sync::mpsc::Sender<anyhow::Result<Bound>>;

async fn run(
    config: Config,
    tls: crate::tls::Tls,
    persister: Persister,
    tasks: Tasks,
    ready: Ready,
    mut stop_rx: watch::Receiver<bool>,
    life: Arc<Life>,
) {
    // The embedded store is open already and ready within a moment: wait
    // for it, so that a player arriving right after start gets its profile
    // (a MongoDB that is not up yet is not waited for; sessions then play
    // without durable state until it is).
    if config.store.backend == crate::store::Backend::Embedded
        && !persister.wait_ready(EMBEDDED_READY_WAIT).await
    {
        tracing::warn!("the embedded store is not ready yet; accepting players anyway");
    }
    let ws = match TcpListener::bind(config.server.ws_addr).await {
        Ok(l) => Arc::new(l),
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!(
                "cannot listen on server.ws_addr {}: {e}",
                config.server.ws_addr
            )));
            return;
        }
    };
    let http = match TcpListener::bind(config.server.http_addr).await {
        Ok(l) => Arc::new(l),
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!(
                "cannot listen on server.http_addr {}: {e}",
                config.server.http_addr
            )));
            return;
        }
    };
    let addrs = match (ws.local_addr(), http.local_addr()) {
        (Ok(w), Ok(h)) => (w, h),
        (Err(e), _) | (_, Err(e)) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };

    // In cluster mode, the directory handle (connecting lazily: a Redis
    // that is down now is retried by its task, not fatal).
    let directory = if config.cluster.enabled() {
        match join_cluster(&config, addrs) {
            Ok(d) => Some(d),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    } else {
        None
    };
    // This process's start, in the shard's record: what tells it apart
    // from another process with the same shard id.
    let started_at = crate::cluster::directory::unix_ms();
    if let Some(dir) = &directory {
        if let Err(e) = dir.ensure_id_free(started_at).await {
            let _ = ready.send(Err(e.into()));
            return;
        }
    }
    // In cluster mode, the peer tunnel: bound now (so a port 0 is known
    // for the shard record), dialling shards through the directory.
    let hub = match &directory {
        Some(dir) => {
            let settings = crate::cluster::peering::tunnel_settings(&config, dir.shard().as_str());
            let resolver = crate::cluster::peering::DirectoryResolver(dir.clone());
            match PeerHub::start(settings, resolver).await {
                Ok(hub) => Some(hub),
                Err(e) => {
                    let _ = ready.send(Err(anyhow::anyhow!("cluster.peer_addr: {e}")));
                    return;
                }
            }
        }
        None => None,
    };
    // SWIM membership over the tunnel, at an incarnation that outranks
    // this shard's previous lives.
    let membership = hub.as_ref().map(|hub| {
        let settings = crate::cluster::membership::SwimSettings::from_config(&config);
        Membership::new(hub.clone(), settings, crate::cluster::directory::unix_ms())
    });

    // Sessions and rooms live on separate Arbiters, so a room stuck in a
    // handler stalls only rooms, which the watchdog moves away.
    // `rooms.on_session_threads`: rooms share the sessions' Arbiters.
    let workers: Vec<Arbiter> = (0..config.workers()).map(|_| Arbiter::new()).collect();
    let room_arbiters: Vec<Arbiter> = if config.rooms.on_session_threads {
        Vec::new()
    } else {
        (0..config.room_arbiters())
            .map(|_| Arbiter::new())
            .collect()
    };
    let rooms_on_session_threads = config.rooms.on_session_threads;
    let handles: Vec<ArbiterHandle> = workers.iter().map(|a| a.handle()).collect();
    let room_handles: Vec<ArbiterHandle> = if config.rooms.on_session_threads {
        handles.clone()
    } else {
        room_arbiters.iter().map(|a| a.handle()).collect()
    };
    let dispatcher = Arc::new(Dispatcher::default());
    let faults = FaultPoints::new(config.admin.fault_injection);
    // The shard's id in the admin API and its events: the cluster's name
    // for it, or its HTTP address outside a cluster.
    let shard_id = match &directory {
        Some(dir) => dir.shard().to_string(),
        None => addrs.1.to_string(),
    };
    let events = Events::new(&shard_id, config.admin.events_capacity);
    let rooms = Arc::new(
        RoomSupervisor::new(
            config.map_defs(),
            room_handles,
            dispatcher.clone(),
            persister.handle(),
            Settings::from_config(&config),
        )
        .with_faults(faults.clone())
        .with_events(events.clone()),
    );
    // In cluster mode, rooms are leased through the directory and reached
    // across the tunnel wherever they run.
    if let (Some(dir), Some(hub)) = (&directory, &hub) {
        let cluster = crate::room::cluster::RoomCluster::start(
            dir.clone(),
            hub.clone(),
            &rooms,
            persister.handle(),
            crate::room::cluster::RoomSettings::from_config(&config),
        );
        // A shard the failure detector declares dead has its rooms looked
        // for again at once (taken over once their leases are gone).
        if let Some(membership) = &membership {
            cluster.follow(membership.subscribe());
            // An owner cut off from Redis while a peer is not freezes its
            // rooms, then hands them over.
            cluster.guard_partitions(membership.clone());
        }
    }
    let presence = Arc::new(Presence::new(Duration::from_secs(config.auth.resume_ttl_s)));
    let link = directory.clone().zip(hub.clone()).map(|(dir, hub)| Link {
        relay: Relay::new(hub, config.cluster.relay_queue as usize),
        seats: Seats::new(dir.clone()),
        directory: dir,
    });
    let bans = Arc::new(Bans::default());
    load_bans(&persister.handle(), &bans).await;
    let web = Arc::new(
        crate::http::Deps::new(
            config.clone(),
            rooms.clone(),
            dispatcher.clone(),
            presence.clone(),
            tasks,
            faults.clone(),
            tls.http.clone(),
            shard_id,
            life.clone(),
            events.clone(),
            bans.clone(),
            persister.handle(),
        )
        .with_directory(directory.clone())
        .with_peers(hub.clone())
        .with_cluster(link.clone())
        .with_membership(membership.clone()),
    );
    let shared = Arc::new(session::Deps {
        auth: Auth::for_shard(&config),
        limits: config.welcome_limits(),
        rooms,
        dispatcher,
        presence,
        persister: persister.handle(),
        faults,
        bans,
        directory: directory.clone(),
        cluster: link.clone(),
        config,
    });

    // Every session and writer holds a clone of done_tx; when all are gone,
    // done_rx yields None. The gateway child's factory holds one too, until
    // its supervision ends at shutdown.
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let supervisor = Supervisor::new(
        &web.tasks,
        supervise::Settings {
            shutdown: ms(shared.config.server.shutdown_grace_ms),
            ..supervise::Settings::from_config(&shared.config.supervision)
        },
        stop_rx.clone(),
    );
    let gateway = Gateway::new(shared.clone(), tls.ws.clone(), handles, done_tx);
    let gateway_task =
        actix::spawn(
            supervisor.supervise(Child::new("gateway", Restart::Permanent, {
                let (listener, stop_rx) = (ws.clone(), stop_rx.clone());
                move || gateway.clone().run(listener.clone(), stop_rx.clone())
            })),
        );
    // The HTTP server has a stop signal of its own, sent once the sessions
    // are closed: while they close, `/healthz/ready` answers 503 (the load
    // balancer sends no one new) and `/metrics` still answers.
    let (http_stop_tx, http_stop_rx) = watch::channel(false);
    let http_supervisor = Supervisor::new(
        &web.tasks,
        supervise::Settings {
            shutdown: ms(shared.config.server.shutdown_grace_ms),
            ..supervise::Settings::from_config(&shared.config.supervision)
        },
        http_stop_rx.clone(),
    );
    let http_task =
        actix::spawn(
            http_supervisor.supervise(Child::new("http", Restart::Permanent, {
                let (web, stop_rx) = (web.clone(), http_stop_rx.clone());
                let ws_addr = addrs.0;
                move || crate::http::serve(http.clone(), web.clone(), ws_addr, stop_rx.clone())
            })),
        );
    let sampler = actix::spawn(
        supervisor.supervise(Child::new("sampler", Restart::Permanent, {
            let (shared, stop_rx) = (shared.clone(), stop_rx.clone());
            move || sample(shared.clone(), stop_rx.clone())
        })),
    );
    // The watchdog runs here, on the system Arbiter, where no room can
    // block it.
    let watchdog =
        actix::spawn(
            supervisor.supervise(Child::new("watchdog", Restart::Permanent, {
                let (rooms, stop_rx) = (shared.rooms.clone(), stop_rx.clone());
                let every = ms(shared.config.supervision.watchdog_interval_ms);
                move || watch_rooms(rooms.clone(), every, stop_rx.clone())
            })),
        );
    // The directory task has a stop signal of its own: it keeps renewing
    // the leases until the rooms have stopped and their state is flushed,
    // so no other shard takes a room this one is still writing.
    let (cluster_stop_tx, cluster_stop_rx) = watch::channel(false);
    let cluster_tasks = directory.as_ref().map(|dir| {
        let supervisor = Supervisor::new(
            &web.tasks,
            supervise::Settings::from_config(&shared.config.supervision),
            cluster_stop_rx.clone(),
        );
        let record = ShardRecord {
            ws_addr: advertised(&shared.config, addrs.0),
            http_addr: advertised(&shared.config, addrs.1),
            peer_addr: hub
                .as_ref()
                .map(|hub| advertised(&shared.config, hub.local_addr()))
                .unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at,
        };
        let load: LoadSource = {
            let shared = shared.clone();
            Arc::new(move || ShardLoad {
                sessions: shared.presence.session_count() as u64,
                rooms: shared.rooms.running() as u64,
                cpu: 0.0,
            })
        };
        let mut tasks = vec![actix::spawn(supervisor.supervise(Child::new(
            "directory",
            Restart::Permanent,
            {
                let (dir, stop_rx) = (dir.clone(), cluster_stop_rx.clone());
                move || run_agent(dir.clone(), record.clone(), load.clone(), stop_rx.clone())
            },
        )))];
        // The tunnel's own tasks run inside the hub; "peers" keeps it
        // connected to the shards the directory lists, "swim" probes them.
        if let (Some(hub), Some(members)) = (&hub, &membership) {
            let every = ms(shared.config.cluster.heartbeat_ms);
            tasks.extend(crate::cluster::peering::supervise_tunnel(
                &supervisor,
                hub,
                members,
                dir,
                every,
                &cluster_stop_rx,
            ));
        }
        if let (Some(link), Some(hub)) = (&link, &hub) {
            for child in crate::peer_inbox::children(link, hub, &shared, &cluster_stop_rx) {
                tasks.push(actix::spawn(supervisor.supervise(child)));
            }
        }
        tasks
    });
    if let Some(dir) = &directory {
        // Listening: placeable from now on (remembered, and written by the
        // next heartbeat if Redis does not answer now).
        if let Err(e) = dir.set_state(DirState::Ready).await {
            tracing::warn!(error = %e, "cluster: marking the shard ready; the heartbeat will");
        }
    }
    tracing::info!(
        ws = %addrs.0,
        http = %addrs.1,
        session_arbiters = workers.len(),
        room_arbiters = room_arbiters.len(),
        rooms_on_session_threads,
        "shard started"
    );
    life.set(ShardState::Ready);
    events.record(NewEvent::plain(
        EventKind::ShardStarted,
        addrs.1.to_string(),
        format!("version {}", env!("CARGO_PKG_VERSION")),
    ));
    let _ = ready.send(Ok(Bound {
        ws: addrs.0,
        http: addrs.1,
        peer: hub.as_ref().map(PeerHub::local_addr),
        cluster: directory.clone(),
    }));

    let _ = stop_rx.wait_for(|stop| *stop).await;
    // A drain (cluster mode) is a shutdown that sends the players to
    // other shards at once, within cluster.drain_budget_ms.
    let draining = life.draining() && directory.is_some();
    let budget = StopBudget::new(&shared.config, draining);
    life.set(if draining {
        ShardState::Draining
    } else {
        ShardState::Stopping
    });
    let what = if draining {
        "draining"
    } else {
        "shutting down"
    };
    events.record(NewEvent::plain(
        EventKind::ShardStopping,
        addrs.1.to_string(),
        what,
    ));
    tracing::info!("{what}: no new connections");
    if let Some(dir) = &directory {
        // No new rooms placed here from now on.
        let _ = dir.set_state(DirState::Draining).await;
    }
    let _ = gateway_task.await;
    if let (true, Some(cluster)) = (draining, shared.rooms.cluster()) {
        // Rooms move live before the sockets close, so players on other
        // shards see no restart and this shard's own resume elsewhere.
        cluster.migrate_all(budget.migrate).await;
    }
    if !draining {
        let report = web.announce("server shutting down");
        tracing::info!(delivered = report.delivered, "shutdown announced");
    }
    let sessions: Vec<Addr<Session>> = shared.presence.sessions();
    for session in &sessions {
        // Mailboxes ignore their capacity for do_send; shutdown must reach
        // every session.
        if draining {
            session.do_send(session::Drain);
        } else {
            session.do_send(Shutdown);
        }
    }
    let grace = budget.sessions;
    drop(sessions);
    match tokio::time::timeout(grace, done_rx.recv()).await {
        Ok(_) => tracing::info!("all sessions closed"),
        Err(_) => tracing::warn!(
            grace_ms = grace.as_millis() as u64,
            "sessions still open after the grace period"
        ),
    }
    let _ = http_stop_tx.send(true);
    let _ = http_task.await;
    let _ = sampler.await;
    let _ = watchdog.await;
    let extras = shared.rooms.take_extra_arbiters();
    for arbiter in workers.into_iter().chain(room_arbiters).chain(extras) {
        arbiter.stop();
        let _ = arbiter.join();
    }
    // Rooms are gone and have handed over their last state: flush it.
    let report = persister.shutdown(budget.flush).await;
    if report.deadline_hit {
        tracing::error!(?report, "store flush deadline hit at shutdown");
    } else {
        tracing::info!(?report, "store flushed");
    }
    if let Some(dir) = &directory {
        let _ = cluster_stop_tx.send(true);
        for task in cluster_tasks.into_iter().flatten() {
            let _ = task.await;
        }
        // After the rooms' state is flushed: peers see `shutting_down`.
        if let Some(hub) = &hub {
            hub.shutdown(budget.tunnel).await;
        }
        crate::cluster::leave(dir, budget.leave).await;
    }
    tracing::info!("shard stopped");
}

/// The directory handle of this shard, named by `cluster.shard_id` or by
/// the host and the ports bound.
fn join_cluster(
    config: &Config,
    (ws, http): (SocketAddr, SocketAddr),
) -> anyhow::Result<Directory> {
    let id = config.shard_id_bound(ws.port(), http.port());
    let id = ShardId::new(&id).map_err(|e| anyhow::anyhow!("cluster.shard_id: {e}"))?;
    Directory::new(DirectorySettings::from_config(config), id).map_err(|e| anyhow::anyhow!("{e}"))
}

/// `addr` as other shards should dial it: with `cluster.advertise_host`
/// in place of the bound IP when set.
fn advertised(config: &Config, addr: SocketAddr) -> String {
    if config.cluster.advertise_host.is_empty() {
        addr.to_string()
    } else {
        format!("{}:{}", config.cluster.advertise_host, addr.port())
    }
}
