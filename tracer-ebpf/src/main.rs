//! One tracepoint program on `sock:inet_sock_set_state` that copies every matching transition
//! into a ring buffer. Filters are read-only globals set by the loader, plus a port bitmap; a
//! failed ring buffer reservation is counted per CPU so userspace can report it.
//!
//! It runs inside every TCP state change of the machine, so it is kept short: the port test
//! is one array lookup (inlined by the verifier), and the record is written in place in the
//! ring buffer (no copy through the stack).
#![no_std]
#![no_main]

// Why a connection ended: the programs on the reset and error-report tracepoints.
mod cause;

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::bpf_get_current_comm,
    },
    macros::{map, tracepoint},
    maps::{Array, PerCpuArray, RingBuf},
    programs::TracePointContext,
    EbpfContext as _,
};
use aya_log_ebpf::warn;
use tracer_common::{
    ipv4_on_wire, tracepoint as tp, TcpStateEvent, AF_INET, COMM_LEN, DEFAULT_RING_BUFFER_BYTES,
    PORT_BITMAP_WORDS, STAT_RINGBUF_FULL, STAT_SLOTS,
};

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

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BUFFER_BYTES, 0);

#[map(name = "STATS")]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// Bit `port % 64` of word `port / 64` is set for each port to keep.
#[map(name = "PORTS")]
static PORTS: Array<u64> = Array::with_max_entries(PORT_BITMAP_WORDS, 0);

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    try_inet_sock_set_state(&ctx).unwrap_or(0)
}

/// Reads a field of the tracepoint record straight from the context (tracepoint contexts are
/// readable in place; every offset used here is naturally aligned for its type).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the verifier checks that the read stays inside the tracepoint record.
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

#[inline(always)]
fn read_global<T: Copy>(global: &T) -> T {
    // SAFETY: a volatile read keeps the compiler from folding the loader-set value.
    unsafe { core::ptr::read_volatile(global) }
}

fn try_inet_sock_set_state(ctx: &TracePointContext) -> Result<u32, i64> {
    let protocol: u16 = field(ctx, tp::PROTOCOL.offset);
    let want_protocol = read_global(&FILTER_PROTOCOL);
    if want_protocol != 0 && protocol != want_protocol {
        return Ok(0);
    }
    let family: u16 = field(ctx, tp::FAMILY.offset);
    let want_family = read_global(&FILTER_FAMILY);
    if want_family != 0 && !family_wanted(ctx, family, want_family) {
        return Ok(0);
    }
    let sport: u16 = field(ctx, tp::SPORT.offset);
    let dport: u16 = field(ctx, tp::DPORT.offset);
    if read_global(&FILTER_PORTS) != 0 && !port_wanted(sport) && !port_wanted(dport) {
        return Ok(0);
    }

    let Some(mut entry) = EVENTS.reserve::<TcpStateEvent>(0) else {
        count_drop(ctx);
        return Ok(0);
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    // Addresses are copied as aligned words: the verifier rejects byte loops over the context.
    let (saddr, daddr) = if family == AF_INET {
        (
            addr(u64::from(field::<u32>(ctx, tp::SADDR.offset)), 0),
            addr(u64::from(field::<u32>(ctx, tp::DADDR.offset)), 0),
        )
    } else {
        (
            addr(
                field(ctx, tp::SADDR_V6.offset),
                field(ctx, tp::SADDR_V6.offset + 8),
            ),
            addr(
                field(ctx, tp::DADDR_V6.offset),
                field(ctx, tp::DADDR_V6.offset + 8),
            ),
        )
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, writable record of the ring buffer, sized and
    // aligned for a `TcpStateEvent`; every field is written before it is submitted.
    unsafe {
        (*event).ts_ns = bpf_ktime_get_ns();
        (*event).skaddr = field::<u64>(ctx, tp::SKADDR.offset);
        (*event).saddr = saddr;
        (*event).daddr = daddr;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).tid = pid_tgid as u32;
        (*event).oldstate = field::<i32>(ctx, tp::OLDSTATE.offset) as u32;
        (*event).newstate = field::<i32>(ctx, tp::NEWSTATE.offset) as u32;
        (*event).sport = sport;
        (*event).dport = dport;
        (*event).family = family;
        (*event).protocol = protocol;
        (*event).cpu = bpf_get_smp_processor_id();
        (*event).pad = 0;
        // The helper writes the NUL-padded name straight into the record; on failure it
        // zeroes the buffer.
        let comm = core::ptr::addr_of_mut!((*event).comm);
        bpf_get_current_comm(comm.cast(), COMM_LEN as u32);
    }
    entry.submit(0);
    Ok(0)
}

/// The family filter on what is on the wire: `-4` (`AF_INET`) also keeps `AF_INET6` sockets
/// with v4-mapped addresses, `-6` keeps only the other `AF_INET6` ones
/// ([`tracer_common::ipv4_on_wire`], the definition userspace uses too).
#[inline(always)]
fn family_wanted(ctx: &TracePointContext, family: u16, want: u16) -> bool {
    let v4 = family == AF_INET
        || ipv4_on_wire(
            family,
            (
                field(ctx, tp::SADDR_V6.offset),
                field(ctx, tp::SADDR_V6.offset + 8),
            ),
            (
                field(ctx, tp::DADDR_V6.offset),
                field(ctx, tp::DADDR_V6.offset + 8),
            ),
        );
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
fn count_drop(ctx: &TracePointContext) {
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
