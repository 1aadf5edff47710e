//! What the bench reads from the kernel about the processes it starts: CPU time and memory
//! from /proc, BPF program counters from fdinfo; and the process control it needs (signals
//! by PID, reaping with resource usage, the BPF run-time statistics switch).

use std::{
    collections::BTreeMap,
    fs, io,
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

/// Clock ticks per second for /proc/<pid>/stat times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// utime + stime of a process (all its threads), in seconds, from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks())
}

/// utime + stime in ticks out of a /proc/<pid>/stat line. The command name (field 2) may
/// hold spaces and parentheses, so fields are counted after its last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14 and stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU seconds used so far by every process on the machine except `exclude` (and this one),
/// counting only processes alive at both readings that are compared. Kernel threads are
/// included: a kworker doing someone else's writeback is background load too.
pub fn others_cpu_ticks(exclude: &[u32]) -> BTreeMap<u32, u64> {
    other_processes(exclude)
        .filter_map(|(pid, dir)| {
            let stat = fs::read_to_string(dir.join("stat")).ok()?;
            Some((pid, parse_stat_cpu_ticks(&stat)?))
        })
        .collect()
}

/// Every process's pid and /proc directory, except this one and `exclude`.
fn other_processes(exclude: &[u32]) -> impl Iterator<Item = (u32, std::path::PathBuf)> + '_ {
    let me = std::process::id();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            (pid != me && !exclude.contains(&pid)).then(|| (pid, entry.path()))
        })
}

/// CPU time the whole machine spent busy (user, nice, system, irq, softirq of every CPU:
/// without IRQ time accounting, the kernel charges the same ticks to the tasks it
/// interrupted), in ticks, from /proc/stat. Compared with the CPU of our own processes, it
/// shows load from processes too short-lived for [`others_cpu_ticks`] to see.
pub fn machine_busy_ticks() -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(&stat)
}

pub fn parse_machine_busy(stat: &str) -> Option<u64> {
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq ...
    let at = |i: usize| fields.get(i).copied().unwrap_or(0);
    Some(at(0) + at(1) + at(2) + at(5) + at(6))
}

/// Seconds of CPU the other processes used between two readings of [`others_cpu_ticks`].
pub fn others_cpu_between(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> f64 {
    let ticks: u64 = after
        .iter()
        .map(|(pid, &t)| t.saturating_sub(before.get(pid).copied().unwrap_or(t)))
        .sum();
    ticks as f64 / clock_ticks()
}

/// Processes other than `exclude` that hold BPF program fds: (pid, command line). Programs
/// left attached to the tracepoint by another tracer run on every event of every mode.
pub fn bpf_program_holders(exclude: &[u32]) -> Vec<(u32, String)> {
    other_processes(exclude)
        .filter(|(_, dir)| {
            fs::read_dir(dir.join("fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    fs::read_link(fd.path())
                        .is_ok_and(|target| target.to_string_lossy() == "anon_inode:bpf-prog")
                })
            })
        })
        .map(|(pid, dir)| {
            let cmdline = fs::read(dir.join("cmdline"))
                .map(|b| {
                    String::from_utf8_lossy(&b)
                        .replace('\0', " ")
                        .trim()
                        .to_owned()
                })
                .unwrap_or_default();
            (pid, cmdline)
        })
        .collect()
}

/// Memory of a process from /proc/<pid>/status, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    /// Peak resident set size (VmHWM).
    pub hwm_kib: u64,
    /// Of the RSS, anonymous memory (RssAnon: the heap, stacks); the rest is mapped files
    /// and, for the tracer, the ring buffer's pages.
    pub anon_kib: Option<u64>,
}

pub fn memory(pid: u32) -> Option<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_memory(&status)
}

pub fn parse_status_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(':')?;
            value.split_whitespace().next()?.parse::<u64>().ok()
        })
    };
    Some(Memory {
        rss_kib: field("VmRSS")?,
        hwm_kib: field("VmHWM")?,
        anon_kib: field("RssAnon"),
    })
}

/// Counters of one BPF program, as a process holding its fd sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub prog_id: u64,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    pub recursion_misses: u64,
}

/// The BPF programs a process holds, from /proc/<pid>/fdinfo (the same fd may appear more
/// than once; programs are deduplicated by id).
pub fn programs(pid: u32) -> Vec<ProgStats> {
    let mut found: Vec<ProgStats> = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return found;
    };
    for entry in dir.flatten() {
        let Ok(info) = fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Some(stats) = parse_prog_fdinfo(&info) {
            if !found.iter().any(|p| p.prog_id == stats.prog_id) {
                found.push(stats);
            }
        }
    }
    found
}

/// The program counters of a BPF program fd's fdinfo; `None` for other fds (links hold a
/// `prog_id` too, but no `run_cnt`).
pub fn parse_prog_fdinfo(info: &str) -> Option<ProgStats> {
    let field = |name: &str| {
        info.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().parse::<u64>().ok())?
        })
    };
    field("prog_type")?;
    Some(ProgStats {
        prog_id: field("prog_id")?,
        run_cnt: field("run_cnt")?,
        run_time_ns: field("run_time_ns").unwrap_or(0),
        recursion_misses: field("recursion_misses").unwrap_or(0),
    })
}

