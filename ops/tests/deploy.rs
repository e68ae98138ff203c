//! The deploy files (`ops/deploy/`) against what the code reads:
//! `tessera-server --print-config` is the source of truth for config keys,
//! environment variable names and ports; the binaries are the ones cargo
//! builds. Each file is read (the Dockerfile by instruction, the YAML files
//! by the keys they use, TOML parsed) and every name in it checked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const OPS: &str = env!("CARGO_BIN_EXE_tessera-ops");
/// The binaries the image ships: the workspace's three `[[bin]]`s.
const BINARIES: [&str; 3] = ["tessera-server", "tessera-ops", "loadbot"];
/// `tessera-ops console`'s default port, as the deploy files use it.
const CONSOLE_PORT: u16 = 7390;

fn deploy(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn bin(name: &str) -> PathBuf {
    Path::new(OPS).with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// The `[[bin]]` names the workspace's members declare (read from their
/// manifests, so the check does not depend on what was built).
fn workspace_bins() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let manifest = |dir: &Path| -> toml::Table {
        let path = dir.join("Cargo.toml");
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.parse()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let workspace = manifest(&root);
    let members = workspace["workspace"]["members"]
        .as_array()
        .expect("members");
    members
        .iter()
        .filter_map(|m| m.as_str())
        .flat_map(|m| {
            let member = manifest(&root.join(m));
            member
                .get("bin")
                .and_then(|b| b.as_array())
                .into_iter()
                .flatten()
                .filter_map(|b| b.get("name")?.as_str().map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `tessera-server --print-config` with these variables and arguments (and
/// no other `TESSERA_*`), parsed; `Err` with the server's message when it
/// refuses them (an unknown key or variable, a bad value).
fn print_config(env: &BTreeMap<String, String>, args: &[&str]) -> Result<toml::Table, String> {
    let mut command = Command::new(bin("tessera-server"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TESSERA_") {
            command.env_remove(name);
        }
    }
    let out = command
        .envs(env)
        .args(args)
        .arg("--print-config")
        .output()
        .expect("tessera-server runs (cargo build --workspace --bins)");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    toml::from_str(&String::from_utf8_lossy(&out.stdout)).map_err(|e| e.to_string())
}

fn get<'a>(config: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut node = config.get(path.split('.').next().unwrap()).expect(path);
    for key in path.split('.').skip(1) {
        node = node.get(key).unwrap_or_else(|| panic!("no {path}"));
    }
    node
}

fn port_of(config: &toml::Table, path: &str) -> u16 {
    let addr = get(config, path).as_str().unwrap();
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn ms(config: &toml::Table, path: &str) -> i64 {
    get(config, path).as_integer().unwrap()
}

/// A value for a variable the file takes from elsewhere (`${X}`, a
/// secret): long enough for any token or secret field.
const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn unquote(v: &str) -> String {
    let v = v.trim().trim_matches('"').trim_matches('\'');
    if v.contains("${") {
        SECRET.to_string()
    } else {
        v.to_string()
    }
}

/// Every `TESSERA_*` word in `text`.
fn env_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.starts_with("TESSERA_") && w.len() > "TESSERA_".len())
        .map(str::to_string)
        .collect()
}

/// The integer after `key:` / `key=` on the first line that has it.
fn number_after(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix(key)?;
            rest.trim_start_matches([':', '=', ' '])
                .trim_end_matches('s')
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {key}"))
}

#[test]
fn the_dockerfile_builds_the_three_binaries_and_runs_them_unprivileged() {
    let text = deploy("Dockerfile");
    let instructions: Vec<(String, String)> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#') && !l.starts_with(' '))
        .map(|l| {
            let (op, rest) = l.split_once(' ').unwrap_or((l, ""));
            (op.to_string(), rest.to_string())
        })
        .collect();
    let from = instructions.iter().filter(|(op, _)| op == "FROM").count();
    assert!(from >= 2, "multi-stage: {from} FROM");
    let copied: BTreeSet<String> = instructions
        .iter()
        .filter(|(op, rest)| op == "COPY" && rest.starts_with("--from=build"))
        .map(|(_, rest)| {
            let source = rest.split_whitespace().nth(1).unwrap();
            source.rsplit('/').next().unwrap().to_string()
        })
        .collect();
    assert_eq!(copied, BINARIES.iter().map(|b| b.to_string()).collect());
    let declared = workspace_bins();
    for b in BINARIES {
        assert!(
            declared.contains(b),
            "{b} is a [[bin]] of the workspace: {declared:?}"
        );
        assert!(text.contains(&format!("/usr/local/bin/{b}")));
    }
    let user = instructions
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .expect("USER");
    let uid: u32 = user.1.trim().parse().expect("a numeric USER");
    assert_ne!(uid, 0, "non-root");

    // ENV (one instruction, continued lines) names real keys.
    let env_block: String = text
        .split("\nENV ")
        .nth(1)
        .expect("ENV")
        .lines()
        .take_while(|l| !l.trim().is_empty() && !l.starts_with("EXPOSE"))
        .collect::<Vec<_>>()
        .join(" ");
    let env: BTreeMap<String, String> = env_block
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), unquote(v)))
        .collect();
    assert_eq!(
        env.keys().cloned().collect::<BTreeSet<_>>(),
        env_names(&text)
    );
    let config = print_config(&env, &[]).expect("the image's environment is valid");
    let expose: BTreeSet<u16> = instructions
        .iter()
        .filter(|(op, _)| op == "EXPOSE")
        .flat_map(|(_, rest)| rest.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    let ports: BTreeSet<u16> = [
        port_of(&config, "server.ws_addr"),
        port_of(&config, "server.http_addr"),
    ]
    .into();
    assert_eq!(expose, ports);
    assert!(
        text.contains("127.0.0.1:7380") && ports.contains(&7380),
        "the health check's port"
    );
    assert!(text.contains("ENTRYPOINT [\"tessera-server\"]"));
}

/// `KEY: "value"` lines under a compose `environment:` map.
fn compose_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            k.starts_with("TESSERA_")
                .then(|| (k.to_string(), unquote(v)))
        })
        .collect()
}

