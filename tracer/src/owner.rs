//! Who holds a socket.
//!
//! The task running when a transition fires owns the socket only when the transition was made
//! in process context (a system call on the socket). Packet-driven transitions run in softirq,
//! on top of whatever task was interrupted, so their task is never taken as the owner. For the
//! rest, the kernel's socket tables are matched the way `ss -p` does: the socket's inode by
//! namespace and 4-tuple (from netlink `sock_diag`, only the states asked for), then the
//! processes holding `socket:[inode]` among `/proc/*/fd`.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::{
    event::{Endpoints, Name, Task, TcpState},
    netns, sock_diag,
};

/// The process that holds a socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: Name,
    /// The file descriptor, when found by a /proc scan.
    pub fd: Option<i32>,
}

impl Owner {
    pub fn from_task(task: &Task) -> Self {
        Self {
            pid: task.pid,
            comm: task.comm.clone(),
            fd: None,
        }
    }
}

/// Is `old -> new` always made by a system call of the socket's owner?
///
/// connect() (CLOSE -> SYN_SENT), listen() (CLOSE -> LISTEN), close()/shutdown() of an open
/// connection (ESTABLISHED -> FIN_WAIT1, CLOSE_WAIT -> LAST_ACK) and close() of a listener
/// (LISTEN -> CLOSE). Transitions that can also be driven by an incoming packet
/// (SYN_SENT -> CLOSE on a RST, ESTABLISHED -> CLOSE, ...) are left out on purpose.
///
/// The fallback where the kernel's own answer (the socket lock's `owned` flag) is unknown:
/// see [`crate::sock_state::in_owner_context`].
pub fn is_process_context(old: TcpState, new: TcpState) -> bool {
    use TcpState::{Close, CloseWait, Established, FinWait1, LastAck, Listen, SynSent};
    matches!(
        (old, new),
        (Close, SynSent | Listen)
            | (Established, FinWait1)
            | (CloseWait, LastAck)
            | (Listen, Close)
    )
}

/// One row of a kernel socket table (`/proc/net/tcp{,6}` of one namespace), with every
/// process that holds the socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketEntry {
    pub endpoints: Endpoints,
    pub state: TcpState,
    /// Bytes received and not yet read by the application.
    pub recv_q: u32,
    /// Socket inode; 0 while the socket has no file (waiting in a listener's accept queue,
    /// a timewait socket, an orphan).
    pub inode: u64,
    /// Inode of the network namespace the table was read from.
    pub netns: u64,
    /// Every process holding the socket, by pid then fd (a forked worker and its master,
    /// a descriptor passed with `SCM_RIGHTS`).
    pub holders: Vec<Owner>,
    /// Its `tcp_info` times, for the states [`Wanted::times`] names (from `sock_diag` only).
    pub times: Option<sock_diag::TcpInfoTimes>,
    /// For a socket that got the peer's FIN (`CLOSE_WAIT`, `LAST_ACK`, `CLOSING`): the
    /// application has read up to and including the FIN (see [`fin_read`]).
    pub fin_read: Option<bool>,
}

impl SocketEntry {
    /// The first holder, named as the socket's owner.
    pub fn owner(&self) -> Option<&Owner> {
        self.holders.first()
    }
}

/// Why a socket in the tables has no owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoOwner {
    /// Still in a listener's accept queue: never accepted.
    AcceptQueue {
        /// The listener's local address and port.
        listener: std::net::SocketAddr,
        /// The process holding the listener, if any.
        holder: Option<Owner>,
    },
    /// No process holds a descriptor of it.
    NoHolder,
}

/// A snapshot of the TCP sockets of every network namespace that holds some.
#[derive(Clone, Debug, Default)]
pub struct SocketTable {
    pub entries: Vec<SocketEntry>,
    /// Namespaces read, by inode.
    pub netns: Vec<u64>,
    /// cgroup and container of every process holding a socket, by pid.
    pub placements: HashMap<u32, crate::container::Placement>,
}

impl SocketTable {
    /// Were the tables of namespace `netns` read (`false` for an unknown namespace)?
    pub fn has_read(&self, netns: Option<u64>) -> bool {
        netns.is_some_and(|n| self.netns.contains(&n))
    }

