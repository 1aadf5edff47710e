//! Builders shared by the unit tests, the replay tests and the benchmarks.

use std::net::SocketAddr;

use crate::event::{Family, Task, TcpState, Transition};

/// The client end of the tests' connections.
pub const C: &str = "127.0.0.1:40000";
/// The server end of the tests' connections.
pub const S: &str = "127.0.0.1:8080";
/// A millisecond, in nanoseconds.
pub const MS: u64 = 1_000_000;

/// The kernel's state numbers (`TCP_*` of `include/net/tcp_states.h`) the tests use.
pub mod state {
    pub const ESTABLISHED: u32 = 1;
    pub const SYN_SENT: u32 = 2;
    pub const SYN_RECV: u32 = 3;
    pub const FIN_WAIT1: u32 = 4;
    pub const FIN_WAIT2: u32 = 5;
    pub const CLOSE: u32 = 7;
    pub const CLOSE_WAIT: u32 = 8;
    pub const LAST_ACK: u32 = 9;
    pub const LISTEN: u32 = 10;
    pub const CLOSING: u32 = 11;
}

/// A transition at `ts_ns` of socket `skaddr` from state number `old` to `new`, run by a task
/// with pid 100 and comm "test".
pub fn transition(
    ts_ns: u64,
    skaddr: u64,
    local: &str,
    remote: &str,
    old: u32,
    new: u32,
) -> Transition {
    let local: SocketAddr = local.parse().expect("test address");
    let remote: SocketAddr = remote.parse().expect("test address");
    Transition {
        ts_ns,
        skaddr,
        family: if local.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        },
        protocol: 6,
        laddr: local.ip(),
        lport: local.port(),
        raddr: remote.ip(),
        rport: remote.port(),
        old: TcpState::from(old),
        new: TcpState::from(new),
        task: Task {
            pid: 100,
            tid: 100,
            comm: "test".into(),
            thread: "test".into(),
        },
        cpu: 0,
        netns: 0,
        sock_owned: None,
        kernel_thread: None,
        peer_fin: None,
        orphan: None,
        ulp: None,
    }
}

/// The same transition run by another task.
pub fn by(mut t: Transition, pid: u32, comm: &str) -> Transition {
    t.task = Task {
        pid,
        tid: pid,
        comm: comm.into(),
        thread: comm.into(),
    };
    t
}

/// The records an engine with `--timelines` makes of a client's full life (owner 7, "c",
/// learnt at connect: five transitions and its timeline) and of a server socket with no known
/// owner reaching ESTABLISHED.
pub fn a_client_and_a_server() -> Vec<crate::record::Record> {
    let mut engine = crate::engine::Engine::new(
        crate::engine::Options {
            timelines: true,
            ..crate::engine::Options::default()
        },
        crate::units::WallClock::fixed(0),
    );
    let mut out = Vec::new();
    let c = ("127.0.0.1:5000", "127.0.0.1:80");
    for (ts, old, new) in [(1, 7, 2), (2, 2, 1), (3, 1, 4), (4, 4, 5), (5, 5, 7)] {
        engine.transition(
            by(transition(ts, 0xa, c.0, c.1, old, new), 7, "c"),
            &mut out,
        );
    }
    engine.transition(
        transition(6, 0xb, "127.0.0.1:80", "127.0.0.1:5001", 3, 1),
        &mut out,
    );
    out
}
