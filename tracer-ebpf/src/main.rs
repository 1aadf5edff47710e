//! The programs on `sock:inet_sock_set_state` that copy every matching transition into a ring
//! buffer: a BTF-enabled raw tracepoint (`tp_btf`) that reads the `struct sock` the kernel
//! hands it, at offsets userspace computed from the kernel's BTF, and the classic tracepoint,
//! which reads the record the kernel builds for the tracepoint (the fallback where `tp_btf` is
//! refused). Userspace loads one of them. Filters are read-only globals set by the loader,
//! plus a port bitmap; a failed ring buffer reservation is counted per CPU so userspace can
//! report it.
//!
//! They run inside every TCP state change of the machine, so they are kept short: the port
//! test is one array lookup (inlined by the verifier), and the record is written in place in
//! the ring buffer (no copy through the stack).
#![no_std]
#![no_main]

// Why a connection ended: the programs on the reset and error-report tracepoints.
mod cause;
// `--track-reads`: the program on `sock:sock_recv_length`.
mod reads;
// The owner lookups' walk of every socket descriptor: the `iter/task_file` program.
mod files;

use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::{bpf_get_current_comm, bpf_get_current_task, bpf_probe_read_kernel},
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{Array, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use tracer_common::{
    ipv4_on_wire, tracepoint as tp, KernelOffsets, TcpStateEvent, AF_INET, COMM_LEN,
    DEFAULT_RING_BUFFER_BYTES, OFFSETS_LEADER, OFFSETS_NETNS, OFFSETS_SOCK_STATE, PF_KTHREAD,
    PORT_BITMAP_WORDS, SOCK_DEAD_BIT, SOCK_DONE_BIT, SOCK_KTHREAD, SOCK_KTHREAD_READ, SOCK_ORPHAN,
    SOCK_ORPHAN_READ, SOCK_OWNED, SOCK_OWNED_READ, SOCK_PEER_FIN, SOCK_PEER_FIN_READ, SOCK_ULP,
    SOCK_ULP_READ, STAT_RINGBUF_FULL, STAT_RUNS, STAT_SLOTS,
};

/// `TCP_FIN_WAIT2` and `TCP_CLOSE` (`include/net/tcp_states.h`).
const TCP_FIN_WAIT2: i32 = 5;
const TCP_CLOSE: i32 = 7;

// Where each field sits in the tracepoint record (`tp::SKADDR.offset`, ...): one definition,
// shared with the test that checks it against the running kernel's format file. Each read below
// is as wide as the field:
const _: () = {
    use core::mem::size_of;
    assert!(tp::SKADDR.size == size_of::<u64>());
    assert!(tp::OLDSTATE.size == size_of::<i32>() && tp::NEWSTATE.size == size_of::<i32>());
    assert!(tp::SPORT.size == size_of::<u16>() && tp::DPORT.size == size_of::<u16>());
    assert!(tp::FAMILY.size == size_of::<u16>() && tp::PROTOCOL.size == size_of::<u16>());
    assert!(tp::SADDR.size == size_of::<u32>() && tp::DADDR.size == size_of::<u32>());
    assert!(tp::SADDR_V6.size == 2 * size_of::<u64>() && tp::DADDR_V6.size == 2 * size_of::<u64>());
};

#[no_mangle]
static FILTER_FAMILY: u16 = 0;
#[no_mangle]
static FILTER_PROTOCOL: u16 = tracer_common::IPPROTO_TCP;
#[no_mangle]
static FILTER_PORTS: u8 = 0;
#[no_mangle]
static FILTER_NETNS: u32 = 0;
/// Struct member offsets from the kernel's BTF; all zero (no flag set) until the loader sets them.
#[no_mangle]
static OFFSETS: KernelOffsets = KernelOffsets {
    flags: 0,
    sk_family: 0,
    sk_protocol: 0,
    inet_sport: 0,
    sk_dport: 0,
    inet_saddr: 0,
    sk_daddr: 0,
    sk_v6_rcv_saddr: 0,
    sk_v6_daddr: 0,
    sk_net: 0,
    net_inum: 0,
    task_group_leader: 0,
    task_comm: 0,
    sk_lock_owned: 0,
    sk_flags: 0,
    file_inode: 0,
    inode_mode: 0,
    inode_ino: 0,
    task_tgid: 0,
    inode_sb: 0,
    sb_magic: 0,
    icsk_ulp_ops: 0,
    task_flags: 0,
};

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BUFFER_BYTES, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// Bit `port % 64` of word `port / 64` is set for each port to keep.
#[map(name = "PORTS")]
static PORTS: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    try_classic(&ctx).unwrap_or(0)
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state_btf(ctx: BtfTracePointContext) -> i32 {
    try_btf(&ctx).map_or(0, |r| r as i32)
}

/// The values both programs read before deciding to keep a transition.
struct Head {
    skaddr: u64,
    oldstate: i32,
    newstate: i32,
    sport: u16,
    dport: u16,
    family: u16,
    protocol: u16,
}

/// Where a program finds the socket's addresses.
trait Addrs {
    /// The local and remote IPv6 addresses as two words each, in memory order.
    fn v6(&self) -> ((u64, u64), (u64, u64));
    /// The local and remote addresses, 16 bytes each (IPv4 in the first four).
    fn both(&self, family: u16) -> ([u8; 16], [u8; 16]);
    /// A field of the socket, or of a struct the socket points to (`base` read from the
    /// socket by this same method), at a loader-set offset. The classic program reads it with
    /// a helper (`None` if that fails); the `tp_btf` program loads it directly, which always
    /// gives a value (a faulting load reads as zero, for a live socket it never faults).
    fn field_of<T: Copy + Default>(&self, base: u64, offset: u32) -> Option<T>;
    /// The socket's address.
    fn sk(&self) -> u64;
}

/// Reads a field of the tracepoint record straight from the context (tracepoint contexts are
/// readable in place; every offset used here is naturally aligned for its type).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the verifier checks that the read stays inside the tracepoint record.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// Reads a `T` of kernel memory at `base + offset`; zero when the read faults.
#[inline(always)]
fn kernel<T: Copy + Default>(base: u64, offset: u32) -> T {
    try_kernel(base, offset).unwrap_or_default()
}

/// Reads a `T` of kernel memory at `base + offset`; `None` when the read faults.
#[inline(always)]
fn try_kernel<T: Copy + Default>(base: u64, offset: u32) -> Option<T> {
    let mut value = T::default();
    // SAFETY: the helper checks the source address and writes at most `size_of::<T>()` bytes
    // into `value`.
    let status = unsafe {
        bpf_probe_read_kernel(
            core::ptr::addr_of_mut!(value).cast(),
            core::mem::size_of::<T>() as u32,
            (base + u64::from(offset)) as *const c_void,
        )
    };
    (status == 0).then_some(value)
}

#[inline(always)]
fn read_global<T: Copy>(global: &T) -> T {
    // SAFETY: a volatile read keeps the compiler from folding the loader-set value.
    unsafe { core::ptr::read_volatile(global) }
}

/// The classic tracepoint's record. Addresses are copied as aligned words: the verifier
/// rejects byte loops over the context.
struct Record<'a>(&'a TracePointContext);

