//! End-to-end tests of who and where a socket is (issue 11): network namespaces, every holder,
//! owners that hold the socket now. Each test builds the situation for real (namespaces made
//! with `ip netns` and removed, `fork`, `SCM_RIGHTS`) and asserts the exact values reported.
//! Fixed ports (45110-45111) only inside the namespaces the tests create; ephemeral ports on
//! the host's loopback.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
};

use crate::support::{self, field::Netns, HelperProcess as Helper, Tracer};
use tracer::record::{CloseWaitRecord, Holder as Owner, Record, UnownedReason};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// CLOSE_WAIT reports with local port `port`, once `n` have arrived.
fn close_waits(tracer: &Tracer, port: u16, n: usize) -> Vec<CloseWaitRecord> {
    tracer.wait_for(&format!("{n} CLOSE_WAIT reports on port {port}"), |rs| {
        let found: Vec<CloseWaitRecord> = rs
            .iter()
            .filter_map(|r| match r {
                Record::CloseWait(c) if c.lport == port => Some(c.as_ref().clone()),
                _ => None,
            })
            .collect();
        (found.len() >= n).then_some(found)
    })
}

fn holder(helper: &Helper, fd: i32) -> Owner {
    Owner {
        pid: helper.pid(),
        comm: helper.comm(),
        fd: Some(fd),
    }
}

/// Sends `n` bytes then closes: the server's socket goes to CLOSE_WAIT with `n` unread.
fn send_and_close(mut client: TcpStream, n: usize) {
    client.write_all(&vec![b'x'; n]).unwrap();
    drop(client);
}

/// Four namespaces hold the same 4-tuple 127.0.0.1:45110 <- 127.0.0.1:45111 in CLOSE_WAIT,
/// each with its own unread bytes and process: A and B have their server inside; C's server
/// moved back to the root namespace (only `/run/netns` keeps C); D's bind mount is gone too
/// (only its sockets keep it). Every report names its own namespace, process, fd and bytes.
/// Set up before the tracer starts: the start-up scan must tell them apart.
#[test]
#[ignore = "needs root and BPF"]
fn namespaces_keep_identical_connections_apart_at_start() {
    support::require_root();
    let server = addr("127.0.0.1:45110");
    let client = addr("127.0.0.1:45111");
    let mut spaces: Vec<(Netns, u64, Helper, i32, usize)> = Vec::new();
    for (i, role) in ["server", "server", "mover", "mover"]
        .into_iter()
        .enumerate()
    {
        let ns = Netns::new();
        let mut helper = Helper::holder(
            role,
            &[("HOLDER_NETNS", &ns.path()), ("HOLDER_PORT", "45110")],
        );
        assert_eq!(helper.recv(), "ready 45110");
        let unread = 11 * (i + 1);
        let conn = ns.run(|| support::field::connect_from(client, server));
        helper.send("accept");
        let fd: i32 = helper.recv().strip_prefix("fd ").unwrap().parse().unwrap();
        send_and_close(conn, unread);
        let inode = ns.inode();
        spaces.push((ns, inode, helper, fd, unread));
    }
    // D: nothing but its sockets keeps it alive now.
    spaces[3].0.delete();

    let tracer = Tracer::start(&["-p", "45110", "--close-wait-threshold", "200ms"]);
    let reports = close_waits(&tracer, 45110, 4);
    assert_eq!(reports.len(), 4, "{reports:#?}");
    for (_, expected_netns, helper, fd, unread) in &spaces {
        let expected_netns = *expected_netns;
        let r = reports
            .iter()
            .find(|r| r.netns == Some(expected_netns))
            .unwrap_or_else(|| panic!("no report in netns {expected_netns}: {reports:#?}"));
        assert_eq!(
            (r.pid, r.comm.clone(), r.fd, r.recv_q),
            (
                Some(helper.pid()),
                Some(helper.comm()),
                Some(*fd),
                Some(*unread as u32)
            ),
            "{r:#?}"
        );
        assert_eq!(r.holders, [holder(helper, *fd)], "{r:#?}");
        assert_eq!(
            (r.laddr, r.lport, r.raddr, r.rport),
            (server.ip(), 45110, client.ip(), 45111)
        );
        assert!(
            r.age_at_least && r.skaddr.is_none() && r.unowned.is_none(),
            "{r:#?}"
        );
    }
    drop(tracer.stop());
    for (_, _, mut helper, _, _) in spaces {
        helper.send("exit");
        helper.wait();
    }
}

