//! The configuration as a whole: defaults, files, environment, validation.

use super::supervision::MAX_EXTRA_ARBITERS;
use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_are_valid_and_round_trip_through_toml() {
    let config = Config::default();
    config.validate().unwrap();
    let back: Config = toml::from_str(&config.to_toml()).unwrap();
    assert_eq!(back, config);
    assert_eq!(config.map_defs().len(), 3);
}

#[test]
fn environment_overrides_fields_and_names_bad_ones() {
    let config = Config::load(
        None,
        env(&[
            ("TESSERA_LIMITS__CHAT_MAX_CHARS", "100"),
            ("TESSERA_SERVER__WS_ADDR", "0.0.0.0:9000"),
            ("TESSERA_AUTH__MODE", "production"),
            ("PATH", "/bin"),
        ]),
    )
    .unwrap();
    assert_eq!(config.limits.chat_max_chars, 100);
    assert_eq!(config.server.ws_addr.port(), 9000);
    assert_eq!(config.auth.mode, AuthMode::Production);

    let err = Config::load(None, env(&[("TESSERA_LIMITS__CHAT_MAX", "1")])).unwrap_err();
    assert!(
        err.to_string().contains("TESSERA_LIMITS__CHAT_MAX"),
        "{err}"
    );
    let err = Config::load(None, env(&[("TESSERA_LIMITS__CHAT_MAX_CHARS", "lots")])).unwrap_err();
    assert!(err.to_string().contains("not an integer"), "{err}");
}

#[test]
fn validation_names_each_bad_field() {
    let mut config = Config::default();
    config.limits.move_per_sec = 0;
    config.auth.mode = AuthMode::Production;
    config.rooms.pickup_radius = f32::NAN;
    config.maps.push(MapConfig {
        name: "bad name".into(),
        spawn: [5_000.0, 0.0],
        ..MapConfig::default()
    });
    config.supervision.child_backoff_min_ms = 0;
    config.supervision.child_restart_window_ms = 0;
    config.maps.push(MapConfig {
        name: "ok".into(),
        ..MapConfig::default()
    });
    config.maps.push(MapConfig {
        name: "spawners".into(),
        items: vec![
            SpawnerConfig {
                kind: "gem".into(),
                every_ms: 0,
                ..SpawnerConfig::default()
            },
            SpawnerConfig {
                kind: "gem".into(),
                count: 0,
                max_on_ground: 0,
                ..SpawnerConfig::default()
            },
            SpawnerConfig {
                kind: "a.b".into(),
                ..SpawnerConfig::default()
            },
        ],
        ..MapConfig::default()
    });
    let message = config.validate().unwrap_err().to_string();
    for field in [
        "supervision.child_backoff_min_ms",
        "supervision.child_restart_window_ms",
        "limits.move_per_sec",
        "auth.secret",
        "rooms.pickup_radius",
        "maps[0].name",
        "maps[0].spawn",
        "maps[2].items[0].every_ms",
        "maps[2].items[1].kind",
        "maps[2].items[1].count",
        "maps[2].items[1].max_on_ground",
        "maps[2].items[2].kind",
    ] {
        assert!(message.contains(field), "{field} missing in {message}");
    }
}

#[test]
fn extra_room_arbiters_are_bounded() {
    let mut config = Config::default();
    assert_eq!(config.supervision.max_extra_arbiters, 2);
    config.supervision.max_extra_arbiters = 0;
    config.validate().unwrap();
    config.supervision.max_extra_arbiters = MAX_EXTRA_ARBITERS + 1;
    let message = config.validate().unwrap_err().to_string();
    assert!(
        message.contains("supervision.max_extra_arbiters must be at most 64"),
        "{message}"
    );
}

#[test]
fn task_backoff_bounds_are_checked() {
    let mut config = Config::default();
    config.supervision.child_backoff_min_ms = 5_000;
    config.supervision.child_backoff_max_ms = 1_000;
    let message = config.validate().unwrap_err().to_string();
    assert!(
        message.contains("supervision.child_backoff_max_ms must be at least"),
        "{message}"
    );
    config.supervision.child_backoff_max_ms = u64::MAX;
    let message = config.validate().unwrap_err().to_string();
    assert!(
        message.contains("supervision.child_backoff_max_ms must be at most"),
        "{message}"
    );
    let env = env(&[("TESSERA_SUPERVISION__CHILD_MAX_RESTARTS", "0")]);
    let config = Config::load(None, env).unwrap();
    assert_eq!(config.supervision.child_max_restarts, 0);
    config.validate().unwrap();
}

