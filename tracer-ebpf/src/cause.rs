//! Why a connection ended: three small programs on the kernel's stable tracepoints
//! `tcp:tcp_send_reset`, `tcp:tcp_receive_reset` and `sock:inet_sk_error_report`, each copying
//! one [`CauseEvent`] into the ring buffer the transitions use (so the order between a socket's
//! transition to CLOSE and its cause is kept). Userspace attaches each only where the kernel
//! has it. They fire only when a connection is reset or fails, so they carry no filters but
//! the protocol.
//!
//! Uses the crate root's `EVENTS` ring buffer, nothing else of it.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::PerCpuArray,
    programs::TracePointContext,
    EbpfContext as _,
};
use tracer_common::{
    cause::{
        error_report as er, receive_reset, send_reset, CauseEvent, CAUSE_ERROR_REPORT,
        CAUSE_RECEIVED_RESET, CAUSE_SENT_RESET,
    },
    AF_INET, IPPROTO_TCP,
};

use crate::EVENTS;

/// Causes lost because the ring buffer was full, per CPU (one slot): counted apart from the
/// transitions, so the transition counts stay exact whatever else happens on the machine.
/// Named as `tracer_common::cause::CAUSE_STATS_MAP`.
#[map(name = "CAUSE_STATS")]
static CAUSE_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

// Each read is as wide as the field it reads (the IPv6 addresses as four 4-byte words: the
// error report's are only 4-byte aligned, and tracepoint context reads must be aligned).
const _: () = {
    use core::mem::size_of;
    assert!(send_reset::SKADDR.size == size_of::<u64>());
    assert!(receive_reset::SKADDR.size == size_of::<u64>());
    assert!(er::ERROR.size == size_of::<i32>());
    assert!(er::SPORT.size == size_of::<u16>() && er::DPORT.size == size_of::<u16>());
    assert!(er::FAMILY.size == size_of::<u16>() && er::PROTOCOL.size == size_of::<u16>());
    assert!(er::SADDR.size == size_of::<u32>() && er::DADDR.size == size_of::<u32>());
    assert!(er::SADDR_V6.size == 4 * size_of::<u32>());
    assert!(er::DADDR_V6.size == 4 * size_of::<u32>());
    assert!(er::SADDR_V6.offset.is_multiple_of(4) && er::DADDR_V6.offset.is_multiple_of(4));
};

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    reset(&ctx, CAUSE_SENT_RESET, send_reset::SKADDR.offset);
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    reset(&ctx, CAUSE_RECEIVED_RESET, receive_reset::SKADDR.offset);
    0
}

#[tracepoint(category = "sock", name = "inet_sk_error_report")]
pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
    let protocol: u16 = field(&ctx, er::PROTOCOL.offset);
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let family: u16 = field(&ctx, er::FAMILY.offset);
    let (saddr, daddr) = if family == AF_INET {
        (
            words(field(&ctx, er::SADDR.offset), 0, 0, 0),
            words(field(&ctx, er::DADDR.offset), 0, 0, 0),
        )
    } else {
        (v6(&ctx, er::SADDR_V6.offset), v6(&ctx, er::DADDR_V6.offset))
    };
    let Some(mut entry) = EVENTS.reserve::<CauseEvent>(0) else {
        count_drop();
        return 0;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: `event` points at a reserved, writable record of the ring buffer, sized and
    // aligned for a `CauseEvent`; every field is written before it is submitted.
    unsafe {
        common(event, CAUSE_ERROR_REPORT, 0);
        (*event).saddr = saddr;
        (*event).daddr = daddr;
        (*event).error = field(&ctx, er::ERROR.offset);
        (*event).sport = field(&ctx, er::SPORT.offset);
        (*event).dport = field(&ctx, er::DPORT.offset);
        (*event).family = family;
    }
    entry.submit(0);
    0
}

/// A reset sent or received on the socket at `skaddr` (the field at `offset`); a reset with no
/// socket (an answer to a stray packet) is not copied.
#[inline(always)]
fn reset(ctx: &TracePointContext, kind: u16, offset: usize) {
    let skaddr: u64 = field(ctx, offset);
    if skaddr == 0 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<CauseEvent>(0) else {
        count_drop();
        return;
    };
    let event = entry.as_mut_ptr();
    // SAFETY: as in `inet_sk_error_report`.
    unsafe {
        common(event, kind, skaddr);
        (*event).saddr = [0; 16];
        (*event).daddr = [0; 16];
        (*event).error = 0;
        (*event).sport = 0;
        (*event).dport = 0;
        (*event).family = 0;
    }
    entry.submit(0);
}

/// Fills the fields every cause has.
///
/// # Safety
///
/// `event` must point at a reserved, writable `CauseEvent`.
#[inline(always)]
unsafe fn common(event: *mut CauseEvent, kind: u16, skaddr: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    (*event).ts_ns = bpf_ktime_get_ns();
    (*event).skaddr = skaddr;
    (*event).tgid = (pid_tgid >> 32) as u32;
    (*event).tid = pid_tgid as u32;
    (*event).cpu = bpf_get_smp_processor_id();
    (*event).kind = kind;
}

/// Reads a field of the tracepoint record in place. Volatile: each read stays a load at a
/// constant offset from the context (the verifier rejects loads through a context pointer the
/// compiler moved, as it may when it batches reads into an array).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the verifier checks that the read stays inside the tracepoint record.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// 16 address bytes read as four aligned 4-byte words.
#[inline(always)]
fn v6(ctx: &TracePointContext, offset: usize) -> [u8; 16] {
    let a: u32 = field(ctx, offset);
    let b: u32 = field(ctx, offset + 4);
    let c: u32 = field(ctx, offset + 8);
    let d: u32 = field(ctx, offset + 12);
    words(a, b, c, d)
}

/// Four words read in memory order, as 16 bytes (little-endian target: a word's bytes are in
/// memory order).
#[inline(always)]
fn words(a: u32, b: u32, c: u32, d: u32) -> [u8; 16] {
    let (a, b, c, d) = (
        a.to_ne_bytes(),
        b.to_ne_bytes(),
        c.to_ne_bytes(),
        d.to_ne_bytes(),
    );
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// Counts a cause lost because the ring buffer was full.
#[inline(always)]
fn count_drop() {
    if let Some(slot) = CAUSE_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
}
