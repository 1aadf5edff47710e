//! End-to-end tests of why a connection ended (issue 11, item 7): each builds the ending for
//! real and asserts the `error`, `reset_by` and `outcome` the tracer reports on the transition
//! to CLOSE and on the timeline. Each test runs on loopback in a network namespace of its own;
//! where the link must go down, the test takes that namespace's loopback down (its routes go,
//! what the sockets send is dropped silently: the kernel's ETIMEDOUT, as with a dead link). Not
//! a veth pair: veth is a module in Debian's cloud kernels, which `cargo xtask vm-test`'s guests
//! do not load. Ephemeral ports; every wait bounded (the kernel timers are set to seconds).
//!
//! On a kernel without `sock:inet_sk_error_report` (before 5.14) the tests expect `error` to
//! be null, the start-up message to have said so, and a timeout to read `aborted`.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use nix::sys::socket::{setsockopt, sockopt};
use tracer::{
    cause::ResetBy,
    record::{Record, TimelineRecord},
    timeline::Outcome,
};
use tracer_common::{
    cause::{error_report, receive_reset, send_reset},
    tracepoint::Field,
};

use crate::support::{self, NetNs, Tracer};

/// What the tracer said at start about the error-report tracepoint: `true` when attached.
/// Where the kernel lacks it, the start-up message must say so.
fn error_reports(tracer: &Tracer) -> bool {
    let missing = !Path::new("/sys/kernel/tracing/events/sock/inet_sk_error_report").is_dir();
    let said = tracer
        .stderr()
        .contains("not tracing sock:inet_sk_error_report");
    assert_eq!(
        said,
        missing,
        "the start-up message and the kernel disagree about sock:inet_sk_error_report:\n{}",
        tracer.stderr()
    );
    if said {
        assert!(
            tracer.stderr().contains("`error` stays null"),
            "{}",
            tracer.stderr()
        );
    }
    !missing
}

/// The errno name the tracer must report: `name`, or null without error reports.
fn expected(reports: bool, name: &str) -> Option<String> {
    reports.then(|| name.to_owned())
}

/// Why a connection ended: `(outcome, error, reset_by)`.
type Cause = (Outcome, Option<String>, Option<ResetBy>);

/// The cause of the connection from `local` to `remote`, as [`cause_of`] its timeline.
fn cause(tracer: &Tracer, local: SocketAddr, remote: SocketAddr) -> Cause {
    cause_of(tracer, tracer.ended(local, remote))
}

/// The cause a timeline reports, after checking its transition to CLOSE says the same.
fn cause_of(tracer: &Tracer, timeline: TimelineRecord) -> Cause {
    let close = tracer.close_of(&timeline);
    assert_eq!(
        (&close.error, close.reset_by),
        (&timeline.error, timeline.reset_by),
        "{close:#?}\n{timeline:#?}"
    );
    (timeline.outcome, timeline.error, timeline.reset_by)
}

/// The timeline of a failed connect to `remote`.
fn failed_connect(tracer: &Tracer, remote: SocketAddr) -> TimelineRecord {
    tracer.wait_for(&format!("the timeline of the connect to {remote}"), |rs| {
        rs.iter().find_map(|r| match r {
            Record::Timeline(t) if (t.raddr, t.rport) == (remote.ip(), remote.port()) => {
                Some(t.clone())
            }
            _ => None,
        })
    })
}

/// The server side of a connection closes with an RST: the client's next read fails with
/// ECONNRESET; the server's end reports a local reset and no error (its application closed it),
/// the client's a reset by the peer and ECONNRESET (where error reports are traced).
fn server_reset(
    tracer: &Tracer,
    reports: bool,
    client: &mut TcpStream,
    server: TcpStream,
    addr: SocketAddr,
) {
    let client_addr = client.local_addr().unwrap();
    drop(server);
    let mut buf = [0u8; 1];
    let err = client.read(&mut buf).expect_err("the read sees the reset");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNRESET), "{err}");
    assert_eq!(
        cause(tracer, addr, client_addr),
        (Outcome::Reset, None, Some(ResetBy::Local)),
        "the side that reset"
    );
    assert_eq!(
        cause(tracer, client_addr, addr),
        (
            Outcome::Reset,
            expected(reports, "ECONNRESET"),
            Some(ResetBy::Peer)
        ),
        "the side that was reset"
    );
}