impl Addrs for Record<'_> {
    #[inline(always)]
    fn v6(&self) -> ((u64, u64), (u64, u64)) {
        let ctx = self.0;
        (
            (
                field(ctx, tp::SADDR_V6.offset),
                field(ctx, tp::SADDR_V6.offset + 8),
            ),
            (
                field(ctx, tp::DADDR_V6.offset),
                field(ctx, tp::DADDR_V6.offset + 8),
            ),
        )
    }

    #[inline(always)]
    fn both(&self, family: u16) -> ([u8; 16], [u8; 16]) {
        let ctx = self.0;
        if family == AF_INET {
            (
                addr(u64::from(field::<u32>(ctx, tp::SADDR.offset)), 0),
                addr(u64::from(field::<u32>(ctx, tp::DADDR.offset)), 0),
            )
        } else {
            let (s, d) = self.v6();
            (addr(s.0, s.1), addr(d.0, d.1))
        }
    }

    #[inline(always)]
    fn field_of<T: Copy + Default>(&self, base: u64, offset: u32) -> Option<T> {
        try_kernel(base, offset)
    }

    #[inline(always)]
    fn sk(&self) -> u64 {
        field(self.0, tp::SKADDR.offset)
    }
}

/// The `struct sock` a `tp_btf` program is handed, read at the loader's offsets, with the
/// IPv4 addresses already read along with the ports.
struct Sock {
    sk: u64,
    saddr: u32,
    daddr: u32,
}