/// A forking server: the master and its worker both hold the accepted socket. The report
/// lists both, the first naming the socket's owner.
#[test]
#[ignore = "needs root and BPF"]
fn every_holder_of_a_forked_socket_is_listed() {
    let mut master = Helper::holder("forker", &[]);
    let port: u16 = master
        .recv()
        .strip_prefix("ready ")
        .unwrap()
        .parse()
        .unwrap();
    let tracer = Tracer::start(&["-p", &port.to_string(), "--close-wait-threshold", "200ms"]);
    let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    master.send("accept");
    let told = master.recv();
    let (fd, worker) = told
        .strip_prefix("fd ")
        .and_then(|r| r.split_once(" worker "))
        .unwrap_or_else(|| panic!("unexpected {told:?}"));
    let (fd, worker): (i32, u32) = (fd.parse().unwrap(), worker.parse().unwrap());
    send_and_close(conn, 11);
    let [r] = &close_waits(&tracer, port, 1)[..] else {
        unreachable!()
    };
    let mut expected = vec![
        holder(&master, fd),
        // The worker is a copy of the helper's thread: its process name is that thread's.
        Owner {
            pid: worker,
            comm: std::fs::read_to_string(format!("/proc/{worker}/comm"))
                .unwrap()
                .trim()
                .into(),
            fd: Some(fd),
        },
    ];
    expected.sort_by_key(|o| o.pid);
    assert_eq!(r.holders, expected, "{r:#?}");
    assert_eq!(
        (r.pid, r.comm.as_deref(), r.fd, r.recv_q),
        (
            Some(expected[0].pid),
            Some(expected[0].comm.as_str()),
            Some(fd),
            Some(11)
        )
    );
    assert_eq!(r.netns, Some(support::field::current_netns()));
    master.send("exit");
    master.wait();
    tracer.stop();
}