#[test]
fn spawners_read_from_toml() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.toml");
    std::fs::write(
        &path,
        "[rooms]\npickup_radius = 20.0\n\n[[maps]]\nname = \"lobby\"\nitems = [{ kind = \"gem\", count = 2, max_on_ground = 3, every_ms = 100 }]\n",
    )
    .unwrap();
    let config = Config::load(Some(&path), Vec::new()).unwrap();
    config.validate().unwrap();
    let def = &config.map_defs()[0];
    assert_eq!(def.pickup_radius, 20.0);
    assert_eq!(
        def.items,
        vec![SpawnerConfig {
            kind: "gem".into(),
            count: 2,
            max_on_ground: 3,
            every_ms: 100,
        }]
    );
    // Every built-in map has a spawner.
    assert!(Config::default()
        .map_defs()
        .iter()
        .all(|m| !m.items.is_empty()));
}

#[test]
fn exempt_networks_parse_match_and_name_bad_entries() {
    let net = IpNet::parse("10.0.0.0/8").unwrap();
    assert!(net.contains("10.200.1.2".parse().unwrap()));
    assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
    assert!(!net.contains("11.0.0.1".parse().unwrap()));
    assert!(!net.contains("fd00::1".parse().unwrap()));
    let one = IpNet::parse("192.0.2.7").unwrap();
    assert!(one.contains("192.0.2.7".parse().unwrap()));
    assert!(!one.contains("192.0.2.8".parse().unwrap()));
    let v6 = IpNet::parse("fd00::/8").unwrap();
    assert!(v6.contains("fd12:3456::1".parse().unwrap()));
    assert!(IpNet::parse("0.0.0.0/0")
        .unwrap()
        .contains("8.8.8.8".parse().unwrap()));
    let mut config = Config::default();
    config.server.per_ip_exempt = vec!["10.0.0.0/33".into(), "nope".into()];
    let message = config.validate().unwrap_err().to_string();
    assert!(message.contains("server.per_ip_exempt[0]"), "{message}");
    assert!(message.contains("server.per_ip_exempt[1]"), "{message}");
}

#[test]
fn unknown_fields_in_a_file_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tessera.toml");
    std::fs::write(&path, "[server]\nws_adr = \"127.0.0.1:1\"\n").unwrap();
    let err = Config::load(Some(&path), Vec::new()).unwrap_err();
    assert!(err.to_string().contains("ws_adr"), "{err}");
}

#[test]
fn welcome_limits_carry_the_configured_values() {
    let mut config = Config::default();
    config.limits.chat_max_chars = 77;
    config.limits.move_burst = 9;
    config.server.max_frame_bytes = 2_048;
    config.server.idle_timeout_ms = u64::MAX;
    let limits = config.welcome_limits();
    assert_eq!(limits.chat_max_chars, 77);
    assert_eq!(limits.move_burst, 9);
    assert_eq!(limits.move_per_sec, config.limits.move_per_sec);
    assert_eq!(limits.max_frame_bytes, 2_048);
    // Wider than the wire's u32: capped, not wrapped.
    assert_eq!(limits.idle_timeout_ms, u32::MAX);
}

#[test]
fn close_linger_and_refusal_bounds_are_validated_by_name() {
    let mut config = Config::default();
    config.server.close_linger_ms = 0;
    config.server.max_refusing = 0;
    config.rooms.input_queue = 0;
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("server.close_linger_ms must be greater than 0"),
        "{err}"
    );
    assert!(
        err.contains("server.max_refusing must be greater than 0"),
        "{err}"
    );
    assert!(
        err.contains("rooms.input_queue must be greater than 0"),
        "{err}"
    );
    assert!(Config::default().validate().is_ok());
}

#[test]
fn admin_tokens_carry_roles_and_bad_ones_are_named_by_field() {
    use protocol::admin::Role;
    let token = |token: &str, role, name: &str| AdminToken {
        token: token.into(),
        role,
        name: name.into(),
    };
    let mut config = Config::default();
    config.admin.token = "the-legacy-admin-token".into();
    config.admin.tokens = vec![
        token("a-viewer-token-0123456", Role::Viewer, "vera"),
        token("an-operator-token-0123", Role::Operator, "otto"),
    ];
    config.validate().unwrap();
    assert!(config.admin.enabled());
    let admin = &config.admin;
    assert_eq!(
        admin.role_of("a-viewer-token-0123456"),
        Some(("vera", Role::Viewer))
    );
    assert_eq!(
        admin.role_of("an-operator-token-0123"),
        Some(("otto", Role::Operator))
    );
    assert_eq!(
        admin.role_of("the-legacy-admin-token"),
        Some((ADMIN_TOKEN_NAME, Role::Operator))
    );
    assert_eq!(
        admin.role_of("a-viewer-token-012345"),
        None,
        "a prefix is no match"
    );
    assert_eq!(admin.role_of(""), None);

    // The list alone turns the admin API on; the token is not needed.
    let only_list = AdminConfig {
        tokens: vec![token("an-operator-token-0123", Role::Operator, "otto")],
        fault_injection: true,
        ..AdminConfig::default()
    };
    assert!(only_list.enabled());

    config.admin.tokens = vec![
        token("short", Role::Viewer, " "),
        token("the-legacy-admin-token", Role::Viewer, "dup"),
    ];
    config.admin.events_capacity = 0;
    config.admin.search_limit = 0;
    config.admin.ban_reason_max_chars = 0;
    let err = config.validate().unwrap_err().to_string();
    for needle in [
        "admin.tokens[0].token must be at least 16 bytes",
        "admin.tokens[0].name must not be empty",
        "admin.tokens[1].token is used twice",
        "admin.events_capacity",
        "admin.search_limit",
        "admin.ban_reason_max_chars",
    ] {
        assert!(err.contains(needle), "{needle:?} in {err}");
    }

    // A file with an unknown role is refused, naming it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.toml");
    std::fs::write(
        &file,
        "[[admin.tokens]]\ntoken = \"a-viewer-token-0123456\"\nrole = \"root\"\nname = \"x\"\n",
    )
    .unwrap();
    let err = Config::load(Some(&file), Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("root") && err.contains("viewer"), "{err}");
}

