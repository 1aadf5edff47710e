//! What a holder's threads are doing: each thread's state, `wchan` and system call from
//! `/proc/PID/task/TID/` (and, as root, its kernel stack), grouped by what they block in, with
//! the fd of a blocking call resolved to its socket. Reading is bounded by a deadline; the
//! grouping and ordering are pure, tested from recorded snapshots.

use std::{collections::HashMap, time::Instant};

use super::{Diagnosis, FdSocket, Target, ThreadDiagnosis, ThreadGroup, Unavailable, MAX_LISTED};
use crate::owner::SocketTable;

/// Kernel stack lines kept per thread.
const KERNEL_FRAMES: usize = 16;

/// One thread as `/proc` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskSample {
    /// Thread id.
    pub tid: u32,
    /// Its name (`/proc/PID/task/TID/comm`).
    pub name: String,
    /// `stat`'s state letter.
    pub state: char,
    /// `/proc/PID/task/TID/syscall`, parsed; `None` when it could not be read.
    pub syscall: Option<SyscallSample>,
    /// The kernel function it sleeps in (`/proc/PID/task/TID/wchan`); `None` when unreadable,
    /// empty or `0` (running).
    pub wchan: Option<String>,
    /// Function names of its kernel stack (`/proc/PID/task/TID/stack`, root only), innermost first, at most 16.
    pub kernel_stack: Vec<String>,
}

/// The system call a thread is in, from `/proc/PID/task/TID/syscall`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallSample {
    /// `running`: on a CPU, no registers to show.
    Running,
    /// Blocked outside a system call (`-1 sp pc`: a page fault, a signal stop).
    NotInSyscall {
        /// User stack pointer.
        sp: u64,
        /// User program counter.
        pc: u64,
    },
    /// In system call `nr` with its six arguments, stack pointer and program counter.
    In {
        /// The system call number, in the machine's own numbering.
        nr: u64,
        /// Its six arguments, as the kernel shows them.
        args: [u64; 6],
        /// User stack pointer.
        sp: u64,
        /// User program counter.
        pc: u64,
    },
}

impl SyscallSample {
    /// Parses `202 0x7f3c 0x80 0x2 0x0 0x0 0x0 0x7ffd2c 0x7f3c11`, `-1 0x7ffd 0x55aa` or
    /// `running`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text == "running" {
            return Some(Self::Running);
        }
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok();
        let fields: Vec<&str> = text.split_whitespace().collect();
        match fields[..] {
            ["-1", sp, pc] => Some(Self::NotInSyscall {
                sp: hex(sp)?,
                pc: hex(pc)?,
            }),
            [nr, a0, a1, a2, a3, a4, a5, sp, pc] => Some(Self::In {
                nr: nr.parse().ok()?,
                args: [hex(a0)?, hex(a1)?, hex(a2)?, hex(a3)?, hex(a4)?, hex(a5)?],
                sp: hex(sp)?,
                pc: hex(pc)?,
            }),
            _ => None,
        }
    }

    /// The user stack pointer and program counter, when the kernel shows them.
    pub fn sp_pc(self) -> Option<(u64, u64)> {
        match self {
            Self::Running => None,
            Self::NotInSyscall { sp, pc } | Self::In { sp, pc, .. } => Some((sp, pc)),
        }
    }
}

/// The name of system call `nr` on this machine's architecture.
pub fn syscall_name(nr: u64) -> Option<&'static str> {
    syscalls::Sysno::new(usize::try_from(nr).ok()?).map(|s| s.name())
}

/// System calls that block on the fd in their first argument.
fn blocks_on_fd(name: &str) -> bool {
    matches!(
        name,
        "read"
            | "readv"
            | "pread64"
            | "preadv"
            | "preadv2"
            | "recvfrom"
            | "recvmsg"
            | "recvmmsg"
            | "write"
            | "writev"
            | "pwrite64"
            | "sendto"
            | "sendmsg"
            | "sendmmsg"
            | "sendfile"
            | "accept"
            | "accept4"
            | "connect"
            | "epoll_wait"
            | "epoll_pwait"
            | "epoll_pwait2"
            | "flock"
            | "fsync"
            | "splice"
    )
}