    /// The entry for a connection in namespace `netns` (any namespace when `None`; the
    /// 4-tuple may then repeat across namespaces and the first in `state` is taken).
    pub fn find(
        &self,
        netns: Option<u64>,
        endpoints: &Endpoints,
        state: TcpState,
    ) -> Option<&SocketEntry> {
        let mut found = None;
        for entry in self
            .entries
            .iter()
            .filter(|e| netns.is_none_or(|n| n == e.netns) && same(&e.endpoints, endpoints))
        {
            if entry.state == state {
                return Some(entry);
            }
            found.get_or_insert(entry);
        }
        found
    }

    /// For a socket seen before its local port was chosen (`connect()` reports SYN_SENT
    /// first): the only entry in `state` with its remote end (and local address, when
    /// known), or `None` when there is none or more than one.
    pub fn unbound(
        &self,
        netns: Option<u64>,
        endpoints: &Endpoints,
        state: TcpState,
    ) -> Option<&SocketEntry> {
        if endpoints.lport != 0 {
            return None;
        }
        let canon = |ip: std::net::IpAddr| ip.to_canonical();
        let mut candidates = self.entries.iter().filter(|e| {
            e.state == state
                && netns.is_none_or(|n| n == e.netns)
                && e.endpoints.rport == endpoints.rport
                && canon(e.endpoints.raddr) == canon(endpoints.raddr)
                && (endpoints.laddr.is_unspecified()
                    || canon(e.endpoints.laddr) == canon(endpoints.laddr))
        });
        let first = candidates.next()?;
        candidates.next().is_none().then_some(first)
    }

    /// The entry of a socket identified by namespace and inode.
    pub fn by_inode(&self, netns: u64, inode: u64) -> Option<&SocketEntry> {
        (inode != 0)
            .then(|| {
                self.entries
                    .iter()
                    .find(|e| e.netns == netns && e.inode == inode)
            })
            .flatten()
    }

    /// Entries in `state`.
    pub fn in_state(&self, state: TcpState) -> impl Iterator<Item = &SocketEntry> {
        self.entries.iter().filter(move |e| e.state == state)
    }

    /// Why `entry` has no holder: the listener whose accept queue it waits in, or none.
    pub fn no_owner(&self, entry: &SocketEntry) -> Option<NoOwner> {
        if !entry.holders.is_empty() {
            return None;
        }
        if entry.inode != 0 {
            return Some(NoOwner::NoHolder);
        }
        let local = entry.endpoints.laddr.to_canonical();
        let listener = self
            .entries
            .iter()
            .filter(|l| {
                l.state == TcpState::Listen
                    && l.netns == entry.netns
                    && l.endpoints.lport == entry.endpoints.lport
            })
            // An exact address beats a wildcard, as in the kernel's lookup.
            .max_by_key(|l| {
                let addr = l.endpoints.laddr.to_canonical();
                (
                    addr == local,
                    addr.is_unspecified() || l.endpoints.laddr.is_unspecified(),
                )
            })
            .filter(|l| {
                let addr = l.endpoints.laddr.to_canonical();
                addr == local || l.endpoints.laddr.is_unspecified()
            });
        Some(match listener {
            Some(l) => NoOwner::AcceptQueue {
                listener: std::net::SocketAddr::new(l.endpoints.laddr, l.endpoints.lport),
                holder: l.owner().cloned(),
            },
            None => NoOwner::NoHolder,
        })
    }
}

/// Compares 4-tuples, treating an IPv4-mapped IPv6 address as its IPv4 address.
fn same(a: &Endpoints, b: &Endpoints) -> bool {
    let canon = |ip: std::net::IpAddr| ip.to_canonical();
    a.lport == b.lport
        && a.rport == b.rport
        && canon(a.laddr) == canon(b.laddr)
        && canon(a.raddr) == canon(b.raddr)
}

/// Unread bytes from the table's `rx_queue`, which is `rcv_nxt - copied_seq`: once the peer's
/// FIN has arrived it takes one sequence number that is not data (netstat shows it as one more
/// byte of Recv-Q).
pub fn unread_bytes(state: TcpState, rx_queue: u32) -> u32 {
    match state {
        TcpState::CloseWait | TcpState::LastAck | TcpState::Closing => rx_queue.saturating_sub(1),
        _ => rx_queue,
    }
}

