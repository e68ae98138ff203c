//! The `--html` report: one self-contained page (inline CSS and SVG, no
//! scripts, nothing fetched) with the summary tables and four charts: RTT over
//! time, messages per second over time, bots over time, and the RTT histogram.

use std::fmt::Write;

use super::svg::{bar_chart, esc, line_chart, Series};
use super::table;
use crate::stats::HistSummary;
use crate::summary::Summary;

pub fn render(s: &Summary) -> String {
    let mut out = String::with_capacity(64 * 1024);
    // Writing into a String cannot fail.
    let _ = write_page(&mut out, s);
    out
}

fn write_page(out: &mut String, s: &Summary) -> std::fmt::Result {
    let c = &s.config;
    let title = format!(
        "loadbot: {} x {} bots, {}",
        esc(&c.scenario),
        s.bots,
        esc(&c.url)
    );
    writeln!(
        out,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 820px; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
th {{ background: #f3f3f3; }} td.k {{ text-align: left; }}
.fail {{ color: #b00; font-weight: bold; }} .pass {{ color: #070; font-weight: bold; }}
svg {{ display: block; margin: 0.5em 0 1.5em; border: 1px solid #eee; }}
</style></head><body>
<h1>{title}</h1>"#
    )?;
    writeln!(
        out,
        "<p>{} room(s) over maps [{}], {} s after a {} s ramp, move {} Hz, ping every {} s, \
         {} worker thread(s), auth {}. Ran {:.1} s{}.</p>",
        c.rooms,
        esc(&c.maps.join(", ")),
        c.duration_s,
        c.ramp_s,
        c.move_hz,
        c.ping_interval_s,
        c.threads,
        esc(&c.auth),
        s.elapsed_s,
        if s.interrupted { " (interrupted)" } else { "" }
    )?;
    if s.thresholds.max_p99_ms.is_some() || s.thresholds.max_error_rate.is_some() {
        if s.thresholds.passed {
            writeln!(out, r#"<p class="pass">Thresholds passed.</p>"#)?;
        } else {
            for v in &s.thresholds.violations {
                writeln!(out, r#"<p class="fail">FAILED: {}</p>"#, esc(v))?;
            }
        }
    }

    writeln!(out, "<h2>Totals</h2><table>")?;
    let rows: [(&str, String); 14] = [
        ("bots joined", format!("{} / {}", s.bots_joined, s.bots)),
        (
            "connects ok / failed",
            format!("{} / {}", s.connects_ok, s.connect_failures),
        ),
        (
            "joins ok / failed",
            format!("{} / {}", s.joins_ok, s.join_failures),
        ),
        ("reconnects", s.reconnects.to_string()),
        (
            "messages sent",
            format!("{} ({:.0}/s)", s.msgs_sent, s.msgs_sent_per_s),
        ),
        (
            "messages received",
            format!("{} ({:.0}/s)", s.msgs_received, s.msgs_received_per_s),
        ),
        ("bytes sent", table::bytes(s.bytes_sent)),
        ("bytes received", table::bytes(s.bytes_received)),
        ("error frames", s.error_frames.to_string()),
        ("disconnects", s.disconnects.to_string()),
        ("error rate", format!("{:.6}", s.error_rate)),
        ("decode errors", s.decode_errors.to_string()),
        (
            "loadbot CPU",
            format!(
                "{:.2} s ({:.1}% of one core)",
                s.loadbot_cpu_s, s.loadbot_cpu_pct
            ),
        ),
        (
            "loadbot RSS (peak)",
            format!(
                "{} ({})",
                table::bytes(s.loadbot_rss_kib * 1024),
                table::bytes(s.loadbot_peak_rss_kib * 1024)
            ),
        ),
    ];
    for (k, v) in rows {
        writeln!(
            out,
            r#"<tr><td class="k">{k}</td><td>{}</td></tr>"#,
            esc(&v)
        )?;
    }
    writeln!(out, "</table>")?;

    keyed_table(
        out,
        "Error frames by code",
        s.errors_by_code
            .iter()
            .map(|(code, n)| (table::code_name(*code), *n)),
    )?;
    keyed_table(
        out,
        "Disconnects by close code",
        s.disconnects_by_close_code
            .iter()
            .map(|(k, n)| (k.clone(), *n)),
    )?;
    keyed_table(
        out,
        "Connect failures by reason",
        s.connect_failures_by_reason
            .iter()
            .map(|(k, n)| (k.clone(), *n)),
    )?;
    keyed_table(
        out,
        "Join failures by reason",
        s.join_failures_by_reason
            .iter()
            .map(|(k, n)| (k.clone(), *n)),
    )?;

    writeln!(
        out,
        "<h2>Latency (ms)</h2><table><tr><th></th><th>count</th><th>min</th><th>mean</th>\
         <th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th></tr>"
    )?;
    for (name, h) in [
        ("rtt", &s.rtt_ms),
        ("move to visible", &s.move_visible_ms),
        ("update interval", &s.update_interval_ms),
        ("update jitter", &s.update_jitter_ms),
        ("connect", &s.connect_ms),
        ("join", &s.join_ms),
    ] {
        latency_row(out, name, h)?;
    }
    writeln!(out, "</table>")?;
    if s.shards.len() > 1 {
        shards_table(out, s)?;
    }

    let t = &s.timeline;
    let series = |name, color, f: fn(&crate::summary::Sample) -> f64| Series {
        name,
        color,
        points: t.iter().map(|x| (x.t_s, f(x))).collect(),
    };
    writeln!(out, "<h2>Over time</h2>")?;
    out.push_str(&line_chart(
        "RTT per second (ms)",
        "seconds since start",
        "ms",
        &[
            series("p50", "#2a7", |x| x.rtt_p50_ms),
            series("p99", "#d80", |x| x.rtt_p99_ms),
            series("max", "#c22", |x| x.rtt_max_ms),
        ],
    ));
    out.push_str(&line_chart(
        "Messages per second",
        "seconds since start",
        "messages/s",
        &[
            series("sent", "#36c", |x| x.counts.msgs_sent as f64),
            series("received", "#a3c", |x| x.counts.msgs_received as f64),
        ],
    ));
    out.push_str(&line_chart(
        "Bots",
        "seconds since start",
        "bots",
        &[
            series("connected", "#36c", |x| x.bots_connected as f64),
            series("in a room", "#2a7", |x| x.bots_in_room as f64),
            series("errors/s", "#c22", |x| {
                (x.counts.error_frames + x.counts.connect_failures + x.counts.disconnects) as f64
            }),
        ],
    ));
    writeln!(out, "<h2>RTT histogram</h2>")?;
    let bars: Vec<(f64, u64)> = s.rtt_histogram.iter().map(|b| (b.le_ms, b.count)).collect();
    out.push_str(&bar_chart(
        "RTT distribution (bucket upper bound, ms)",
        "ms",
        "pings",
        &bars,
    ));
    writeln!(
        out,
        "<p>Generated by loadbot {} at Unix time {} ms. Field meanings: loadbot/README.md.</p>\
         </body></html>",
        esc(&s.loadbot_version),
        s.started_unix_ms
    )
}

fn keyed_table(
    out: &mut String,
    title: &str,
    rows: impl Iterator<Item = (String, u64)>,
) -> std::fmt::Result {
    let rows: Vec<_> = rows.collect();
    if rows.is_empty() {
        return Ok(());
    }
    writeln!(out, "<h3>{}</h3><table>", esc(title))?;
    for (k, n) in rows {
        writeln!(
            out,
            r#"<tr><td class="k">{}</td><td>{n}</td></tr>"#,
            esc(&k)
        )?;
    }
    writeln!(out, "</table>")
}

/// The figures per `--url` (several URLs only).
fn shards_table(out: &mut String, s: &Summary) -> std::fmt::Result {
    writeln!(
        out,
        "<h2>Per shard ({})</h2><table><tr><th>shard</th><th>bots</th><th>remote</th>\
         <th>connects</th><th>rtt p50</th><th>rtt p99</th><th>move to visible p99</th>\
         <th>updates</th><th>drops</th><th>errors</th></tr>",
        esc(&s.config.placement)
    )?;
    for sh in &s.shards {
        let ms = |count: u64, v: f64| {
            if count == 0 {
                "-".to_string()
            } else {
                format!("{v:.3}")
            }
        };
        writeln!(
            out,
            r#"<tr><td class="k">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
            esc(&sh.url),
            sh.bots,
            sh.remote_bots,
            sh.connects_ok,
            ms(sh.rtt_ms.count, sh.rtt_ms.p50),
            ms(sh.rtt_ms.count, sh.rtt_ms.p99),
            ms(sh.move_visible_ms.count, sh.move_visible_ms.p99),
            sh.updates_received,
            sh.drops,
            sh.errors()
        )?;
    }
    writeln!(out, "</table>")
}

fn latency_row(out: &mut String, name: &str, h: &HistSummary) -> std::fmt::Result {
    write!(out, r#"<tr><td class="k">{name}</td><td>{}</td>"#, h.count)?;
    for v in [h.min, h.mean, h.p50, h.p90, h.p99, h.p999, h.max] {
        if h.count == 0 {
            write!(out, "<td>-</td>")?;
        } else {
            write!(out, "<td>{v:.3}</td>")?;
        }
    }
    writeln!(out, "</tr>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::summary::tests::sample_summary;

    #[test]
    fn page_is_self_contained_and_balanced() {
        let mut s = sample_summary();
        s.config.url = "ws://<evil>".into();
        let page = render(&s);
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(page.trim_end().ends_with("</html>"));
        assert_eq!(page.matches("<svg").count(), 4);
        assert_eq!(page.matches("<svg").count(), page.matches("</svg>").count());
        assert_eq!(
            page.matches("<table").count(),
            page.matches("</table>").count()
        );
        assert!(!page.contains("<script"));
        assert!(!page.contains("src="), "nothing to fetch");
        assert!(!page.contains("<evil>"), "escaped");
        assert!(page.contains("RTT per second"));
        assert!(
            !page.contains("Per shard"),
            "one URL: the totals say it all"
        );

        let mut two = s.clone();
        let mut other = two.shards[0].clone();
        other.url = "ws://<b>:2".into();
        two.shards.push(other);
        two.config.placement = "round_robin".into();
        let page = render(&two);
        assert!(page.contains("Per shard (round_robin)"));
        assert!(page.contains("ws://&lt;b&gt;:2"), "escaped");
        assert_eq!(
            page.matches("<table").count(),
            page.matches("</table>").count()
        );
    }
}
