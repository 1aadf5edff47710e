//! Where the eBPF program finds each field of the `sock:inet_sock_set_state` record it is
//! handed: the layout the kernel describes in
//! `/sys/kernel/tracing/events/sock/inet_sock_set_state/format`, stable since the tracepoint
//! appeared in Linux 4.16. One definition for the program and for the integration test that
//! checks it against the running kernel's `format` file (`tracer/tests/suite/tracepoint.rs`).

/// One field of the tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The field's name in the `format` file (`field:<type> <name>;`, without `[N]`).
    pub name: &'static str,
    /// Byte offset from the start of the record (the 8-byte common header included).
    pub offset: usize,
    /// Size in bytes: what the program reads there.
    pub size: usize,
}

impl Field {
    /// The field `name`, `size` bytes at byte `offset` of the record.
    pub const fn new(name: &'static str, offset: usize, size: usize) -> Field {
        Field { name, offset, size }
    }
}

/// `const void *skaddr`: the kernel address of the `struct sock`.
pub const SKADDR: Field = Field::new("skaddr", 8, 8);
/// `int oldstate`: the `TCP_*` state left.
pub const OLDSTATE: Field = Field::new("oldstate", 16, 4);
/// `int newstate`: the `TCP_*` state entered.
pub const NEWSTATE: Field = Field::new("newstate", 20, 4);
/// `__u16 sport`: local port, host byte order.
pub const SPORT: Field = Field::new("sport", 24, 2);
/// `__u16 dport`: remote port, host byte order.
pub const DPORT: Field = Field::new("dport", 26, 2);
/// `__u16 family`: `AF_INET` or `AF_INET6`.
pub const FAMILY: Field = Field::new("family", 28, 2);
/// `__u16 protocol`: `IPPROTO_*`.
pub const PROTOCOL: Field = Field::new("protocol", 30, 2);
/// `__u8 saddr[4]`: local IPv4 address, network byte order.
pub const SADDR: Field = Field::new("saddr", 32, 4);
/// `__u8 daddr[4]`: remote IPv4 address, network byte order.
pub const DADDR: Field = Field::new("daddr", 36, 4);
/// `__u8 saddr_v6[16]`: local IPv6 address (or IPv4-mapped), network byte order.
pub const SADDR_V6: Field = Field::new("saddr_v6", 40, 16);
/// `__u8 daddr_v6[16]`: remote IPv6 address, network byte order.
pub const DADDR_V6: Field = Field::new("daddr_v6", 56, 16);

/// Every field the program reads.
pub const FIELDS: [Field; 11] = [
    SKADDR, OLDSTATE, NEWSTATE, SPORT, DPORT, FAMILY, PROTOCOL, SADDR, DADDR, SADDR_V6, DADDR_V6,
];