/// For a socket that got the peer's FIN: has the application read up to and including it?
/// A read that reaches the FIN moves `copied_seq` past it (`tcp_recvmsg_locked()`,
/// `found_fin_ok: ++*seq`), so `rx_queue` is 0 once the application has read after the FIN
/// arrived, everything before it included (that read returned the last bytes or end of file);
/// 1 when every byte was read but not the FIN; more when bytes are left unread.
pub fn fin_read(state: TcpState, rx_queue: u32) -> Option<bool> {
    matches!(
        state,
        TcpState::CloseWait | TcpState::LastAck | TcpState::Closing
    )
    .then_some(rx_queue == 0)
}

/// A socket descriptor some process holds.
struct Held {
    inode: u64,
    pid: u32,
    fd: i32,
}

/// What a scan looks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The states asked of the kernel (`sock_diag` returns only sockets in these).
    pub states: Vec<TcpState>,
    /// The namespaces the caller needs (those of the sockets it looks up, from the kernel's
    /// events): a namespace only sockets keep is searched for through the holders' sockets
    /// only while one of these is not found. `None` (start-up): search for every namespace.
    pub netns: Option<Vec<u64>>,
    /// The states whose sockets also get their `tcp_info` times (asked of the kernel only for
    /// these: the stuck states of the reports, not the listeners read alongside).
    pub times: Vec<TcpState>,
}

impl Wanted {
    /// Every state, every namespace (what a whole-table reader such as the diagnosis needs).
    pub fn every_state() -> Wanted {
        Wanted {
            states: (1..=11).map(TcpState::from).collect(),
            netns: None,
            times: Vec::new(),
        }
    }

    /// The states a lookup needs for sockets stuck in `stuck`: those, LISTEN (to name the
    /// listener of a connection never accepted) and, for FIN_WAIT2, TIME_WAIT (a followed
    /// timewait socket that got the peer's FIN). The stuck states' sockets get their
    /// `tcp_info` times.
    pub fn for_states(stuck: impl IntoIterator<Item = TcpState>) -> Wanted {
        let mut states: Vec<TcpState> = stuck.into_iter().collect();
        let times = states.clone();
        if states.contains(&TcpState::FinWait2) {
            states.push(TcpState::TimeWait);
        }
        states.push(TcpState::Listen);
        states.sort();
        states.dedup();
        Wanted {
            states,
            netns: None,
            times,
        }
    }
}

/// Socket inodes already traced to their namespace through `SIOCGSKNS` (sockets that are not
/// TCP, or live where nothing else leads): probed once, not at every scan.
static PROBED: std::sync::Mutex<Option<HashMap<u64, u64>>> = std::sync::Mutex::new(None);
/// Above this many, the probe cache starts afresh (it only saves work).
const PROBED_MAX: usize = 65_536;

/// Reads the TCP sockets in the wanted states from every network namespace (through netlink
/// `sock_diag`, see [`crate::sock_diag`]: the kernel sends only those), and every process
/// that holds each of them (`/proc/*/fd`: every holder is listed, so the walk reads every
/// process). Processes that vanish or cannot be read during the scan are skipped; a namespace
/// that cannot be read is logged and skipped.
///
/// Namespaces are those of every thread, those held open or bind-mounted, and those reached
/// only through a socket a process holds (see [`crate::netns`]); each table is read once.
pub fn scan(wanted: &Wanted) -> Result<SocketTable, procfs::ProcError> {
    scan_costed(wanted, None).map(|(table, _)| table)
}

/// How a scan found every socket descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdWalk {
    /// The kernel's held-file iterator ([`crate::probe::Probe::held_files`]).
    Iterator,
    /// One `readlinkat` per entry of every `/proc/PID/fd`.
    Proc,
}

impl FdWalk {
    /// As `-v` says it.
    pub fn name(self) -> &'static str {
        match self {
            FdWalk::Iterator => "bpf iter/task_file",
            FdWalk::Proc => "/proc/*/fd",
        }
    }
}

