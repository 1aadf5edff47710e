//! MPTCP end to end, through the binary with `--all-protocols --timelines`, on IPv4 and IPv6:
//! the MPTCP sockets (protocol 262) and their subflows (TCP sockets with MPTCP as their upper
//! layer protocol) each get one timeline. MPTCP reports transitions to the same state
//! (`LISTEN -> LISTEN`, `FIN_WAIT1 -> FIN_WAIT1` as it closes a subflow, `CLOSE -> CLOSE`
//! after the end): they add no step and start no timeline. An accepted MPTCP socket is born
//! out of LISTEN; an MPTCP socket has no timewait socket. Privileged, loopback in a namespace
//! of the test's own.

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
};

use nix::sys::socket::{bind, connect, listen, Backlog, SockaddrStorage};
use tracer::{
    event::TcpState,
    record::{Record, TimelineRecord},
    timeline::Outcome,
};

use crate::support::{self, NetNs, Tracer};

/// One MPTCP connection to a listener on `lo` (`127.0.0.1` or `::1`), its data sent and both
/// ends closed, traced on `hook`; returns the records of the run and the listener's port.
fn traced_connection(lo: &str, hook: &str) -> (Vec<Record>, u16) {
    let family = if lo.contains(':') {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    let listen_fd = support::mptcp_socket(family);
    let any = SocketAddr::new(lo.parse().unwrap(), 0);
    bind(listen_fd.as_raw_fd(), &SockaddrStorage::from(any)).unwrap();
    listen(&listen_fd, Backlog::new(8).unwrap()).unwrap();
    let listener = TcpListener::from(listen_fd);
    let addr = listener.local_addr().unwrap();
    let port = addr.port().to_string();
    let tracer = Tracer::start(&[
        "-p",
        &port,
        "--all-protocols",
        "--timelines",
        "--hook",
        hook,
    ]);

    let client = support::mptcp_socket(family);
    connect(client.as_raw_fd(), &SockaddrStorage::from(addr)).unwrap();
    let (server, _) = listener.accept().unwrap();
    support::exchange(TcpStream::from(client), server);
    // Both MPTCP sockets and both subflows ended, then the listener (an MPTCP socket and
    // its TCP listener).
    tracer.wait_for("the ends of the MPTCP sockets and their subflows", |rs| {
        let ended = rs
            .iter()
            .filter(|r| matches!(r, Record::Timeline(t) if t.outcome != Outcome::Open))
            .count();
        (ended >= 4).then_some(())
    });
    drop(listener);
    tracer.wait_for("the listeners' ends", |rs| {
        let closed = rs
            .iter()
            .filter(|r| matches!(r, Record::Timeline(t) if t.outcome == Outcome::ListenerClosed))
            .count();
        (closed >= 2).then_some(())
    });
    let (records, _) = tracer.stop();
    (records, addr.port())
}

#[test]
#[ignore = "needs root and BPF"]
fn an_mptcp_connection_has_one_timeline_per_socket_and_no_repeated_steps() {
    let _ns = NetNs::enter();
    for (lo, hook) in [
        ("127.0.0.1", "tp-btf"),
        ("::1", "tp-btf"),
        ("127.0.0.1", "tracepoint"),
    ] {
        let (records, port) = traced_connection(lo, hook);
        let mut protocol = HashMap::new();
        for r in &records {
            if let Record::Transition(t) = r {
                protocol.insert(t.skaddr, t.protocol);
            }
        }
        let timelines: Vec<&TimelineRecord> = records
            .iter()
            .filter_map(|r| match r {
                Record::Timeline(t) if t.lport == port || t.rport == port => Some(t),
                _ => None,
            })
            .collect();
        let dump = format!("{lo} on {hook}: {timelines:#?}");
        // Two MPTCP sockets, two subflows, two listeners: one timeline each.
        assert_eq!(timelines.len(), 6, "{dump}");
        let mut per_socket = HashMap::new();
        for t in &timelines {
            *per_socket.entry(t.skaddr).or_insert(0) += 1;
            let states: Vec<TcpState> = t.states.iter().map(|s| s.state).collect();
            assert!(
                states.windows(2).all(|w| w[0] != w[1]),
                "a repeated step: {dump}"
            );
            assert_ne!(states, [TcpState::Close], "a timeline of nothing: {dump}");
        }
        assert!(per_socket.values().all(|&n| n == 1), "{dump}");
        let mptcp: Vec<&&TimelineRecord> = timelines
            .iter()
            .filter(|t| protocol.get(&t.skaddr) == Some(&262))
            .collect();
        assert_eq!(mptcp.len(), 3, "{dump}");
        let client = mptcp
            .iter()
            .find(|t| t.rport == port)
            .unwrap_or_else(|| panic!("no client MPTCP socket: {dump}"));
        // Its birth (`CLOSE -> SYN_SENT`) is not reported for the MPTCP socket itself.
        assert_eq!(client.states[0].state, TcpState::SynSent, "{dump}");
        let last = client.states.last().unwrap();
        assert_eq!(
            (last.state, last.inferred),
            (TcpState::Close, false),
            "{dump}"
        );
        let accepted = mptcp
            .iter()
            .find(|t| t.lport == port && t.outcome != Outcome::ListenerClosed)
            .unwrap_or_else(|| panic!("no accepted MPTCP socket: {dump}"));
        assert!(accepted.from_birth, "{dump}");
        assert_eq!(accepted.states[0].state, TcpState::Established, "{dump}");
        // Every owner named is this process (the kernel's MPTCP worker is nobody's owner).
        let me = std::process::id();
        for r in &records {
            let pid = match r {
                Record::Transition(t) if t.lport == port || t.rport == port => t.pid,
                Record::Timeline(t) if t.lport == port || t.rport == port => t.pid,
                _ => None,
            };
            assert!(
                pid.is_none_or(|p| p == me),
                "owner {pid:?}, not {me}: {r:?}"
            );
        }
    }
}

/// A server that keeps an accepted MPTCP socket open after its client closed: with
/// `--all-protocols` the MPTCP socket's CLOSE_WAIT is reported though no socket table lists
/// it (they list TCP sockets; its subflow leaves CLOSE_WAIT at once, closed by MPTCP), and
/// resolved when the server closes it.
#[test]
#[ignore = "needs root and BPF"]
fn an_mptcp_socket_left_in_close_wait_is_reported() {
    let _ns = NetNs::enter();
    let listen_fd = support::mptcp_socket(libc::AF_INET);
    let any = SocketAddr::new("127.0.0.1".parse().unwrap(), 0);
    bind(listen_fd.as_raw_fd(), &SockaddrStorage::from(any)).unwrap();
    listen(&listen_fd, Backlog::new(8).unwrap()).unwrap();
    let listener = TcpListener::from(listen_fd);
    let addr = listener.local_addr().unwrap();
    let port = addr.port();
    let tracer = Tracer::start(&[
        "-p",
        &port.to_string(),
        "--all-protocols",
        "--close-wait-threshold",
        "300ms",
    ]);
    let client = support::mptcp_socket(libc::AF_INET);
    connect(client.as_raw_fd(), &SockaddrStorage::from(addr)).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(TcpStream::from(client));
    let report = tracer.wait_for("the MPTCP socket's CLOSE_WAIT report", |rs| {
        rs.iter().find_map(|r| match r {
            Record::CloseWait(c) if c.lport == port => Some(c.as_ref().clone()),
            _ => None,
        })
    });
    assert!(report.age_ms >= 300, "{report:?}");
    drop(server);
    tracer.wait_for("its resolution", |rs| {
        rs.iter().find_map(|r| match r {
            Record::CloseWaitResolved(c) if c.lport == port => Some(()),
            _ => None,
        })
    });
    let (_, summary) = tracer.stop();
    assert_eq!(summary.close_wait_alerts, 1, "{summary:?}");
}
