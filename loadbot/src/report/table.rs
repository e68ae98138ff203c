//! The readable summary printed on stdout at the end of a run.

use std::collections::BTreeMap;
use std::fmt::Write;

use protocol::ErrorCode;

use crate::stats::HistSummary;
use crate::summary::Summary;

/// The whole table as text.
pub fn render(s: &Summary) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail; the results are ignored below.
    let _ = write_table(&mut out, s);
    out
}

fn write_table(out: &mut String, s: &Summary) -> std::fmt::Result {
    let c = &s.config;
    writeln!(
        out,
        "Tessera loadbot {}: scenario {}, {} bots in {} room(s) over [{}], {}s + {}s ramp, {}",
        s.loadbot_version,
        c.scenario,
        s.bots,
        c.rooms,
        c.maps.join(", "),
        c.duration_s,
        c.ramp_s,
        if c.urls.len() > 1 {
            format!("{} shards ({})", c.urls.len(), c.placement)
        } else {
            c.url.clone()
        }
    )?;
    if s.interrupted {
        writeln!(out, "(interrupted after {:.1}s)", s.elapsed_s)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "bots         joined {}/{} | connected at end {} | in a room at end {}",
        s.bots_joined, s.bots, s.bots_connected_at_end, s.bots_in_room_at_end
    )?;
    writeln!(
        out,
        "connects     attempts {} | ok {} | failed {}{}",
        s.connect_attempts,
        s.connects_ok,
        s.connect_failures,
        keyed(&s.connect_failures_by_reason)
    )?;
    writeln!(
        out,
        "joins        ok {} | failed {}{}",
        s.joins_ok,
        s.join_failures,
        keyed(&s.join_failures_by_reason)
    )?;
    if s.reconnects + s.map_hops > 0 {
        writeln!(
            out,
            "sessions     reconnects {} | churn drops {} | moved by a drain {} | map hops {} | resumed same player {} | new player {} | seats restored {} | resumes cut short by the end {}",
            s.reconnects,
            s.churn_drops,
            s.moved,
            s.map_hops,
            s.resumed_same_player,
            s.resumed_new_player,
            s.seats_restored,
            s.resumes_unfinished
        )?;
    }
    writeln!(
        out,
        "sent         {} msgs ({:.0}/s), {}{}",
        s.msgs_sent,
        s.msgs_sent_per_s,
        bytes(s.bytes_sent),
        keyed(&s.msgs_sent_by_kind)
    )?;
    writeln!(
        out,
        "received     {} msgs ({:.0}/s), {}{}",
        s.msgs_received,
        s.msgs_received_per_s,
        bytes(s.bytes_received),
        keyed(&s.msgs_received_by_kind)
    )?;
    if let Some(l) = s.ledger.as_ref().filter(|l| !l.verified) {
        writeln!(
            out,
            "durable      gives acked {} | in doubt {} | unanswered {} | refused {} (not checked against the store: no --verify-admin)",
            l.acked,
            l.in_doubt,
            l.unanswered,
            l.refused_by_code.values().sum::<u64>()
        )?;
    }
    if let Some(l) = s.ledger.as_ref().filter(|l| l.verified) {
        writeln!(
            out,
            "durable      gives acked {} | in doubt {} | unanswered {} | refused {}{} | players checked {} | unreadable {} | LOST ACKS {} | duplicated {}",
            l.acked,
            l.in_doubt,
            l.unanswered,
            l.refused_by_code.values().sum::<u64>(),
            keyed(&l.refused_by_code),
            l.players_checked,
            l.players_unreadable,
            l.lost_acks,
            l.duplicated
        )?;
        for m in &l.mismatches {
            writeln!(
                out,
                "             {} holds {} in the store; its gives allow {}..={}",
                m.player, m.stored, m.lowest, m.highest
            )?;
        }
    }
    let errors: BTreeMap<String, u64> = s
        .errors_by_code
        .iter()
        .map(|(code, n)| (code_name(*code), *n))
        .collect();
    if !s.notices_by_code.is_empty() {
        writeln!(out, "notices      {}", keyed(&s.notices_by_code).trim())?;
    }
    writeln!(
        out,
        "errors       error frames {}{} | disconnects {}{}",
        s.error_frames,
        keyed(&errors),
        s.disconnects,
        keyed(&s.disconnects_by_close_code)
    )?;
    writeln!(
        out,
        "             decode errors {} | unexpected frames {} | moves never seen {} | ws pings answered {} | error rate {:.6}",
        s.decode_errors, s.unexpected_frames, s.moves_unconfirmed, s.ws_pings_received, s.error_rate
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "latency (ms)", "count", "min", "mean", "p50", "p90", "p99", "p99.9", "max"
    )?;
    for (name, h) in [
        ("rtt", &s.rtt_ms),
        ("move->visible", &s.move_visible_ms),
        ("update interval", &s.update_interval_ms),
        ("update jitter", &s.update_jitter_ms),
        ("connect", &s.connect_ms),
        ("join", &s.join_ms),
    ] {
        latency_row(out, name, h)?;
    }
    if s.shards.len() > 1 {
        writeln!(out)?;
        write_shards(out, s)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "loadbot      cpu {:.2}s ({:.1}% of one core) | rss {} (peak {})",
        s.loadbot_cpu_s,
        s.loadbot_cpu_pct,
        bytes(s.loadbot_rss_kib * 1024),
        bytes(s.loadbot_peak_rss_kib * 1024)
    )?;
    if s.thresholds.max_p99_ms.is_some() || s.thresholds.max_error_rate.is_some() {
        if s.thresholds.passed {
            writeln!(out, "thresholds   passed")?;
        } else {
            for v in &s.thresholds.violations {
                writeln!(out, "thresholds   FAILED: {v}")?;
            }
        }
    }
    Ok(())
}