#[test]
fn the_compose_file_wires_real_keys_ports_and_services() {
    let text = deploy("docker-compose.yml");
    for service in [
        "redis:",
        "mongodb:",
        "shard1:",
        "shard2:",
        "shard3:",
        "console:",
        "prometheus:",
        "grafana:",
    ] {
        assert!(
            text.contains(&format!("\n  {service}")),
            "service {service}"
        );
    }
    let env = compose_env(&text);
    assert_eq!(
        env.keys().cloned().collect::<BTreeSet<_>>(),
        env_names(&text)
    );
    let config = print_config(&env, &[]).expect("the shards' environment is valid");
    assert_eq!(get(&config, "store.backend").as_str(), Some("mongodb"));
    let (ws, http) = (
        port_of(&config, "server.ws_addr"),
        port_of(&config, "server.http_addr"),
    );
    for n in 1..=3 {
        assert!(
            text.contains(&format!("\"735{n}:{ws}\"")),
            "shard{n}'s game port"
        );
        assert!(
            text.contains(&format!("\"738{n}:{http}\"")),
            "shard{n}'s http port"
        );
        assert!(
            text.contains(&format!("TESSERA_CLUSTER__SHARD_ID: \"shard{n}\""))
                && text.contains(&format!("TESSERA_CLUSTER__ADVERTISE_HOST: \"shard{n}\"")),
            "shard{n} is named and advertised as its service"
        );
    }
    // One cluster: the console finds the shards in the shards' directory.
    let redis = get(&config, "cluster.redis").as_str().unwrap().to_string();
    assert!(redis.starts_with("redis://redis:"), "{redis}");
    assert!(
        text.contains(&format!("\"--redis\", \"{redis}\"")),
        "the console reads the directory at {redis}"
    );
    assert!(text.contains(&format!("0.0.0.0:{CONSOLE_PORT}")));
    let prometheus = deploy("prometheus.yml");
    for n in 1..=3 {
        assert!(prometheus.contains(&format!("shard{n}:{http}")));
    }
    assert!(
        prometheus.contains("job_name: tessera"),
        "the alerts' job label"
    );
    let alerts = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("prometheus/alerts.yml"),
    )
    .unwrap();
    assert!(alerts.contains("up{job=\"tessera\"}"));
    // The console subcommand and its flags exist.
    let help = Command::new(OPS)
        .args(["console", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--listen") && help.contains("--shard"),
        "{help}"
    );
    assert!(
        help.contains(&format!("127.0.0.1:{CONSOLE_PORT}")),
        "{help}"
    );
}

