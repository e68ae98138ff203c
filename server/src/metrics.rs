//! Metric names and the Prometheus recorder.
//!
//! Every counter a test or dashboard reads is named here once. The recorder
//! is process-global (the `metrics` facade allows one), so several servers
//! started in one test process share it.

use std::sync::OnceLock;

use metrics::{Counter, Label};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::ids::RoomId;

pub const CONNECTIONS_ACCEPTED: &str = "tessera_connections_accepted_total";
/// Connections turned away, by `reason`: max_connections,
/// per_ip_connections, per_ip_rate (each answered with error 5002 and
/// close 1013).
pub const CONNECTIONS_REFUSED: &str = "tessera_connections_refused_total";
/// Refusals dropped without an answer: too many were being answered.
pub const CONNECTIONS_REFUSED_UNANSWERED: &str = "tessera_connections_refused_unanswered_total";
pub const SESSIONS_ACTIVE: &str = "tessera_sessions_active";
pub const SESSIONS_CLOSED: &str = "tessera_sessions_closed_total";
pub const CLIENT_MESSAGES: &str = "tessera_client_messages_total";
pub const CLIENT_ERRORS: &str = "tessera_client_errors_total";
pub const FRAMES_SENT: &str = "tessera_frames_sent_total";
pub const FLUSHES: &str = "tessera_socket_flushes_total";
/// Frames written at once by their pusher (a room's tick, mostly) because
/// the socket was free: no wake-up of the session (also counted in
/// [`FRAMES_SENT`] and [`FLUSHES`]).
pub const FRAMES_IMMEDIATE: &str = "tessera_frames_sent_immediately_total";
pub const OUTBOUND_DROPPED: &str = "tessera_outbound_dropped_total";
pub const ROOMS_ACTIVE: &str = "tessera_rooms_active";
pub const ROOM_TICKS: &str = "tessera_room_ticks_total";
pub const ROOM_TICKS_SKIPPED: &str = "tessera_room_ticks_skipped_total";
pub const ROOM_TICK_SECONDS: &str = "tessera_room_tick_seconds";
/// Labelled `reason`: [`DROPPED_INPUT_QUEUE_FULL`] (a move pushed out of
/// a member's input queue by newer ones) or [`DROPPED_ROOM_BUSY`] (a chat
/// or pick-up cast refused by the room's full mailbox).
pub const ROOM_INPUTS_DROPPED: &str = "tessera_room_inputs_dropped_total";
/// Inputs a room applied (each `seq` above its member's last, once), per
/// map: with the clients' counts, says whether any were lost on the way
/// (a live migration's in-flight batch, say).
pub const ROOM_INPUTS_APPLIED: &str = "tessera_room_inputs_applied_total";
/// Inputs an edge sent again to a room's new owner after a live move
/// (those sent lately to the old one: some may have arrived too late).
pub const MIGRATION_INPUTS_RESENT: &str = "tessera_migration_inputs_resent_total";
pub const DROPPED_INPUT_QUEUE_FULL: &str = "input_queue_full";
pub const DROPPED_ROOM_BUSY: &str = "room_busy";
pub const ROOM_RESTARTS: &str = "tessera_room_restarts_total";
pub const ROOM_FAILURES: &str = "tessera_room_failures_total";
pub const ROOM_POISON_DROPPED: &str = "tessera_room_poison_messages_dropped_total";
pub const ROOM_RESTORE_SECONDS: &str = "tessera_room_restore_seconds";
pub const ROOM_STALLS: &str = "tessera_room_stalls_total";
/// Extra room Arbiters, started when no room thread was live and retired
/// when a stuck one answered again; the gauge is how many run now.
pub const ROOM_ARBITERS_STARTED: &str = "tessera_room_arbiters_started_total";
pub const ROOM_ARBITERS_RETIRED: &str = "tessera_room_arbiters_retired_total";
pub const ROOM_ARBITERS_EXTRA: &str = "tessera_room_arbiters_extra";
/// Pick-ups by `result`: done, item_gone, out_of_reach, failed (item put
/// back), retry (credit not confirmed, retried).
pub const PICKUPS: &str = "tessera_pickups_total";
pub const SESSION_PANICS: &str = "tessera_session_panics_total";
pub const UPDATE_ENCODES: &str = "tessera_update_encodes_total";
pub const UPDATE_FRAMES: &str = "tessera_update_frames_total";
/// Members' views diffed by room ticks: one per member whose view changed,
/// less those handed the frame of the member before them because their
/// views were the same (where everyone sees everyone, about one a tick).
pub const VIEW_DIFFS: &str = "tessera_view_diffs_total";
/// Cluster mode: `tick` messages rooms here sent to edge shards (one per
/// edge per tick with anything to show).
pub const REMOTE_TICKS: &str = "tessera_remote_ticks_total";
/// Cluster mode: rooms whose members on this shard were moved to the
/// room's new owner after its old one went away, by `result` (`moved`,
/// `failed`).
pub const ROOM_FAILOVERS: &str = "tessera_room_failovers_total";
/// Cluster mode: how long this shard's members of a room waited for it
/// after its owner went away (from the owner declared dead or its stream
/// ending to the members re-joined on the new owner, or here). The
/// detection before it is `cluster.swim_*` or the stream's end.
pub const ROOM_FAILOVER_SECONDS: &str = "tessera_room_failover_seconds";
/// Cluster mode: rooms this shard froze because it could not renew their
/// leases while a peer still reached the directory.
pub const ROOM_FREEZES: &str = "tessera_room_freezes_total";
/// Cluster mode: rooms frozen here now (see [`ROOM_FREEZES`]).
pub const ROOMS_FROZEN: &str = "tessera_rooms_frozen";
/// Cluster mode: frozen rooms handed over (stopped here, their lease
/// abandoned to whichever shard takes it) after
/// `cluster.partition_handover_ms`.
pub const ROOM_HANDOVERS: &str = "tessera_room_handovers_total";
/// Cluster mode: live migrations of rooms this shard ran, by `result`
/// (`moved`, `moved_stalled`: from the last snapshot of a room that did
/// not answer the pause, `resumed`: the target refused or did not answer
/// and the room went on here, `lost`: the lease moved on regardless).
pub const MIGRATIONS: &str = "tessera_migrations_total";
/// Cluster mode: how long a migrated room did not tick (from the pause
/// on the source to its edges being told where it runs now).
pub const MIGRATION_PAUSE_SECONDS: &str = "tessera_migration_pause_seconds";
/// Members of each room this shard runs (held seats included), by
/// `where`: `local` (socket on this shard) or `remote` (on another shard,
/// cluster mode). Per-room labels as the other room series.
pub const ROOM_MEMBERS: &str = "tessera_room_members";
/// Cluster mode: views of a remote room's `tick` that named an entry the
/// tick did not carry (dropped; a bug or a bad peer).
pub const REMOTE_BAD_VIEWS: &str = "tessera_remote_bad_views_total";
/// Cluster mode: members of a remote room whose view, as this shard
/// tracks it to imply their `moved`, did not fit a view the owner sent;
/// each is asked a full view (`resync`).
pub const REMOTE_VIEW_RESYNCS: &str = "tessera_remote_view_resyncs_total";
/// Cluster mode: second input batches of this shard's remote members,
/// by `outcome`: `made` (applied on the owner's tick they aimed at) or
/// `missed` (a tick later; the batch's lead is raised, `late.rs`).
pub const REMOTE_LATE_BATCHES: &str = "tessera_remote_late_batches_total";
pub const DISPATCH_PUBLISHED: &str = "tessera_dispatch_published_total";
pub const DISPATCH_DELIVERED: &str = "tessera_dispatch_delivered_total";
pub const DISPATCH_DROPPED: &str = "tessera_dispatch_dropped_total";
pub const DISPATCH_QUEUE_DEPTH: &str = "tessera_dispatch_queue_depth";
/// Long-lived tasks (see `supervise`), by `child`: restarts done, panics
/// caught, given up past the restart intensity, and 1 while running.
pub const CHILD_RESTARTS: &str = "tessera_child_restarts_total";
pub const CHILD_PANICS: &str = "tessera_child_panics_total";
pub const CHILD_FAILURES: &str = "tessera_child_failures_total";
pub const CHILD_UP: &str = "tessera_child_up";

