//! Types shared by the eBPF program and userspace.
//!
//! Everything here is `#[repr(C)]`, fixed-width and free of implicit padding, so both sides
//! agree on the layout byte for byte. Userspace never reinterprets these bytes in place: it
//! copies them out with `read_unaligned` and converts them into owned domain types at once.
#![no_std]

pub mod cause;
pub mod reads;
pub mod tracepoint;

/// Name of the ring buffer map that carries [`TcpStateEvent`]s.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array whose slots count failed reservations ([`STAT_RINGBUF_FULL`]) and
/// runs ([`STAT_RUNS`]).
pub const STATS_MAP: &str = "STATS";
/// Name of the array of ports to keep when [`FILTER_PORTS_GLOBAL`] is non-zero: a bitmap of
/// [`PORT_BITMAP_WORDS`] `u64` words, bit `port % 64` of word `port / 64`.
pub const PORTS_MAP: &str = "PORTS";
/// Name of the classic tracepoint program (`tracepoint/sock/inet_sock_set_state`): the
/// fallback, reading the record the kernel builds for the tracepoint.
pub const PROGRAM: &str = "inet_sock_set_state";
/// Name of the BTF-enabled raw tracepoint program (`tp_btf/inet_sock_set_state`): reads the
/// `struct sock` the kernel hands it, at the offsets in [`OFFSETS_GLOBAL`].
pub const PROGRAM_BTF: &str = "inet_sock_set_state_btf";
/// Global set before load: the [`KernelOffsets`] computed from the kernel's BTF.
pub const OFFSETS_GLOBAL: &str = "OFFSETS";

/// Global (read-only data) set before load: address family to keep (0 = all).
pub const FILTER_FAMILY_GLOBAL: &str = "FILTER_FAMILY";
/// Global set before load: protocol to keep (0 = all, 6 = TCP).
pub const FILTER_PROTOCOL_GLOBAL: &str = "FILTER_PROTOCOL";
/// Global set before load: non-zero means keep only ports present in [`PORTS_MAP`].
pub const FILTER_PORTS_GLOBAL: &str = "FILTER_PORTS";
/// Global set before load: network namespace inode to keep (0 = all). Needs the
/// [`OFFSETS_NETNS`] offsets.
pub const FILTER_NETNS_GLOBAL: &str = "FILTER_NETNS";

/// Slot of [`STATS_MAP`]: events lost because the ring buffer was full.
pub const STAT_RINGBUF_FULL: u32 = 0;
/// Slot of [`STATS_MAP`]: runs of the `inet_sock_set_state` program, before any filter (`-v`
/// prints the total at the end, to tell transitions the kernel never handed the program from
/// those it dropped).
pub const STAT_RUNS: u32 = 1;
/// Number of slots in [`STATS_MAP`].
pub const STAT_SLOTS: u32 = 2;
/// Words of the port bitmap in [`PORTS_MAP`]: one bit for each of the 65,536 ports.
pub const PORT_BITMAP_WORDS: u32 = 1024;
/// Default size of the ring buffer in bytes (must be a power of two multiple of the page size).
///
/// Sized from the event rate: full connection churn on two cores makes about 300,000
/// transitions a second, 120 bytes each in the ring (record and header), about 36 MB/s. 4 MiB
/// holds about 115 ms of that: the longest the reader may be held off without a loss. At
/// full churn, 18 runs with 4 MiB lost nothing, nor did runs with 1 and 2 MiB (docs/bench.md).
/// The reader maps the ring's pages twice, so twice its size counts in the tracer's RSS.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 4 << 20;

/// Bytes a [`TcpStateEvent`] takes in the ring buffer: the event and the ring's 8-byte record
/// header, rounded up to 8 bytes as the kernel does.
pub const RING_RECORD_BYTES: usize = (EVENT_SIZE + 8).div_ceil(8) * 8;

/// Events a ring buffer of `bytes` holds when full.
pub const fn ring_buffer_events(bytes: u32) -> usize {
    bytes as usize / RING_RECORD_BYTES
}

/// `AF_INET`.
pub const AF_INET: u16 = 2;
/// `AF_INET6`.
pub const AF_INET6: u16 = 10;
/// `IPPROTO_TCP`.
pub const IPPROTO_TCP: u16 = 6;

/// Is an IPv6 address, read from memory as two native-endian (little-endian) words, an
/// IPv4-mapped address (`::ffff:a.b.c.d`)? The one definition of "IPv4 on the wire" for an
/// `AF_INET6` socket, used by the eBPF family filter and by userspace for the socket tables.
#[inline]
pub const fn is_v4_mapped(lo: u64, hi: u64) -> bool {
    lo == 0 && (hi & 0xffff_ffff) == 0xffff_0000
}