/// The fd a thread blocks on, when its system call takes one first.
pub fn blocking_fd(sample: &TaskSample) -> Option<i32> {
    let Some(SyscallSample::In { nr, args, .. }) = sample.syscall else {
        return None;
    };
    blocks_on_fd(syscall_name(nr)?)
        .then(|| i32::try_from(args[0] as i64).ok())
        .flatten()
}

/// What a thread blocks in: `futex wait`, `read()`, `epoll_wait()`, `nanosleep`, `running`,
/// or its `wchan` (or state) when the system call is not known.
pub fn blocked_in(sample: &TaskSample) -> String {
    if sample.state == 'R' || sample.syscall == Some(SyscallSample::Running) {
        return "running".into();
    }
    let name = match sample.syscall {
        Some(SyscallSample::In { nr, .. }) => syscall_name(nr),
        _ => None,
    };
    match name {
        Some("futex" | "futex_waitv") => "futex wait".into(),
        Some("nanosleep" | "clock_nanosleep") => "nanosleep".into(),
        Some(name) => format!("{name}()"),
        None => match (&sample.wchan, sample.state) {
            (Some(w), _) => w.clone(),
            (None, 'T' | 't') => "stopped".into(),
            (None, 'Z') => "zombie".into(),
            (None, state) => format!("state {state}"),
        },
    }
}

/// Groups threads by what they block in, most first (then by name, for a stable order).
pub fn group(samples: &[TaskSample]) -> Vec<ThreadGroup> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for s in samples {
        *counts.entry(blocked_in(s)).or_default() += 1;
    }
    let mut groups: Vec<ThreadGroup> = counts
        .into_iter()
        .map(|(blocked_in, count)| ThreadGroup { blocked_in, count })
        .collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.blocked_in.cmp(&b.blocked_in)));
    groups
}

/// The threads to list, in order: one blocked on a stuck socket's fd first, then those
/// blocked on another socket (`is_socket` says which fds are), then those waiting on a lock
/// (`futex wait`), then those blocked on another fd (a pipe, a terminal: often an idle main
/// loop), then the rest (running threads are only counted); at most [`MAX_LISTED`].
pub fn listed<'a>(
    samples: &'a [TaskSample],
    stuck_fds: &[i32],
    is_socket: &dyn Fn(i32) -> bool,
) -> Vec<&'a TaskSample> {
    let mut blocked: Vec<(u8, &TaskSample)> = samples
        .iter()
        .filter(|s| blocked_in(s) != "running")
        .map(|s| {
            let rank = match blocking_fd(s) {
                Some(fd) if stuck_fds.contains(&fd) => 0,
                Some(fd) if is_socket(fd) => 1,
                None if blocked_in(s) == "futex wait" => 2,
                Some(_) => 3,
                None => 4,
            };
            (rank, s)
        })
        .collect();
    blocked.sort_by_key(|&(rank, s)| (rank, s.tid));
    let mut blocked: Vec<&TaskSample> = blocked.into_iter().map(|(_, s)| s).collect();
    blocked.truncate(MAX_LISTED);
    blocked
}

