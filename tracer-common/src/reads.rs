//! `--track-reads`: who last read each TCP socket, from the kernel's `sock:sock_recv_length`
//! tracepoint (Linux 6.3+; it fires after every `recvmsg` on any socket). The program keeps,
//! per socket, only the last read in an LRU hash map keyed by the socket's kernel address
//! (what the transitions carry as `skaddr`): one map update per read, no event, nothing for
//! userspace to drain. Userspace looks a socket up when its report is due.
//!
//! The record layout is checked against the running kernel's `format` file before the program
//! is attached (as the cause programs' are).

use crate::tracepoint::Field;

/// Name of the program attached to `sock:sock_recv_length`.
pub const SOCK_RECV_LENGTH_PROGRAM: &str = "sock_recv_length";
/// Name of the LRU hash map: socket address (`u64`) -> [`LastRead`].
pub const LAST_READS_MAP: &str = "LAST_READS";
/// Sockets remembered: the least recently read are forgotten first.
pub const LAST_READS_ENTRIES: u32 = 16_384;

/// The last read of one socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LastRead {
    /// `bpf_ktime_get_ns()` of the read: monotonic clock, nanoseconds.
    pub ts_ns: u64,
    /// Thread group id (process) of the reader.
    pub tgid: u32,
    /// Thread id of the reader.
    pub tid: u32,
    /// The reading thread's name (`comm`), NUL-padded.
    pub comm: [u8; 16],
    /// What the read returned: bytes read, 0 at end of file (errors are not recorded).
    pub bytes: i32,
    /// `recvmsg` flags (`MSG_PEEK` is 2).
    pub flags: i32,
}

const _: () = assert!(core::mem::size_of::<LastRead>() == 40);

#[cfg(feature = "user")]
// SAFETY: `LastRead` is `repr(C)`, `Copy`, has no implicit padding (checked by the size
// assertion above) and every bit pattern is a valid value.
unsafe impl aya::Pod for LastRead {}

/// `const void *sk`: the socket's kernel address.
pub const SK: Field = Field::new("sk", 8, 8);
/// `__u16 protocol`: `sk->sk_protocol`.
pub const PROTOCOL: Field = Field::new("protocol", 18, 2);
/// `int ret`: what `recvmsg` returned.
pub const RET: Field = Field::new("ret", 20, 4);
/// `int flags`: the `recvmsg` flags.
pub const FLAGS: Field = Field::new("flags", 24, 4);
/// The fields the program reads.
pub const FIELDS: [Field; 4] = [SK, PROTOCOL, RET, FLAGS];
