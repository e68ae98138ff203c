//! `tessera-ops` against a real shard (the server binary as a child process
//! on loopback port 0).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
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

fn server_bin() -> PathBuf {
    std::env::var_os("TESSERA_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/tessera-server")
        })
}

fn start_shard() -> Shard {
    let bin = server_bin();
    let data = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(&bin)
        .env("TESSERA_STORE__EMBEDDED__DIR", data.path())
        .args(["--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .env("TESSERA_ADMIN__TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (build it with cargo build -p server)",
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
