//! `tessera-ops`: the admin CLI and the ops console. Parses flags and calls
//! the library.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ops::console::{self, ShardSource, StaticShards};
use ops::directory::{DirectorySource, ShardDirectory};
use ops::Shard;
use protocol::admin::BanRequest;

#[derive(Parser)]
#[command(
    name = "tessera-ops",
    version,
    about = "Operate Tessera shards over their HTTP API"
)]
struct Cli {
    /// The shard's HTTP address (server.http_addr), HOST:PORT or a URL.
    #[arg(
        long,
        env = "TESSERA_SERVER__HTTP_ADDR",
        default_value = "127.0.0.1:7380",
        global = true
    )]
    http: String,
    /// The shard's admin token (admin.token, or one of admin.tokens), for
    /// admin calls.
    #[arg(
        long,
        env = "TESSERA_ADMIN__TOKEN",
        global = true,
        hide_env_values = true
    )]
    token: Option<String>,
    /// Give up on a call after this many seconds.
    #[arg(long, default_value_t = 5, global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Show the shard's health: status, sessions, rooms. Exits 1 when the
    /// shard does not answer healthy.
    Health,
    /// Print the shard's metrics whose names start with a prefix.
    Metrics {
        #[arg(long, default_value = "tessera_")]
        prefix: String,
    },
    /// Send an announcement to every player, or to one map's players.
    Announce {
        /// The text players see.
        text: String,
        /// Only this map's players.
        #[arg(long)]
        map: Option<String>,
    },
    /// Show the shard's peer tunnels: the protocols it serves, its peers
    /// (state, RTT, traffic), its open streams and the latest refusals.
    Peers {
        /// Print the JSON document instead of the tables.
        #[arg(long)]
        json: bool,
    },
    /// Rooms: list, inspect, restart, migrate.
    Rooms {
        #[command(subcommand)]
        command: RoomsCommand,
    },
    /// Players: find, kick, ban, unban.
    Players {
        #[command(subcommand)]
        command: PlayersCommand,
    },
    /// Shards: list, drain.
    Shards {
        #[command(subcommand)]
        command: ShardsCommand,
    },
    /// Events: the shard's recent events and admin actions.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Serve the ops console: a live web page over every shard's admin API.
    Console {
        /// Where the console listens (port 0 picks one; the address is
        /// printed as "console listening on ADDR").
        #[arg(long, default_value = "127.0.0.1:7390")]
        listen: SocketAddr,
        /// A shard's HTTP address; repeat for each shard.
        #[arg(
            long = "shard",
            required_unless_present = "redis",
            conflicts_with = "redis"
        )]
        shards: Vec<String>,
        #[command(flatten)]
        directory: DirectoryArgs,
        /// Milliseconds between live refreshes.
        #[arg(long, default_value_t = 1000)]
        refresh_ms: u64,
        /// With --redis: the newest events of the directory's stream the
        /// events page shows (1-10000).
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        cluster_events: u64,
    },
}

#[derive(Subcommand)]
enum RoomsCommand {
    /// Every running room.
    Ls,
    /// A room's members and their positions (`lobby`, `lobby#2`).
    Inspect { room: String },
    /// Restart a room from its snapshot (its members get a full update).
    Restart { room: String },
    /// Move a room, live, to another shard (cluster mode; any shard: one
    /// that does not run the room forwards the request to its owner).
    /// Without --to the placement picks a ready shard.
    Migrate {
        room: String,
        #[arg(long)]
        to: Option<String>,
    },
}

