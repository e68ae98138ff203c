//! Reports of a finished run: the table on stdout ([`table`]), the `--json`
//! summary (the [`Summary`] serialised as is) and the self-contained `--html`
//! page ([`html`], charts drawn by [`svg`]).

pub mod html;
pub mod svg;
pub mod table;

use std::path::Path;

use anyhow::Context;

use crate::summary::Summary;

/// The `--json` document.
pub fn json(summary: &Summary) -> String {
    serde_json::to_string_pretty(summary)
        .expect("a summary of numbers, strings and maps serialises")
}

pub fn write_json(summary: &Summary, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, json(summary) + "\n")
        .with_context(|| format!("writing the JSON report to {}", path.display()))
}

pub fn write_html(summary: &Summary, path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, html::render(summary))
        .with_context(|| format!("writing the HTML report to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::sample_summary;

    #[test]
    fn json_has_the_documented_fields_and_round_trips() {
        let s = sample_summary();
        let text = json(&s);
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        for field in [
            "bots_joined",
            "join_failures",
            "msgs_sent",
            "msgs_received",
            "errors_by_code",
            "loadbot_cpu_s",
            "timeline",
        ] {
            assert!(v.get(field).is_some(), "missing {field}");
        }
        assert!(v["rtt_ms"]["p50"].is_number());
        assert!(v["rtt_ms"]["p99"].is_number());
        assert!(v["rtt_ms"]["max"].is_number());
        assert_eq!(v["errors_by_code"]["1004"], 1);
        let back: Summary = serde_json::from_str(&text).expect("round trip");
        assert_eq!(back, s);
    }

    #[test]
    fn readme_documents_every_json_field() {
        let readme = include_str!("../../README.md");
        let v: serde_json::Value =
            serde_json::from_str(&json(&sample_summary())).expect("valid JSON");
        let mut missing = Vec::new();
        let mut check = |prefix: &str, obj: &serde_json::Map<String, serde_json::Value>| {
            for key in obj.keys() {
                let name = format!("{prefix}{key}");
                if !readme.contains(&format!("`{name}`")) {
                    missing.push(name);
                }
            }
        };
        let top = v.as_object().expect("an object");
        check("", top);
        for nested in ["config", "thresholds", "rtt_ms"] {
            check(
                &format!("{nested}."),
                top[nested].as_object().expect("object"),
            );
        }
        check("timeline[].", v["timeline"][0].as_object().expect("object"));
        check("shards[].", v["shards"][0].as_object().expect("object"));
        check(
            "rtt_histogram[].",
            v["rtt_histogram"][0].as_object().expect("object"),
        );
        assert!(
            missing.is_empty(),
            "fields not in loadbot/README.md: {missing:?}"
        );
    }
}