/// Reads the threads of `target` and fills the thread fields of `d` (stacks come after).
pub fn fill(d: &mut Diagnosis, table: Option<&SocketTable>, target: &Target, deadline: Instant) {
    let pid = target.pid;
    let Some((samples, total)) = read(pid, deadline, &mut d.unavailable) else {
        return;
    };
    d.threads_total = Some(total);
    d.thread_groups = group(&samples);
    let is_socket = |fd: i32| {
        std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:["))
    };
    let listed = listed(&samples, &target.stuck_fds, &is_socket);
    let fds: Vec<Option<FdTarget>> = listed
        .iter()
        .map(|s| blocking_fd(s).and_then(|fd| fd_target(pid, fd, table)))
        .collect();
    // The lookup's table holds only the states it asked for (CLOSE_WAIT, LISTEN, ...): the
    // sockets of threads blocked on, say, an ESTABLISHED connection are asked of the kernel
    // by inode, all in one dump of the process's namespace.
    let wanted: std::collections::HashSet<u64> = fds
        .iter()
        .filter_map(|t| match t {
            Some(FdTarget::Socket { inode, found: None }) => Some(*inode),
            _ => None,
        })
        .collect();
    let own: HashMap<u64, FdSocket> = crate::owner::sockets_by_inode(pid, &wanted)
        .into_iter()
        .map(|s| (s.inode, fd_socket(&s.endpoints, s.state)))
        .collect();
    for (s, resolved) in listed.into_iter().zip(fds) {
        let fd = blocking_fd(s);
        let (fd_socket, fd_target) = match resolved {
            None => (None, None),
            Some(FdTarget::Other(name)) => (None, Some(name)),
            Some(FdTarget::Socket {
                found: Some(socket),
                ..
            }) => (Some(socket), None),
            Some(FdTarget::Socket { inode, found: None }) => match own.get(&inode) {
                Some(socket) => (Some(socket.clone()), None),
                None => (None, Some(format!("socket:[{inode}]"))),
            },
        };
        let syscall = match s.syscall {
            Some(SyscallSample::In { nr, .. }) => syscall_name(nr).map(str::to_owned),
            _ => None,
        };
        d.threads.push(ThreadDiagnosis {
            tid: s.tid,
            name: s.name.clone(),
            state: s.state.to_string(),
            blocked_in: blocked_in(s),
            syscall,
            wchan: s.wchan.clone(),
            fd,
            fd_socket,
            fd_target,
            on_stuck_socket: fd.is_some_and(|fd| target.stuck_fds.contains(&fd)),
            pc: s.syscall.and_then(SyscallSample::sp_pc).map(|(_, pc)| pc),
            sp: s.syscall.and_then(SyscallSample::sp_pc).map(|(sp, _)| sp),
            frames: Vec::new(),
            stack_stop: match s.syscall {
                None => Some("its system call could not be read (ptrace access refused?)".into()),
                Some(SyscallSample::Running) => Some("running: no registers to read".into()),
                Some(_) => None,
            },
            kernel_stack: s.kernel_stack.clone(),
        });
    }
}

/// Every thread of `pid` (until the deadline), and how many it has.
fn read(
    pid: u32,
    deadline: Instant,
    unavailable: &mut Vec<Unavailable>,
) -> Option<(Vec<TaskSample>, u64)> {
    let refuse = |unavailable: &mut Vec<Unavailable>| {
        unavailable.push(Unavailable {
            field: "threads".into(),
            reason: super::pressure::gone_or_refused(pid),
        });
    };
    let Ok(process) = procfs::process::Process::new(i32::try_from(pid).ok()?) else {
        refuse(unavailable);
        return None;
    };
    let Ok(tasks) = process.tasks() else {
        refuse(unavailable);
        return None;
    };
    let tasks: Vec<procfs::process::Task> = tasks.flatten().collect();
    let total = tasks.len() as u64;
    let mut samples = Vec::with_capacity(tasks.len());
    let (mut no_syscall, mut late) = (0, 0);
    for task in &tasks {
        if Instant::now() >= deadline {
            late += 1;
            continue;
        }
        let Ok(stat) = task.stat() else { continue };
        let dir = format!("/proc/{pid}/task/{}", task.tid);
        let file = |name: &str| std::fs::read_to_string(format!("{dir}/{name}")).ok();
        let syscall = file("syscall").as_deref().and_then(SyscallSample::parse);
        if syscall.is_none() {
            no_syscall += 1;
        }
        samples.push(TaskSample {
            tid: u32::try_from(task.tid).unwrap_or(0),
            name: stat.comm,
            state: stat.state,
            syscall,
            // "0" when the kernel hides it (no permission) or the thread runs.
            wchan: file("wchan").filter(|w| !w.is_empty() && w != "0"),
            kernel_stack: file("stack").map(|s| kernel_stack(&s)).unwrap_or_default(),
        });
    }
    if no_syscall > 0 {
        unavailable.push(Unavailable {
            field: "syscall".into(),
            reason: format!(
                "{no_syscall} thread(s): /proc/{pid}/task/*/syscall unreadable (the kernel's ptrace access check refused, or the thread exited)"
            ),
        });
    }
    if late > 0 {
        unavailable.push(Unavailable {
            field: "thread_groups".into(),
            reason: format!(
                "{late} of {total} threads not read: the diagnosis time budget ran out"
            ),
        });
    }
    Some((samples, total))
}

/// Function names out of `/proc/PID/task/TID/stack` (`[<0>] futex_wait_queue+0x60/0x90`).
pub fn kernel_stack(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.split_once("] ").map_or(l, |(_, f)| f).trim();
            let f = l.split('+').next()?.trim();
            (!f.is_empty()).then(|| f.to_owned())
        })
        .take(KERNEL_FRAMES)
        .collect()
}