impl Addrs for Sock {
    #[inline(always)]
    fn v6(&self) -> ((u64, u64), (u64, u64)) {
        let s = read_global(&OFFSETS.sk_v6_rcv_saddr);
        let d = read_global(&OFFSETS.sk_v6_daddr);
        (
            (direct(self.sk, s), direct(self.sk, s + 8)),
            (direct(self.sk, d), direct(self.sk, d + 8)),
        )
    }

    #[inline(always)]
    fn both(&self, family: u16) -> ([u8; 16], [u8; 16]) {
        if family == AF_INET {
            (
                addr(u64::from(self.saddr), 0),
                addr(u64::from(self.daddr), 0),
            )
        } else {
            let (s, d) = self.v6();
            (addr(s.0, s.1), addr(d.0, d.1))
        }
    }

    #[inline(always)]
    fn field_of<T: Copy + Default>(&self, base: u64, offset: u32) -> Option<T> {
        Some(direct(base, offset))
    }

    #[inline(always)]
    fn sk(&self) -> u64 {
        self.sk
    }
}

fn try_classic(ctx: &TracePointContext) -> Result<u32, i64> {
    let head = Head {
        skaddr: field(ctx, tp::SKADDR.offset),
        oldstate: field(ctx, tp::OLDSTATE.offset),
        newstate: field(ctx, tp::NEWSTATE.offset),
        sport: field(ctx, tp::SPORT.offset),
        dport: field(ctx, tp::DPORT.offset),
        family: field(ctx, tp::FAMILY.offset),
        protocol: field(ctx, tp::PROTOCOL.offset),
    };
    emit(ctx, &head, &Record(ctx))
}

/// Reads the same socket fields the kernel copies into the classic tracepoint's record
/// (`include/trace/events/sock.h`), so both programs report identical transitions.
///
/// The socket's own fields are loaded straight through the BTF-typed pointer the kernel hands
/// the program: the offsets are read-only globals the verifier knows as constants, so each
/// load is checked against `struct sock`'s BTF and runs as one instruction, not a helper call
/// (the source address and port, in `struct inet_sock`, take one helper read together).
fn try_btf(ctx: &BtfTracePointContext) -> Result<u32, i64> {
    let sk: u64 = ctx.arg::<*const c_void>(0) as u64;
    let (saddr, sport) = inet_source(sk);
    let head = Head {
        skaddr: sk,
        oldstate: ctx.arg(1),
        newstate: ctx.arg(2),
        sport,
        dport: u16::from_be(direct(sk, read_global(&OFFSETS.sk_dport))),
        family: direct(sk, read_global(&OFFSETS.sk_family)),
        protocol: direct(sk, read_global(&OFFSETS.sk_protocol)),
    };
    let sock = Sock {
        sk,
        saddr,
        daddr: direct(sk, read_global(&OFFSETS.sk_daddr)),
    };
    emit(ctx, &head, &sock)
}

/// `inet_saddr` and `inet_sport` (host order), members of `struct inet_sock`, beyond the
/// `struct sock` the verifier lets the program load from directly: one 16-byte read where the
/// port is within 14 bytes after the address (the TTL, and before 6.x the cmsg flags, sit
/// between), else two.
#[inline(always)]
fn inet_source(sk: u64) -> (u32, u16) {
    let saddr_at = read_global(&OFFSETS.inet_saddr);
    let sport_at = read_global(&OFFSETS.inet_sport);
    if sport_at > saddr_at && sport_at - saddr_at <= 14 {
        let delta = sport_at - saddr_at;
        let w: [u64; 2] = kernel(sk, saddr_at);
        let port = if delta < 8 {
            w[0] >> (8 * delta)
        } else {
            w[1] >> (8 * (delta - 8))
        };
        return (w[0] as u32, u16::from_be(port as u16));
    }
    (kernel(sk, saddr_at), u16::from_be(kernel(sk, sport_at)))
}

/// A load through a BTF-typed pointer of the `tp_btf` program (its `struct sock *`, or a
/// pointer loaded from it) at a loader-set offset.
#[inline(always)]
fn direct<T: Copy>(base: u64, offset: u32) -> T {
    // SAFETY: `base` is a verifier-typed kernel pointer; the verifier checks the load against
    // the struct's BTF (the offset is a constant it knows) and the kernel turns a fault into
    // a zero.
    unsafe { core::ptr::read_volatile((base + u64::from(offset)) as *const T) }
}