/// [`scan`], reading the socket and namespace descriptors from `files` (a run of the
/// held-file iterator) when given and readable, else walking `/proc/*/fd`; with the CPU time
/// its helper threads spent walking (the calling thread's own is the caller's to measure) and
/// the walk used.
pub fn scan_costed(
    wanted: &Wanted,
    files: Option<std::fs::File>,
) -> Result<(SocketTable, (std::time::Duration, FdWalk)), procfs::ProcError> {
    // Every descriptor wanted, sockets by inode (small records: the names are read only for
    // the holders of the sockets found).
    let iterated = files.map(iterated_files).and_then(|read| {
        read.map_err(|e| log::warn!("reading the held-file iterator: {e}; walking /proc/*/fd"))
            .ok()
    });
    let mut finder = netns::Finder::default();
    finder.add_tasks(iterated.is_some());
    if let Some((_, namespaces)) = &iterated {
        for &(pid, fd) in namespaces {
            finder.add_descriptor(pid, fd);
        }
    }
    finder.add_mounts();
    let mut table = SocketTable::default();
    let mut read = 0;
    read_new(&mut finder, &mut read, &mut table, wanted);
    let (held, cost) = if let Some((held, _)) = iterated {
        (held, (std::time::Duration::ZERO, FdWalk::Iterator))
    } else {
        let (held, cpu) = held_sockets()?;
        (held, (cpu, FdWalk::Proc))
    };

    // Sockets may live in a namespace only sockets keep: look through the holders' sockets
    // while a namespace the caller needs is missing (at start-up, for every socket).
    let missing = |finder: &netns::Finder| match &wanted.netns {
        None => true,
        Some(list) => list.iter().any(|&ns| ns != 0 && !finder.knows(ns)),
    };
    if missing(&finder) {
        let in_tables: HashSet<u64> = table.entries.iter().map(|e| e.inode).collect();
        let mut probed = PROBED
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let probed = probed.get_or_insert_with(HashMap::new);
        if probed.len() > PROBED_MAX {
            probed.clear();
        }
        let mut first: HashSet<u64> = HashSet::new();
        for h in &held {
            if in_tables.contains(&h.inode) || !first.insert(h.inode) {
                continue;
            }
            if let Some(ns) = probed.get(&h.inode) {
                if finder.knows(*ns) {
                    continue;
                }
            }
            if let Ok(inode) = finder.add_socket(h.pid, h.fd) {
                probed.insert(h.inode, inode);
                if wanted.netns.is_some() && !missing(&finder) {
                    break;
                }
            }
        }
    }
    read_new(&mut finder, &mut read, &mut table, wanted);

    let wanted_inodes: HashSet<u64> = table
        .entries
        .iter()
        .map(|e| e.inode)
        .filter(|&i| i != 0)
        .collect();
    let mut holders: HashMap<u64, Vec<Owner>> = HashMap::new();
    let mut names: HashMap<u32, String> = HashMap::new();
    for h in held.iter().filter(|h| wanted_inodes.contains(&h.inode)) {
        let comm = names
            .entry(h.pid)
            .or_insert_with(|| {
                procfs::process::Process::new(i32::try_from(h.pid).unwrap_or(-1))
                    .and_then(|p| p.stat())
                    .map(|s| s.comm)
                    .unwrap_or_default()
            })
            .clone();
        holders.entry(h.inode).or_default().push(Owner {
            pid: h.pid,
            comm: comm.into(),
            fd: Some(h.fd),
        });
    }
    for pid in holders.values().flatten().map(|o| o.pid) {
        table
            .placements
            .entry(pid)
            .or_insert_with(|| crate::container::of_process(pid));
    }
    for entry in &mut table.entries {
        if let Some(list) = holders.get(&entry.inode) {
            entry.holders.clone_from(list);
            entry.holders.sort_by_key(|o| (o.pid, o.fd));
        }
    }
    Ok((table, cost))
}

/// Socket descriptors, and namespace-file descriptors as (pid, fd).
type HeldFiles = (Vec<Held>, Vec<(u32, u32)>);

/// Every socket descriptor and every namespace-file descriptor, as one run of the held-file
/// iterator lists them (see [`crate::decode::held_files`]). The kernel lists a table once per
/// task that does not share its leader's: a thread with a table of its own (its own
/// descriptors, under the process's pid) or the threads of a process whose leader has exited
/// (the same descriptors again); only exact repeats are dropped.
fn iterated_files(files: std::fs::File) -> std::io::Result<HeldFiles> {
    let listed = crate::decode::read_held_files(files)?;
    let mut held = Vec::with_capacity(listed.len());
    let mut namespaces = Vec::new();
    for f in listed {
        match f.kind {
            tracer_common::HELD_SOCKET => held.push(Held {
                inode: f.inode,
                pid: f.tgid,
                fd: i32::try_from(f.fd).unwrap_or(i32::MAX),
            }),
            tracer_common::HELD_NAMESPACE => namespaces.push((f.tgid, f.fd)),
            _ => {}
        }
    }
    held.sort_unstable_by_key(|h| (h.pid, h.fd, h.inode));
    held.dedup_by_key(|h| (h.pid, h.fd, h.inode));
    namespaces.sort_unstable();
    namespaces.dedup();
    Ok((held, namespaces))
}