/// Does a socket carry IPv4 on the wire? `AF_INET`, or `AF_INET6` with a v4-mapped local or
/// remote address (a dual-stack socket serving an IPv4 peer). `-4` keeps exactly these
/// sockets and `-6` the others.
#[inline]
pub const fn ipv4_on_wire(family: u16, saddr: (u64, u64), daddr: (u64, u64)) -> bool {
    family == AF_INET || is_v4_mapped(saddr.0, saddr.1) || is_v4_mapped(daddr.0, daddr.1)
}

/// Length of a task's `comm`.
pub const COMM_LEN: usize = 16;

/// [`KernelOffsets::flags`] bit: the socket fields (`sk_*`, `inet_*`) are valid, so the
/// `tp_btf` program can build a whole event from the `struct sock`.
pub const OFFSETS_SOCK: u32 = 1;
/// [`KernelOffsets::flags`] bit: [`KernelOffsets::sk_net`] and [`KernelOffsets::net_inum`] are
/// valid, so events carry the socket's network namespace.
pub const OFFSETS_NETNS: u32 = 2;
/// [`KernelOffsets::flags`] bit: [`KernelOffsets::task_group_leader`],
/// [`KernelOffsets::task_comm`] and [`KernelOffsets::task_flags`] are valid, so events carry
/// the process name and whether the running task is a kernel thread.
pub const OFFSETS_LEADER: u32 = 4;

/// [`KernelOffsets::flags`] bit: [`KernelOffsets::sk_lock_owned`], [`KernelOffsets::sk_flags`]
/// and [`KernelOffsets::icsk_ulp_ops`] are valid, so events carry [`TcpStateEvent::sock`].
pub const OFFSETS_SOCK_STATE: u32 = 8;

/// [`KernelOffsets::flags`] bit: [`KernelOffsets::file_inode`], [`KernelOffsets::inode_mode`],
/// [`KernelOffsets::inode_ino`], [`KernelOffsets::inode_sb`], [`KernelOffsets::sb_magic`] and
/// [`KernelOffsets::task_tgid`] are valid, so the [`PROGRAM_HELD_FILES`] iterator can run.
pub const OFFSETS_FILES: u32 = 16;

/// The `iter/task_file` program: one [`HeldFile`] for every socket and every namespace file
/// (nsfs) that a process holds open, written to the iterator's file: what the owner lookups
/// found by reading the link of every descriptor in every `/proc/PID/fd`, listed by the kernel
/// without a system call per descriptor.
pub const PROGRAM_HELD_FILES: &str = "held_files";

/// [`HeldFile::kind`]: a socket (`S_ISSOCK` inode).
pub const HELD_SOCKET: u32 = 1;
/// [`HeldFile::kind`]: a namespace file (an inode of nsfs, `NSFS_MAGIC`), of any namespace type.
pub const HELD_NAMESPACE: u32 = 2;
/// `NSFS_MAGIC` (`include/uapi/linux/magic.h`): `super_block.s_magic` of namespace files.
pub const NSFS_MAGIC: u64 = 0x6e73_6673;

/// One descriptor, as [`PROGRAM_HELD_FILES`] writes it (24 bytes, native endian).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HeldFile {
    /// The inode number: a socket's (`socket:[INODE]` in `/proc/PID/fd`), or the namespace's.
    pub inode: u64,
    /// The process (`task_struct.tgid`: its pid in the initial pid namespace).
    pub tgid: u32,
    /// The descriptor number in that process.
    pub fd: u32,
    /// [`HELD_SOCKET`] or [`HELD_NAMESPACE`].
    pub kind: u32,
    /// Zero.
    pub reserved: u32,
}

/// Size of a [`HeldFile`] record.
pub const HELD_FILE_SIZE: usize = core::mem::size_of::<HeldFile>();
const _: () = assert!(HELD_FILE_SIZE == 24);

/// Bit of `struct sock`'s `sk_flags` the kernel sets when the peer's FIN arrives (`SOCK_DONE`
/// of `enum sock_flags`, `include/net/sock.h`: `SOCK_DEAD` is 0, `SOCK_DONE` 1, unchanged since
/// Linux 2.6; TCP sets it only in `tcp_fin()` and clears it in `tcp_disconnect()`).
pub const SOCK_DONE_BIT: u32 = 1;

/// Bit of `struct sock`'s `sk_flags` the kernel sets when the socket is orphaned, its last
/// file closed (`SOCK_DEAD` of `enum sock_flags`, set by `sock_orphan()`; 0 since Linux 2.6).
pub const SOCK_DEAD_BIT: u32 = 0;

