//! Time units: formatting milliseconds, parsing human durations, kernel-to-wall clock.

use std::{
    cell::Cell,
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

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
    humantime::parse_duration(token.trim()).map_err(|e| e.to_string())
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

    /// Wall-clock ns since the epoch of kernel time `ts_ns`.
    pub fn wall_ns(&self, ts_ns: u64) -> i128 {
        // Saturating: an offset read from an export's header can be anything.
        self.offset_ns.saturating_add(i128::from(ts_ns))
    }

    /// The wall-clock time of kernel time `ts_ns` (the epoch for times before it).
    pub fn wall(&self, ts_ns: u64) -> WallTime {
        WallTime::from_unix_ns(u64::try_from(self.wall_ns(ts_ns).max(0)).unwrap_or(u64::MAX))
    }

    /// [`Self::wall`] as RFC 3339 text, e.g. `2026-11-25T08:00:00.123456Z`.
    pub fn rfc3339(&self, ts_ns: u64) -> String {
        self.wall(ts_ns).to_string()
    }
}

/// A wall-clock time, UTC, to the microsecond (what its text holds, so that it reads back
/// equal). Records carry it in their `time` field; it is written (Display, serde) as RFC 3339
/// with microseconds,
/// `2026-11-25T08:00:00.123456Z`, exactly as humantime writes it, and read back from any RFC
/// 3339 time humantime parses. Formatting allocates nothing: it is done for every event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WallTime {
    unix_ns: u64,
}

impl WallTime {
    /// The time `unix_ns` nanoseconds after the epoch, truncated to the microsecond.
    pub const fn from_unix_ns(unix_ns: u64) -> Self {
        Self {
            unix_ns: unix_ns - unix_ns % 1_000,
        }
    }

    /// Nanoseconds since the epoch (a whole number of microseconds).
    pub const fn unix_ns(self) -> u64 {
        self.unix_ns
    }

    /// The RFC 3339 text, on the stack.
    pub fn text(self) -> Rfc3339 {
        Rfc3339 {
            bytes: rfc3339_micros(self.unix_ns),
        }
    }

    /// Parses RFC 3339 (`2026-11-25T08:00:00.123456Z`; humantime's reading of it).
    pub fn parse(text: &str) -> Option<Self> {
        let wall = humantime::parse_rfc3339(text).ok()?;
        let ns = wall.duration_since(UNIX_EPOCH).ok()?.as_nanos();
        u64::try_from(ns).ok().map(Self::from_unix_ns)
    }
}

/// A [`WallTime`] written out: RFC 3339 text held on the stack.
#[derive(Clone, Copy)]
pub struct Rfc3339 {
    bytes: [u8; 27],
}

impl Rfc3339 {
    /// The text's bytes (always ASCII).
    pub fn as_bytes(&self) -> &[u8; 27] {
        &self.bytes
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever stored.
        std::str::from_utf8(&self.bytes).unwrap_or_default()
    }
}

impl fmt::Display for WallTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl PartialEq<&str> for WallTime {
    fn eq(&self, other: &&str) -> bool {
        self.text().as_str() == *other
    }
}

impl Serialize for WallTime {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.text().as_str())
    }
}

impl<'de> Deserialize<'de> for WallTime {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| {
            de::Error::invalid_value(de::Unexpected::Str(&text), &"an RFC 3339 time")
        })
    }
}

/// `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` for nanoseconds since the epoch (a `u64` of them ends in
/// 2554, so the year always has four digits). Events come many to a second: the date and time of day are kept per thread for the last
/// second seen, and only the microseconds are written for each event.
fn rfc3339_micros(wall_ns: u64) -> [u8; 27] {
    thread_local! {
        static LAST: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let secs = wall_ns / 1_000_000_000;
    let micros = (wall_ns % 1_000_000_000) / 1_000;
    let prefix = match LAST.get() {
        (cached, prefix) if cached == secs => prefix,
        _ => {
            let prefix = date_time(secs);
            LAST.set((secs, prefix));
            prefix
        }
    };
    let mut out = [0u8; 27];
    out[..20].copy_from_slice(&prefix);
    digits(&mut out[20..26], micros);
    out[26] = b'Z';
    out
}

/// `YYYY-MM-DDTHH:MM:SS.` for seconds since the epoch, up to year 9999 (the callers' seconds
/// come from a `u64` of nanoseconds: 2554 at most).
fn date_time(secs: u64) -> [u8; 20] {
    let days = secs / 86_400;
    let in_day = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    let mut out = *b"0000-00-00T00:00:00.";
    digits(&mut out[0..4], year);
    digits(&mut out[5..7], month);
    digits(&mut out[8..10], day);
    digits(&mut out[11..13], in_day / 3_600);
    digits(&mut out[14..16], in_day / 60 % 60);
    digits(&mut out[17..19], in_day % 60);
    out
}

/// Writes `value` as decimal digits filling `out`, zero-padded.
fn digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The kernel's monotonic clock, the same one `bpf_ktime_get_ns` reads, in ns.
///
/// # Panics
///
/// If `CLOCK_MONOTONIC` cannot be read, which Linux always allows.
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
    fn rfc3339_matches_humantime() {
        let humantime = |ns: u64| {
            humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
        };
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut cases = vec![
            0,
            999,
            1_000,
            951_782_400_000_000_000,   // 2000-02-29
            4_107_542_399_999_999_999, // 2100-02-28T23:59:59.999999
            1_700_000_000_123_456_789,
            u64::MAX, // year 2554
        ];
        for _ in 0..20_000 {
            // xorshift: spread over the whole u64 range (up to year 2554).
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            cases.push(x);
        }
        for ns in cases {
            let clock = WallClock::fixed(0);
            assert_eq!(clock.rfc3339(ns), humantime(ns), "{ns}");
            // The same second again, through the cached date.
            let later = ns.saturating_add(1_001) - ns % 1_000_000_000 % 1_000;
            if later / 1_000_000_000 == ns / 1_000_000_000 {
                assert_eq!(clock.rfc3339(later), humantime(later), "{later}");
            }
        }
    }

    #[test]
    fn wall_clock() {
        let clock = WallClock::fixed(1_700_000_000_000_000_000);
        assert_eq!(clock.rfc3339(1_500_000), "2023-11-14T22:13:20.001500Z");
        let now = WallClock::now();
        assert!(now.offset_ns > 0);
    }
}
