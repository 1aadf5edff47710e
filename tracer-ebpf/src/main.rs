//! One tracepoint program on `sock:inet_sock_set_state` that copies every matching transition
//! into a ring buffer. Filters are read-only globals set by the loader, plus a port set; a
//! failed ring buffer reservation is counted per CPU so userspace can report it.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
    EbpfContext as _,
};
use aya_log_ebpf::warn;
use tracer_common::{
    TcpStateEvent, AF_INET, DEFAULT_RING_BUFFER_BYTES, MAX_PORTS, STAT_RINGBUF_FULL, STAT_SLOTS,
};

// Offsets in the tracepoint record (/sys/kernel/tracing/events/sock/inet_sock_set_state/format).
// This record layout has been stable since the tracepoint appeared in Linux 4.16.
const OFF_SKADDR: usize = 8;
const OFF_OLDSTATE: usize = 16;
const OFF_NEWSTATE: usize = 20;
const OFF_SPORT: usize = 24;
const OFF_DPORT: usize = 26;
const OFF_FAMILY: usize = 28;
const OFF_PROTOCOL: usize = 30;
const OFF_SADDR: usize = 32;
const OFF_DADDR: usize = 36;
const OFF_SADDR_V6: usize = 40;
const OFF_DADDR_V6: usize = 56;

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

#[map(name = "PORTS")]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORTS, 0);

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
    let protocol: u16 = field(ctx, OFF_PROTOCOL);
    let want_protocol = read_global(&FILTER_PROTOCOL);
    if want_protocol != 0 && protocol != want_protocol {
        return Ok(0);
    }
    let family: u16 = field(ctx, OFF_FAMILY);
    let want_family = read_global(&FILTER_FAMILY);
    if want_family != 0 && family != want_family {
        return Ok(0);
    }
    let sport: u16 = field(ctx, OFF_SPORT);
    let dport: u16 = field(ctx, OFF_DPORT);
    if read_global(&FILTER_PORTS) != 0 {
        // SAFETY: the value is only tested for presence.
        let hit = unsafe { PORTS.get(sport).is_some() || PORTS.get(dport).is_some() };
        if !hit {
            return Ok(0);
        }
    }

    let Some(mut entry) = EVENTS.reserve::<TcpStateEvent>(0) else {
        count_drop(ctx);
        return Ok(0);
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    // Addresses are copied as aligned words: the verifier rejects byte loops over the context.
    let (saddr, daddr) = if family == AF_INET {
        (
            addr(u64::from(field::<u32>(ctx, OFF_SADDR)), 0),
            addr(u64::from(field::<u32>(ctx, OFF_DADDR)), 0),
        )
    } else {
        (
            addr(field(ctx, OFF_SADDR_V6), field(ctx, OFF_SADDR_V6 + 8)),
            addr(field(ctx, OFF_DADDR_V6), field(ctx, OFF_DADDR_V6 + 8)),
        )
    };
    entry.write(TcpStateEvent {
        // SAFETY: plain helper calls without arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        skaddr: field::<u64>(ctx, OFF_SKADDR),
        saddr,
        daddr,
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        oldstate: field::<i32>(ctx, OFF_OLDSTATE) as u32,
        newstate: field::<i32>(ctx, OFF_NEWSTATE) as u32,
        sport,
        dport,
        family,
        protocol,
        // SAFETY: plain helper call without arguments.
        cpu: unsafe { bpf_get_smp_processor_id() },
        pad: 0,
        comm: bpf_get_current_comm().unwrap_or_default(),
    });
    entry.submit(0);
    Ok(0)
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
