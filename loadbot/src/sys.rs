//! The loadbot's own CPU time and memory, from `/proc/self`, so a reader can
//! judge how much of the machine the load generator took from the server.
//!
//! Linux only; elsewhere the figures read as zero.

/// Clock ticks per second of `/proc/PID/stat` times. Linux fixes `USER_HZ` at
/// 100 on every architecture it exports to user space.
const USER_HZ: f64 = 100.0;

/// User plus system CPU seconds this process has used so far.
pub fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| parse_stat_cpu(&stat))
        .unwrap_or(0.0)
}

/// utime + stime, in seconds, from the text of `/proc/PID/stat`.
pub fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself; the fields after the last ')' are plain numbers.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// Memory of this process in KiB: (resident now, peak resident).
pub fn rss_kib() -> (u64, u64) {
    std::fs::read_to_string("/proc/self/status")
        .map(|status| {
            (
                status_field_kib(&status, "VmRSS:").unwrap_or(0),
                status_field_kib(&status, "VmHWM:").unwrap_or(0),
            )
        })
        .unwrap_or((0, 0))
}

/// A `kB` field of `/proc/PID/status`.
pub fn status_field_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|value| value.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_strange_command_name() {
        let stat = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 75 0 0 20 0 3 0 12345 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some(3.25));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tloadbot\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_field_kib(status, "VmRSS:"), Some(10240));
        assert_eq!(status_field_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(status_field_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn this_process_is_measurable() {
        assert!(cpu_seconds() >= 0.0);
        if cfg!(target_os = "linux") {
            assert!(rss_kib().0 > 0);
        }
    }
}