/// Threads that walk `/proc/*/fd` beside the scanning one, at most (none on one CPU). The
/// walk is one `readlinkat` per descriptor, each costing the kernel a few microseconds: with
/// 100,000 socket descriptors held it is most of a scan, and every process must be read
/// (every holder is listed), so it is shared rather than cut short.
const WALK_HELPERS: usize = 1;

/// Every socket descriptor of every process (processes gone or unreadable meanwhile are
/// skipped), read by the calling thread and up to [`WALK_HELPERS`] more, each taking the next
/// process in turn; and the CPU time those helpers spent.
fn held_sockets() -> Result<(Vec<Held>, std::time::Duration), procfs::ProcError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pids: Vec<u32> = procfs::process::all_processes()?
        .flatten()
        .filter_map(|p| u32::try_from(p.pid()).ok())
        .collect();
    let next = AtomicUsize::new(0);
    let walk = || {
        let mut held = Vec::new();
        while let Some(&pid) = pids.get(next.fetch_add(1, Ordering::Relaxed)) {
            if let Ok(fds) = socket_fds(pid) {
                held.extend(fds.into_iter().map(|(fd, inode)| Held { inode, pid, fd }));
            }
        }
        held
    };
    let helpers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .saturating_sub(1)
        .min(WALK_HELPERS);
    Ok(std::thread::scope(|scope| {
        let handles: Vec<_> = (0..helpers)
            .filter_map(|_| {
                std::thread::Builder::new()
                    .name("fd-walk".into())
                    .spawn_scoped(scope, || (walk(), thread_cpu()))
                    .ok()
            })
            .collect();
        let mut held = walk();
        let mut cpu = std::time::Duration::ZERO;
        for handle in handles {
            let (more, spent) = handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            held.extend(more);
            cpu += spent;
        }
        (held, cpu)
    }))
}

/// The calling thread's CPU time so far (zero if the clock cannot be read).
pub fn thread_cpu() -> std::time::Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map_or(std::time::Duration::ZERO, std::time::Duration::from)
}

/// The TCP sockets in `states` of the calling thread's namespace: through `sock_diag` (with the
/// `tcp_info` times of those in `times`), or, where the kernel does not offer it, from
/// `/proc/thread-self/net/tcp{,6}`, keeping the same states, without times (see
/// [`diag_or_proc`]).
fn tcp_sockets(
    states: &[TcpState],
    times: &[TcpState],
) -> std::io::Result<Vec<sock_diag::DiagSocket>> {
    diag_or_proc(
        || sock_diag::tcp_sockets(states, times),
        || proc_tcp_sockets("/proc/thread-self/net", &|s| states.contains(&s.state)),
    )
}

/// The TCP sockets of process `pid`'s network namespace whose inode is one of `inodes` (the
/// sockets some of its descriptors name), in any state, without times: through `sock_diag`
/// in that namespace (from here when it is ours, else from a thread that enters it, which
/// needs `CAP_SYS_ADMIN`), the dump stopping once all are found; else (no `sock_diag`, or
/// the namespace cannot be entered) from `/proc/PID/net/tcp{,6}`, which needs no `setns`.
/// Empty when neither can be read (the process is gone).
pub fn sockets_by_inode(pid: u32, inodes: &HashSet<u64>) -> Vec<sock_diag::DiagSocket> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let ns_path = format!("/proc/{pid}/ns/net");
    let own = netns::inode_of(std::path::Path::new("/proc/thread-self/ns/net"));
    let diag = || {
        if own.is_some() && netns::inode_of(std::path::Path::new(&ns_path)) == own {
            return sock_diag::tcp_sockets_by_inode(inodes);
        }
        let ns = netns::Netns::open(std::path::Path::new(&ns_path))?;
        netns::in_netns(&ns, || sock_diag::tcp_sockets_by_inode(inodes))
    };
    let proc = || proc_tcp_sockets(&format!("/proc/{pid}/net"), &|s| inodes.contains(&s.inode));
    diag_or_proc(diag, proc).unwrap_or_else(|e| {
        log::debug!("could not read the sockets of pid {pid}'s namespace: {e}");
        Vec::new()
    })
}

