//! `tessera-ops` against a real shard (the server binary as a child process
//! on loopback port 0).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const OPS: &str = env!("CARGO_BIN_EXE_tessera-ops");
const ADMIN_TOKEN: &str = "ops-test-admin-token-123";

struct Shard {
    child: Child,
    http: String,
    _data: tempfile::TempDir,
}

impl Drop for Shard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server binary: cargo puts it next to `tessera-ops` in the same
/// target directory, wherever `CARGO_TARGET_DIR` places that. (No variable
/// can point elsewhere: the server refuses `TESSERA_*` variables that are
/// not configuration.) `cargo build --workspace --bins` builds both.
fn server_bin() -> PathBuf {
    Path::new(OPS).with_file_name(format!("tessera-server{}", std::env::consts::EXE_SUFFIX))
}

fn start_shard() -> Shard {
    let bin = server_bin();
    let data = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(&bin);
    // The server reads every TESSERA_* variable as configuration and
    // refuses unknown ones: pass on only the ones set here.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TESSERA_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .env("TESSERA_STORE__EMBEDDED__DIR", data.path())
        .args(["--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env("TESSERA_ADMIN__TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (build it with cargo build --workspace --bins)",
                bin.display()
            )
        });
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut http = None;
    for line in lines.by_ref().take(3) {
        let line = line.unwrap();
        if let Some(addr) = line.strip_prefix("http listening on ") {
            http = Some(addr.to_string());
            break;
        }
    }
    Shard {
        child,
        http: http.expect("server printed its http address"),
        _data: data,
    }
}

fn ops(shard: &Shard, args: &[&str]) -> std::process::Output {
    Command::new(OPS)
        .args(["--http", &shard.http])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn health_metrics_and_announce_work_against_a_real_shard() {
    let shard = start_shard();

    let health = ops(&shard, &["health"]);
    assert!(health.status.success(), "{health:?}");
    let doc: serde_json::Value = serde_json::from_slice(&health.stdout).unwrap();
    assert_eq!(doc["status"], "ok");
    assert_eq!(doc["sessions"], 0);

    let announce = ops(&shard, &["--token", ADMIN_TOKEN, "announce", "hello all"]);
    assert!(announce.status.success(), "{announce:?}");
    let reply: serde_json::Value = serde_json::from_slice(&announce.stdout).unwrap();
    assert_eq!(reply["delivered"], 0);

    let metrics = ops(
        &shard,
        &["metrics", "--prefix", "tessera_dispatch_published"],
    );
    assert!(metrics.status.success(), "{metrics:?}");
    let text = String::from_utf8(metrics.stdout).unwrap();
    assert!(text.contains("topic=\"announcements\""), "{text}");

    let wrong = ops(&shard, &["--token", "not-the-token", "announce", "x"]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("401"),
        "{wrong:?}"
    );

    let unknown_map = ops(
        &shard,
        &["--token", ADMIN_TOKEN, "announce", "x", "--map", "atlantis"],
    );
    assert!(
        String::from_utf8_lossy(&unknown_map.stderr).contains("404"),
        "{unknown_map:?}"
    );
}

/// A shard outside a cluster answers `peers` with the document saying so.
#[test]
fn peers_on_a_shard_alone_says_it_is_not_in_a_cluster() {
    let shard = start_shard();
    let text = ops(&shard, &["--token", ADMIN_TOKEN, "peers"]);
    assert!(text.status.success(), "{text:?}");
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains("not in cluster mode"), "{stdout}");
    let json = ops(&shard, &["--token", ADMIN_TOKEN, "peers", "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(doc["cluster"], false);
    assert_eq!(doc["peers"], serde_json::json!([]));
    let no_token = ops(&shard, &["peers"]);
    assert!(!no_token.status.success());
    assert!(
        String::from_utf8_lossy(&no_token.stderr).contains("admin calls need a token"),
        "{no_token:?}"
    );
}

#[test]
fn an_unreachable_shard_is_a_clear_error() {
    let out = Command::new(OPS)
        .args(["--http", "127.0.0.1:1", "--timeout", "2", "health"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:1"),
        "{out:?}"
    );
}

/// The CLI reads the shard's own variables, so one shell environment
/// serves both (the shard refuses `TESSERA_*` names it does not know).
#[test]
fn the_cli_reads_the_shards_own_variables() {
    let shard = start_shard();
    let announce = Command::new(OPS)
        .env("TESSERA_SERVER__HTTP_ADDR", &shard.http)
        .env("TESSERA_ADMIN__TOKEN", ADMIN_TOKEN)
        .args(["announce", "from the environment"])
        .output()
        .unwrap();
    assert!(announce.status.success(), "{announce:?}");
}

/// A refusal shows the shard's own `error` message, not its raw JSON, and
/// `health` prints the typed document.
#[test]
fn a_refusal_shows_the_shards_message() {
    let shard = start_shard();
    let wrong = ops(&shard, &["--token", "not-the-token", "announce", "x"]);
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(stderr.contains("missing or wrong bearer token"), "{stderr}");
    assert!(!stderr.contains("{\"error\""), "{stderr}");

    let empty = ops(&shard, &["--token", ADMIN_TOKEN, "announce", ""]);
    assert!(!empty.status.success());
    let stderr = String::from_utf8_lossy(&empty.stderr);
    assert!(
        stderr.contains("400") && stderr.contains("text must be 1 to"),
        "{stderr}"
    );

    let health = ops(&shard, &["health"]);
    let doc: serde_json::Value = serde_json::from_slice(&health.stdout).unwrap();
    assert_eq!(doc["rooms"], 0);
    assert!(doc["tasks"]["gateway"].is_string(), "{doc}");
}

#[test]
fn bad_cluster_view_flags_are_refused_with_the_flag_named() {
    let cases: [(&[&str], &str); 4] = [
        (
            &[
                "console",
                "--redis",
                "redis://127.0.0.1:1/0",
                "--cluster-events",
                "0",
            ],
            "--cluster-events",
        ),
        (
            &[
                "console",
                "--redis",
                "redis://127.0.0.1:1/0",
                "--cluster-events",
                "10001",
            ],
            "--cluster-events",
        ),
        (
            &[
                "shards",
                "ls",
                "--redis",
                "redis://127.0.0.1:1/0",
                "--lease-ms",
                "0",
            ],
            "--lease-ms",
        ),
        // The lease length only means something with a directory.
        (&["shards", "ls", "--lease-ms", "3000"], "--redis"),
    ];
    for (args, flag) in cases {
        let out = Command::new(OPS)
            .args(args)
            .env_remove("TESSERA_SERVER__HTTP_ADDR")
            .env_remove("TESSERA_ADMIN__TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}
