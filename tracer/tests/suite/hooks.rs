//! End-to-end tests of the two kernel hooks: the BTF-enabled raw tracepoint (`tp_btf`, fields
//! read at offsets from the kernel's BTF) and the classic tracepoint. Both are loaded at once
//! on the same connections, so every field they report can be compared one for one; the
//! network namespace, process name, thread name and thread id, and whether a closed socket was
//! already orphaned, are checked against what the test itself knows.

use std::{
    net::{Shutdown, TcpListener, TcpStream},
    os::unix::fs::MetadataExt as _,
    thread,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tracer::{
    config::{HookChoice, KernelFilter},
    decode::{decode, decode_any, Decoded},
    event::{TcpState, Transition},
    probe::{Hook, Probe},
    record::Record,
};

use crate::support::{self, NetNs, WAIT};

const THREAD: &str = "hooks-client";

fn load(choice: HookChoice, port: u16, netns: Option<u32>) -> (Probe, RingBuf<MapData>) {
    let filter = KernelFilter {
        family: 0,
        protocol: tracer_common::IPPROTO_TCP,
        ports: vec![port],
        ring_buffer_bytes: 1 << 20,
        netns,
        hook: choice,
        track_reads: false,
    };
    Probe::load(&filter).unwrap_or_else(|e| panic!("loading {choice:?}: {e:#}"))
}

/// What the connecting thread knows about itself.
struct Me {
    netns: u64,
    tid: u32,
}

fn netns_inode(path: &str) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

/// One connection to `listener`, every socket call made from a thread named [`THREAD`] (see
/// [`connection_here`]).
fn connection(listener: &TcpListener) -> Me {
    let listener = listener.try_clone().unwrap();
    thread::Builder::new()
        .name(THREAD.into())
        .spawn(move || connection_here(&listener))
        .unwrap()
        .join()
        .unwrap()
}

/// Reads decoded events until both sockets of the connection on `port` reached CLOSE
/// (listeners' own transitions left out).
fn collect(ring: &mut RingBuf<MapData>, port: u16) -> Vec<Transition> {
    let deadline = Instant::now() + WAIT;
    let mut out = Vec::new();
    loop {
        while let Some(item) = ring.next() {
            // The causes (a reset sent or received) share the ring; only transitions count.
            let Decoded::Transition(t) = decode_any(&item).expect("a well-formed record") else {
                continue;
            };
            let listener = t.new == TcpState::Listen
                || (t.old == TcpState::Listen && t.new == TcpState::Close);
            if !listener {
                out.push(t);
            }
        }
        let closed = out
            .iter()
            .filter(|t| t.new == TcpState::Close && (t.lport == port || t.rport == port))
            .count();
        if closed >= 2 {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for both sockets on port {port} to close; got {out:#?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// The fields of a transition both hooks must agree on: all but the timestamp.
fn comparable(t: &Transition) -> Transition {
    Transition {
        ts_ns: 0,
        ..t.clone()
    }
}

fn check_identity(t: &Transition, me: &Me, port: u16) {
    let process = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(t.netns, me.netns, "{t:?}");
    assert!(t.lport == port || t.rport == port, "{t:?}");
    // Transitions made by a system call run in the connecting thread.
    let syscall = matches!(
        (t.old, t.new),
        (TcpState::Close, TcpState::SynSent)
            | (TcpState::Established, TcpState::FinWait1)
            | (TcpState::CloseWait, TcpState::LastAck)
    );
    // Whether the socket was orphaned, read on transitions to CLOSE only: the server's final
    // ACK comes after its close() (an orphan); the client's FIN_WAIT2 ends when the server's
    // FIN arrives, before the client closes its socket.
    let orphan = match (t.old, t.new) {
        (TcpState::LastAck, TcpState::Close) => Some(true),
        (TcpState::FinWait2, TcpState::Close) => Some(false),
        _ => None,
    };
    assert_eq!(t.orphan, orphan, "{t:?}");
    // No upper layer protocol on a plain TCP socket, read on transitions to CLOSE only.
    let ulp = (t.new == TcpState::Close).then_some(false);
    assert_eq!(t.ulp, ulp, "{t:?}");
    if syscall {
        assert_eq!(t.task.pid, std::process::id(), "{t:?}");
        assert_eq!(t.task.tid, me.tid, "{t:?}");
        assert_eq!(t.task.thread, THREAD, "{t:?}");
        assert_eq!(t.task.comm, process.trim_end(), "{t:?}");
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn both_hooks_agree(listen: &str) {
    support::require_root();
    let _ns = NetNs::enter();
    let runtime = runtime();
    let _guard = runtime.enter();
    let listener = TcpListener::bind(listen).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (btf, mut btf_ring) = load(HookChoice::TpBtf, port, None);
    let (classic, mut classic_ring) = load(HookChoice::Tracepoint, port, None);
    assert_eq!(btf.hook(), Hook::TpBtf);
    assert_eq!(classic.hook(), Hook::Tracepoint);

    let me = connection(&listener);
    let from_btf = agreed(&mut btf_ring, &mut classic_ring, port);
    assert_eq!(from_btf.len(), 10, "{from_btf:#?}");
    for t in &from_btf {
        check_identity(t, &me, port);
    }
    assert_eq!(btf.lost(), 0);
    assert_eq!(classic.lost(), 0);
}

#[test]
#[ignore = "needs root and BPF"]
fn ipv4_tp_btf_and_tracepoint_report_the_same_transitions() {
    both_hooks_agree("127.0.0.1:0");
}

#[test]
#[ignore = "needs root and BPF"]
fn ipv6_tp_btf_and_tracepoint_report_the_same_transitions() {
    both_hooks_agree("[::1]:0");
}

/// An MPTCP connection in a namespace of this test's own: its subflows are TCP sockets
/// (`IPPROTO_TCP`) with MPTCP attached as their upper layer protocol, which both hooks read at
/// every transition to CLOSE (the cause window holds a subflow's end: MPTCP may reset it
/// afterwards). The MPTCP sockets themselves are left out by the protocol filter.
#[test]
#[ignore = "needs root and BPF"]
fn an_mptcp_subflow_says_so_at_its_close() {
    use std::os::fd::AsRawFd as _;

    use nix::sys::socket::{bind, connect, listen, Backlog, SockaddrIn};
    support::require_root();
    let _ns = NetNs::enter();
    let runtime = runtime();
    let _guard = runtime.enter();
    let mptcp = || support::mptcp_socket(libc::AF_INET);
    let listen_fd = mptcp();
    bind(listen_fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0)).unwrap();
    listen(&listen_fd, Backlog::new(8).unwrap()).unwrap();
    let listener = TcpListener::from(listen_fd);
    let addr = listener.local_addr().unwrap();
    let port = addr.port();
    let (_btf, mut btf_ring) = load(HookChoice::TpBtf, port, None);
    let (_classic, mut classic_ring) = load(HookChoice::Tracepoint, port, None);

    let client_fd = mptcp();
    connect(client_fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    support::exchange(TcpStream::from(client_fd), server);

    let from_btf = agreed(&mut btf_ring, &mut classic_ring, port);
    let closes: Vec<_> = from_btf
        .iter()
        .filter(|t| t.new == TcpState::Close)
        .collect();
    assert!(closes.len() >= 2, "{from_btf:#?}");
    for t in &from_btf {
        assert_eq!(t.protocol, tracer_common::IPPROTO_TCP, "{t:?}");
        let ulp = (t.new == TcpState::Close).then_some(true);
        assert_eq!(t.ulp, ulp, "a subflow: {t:?}");
    }
}

/// Connections in two namespaces of this test's own on the same port: each hook reports each
/// socket's own namespace, and with the namespace filter only that namespace's transitions.
#[test]
#[ignore = "needs root and BPF"]
fn network_namespace_of_the_socket_and_its_filter() {
    support::require_root();
    let _ns = NetNs::enter();
    let runtime = runtime();
    let _guard = runtime.enter();
    let here = netns_inode("/proc/thread-self/ns/net");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The other namespace's listener, on the same port, from a thread of its own.
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let worker = thread::Builder::new()
        .name(THREAD.into())
        .spawn(move || {
            let _other = NetNs::enter();
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            tx.send(netns_inode("/proc/thread-self/ns/net")).unwrap();
            go_rx.recv().unwrap();
            connection_here(&listener)
        })
        .unwrap();
    let there = rx.recv().unwrap();
    assert_ne!(here, there);
    let mut all: Vec<_> = [HookChoice::TpBtf, HookChoice::Tracepoint]
        .into_iter()
        .map(|choice| load(choice, port, None))
        .collect();
    let mut only_there: Vec<_> = [HookChoice::TpBtf, HookChoice::Tracepoint]
        .into_iter()
        .map(|choice| load(choice, port, Some(u32::try_from(there).unwrap())))
        .collect();
    go_tx.send(()).unwrap();
    let me_there = worker.join().unwrap();
    assert_eq!(me_there.netns, there);
    let me_here = connection(&listener);
    for (probe, ring) in &mut all {
        let seen = collect(ring, port);
        // Both connections, until the second one's two CLOSEs.
        let mut seen = seen;
        while seen.iter().filter(|t| t.new == TcpState::Close).count() < 4 {
            seen.extend(collect(ring, port));
        }
        assert_eq!(seen.len(), 20, "{seen:#?}");
        let (a, b): (Vec<_>, Vec<_>) = seen.iter().partition(|t| t.netns == there);
        assert_eq!((a.len(), b.len()), (10, 10), "{seen:#?}");
        for t in a {
            check_identity(t, &me_there, port);
        }
        for t in b {
            check_identity(t, &me_here, port);
        }
        assert_eq!(probe.lost(), 0);
    }
    for (probe, ring) in &mut only_there {
        let seen = collect(ring, port);
        assert_eq!(seen.len(), 10, "{seen:#?}");
        for t in &seen {
            check_identity(t, &me_there, port);
        }
        // Nothing from this test's own namespace followed (at most the other listener's close).
        thread::sleep(Duration::from_millis(100));
        while let Some(item) = ring.next() {
            let t = decode(&item).unwrap();
            assert_eq!(
                (t.old, t.netns),
                (TcpState::Listen, there),
                "{:?}",
                probe.hook()
            );
        }
    }
}

/// One connection to `listener` from the calling thread: the client sends, shuts down its
/// write side, the server reads to EOF and closes, then the client closes (client: active
/// close; server: CLOSE_WAIT then LAST_ACK).
fn connection_here(listener: &TcpListener) -> Me {
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    support::exchange(client, server);
    Me {
        netns: netns_inode("/proc/thread-self/ns/net"),
        tid: u32::try_from(nix::unistd::gettid().as_raw()).unwrap(),
    }
}

/// One connection's transitions from both hooks' rings ([`collect`]), which must agree on
/// every field but the timestamp: those of the `tp_btf` hook.
fn agreed(
    btf: &mut RingBuf<MapData>,
    classic: &mut RingBuf<MapData>,
    port: u16,
) -> Vec<Transition> {
    let from_btf = collect(btf, port);
    let from_classic = collect(classic, port);
    assert_eq!(
        from_btf.iter().map(comparable).collect::<Vec<_>>(),
        from_classic.iter().map(comparable).collect::<Vec<_>>(),
        "tp_btf and the classic tracepoint disagree"
    );
    from_btf
}

/// The binary says which hook it attached, on stderr and in the header; `--hook` and
/// `TRACER_HOOK` force one. The forced classic tracepoint traces a connection end to end.
#[test]
#[ignore = "needs root and BPF"]
fn the_binary_names_its_hook_and_obeys_the_choice() {
    support::require_root();
    let _ns = NetNs::enter();
    let (listener, addr) = support::listen("127.0.0.1:0");
    let port = addr.port().to_string();
    let run = |args: &[&str], env: Option<&str>| {
        use std::io::BufRead as _;
        let mut cmd = support::tracer_command();
        cmd.args(["--json", "-p", &port]).args(args);
        cmd.env_remove("TRACER_HOOK");
        if let Some(value) = env {
            cmd.env("TRACER_HOOK", value);
        }
        let mut child = cmd
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        // Warnings (a kernel without one of the cause tracepoints) may come first; the
        // "attached" line says the program is in.
        let mut stderr = String::new();
        while !stderr.contains("attached to") && err.read_line(&mut stderr).unwrap() > 0 {}
        // One connection while it runs: both sockets through to CLOSE.
        let mut client = TcpStream::connect(addr).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        support::read_to_end(&mut server);
        drop(server);
        support::read_to_end(&mut client);
        drop(client);
        let closed = |out: &str| {
            support::transitions_on(&support::records(out), addr.port())
                .iter()
                .filter(|t| t.new_state == TcpState::Close)
                .count()
        };
        // The last CLOSE reaches the tracer promptly; give it a moment, then stop it.
        thread::sleep(Duration::from_millis(300));
        let (status, out) = support::stop_piped(&mut child);
        assert!(status.success(), "{args:?}: {stderr}");
        assert_eq!(closed(&out), 2, "{args:?} {env:?}: {out}");
        let records = support::records(&out);
        let hook = records.iter().find_map(|r| match r {
            Record::Header(h) => h.kernel_features.as_ref().and_then(|f| f.hook.clone()),
            _ => None,
        });
        let transitions = support::transitions_on(&records, addr.port());
        (stderr, hook, transitions)
    };
    let btf = "tp_btf/inet_sock_set_state";
    let classic = "tracepoint/sock/inet_sock_set_state";
    let via = |hook: &str| format!("attached to sock:inet_sock_set_state via {hook};");
    for (args, env, hook) in [
        (&[][..], None, btf),
        (&["--hook", "tp-btf"][..], None, btf),
        (&["--hook", "tracepoint"][..], None, classic),
        (&[][..], Some("tracepoint"), classic),
    ] {
        let (stderr, header_hook, transitions) = run(args, env);
        assert!(stderr.contains(&via(hook)), "{args:?} {env:?}: {stderr}");
        assert_eq!(header_hook.as_deref(), Some(hook), "{args:?} {env:?}");
        // connect, accept and both closes: each socket reaches CLOSE.
        let closes = transitions
            .iter()
            .filter(|t| t.new_state == TcpState::Close)
            .count();
        assert_eq!(closes, 2, "{args:?} {env:?}: {transitions:#?}");
        assert!(
            transitions
                .iter()
                .all(|t| t.netns == Some(netns_inode("/proc/thread-self/ns/net"))),
            "{transitions:#?}"
        );
    }
}
