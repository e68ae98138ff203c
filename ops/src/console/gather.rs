//! Calls to every shard at once, each on tokio's blocking pool (the shard
//! client is the same blocking one the CLI uses), gathered into the
//! console's documents.

use std::time::Duration;

use futures_util::future::join_all;
use protocol::admin::{DispatcherReply, Peers, RoomsReply, ShardInfo, ShardState};

use super::cluster_view::mark_dead;
use super::model::{ActionOutcome, ClusterRoom, DirectoryView, EventsView, Overview, ShardStatus};
use super::tunnels::Rates;
use crate::client::{CallError, CallResult, Shard};

/// Run a blocking shard call off the async threads.
pub async fn blocking<T, F>(f: F) -> CallResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> CallResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(CallError {
            status: None,
            message: format!("the call's thread failed: {e}"),
        })
    })
}

/// The same call on every shard, in order.
pub async fn on_each<T, F>(shards: &[Shard], f: F) -> Vec<CallResult<T>>
where
    T: Send + 'static,
    F: Fn(&Shard) -> CallResult<T> + Send + Sync + Clone + 'static,
{
    join_all(shards.iter().cloned().map(|shard| {
        let f = f.clone();
        blocking(move || f(&shard))
    }))
    .await
}

fn state_name(state: ShardState) -> &'static str {
    match state {
        ShardState::Starting => "starting",
        ShardState::Ready => "ready",
        ShardState::Draining => "draining",
        ShardState::Stopping => "stopping",
    }
}

type ShardRead = (
    CallResult<ShardInfo>,
    CallResult<RoomsReply>,
    CallResult<DispatcherReply>,
    CallResult<Peers>,
);

/// What an overview is made of besides the shards' own answers.
pub struct Cluster<'a> {
    /// The source says the shards run as a cluster.
    pub cluster: bool,
    /// The tunnels' last readings, for bytes/s.
    pub rates: &'a Rates,
    /// The directory read for this refresh (`--redis` only).
    pub directory: Option<DirectoryView>,
}

/// Every shard's state, rooms, topics and tunnels. `Err` when no shard
/// accepted the token and one refused it (the page asks for another).
pub async fn overview(
    shards: &[Shard],
    ctx: Cluster<'_>,
    now_ms: u64,
) -> Result<Overview, CallError> {
    let cluster = ctx.cluster;
    let reads: Vec<CallResult<ShardRead>> = on_each(shards, |s| {
        Ok((s.info(), s.rooms(), s.dispatcher(), s.peers()))
    })
    .await;
    let mut tunnels = Vec::new();
    let mut statuses = Vec::new();
    let mut rooms = Vec::new();
    let mut refusal = None;
    let mut any_ok = false;
    for (shard, read) in shards.iter().zip(reads) {
        let (info, rooms_reply, topics, peers) = match read {
            Ok(read) => read,
            Err(e) => (Err(e.clone()), Err(e.clone()), Err(e.clone()), Err(e)),
        };
        let url = shard.url().to_string();
        if let Ok(doc) = &peers {
            tunnels.extend(ctx.rates.links(&url, doc, now_ms));
        }
        match info {
            Ok(info) => {
                any_ok = true;
                let mut errors = Vec::new();
                match rooms_reply {
                    Ok(reply) => rooms.extend(reply.rooms.into_iter().map(|room| ClusterRoom {
                        shard: url.clone(),
                        room,
                    })),
                    Err(e) => errors.push(e.to_string()),
                }
                let topics = match topics {
                    Ok(reply) => reply.topics,
                    Err(e) => {
                        errors.push(e.to_string());
                        Vec::new()
                    }
                };
                statuses.push(ShardStatus {
                    url,
                    state: state_name(info.state).to_string(),
                    info: Some(info),
                    topics,
                    error: (!errors.is_empty()).then(|| errors.join("; ")),
                });
            }
            Err(e) => {
                if matches!(e.status, Some(401 | 403)) && refusal.is_none() {
                    refusal = Some(e.clone());
                }
                // A shard that answers but refuses is alive: only an
                // unreachable one is dead.
                let state = if e.status.is_some() {
                    "refused"
                } else {
                    "dead"
                };
                statuses.push(ShardStatus {
                    url,
                    state: state.to_string(),
                    info: None,
                    topics: Vec::new(),
                    error: Some(e.to_string()),
                });
            }
        }
    }
    if let (false, Some(refusal)) = (any_ok, refusal) {
        return Err(refusal);
    }
    if let Some(view) = &ctx.directory {
        mark_dead(&mut statuses, view);
    }
    // Migrate and drain are offered when the source is a cluster or a
    // shard says it runs in one.
    let cluster = cluster
        || statuses
            .iter()
            .any(|s| s.info.as_ref().is_some_and(|i| i.cluster));
    Ok(Overview {
        at_ms: now_ms,
        cluster,
        shards: statuses,
        rooms,
        tunnels,
        directory: ctx.directory,
    })
}

/// Every shard's recent events, merged by time.
pub async fn events(shards: &[Shard]) -> Result<EventsView, CallError> {
    let replies = on_each(shards, |s| s.events(0)).await;
    let mut events = Vec::new();
    let mut errors = Vec::new();
    let mut refusal = None;
    for reply in replies {
        match reply {
            Ok(reply) => events.extend(reply.events),
            Err(e) => {
                if matches!(e.status, Some(401 | 403)) {
                    refusal.get_or_insert(e.clone());
                }
                errors.push(e.to_string());
            }
        }
    }
    if let (true, Some(refusal)) = (events.is_empty() && errors.len() == shards.len(), refusal) {
        return Err(refusal);
    }
    events.sort_by(|a, b| (a.at_ms, &a.shard, a.seq).cmp(&(b.at_ms, &b.shard, b.seq)));
    Ok(EventsView {
        events,
        errors,
        cluster_events: Vec::new(),
    })
}

/// What an action did on each shard: `Ok` with the outcomes when it
/// succeeded somewhere, else the most telling refusal (a 403 before a 404
/// before anything else).
pub fn outcomes<T>(
    shards: &[Shard],
    results: Vec<CallResult<T>>,
    describe: impl Fn(T) -> String,
) -> Result<Vec<ActionOutcome>, CallError> {
    let mut list = Vec::new();
    let mut errors: Vec<CallError> = Vec::new();
    for (shard, result) in shards.iter().zip(results) {
        let (ok, result) = match result {
            Ok(v) => (true, describe(v)),
            Err(e) => {
                let text = e.to_string();
                errors.push(e);
                (false, text)
            }
        };
        list.push(ActionOutcome {
            shard: shard.url().to_string(),
            ok,
            result,
        });
    }
    if list.iter().any(|o| o.ok) {
        return Ok(list);
    }
    let rank = |e: &CallError| match e.status {
        Some(403) => 0,
        Some(401) => 1,
        Some(400) => 2,
        Some(404) => 3,
        _ => 4,
    };
    errors.sort_by_key(rank);
    Err(errors.into_iter().next().unwrap_or(CallError {
        status: None,
        message: "no shard to act on".into(),
    }))
}

/// The client for each shard, with the caller's token.
pub fn clients(urls: &[String], token: &str, timeout: Duration) -> Vec<Shard> {
    urls.iter()
        .map(|u| Shard::new(u, Some(token.to_string()), timeout))
        .collect()
}