/// [`TcpStateEvent::sock`] bit: the socket lock's `owned` flag was read (the next bit is valid).
pub const SOCK_OWNED_READ: u16 = 1;
/// [`TcpStateEvent::sock`] bit: a process held the socket lock (`sock_owned_by_user()`): the
/// transition ran in the context of a process calling into the socket (or releasing its lock
/// and running the packets queued meanwhile), never in softirq or a timer.
pub const SOCK_OWNED: u16 = 2;
/// [`TcpStateEvent::sock`] bit, on FIN_WAIT2 -> CLOSE only: `sk_flags` was read (the next bit
/// is valid).
pub const SOCK_PEER_FIN_READ: u16 = 4;
/// [`TcpStateEvent::sock`] bit, on FIN_WAIT2 -> CLOSE only: the peer's FIN had arrived
/// ([`SOCK_DONE_BIT`]), so the connection moved to TIME_WAIT; clear, the orphaned socket
/// moved to a timewait socket in the FIN_WAIT2 sub-state, the peer's end still open.
pub const SOCK_PEER_FIN: u16 = 8;
/// [`TcpStateEvent::sock`] bit, on transitions to CLOSE only: `sk_flags` was read for
/// [`SOCK_DEAD_BIT`] (the next bit is valid).
pub const SOCK_ORPHAN_READ: u16 = 16;
/// [`TcpStateEvent::sock`] bit, on transitions to CLOSE only: the socket was already orphaned
/// (`SOCK_DEAD`): its process had closed it.
pub const SOCK_ORPHAN: u16 = 32;
/// [`TcpStateEvent::sock`] bit, on transitions to CLOSE only: `icsk_ulp_ops` was read (the
/// next bit is valid).
pub const SOCK_ULP_READ: u16 = 64;
/// [`TcpStateEvent::sock`] bit, on transitions to CLOSE only: an upper layer protocol was
/// attached to the socket (`icsk_ulp_ops` set): an MPTCP subflow, or kernel TLS. MPTCP may
/// still reset a subflow after its CLOSE (`mptcp_subflow_reset()`).
pub const SOCK_ULP: u16 = 128;
/// [`TcpStateEvent::sock`] bit, when the socket lock was owned ([`SOCK_OWNED`]): whether the
/// running task is a kernel thread is known (the next bit is valid).
pub const SOCK_KTHREAD_READ: u16 = 256;
/// [`TcpStateEvent::sock`] bit: the task holding the socket lock is a kernel thread
/// (`PF_KTHREAD`), such as MPTCP's worker (a `kworker`), which locks the MPTCP sockets it
/// moves: never the socket's owner.
pub const SOCK_KTHREAD: u16 = 512;
/// `PF_KTHREAD` (`include/linux/sched.h`): the `task_struct.flags` bit of kernel threads, the
/// same in every kernel since 2.6.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// Byte offsets of the kernel struct members the programs read, computed in userspace from
/// the running kernel's BTF (`/sys/kernel/btf/vmlinux`) and set as a read-only global before
/// load. A field is used only when its group's bit is set in `flags`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// Which groups of offsets are valid: [`OFFSETS_SOCK`] | [`OFFSETS_NETNS`] |
    /// [`OFFSETS_LEADER`] | [`OFFSETS_SOCK_STATE`] | [`OFFSETS_FILES`].
    pub flags: u32,
    /// `struct sock`: `__sk_common.skc_family` (`unsigned short`).
    pub sk_family: u32,
    /// `struct sock`: `sk_protocol` (`u16`).
    pub sk_protocol: u32,
    /// `struct inet_sock`: `inet_sport` (`__be16`); `struct sock` is its first member.
    pub inet_sport: u32,
    /// `struct sock`: `__sk_common.skc_dport` (`__be16`).
    pub sk_dport: u32,
    /// `struct inet_sock`: `inet_saddr` (`__be32`).
    pub inet_saddr: u32,
    /// `struct sock`: `__sk_common.skc_daddr` (`__be32`).
    pub sk_daddr: u32,
    /// `struct sock`: `__sk_common.skc_v6_rcv_saddr` (`struct in6_addr`).
    pub sk_v6_rcv_saddr: u32,
    /// `struct sock`: `__sk_common.skc_v6_daddr` (`struct in6_addr`).
    pub sk_v6_daddr: u32,
    /// `struct sock`: `__sk_common.skc_net.net` (`struct net *`).
    pub sk_net: u32,
    /// `struct net`: `ns.inum` (`unsigned int`), the namespace's inode number.
    pub net_inum: u32,
    /// `struct task_struct`: `group_leader` (`struct task_struct *`).
    pub task_group_leader: u32,
    /// `struct task_struct`: `comm` (`char[16]`).
    pub task_comm: u32,
    /// `struct sock`: `sk_lock.owned` (`int`), what `sock_owned_by_user()` reads.
    pub sk_lock_owned: u32,
    /// `struct sock`: `__sk_common.skc_flags` (`unsigned long`, bits of `enum sock_flags`),
    /// which the kernel names `sk_flags`.
    pub sk_flags: u32,
    /// `struct file`: `f_inode` (`struct inode *`).
    pub file_inode: u32,
    /// `struct inode`: `i_mode` (`umode_t`, 2 bytes).
    pub inode_mode: u32,
    /// `struct inode`: `i_ino` (`unsigned long`).
    pub inode_ino: u32,
    /// `struct task_struct`: `tgid` (`pid_t`).
    pub task_tgid: u32,
    /// `struct inode`: `i_sb` (`struct super_block *`).
    pub inode_sb: u32,
    /// `struct super_block`: `s_magic` (`unsigned long`).
    pub sb_magic: u32,
    /// `struct inet_connection_sock`: `icsk_ulp_ops` (`const struct tcp_ulp_ops *`); `struct
    /// sock` is its first member, so this is an offset from the socket pointer.
    pub icsk_ulp_ops: u32,
    /// `struct task_struct`: `flags` (`unsigned int`, `PF_*` bits).
    pub task_flags: u32,
}