/// The text of the YAML block scalar after `key: |`, dedented.
fn block_after(text: &str, key: &str) -> String {
    let mut lines = text
        .lines()
        .skip_while(|l| !l.trim_start().starts_with(key))
        .skip(1);
    let first = lines.next().expect(key);
    let indent = first.len() - first.trim_start().len();
    std::iter::once(first)
        .chain(
            lines.take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent),
        )
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_kubernetes_shards_are_ready_on_a_real_route_and_outlast_their_drain() {
    let text = deploy("k8s/shards.yaml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tessera.toml");
    std::fs::write(&file, block_after(&text, "tessera.toml: |")).unwrap();
    // Secrets come from `- name: TESSERA_...` entries.
    let env: BTreeMap<String, String> = env_names(&text)
        .into_iter()
        .map(|n| (n, SECRET.into()))
        .collect();
    let config = print_config(&env, &["--config", file.to_str().unwrap()])
        .expect("ConfigMap and env are valid");
    let (ws, http) = (
        port_of(&config, "server.ws_addr"),
        port_of(&config, "server.http_addr"),
    );
    assert!(
        text.contains(&format!("containerPort: {ws}"))
            && text.contains(&format!("containerPort: {http}"))
    );
    assert!(
        text.contains(&format!("httpGet: {{path: /healthz/ready, port: {http}}}")),
        "readiness"
    );
    assert!(
        text.contains(&format!("--http 127.0.0.1:{http}")),
        "the hand drain in the comments reaches the shard"
    );
    // Cluster mode: SIGTERM is a drain, bounded by its own budget; the
    // peer tunnel's port is declared.
    assert!(!get(&config, "cluster.redis").as_str().unwrap().is_empty());
    let peer = port_of(&config, "cluster.peer_addr");
    assert!(text.contains(&format!("containerPort: {peer}, protocol: UDP")));

    let grace_s = number_after(&text, "terminationGracePeriodSeconds");
    let pre_stop_s: u64 = text
        .split("sleep ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("the preStop waits");
    let budget_ms = pre_stop_s as i64 * 1_000
        + ms(&config, "cluster.drain_budget_ms").max(
            ms(&config, "server.shutdown_grace_ms")
                + ms(&config, "store.shutdown_flush_deadline_ms"),
        );
    assert!(
        grace_s as i64 * 1_000 > budget_ms,
        "terminationGracePeriodSeconds {grace_s} s must exceed the drain budget {budget_ms} ms"
    );
    assert!(text.contains("runAsNonRoot: true"));

    let external = deploy("k8s/external.yaml");
    for name in ["name: mongodb", "name: redis"] {
        assert!(external.contains(name) && external.contains("type: ExternalName"));
    }
    assert!(
        get(&config, "store.mongodb.uri")
            .as_str()
            .unwrap()
            .contains("mongodb:"),
        "reaches the external Service"
    );
    let console = deploy("k8s/console.yaml");
    assert!(console.contains(&format!("containerPort: {CONSOLE_PORT}")));
    assert!(console.contains(&format!("tessera-shards:{http}")));

    // The readiness route exists and answers on a running shard.
    let mut command = Command::new(bin("tessera-server"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("TESSERA_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .env("TESSERA_STORE__EMBEDDED__DIR", dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .args(["--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let addr = std::io::BufReader::new(child.stdout.take().unwrap())
        .lines()
        .take(3)
        .find_map(|l| {
            l.ok()?
                .strip_prefix("http listening on ")
                .map(str::to_string)
        });
    let status = addr.map(|addr| {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(5)))
            .build()
            .into();
        agent
            .get(&format!("http://{addr}/healthz/ready"))
            .call()
            .map(|r| r.status().as_u16())
    });
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status.expect("the shard printed its address").unwrap(), 200);
}

#[test]
fn the_systemd_unit_runs_the_shard_with_a_valid_config_and_time_to_stop() {
    let unit = deploy("tessera-server.service");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    assert!(
        exec.starts_with("/usr/local/bin/tessera-server --config "),
        "{exec}"
    );
    let user = unit
        .lines()
        .find_map(|l| l.strip_prefix("User="))
        .expect("User");
    assert_ne!(user, "root");
    let env: BTreeMap<String, String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), unquote(v)))
        .chain(
            // The secrets file's variables, named in the comments.
            env_names(&unit)
                .into_iter()
                .map(|n| (n, SECRET.to_string())),
        )
        .collect();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/tessera.toml");
    let config = print_config(&env, &["--config", example.to_str().unwrap()])
        .expect("the example config and the unit's environment are valid");
    let stop_s = number_after(&unit, "TimeoutStopSec");
    let budget =
        ms(&config, "server.shutdown_grace_ms") + ms(&config, "store.shutdown_flush_deadline_ms");
    assert!(
        stop_s as i64 * 1_000 > budget,
        "TimeoutStopSec {stop_s} s vs {budget} ms"
    );
}

#[test]
fn a_wrong_name_is_caught() {
    // The check itself: an unknown variable or key is refused by the
    // server, so the tests above would fail on a typo.
    let env = BTreeMap::from([(
        "TESSERA_SERVER__WS_ADRR".to_string(),
        "0.0.0.0:1".to_string(),
    )]);
    assert!(print_config(&env, &[]).is_err());
    assert_eq!(
        env_names("x TESSERA_A__B=1 y: TESSERA_C"),
        BTreeSet::from(["TESSERA_A__B".to_string(), "TESSERA_C".to_string()])
    );
}