/// The labels of a per-room series: `map`, then `extra`, then `room` for
/// an instance other than the map's first (`room="lobby#2"`). The first
/// instance's series keep the labels they had before maps could run as
/// several instances, so existing dashboards and alerts read on.
pub fn room_labels(id: &RoomId, extra: &[(&'static str, &'static str)]) -> Vec<Label> {
    let mut labels = vec![Label::new("map", id.map().to_string())];
    labels.extend(extra.iter().map(|(k, v)| Label::new(*k, *v)));
    if !id.is_first() {
        labels.push(Label::new("room", id.to_string()));
    }
    labels
}

/// Create the drop counters at 0, so dashboards and alerts that watch them
/// (`ops/grafana`, `ops/prometheus`) see a series before the first drop.
pub fn register_zeroes() {
    for reason in [DROPPED_INPUT_QUEUE_FULL, DROPPED_ROOM_BUSY] {
        metrics::counter!(ROOM_INPUTS_DROPPED, "reason" => reason).increment(0);
    }
    for class in ["state", "reliable"] {
        metrics::counter!(OUTBOUND_DROPPED, "class" => class).increment(0);
    }
}

/// Count one client message of `kind` (a [`ClientMsg`]'s `kind()`,
/// `malformed` or `text`) in `tessera_client_messages_total{kind}`. The
/// handles are registered once: a session counts every frame it reads, and
/// the `counter!` macro looks its key up in the registry each time (hashing
/// the name and the label), a visible part of a move's cost.
///
/// [`ClientMsg`]: protocol::ClientMsg
pub fn count_client_message(kind: &'static str) {
    const KINDS: [&str; 10] = [
        "move",
        "ping",
        "chat",
        "join",
        "leave",
        "hello",
        "give",
        "pick_up",
        "malformed",
        "text",
    ];
    // Each registered at its first use, as the macro would: a kind never
    // seen has no series (scrapes stay as they were).
    static COUNTERS: [OnceLock<Counter>; 10] = [const { OnceLock::new() }; 10];
    match KINDS.iter().position(|&k| k == kind) {
        Some(i) => COUNTERS[i]
            .get_or_init(|| {
                // The recorder first, or the handle would be a no-op.
                prometheus();
                metrics::counter!(CLIENT_MESSAGES, "kind" => kind)
            })
            .increment(1),
        // A kind the list above misses still counts, through the registry.
        None => metrics::counter!(CLIENT_MESSAGES, "kind" => kind).increment(1),
    }
}