/// Owners are processes that hold the socket at the time of the report. A client socket
/// connect()ed by one process and passed with SCM_RIGHTS to another is owned by the receiver;
/// one still in flight (sent, not received, the sender's copy closed) is held by no process;
/// a connection never accepted waits in its listener's accept queue.
#[test]
#[ignore = "needs root and BPF"]
fn owner_is_a_process_that_holds_the_socket_now() {
    let (listener, server) = support::listen("127.0.0.1:0");
    // A listener whose process never accepts.
    let lazy = Helper::holder("lazy", &[]);
    let lazy_port: u16 = lazy.recv().strip_prefix("ready ").unwrap().parse().unwrap();
    let tracer = Tracer::start(&[
        "-p",
        &server.port().to_string(),
        "-p",
        &lazy_port.to_string(),
        "--close-wait-threshold",
        "200ms",
    ]);
    let unix = format!("/tmp/tr11-{}.sock", std::process::id());
    let _ = std::fs::remove_file(&unix);
    let mut receiver = Helper::holder("receiver", &[("HOLDER_UNIX", &unix)]);
    assert_eq!(receiver.recv(), "ready");
    let passer = Helper::holder(
        "passer",
        &[
            ("HOLDER_UNIX", &unix),
            ("HOLDER_PORT", &server.port().to_string()),
        ],
    );
    let (a, _) = listener.accept().unwrap();
    let (b, _) = listener.accept().unwrap();
    let told = passer.recv();
    let ports: Vec<u16> = told
        .strip_prefix("sent ")
        .unwrap()
        .split(' ')
        .map(|p| p.parse().unwrap())
        .collect();
    receiver.send("recv");
    let fd: i32 = receiver
        .recv()
        .strip_prefix("fd ")
        .unwrap()
        .parse()
        .unwrap();
    // The accepted ends are ours; which is which follows the client ports.
    let (to_received, to_in_flight) = if a.peer_addr().unwrap().port() == ports[0] {
        (a, b)
    } else {
        (b, a)
    };
    send_and_close(to_received, 5);
    send_and_close(to_in_flight, 6);

    send_and_close(TcpStream::connect(("127.0.0.1", lazy_port)).unwrap(), 7);

    let by_port = |port: u16| {
        tracer.wait_for(
            &format!("a CLOSE_WAIT report for local port {port}"),
            |rs| {
                rs.iter().find_map(|r| match r {
                    Record::CloseWait(c) if c.lport == port => Some(c.clone()),
                    _ => None,
                })
            },
        )
    };
    let received = by_port(ports[0]);
    assert_eq!(
        (received.pid, received.fd, received.recv_q),
        (Some(receiver.pid()), Some(fd), Some(5)),
        "{received:#?}"
    );
    assert_eq!(received.holders, [holder(&receiver, fd)]);
    assert!(received.unowned.is_none());

    let in_flight = by_port(ports[1]);
    assert_eq!(
        (
            in_flight.pid,
            in_flight.fd,
            in_flight.recv_q,
            in_flight.holders.len()
        ),
        (None, None, Some(6), 0),
        "{in_flight:#?}"
    );
    let unowned = in_flight.unowned.expect("a reason");
    assert_eq!(
        (unowned.reason, unowned.listener),
        (UnownedReason::NoHolder, None)
    );

    let queued = close_waits(&tracer, lazy_port, 1).remove(0);
    assert_eq!(
        (queued.pid, queued.fd, queued.recv_q),
        (None, None, Some(7))
    );
    let unowned = queued.unowned.expect("a reason");
    assert_eq!(
        (
            unowned.reason,
            unowned.listener,
            unowned.listener_pid,
            unowned.listener_comm
        ),
        (
            UnownedReason::AcceptQueue,
            Some(SocketAddr::from(([127, 0, 0, 1], lazy_port))),
            Some(lazy.pid()),
            Some(lazy.comm())
        )
    );
    for mut h in [passer, receiver, lazy] {
        h.send("exit");
        h.wait();
    }
    let _ = std::fs::remove_file(&unix);
    tracer.stop();
}

