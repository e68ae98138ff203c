//! Live progress: an indicatif bar when stdout is a terminal, plain periodic
//! lines otherwise (CI logs, pipes), or nothing.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::{Config, ProgressMode};
use crate::summary::Sample;

pub enum Progress {
    Off,
    Bar(ProgressBar),
    Lines { every: Duration, next_at_s: f64 },
}

impl Progress {
    pub fn new(cfg: &Config) -> Progress {
        let bar = match cfg.progress {
            ProgressMode::Off => return Progress::Off,
            ProgressMode::Lines => false,
            ProgressMode::Bar => true,
            ProgressMode::Auto => std::io::stdout().is_terminal(),
        };
        if !bar {
            return Progress::Lines {
                every: cfg.progress_every.max(Duration::from_secs(1)),
                next_at_s: cfg.progress_every.as_secs_f64(),
            };
        }
        let total = cfg.run_length().as_secs().max(1);
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stdout());
        let style = ProgressStyle::with_template("{elapsed:>4} [{bar:24}] {pos}/{len}s {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        Progress::Bar(bar)
    }

    /// Shows the latest second.
    pub fn update(&mut self, sample: &Sample, bots: u32, errors_total: u64) {
        match self {
            Progress::Off => {}
            Progress::Bar(bar) => {
                bar.set_position(sample.t_s as u64);
                bar.set_message(line(sample, bots, errors_total));
            }
            Progress::Lines { every, next_at_s } => {
                if sample.t_s + 1e-6 >= *next_at_s {
                    *next_at_s += every.as_secs_f64();
                    println!(
                        "[{:>5.0}s] {}",
                        sample.t_s,
                        line(sample, bots, errors_total)
                    );
                }
            }
        }
    }

    pub fn finish(&mut self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// One line about one second: who is in, traffic, RTT, errors, own CPU.
pub fn line(s: &Sample, bots: u32, errors_total: u64) -> String {
    format!(
        "bots {}/{} in room, {} connected | out {}/s in {}/s | rtt p50 {:.2} p99 {:.2} max {:.2} ms | errors {} | cpu {:.0}%",
        s.bots_in_room,
        bots,
        s.bots_connected,
        si(s.counts.msgs_sent),
        si(s.counts.msgs_received),
        s.rtt_p50_ms,
        s.rtt_p99_ms,
        s.rtt_max_ms,
        errors_total,
        s.loadbot_cpu_pct,
    )
}

/// 1234 -> "1.2k", 5_600_000 -> "5.6M".
pub fn si(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Counters;

    #[test]
    fn si_units() {
        assert_eq!(si(999), "999");
        assert_eq!(si(12_345), "12.3k");
        assert_eq!(si(5_600_000), "5.6M");
    }

    #[test]
    fn a_line_mentions_the_essentials() {
        let s = Sample {
            t_s: 3.0,
            bots_in_room: 40,
            bots_connected: 41,
            counts: Counters {
                msgs_sent: 400,
                ..Counters::default()
            },
            rtt_p99_ms: 2.5,
            ..Sample::default()
        };
        let text = line(&s, 50, 2);
        assert!(text.contains("40/50"), "{text}");
        assert!(text.contains("p99 2.50"), "{text}");
        assert!(text.contains("errors 2"), "{text}");
    }
}