/// The process's Prometheus handle, installing the recorder on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first, in which case
        // our handle simply renders nothing; the server still runs.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Peer tunnels (`cluster::tunnel`): connected peers now; bytes by `peer`
/// and `dir` (in, out; frames with their length prefixes); the last
/// heartbeat round trip by `peer`; connections refused by `reason` (a
/// refusal code's name) and `by` (us: this shard refused; them: the peer
/// did); streams reset by `reason` (overflow, ...); state frames replaced
/// by newer ones of the same key, and dropped for want of budget.
pub const PEERS_CONNECTED: &str = "tessera_peers_connected";
pub const PEER_BYTES: &str = "tessera_peer_bytes_total";
pub const PEER_RTT: &str = "tessera_peer_rtt_seconds";
pub const PEER_REFUSED: &str = "tessera_peer_refused_total";
pub const PEER_STREAM_RESETS: &str = "tessera_peer_stream_resets_total";
pub const PEER_STATE_COALESCED: &str = "tessera_peer_state_coalesced_total";
pub const PEER_STATE_DROPPED: &str = "tessera_peer_state_dropped_total";

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of `tessera_client_messages_total{kind}` in a scrape.
    fn scraped(kind: &str) -> f64 {
        let text = prometheus().render();
        let series = format!("{CLIENT_MESSAGES}{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    #[test]
    fn client_messages_are_counted_by_kind_through_the_cached_handles() {
        // Other tests in this process count too: only growth is asserted,
        // by at least what this test counted.
        let (moves, text, odd) = (scraped("move"), scraped("text"), scraped("unlisted"));
        for _ in 0..3 {
            count_client_message("move");
        }
        count_client_message("text");
        count_client_message("unlisted");
        assert!(scraped("move") >= moves + 3.0);
        assert!(scraped("text") > text);
        assert!(
            scraped("unlisted") > odd,
            "a kind not in the list still counts"
        );
    }
}
