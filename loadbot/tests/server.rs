//! The loadbot against the real server: a shard started on port 0 per test
//! (see `common`), small swarms through the library and the binary.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{check_balanced_markup, Shard};
use loadbot::config::{Auth, Scenario};
use loadbot::{report, Config, Summary};

const SECRET: &str = "loadbot-test-secret-0123456789";

fn config(shard: &Shard, bots: u32, duration: Duration) -> Config {
    let mut cfg = Config::new(&shard.url()).expect("a valid default config");
    cfg.bots = bots;
    cfg.rooms = 3;
    cfg.duration = duration;
    cfg.ramp = Duration::from_millis(500);
    cfg
}

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-{name}", std::process::id()))
}

/// The kinds of message the bots sent at least once, with their counts.
fn sent_by_kind(summary: &Summary) -> BTreeMap<String, u64> {
    summary
        .msgs_sent_by_kind
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| (k.clone(), *n))
        .collect()
}

/// Waits (bounded) until the server has counted every message the bots
/// sent; returns the server's last counts.
async fn server_counts_match(shard: &Shard, summary: &Summary) -> BTreeMap<String, u64> {
    let sent = sent_by_kind(summary);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counted = shard.client_messages();
        if counted == sent || Instant::now() > deadline {
            return counted;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_clean(s: &Summary, shard: &Shard) {
    let log = shard.log_tail();
    assert_eq!(
        s.bots_joined,
        u64::from(s.bots),
        "every bot joined: {s:#?}\n{log}"
    );
    assert_eq!(
        s.connect_failures, 0,
        "{:?}\n{log}",
        s.connect_failures_by_reason
    );
    assert_eq!(s.join_failures, 0, "{:?}\n{log}", s.join_failures_by_reason);
    assert_eq!(s.error_frames, 0, "{:?}\n{log}", s.errors_by_code);
    assert_eq!(s.disconnects, 0, "{:?}\n{log}", s.disconnects_by_close_code);
    assert_eq!(
        s.decode_errors, 0,
        "the server sent frames we cannot decode"
    );
    assert_eq!(s.unexpected_frames, 0, "the server sent text or raw frames");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_swarm_joins_measures_and_matches_the_server_counts() {
    let shard = Shard::start();
    let cfg = config(&shard, 50, Duration::from_secs(5));
    let summary = loadbot::run(cfg).await.expect("the run completes");
    assert_clean(&summary, &shard);

    let counted = server_counts_match(&shard, &summary).await;
    let sent = sent_by_kind(&summary);
    assert_eq!(counted, sent, "server counts vs loadbot msgs_sent_by_kind");
    assert_eq!(sent.values().sum::<u64>(), summary.msgs_sent);
    assert_eq!(sent["hello"], 50);
    assert_eq!(sent["join"], 50);
    // 50 bots at 10 Hz for ~5 s, minus the ramp's stagger and scheduling slack.
    assert!(sent["move"] > 50 * 10 * 4, "{sent:?}");

    assert!(summary.rtt_ms.count >= 50 * 4, "{:?}", summary.rtt_ms);
    assert!(summary.rtt_ms.p50 > 0.0 && summary.rtt_ms.p99 >= summary.rtt_ms.p50);
    assert!(summary.rtt_ms.max >= summary.rtt_ms.p99);
    assert!(
        summary.move_visible_ms.count > 0,
        "own moves were seen applied"
    );
    assert!(summary.update_interval_ms.count > 0);
    assert!(summary.msgs_received_by_kind["update"] > 0);
    assert_eq!(summary.config.maps.len(), 3, "lobby, arena, plains");
    assert!(summary.timeline.len() >= 4, "one sample per second");
    assert!(summary.loadbot_cpu_s > 0.0);

    // Reports: JSON parses with the documented fields, HTML is well formed.
    let json_path = tmp("move.json");
    let html_path = tmp("move.html");
    report::write_json(&summary, &json_path).expect("write JSON");
    report::write_html(&summary, &html_path).expect("write HTML");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).expect("read JSON"))
            .expect("the JSON report parses");
    assert_eq!(json["bots_joined"], 50);
    assert_eq!(json["join_failures"], 0);
    assert_eq!(json["msgs_sent"], summary.msgs_sent);
    assert!(json["msgs_received"].as_u64().is_some_and(|n| n > 0));
    assert!(json["errors_by_code"].is_object());
    for q in ["p50", "p99", "max"] {
        assert!(
            json["rtt_ms"][q].as_f64().is_some_and(|v| v > 0.0),
            "rtt_ms.{q}"
        );
    }
    assert!(json["loadbot_cpu_s"].is_number());
    let html = std::fs::read_to_string(&html_path).expect("read HTML");
    check_balanced_markup(&html).expect("balanced HTML");
    assert_eq!(html.matches("<svg").count(), 4);
    assert!(!html.contains("<script") && !html.contains("src="));
    assert!(html.contains("<polyline"), "the charts have data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_swarm_chats_within_the_rate_limit() {
    let shard = Shard::start();
    let mut cfg = config(&shard, 20, Duration::from_secs(3));
    cfg.scenario = Scenario::Chat;
    cfg.chat_hz = 1.0;
    let summary = loadbot::run(cfg).await.expect("the run completes");
    assert_clean(&summary, &shard);
    let chats = summary.msgs_sent_by_kind["chat"];
    assert!(chats >= 20 * 2, "{chats}");
    // Every chat goes to every member of the sender's room, the sender too.
    assert!(summary.msgs_received_by_kind["chat"] >= chats);
    let counted = server_counts_match(&shard, &summary).await;
    assert_eq!(counted.get("chat"), Some(&chats));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churning_bots_resume_and_hop() {
    let shard = Shard::start();
    let mut cfg = config(&shard, 30, Duration::from_secs(4));
    cfg.scenario = Scenario::Churn;
    cfg.churn_interval = Duration::from_millis(600);
    let summary = loadbot::run(cfg).await.expect("the run completes");
    let log = shard.log_tail();
    assert_eq!(summary.bots_joined, 30, "{summary:#?}\n{log}");
    assert!(summary.churn_drops > 0, "{summary:#?}");
    assert!(summary.map_hops > 0, "{summary:#?}");
    // The end of the run may cut a bot's last resume short (before its
    // reconnect, welcome or seat): at most one per bot, and counted.
    assert!(summary.resumes_unfinished <= 30, "{summary:#?}");
    let finished = summary.churn_drops - summary.resumes_unfinished;
    assert!(
        (finished..=summary.churn_drops).contains(&summary.reconnects),
        "{summary:#?}"
    );
    assert_eq!(summary.resumed_new_player, 0, "{summary:#?}\n{log}");
    assert!(
        summary.resumed_same_player >= finished,
        "every resume token gave the same player back: {summary:#?}\n{log}"
    );
    assert_eq!(
        summary.seats_restored, finished,
        "every finished resume got its seat back without a join: {summary:#?}\n{log}"
    );
    // The notice follows `joined`; the stop may come between the two.
    let notices = summary.notices_by_code.get(&6002).copied().unwrap_or(0);
    assert!(
        notices <= summary.seats_restored && notices + 30 >= summary.seats_restored,
        "a notice 6002 per restored seat: {summary:#?}"
    );
    assert_eq!(
        summary.connect_failures, 0,
        "{:?}",
        summary.connect_failures_by_reason
    );
    assert_eq!(
        summary.join_failures, 0,
        "{:?}",
        summary.join_failures_by_reason
    );
    assert_eq!(summary.decode_errors, 0);
    assert!(summary.rtt_ms.count > 0);
    let counted = server_counts_match(&shard, &summary).await;
    assert_eq!(
        counted.get("hello"),
        Some(&summary.msgs_sent_by_kind["hello"])
    );
    assert_eq!(
        counted.get("join"),
        Some(&summary.msgs_sent_by_kind["join"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_bots_survive_a_short_idle_timeout_by_answering_websocket_pings() {
    // The server drops a client silent for 1.5 s and pings every 300 ms; the
    // bots ping only every 10 s, so only their WebSocket pongs keep them.
    let shard = Shard::start_with(
        &[],
        &[
            ("TESSERA_SERVER__IDLE_TIMEOUT_MS", "1500"),
            ("TESSERA_SERVER__HEARTBEAT_INTERVAL_MS", "300"),
        ],
    );
    let mut cfg = config(&shard, 20, Duration::from_secs(4));
    cfg.scenario = Scenario::Idle;
    cfg.ping_interval = Duration::from_secs(10);
    let summary = loadbot::run(cfg).await.expect("the run completes");
    assert_clean(&summary, &shard);
    assert_eq!(summary.msgs_sent_by_kind["move"], 0);
    assert_eq!(summary.msgs_sent_by_kind["chat"], 0);
    assert!(
        summary.ws_pings_received >= 20 * 5,
        "{}",
        summary.ws_pings_received
    );
    assert_eq!(summary.bots_connected_at_end, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_tokens_open_a_production_shard_and_a_wrong_secret_does_not() {
    let shard = Shard::start_with(
        &["--mode", "production"],
        &[("TESSERA_AUTH__SECRET", SECRET)],
    );
    let mut cfg = config(&shard, 10, Duration::from_secs(2));
    cfg.auth = Auth::Mint {
        secret: SECRET.into(),
        ttl: Duration::from_secs(600),
    };
    let summary = loadbot::run(cfg.clone()).await.expect("the run completes");
    assert_clean(&summary, &shard);

    cfg.auth = Auth::Mint {
        secret: "not-the-secret-of-this-shard".into(),
        ttl: Duration::from_secs(600),
    };
    cfg.bots = 3;
    cfg.duration = Duration::from_secs(1);
    let refused = loadbot::run(cfg.clone()).await.expect("the run completes");
    assert_eq!(refused.bots_joined, 0);
    assert!(refused.connect_failures >= 3);
    assert_eq!(
        refused
            .connect_failures_by_reason
            .keys()
            .collect::<Vec<_>>(),
        ["error_2002"],
        "{refused:#?}"
    );
    assert!(refused.error_rate > 0.0);

    cfg.auth = Auth::Guest;
    let guests = loadbot::run(cfg).await.expect("the run completes");
    assert_eq!(guests.bots_joined, 0);
    assert!(guests
        .connect_failures_by_reason
        .keys()
        .all(|k| k == "error_2001"));
}

/// Runs the binary with a time limit; (exit code, stdout, stderr).
fn loadbot_bin(args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadbot"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start loadbot");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("poll loadbot").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("loadbot did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("collect loadbot output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn binary_exit_status_follows_the_thresholds() {
    let shard = Shard::start();
    let url = shard.url();
    let json = tmp("bin.json");
    let html = tmp("bin.html");
    let common = [
        "--url",
        &url,
        "--bots",
        "5",
        "--rooms",
        "2",
        "--duration",
        "2s",
        "--ramp",
        "0s",
    ];

    let mut args = common.to_vec();
    let (json_s, html_s) = (json.display().to_string(), html.display().to_string());
    args.extend([
        "--max-p99-ms",
        "10000",
        "--max-error-rate",
        "0.5",
        "--json",
        &json_s,
        "--html",
        &html_s,
    ]);
    let (code, stdout, stderr) = loadbot_bin(&args);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("thresholds   passed"), "{stdout}");
    assert!(stdout.contains("latency (ms)"), "{stdout}");
    let summary: Summary =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written"))
            .expect("the JSON report is a Summary");
    assert_eq!(summary.bots_joined, 5);
    assert!(summary.thresholds.passed);
    check_balanced_markup(&std::fs::read_to_string(&html).expect("HTML written"))
        .expect("balanced HTML");

    let mut args = common.to_vec();
    args.extend(["--max-p99-ms", "0.001"]);
    let (code, stdout, stderr) = loadbot_bin(&args);
    assert_eq!(
        code,
        Some(i32::from(loadbot::EXIT_THRESHOLD)),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stderr.contains("--max-p99-ms 0.001"), "{stderr}");
    assert!(stdout.contains("FAILED"), "{stdout}");

    // Nothing listens here once the shard is gone: every connect fails, so
    // any error-rate threshold below 1 fails.
    drop(shard);
    let mut args = common.to_vec();
    args.extend(["--max-error-rate", "0.1"]);
    let (code, stdout, stderr) = loadbot_bin(&args);
    assert_eq!(code, Some(3), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("--max-error-rate"), "{stderr}");
    assert!(stdout.contains("refused"), "{stdout}");

    let (code, _, stderr) = loadbot_bin(&["--url", "http://127.0.0.1:1"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("ws://"), "{stderr}");
}
