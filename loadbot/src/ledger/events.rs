//! `--events FILE`: per-bot events with wall-clock times, for benchmarks
//! that join them with things done outside the loadbot (the failover
//! benchmark's kill times). One line per event, space separated:
//!
//! ```text
//! <unix ms> <bot> <kind> <detail>
//! joined    <url index> <map>      a `joined` (a join, a restored seat, or a room moved: 6003)
//! full      <last update unix ms>  the first update after a `joined`, and when the bot saw
//!                                  an update before it (0 if never): the gap it ended
//! notice    <code>                 a notice (6001 restarted, 6003 moved, 6004 draining)
//! drop      <reason>               the session ended without the bot asking (close code, error)
//! ```
//!
//! Events are rare (per join, notice or drop, never per update), so one
//! buffered file under a lock is enough; it is flushed at the end.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use parking_lot::Mutex;

/// The event log of a run.
pub struct EventLog {
    out: Mutex<BufWriter<File>>,
    /// Unix ms at the run's `t0` (so run-relative µs convert to wall time).
    t0_unix_ms: u64,
}

/// Milliseconds since the Unix epoch now.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl EventLog {
    /// Creates (truncates) `path`; `t0_unix_ms` is the run's start.
    pub fn create(path: &Path, t0_unix_ms: u64) -> anyhow::Result<EventLog> {
        let file = File::create(path)
            .with_context(|| format!("--events: cannot create {}", path.display()))?;
        Ok(EventLog {
            out: Mutex::new(BufWriter::new(file)),
            t0_unix_ms,
        })
    }

    /// Wall time of a run-relative instant in µs.
    pub fn wall_ms(&self, run_us: u64) -> u64 {
        self.t0_unix_ms + run_us / 1000
    }

    /// Writes one event now.
    pub fn write(&self, bot: u32, kind: &str, detail: impl std::fmt::Display) {
        let line = format!("{} {bot} {kind} {detail}\n", unix_ms());
        // A full disk loses events, never the run.
        let _ = self.out.lock().write_all(line.as_bytes());
    }

    pub fn flush(&self) -> anyhow::Result<()> {
        self.out.lock().flush().context("--events: flush")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_lines_with_wall_times() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("events.txt");
        let log = EventLog::create(&path, 1_000).expect("created");
        assert_eq!(log.wall_ms(2_500_000), 3_500);
        let before = unix_ms();
        log.write(7, "notice", 6003);
        log.write(7, "full", 42);
        log.flush().expect("flushed");
        let text = std::fs::read_to_string(&path).expect("readable");
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(&lines[0][1..], ["7", "notice", "6003"]);
        assert_eq!(&lines[1][1..], ["7", "full", "42"]);
        let at: u64 = lines[0][0].parse().expect("a number");
        assert!(at >= before);
    }
}
