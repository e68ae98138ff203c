//! The Grafana dashboard (`ops/grafana/tessera.json`) and the Prometheus
//! alerts (`ops/prometheus/alerts.yml`) name only metrics a running shard
//! exports, and the alerts pass `promtool check rules`.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// Metrics a shard exports in cluster mode only (the directory's), which a
/// single shard here cannot show.
const CLUSTER_ONLY: &[&str] = &["tessera_leases_lost_total"];

fn ops_file(path: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../ops")
        .join(path);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

/// Every `tessera_*` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tessera_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        // `tessera_` inside a longer word (a uid such as "tessera-shards"
        // has no underscore) is not a metric.
        let before_ok = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        if before_ok && end > "tessera_".len() {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Whether the exposition text has a series of `name` (a summary's or
/// histogram's parts count).
fn exported(metrics: &str, name: &str) -> bool {
    metrics.lines().filter(|l| !l.starts_with('#')).any(|l| {
        l.strip_prefix(name).is_some_and(|rest| {
            rest.starts_with('{')
                || rest.starts_with(' ')
                || rest.starts_with("_sum")
                || rest.starts_with("_count")
                || rest.starts_with("_bucket")
        })
    })
}

#[tokio::test]
async fn every_metric_the_dashboard_and_alerts_name_is_exported() {
    let (_, dashboard) = ops_file("grafana/tessera.json");
    let (_, alerts) = ops_file("prometheus/alerts.yml");
    let doc: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let panels = doc["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let mut exprs = String::new();
    for panel in panels {
        let targets = panel["targets"]
            .as_array()
            .expect("every panel has targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for t in targets {
            exprs.push_str(t["expr"].as_str().expect("a target has an expr"));
            exprs.push('\n');
        }
    }
    let mut names = metric_names(&exprs);
    let alert_names = metric_names(&alerts);
    for name in CLUSTER_ONLY {
        assert!(alert_names.contains(*name), "the alerts watch {name}");
    }
    names.extend(alert_names);

    // A shard with some life in it: a player who joins, walks and chats, an
    // announcement, a room restart, a durable write (the starter purse).
    let mut config = test_config();
    config.admin.token = "dashboards-admin-token-01".into();
    config.economy.starter_currency = 10;
    let shard = start(config);
    let (mut alice, _) = Client::joined(shard.ws_addr, "alice", "test").await;
    alice.walk(1, 1.0, 0.0).await;
    alice.chat("hello").await;
    let base = format!("http://{}", shard.http_addr);
    let token = Some("dashboards-admin-token-01");
    let (status, _) = http_post(&format!("{base}/admin/announce"), token, r#"{"text":"hi"}"#).await;
    assert_eq!(status, 200);
    let (status, _) = http_post(&format!("{base}/admin/rooms/test/restart"), token, "").await;
    assert_eq!(status, 200);
    alice.drain(Duration::from_millis(300)).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let missing = loop {
        let text = metrics(&shard).await;
        let missing: Vec<&String> = names
            .iter()
            .filter(|n| !CLUSTER_ONLY.contains(&n.as_str()) && !exported(&text, n))
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            break missing.into_iter().cloned().collect::<Vec<_>>();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "named in ops/grafana or ops/prometheus but not exported: {missing:?}"
    );
}

/// `promtool check rules` on the alerts, when a promtool can be found:
/// `PROMTOOL`, `promtool` on the PATH, or `target/tools/promtool` (which
/// `scripts/promtool.sh`, run by `scripts/test.sh`, installs).
#[test]
fn the_alerts_pass_promtool() {
    let (path, _) = ops_file("prometheus/alerts.yml");
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/promtool");
    let candidates = std::env::var_os("PROMTOOL")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("promtool"), local]);
    for tool in candidates {
        let Ok(out) = std::process::Command::new(&tool)
            .args(["check", "rules"])
            .arg(&path)
            .output()
        else {
            continue;
        };
        assert!(
            out.status.success(),
            "{} check rules: {}{}",
            tool.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    eprintln!(
        "skipping promtool check rules: no promtool (set PROMTOOL, or run scripts/promtool.sh, which scripts/test.sh does)"
    );
}

#[test]
fn metric_names_are_picked_out_of_expressions() {
    let names = metric_names(
        "sum(rate(tessera_a_total[1m])) / tessera_b{x=\"tessera_c\"} uid tessera-shards xtessera_d",
    );
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(names, ["tessera_a_total", "tessera_b", "tessera_c"]);
}