/// A dual-stack listener on `[::]` serving IPv4 clients (v4-mapped addresses). `-4` means
/// IPv4 on the wire for the kernel filter and the start-up scan alike: the socket found in
/// CLOSE_WAIT at start is reported and then resolved, a new leak on the same listener is
/// reported; `-6` sees none of it.
#[test]
#[ignore = "needs root and BPF"]
fn dual_stack_sockets_are_ipv4_on_the_wire() {
    let mut server = Helper::holder("dual", &[]);
    let port: u16 = server
        .recv()
        .strip_prefix("ready ")
        .unwrap()
        .parse()
        .unwrap();
    let accept = |server: &mut Helper, unread: usize| -> (u16, i32) {
        let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let client_port = client.local_addr().unwrap().port();
        server.send("accept");
        let fd: i32 = server.recv().strip_prefix("fd ").unwrap().parse().unwrap();
        send_and_close(client, unread);
        (client_port, fd)
    };
    let (old_port, old_fd) = accept(&mut server, 3);
    let p = port.to_string();
    let v4 = Tracer::start(&["-4", "-p", &p, "--close-wait-threshold", "200ms"]);
    let v6 = Tracer::start(&["-6", "-p", &p, "--close-wait-threshold", "200ms"]);
    let mapped: std::net::IpAddr = "::ffff:127.0.0.1".parse().unwrap();
    let report = |tracer: &Tracer, client_port: u16| {
        tracer.wait_for(
            &format!("a CLOSE_WAIT report for client port {client_port}"),
            |rs| {
                rs.iter().find_map(|r| match r {
                    Record::CloseWait(c) if c.rport == client_port => Some(c.clone()),
                    _ => None,
                })
            },
        )
    };
    let old = report(&v4, old_port);
    assert_eq!(
        (
            old.laddr,
            old.raddr,
            old.lport,
            old.pid,
            old.fd,
            old.recv_q,
            old.age_at_least
        ),
        (
            mapped,
            mapped,
            port,
            Some(server.pid()),
            Some(old_fd),
            Some(3),
            true
        ),
        "{old:#?}"
    );
    let (new_port, new_fd) = accept(&mut server, 4);
    let new = report(&v4, new_port);
    assert_eq!(
        (new.laddr, new.pid, new.fd, new.recv_q, new.age_at_least),
        (mapped, Some(server.pid()), Some(new_fd), Some(4), false),
        "{new:#?}"
    );
    assert!(new.skaddr.is_some(), "seen by the kernel filter: {new:#?}");

    server.send("close");
    assert_eq!(server.recv(), "closed");
    for client_port in [old_port, new_port] {
        let resolved = v4.wait_for("the reports resolved", |rs| {
            rs.iter().find_map(|r| match r {
                Record::CloseWaitResolved(c) if c.rport == client_port => Some(c.clone()),
                _ => None,
            })
        });
        assert_eq!(
            (resolved.new_state.name().as_ref(), resolved.pid),
            ("LAST_ACK", Some(server.pid())),
            "{resolved:#?}"
        );
    }
    // The socket found at start: its later transitions name the owner its report named.
    let closed = v4.wait_for("the old socket's close()", |rs| {
        support::transitions_on(rs, old_port)
            .into_iter()
            .find(|t| t.old_state.name() == "CLOSE_WAIT")
    });
    assert_eq!(closed.pid, Some(server.pid()));
    server.send("exit");
    server.wait();
    let (records, _) = v6.stop();
    let on_port: Vec<&Record> = records
        .iter()
        .filter(|r| match r {
            // The `[::]` listener itself is IPv6 (its close shows with -6); its connections
            // are not.
            Record::Transition(t) => (t.lport == port && t.rport != 0) || t.rport == port,
            Record::CloseWait(c) => c.lport == port,
            Record::CloseWaitResolved(c) => c.lport == port,
            _ => false,
        })
        .collect();
    assert!(
        on_port.is_empty(),
        "-6 must not see IPv4 traffic: {on_port:#?}"
    );
    let (_, summary) = v4.stop();
    assert_eq!(
        (summary.close_wait_alerts, summary.close_wait_resolved),
        (2, 2)
    );
}

