//! The ops console and the admin subcommands against a real shard (the
//! server binary on loopback port 0, configured with an operator and a
//! viewer token) and a real console (the `tessera-ops console` binary).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const OPS: &str = env!("CARGO_BIN_EXE_tessera-ops");
const OPERATOR: &str = "console-operator-token-01";
const VIEWER: &str = "console-viewer-token-0123";

/// A child process, killed when dropped.
struct Proc {
    child: Child,
    addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_bin() -> PathBuf {
    Path::new(OPS).with_file_name(format!("tessera-server{}", std::env::consts::EXE_SUFFIX))
}

/// Start `command` and read its stdout until a line starting with
/// `prefix`; the rest of that line is the address.
fn spawn(mut command: Command, prefix: &str) -> Proc {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e} (cargo build --workspace --bins)"));
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    for line in lines.take(5) {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix(prefix) {
            addr = Some(rest.trim().to_string());
            break;
        }
    }
    Proc {
        child,
        addr: addr.unwrap_or_else(|| panic!("no {prefix:?} line")),
    }
}

fn start_shard(dir: &Path) -> Proc {
    let config = dir.join("shard.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[admin]
token = ""

[[admin.tokens]]
token = "{OPERATOR}"
role = "operator"
name = "olga"

[[admin.tokens]]
token = "{VIEWER}"
role = "viewer"
name = "victor"
"#
        ),
    )
    .unwrap();
    let mut command = Command::new(server_bin());
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TESSERA_") {
            command.env_remove(name);
        }
    }
    command
        .env("TESSERA_STORE__EMBEDDED__DIR", dir.join("data"))
        .env("RUST_LOG", "warn")
        .arg("--config")
        .arg(&config)
        .args(["--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
    spawn(command, "http listening on ")
}

fn start_console(shard: &Proc) -> Proc {
    let mut command = Command::new(OPS);
    command.args([
        "console",
        "--listen",
        "127.0.0.1:0",
        "--shard",
        &shard.addr,
        "--refresh-ms",
        "200",
    ]);
    spawn(command, "console listening on ")
}

/// A request to the console: status and body.
fn call(
    console: &Proc,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("http://{}{path}", console.addr);
    let auth = token.map(|t| format!("Bearer {t}"));
    let response = if method == "GET" {
        let mut r = agent.get(&url);
        if let Some(a) = &auth {
            r = r.header("authorization", a);
        }
        r.call()
    } else {
        let mut r = agent.post(&url).header("content-type", "application/json");
        if let Some(a) = &auth {
            r = r.header("authorization", a);
        }
        r.send(body)
    };
    let mut response = response.expect("the console answers");
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn the_console_shows_the_shard_and_passes_the_shards_refusals_on() {
    let dir = tempfile::tempdir().unwrap();
    let shard = start_shard(dir.path());
    let console = start_console(&shard);

    let (status, page) = call(&console, "GET", "/", None, "");
    assert_eq!(status, 200);
    assert!(page.contains("Tessera ops console"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from the network"
    );
    let (status, js) = call(&console, "GET", "/app.js", None, "");
    assert_eq!(status, 200);
    assert!(js.contains("sessionStorage") && !js.contains("document.cookie"));

    let (status, _) = call(&console, "GET", "/api/overview", None, "");
    assert_eq!(status, 401, "no token, nothing forwarded");
    let (status, body) = call(
        &console,
        "GET",
        "/api/overview",
        Some("not-a-token-of-this-shard"),
        "",
    );
    assert_eq!(status, 401, "{body}");

    let (status, body) = call(&console, "GET", "/api/whoami", Some(VIEWER), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["role"], "viewer");
    let (status, body) = call(&console, "GET", "/api/overview", Some(VIEWER), "");
    assert_eq!(status, 200, "{body}");
    let view = json(&body);
    assert_eq!(view["shards"][0]["state"], "ready");
    assert_eq!(view["cluster"], false);
    assert_eq!(view["shards"][0]["info"]["id"], shard.addr.as_str());

    // A viewer's action is refused by the shard, and the console says so.
    let (status, body) = call(
        &console,
        "POST",
        "/api/announce",
        Some(VIEWER),
        r#"{"text":"hi"}"#,
    );
    assert_eq!(status, 403, "{body}");
    let restart = format!(r#"{{"shard":"http://{}","room":"lobby"}}"#, shard.addr);
    let (status, _) = call(
        &console,
        "POST",
        "/api/rooms/restart",
        Some(VIEWER),
        &restart,
    );
    assert_eq!(status, 403);
    let (status, _) = call(&console, "POST", "/api/players/x/kick", Some(VIEWER), "{}");
    assert_eq!(status, 403);

    let (status, body) = call(
        &console,
        "POST",
        "/api/announce",
        Some(OPERATOR),
        r#"{"text":"hi"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)[0]["ok"], true);
    let (status, body) = call(
        &console,
        "POST",
        "/api/players/nobody/kick",
        Some(OPERATOR),
        "{}",
    );
    assert_eq!(status, 404, "{body}");

    let (status, body) = call(&console, "GET", "/api/events", Some(VIEWER), "");
    assert_eq!(status, 200);
    let events = json(&body);
    let actions: Vec<&serde_json::Value> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "admin_action")
        .collect();
    assert_eq!(actions.len(), 2, "{events}");
    assert_eq!(actions[0]["actor"], "olga");
    assert_eq!(actions[0]["action"], "announce");
    assert_eq!(actions[1]["result"], "refused 404");

    // Only the shards it was given: a URL a request brings is never called.
    let (status, body) = call(
        &console,
        "GET",
        "/api/room?shard=http://127.0.0.1:1&room=lobby",
        Some(OPERATOR),
        "",
    );
    assert_eq!(status, 400, "{body}");
    let drain = format!(r#"{{"shard":"http://{}"}}"#, shard.addr);
    let (status, body) = call(
        &console,
        "POST",
        "/api/shards/drain",
        Some(OPERATOR),
        &drain,
    );
    assert_eq!(status, 409, "not a cluster: {body}");
}

#[test]
fn the_stream_sends_overviews_and_ends_on_a_refused_token() {
    let dir = tempfile::tempdir().unwrap();
    let shard = start_shard(dir.path());
    let console = start_console(&shard);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent
        .get(&format!("http://{}/api/stream", console.addr))
        .header("authorization", &format!("Bearer {VIEWER}"))
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let mut reader = BufReader::new(response.body_mut().as_reader());
    let mut overviews = 0;
    let mut line = String::new();
    while overviews < 3 {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended");
        if line.starts_with("data: ") {
            let view = json(line.trim_start_matches("data: ").trim());
            assert_eq!(view["shards"][0]["state"], "ready");
            overviews += 1;
        }
    }
    drop(reader);
    let (status, body) = call(
        &console,
        "GET",
        "/api/stream",
        Some("a-wrong-token-0000000"),
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("event: error"), "{body}");
}

fn ops(shard: &Proc, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(OPS)
        .args(["--http", &shard.addr, "--token", token])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn the_subcommands_list_find_tail_and_act_with_the_tokens_role() {
    let dir = tempfile::tempdir().unwrap();
    let shard = start_shard(dir.path());

    let ls = ops(&shard, VIEWER, &["shards", "ls"]);
    assert!(ls.status.success(), "{ls:?}");
    let text = String::from_utf8_lossy(&ls.stdout);
    assert!(
        text.contains(&shard.addr) && text.contains("ready"),
        "{text}"
    );

    let rooms = ops(&shard, VIEWER, &["rooms", "ls"]);
    assert!(rooms.status.success(), "{rooms:?}");
    let find = ops(&shard, VIEWER, &["players", "find", "someone"]);
    assert!(find.status.success(), "{find:?}");
    assert_eq!(
        json(&String::from_utf8_lossy(&find.stdout))["players"],
        serde_json::json!([])
    );

    let refused = ops(&shard, VIEWER, &["rooms", "restart", "lobby"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403"),
        "{refused:?}"
    );
    let missing = ops(&shard, OPERATOR, &["rooms", "restart", "lobby#7"]);
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("404"),
        "{missing:?}"
    );
    let missing = ops(&shard, OPERATOR, &["rooms", "inspect", "lobby#7"]);
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("lobby#7"),
        "{missing:?}"
    );

    let ban = ops(
        &shard,
        OPERATOR,
        &[
            "players",
            "ban",
            "mallory",
            "--reason",
            "spam",
            "--duration-s",
            "60",
        ],
    );
    assert!(ban.status.success(), "{ban:?}");
    assert!(String::from_utf8_lossy(&ban.stdout).contains("banned until"));
    let unban = ops(&shard, OPERATOR, &["players", "unban", "mallory"]);
    assert!(unban.status.success(), "{unban:?}");
    let kick = ops(&shard, OPERATOR, &["players", "kick", "mallory"]);
    assert!(
        String::from_utf8_lossy(&kick.stderr).contains("404"),
        "{kick:?}"
    );

    let tail = ops(&shard, VIEWER, &["events", "tail"]);
    assert!(tail.status.success(), "{tail:?}");
    let text = String::from_utf8_lossy(&tail.stdout);
    let lines: Vec<serde_json::Value> = text.lines().map(json).collect();
    assert_eq!(lines[0]["kind"], "shard_started");
    let actions: Vec<&str> = lines.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions, ["restart_room", "ban", "unban", "kick"], "{text}");
    assert!(lines
        .iter()
        .all(|e| e["actor"].is_null() || e["actor"] == "olga"));
}
