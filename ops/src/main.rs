//! `tessera-ops`: the admin CLI. Parses flags and calls the library.

use std::time::Duration;

use clap::{Parser, Subcommand};

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
    /// The shard's admin token (admin.token), for admin calls.
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let shard = ops::Shard::new(&cli.http, cli.token, Duration::from_secs(cli.timeout));
    match cli.command {
        Command::Health => {
            let health = shard.health()?;
            println!("{}", serde_json::to_string_pretty(&health)?);
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
    }
    Ok(())
}