/// `--stuck FIN_WAIT2=300ms`: a client closes while the server keeps its end open (a peer
/// leaking CLOSE_WAIT, seen from here). The kernel hands the orphaned connection to a timewait
/// socket at once (`FIN_WAIT2 -> CLOSE`); it is followed through the socket tables, reported
/// while it waits, and resolved to TIME_WAIT when the server finally closes.
#[test]
#[ignore = "needs root and BPF"]
fn stuck_fin_wait2_is_followed_through_the_socket_tables() {
    let (listener, server) = support::listen("127.0.0.1:0");
    let tracer = Tracer::start(&[
        "-p",
        &server.port().to_string(),
        "--stuck",
        "FIN_WAIT2=300ms",
    ]);
    let client = TcpStream::connect(server).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let (held, _) = listener.accept().unwrap();
    drop(client);
    let stuck = tracer.wait_for("a FIN_WAIT2 report", |rs| {
        rs.iter().find_map(|r| match r {
            Record::Stuck(c) if c.lport == client_port => Some(c.clone()),
            _ => None,
        })
    });
    assert_eq!(
        (
            stuck.state.name().as_ref(),
            stuck.rport,
            stuck.pid,
            stuck.age_at_least
        ),
        ("FIN_WAIT2", server.port(), None, false),
        "{stuck:#?}"
    );
    assert!(stuck.age_ms >= 300 && stuck.skaddr.is_some(), "{stuck:#?}");
    assert_eq!(
        stuck.unowned.map(|u| u.reason),
        Some(UnownedReason::NoHolder),
        "an orphan: close() gave it up"
    );
    drop(held);
    let resolved = tracer.wait_for("the FIN_WAIT2 report resolved", |rs| {
        rs.iter().find_map(|r| match r {
            Record::StuckResolved(c) if c.lport == client_port => Some(c.clone()),
            _ => None,
        })
    });
    assert_eq!(
        (
            resolved.state.name().as_ref(),
            resolved.new_state.name().as_ref()
        ),
        ("FIN_WAIT2", "TIME_WAIT"),
        "{resolved:#?}"
    );
    let (_, summary) = tracer.stop();
    assert_eq!((summary.stuck_alerts, summary.stuck_resolved), (1, 1));
}

/// `--stuck SYN_SENT=300ms`: a connect whose SYNs a listener drops (its accept queue is full)
/// is reported with the process holding the socket, and resolved when it gives up.
#[test]
#[ignore = "needs root and BPF"]
fn stuck_syn_sent_names_the_connecting_process() {
    use nix::sys::socket::{
        connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn,
    };
    // A listener with room for one connection in its accept queue, never accepting.
    let listener = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    nix::sys::socket::bind(
        listener.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new([127, 0, 0, 1].into(), 0)),
    )
    .unwrap();
    listen(&listener, Backlog::new(0).unwrap()).unwrap();
    let server: SocketAddr = nix::sys::socket::getsockname::<SockaddrIn>(listener.as_raw_fd())
        .unwrap()
        .to_string()
        .parse()
        .unwrap();
    let tracer = Tracer::start(&[
        "-p",
        &server.port().to_string(),
        "--stuck",
        "SYN_SENT=300ms",
    ]);
    let queued = TcpStream::connect(server).unwrap();
    let dropped = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .unwrap();
    let SocketAddr::V4(server4) = server else {
        unreachable!()
    };
    assert_eq!(
        connect(dropped.as_raw_fd(), &SockaddrIn::from(server4)),
        Err(nix::errno::Errno::EINPROGRESS)
    );
    let client_port = nix::sys::socket::getsockname::<SockaddrIn>(dropped.as_raw_fd())
        .unwrap()
        .port();
    let stuck = tracer.wait_for("a SYN_SENT report", |rs| {
        rs.iter().find_map(|r| match r {
            Record::Stuck(c) if c.lport == client_port => Some(c.clone()),
            _ => None,
        })
    });
    let me = std::process::id();
    assert_eq!(
        (
            stuck.state.name().as_ref(),
            stuck.rport,
            stuck.pid,
            stuck.fd
        ),
        (
            "SYN_SENT",
            server.port(),
            Some(me),
            Some(dropped.as_raw_fd())
        ),
        "{stuck:#?}"
    );
    assert!(stuck.age_ms >= 300 && !stuck.age_at_least, "{stuck:#?}");
    drop(dropped);
    let resolved = tracer.wait_for("the SYN_SENT report resolved", |rs| {
        rs.iter().find_map(|r| match r {
            Record::StuckResolved(c) if c.lport == client_port => Some(c.clone()),
            _ => None,
        })
    });
    assert_eq!(
        (
            resolved.state.name().as_ref(),
            resolved.new_state.name().as_ref(),
            resolved.pid
        ),
        ("SYN_SENT", "CLOSE", Some(me)),
        "{resolved:#?}"
    );
    drop((queued, listener));
    tracer.stop();
}