/// A TCP socket, not yet connected.
fn tcp_socket() -> std::os::fd::OwnedFd {
    nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Inet,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap()
}

fn tracer_on(port: u16) -> Tracer {
    Tracer::start(&["-p", &port.to_string(), "--timelines"])
}

fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(stream, sockopt::Linger, &linger).expect("SO_LINGER");
}

/// An integer socket option nix does not name.
fn set_int(fd: &impl std::os::fd::AsFd, level: i32, name: i32, value: i32) {
    // SAFETY: a valid socket fd, and a pointer to an int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt({level}, {name}): {}",
        std::io::Error::last_os_error()
    );
}

/// A connection on loopback: (client, accepted server side).
fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// The peer resets (`SO_LINGER {1, 0}`, then `close()`): on its side the RST is local and the
/// application saw no error (it closed the socket itself); on ours the RST came from the peer
/// and the application gets ECONNRESET (the kernel's `tcp_reset` in ESTABLISHED).
///
/// Also exported, and read back by `tracer analyze`: the same causes in the rebuilt timelines.
#[test]
#[ignore = "needs root and BPF"]
fn a_linger_reset_is_local_on_one_side_and_peer_on_the_other() {
    let _netns = NetNs::enter();
    let (listener, addr) = support::listen("127.0.0.1:0");
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("run.ndjson");
    let tracer = Tracer::start(&[
        "-p",
        &addr.port().to_string(),
        "--timelines",
        "--export",
        export.to_str().unwrap(),
    ]);
    let reports = error_reports(&tracer);
    let (mut client, server) = pair(&listener);
    set_linger_zero(&server);
    server_reset(&tracer, reports, &mut client, server, addr);
    let (live, _) = tracer.stop();
    let out = support::output(
        support::tracer_command()
            .args(["analyze", "--json", "--timelines"])
            .arg(&export),
    );
    let warnings = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && warnings.trim().is_empty(),
        "{warnings}"
    );
    let analysed = support::records(&String::from_utf8(out.stdout).unwrap());
    let timelines = |rs: &[Record]| -> Vec<TimelineRecord> {
        rs.iter()
            .filter_map(|r| match r {
                Record::Timeline(t) if t.outcome != Outcome::Open => Some(t.clone()),
                _ => None,
            })
            .collect()
    };
    assert_eq!(timelines(&analysed), timelines(&live));
    assert_eq!(timelines(&live).len(), 2, "{live:#?}");
    let Some(Record::Analysis(analysis)) = analysed.last() else {
        panic!("analyze ends with its analysis");
    };
    assert!(
        analysis
            .outcomes
            .iter()
            .any(|o| o.outcome == Outcome::Reset && o.count == 2),
        "{:?}",
        analysis.outcomes
    );
}

/// A server closing with unread bytes sends an RST (`tcp_close`): local on its side, no error
/// (its application closed it); the client, still ESTABLISHED, reads ECONNRESET.
#[test]
#[ignore = "needs root and BPF"]
fn a_close_with_unread_bytes_is_a_local_reset() {
    let _netns = NetNs::enter();
    let (listener, addr) = support::listen("127.0.0.1:0");
    let tracer = tracer_on(addr.port());
    let reports = error_reports(&tracer);
    let (mut client, server) = pair(&listener);
    client.write_all(b"unread").unwrap();
    // Until the bytes are in the server's receive queue.
    let deadline = Instant::now() + support::WAIT;
    while unread(&server) < 6 {
        assert!(Instant::now() < deadline, "the bytes never arrived");
        thread::sleep(Duration::from_millis(5));
    }
    server_reset(&tracer, reports, &mut client, server, addr);
    drop(tracer.stop());
}

