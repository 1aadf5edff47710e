//! Why a connection ended: the records of the kernel's stable tracepoints `tcp:tcp_send_reset`,
//! `tcp:tcp_receive_reset` and `sock:inet_sk_error_report`, as the eBPF programs read them, and
//! the [`CauseEvent`] they hand to userspace through the same ring buffer as the transitions.
//!
//! The field layouts are those the kernels' `format` files describe (checked against the running
//! kernel at load, so a kernel that moved a field gets the program left out, not garbage read,
//! and by the `suite::causes` test). They have not changed since the tracepoints appeared
//! (`tcp_send_reset` and `tcp_receive_reset` in 4.15, `inet_sk_error_report` in 5.14); Linux
//! 6.10 rewrote `tcp_send_reset` but kept `skaddr` where it was.

use crate::tracepoint::Field;

/// [`CauseEvent::kind`]: the kernel sent an RST on the socket (`tcp:tcp_send_reset`).
pub const CAUSE_SENT_RESET: u16 = 1;
/// [`CauseEvent::kind`]: the socket received an RST (`tcp:tcp_receive_reset`).
pub const CAUSE_RECEIVED_RESET: u16 = 2;
/// [`CauseEvent::kind`]: the socket reported an error to its application
/// (`sock:inet_sk_error_report`, `sk->sk_err` in [`CauseEvent::error`]).
pub const CAUSE_ERROR_REPORT: u16 = 3;

/// Name of the program attached to `tcp:tcp_send_reset`.
pub const SEND_RESET_PROGRAM: &str = "tcp_send_reset";
/// Name of the program attached to `tcp:tcp_receive_reset`.
pub const RECEIVE_RESET_PROGRAM: &str = "tcp_receive_reset";
/// Name of the program attached to `sock:inet_sk_error_report`.
pub const ERROR_REPORT_PROGRAM: &str = "inet_sk_error_report";

/// Name of the per-CPU array (one `u64` slot) counting causes lost because the ring buffer was
/// full; transitions lost are counted apart, in [`crate::STATS_MAP`].
pub const CAUSE_STATS_MAP: &str = "CAUSE_STATS";

/// One firing of a cause tracepoint, as the eBPF programs hand it to userspace. It shares the
/// ring buffer with [`crate::TcpStateEvent`] and is told apart by its size
/// ([`CAUSE_EVENT_SIZE`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CauseEvent {
    /// `bpf_ktime_get_ns()`: monotonic clock, nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the `struct sock` (the resets); 0 for an error report, whose record
    /// has no such field (it is matched by its addresses, CPU and thread instead).
    pub skaddr: u64,
    /// Local address of an error report, network byte order (IPv4 in the first 4 bytes).
    pub saddr: [u8; 16],
    /// Remote address of an error report.
    pub daddr: [u8; 16],
    /// Thread group id of the running task.
    pub tgid: u32,
    /// Thread id of the running task.
    pub tid: u32,
    /// CPU the program ran on.
    pub cpu: u32,
    /// `sk->sk_err` of an error report (a positive errno); 0 for the resets.
    pub error: i32,
    /// [`CAUSE_SENT_RESET`], [`CAUSE_RECEIVED_RESET`] or [`CAUSE_ERROR_REPORT`].
    pub kind: u16,
    /// Local port of an error report, host byte order.
    pub sport: u16,
    /// Remote port of an error report, host byte order.
    pub dport: u16,
    /// `AF_INET` or `AF_INET6` for an error report; 0 for the resets.
    pub family: u16,
}

/// Size in bytes of [`CauseEvent`] on both sides.
pub const CAUSE_EVENT_SIZE: usize = core::mem::size_of::<CauseEvent>();

const _: () = assert!(CAUSE_EVENT_SIZE == 72);
// Records in the ring buffer are told apart by their size.
const _: () = assert!(CAUSE_EVENT_SIZE != crate::EVENT_SIZE);

#[cfg(feature = "user")]
// SAFETY: `CauseEvent` is `repr(C)`, `Copy`, has no implicit padding (checked by the size
// assertion above) and every bit pattern is a valid value.
unsafe impl aya::Pod for CauseEvent {}

/// The fields of `tcp:tcp_send_reset` the program reads.
pub mod send_reset {
    use super::Field;

    /// `const void *skaddr` (null when the RST answers a packet no socket owns).
    pub const SKADDR: Field = Field::new("skaddr", 16, 8);
    /// Every field the program reads.
    pub const FIELDS: [Field; 1] = [SKADDR];
}

/// The fields of `tcp:tcp_receive_reset` the program reads.
pub mod receive_reset {
    use super::Field;

    /// `const void *skaddr`.
    pub const SKADDR: Field = Field::new("skaddr", 8, 8);
    /// Every field the program reads.
    pub const FIELDS: [Field; 1] = [SKADDR];
}

/// The fields of `sock:inet_sk_error_report` the program reads. Its record has no socket
/// address.
pub mod error_report {
    use super::Field;

    /// `int error`: `sk->sk_err`.
    pub const ERROR: Field = Field::new("error", 8, 4);
    /// `__u16 sport`, host byte order.
    pub const SPORT: Field = Field::new("sport", 12, 2);
    /// `__u16 dport`, host byte order.
    pub const DPORT: Field = Field::new("dport", 14, 2);
    /// `__u16 family`.
    pub const FAMILY: Field = Field::new("family", 16, 2);
    /// `__u16 protocol`.
    pub const PROTOCOL: Field = Field::new("protocol", 18, 2);
    /// `__u8 saddr[4]`.
    pub const SADDR: Field = Field::new("saddr", 20, 4);
    /// `__u8 daddr[4]`.
    pub const DADDR: Field = Field::new("daddr", 24, 4);
    /// `__u8 saddr_v6[16]` (4-byte aligned only: read as four `u32` words).
    pub const SADDR_V6: Field = Field::new("saddr_v6", 28, 16);
    /// `__u8 daddr_v6[16]`.
    pub const DADDR_V6: Field = Field::new("daddr_v6", 44, 16);
    /// Every field the program reads.
    pub const FIELDS: [Field; 9] = [
        ERROR, SPORT, DPORT, FAMILY, PROTOCOL, SADDR, DADDR, SADDR_V6, DADDR_V6,
    ];
}
