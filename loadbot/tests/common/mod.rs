//! Starts the real `tessera-server` as a child process on port 0, for the
//! integration tests; the [`Shard`] guard kills it in every path (panics
//! included).
//!
//! The binary is `TESSERA_SERVER_BIN`, or `<target>/debug/tessera-server`
//! (`CARGO_TARGET_DIR`, or the workspace's `target/`). Build it first:
//! `cargo build -p server --bin tessera-server`.

#![allow(dead_code)] // Each test file uses its own subset.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the server may take to print its addresses.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub fn server_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("TESSERA_SERVER_BIN") {
        return PathBuf::from(path);
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    target.join("debug").join("tessera-server")
}

/// A running shard; killed and reaped on drop.
pub struct Shard {
    child: Child,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
}

impl Shard {
    /// Starts a dev-mode shard with the default configuration.
    pub fn start() -> Shard {
        Shard::start_with(&[], &[])
    }

    /// Starts a shard with extra flags and `TESSERA_*` environment
    /// overrides (e.g. `("TESSERA_SERVER__IDLE_TIMEOUT_MS", "1500")`).
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Shard {
        let bin = server_bin();
        assert!(
            bin.exists(),
            "no server binary at {}: build it with `cargo build -p server --bin \
             tessera-server` or set TESSERA_SERVER_BIN",
            bin.display()
        );
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let log = tmp.join(format!(
            "tessera-server-{}-{}.log",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let log_file = std::fs::File::create(&log).expect("create the server log file");
        // Each shard gets its own embedded store: shards in parallel tests
        // must not share (and lock) one data directory.
        let data = log.with_extension("data");
        let mut cmd = Command::new(&bin);
        cmd.args(["--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        // Only what the test says: no TESSERA_* from the caller's shell.
        for (var, _) in std::env::vars() {
            if var.starts_with("TESSERA_") {
                cmd.env_remove(var);
            }
        }
        cmd.env("RUST_LOG", "warn");
        cmd.env("TESSERA_STORE__EMBEDDED__DIR", &data);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start tessera-server");
        let stdout = child.stdout.take().expect("stdout is piped");
        // The reader thread keeps draining stdout for the server's whole
        // life, so a chatty server never blocks on a full pipe.
        let (line_tx, line_rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line_tx.send(line).is_err() {
                    // Nobody listens any more; keep draining.
                }
            }
        });
        let mut shard = Shard {
            child,
            ws: "0.0.0.0:0".parse().expect("placeholder"),
            http: "0.0.0.0:0".parse().expect("placeholder"),
            log,
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut ws, mut http) = (None, None);
        while ws.is_none() || http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match line_rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!(
                    "the server printed no `ws listening on` / `http listening on` within {:?}; \
                     its log: {}",
                    START_TIMEOUT,
                    shard.log_tail()
                ),
            };
            if let Some(addr) = line.strip_prefix("ws listening on ") {
                ws = addr.trim().parse().ok();
            } else if let Some(addr) = line.strip_prefix("http listening on ") {
                http = addr.trim().parse().ok();
            }
        }
        shard.ws = ws.expect("checked above");
        shard.http = http.expect("checked above");
        shard
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.ws)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last few KiB of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4096);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        format!("{}:\n{}", self.log.display(), &text[start..])
    }

    /// `GET /metrics` as text.
    pub fn metrics(&self) -> String {
        http_get(self.http, "/metrics")
    }

    /// `tessera_client_messages_total` by `kind`.
    pub fn client_messages(&self) -> BTreeMap<String, u64> {
        counter_by_label(&self.metrics(), "tessera_client_messages_total", "kind")
    }
}

impl Drop for Shard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET on loopback; the body.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the server");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or((response.as_str(), ""));
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {path}: {head}"
    );
    body.to_string()
}

/// Sums a Prometheus counter by one label's value:
/// `name{kind="move",...} 12` -> {"move": 12}.
pub fn counter_by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let needle = format!("{label}=\"");
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let Some(labels) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = labels.split_once('}') else {
            continue;
        };
        let Some(start) = labels.find(&needle) else {
            continue;
        };
        let key = labels[start + needle.len()..]
            .split('"')
            .next()
            .unwrap_or_default();
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        *out.entry(key.to_string()).or_insert(0) += value as u64;
    }
    out
}

/// Checks that an HTML/SVG document's elements nest properly (void
/// elements and `<!DOCTYPE>` aside). Returns the first problem.
pub fn check_balanced_markup(doc: &str) -> Result<(), String> {
    const VOID: [&str; 6] = ["meta", "br", "hr", "img", "input", "link"];
    let mut stack: Vec<String> = Vec::new();
    let mut rest = doc;
    while let Some(open) = rest.find('<') {
        rest = &rest[open + 1..];
        let close = rest.find('>').ok_or("unterminated tag")?;
        let tag = &rest[..close];
        rest = &rest[close + 1..];
        if tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            let name = name.trim();
            match stack.pop() {
                Some(open) if open == name => {}
                other => return Err(format!("</{name}> closes {other:?}")),
            }
            continue;
        }
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if name.is_empty() {
            return Err(format!("bad tag <{tag}>"));
        }
        if tag.ends_with('/') || VOID.contains(&name.as_str()) {
            continue;
        }
        if name == "style" || name == "title" {
            // Raw text: skip to the end tag.
            let end = format!("</{name}>");
            let at = rest.find(&end).ok_or(format!("no {end}"))?;
            rest = &rest[at + end.len()..];
            continue;
        }
        stack.push(name);
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(format!("unclosed elements: {stack:?}"))
    }
}

#[test]
fn prometheus_labels_are_summed() {
    let text = "# HELP x\ntessera_client_messages_total{kind=\"move\"} 12\n\
                tessera_client_messages_total{shard=\"a\",kind=\"move\"} 3\n\
                tessera_client_messages_total{kind=\"ping\"} 1e1\n\
                tessera_client_messages_totally{kind=\"move\"} 99\n";
    let m = counter_by_label(text, "tessera_client_messages_total", "kind");
    assert_eq!(m.get("move"), Some(&15));
    assert_eq!(m.get("ping"), Some(&10));
}

#[test]
fn markup_checker_catches_mistakes() {
    assert!(check_balanced_markup("<html><body><p>x</p><br></body></html>").is_ok());
    assert!(check_balanced_markup("<svg><rect/></svg>").is_ok());
    assert!(check_balanced_markup("<html><body></html>").is_err());
    assert!(check_balanced_markup("<p>").is_err());
}