/// The socket's network namespace inode, 0 when the offsets are unknown.
#[inline(always)]
fn netns_of(addrs: &impl Addrs, flags: u32) -> u32 {
    if flags & OFFSETS_NETNS == 0 {
        return 0;
    }
    let net: u64 = addrs
        .field_of(addrs.sk(), read_global(&OFFSETS.sk_net))
        .unwrap_or(0);
    if net == 0 {
        0
    } else {
        addrs
            .field_of(net, read_global(&OFFSETS.net_inum))
            .unwrap_or(0)
    }
}

/// What the socket says of itself ([`TcpStateEvent::sock`]): whether a task holds its lock
/// (one read on every transition) and, when one does and it leads its thread group, whether it
/// is a kernel thread (one more: a thread of a process is none); on transitions to CLOSE only,
/// two more: whether the socket was orphaned and, after FIN_WAIT2, whether the peer's FIN
/// arrived (one flag word), and whether an upper layer protocol (an MPTCP subflow's, kernel
/// TLS) is attached. 0 when the offsets are unknown.
#[inline(always)]
fn sock_state_of(head: &Head, addrs: &impl Addrs, flags: u32, leader: bool) -> u16 {
    if flags & OFFSETS_SOCK_STATE == 0 {
        return 0;
    }
    let mut bits = 0;
    if let Some(owned) = addrs.field_of::<i32>(addrs.sk(), read_global(&OFFSETS.sk_lock_owned)) {
        bits |= SOCK_OWNED_READ;
        if owned != 0 {
            bits |= SOCK_OWNED | kthread_bits(flags, leader);
        }
    }
    if head.newstate == TCP_CLOSE {
        if let Some(sk_flags) = addrs.field_of::<u64>(addrs.sk(), read_global(&OFFSETS.sk_flags)) {
            bits |= SOCK_ORPHAN_READ;
            if sk_flags & (1 << SOCK_DEAD_BIT) != 0 {
                bits |= SOCK_ORPHAN;
            }
            if head.oldstate == TCP_FIN_WAIT2 {
                bits |= SOCK_PEER_FIN_READ;
                if sk_flags & (1 << SOCK_DONE_BIT) != 0 {
                    bits |= SOCK_PEER_FIN;
                }
            }
        }
        // A member of `struct inet_connection_sock`, beyond the `struct sock` the `tp_btf`
        // program may load from directly: a helper read on both hooks.
        if let Some(ulp) = try_kernel::<u64>(addrs.sk(), read_global(&OFFSETS.icsk_ulp_ops)) {
            bits |= SOCK_ULP_READ;
            if ulp != 0 {
                bits |= SOCK_ULP;
            }
        }
    }
    bits
}

/// Whether the running task is a kernel thread ([`SOCK_KTHREAD_READ`] | [`SOCK_KTHREAD`]): one
/// that does not lead its thread group is not; a leader's `PF_KTHREAD` flag is read. 0 when
/// the task offsets are unknown or the read fails.
#[inline(always)]
fn kthread_bits(flags: u32, leader: bool) -> u16 {
    if !leader {
        return SOCK_KTHREAD_READ;
    }
    if flags & OFFSETS_LEADER == 0 {
        return 0;
    }
    // SAFETY: a helper call without arguments.
    let task = unsafe { bpf_get_current_task() };
    match try_kernel::<u32>(task, read_global(&OFFSETS.task_flags)) {
        Some(f) if f & PF_KTHREAD != 0 => SOCK_KTHREAD_READ | SOCK_KTHREAD,
        Some(_) => SOCK_KTHREAD_READ,
        None => 0,
    }
}