/// One `sock:inet_sock_set_state` firing, as the eBPF program hands it to userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpStateEvent {
    /// `bpf_ktime_get_ns()`: monotonic clock (`CLOCK_MONOTONIC`), nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the `struct sock`: identifies the socket while it lives.
    pub skaddr: u64,
    /// Local address, network byte order. IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    /// Remote address, network byte order. IPv4 uses the first 4 bytes.
    pub daddr: [u8; 16],
    /// Thread group id (the "PID") of the task running when the transition fired.
    pub tgid: u32,
    /// Thread id of that task.
    pub tid: u32,
    /// Previous state (`TCP_*` number, as the kernel's `int oldstate`).
    pub oldstate: u32,
    /// New state.
    pub newstate: u32,
    /// Local port, host byte order.
    pub sport: u16,
    /// Remote port, host byte order.
    pub dport: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// `IPPROTO_*` of the socket.
    pub protocol: u16,
    /// CPU the program ran on (Linux numbers at most 8,192 CPUs).
    pub cpu: u16,
    /// What the socket said of itself: [`SOCK_OWNED_READ`] | [`SOCK_OWNED`] |
    /// [`SOCK_PEER_FIN_READ`] | [`SOCK_PEER_FIN`] | [`SOCK_ORPHAN_READ`] | [`SOCK_ORPHAN`] |
    /// [`SOCK_ULP_READ`] | [`SOCK_ULP`], and of the task holding its lock:
    /// [`SOCK_KTHREAD_READ`] | [`SOCK_KTHREAD`]; 0 when the kernel's BTF did not give the
    /// offsets ([`OFFSETS_SOCK_STATE`]).
    pub sock: u16,
    /// Inode number of the socket's network namespace (as in `/proc/PID/ns/net`); 0 when
    /// the kernel's BTF did not give the offsets.
    pub netns: u32,
    /// `comm` of the running task's thread-group leader (the process name), NUL padded; the
    /// thread's own name when the kernel's BTF did not give the offsets.
    pub comm: [u8; COMM_LEN],
    /// `comm` of the running thread, NUL padded.
    pub thread: [u8; COMM_LEN],
}

/// Size in bytes of [`TcpStateEvent`] on both sides.
pub const EVENT_SIZE: usize = core::mem::size_of::<TcpStateEvent>();

const _: () = assert!(EVENT_SIZE == 112);
const _: () = assert!(core::mem::size_of::<KernelOffsets>() == 92);
const _: () = assert!(core::mem::align_of::<TcpStateEvent>() == 8);

#[cfg(feature = "user")]
// SAFETY: `TcpStateEvent` is `repr(C)`, `Copy`, has no implicit padding (checked by the size
// assertion above) and every bit pattern is a valid value.
unsafe impl aya::Pod for TcpStateEvent {}

#[cfg(feature = "user")]
// SAFETY: `KernelOffsets` is `repr(C)`, `Copy`, made only of `u32`s (no padding), and every
// bit pattern is a valid value.
unsafe impl aya::Pod for KernelOffsets {}
