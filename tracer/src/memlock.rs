//! The locked-memory limit (RLIMIT_MEMLOCK), which kernels before 5.11 charge every eBPF map
//! and program to (5.11 moved that to the memory cgroup). Lifting it needs CAP_SYS_RESOURCE;
//! when that is missing, a map the kernel refuses with EPERM is blamed on the limit, with the fix.

use std::{fs, io, sync::OnceLock};

use aya::util::KernelVersion;

use crate::error::ProbeError;

/// The soft limit left in place, in bytes, when it could not be lifted; `None` when it is
/// unlimited. Set once, by [`raise`].
static LEFT: OnceLock<Option<u64>> = OnceLock::new();

/// Lifts RLIMIT_MEMLOCK to unlimited, or as far as the hard limit allows (no capability
/// needed for that). Remembers what is left for [`denied`].
pub(crate) fn raise() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        let _ = LEFT.set(None);
        return;
    }
    let error = io::Error::last_os_error();
    let mut now = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut now) } != 0 {
        let _ = LEFT.set(None);
        return;
    }
    if now.rlim_cur != now.rlim_max {
        let soft = libc::rlimit {
            rlim_cur: now.rlim_max,
            rlim_max: now.rlim_max,
        };
        // SAFETY: as above. Raising the soft limit up to the hard one needs no capability.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &soft) } == 0 {
            now.rlim_cur = now.rlim_max;
        }
    }
    let left = (now.rlim_cur != libc::RLIM_INFINITY).then_some(now.rlim_cur);
    log::debug!(
        "setrlimit(RLIMIT_MEMLOCK, unlimited) failed: {error}; the limit stays at {}",
        left.map_or("unlimited".to_owned(), human)
    );
    let _ = LEFT.set(left);
}

/// The error for an EPERM from the kernel while loading: the memlock limit when this kernel
/// charges it and it could not be lifted, else missing privileges.
pub(crate) fn denied(
    action: &'static str,
    source: Box<dyn std::error::Error + Send + Sync>,
) -> ProbeError {
    let charged = KernelVersion::current().is_ok_and(|v| v < KernelVersion::new(5, 11, 0));
    match LEFT.get() {
        Some(Some(limit)) if charged => ProbeError::Memlock {
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "?".to_owned(), |r| r.trim().to_owned()),
            limit: human(*limit),
            source,
        },
        _ => ProbeError::Permission { action, source },
    }
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_read_as_ulimit_shows_them() {
        assert_eq!(human(65536), "64 KiB");
        assert_eq!(human(8 << 20), "8 MiB");
        assert_eq!(human(1000), "1000 bytes");
    }
}
