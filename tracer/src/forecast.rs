//! Growth of a count over time, and when it reaches a limit: "+37 CLOSE_WAIT/min: fd limit in
//! ~6 min". The one place where rates and forecasts are computed, for the reports' diagnosis,
//! the metrics and `tracer top`. Pure: the caller feeds samples with their monotonic times.

use std::{collections::VecDeque, time::Duration};

/// Nanoseconds in a minute: rates are per minute, as an operator reads them.
const MINUTE_NS: f64 = 60e9;

/// Samples of one count (sockets a process holds in CLOSE_WAIT, its open fds, ...), oldest
/// first, spanning at most a window; older samples are dropped as new ones arrive.
#[derive(Clone, Debug)]
pub struct Series {
    /// `(monotonic ns, value)`, in the order pushed.
    samples: VecDeque<(u64, u64)>,
    window_ns: u64,
}

impl Series {
    /// An empty series keeping `window` of history (a few minutes is what "the rate over the
    /// last minutes" means; the rate needs at least two samples a second apart).
    pub fn new(window: Duration) -> Self {
        Self {
            samples: VecDeque::new(),
            window_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Adds the value seen at `at_ns` (monotonic, not before the previous sample's; an earlier
    /// one is ignored) and forgets samples older than the window.
    pub fn push(&mut self, at_ns: u64, value: u64) {
        if self.samples.back().is_some_and(|&(t, _)| at_ns < t) {
            return;
        }
        self.samples.push_back((at_ns, value));
        let oldest = at_ns.saturating_sub(self.window_ns);
        while self.samples.front().is_some_and(|&(t, _)| t < oldest) {
            self.samples.pop_front();
        }
    }

    /// The newest value, if any.
    pub fn last(&self) -> Option<u64> {
        self.samples.back().map(|&(_, v)| v)
    }

    /// Growth per minute over the window: the least-squares slope of the samples, so one
    /// burst or one late sample does not swing it. `None` with fewer than two samples or less
    /// than a second between the first and the last. Negative when the count shrinks.
    pub fn per_minute(&self) -> Option<f64> {
        let (&(first, _), &(last, _)) = (self.samples.front()?, self.samples.back()?);
        if self.samples.len() < 2 || last - first < 1_000_000_000 {
            return None;
        }
        // Times relative to the first sample, in ns, as f64: exact enough for minutes.
        let n = self.samples.len() as f64;
        let points = || {
            self.samples
                .iter()
                .map(|&(t, v)| ((t - first) as f64, v as f64))
        };
        let (sum_t, sum_v) = points().fold((0.0, 0.0), |(a, b), (t, v)| (a + t, b + v));
        let (mean_t, mean_v) = (sum_t / n, sum_v / n);
        let (mut cov, mut var) = (0.0, 0.0);
        for (t, v) in points() {
            cov += (t - mean_t) * (v - mean_v);
            var += (t - mean_t) * (t - mean_t);
        }
        Some(cov / var * MINUTE_NS)
    }
}

/// How long until `used` reaches `limit` while growing by `per_minute`: zero when it already
/// has, `None` when it does not grow (a forecast only exists while the count grows).
pub fn time_to_limit(used: u64, limit: u64, per_minute: f64) -> Option<Duration> {
    if used >= limit {
        return Some(Duration::ZERO);
    }
    if !per_minute.is_finite() || per_minute <= 0.0 {
        return None;
    }
    let minutes = (limit - used) as f64 / per_minute;
    Duration::try_from_secs_f64(minutes * 60.0).ok()
}

/// A forecast as an operator reads it: `~40 s`, `~6 min`, `~3 h`, `~2 d`, rounded to the
/// nearest unit.
pub fn approx(d: Duration) -> String {
    let s = d.as_secs_f64();
    let (value, unit) = match s {
        s if s < 90.0 => (s, "s"),
        s if s < 90.0 * 60.0 => (s / 60.0, "min"),
        s if s < 36.0 * 3600.0 => (s / 3600.0, "h"),
        s => (s / 86400.0, "d"),
    };
    format!("~{value:.0} {unit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_steady_leak_has_its_rate_and_forecast() {
        // One more socket every 100 ms: 600 a minute.
        let mut series = Series::new(Duration::from_secs(300));
        for i in 0..50 {
            series.push(i * S / 10, 100 + i);
        }
        let rate = series.per_minute().unwrap();
        assert!((rate - 600.0).abs() < 1e-6, "{rate}");
        // 812 of 1024 fds used at 37 a minute: about 5.7 minutes.
        let left = time_to_limit(812, 1024, 37.0).unwrap();
        assert_eq!(left.as_secs(), 343);
        assert_eq!(approx(left), "~6 min");
    }

    #[test]
    fn no_rate_without_two_samples_a_second_apart() {
        let mut series = Series::new(Duration::from_secs(60));
        assert_eq!(series.per_minute(), None);
        series.push(0, 1);
        assert_eq!(series.per_minute(), None);
        series.push(S / 2, 5);
        assert_eq!(series.per_minute(), None);
        series.push(S, 5);
        assert!(series.per_minute().unwrap() > 0.0);
    }

    #[test]
    fn the_window_forgets_old_samples_and_time_never_goes_back() {
        let mut series = Series::new(Duration::from_secs(10));
        series.push(0, 1000);
        series.push(5 * S, 10);
        series.push(4 * S, 99_999); // earlier than the last: ignored
        series.push(20 * S, 10);
        series.push(25 * S, 10);
        // Only the flat part is left in the window.
        assert_eq!(series.per_minute(), Some(0.0));
        assert_eq!(series.last(), Some(10));
    }

    #[test]
    fn forecasts_only_while_growing() {
        assert_eq!(time_to_limit(10, 100, 0.0), None);
        assert_eq!(time_to_limit(10, 100, -3.0), None);
        assert_eq!(time_to_limit(10, 100, f64::NAN), None);
        assert_eq!(time_to_limit(100, 100, 0.0), Some(Duration::ZERO));
        assert_eq!(time_to_limit(10, 100, 90.0), Some(Duration::from_secs(60)));
    }

    #[test]
    fn approximations_read_naturally() {
        assert_eq!(approx(Duration::from_secs(40)), "~40 s");
        assert_eq!(approx(Duration::from_secs(3600)), "~60 min");
        assert_eq!(approx(Duration::from_secs(4 * 3600)), "~4 h");
        assert_eq!(approx(Duration::from_secs(3 * 86400)), "~3 d");
    }
}
