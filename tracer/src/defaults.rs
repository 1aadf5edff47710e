//! The default settings, in one place: the command line shows them, the engine starts from
//! them, and an export's header falls back on them for fields an older tracer did not write.

use std::time::Duration;

/// How long a socket may stay in CLOSE_WAIT before it is reported (`--close-wait-threshold`).
pub const CLOSE_WAIT_THRESHOLD: Duration = Duration::from_secs(5);

/// How often the CLOSE_WAIT digest is printed (`--report-interval`).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(30);

/// Sockets tracked at most; the oldest are evicted beyond (`--max-sockets`).
pub const MAX_SOCKETS: usize = 262_144;

/// Size of the kernel ring buffer in bytes (`--ring-buffer-size`).
pub const RING_BUFFER_BYTES: u32 = tracer_common::DEFAULT_RING_BUFFER_BYTES;

/// Processes with per-process metric series of their own (`--metrics-max-processes`).
pub const METRICS_MAX_PROCESSES: usize = 100;

/// A duration as whole nanoseconds, saturating at `u64::MAX` (about 584 years).
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A duration as the command line writes it: `5s`, `1m 30s`.
pub fn text(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_parse_back() {
        for d in [CLOSE_WAIT_THRESHOLD, REPORT_INTERVAL] {
            assert_eq!(humantime::parse_duration(&text(d)), Ok(d));
        }
        assert_eq!(text(CLOSE_WAIT_THRESHOLD), "5s");
        assert_eq!(nanos(Duration::MAX), u64::MAX);
    }
}