/// Bytes waiting in a socket's receive queue (`FIONREAD`).
fn unread(stream: &TcpStream) -> i32 {
    let mut n: i32 = 0;
    // SAFETY: FIONREAD writes one int.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0);
    n
}

/// A connect to a port nobody listens on: the peer answers with an RST, the application gets
/// ECONNREFUSED.
#[test]
#[ignore = "needs root and BPF"]
fn a_refused_connect_is_connect_failed_with_econnrefused() {
    let _netns = NetNs::enter();
    let dead = support::dead_port("127.0.0.1:0");
    let tracer = tracer_on(dead.port());
    let reports = error_reports(&tracer);
    let err = TcpStream::connect(dead).expect_err("nobody listens");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED), "{err}");
    assert_eq!(
        cause_of(&tracer, failed_connect(&tracer, dead)),
        (
            Outcome::ConnectFailed,
            expected(reports, "ECONNREFUSED"),
            Some(ResetBy::Peer)
        )
    );
    drop(tracer.stop());
}

/// Takes the namespace's loopback down: its routes go, so what the sockets on it send is
/// dropped, with no RST and no ICMP error.
fn cut_the_link() {
    support::field::ip(&["link", "set", "lo", "down"]);
}

/// A connection on loopback with `setup` applied to the client socket before it connects:
/// (client, accepted server side).
fn connection(setup: impl Fn(&TcpStream)) -> (TcpStream, TcpStream) {
    let (listener, addr) = support::listen("127.0.0.1:0");
    let client = TcpStream::from(tcp_socket());
    setup(&client);
    let SocketAddr::V4(v4) = addr else {
        unreachable!("an IPv4 listener")
    };
    nix::sys::socket::connect(client.as_raw_fd(), &nix::sys::socket::SockaddrIn::from(v4))
        .expect("connect on loopback");
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// `read` until it fails (bounded by the kernel's timers and [`support::WAIT`]); the error.
fn read_error(stream: &mut TcpStream) -> std::io::Error {
    stream.set_read_timeout(Some(support::WAIT)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => panic!("EOF instead of an error"),
            Ok(_) => {}
            Err(e) => return e,
        }
    }
}

/// A connection made with `setup` applied to its client socket, traced, then its link cut; the
/// client writes `unacked` (nothing for an idle connection), and its next read must fail with
/// ETIMEDOUT. Whether error reports are traced, and the cause the client's end reports.
fn timeout_with_the_link_down(setup: impl Fn(&TcpStream), unacked: &[u8]) -> (bool, Cause) {
    let (mut client, _server) = connection(setup);
    let (local, remote) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
    let tracer = tracer_on(remote.port());
    let reports = error_reports(&tracer);
    cut_the_link();
    client.write_all(unacked).unwrap();
    let err = read_error(&mut client);
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    let cause = cause(&tracer, local, remote);
    drop(tracer.stop());
    (reports, cause)
}

/// Data left unacknowledged with the link down, `TCP_USER_TIMEOUT` of 1 s: the kernel gives up
/// at its next retransmission timeout (`tcp_write_err`), no RST, ETIMEDOUT.
#[test]
#[ignore = "needs root and BPF"]
fn a_user_timeout_with_the_link_down_is_a_timeout() {
    let _netns = NetNs::enter();
    let (reports, cause) = timeout_with_the_link_down(
        |s| setsockopt(s, sockopt::TcpUserTimeout, &1000).expect("TCP_USER_TIMEOUT"),
        b"never acknowledged",
    );
    let outcome = if reports {
        Outcome::Timeout
    } else {
        Outcome::Aborted
    };
    assert_eq!(cause, (outcome, expected(reports, "ETIMEDOUT"), None));
}

