//! Time units: formatting milliseconds, parsing human durations, kernel-to-wall clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds as milliseconds with three decimals: `1.234`.
pub fn ms(ns: u64) -> String {
    format!("{}.{:03}", ns / 1_000_000, (ns / 1_000) % 1_000)
}

/// Nanoseconds as whole milliseconds, rounded down.
pub fn whole_ms(ns: u64) -> u64 {
    ns / 1_000_000
}

/// Parses `500ms`, `30s`, `5m`, `1h30m`, `1.5s`.
pub fn parse_duration(token: &str) -> Result<Duration, String> {
    let token = token.trim();
    if let Some(secs) = token.strip_suffix('s').filter(|s| s.contains('.')) {
        return secs
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e12)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| "not a number of seconds".to_owned());
    }
    humantime::parse_duration(token).map_err(|e| e.to_string())
}

/// Converts kernel monotonic timestamps (`bpf_ktime_get_ns`, `CLOCK_MONOTONIC`) to wall-clock
/// time, using one offset taken at start. Durations never use it: they are monotonic
/// differences, so a wall-clock jump cannot make them negative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WallClock {
    /// Wall-clock ns since the epoch at monotonic zero.
    pub offset_ns: i128,
}

impl WallClock {
    /// Reads both clocks now.
    pub fn now() -> Self {
        let mono = monotonic_ns();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        Self {
            offset_ns: wall - i128::from(mono),
        }
    }

    /// A clock for tests and replays: monotonic zero is the epoch plus `offset_ns`.
    pub fn fixed(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn wall_ns(&self, ts_ns: u64) -> i128 {
        // Saturating: an offset read from an export's header can be anything.
        self.offset_ns.saturating_add(i128::from(ts_ns))
    }

    /// RFC 3339, UTC, microseconds: `2026-11-25T08:00:00.123456Z`.
    pub fn rfc3339(&self, ts_ns: u64) -> String {
        let wall = self.wall_ns(ts_ns).max(0);
        let time = UNIX_EPOCH + Duration::from_nanos(u64::try_from(wall).unwrap_or(u64::MAX));
        humantime::format_rfc3339_micros(time).to_string()
    }

    /// `HH:MM:SS.mmm` (UTC) for the text output.
    pub fn clock_time(&self, ts_ns: u64) -> String {
        let full = self.rfc3339(ts_ns);
        full.get(11..23).unwrap_or(&full).to_owned()
    }
}

/// The kernel's monotonic clock, the same one `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    u64::try_from(ts.tv_sec()).unwrap_or(0) * 1_000_000_000
        + u64::try_from(ts.tv_nsec()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_ms() {
        assert_eq!(ms(0), "0.000");
        assert_eq!(ms(1_234_567), "1.234");
        assert_eq!(ms(12_000_000_000), "12000.000");
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e400.0s").is_err());
    }

    #[test]
    fn wall_clock() {
        let clock = WallClock::fixed(1_700_000_000_000_000_000);
        assert_eq!(clock.rfc3339(1_500_000), "2023-11-14T22:13:20.001500Z");
        assert_eq!(clock.clock_time(1_500_000), "22:13:20.001");
        let now = WallClock::now();
        assert!(now.offset_ns > 0);
    }
}