/// The one place that chooses how socket tables are read: `sock_diag`, or, when it fails
/// (`inet_diag`/`tcp_diag` are modules: a kernel that cannot load them; a namespace that
/// cannot be entered), the `/proc` text tables. Said once at `-v`.
fn diag_or_proc(
    diag: impl FnOnce() -> std::io::Result<Vec<sock_diag::DiagSocket>>,
    proc: impl FnOnce() -> std::io::Result<Vec<sock_diag::DiagSocket>>,
) -> std::io::Result<Vec<sock_diag::DiagSocket>> {
    static SAID: std::sync::Once = std::sync::Once::new();
    diag().or_else(|e| {
        SAID.call_once(|| {
            log::info!("sock_diag not usable ({e}): reading /proc/.../net/tcp and tcp6");
        });
        proc()
    })
}

/// The rows of `DIR/tcp` and `DIR/tcp6` (`DIR` is a `/proc/.../net`) that `keep` keeps.
fn proc_tcp_sockets(
    dir: &str,
    keep: &dyn Fn(&sock_diag::DiagSocket) -> bool,
) -> std::io::Result<Vec<sock_diag::DiagSocket>> {
    use procfs::FromBufReadSI as _;
    let mut out = Vec::new();
    for name in ["tcp", "tcp6"] {
        let file = match std::fs::File::open(format!("{dir}/{name}")) {
            Ok(file) => file,
            // No IPv6 in this kernel or namespace.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let procfs::net::TcpNetEntries(rows) = procfs::net::TcpNetEntries::from_buf_read(
            std::io::BufReader::new(file),
            procfs::current_system_info(),
        )
        .map_err(std::io::Error::other)?;
        out.extend(
            rows.iter()
                .map(|row| sock_diag::DiagSocket {
                    endpoints: Endpoints {
                        laddr: row.local_address.ip(),
                        lport: row.local_address.port(),
                        raddr: row.remote_address.ip(),
                        rport: row.remote_address.port(),
                    },
                    state: TcpState::from(u32::from(row.state.to_u8())),
                    rx_queue: row.rx_queue,
                    inode: row.inode,
                    times: None,
                })
                .filter(|s| keep(s)),
        );
    }
    Ok(out)
}

/// The socket descriptors of process `pid`, as (fd, socket inode): one `readlinkat` per entry
/// of `/proc/PID/fd`. procfs's per-descriptor reader also opens and stats each link (four
/// system calls and a few allocations each): with 100,000 sockets held, that was most of a
/// scan's second. Descriptors closed meanwhile are skipped.
fn socket_fds(pid: u32) -> std::io::Result<Vec<(i32, u64)>> {
    let path = format!("/proc/{pid}/fd");
    let dir = std::fs::File::open(&path)?;
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&path)?.flatten() {
        let name = entry.file_name();
        let Some(fd) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(link) = nix::fcntl::readlinkat(&dir, name.as_os_str()) else {
            continue;
        };
        if let Some(inode) = socket_inode(&link) {
            out.push((fd, inode));
        }
    }
    Ok(out)
}