/// An idle connection with the link down and keepalive probes every second, one allowed to go
/// unanswered: the kernel gives up with ETIMEDOUT, and sends an RST of its own as it does
/// (`tcp_keepalive_timer`: `tcp_send_active_reset`, then `tcp_write_err`), so `reset_by` is
/// `local` while the outcome is a timeout.
#[test]
#[ignore = "needs root and BPF"]
fn keepalive_with_the_link_down_is_a_timeout() {
    let _netns = NetNs::enter();
    let (reports, cause) = timeout_with_the_link_down(
        |s| {
            setsockopt(s, sockopt::KeepAlive, &true).unwrap();
            setsockopt(s, sockopt::TcpKeepIdle, &1).unwrap();
            setsockopt(s, sockopt::TcpKeepInterval, &1).unwrap();
            setsockopt(s, sockopt::TcpKeepCount, &1).unwrap();
        },
        b"",
    );
    let outcome = if reports {
        Outcome::Timeout
    } else {
        Outcome::Reset
    };
    assert_eq!(
        cause,
        (
            outcome,
            expected(reports, "ETIMEDOUT"),
            Some(ResetBy::Local)
        )
    );
}

/// A connect to an address routed out of loopback that nothing answers (the namespace does not
/// forward: the SYNs are dropped, silently), `TCP_SYNCNT` 1 and `TCP_USER_TIMEOUT` 1 s:
/// ETIMEDOUT within seconds.
#[test]
#[ignore = "needs root and BPF"]
fn a_connect_to_a_blackhole_is_connect_failed_with_etimedout() {
    let _netns = NetNs::enter();
    let hole = [10, 211, 0, 9];
    support::field::ip(&["route", "add", "10.211.0.0/24", "dev", "lo"]);
    let port = 9;
    let tracer = tracer_on(port);
    let reports = error_reports(&tracer);
    let started = Instant::now();
    let socket = tcp_socket();
    set_int(&socket, libc::IPPROTO_TCP, libc::TCP_SYNCNT, 1);
    setsockopt(&socket, sockopt::TcpUserTimeout, &1000).unwrap();
    let to = nix::sys::socket::SockaddrIn::new(hole[0], hole[1], hole[2], hole[3], port);
    let err = nix::sys::socket::connect(socket.as_raw_fd(), &to).expect_err("nobody answers");
    assert_eq!(err, nix::errno::Errno::ETIMEDOUT);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        cause_of(&tracer, failed_connect(&tracer, (hole, port).into())),
        (Outcome::ConnectFailed, expected(reports, "ETIMEDOUT"), None)
    );
    drop(tracer.stop());
}

/// The cause programs read their tracepoints' records at the offsets in
/// `tracer_common::cause`: checked against the running kernel's `format` files, for each
/// tracepoint it has.
#[test]
#[ignore = "needs root and BPF"]
fn the_running_kernels_cause_records_match_the_programs_offsets() {
    let _netns = NetNs::enter();
    let events = Path::new("/sys/kernel/tracing/events");
    if !events.is_dir() {
        // Mounted by the tracer: start one to have it mounted.
        let tracer = Tracer::start(&["-p", "9"]);
        drop(tracer.stop());
    }
    let all: [(&str, &[Field]); 3] = [
        ("tcp/tcp_send_reset", &send_reset::FIELDS),
        ("tcp/tcp_receive_reset", &receive_reset::FIELDS),
        ("sock/inet_sk_error_report", &error_report::FIELDS),
    ];
    let mut checked = 0;
    for (tp, fields) in all {
        let Ok(format) = fs::read_to_string(events.join(tp).join("format")) else {
            eprintln!("this kernel has no {tp}");
            continue;
        };
        let wrong = tracer::cause::format::mismatches(fields, &format);
        assert!(wrong.is_empty(), "{tp}: {wrong:?}\n{format}");
        checked += 1;
    }
    assert!(checked >= 2, "the reset tracepoints exist since Linux 4.15");
}