#[derive(Subcommand)]
enum PlayersCommand {
    /// Players whose id or name contains the text.
    Find {
        #[arg(default_value = "")]
        q: String,
    },
    /// Disconnect a player (error 2006, close 4007).
    Kick {
        player: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Ban a player (persisted; checked at hello).
    Ban {
        player: String,
        #[arg(long)]
        reason: String,
        /// Seconds; without it the ban has no end.
        #[arg(long)]
        duration_s: Option<u64>,
    },
    /// Lift a player's ban.
    Unban { player: String },
}

#[derive(Subcommand)]
enum ShardsCommand {
    /// One line per shard: state, version, uptime, sessions, rooms, rates.
    Ls {
        /// More shards (HOST:PORT or URLs) beside --http.
        #[arg(conflicts_with = "redis")]
        shards: Vec<String>,
        #[command(flatten)]
        directory: DirectoryArgs,
    },
    /// Drain a shard (cluster mode): draining in the directory, readiness
    /// 503, its players told to reconnect elsewhere (notice 6004, close
    /// 4008), its rooms moved live to other shards (stopped and saved when
    /// none can take them), its leases released, then it
    /// exits.
    Drain {
        /// The shard: its id in the directory (with --redis), or its HTTP
        /// address (HOST:PORT or a URL).
        shard: String,
        /// The shard's HTTP address, when SHARD is its id and there is no
        /// --redis to look it up in.
        #[arg(long = "shard", value_name = "HOST:PORT")]
        at: Option<String>,
        #[command(flatten)]
        directory: DirectoryArgs,
    },
}

/// A cluster's directory, instead of a list of shards.
#[derive(clap::Args)]
struct DirectoryArgs {
    /// The cluster's Redis (the shards' `cluster.redis`): list the shards
    /// registered in its directory, dead ones as dead.
    #[arg(long)]
    redis: Option<String>,
    /// The shards' `cluster.key_prefix`.
    #[arg(long, default_value = "tessera", requires = "redis")]
    key_prefix: String,
    /// The shards' `cluster.lease_ms`: a lease's age (since its last
    /// renewal) is this minus its remaining time to live.
    #[arg(long, default_value_t = 3000, requires = "redis", value_parser = clap::value_parser!(u64).range(1..))]
    lease_ms: u64,
}

impl DirectoryArgs {
    fn open(&self, timeout: Duration) -> anyhow::Result<Option<ShardDirectory>> {
        self.redis
            .as_deref()
            .map(|url| ShardDirectory::new(url, &self.key_prefix, timeout))
            .transpose()
    }
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Print the recent events; with --follow, keep printing new ones.
    Tail {
        #[arg(long)]
        follow: bool,
        /// Seconds between polls with --follow.
        #[arg(long, default_value_t = 1)]
        every: u64,
    },
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let timeout = Duration::from_secs(cli.timeout);
    let shard = Shard::new(&cli.http, cli.token.clone(), timeout);
    match cli.command {
        Command::Health => {
            let health = shard.health()?;
            print_json(&health)?;
            if health.status != protocol::admin::HealthStatus::Ok {
                std::process::exit(1);
            }
        }
        Command::Metrics { prefix } => {
            for s in ops::metrics::samples(&shard.metrics()?, &prefix) {
                if s.labels.is_empty() {
                    println!("{} {}", s.name, s.value);
                } else {
                    println!("{}{{{}}} {}", s.name, s.labels, s.value);
                }
            }
        }
        Command::Announce { text, map } => {
            let reply = shard.announce(&text, map.as_deref())?;
            println!("{}", serde_json::to_string(&reply)?);
        }
        Command::Peers { json } => {
            let peers = shard.peers()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&peers)?);
            } else {
                print!("{}", ops::peers::render(&peers));
            }
        }
        Command::Rooms { command } => match command {
            RoomsCommand::Ls => {
                for r in shard.rooms()?.rooms {
                    println!(
                        "{:<16} members {:>4}  tick {:>6.2} ms  restarts {:>3}  snapshot {}  store {}",
                        r.id,
                        r.members,
                        r.tick_ms,
                        r.restarts,
                        age(r.snapshot_age_ms),
                        age(r.store_age_ms)
                    );
                }
            }
            RoomsCommand::Inspect { room } => print_json(&shard.room(&room)?)?,
            RoomsCommand::Restart { room } => print_json(&shard.restart_room(&room)?)?,
            RoomsCommand::Migrate { room, to } => {
                print_json(&shard.migrate_room(&room, to.as_deref())?)?
            }
        },
        Command::Players { command } => match command {
            PlayersCommand::Find { q } => print_json(&shard.players(&q)?)?,
            PlayersCommand::Kick { player, reason } => {
                print_json(&shard.kick(&player, reason.as_deref(), false)?)?
            }
            PlayersCommand::Ban {
                player,
                reason,
                duration_s,
            } => print_json(&shard.ban(&player, &BanRequest { reason, duration_s })?)?,
            PlayersCommand::Unban { player } => print_json(&shard.unban(&player)?)?,
        },
        Command::Shards {
            command: ShardsCommand::Ls { shards, directory },
        } => {
            let lease_ms = directory.lease_ms;
            if let Some(directory) = directory.open(timeout)? {
                let leases = directory.leases()?;
                for s in directory.shards()? {
                    print!("{}", ops::directory::shard_line(&s, &leases, lease_ms));
                }
                return Ok(());
            }
            let mut failed = false;
            for url in std::iter::once(cli.http.clone()).chain(shards) {
                let s = shard.with_token(cli.token.clone());
                let s = if url == cli.http {
                    s
                } else {
                    Shard::new(&url, cli.token.clone(), timeout)
                };
                match s.info() {
                    Ok(i) => println!(
                        "{:<24} {:<9} v{} up {:>6}s sessions {:>5} rooms {:>4} in {:>8.1}/s out {:>8.1}/s p99 {:>6.2} ms restarts {}",
                        s.url(), format!("{:?}", i.state).to_lowercase(), i.version, i.uptime_s, i.sessions, i.rooms,
                        i.msgs_in_per_s, i.msgs_out_per_s, i.tick_p99_ms, i.restarts
                    ),
                    Err(e) => {
                        failed = true;
                        println!("{:<24} dead      {e}", s.url());
                    }
                }
            }
            if failed {
                std::process::exit(1);
            }
        }
        Command::Shards {
            command:
                ShardsCommand::Drain {
                    shard: target,
                    at,
                    directory,
                },
        } => {
            let listed = match directory.open(timeout)? {
                Some(dir) => Some(
                    dir.shards()?
                        .into_iter()
                        .map(|s| (s.id, s.http, s.alive))
                        .collect::<Vec<_>>(),
                ),
                None => None,
            };
            let url = ops::drain_target(&target, at.as_deref(), listed.as_deref())
                .map_err(anyhow::Error::msg)?;
            let reply = Shard::new(&url, cli.token.clone(), timeout).drain()?;
            print_json(&reply)?;
        }
        Command::Events {
            command: EventsCommand::Tail { follow, every },
        } => {
            let mut since = 0;
            loop {
                let reply = shard.events(since)?;
                for e in &reply.events {
                    println!("{}", serde_json::to_string(e)?);
                }
                since = reply.next;
                if !follow {
                    break;
                }
                std::thread::sleep(Duration::from_secs(every.max(1)));
            }
        }
        Command::Console {
            listen,
            shards,
            directory,
            refresh_ms,
            cluster_events,
        } => {
            // The directory is read at every refresh: shards that join or
            // leave the cluster come and go on the page.
            let lease_ms = directory.lease_ms;
            let source: Arc<dyn ShardSource> = match directory.open(timeout)? {
                Some(directory) => Arc::new(DirectorySource {
                    directory,
                    lease_ms,
                }),
                None => Arc::new(StaticShards::new(shards)),
            };
            run_console(listen, source, timeout, refresh_ms, cluster_events as usize)?
        }
    }
    Ok(())
}

fn age(ms: Option<u64>) -> String {
    ms.map_or("-".to_string(), |ms| format!("{ms} ms ago"))
}

fn run_console(
    listen: SocketAddr,
    source: Arc<dyn ShardSource>,
    timeout: Duration,
    refresh_ms: u64,
    cluster_events: usize,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the console's runtime")?;
    runtime.block_on(async move {
        let listener = console::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        println!("console listening on {}", listener.local_addr()?);
        let settings = console::Settings {
            source,
            timeout,
            refresh: Duration::from_millis(refresh_ms.max(100)),
            cluster_events,
        };
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        console::serve(listener, settings, stop)
            .await
            .context("the console stopped")
    })
}
