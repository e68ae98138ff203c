//! Small inline SVG charts for the HTML report: line charts over time and a
//! bar chart of a histogram. Plain strings, no scripts, no fonts to fetch.

use std::fmt::Write;

const W: f64 = 760.0;
const H: f64 = 260.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

/// One line of a line chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

/// Escapes text for XML and HTML.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A "nice" upper bound for an axis: 1, 2 or 5 times a power of ten, at
/// least `max` (and at least 1e-3 so an all-zero chart still has an axis).
pub fn nice_max(max: f64) -> f64 {
    let max = if max.is_finite() && max > 1e-3 {
        max
    } else {
        1e-3
    };
    let mag = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if step * mag >= max * (1.0 - 1e-9) {
            return step * mag;
        }
    }
    10.0 * mag
}

fn fmt_tick(v: f64) -> String {
    if v == 0.0 {
        "0".to_string()
    } else if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.abs() >= 10.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        trim_zeros(format!("{v:.1}"))
    } else {
        trim_zeros(format!("{v:.3}"))
    }
}

/// "0.500" -> "0.5", "2.0" -> "2".
fn trim_zeros(text: String) -> String {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

fn frame(out: &mut String, title: &str, x_label: &str, y_label: &str) {
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}"><rect width="{W}" height="{H}" fill="#fff"/><text x="{LEFT}" y="18" font-size="14" font-weight="bold">{t}</text><text x="{cx}" y="{xy}" font-size="11" text-anchor="middle">{xl}</text><text x="14" y="{cy}" font-size="11" text-anchor="middle" transform="rotate(-90 14 {cy})">{yl}</text>"##,
        t = esc(title),
        cx = LEFT + (W - LEFT - RIGHT) / 2.0,
        xy = H - 6.0,
        cy = TOP + (H - TOP - BOTTOM) / 2.0,
        xl = esc(x_label),
        yl = esc(y_label),
    );
}

fn y_axis(out: &mut String, y_max: f64) {
    let plot_h = H - TOP - BOTTOM;
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let y = TOP + plot_h - plot_h * f64::from(i) / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{x2}" y2="{y:.1}" stroke="#ddd"/><text x="{tx}" y="{ty:.1}" font-size="10" text-anchor="end">{v}</text>"##,
            x2 = W - RIGHT,
            tx = LEFT - 4.0,
            ty = y + 3.0,
            v = fmt_tick(v),
        );
    }
}

/// A line chart of `series` against x from 0 to the largest x.
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let mut out = String::new();
    frame(&mut out, title, x_label, y_label);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_max = all().map(|p| p.0).fold(0.0, f64::max).max(1.0);
    let y_max = nice_max(all().map(|p| p.1).fold(0.0, f64::max));
    y_axis(&mut out, y_max);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let x_step = nice_max(x_max / 8.0);
    let mut x = 0.0;
    // Bounded: at most ~10 ticks because x_step >= x_max / 8.
    while x <= x_max + 1e-9 {
        let px = LEFT + plot_w * x / x_max;
        let _ = write!(
            out,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{b}" stroke="#eee"/><text x="{px:.1}" y="{ty}" font-size="10" text-anchor="middle">{v}</text>"##,
            b = TOP + plot_h,
            ty = TOP + plot_h + 14.0,
            v = fmt_tick(x),
        );
        x += x_step;
    }
    let _ = write!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##
    );
    for (i, s) in series.iter().enumerate() {
        if s.points.is_empty() {
            continue;
        }
        let points: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| {
                let y = if y.is_finite() { *y } else { 0.0 };
                format!(
                    "{:.1},{:.1}",
                    LEFT + plot_w * x / x_max,
                    TOP + plot_h - plot_h * (y / y_max).clamp(0.0, 1.0)
                )
            })
            .collect();
        let _ = write!(
            out,
            r##"<polyline fill="none" stroke="{c}" stroke-width="1.5" points="{p}"/>"##,
            c = esc(s.color),
            p = points.join(" ")
        );
        let lx = W - RIGHT - 120.0 * (series.len() - i) as f64;
        let _ = write!(
            out,
            r##"<rect x="{lx}" y="8" width="12" height="3" fill="{c}"/><text x="{tx}" y="13" font-size="11">{n}</text>"##,
            c = esc(s.color),
            tx = lx + 16.0,
            n = esc(s.name)
        );
    }
    out.push_str("</svg>");
    out
}

/// A bar chart of `(label value, count)` bars, equally wide, in order.
pub fn bar_chart(title: &str, x_label: &str, y_label: &str, bars: &[(f64, u64)]) -> String {
    let mut out = String::new();
    frame(&mut out, title, x_label, y_label);
    let y_max = nice_max(bars.iter().map(|b| b.1).max().unwrap_or(0) as f64);
    y_axis(&mut out, y_max);
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let n = bars.len().max(1) as f64;
    let bar_w = plot_w / n;
    let label_every = (bars.len() / 10).max(1);
    for (i, (label, count)) in bars.iter().enumerate() {
        let h = plot_h * (*count as f64 / y_max).clamp(0.0, 1.0);
        let x = LEFT + bar_w * i as f64;
        let _ = write!(
            out,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="#4a7bd0"><title>&lt;= {label} ms: {count}</title></rect>"##,
            y = TOP + plot_h - h,
            w = (bar_w - 1.0).max(0.5),
        );
        if i % label_every == 0 {
            let _ = write!(
                out,
                r##"<text x="{tx:.1}" y="{ty}" font-size="10" text-anchor="middle">{v}</text>"##,
                tx = x + bar_w / 2.0,
                ty = TOP + plot_h + 14.0,
                v = fmt_tick(*label),
            );
        }
    }
    let _ = write!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/></svg>"##
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_bounds() {
        assert_eq!(nice_max(0.0), 1e-3);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(10.0), 10.0);
        assert_eq!(nice_max(11.0), 20.0);
        assert_eq!(nice_max(430.0), 500.0);
        assert_eq!(nice_max(f64::NAN), 1e-3);
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(fmt_tick(0.5), "0.5");
        assert_eq!(fmt_tick(0.125), "0.125");
        assert_eq!(fmt_tick(2.0), "2");
        assert_eq!(fmt_tick(12.5), "12");
        assert_eq!(fmt_tick(25_000.0), "25k");
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn charts_are_single_svg_elements() {
        let line = line_chart(
            "RTT <ms>",
            "s",
            "ms",
            &[Series {
                name: "p99",
                color: "#c00",
                points: vec![(1.0, 2.0), (2.0, f64::NAN), (3.0, 4.0)],
            }],
        );
        assert!(line.starts_with("<svg") && line.ends_with("</svg>"));
        assert_eq!(line.matches("<svg").count(), 1);
        assert!(line.contains("RTT &lt;ms&gt;"));
        assert!(line.contains("<polyline"));
        assert!(!line.contains("NaN"));
        let empty = line_chart("none", "s", "ms", &[]);
        assert!(empty.ends_with("</svg>"));
        let bars = bar_chart("hist", "ms", "n", &[(0.1, 3), (0.2, 0), (0.5, 9)]);
        assert_eq!(bars.matches("<rect x=").count(), 4, "3 bars and the frame");
        assert!(bar_chart("hist", "ms", "n", &[]).ends_with("</svg>"));
    }
}