#[test]
fn redacted_hides_every_secret_and_url_password_and_nothing_else() {
    let mut config = Config::default();
    config.auth.secret = "s".repeat(32);
    config.cluster.secret = "c".repeat(32);
    config.cluster.redis = "redis://ops:hunter2@10.0.0.5:6379/0".into();
    config.store.mongodb.uri = "mongodb://app:p%40ss@db1,db2/?replicaSet=rs".into();
    config.admin.token = "a".repeat(16);
    config.admin.tokens.push(AdminToken {
        token: "v".repeat(16),
        role: protocol::admin::Role::Viewer,
        name: "vera".into(),
    });
    let shown = config.redacted();
    let text = shown.to_toml();
    for secret in ["sss", "ccc", "hunter2", "p%40ss", "aaa", "vvv"] {
        assert!(!text.contains(secret), "{secret} printed: {text}");
    }
    assert_eq!(
        shown.cluster.redis,
        "redis://ops:<redacted>@10.0.0.5:6379/0"
    );
    assert_eq!(
        shown.store.mongodb.uri,
        "mongodb://app:<redacted>@db1,db2/?replicaSet=rs"
    );
    assert_eq!(shown.admin.tokens[0].name, "vera");
    // Unset secrets stay unset, URLs without a password unchanged.
    let plain = Config::default().redacted();
    assert_eq!(plain, Config::default());
    let mut no_password = Config::default();
    no_password.cluster.redis = "redis://127.0.0.1:6379/0".into();
    assert_eq!(
        no_password.redacted().cluster.redis,
        "redis://127.0.0.1:6379/0"
    );
}

#[test]
fn tunnel_limits_are_checked_with_the_field_named() {
    let mut config = Config::default();
    // In cluster mode, a bad limit is refused with its field named.
    config.cluster.redis = "redis://127.0.0.1:6379/0".into();
    config.cluster.secret = "s".repeat(32);
    config.cluster.tunnel.keep_alive_ms = 20_000;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("cluster.tunnel.keep_alive_ms"), "{err}");
    config.cluster.tunnel.keep_alive_ms = 2_000;
    config.cluster.tunnel.max_frame = 10;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("cluster.tunnel.max_frame"), "{err}");
    config.cluster.tunnel.max_frame = 1 << 20;
    config.cluster.tunnel.max_udp_payload = 1199;
    let err = config.validate().unwrap_err().to_string();
    assert!(
        err.contains("cluster.tunnel.max_udp_payload must be 1200 to 65527"),
        "{err}"
    );
    // From the environment too, as a studio would set it.
    let loaded = Config::load(
        None,
        env(&[("TESSERA_CLUSTER__TUNNEL__MAX_UDP_PAYLOAD", "8952")]),
    )
    .unwrap();
    assert_eq!(loaded.cluster.tunnel.max_udp_payload, 8952);
}

#[test]
fn the_embedded_page_cache_is_bounded_and_named_when_wrong() {
    let mut config = Config::default();
    assert_eq!(config.store.embedded.cache_mb, 64);
    assert_eq!(config.store.embedded.cache_bytes(), 64 << 20);
    for bad in [0, super::store::MAX_EMBEDDED_CACHE_MB + 1] {
        config.store.embedded.cache_mb = bad;
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.contains("store.embedded.cache_mb must be between 1 and 65536"),
            "{message}"
        );
    }
    let config = Config::load(None, env(&[("TESSERA_STORE__EMBEDDED__CACHE_MB", "8")])).unwrap();
    assert_eq!(config.store.embedded.cache_mb, 8);
}

#[test]
fn the_store_threads_are_bounded_and_named_when_wrong() {
    let mut config = Config::default();
    assert_eq!(config.store.io_threads, 4);
    for bad in [0, super::store::MAX_STORE_IO_THREADS + 1] {
        config.store.io_threads = bad;
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.contains("store.io_threads must be between 1 and 512"),
            "{message}"
        );
    }
    let config = Config::load(None, env(&[("TESSERA_STORE__IO_THREADS", "2")])).unwrap();
    assert_eq!(config.store.io_threads, 2);
}