/// Names of the threads of a process.
pub fn thread_names(pid: u32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

/// Sends a signal to one process we started.
pub fn signal(pid: u32, signal: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill has no memory preconditions; the pid is one of our own children.
    unsafe { libc::kill(pid, signal) };
}

/// How a reaped child ended and what it used.
#[derive(Clone, Copy, Debug, Default)]
pub struct Exit {
    pub status: i32,
    /// utime + stime of the whole process, seconds.
    pub cpu_s: f64,
    /// Peak RSS, KiB (`ru_maxrss`).
    pub maxrss_kib: u64,
}

impl Exit {
    pub fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    pub fn describe(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit code {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("killed by signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("status {:#x}", self.status)
        }
    }
}

/// Reaps a child if it has exited (`wait4` with `WNOHANG`).
pub fn try_reap(pid: u32) -> Result<Option<Exit>> {
    let mut status = 0;
    // SAFETY: rusage is plain data; zeroed is valid and wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals; the pid is our own child.
    let ret = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut usage) };
    match ret {
        0 => Ok(None),
        r if r < 0 => Err(io::Error::last_os_error()).context("wait4"),
        _ => {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            Ok(Some(Exit {
                status,
                cpu_s: secs(usage.ru_utime) + secs(usage.ru_stime),
                maxrss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
            }))
        }
    }
}

/// Waits for a child to exit, up to `timeout`.
pub fn reap_within(pid: u32, timeout: Duration) -> Result<Option<Exit>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(exit) = try_reap(pid)? {
            return Ok(Some(exit));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops a child: `first` (SIGINT for a tracer, which then prints its summary), then SIGKILL
/// if it has not exited within `grace`. Always reaps it.
pub fn stop(pid: u32, first: i32, grace: Duration) -> Result<(Exit, bool)> {
    signal(pid, first);
    if let Some(exit) = reap_within(pid, grace)? {
        return Ok((exit, false));
    }
    signal(pid, libc::SIGKILL);
    let exit = reap_within(pid, Duration::from_secs(10))?
        .with_context(|| format!("process {pid} survived SIGKILL"))?;
    Ok((exit, true))
}

/// Holds the kernel's BPF run-time statistics on (`run_time_ns`, `run_cnt` in fdinfo) for as
/// long as it lives, like `sysctl kernel.bpf_stats_enabled=1`. It uses `BPF_ENABLE_STATS`,
/// whose effect ends when its fd closes, so the setting is restored even if the bench is
/// killed; the sysctl is the fallback, restored on drop.
pub enum BpfStats {
    /// Held open: closing it ends the statistics.
    Fd {
        _fd: OwnedFd,
    },
    Sysctl {
        previous: String,
    },
}

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    pub fn enable() -> Result<Self> {
        const BPF_ENABLE_STATS: libc::c_long = 32;
        const BPF_STATS_RUN_TIME: u32 = 0;
        let attr: [u32; 2] = [BPF_STATS_RUN_TIME, 0];
        // SAFETY: bpf(BPF_ENABLE_STATS) reads `size` bytes of a valid, zero-padded attribute.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                std::mem::size_of_val(&attr) as u32,
            )
        };
        if fd >= 0 {
            // SAFETY: the kernel just returned this fd to us.
            return Ok(Self::Fd {
                _fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
            });
        }
        let err = io::Error::last_os_error();
        eprintln!("bench: BPF_ENABLE_STATS failed ({err}); using the sysctl");
        let previous = fs::read_to_string(BPF_STATS_SYSCTL)
            .with_context(|| format!("reading {BPF_STATS_SYSCTL}"))?;
        fs::write(BPF_STATS_SYSCTL, "1\n")
            .with_context(|| format!("enabling {BPF_STATS_SYSCTL}"))?;
        Ok(Self::Sysctl { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Self::Sysctl { previous } = self {
            if let Err(e) = fs::write(BPF_STATS_SYSCTL, previous.as_bytes()) {
                eprintln!("bench: could not restore {BPF_STATS_SYSCTL}: {e}");
            }
        }
    }
}

/// Lines of a file, or empty when it does not exist yet.
pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_skips_odd_names() {
        let stat = "4242 (a) b (c)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 3 0 \
                    12345 1000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(287));
    }

    #[test]
    fn status_memory() {
        let status =
            "Name:\ttracer\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nRssAnon:\t 2048 kB\n\
                      Threads:\t3\n";
        assert_eq!(
            parse_status_memory(status),
            Some(Memory {
                rss_kib: 10240,
                hwm_kib: 20480,
                anon_kib: Some(2048),
            })
        );
        assert_eq!(
            parse_machine_busy("cpu  100 1 50 1000 7 2 30 9 0 0\ncpu0 1 2 3\n"),
            Some(183)
        );
    }

    #[test]
    fn prog_fdinfo_only_for_programs() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t5\n\
                    prog_jited:\t1\nprog_tag:\tabc\nmemlock:\t4096\nprog_id:\t77\n\
                    run_time_ns:\t12000\nrun_cnt:\t100\nrecursion_misses:\t2\nverified_insns:\t90\n";
        assert_eq!(
            parse_prog_fdinfo(prog),
            Some(ProgStats {
                prog_id: 77,
                run_cnt: 100,
                run_time_ns: 12000,
                recursion_misses: 2
            })
        );
        let link = "pos:\t0\nflags:\t02000000\nlink_type:\tperf\nlink_id:\t5\nprog_tag:\tabc\nprog_id:\t77\n";
        assert_eq!(parse_prog_fdinfo(link), None);
        assert_eq!(parse_prog_fdinfo("pos:\t0\nflags:\t02\n"), None);
    }
}
