//! Why a stuck socket's holder is stuck, and how long until it falls over: the `diagnosis`
//! object of `close_wait`/`stuck` reports and of digests (issue 14).
//!
//! For each holding process: its fd pressure and the forecast of fd (or, for outgoing
//! connections, local port) exhaustion ([`pressure`], on [`crate::forecast`]); its threads
//! grouped by what they block in, with the fd of a blocking call resolved to its socket
//! ([`threads`]); and each blocked thread's user stack, unwound from the system call's `pc`/`sp`
//! and symbolized ([`stack`]). It runs on a blocking thread, only when a report is due, within
//! [`BUDGET`]; whatever cannot be read (the process is gone, ptrace access is refused, the
//! budget ran out) leaves its field null and says why in `unavailable`, never an error.

pub mod pressure;
pub mod stack;
pub mod text;
pub mod threads;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{event::Endpoints, owner::SocketTable};

/// How long one diagnosis run (every process of one batch of reports) may take.
pub const BUDGET: Duration = Duration::from_millis(1500);

/// Blocked threads listed one by one (with their stacks) per process; the rest are counted in
/// the groups only, so a process with 10,000 threads is summarised, not listed.
pub const MAX_LISTED: usize = 16;

/// What a report says about the process holding a stuck socket. Every field is null (or
/// empty) when it could not be read, with the reason in `unavailable`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Diagnosis {
    /// The process diagnosed (the socket's owner).
    pub pid: u32,
    /// Open file descriptors (entries of `/proc/PID/fd`).
    pub fds_open: Option<u64>,
    /// Its soft `RLIMIT_NOFILE`; null when unlimited or unreadable.
    pub fds_limit: Option<u64>,
    /// TCP sockets it holds in `CLOSE_WAIT` (from the socket tables), reported or not yet.
    pub close_wait_held: Option<u64>,
    /// Growth of `close_wait_held` per minute over the last minutes (least squares); null
    /// until two samples a second apart.
    pub close_wait_per_minute: Option<f64>,
    /// Seconds until `fds_open` reaches `fds_limit` at `close_wait_per_minute`; null unless
    /// both are known and it grows.
    pub fd_limit_in_s: Option<f64>,
    /// For a stuck outgoing connection: the local ports in use towards its destination.
    pub ports: Option<PortPressure>,
    /// Threads of the process (entries of `/proc/PID/task`).
    pub threads_total: Option<u64>,
    /// Threads grouped by what they block in, most first.
    pub thread_groups: Vec<ThreadGroup>,
    /// Blocked threads one by one, at most [`MAX_LISTED`]: the one blocked on the stuck
    /// socket's fd first, then those blocked on another fd, then the rest.
    pub threads: Vec<ThreadDiagnosis>,
    /// The language runtime whose frames these are (`python`, `java`, `node`, ...), when the
    /// program is an interpreter or JIT: its frames are the runtime's, not the script's.
    pub runtime: Option<String>,
    /// What could not be read, and why.
    pub unavailable: Vec<Unavailable>,
    /// With `--track-reads`: the report's socket's last read (by any process), and what the
    /// reading thread blocks in now; null without the flag, on a kernel without
    /// `sock:sock_recv_length`, for a socket found at start-up (its kernel address is not
    /// known) and when no read was seen. Per report: digests leave it null.
    #[serde(default)]
    pub last_read: Option<crate::reads::LastReadReport>,
}

/// Local ports towards one destination, against the local port range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PortPressure {
    /// The destination.
    pub raddr: std::net::IpAddr,
    /// The destination's port.
    pub rport: u16,
    /// Sockets in the same network namespace with that destination and a local port in the
    /// range (any state: each one's port is taken).
    pub ports_in_use: u64,
    /// Ports in `net.ipv4.ip_local_port_range`.
    pub ports_range: u64,
    /// Growth of `ports_in_use` per minute.
    pub ports_per_minute: Option<f64>,
    /// Seconds until the range is exhausted at that rate.
    pub ports_exhausted_in_s: Option<f64>,
}

/// Threads blocked in the same thing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadGroup {
    /// What they block in: a system call (`futex wait`, `read()`, `epoll_wait()`, ...),
    /// `running`, or the kernel function from `wchan` when the system call is unknown.
    pub blocked_in: String,
    /// How many of the process's threads block in it.
    pub count: u64,
}