/// The inode of a socket descriptor's link text, `socket:[INODE]`; `None` for anything else.
fn socket_inode(link: &std::ffi::OsStr) -> Option<u64> {
    link.to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Reads the tables of the namespaces found since the last call.
fn read_new(
    finder: &mut netns::Finder,
    read: &mut usize,
    table: &mut SocketTable,
    wanted: &Wanted,
) {
    let found = finder.found();
    let own = netns::inode_of(std::path::Path::new("/proc/thread-self/ns/net"));
    for ns in &found[*read..] {
        // Our own namespace is read from here: no thread, and no setns (which needs
        // CAP_SYS_ADMIN, and a hardened unit's RestrictNamespaces forbids).
        let (states, times) = (&wanted.states, &wanted.times);
        let sockets = if Some(ns.inode) == own {
            tcp_sockets(states, times)
        } else {
            netns::in_netns(ns, || tcp_sockets(states, times)).or_else(|e| {
                static SAID: std::sync::Once = std::sync::Once::new();
                // Not allowed in (no CAP_SYS_ADMIN: the deploy files' capabilities): a task's
                // view of its namespace's tables, without times.
                let Some(dir) = ns.proc_net() else {
                    return Err(e);
                };
                SAID.call_once(|| {
                    log::info!(
                        "cannot enter other network namespaces ({e}): reading their \
                         /proc/PID/net/tcp and tcp6"
                    );
                });
                proc_tcp_sockets(&dir.to_string_lossy(), &|s| states.contains(&s.state))
            })
        };
        match sockets {
            Ok(sockets) => {
                table.netns.push(ns.inode);
                table
                    .entries
                    .extend(sockets.into_iter().map(|s| SocketEntry {
                        endpoints: s.endpoints,
                        state: s.state,
                        recv_q: unread_bytes(s.state, s.rx_queue),
                        inode: s.inode,
                        netns: ns.inode,
                        holders: Vec::new(),
                        times: s.times,
                        fin_read: fin_read(s.state, s.rx_queue),
                    }));
            }
            Err(e) => log::debug!("could not read the sockets of netns {}: {e}", ns.inode),
        }
    }
    *read = found.len();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TcpState::*;

    #[test]
    fn only_syscall_transitions_name_the_owner() {
        assert!(is_process_context(Close, SynSent));
        assert!(is_process_context(Close, Listen));
        assert!(is_process_context(Established, FinWait1));
        assert!(is_process_context(CloseWait, LastAck));
        assert!(is_process_context(Listen, Close));
        // Packet driven: run in softirq on top of an unrelated task.
        assert!(!is_process_context(Listen, SynRecv));
        assert!(!is_process_context(SynRecv, Established));
        assert!(!is_process_context(SynSent, Established));
        assert!(!is_process_context(Established, CloseWait));
        assert!(!is_process_context(FinWait1, FinWait2));
        assert!(!is_process_context(SynSent, Close));
        assert!(!is_process_context(Established, Close));
    }

    #[test]
    fn fin_is_not_an_unread_byte() {
        assert_eq!(unread_bytes(CloseWait, 27), 26);
        assert_eq!(unread_bytes(CloseWait, 0), 0);
        assert_eq!(unread_bytes(Established, 27), 27);
        assert_eq!(fin_read(CloseWait, 0), Some(true));
        assert_eq!(fin_read(CloseWait, 1), Some(false));
        assert_eq!(fin_read(Established, 0), None);
    }

    #[test]
    fn scan_finds_our_own_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let table = scan(&Wanted::for_states([Listen])).unwrap();
        let me = std::process::id();
        let entry = table
            .in_state(Listen)
            .find(|e| e.endpoints.lport == port && e.endpoints.laddr.is_ipv4())
            .expect("our listener is in the table");
        let owner = entry.owner().expect("we hold it");
        assert_eq!(owner.pid, me);
        assert!(owner.fd.is_some());
    }

    /// The shared walk reads each process once: every descriptor once, ours all there.
    #[test]
    fn walk_reads_each_process_once() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let (held, _) = held_sockets().unwrap();
        let mut seen = HashSet::new();
        for h in &held {
            assert!(
                seen.insert((h.pid, h.fd)),
                "pid {} fd {} twice",
                h.pid,
                h.fd
            );
        }
        assert!(seen.contains(&(std::process::id(), fd)));
    }

    #[test]
    fn socket_links_give_their_inode() {
        use std::ffi::OsStr;
        assert_eq!(socket_inode(OsStr::new("socket:[4242]")), Some(4242));
        assert_eq!(socket_inode(OsStr::new("pipe:[4242]")), None);
        assert_eq!(socket_inode(OsStr::new("/tmp/socket:[1]")), None);
        assert_eq!(socket_inode(OsStr::new("socket:[]")), None);
    }

    /// The one-syscall walk finds what procfs's reader finds: every socket fd of ours.
    #[test]
    fn socket_fds_agree_with_procfs() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let me = procfs::process::Process::myself().unwrap();
        let from_procfs: std::collections::BTreeSet<(i32, u64)> = me
            .fd()
            .unwrap()
            .flatten()
            .filter_map(|fd| match fd.target {
                procfs::process::FDTarget::Socket(inode) => Some((fd.fd, inode)),
                _ => None,
            })
            .collect();
        let ours: std::collections::BTreeSet<(i32, u64)> = socket_fds(std::process::id())
            .unwrap()
            .into_iter()
            .collect();
        assert!(!ours.is_empty());
        // Other tests' sockets come and go meanwhile: ours must hold those both saw.
        assert!(from_procfs.intersection(&ours).count() >= 1);
        let listener_fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        assert!(ours.iter().any(|&(fd, _)| fd == listener_fd));
    }

    #[test]
    fn scan_finds_close_wait_with_unread_bytes() {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        client.write_all(&[7u8; 26]).unwrap();
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let table = scan(&Wanted::for_states([CloseWait])).unwrap();
        assert!(table
            .entries
            .iter()
            .all(|e| matches!(e.state, CloseWait | Listen)));
        let entry = table
            .in_state(CloseWait)
            .find(|e| e.endpoints.rport == peer.port())
            .expect("the server socket is in CLOSE_WAIT");
        assert_eq!(entry.recv_q, 26);
        assert_eq!(entry.fin_read, Some(false));
        assert!(entry.times.is_some(), "tcp_info for the stuck state");
        assert_eq!(entry.owner().map(|o| o.pid), Some(std::process::id()));
        let mut server = server;
        let mut all = Vec::new();
        std::io::Read::read_to_end(&mut server, &mut all).unwrap();
        let table = scan(&Wanted::for_states([CloseWait])).unwrap();
        let entry = table
            .in_state(CloseWait)
            .find(|e| e.endpoints.rport == peer.port())
            .expect("still in CLOSE_WAIT");
        assert_eq!((entry.recv_q, entry.fin_read), (0, Some(true)));
        assert!(table.in_state(Listen).all(|e| e.times.is_none()));
    }

    /// The fallback for kernels without `sock_diag` gives what `sock_diag` gives.
    #[test]
    fn proc_tables_agree_with_sock_diag() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mine = |sockets: Vec<sock_diag::DiagSocket>| {
            sockets
                .into_iter()
                .filter(|s| s.endpoints.lport == port)
                .collect::<Vec<_>>()
        };
        let from_proc =
            mine(proc_tcp_sockets("/proc/thread-self/net", &|s| s.state == Listen).unwrap());
        assert_eq!(from_proc.len(), 1);
        assert_eq!(
            from_proc,
            mine(sock_diag::tcp_sockets(&[Listen], &[]).unwrap())
        );
        assert!(mine(
            proc_tcp_sockets("/proc/thread-self/net", &|s| s.state == CloseWait).unwrap()
        )
        .is_empty());
    }

    /// A process's sockets by inode: through `sock_diag` in its namespace, and the same from
    /// the `/proc/PID/net` fallback.
    #[test]
    fn sockets_by_inode_name_a_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&client);
        let me = std::process::id();
        let (_, inode) = socket_fds(me)
            .unwrap()
            .into_iter()
            .find(|&(f, _)| f == fd)
            .unwrap();
        let wanted: HashSet<u64> = [inode].into();
        let found = sockets_by_inode(me, &wanted);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (
                found[0].state,
                found[0].endpoints.lport,
                found[0].endpoints.rport
            ),
            (
                Established,
                client.local_addr().unwrap().port(),
                listener.local_addr().unwrap().port()
            )
        );
        let from_proc =
            proc_tcp_sockets(&format!("/proc/{me}/net"), &|s| wanted.contains(&s.inode)).unwrap();
        assert_eq!(from_proc, found);
        assert!(sockets_by_inode(me, &HashSet::new()).is_empty());
    }

    #[test]
    fn find_treats_v4_mapped_as_v4() {
        let ep = |l: &str, r: &str| {
            let l: std::net::SocketAddr = l.parse().unwrap();
            let r: std::net::SocketAddr = r.parse().unwrap();
            Endpoints {
                laddr: l.ip(),
                lport: l.port(),
                raddr: r.ip(),
                rport: r.port(),
            }
        };
        let table = SocketTable {
            entries: vec![SocketEntry {
                endpoints: ep("[::ffff:127.0.0.1]:80", "[::ffff:127.0.0.1]:5000"),
                state: CloseWait,
                recv_q: 3,
                inode: 9,
                netns: 1,
                holders: Vec::new(),
                times: None,
                fin_read: Some(false),
            }],
            ..SocketTable::default()
        };
        let found = table.find(None, &ep("127.0.0.1:80", "127.0.0.1:5000"), CloseWait);
        assert_eq!(found.map(|e| e.recv_q), Some(3));
        assert!(table
            .find(None, &ep("127.0.0.1:81", "127.0.0.1:5000"), CloseWait)
            .is_none());
    }
}
