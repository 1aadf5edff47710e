//! What the metrics read from `/proc`: a holder's file descriptors and limit, and the
//! tracer's own CPU time and resident memory.

use procfs::process::{LimitValue, Process};

/// A process's open file descriptors and its soft `RLIMIT_NOFILE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdUsage {
    /// Entries in `/proc/PID/fd`.
    pub open: u64,
    /// The soft limit; `None` when unlimited.
    pub limit: Option<u64>,
}

/// The descriptors of each of `pids` that is still there, read on tokio's blocking pool so
/// that the event loop's thread never waits for `/proc`.
pub async fn fd_usages(pids: Vec<u32>) -> std::collections::HashMap<u32, FdUsage> {
    if pids.is_empty() {
        return std::collections::HashMap::new();
    }
    tokio::task::spawn_blocking(move || {
        pids.into_iter()
            .filter_map(|pid| fd_usage(pid).map(|u| (pid, u)))
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// The descriptors of `pid`, or `None` when it is gone or unreadable (the tracer then exports
/// no fd series for it).
pub fn fd_usage(pid: u32) -> Option<FdUsage> {
    let process = Process::new(i32::try_from(pid).ok()?).ok()?;
    let open = u64::try_from(process.fd_count().ok()?).ok()?;
    let limit = match process.limits().ok()?.max_open_files.soft_limit {
        LimitValue::Value(v) => Some(v),
        LimitValue::Unlimited => None,
    };
    Some(FdUsage { open, limit })
}

/// The tracer's own CPU time (user + system, seconds) and resident set size (bytes), or
/// `None` if `/proc/self/stat` cannot be read.
pub fn own_usage() -> Option<(f64, u64)> {
    let stat = Process::myself().ok()?.stat().ok()?;
    #[expect(
        clippy::cast_precision_loss,
        reason = "clock ticks to seconds: exact below 2^53 ticks"
    )]
    let cpu = (stat.utime + stat.stime) as f64 / procfs::ticks_per_second() as f64;
    Some((cpu, stat.rss * procfs::page_size()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = fd_usage(std::process::id()).expect("our own /proc entry");
        assert!(me.open >= 3, "{me:?}");
        assert!(me.limit.is_none_or(|l| l >= me.open), "{me:?}");
        let (cpu, rss) = own_usage().expect("/proc/self/stat");
        assert!(cpu >= 0.0 && rss > 0);
        assert_eq!(fd_usage(u32::MAX), None);
    }
}