/// Applies the filters, then reserves, fills and submits one record.
#[inline(always)]
fn emit<C: EbpfContext>(ctx: &C, head: &Head, addrs: &impl Addrs) -> Result<u32, i64> {
    if let Some(runs) = STATS.get_ptr_mut(STAT_RUNS) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *runs += 1 };
    }
    let want_protocol = read_global(&FILTER_PROTOCOL);
    if want_protocol != 0 && head.protocol != want_protocol {
        return Ok(0);
    }
    let want_family = read_global(&FILTER_FAMILY);
    if want_family != 0 && !family_wanted(addrs, head.family, want_family) {
        return Ok(0);
    }
    if read_global(&FILTER_PORTS) != 0 && !port_wanted(head.sport) && !port_wanted(head.dport) {
        return Ok(0);
    }
    let flags = read_global(&OFFSETS.flags);
    let netns = netns_of(addrs, flags);
    let want_netns = read_global(&FILTER_NETNS);
    if want_netns != 0 && netns != want_netns {
        return Ok(0);
    }

    let Some(mut entry) = EVENTS.reserve::<TcpStateEvent>(0) else {
        count_drop(ctx);
        return Ok(0);
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let (saddr, daddr) = addrs.both(head.family);
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, writable record of the ring buffer, sized and
    // aligned for a `TcpStateEvent`; every field is written before it is submitted.
    unsafe {
        (*event).ts_ns = bpf_ktime_get_ns();
        (*event).skaddr = head.skaddr;
        (*event).saddr = saddr;
        (*event).daddr = daddr;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).tid = pid_tgid as u32;
        (*event).oldstate = head.oldstate as u32;
        (*event).newstate = head.newstate as u32;
        (*event).sport = head.sport;
        (*event).dport = head.dport;
        (*event).family = head.family;
        (*event).protocol = head.protocol;
        // Linux numbers at most 8,192 CPUs: the id fits.
        (*event).cpu = bpf_get_smp_processor_id() as u16;
        (*event).sock = sock_state_of(head, addrs, flags, (*event).tgid == (*event).tid);
        (*event).netns = netns;
        // The helper writes the NUL-padded name straight into the record; on failure it
        // zeroes the buffer.
        let thread = core::ptr::addr_of_mut!((*event).thread);
        bpf_get_current_comm(thread.cast(), COMM_LEN as u32);
        let comm = core::ptr::addr_of_mut!((*event).comm);
        // A task that leads its thread group (a single-threaded process, the idle task under
        // a softirq) carries the process's name itself: no read of the leader's.
        let leader_read = if (*event).tgid == (*event).tid {
            -1
        } else if flags & OFFSETS_LEADER != 0 {
            let leader: u64 = kernel(
                bpf_get_current_task(),
                read_global(&OFFSETS.task_group_leader),
            );
            bpf_probe_read_kernel(
                comm.cast(),
                COMM_LEN as u32,
                (leader + u64::from(read_global(&OFFSETS.task_comm))) as *const c_void,
            )
        } else {
            -1
        };
        if leader_read != 0 {
            *comm = *thread;
        }
    }
    entry.submit(0);
    Ok(0)
}

/// The family filter on what is on the wire: `-4` (`AF_INET`) also keeps `AF_INET6` sockets
/// with v4-mapped addresses, `-6` keeps only the other `AF_INET6` ones
/// ([`tracer_common::ipv4_on_wire`], the definition userspace uses too).
#[inline(always)]
fn family_wanted(addrs: &impl Addrs, family: u16, want: u16) -> bool {
    let v4 = family == AF_INET || {
        let (s, d) = addrs.v6();
        ipv4_on_wire(family, s, d)
    };
    if want == AF_INET {
        v4
    } else {
        !v4
    }
}

/// Is `port` in the port bitmap?
#[inline(always)]
fn port_wanted(port: u16) -> bool {
    PORTS
        .get(u32::from(port / 64))
        .is_some_and(|word| word & (1u64 << (port % 64)) != 0)
}

/// 16 address bytes from two words read in memory order (a `u32` IPv4 address widens into
/// the first four bytes on this little-endian target).
#[inline(always)]
fn addr(lo: u64, hi: u64) -> [u8; 16] {
    let lo = lo.to_ne_bytes();
    let hi = hi.to_ne_bytes();
    [
        lo[0], lo[1], lo[2], lo[3], lo[4], lo[5], lo[6], lo[7], hi[0], hi[1], hi[2], hi[3], hi[4],
        hi[5], hi[6], hi[7],
    ]
}

/// Counts a lost event; the first loss on each CPU is also logged through aya-log.
#[inline(never)]
fn count_drop<C: EbpfContext>(ctx: &C) {
    if let Some(slot) = STATS.get_ptr_mut(STAT_RINGBUF_FULL) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        let previous = unsafe { *slot };
        unsafe { *slot = previous + 1 };
        if previous == 0 {
            warn!(
                ctx,
                "ring buffer full: events are being dropped and counted"
            );
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
