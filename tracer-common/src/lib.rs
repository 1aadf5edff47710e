//! Types shared by the eBPF program and userspace.
//!
//! Everything here is `#[repr(C)]`, fixed-width and free of implicit padding, so both sides
//! agree on the layout byte for byte. Userspace never reinterprets these bytes in place: it
//! copies them out with `read_unaligned` and converts them into owned domain types at once.
#![no_std]

pub mod cause;
pub mod tracepoint;

/// Name of the ring buffer map that carries [`TcpStateEvent`]s.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array whose slot [`STAT_RINGBUF_FULL`] counts failed reservations.
pub const STATS_MAP: &str = "STATS";
/// Name of the array of ports to keep when [`FILTER_PORTS_GLOBAL`] is non-zero: a bitmap of
/// [`PORT_BITMAP_WORDS`] `u64` words, bit `port % 64` of word `port / 64`.
pub const PORTS_MAP: &str = "PORTS";
/// Name of the tracepoint program.
pub const PROGRAM: &str = "inet_sock_set_state";

/// Global (read-only data) set before load: address family to keep (0 = all).
pub const FILTER_FAMILY_GLOBAL: &str = "FILTER_FAMILY";
/// Global set before load: protocol to keep (0 = all, 6 = TCP).
pub const FILTER_PROTOCOL_GLOBAL: &str = "FILTER_PROTOCOL";
/// Global set before load: non-zero means keep only ports present in [`PORTS_MAP`].
pub const FILTER_PORTS_GLOBAL: &str = "FILTER_PORTS";

/// Slot of [`STATS_MAP`]: events lost because the ring buffer was full.
pub const STAT_RINGBUF_FULL: u32 = 0;
/// Number of slots in [`STATS_MAP`].
pub const STAT_SLOTS: u32 = 1;
/// Words of the port bitmap in [`PORTS_MAP`]: one bit for each of the 65,536 ports.
pub const PORT_BITMAP_WORDS: u32 = 1024;
/// Default size of the ring buffer in bytes (must be a power of two multiple of the page size).
///
/// Sized from the event rate: full connection churn on two cores makes about 300,000
/// transitions a second, 104 bytes each in the ring (record and header), about 30 MB/s. 8 MiB
/// holds about a quarter of a second of that: the longest the reader may be held off
/// without a loss. The reader maps the ring, so its pages count in the tracer's RSS.
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 8 << 20;

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
    /// CPU the program ran on.
    pub cpu: u32,
    /// Explicit padding; always zero.
    pub pad: u32,
    /// `comm` of the running task, NUL padded.
    pub comm: [u8; COMM_LEN],
}

/// Size in bytes of [`TcpStateEvent`] on both sides.
pub const EVENT_SIZE: usize = core::mem::size_of::<TcpStateEvent>();

const _: () = assert!(EVENT_SIZE == 96);
const _: () = assert!(core::mem::align_of::<TcpStateEvent>() == 8);

#[cfg(feature = "user")]
// SAFETY: `TcpStateEvent` is `repr(C)`, `Copy`, has no implicit padding (checked by the size
// assertion above) and every bit pattern is a valid value.
unsafe impl aya::Pod for TcpStateEvent {}
