//! `--track-reads`: the program on `sock:sock_recv_length` that keeps, per TCP socket, its last
//! successful read (time, process, thread and its name, what it returned) in an LRU hash map
//! keyed by the socket's address. It runs on every socket read of the machine, so it does as
//! little as it can: two field reads and a protocol test for other sockets; for a TCP read, one
//! map lookup and the fields written in place (one insert the first time a socket is read).

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
    EbpfContext as _,
};
use tracer_common::{
    reads::{LastRead, FLAGS, LAST_READS_ENTRIES, PROTOCOL, RET, SK},
    IPPROTO_TCP,
};

const _: () = {
    use core::mem::size_of;
    assert!(SK.size == size_of::<u64>());
    assert!(PROTOCOL.size == size_of::<u16>());
    assert!(RET.size == size_of::<i32>() && FLAGS.size == size_of::<i32>());
};

#[map(name = "LAST_READS")]
static LAST_READS: LruHashMap<u64, LastRead> = LruHashMap::with_max_entries(LAST_READS_ENTRIES, 0);

#[tracepoint(category = "sock", name = "sock_recv_length")]
pub fn sock_recv_length(ctx: TracePointContext) -> u32 {
    let protocol: u16 = field(&ctx, PROTOCOL.offset);
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let ret: i32 = field(&ctx, RET.offset);
    if ret < 0 {
        return 0;
    }
    let sk: u64 = field(&ctx, SK.offset);
    let pid_tgid = bpf_get_current_pid_tgid();
    let read = LastRead {
        // SAFETY: a helper with no arguments, callable from a tracepoint program.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        comm: bpf_get_current_comm().unwrap_or_default(),
        bytes: ret,
        flags: field(&ctx, FLAGS.offset),
    };
    match LAST_READS.get_ptr_mut(sk) {
        // SAFETY: the map hands out a pointer to the entry's value, valid while the program
        // runs; a concurrent reader may see a mix of two reads' fields, which is harmless.
        Some(entry) => unsafe { *entry = read },
        None => {
            let _ = LAST_READS.insert(sk, read, 0);
        }
    }
    0
}

/// Reads a field of the tracepoint record in place (volatile, as in `cause.rs`).
#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: the verifier checks that the read stays inside the tracepoint record.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}
