//! `tessera-ops shards drain SHARD`: which HTTP address to send the drain
//! to. The shard is named by its id (looked up in the directory, or given
//! with `--shard HOST:PORT`) or by its HTTP address itself.

/// The HTTP address of `target`: `at` when given; else the address the
/// directory lists for the id `target` (`listed`: id, HTTP address,
/// alive), which must be alive; else `target` itself when it looks like an
/// address. An error says what to pass instead.
pub fn drain_target(
    target: &str,
    at: Option<&str>,
    listed: Option<&[(String, String, bool)]>,
) -> Result<String, String> {
    if let Some(at) = at {
        return Ok(at.to_string());
    }
    if let Some(listed) = listed {
        return match listed.iter().find(|(id, _, _)| id == target) {
            Some((_, http, true)) if !http.is_empty() => Ok(http.clone()),
            Some((_, _, true)) => Err(format!(
                "shard {target} has no HTTP address in the directory: pass --shard HOST:PORT"
            )),
            Some((_, _, false)) => Err(format!("shard {target} is dead in the directory")),
            None => Err(format!("no shard {target} in the directory")),
        };
    }
    if target.contains(':') || target.starts_with("http") {
        return Ok(target.to_string());
    }
    Err(format!(
        "{target:?} is not an address: pass --shard HOST:PORT, or --redis to find the shard by id"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed() -> Vec<(String, String, bool)> {
        vec![
            ("eu-1".into(), "10.0.0.1:7380".into(), true),
            ("eu-2".into(), "10.0.0.2:7380".into(), false),
        ]
    }

    #[test]
    fn the_address_comes_from_the_flag_the_directory_or_the_name() {
        assert_eq!(
            drain_target("eu-1", Some("127.0.0.1:9"), None).unwrap(),
            "127.0.0.1:9"
        );
        assert_eq!(
            drain_target("eu-1", None, Some(&listed())).unwrap(),
            "10.0.0.1:7380"
        );
        assert_eq!(
            drain_target("127.0.0.1:7380", None, None).unwrap(),
            "127.0.0.1:7380"
        );
    }

    #[test]
    fn a_dead_unknown_or_unaddressed_shard_is_an_error_that_says_what_to_do() {
        assert!(drain_target("eu-2", None, Some(&listed()))
            .unwrap_err()
            .contains("dead"));
        assert!(drain_target("eu-9", None, Some(&listed()))
            .unwrap_err()
            .contains("no shard eu-9"));
        assert!(drain_target("eu-1", None, None)
            .unwrap_err()
            .contains("--shard"));
    }
}
