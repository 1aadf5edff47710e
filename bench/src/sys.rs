//! What the bench reads from the kernel about the processes it starts: CPU time and memory
//! (procfs), BPF program counters (fdinfo, through the tracer's reader); and the process
//! control it needs (signals by PID, reaping with resource usage, the BPF run-time
//! statistics switch).

use std::{
    collections::BTreeMap,
    fs, io,
    os::{fd::OwnedFd, unix::process::CommandExt as _},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use procfs::{
    process::{FDTarget, Process},
    CurrentSI as _, KernelStats,
};

/// Clock ticks per second, the unit of /proc's CPU times.
pub fn clock_ticks() -> f64 {
    procfs::ticks_per_second() as f64
}

fn process(pid: u32) -> Option<Process> {
    Process::new(i32::try_from(pid).ok()?).ok()
}

/// utime + stime of a process (all its threads), in ticks.
fn cpu_ticks(process: &Process) -> Option<u64> {
    let stat = process.stat().ok()?;
    Some(stat.utime + stat.stime)
}

/// utime + stime of a process (all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_ticks(&process(pid)?).map(|ticks| ticks as f64 / clock_ticks())
}

/// utime + stime of a process and of the children it has reaped (cutime + cstime), in
/// seconds: what `wait4` reports for it at its exit, so that the two can be subtracted (our
/// tracer reaps the process that parses the kernel's BTF at start-up).
pub fn cpu_seconds_reaped(pid: u32) -> Option<f64> {
    let stat = process(pid)?.stat().ok()?;
    let ticks = stat.utime + stat.stime + u64::try_from(stat.cutime + stat.cstime).ok()?;
    Some(ticks as f64 / clock_ticks())
}

/// Every process except this one and `exclude`, with its pid.
fn other_processes(exclude: &[u32]) -> impl Iterator<Item = (u32, Process)> + '_ {
    let me = std::process::id();
    procfs::process::all_processes()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(move |p| {
            let pid = u32::try_from(p.pid()).ok()?;
            (pid != me && !exclude.contains(&pid)).then_some((pid, p))
        })
}

/// CPU ticks used so far by every process on the machine except `exclude` (and this one).
/// Kernel threads are included: a kworker doing someone else's writeback is background load
/// too.
pub fn others_cpu_ticks(exclude: &[u32]) -> BTreeMap<u32, u64> {
    other_processes(exclude)
        .filter_map(|(pid, p)| Some((pid, cpu_ticks(&p)?)))
        .collect()
}

/// Seconds of CPU the other processes used between two readings of [`others_cpu_ticks`],
/// counting only processes alive at both.
pub fn others_cpu_between(before: &BTreeMap<u32, u64>, after: &BTreeMap<u32, u64>) -> f64 {
    let ticks: u64 = after
        .iter()
        .map(|(pid, &t)| t.saturating_sub(before.get(pid).copied().unwrap_or(t)))
        .sum();
    ticks as f64 / clock_ticks()
}

/// CPU time the whole machine spent busy (user, nice, system, irq, softirq of every CPU:
/// without IRQ time accounting, the kernel charges the same ticks to the tasks it
/// interrupted), in ticks, from /proc/stat. Compared with the CPU of our own processes, it
/// shows load from processes too short-lived for [`others_cpu_ticks`] to see.
pub fn machine_busy_ticks() -> Option<u64> {
    let total = KernelStats::current().ok()?.total;
    Some(
        total.user
            + total.nice
            + total.system
            + total.irq.unwrap_or(0)
            + total.softirq.unwrap_or(0),
    )
}

/// The fds of a process that are BPF programs.
fn program_fds(process: &Process) -> Vec<i32> {
    process
        .fd()
        .into_iter()
        .flatten()
        .flatten()
        .filter(|fd| matches!(&fd.target, FDTarget::AnonInode(kind) if kind == "bpf-prog"))
        .map(|fd| fd.fd)
        .collect()
}