/// One blocked thread.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ThreadDiagnosis {
    /// Thread id.
    pub tid: u32,
    /// Its name (`/proc/PID/task/TID/comm`, set with `prctl`/`pthread_setname_np`).
    pub name: String,
    /// Its scheduler state letter (`S` sleeping, `D` uninterruptible, `R` running, ...).
    pub state: String,
    /// What it blocks in, as in `thread_groups`.
    pub blocked_in: String,
    /// The system call's name, when it is in one.
    pub syscall: Option<String>,
    /// The kernel function it sleeps in (`/proc/PID/task/TID/wchan`).
    pub wchan: Option<String>,
    /// The fd of the blocking call (`read`, `recv*`, `accept`, `connect`, `epoll_wait`, ...).
    pub fd: Option<i32>,
    /// That fd's socket, when it is a TCP socket in the tables.
    pub fd_socket: Option<FdSocket>,
    /// That fd's target otherwise (`pipe:[123]`, a path, `anon_inode:[eventpoll]`).
    pub fd_target: Option<String>,
    /// The fd is the stuck socket's.
    pub on_stuck_socket: bool,
    /// The user-space program counter at the system call.
    pub pc: Option<u64>,
    /// The user stack pointer at the system call (not written: the walk starts there).
    #[serde(skip)]
    pub sp: Option<u64>,
    /// Its user stack, innermost first, symbolized where symbols exist.
    pub frames: Vec<Frame>,
    /// Why the stack walk stopped where it did (or why there is none).
    pub stack_stop: Option<String>,
    /// The kernel stack (`/proc/PID/task/TID/stack`, root only), function names innermost first.
    pub kernel_stack: Vec<String>,
}

/// A TCP socket an fd leads to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdSocket {
    /// Local IP address.
    pub laddr: std::net::IpAddr,
    /// Local port.
    pub lport: u16,
    /// Remote IP address.
    pub raddr: std::net::IpAddr,
    /// Remote port.
    pub rport: u16,
    /// Its TCP state, from the socket tables.
    pub state: crate::event::TcpState,
}

/// One frame of a user stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The program counter (innermost frame) or return address.
    pub addr: u64,
    /// The function, demangled; null when no symbol covers the address.
    pub function: Option<String>,
    /// Source file and line, where debug information exists.
    pub file: Option<String>,
    /// Source line number (from 1), where debug information exists.
    pub line: Option<u32>,
    /// The file mapped at the address (the program or a library); null for anonymous memory
    /// (JIT-compiled code).
    pub module: Option<String>,
}

/// A field that could not be filled, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unavailable {
    /// The field (`fds_open`, `threads`, `frames`, ...).
    pub field: String,
    /// Why, in words (the process exited, ptrace access refused, the time budget ran out, ...).
    pub reason: String,
}

/// A process to diagnose, with what the reports know about its stuck sockets.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// Its process id.
    pub pid: u32,
    /// The fds of its stuck sockets (a thread blocked on one is named first).
    pub stuck_fds: Vec<i32>,
    /// Its stuck sockets' 4-tuples and namespaces (for the local port pressure of outgoing ones).
    pub stuck: Vec<(Option<u64>, Endpoints)>,
}

/// Makes diagnoses. Keeps what outlives one run: the count histories behind the rates, and
/// files' unwind sections.
pub struct Diagnoser {
    history: pressure::History,
    stacks: stack::Stacks,
}

impl Default for Diagnoser {
    fn default() -> Self {
        Self::new()
    }
}

impl Diagnoser {
    /// A diagnoser with no history yet.
    pub fn new() -> Self {
        Self {
            history: pressure::History::default(),
            stacks: stack::Stacks::new(),
        }
    }

    /// Diagnoses each target, with the socket tables read for its reports (`None`: read them
    /// here). `now_ns` is the kernel monotonic time of the reports. Never fails: what cannot
    /// be read is null with a reason.
    pub fn run(
        &mut self,
        table: Option<&SocketTable>,
        targets: &[Target],
        now_ns: u64,
    ) -> HashMap<u32, Diagnosis> {
        let started = Instant::now();
        let scanned = if table.is_none() {
            crate::owner::scan(&crate::owner::Wanted::every_state()).ok()
        } else {
            None
        };
        let table = table.or(scanned.as_ref());
        if let Some(table) = table {
            self.history.observe(table, now_ns);
        }
        let mut out = HashMap::new();
        for target in targets {
            let mut d = Diagnosis {
                pid: target.pid,
                ..Diagnosis::default()
            };
            pressure::fill(&mut d, &mut self.history, table, target, now_ns);
            if started.elapsed() >= BUDGET {
                d.unavailable.push(Unavailable {
                    field: "threads".into(),
                    reason: format!("the diagnosis time budget ({BUDGET:?}) ran out"),
                });
            } else {
                let deadline = started + BUDGET;
                threads::fill(&mut d, table, target, deadline);
                self.stacks.fill(&mut d, deadline);
            }
            out.insert(target.pid, d);
        }
        out
    }
}