/// What a blocking fd names.
enum FdTarget {
    /// A socket, by inode, with what the lookup's table says of it (`None`: not there).
    Socket { inode: u64, found: Option<FdSocket> },
    /// Anything else: the link's text (`pipe:[…]`, a path).
    Other(String),
}

/// What fd `fd` of `pid` is (`None`: closed, or unreadable): a socket, found in `table`
/// when it holds it, or its target's name.
fn fd_target(pid: u32, fd: i32, table: Option<&SocketTable>) -> Option<FdTarget> {
    let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let target = target.to_string_lossy().into_owned();
    let Some(inode) = target
        .strip_prefix("socket:[")
        .and_then(|s| s.strip_suffix(']'))
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return Some(FdTarget::Other(target));
    };
    let found = table
        .and_then(|table| {
            table.entries.iter().find(|e| {
                e.inode == inode && e.holders.iter().any(|h| h.pid == pid && h.fd == Some(fd))
            })
        })
        .map(|e| fd_socket(&e.endpoints, e.state));
    Some(FdTarget::Socket { inode, found })
}

/// A socket's ends and state as a diagnosis shows them.
fn fd_socket(endpoints: &crate::event::Endpoints, state: crate::event::TcpState) -> FdSocket {
    FdSocket {
        laddr: endpoints.laddr,
        lport: endpoints.lport,
        raddr: endpoints.raddr,
        rport: endpoints.rport,
        state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/proc/PID/task/*/` of a server with a deadlocked worker, a thread reading from its
    /// database, an epoll loop and a running thread, as recorded on x86_64.
    fn snapshot() -> Vec<TaskSample> {
        let futex = syscalls::Sysno::futex.id();
        let read = syscalls::Sysno::read.id();
        let epoll = syscalls::Sysno::epoll_wait.id();
        let t = |tid, name: &str, state, syscall: &str, wchan: &str| TaskSample {
            tid,
            name: name.into(),
            state,
            syscall: SyscallSample::parse(syscall),
            wchan: (!wchan.is_empty()).then(|| wchan.into()),
            kernel_stack: Vec::new(),
        };
        vec![
            t(
                100,
                "server",
                'S',
                &format!("{epoll} 0x4 0x7ffc 0x400 0xffffffff 0x0 0x0 0x7ffc10 0x7f0011"),
                "do_epoll_wait",
            ),
            t(
                101,
                "worker-1",
                'S',
                &format!("{futex} 0x55aa10 0x80 0x2 0x0 0x0 0x0 0x7f22f0 0x7f3301"),
                "futex_wait_queue",
            ),
            t(
                102,
                "worker-2",
                'S',
                &format!("{futex} 0x55aa10 0x80 0x2 0x0 0x0 0x0 0x7f22f0 0x7f3301"),
                "futex_wait_queue",
            ),
            t(
                103,
                "worker-3",
                'S',
                &format!("{read} 0x9 0x7f2000 0x40 0x0 0x0 0x0 0x7f2100 0x7f3388"),
                "wait_woken",
            ),
            t(
                104,
                "worker-4",
                'S',
                &format!("{read} 0x5 0x7f2000 0x40 0x0 0x0 0x0 0x7f2100 0x7f3388"),
                "wait_woken",
            ),
            t(105, "cpu-bound", 'R', "running", ""),
            t(106, "locked-out", 'S', "", "futex_wait_queue"),
        ]
    }

    #[test]
    fn syscall_files_parse() {
        assert_eq!(
            SyscallSample::parse("running\n"),
            Some(SyscallSample::Running)
        );
        assert_eq!(
            SyscallSample::parse("-1 0x7ffd 0x55aa\n"),
            Some(SyscallSample::NotInSyscall {
                sp: 0x7ffd,
                pc: 0x55aa
            })
        );
        assert_eq!(
            SyscallSample::parse("0 0x9 0x7f2000 0x40 0x0 0x0 0x0 0x7f2100 0x7f3388\n"),
            Some(SyscallSample::In {
                nr: 0,
                args: [9, 0x7f_2000, 0x40, 0, 0, 0],
                sp: 0x7f_2100,
                pc: 0x7f_3388
            })
        );
        assert_eq!(SyscallSample::parse("garbage"), None);
    }

    #[test]
    fn threads_group_by_what_they_block_in() {
        let groups: Vec<(String, u64)> = group(&snapshot())
            .into_iter()
            .map(|g| (g.blocked_in, g.count))
            .collect();
        assert_eq!(
            groups,
            [
                ("futex wait".to_owned(), 2),
                ("read()".to_owned(), 2),
                ("epoll_wait()".to_owned(), 1),
                ("futex_wait_queue".to_owned(), 1),
                ("running".to_owned(), 1),
            ]
        );
    }

    #[test]
    fn the_thread_on_the_stuck_fd_is_listed_first() {
        let samples = snapshot();
        let order: Vec<u32> = listed(&samples, &[5], &|fd| fd == 9)
            .iter()
            .map(|s| s.tid)
            .collect();
        // fd 5 (stuck), the read on socket 9, the lock waits, the epoll on fd 4 (not a
        // socket), then the rest; never the running thread.
        assert_eq!(order, [104, 103, 101, 102, 100, 106]);
        assert_eq!(blocking_fd(&samples[3]), Some(9));
        assert_eq!(blocking_fd(&samples[1]), None);
    }

    /// A process with 10,000 threads is summarised: every thread counted in its group, at
    /// most [`MAX_LISTED`] listed.
    #[test]
    fn ten_thousand_threads_are_summarised() {
        let one = &snapshot()[1];
        let samples: Vec<TaskSample> = (0..10_000)
            .map(|tid| TaskSample { tid, ..one.clone() })
            .collect();
        assert_eq!(
            group(&samples),
            [ThreadGroup {
                blocked_in: "futex wait".into(),
                count: 10_000
            }]
        );
        let listed = listed(&samples, &[], &|_| false);
        assert_eq!(listed.len(), MAX_LISTED);
        assert_eq!(listed[0].tid, 0);
    }

    #[test]
    fn kernel_stacks_keep_function_names() {
        let text = "[<0>] futex_wait_queue+0x60/0x90\n[<0>] __futex_wait+0x8b/0x100\n[<0>] do_syscall_64+0x82/0x190\n";
        assert_eq!(
            kernel_stack(text),
            ["futex_wait_queue", "__futex_wait", "do_syscall_64"]
        );
    }

    #[test]
    fn our_own_threads_are_read() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let waiter = std::thread::Builder::new()
            .name("diag-waiter".into())
            .spawn(move || rx.recv())
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut unavailable = Vec::new();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        let (samples, total) = read(std::process::id(), deadline, &mut unavailable).unwrap();
        assert!(total >= 2);
        let waiter_sample = samples.iter().find(|s| s.name == "diag-waiter").unwrap();
        assert_eq!(blocked_in(waiter_sample), "futex wait", "{waiter_sample:?}");
        tx.send(()).unwrap();
        waiter.join().unwrap().unwrap();
    }
}