/// Processes other than `exclude` that hold BPF program fds: (pid, command line). Programs
/// left attached to the tracepoint by another tracer run on every event of every mode.
pub fn bpf_program_holders(exclude: &[u32]) -> Vec<(u32, String)> {
    other_processes(exclude)
        .filter(|(_, p)| !program_fds(p).is_empty())
        .map(|(pid, p)| (pid, p.cmdline().unwrap_or_default().join(" ")))
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
    let status = process(pid)?.status().ok()?;
    Some(Memory {
        rss_kib: status.vmrss?,
        hwm_kib: status.vmhwm?,
        anon_kib: status.rssanon,
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

impl ProgStats {
    /// The counters in a BPF program fd's fdinfo text (`None` without `prog_id`/`run_cnt`).
    pub fn from_fdinfo(info: &str) -> Option<Self> {
        let field = |name| tracer::probe::fdinfo_field(info, name);
        Some(Self {
            prog_id: field("prog_id")?,
            run_cnt: field("run_cnt")?,
            run_time_ns: field("run_time_ns").unwrap_or(0),
            recursion_misses: field("recursion_misses").unwrap_or(0),
        })
    }
}

/// The counters of the BPF programs a process holds, from their fdinfo ([`combined`]).
pub fn busiest_program(pid: u32) -> Option<ProgStats> {
    combined(
        program_fds(&process(pid)?)
            .into_iter()
            .filter_map(|fd| fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok())
            .filter_map(|info| ProgStats::from_fdinfo(&info)),
    )
}

/// The busiest program's id, run count and run time (by `run_cnt`, which the kernel counts
/// only while its BPF statistics are on: all zero otherwise), with the runs the kernel skipped
/// (`recursion_misses`, counted whether or not the statistics are on) summed over every
/// program. `None` without programs.
pub fn combined(programs: impl Iterator<Item = ProgStats>) -> Option<ProgStats> {
    let mut skipped = 0;
    let mut busiest: Option<ProgStats> = None;
    for p in programs {
        skipped += p.recursion_misses;
        if busiest.is_none_or(|b| p.run_cnt > b.run_cnt) {
            busiest = Some(p);
        }
    }
    busiest.map(|b| ProgStats {
        recursion_misses: skipped,
        ..b
    })
}

/// Names of the threads of a process.
pub fn thread_names(pid: u32) -> Vec<String> {
    let Some(process) = process(pid) else {
        return Vec::new();
    };
    process
        .tasks()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| task.stat().ok())
        .map(|stat| stat.comm)
        .collect()
}

/// Sends a signal to one process we started.
fn signal(pid: u32, signal: i32) {
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
fn try_reap(pid: u32) -> Result<Option<Exit>> {
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
fn reap_within(pid: u32, timeout: Duration) -> Result<Option<Exit>> {
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
fn stop(pid: u32, first: i32, grace: Duration) -> Result<(Exit, bool)> {
    signal(pid, first);
    if let Some(exit) = reap_within(pid, grace)? {
        return Ok((exit, false));
    }
    signal(pid, libc::SIGKILL);
    let exit = reap_within(pid, Duration::from_secs(10))?
        .with_context(|| format!("process {pid} survived SIGKILL"))?;
    Ok((exit, true))
}

/// A child process we started; killed and reaped on drop unless already reaped.
pub struct Proc {
    pub pid: u32,
    pub name: &'static str,
    reaped: bool,
}

impl Proc {
    /// Starts `cmd`, which gets `death_signal` if the bench dies first.
    pub fn spawn(
        name: &'static str,
        cmd: &mut Command,
        death_signal: i32,
    ) -> Result<(Self, std::process::Child)> {
        // SAFETY: prctl is async-signal-safe; the child only sets its parent-death signal, so
        // it does not outlive the bench.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        let proc = Self {
            pid: child.id(),
            name,
            reaped: false,
        };
        Ok((proc, child))
    }

    /// Reaps it if it has exited.
    pub fn try_reap(&mut self) -> Result<Option<Exit>> {
        let exit = try_reap(self.pid)?;
        self.reaped |= exit.is_some();
        Ok(exit)
    }

    /// Waits for it to exit, up to `timeout`.
    pub fn reap_within(&mut self, timeout: Duration) -> Result<Option<Exit>> {
        let exit = reap_within(self.pid, timeout)?;
        self.reaped |= exit.is_some();
        Ok(exit)
    }

    /// Stops it: `signal`, then SIGKILL after `grace`; true when it had to be killed.
    pub fn stop(&mut self, signal: i32, grace: Duration) -> Result<(Exit, bool)> {
        let result = stop(self.pid, signal, grace);
        self.reaped = true;
        result
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            eprintln!("bench: stopping {} (pid {})", self.name, self.pid);
            let _ = stop(self.pid, libc::SIGKILL, Duration::from_secs(5));
        }
    }
}

/// Turns the kernel's BPF run-time statistics on (`run_time_ns`, `run_cnt` in fdinfo) for as
/// long as the returned fd lives, like `sysctl kernel.bpf_stats_enabled=1` but undone by the
/// kernel when the fd closes, even if the bench is killed.
pub fn enable_bpf_stats() -> Result<OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("turning on the kernel's BPF run-time statistics (BPF_ENABLE_STATS)")
}

/// Whether the kernel's BPF run-time statistics are on for everyone
/// (`/proc/sys/kernel/bpf_stats_enabled` is 1: `sysctl kernel.bpf_stats_enabled=1`), so that
/// no round runs without them.
pub fn bpf_stats_always_on() -> bool {
    fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
}

/// Bytes of a file, or 0 when it does not exist yet.
pub fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

#[cfg(test)]
mod tests {
    /// The run counts of the busiest program, the skips of all: with the statistics off every
    /// `run_cnt` is 0 and no program's skips may be left out.
    #[test]
    fn skips_are_summed_over_every_program() {
        use super::{combined, ProgStats};
        let p = |prog_id, run_cnt, recursion_misses| ProgStats {
            prog_id,
            run_cnt,
            run_time_ns: run_cnt * 400,
            recursion_misses,
        };
        let c = combined([p(1, 10, 2), p(2, 1000, 3), p(3, 5, 0)].into_iter()).unwrap();
        assert_eq!((c.prog_id, c.run_cnt, c.recursion_misses), (2, 1000, 5));
        let c = combined([p(1, 0, 4), p(2, 0, 0), p(3, 0, 1)].into_iter()).unwrap();
        assert_eq!((c.run_cnt, c.recursion_misses), (0, 5));
        assert_eq!(combined(std::iter::empty()), None);
    }

    use super::*;

    #[test]
    fn prog_fdinfo_only_for_programs() {
        let prog = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t5\n\
                    prog_jited:\t1\nprog_tag:\tabc\nmemlock:\t4096\nprog_id:\t77\n\
                    run_time_ns:\t12000\nrun_cnt:\t100\nrecursion_misses:\t2\nverified_insns:\t90\n";
        assert_eq!(
            ProgStats::from_fdinfo(prog),
            Some(ProgStats {
                prog_id: 77,
                run_cnt: 100,
                run_time_ns: 12000,
                recursion_misses: 2
            })
        );
        let link = "pos:\t0\nflags:\t02000000\nlink_type:\tperf\nlink_id:\t5\nprog_tag:\tabc\nprog_id:\t77\n";
        assert_eq!(ProgStats::from_fdinfo(link), None);
    }

    #[test]
    fn reads_its_own_process() {
        let me = std::process::id();
        assert!(memory(me).is_some_and(|m| m.rss_kib > 0 && m.hwm_kib >= m.rss_kib));
        assert!(cpu_seconds(me).is_some());
        assert!(!thread_names(me).is_empty());
        assert!(machine_busy_ticks().is_some_and(|t| t > 0));
    }
}
