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

/// `const void *skaddr`: the kernel address of the `struct sock`.
pub const SKADDR: Field = Field {
    name: "skaddr",
    offset: 8,
    size: 8,
};
/// `int oldstate`: the `TCP_*` state left.
pub const OLDSTATE: Field = Field {
    name: "oldstate",
    offset: 16,
    size: 4,
};
/// `int newstate`: the `TCP_*` state entered.
pub const NEWSTATE: Field = Field {
    name: "newstate",
    offset: 20,
    size: 4,
};
/// `__u16 sport`: local port, host byte order.
pub const SPORT: Field = Field {
    name: "sport",
    offset: 24,
    size: 2,
};
/// `__u16 dport`: remote port, host byte order.
pub const DPORT: Field = Field {
    name: "dport",
    offset: 26,
    size: 2,
};
/// `__u16 family`: `AF_INET` or `AF_INET6`.
pub const FAMILY: Field = Field {
    name: "family",
    offset: 28,
    size: 2,
};
/// `__u16 protocol`: `IPPROTO_*`.
pub const PROTOCOL: Field = Field {
    name: "protocol",
    offset: 30,
    size: 2,
};
/// `__u8 saddr[4]`: local IPv4 address, network byte order.
pub const SADDR: Field = Field {
    name: "saddr",
    offset: 32,
    size: 4,
};
/// `__u8 daddr[4]`: remote IPv4 address, network byte order.
pub const DADDR: Field = Field {
    name: "daddr",
    offset: 36,
    size: 4,
};
/// `__u8 saddr_v6[16]`: local IPv6 address (or IPv4-mapped), network byte order.
pub const SADDR_V6: Field = Field {
    name: "saddr_v6",
    offset: 40,
    size: 16,
};
/// `__u8 daddr_v6[16]`: remote IPv6 address, network byte order.
pub const DADDR_V6: Field = Field {
    name: "daddr_v6",
    offset: 56,
    size: 16,
};

/// Every field the program reads.
pub const FIELDS: [Field; 11] = [
    SKADDR, OLDSTATE, NEWSTATE, SPORT, DPORT, FAMILY, PROTOCOL, SADDR, DADDR, SADDR_V6, DADDR_V6,
];