/// One line per `--url` (several URLs only: one URL's figures are the
/// totals above).
fn write_shards(out: &mut String, s: &Summary) -> std::fmt::Result {
    if s.config.remote_share > 0.0 {
        writeln!(out, "remote share {}", s.config.remote_share)?;
    }
    writeln!(
        out,
        "{:<28} {:>6} {:>6} {:>8} {:>9} {:>9} {:>10} {:>10} {:>6} {:>7}",
        "shard",
        "bots",
        "remote",
        "connects",
        "rtt p50",
        "rtt p99",
        "mv vis p99",
        "updates",
        "drops",
        "errors"
    )?;
    for sh in &s.shards {
        let ms = |h: &HistSummary, v: f64| {
            if h.count == 0 {
                "-".to_string()
            } else {
                format!("{v:.3}")
            }
        };
        writeln!(
            out,
            "{:<28} {:>6} {:>6} {:>8} {:>9} {:>9} {:>10} {:>10} {:>6} {:>7}",
            sh.url,
            sh.bots,
            sh.remote_bots,
            sh.connects_ok,
            ms(&sh.rtt_ms, sh.rtt_ms.p50),
            ms(&sh.rtt_ms, sh.rtt_ms.p99),
            ms(&sh.move_visible_ms, sh.move_visible_ms.p99),
            sh.updates_received,
            sh.drops,
            sh.errors()
        )?;
    }
    Ok(())
}

fn latency_row(out: &mut String, name: &str, h: &HistSummary) -> std::fmt::Result {
    if h.count == 0 {
        return writeln!(out, "{name:<16} {:>9} {:>9}", 0, "-");
    }
    writeln!(
        out,
        "{name:<16} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        h.count, h.min, h.mean, h.p50, h.p90, h.p99, h.p999, h.max
    )
}

/// `1004 rate_limited`, or the bare number for a code this version lacks.
pub fn code_name(code: u16) -> String {
    match ErrorCode::from_u16(code) {
        Some(known) => format!("{code} {}", known.name()),
        None => code.to_string(),
    }
}

/// ` (a 1, b 2)` for the non-zero entries, or nothing.
fn keyed<K: std::fmt::Display>(map: &BTreeMap<K, u64>) -> String {
    let parts: Vec<String> = map
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

/// 1536 -> "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::sample_summary;

    #[test]
    fn table_shows_the_headline_figures() {
        let text = render(&sample_summary());
        assert!(text.contains("joined 10/100"), "{text}");
        assert!(text.contains("400 msgs"), "{text}");
        assert!(text.contains("move 300"), "{text}");
        assert!(text.contains("1004 rate_limited 1"), "{text}");
        assert!(text.contains("refused 1"), "{text}");
        assert!(text.lines().any(|l| l.starts_with("rtt ")), "{text}");
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(10), "10 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(code_name(4242), "4242");
    }
}
