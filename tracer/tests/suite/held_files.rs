//! The held-file iterator (`iter/task_file`) that the owner lookups read instead of walking
//! every `/proc/PID/fd`, pinned to procfs's reading of this process's descriptors: the same
//! sockets (TCP on IPv4 and IPv6, UDP, Unix) and network namespace files, under the same
//! descriptor numbers and inodes, and processes named by the pids `/proc` gives them.

use std::{
    collections::BTreeSet,
    net::{TcpListener, TcpStream, UdpSocket},
    os::{
        fd::{AsRawFd as _, OwnedFd},
        unix::{fs::MetadataExt as _, net::UnixStream},
    },
    process::{Command, Stdio},
};

use tracer::{
    config::{HookChoice, KernelFilter},
    decode,
    probe::Probe,
};
use tracer_common::{HeldFile, HELD_NAMESPACE, HELD_SOCKET};

#[test]
#[ignore = "needs root and BPF"]
fn the_iterator_lists_the_sockets_and_namespaces_procfs_lists() {
    // Sockets of every kind this process holds while both readings are made.
    let listeners: Vec<TcpListener> = (0..16)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let v6 = TcpListener::bind("[::1]:0").unwrap();
    let client = TcpStream::connect(v6.local_addr().unwrap()).unwrap();
    let (server, _) = v6.accept().unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (unix_a, unix_b) = UnixStream::pair().unwrap();
    // A network namespace file held open, as `ip netns exec` and container runtimes do.
    let netns = std::fs::File::open("/proc/self/ns/net").unwrap();
    // And another process: `sleep` holding a listener as its standard input (fd 0).
    let lent = TcpListener::bind("127.0.0.1:0").unwrap();
    let lent_inode = std::fs::metadata(format!("/proc/self/fd/{}", lent.as_raw_fd()))
        .unwrap()
        .ino();
    let mut child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::from(OwnedFd::from(lent)))
        .spawn()
        .unwrap();

    let filter = KernelFilter {
        family: 0,
        protocol: tracer_common::IPPROTO_TCP,
        ports: vec![1],
        ring_buffer_bytes: 1 << 20,
        netns: None,
        hook: HookChoice::Auto,
        track_reads: false,
    };
    // The loader's log reader needs a runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let (mut probe, _ring) = Probe::load(&filter).unwrap_or_else(|e| panic!("loading: {e:#}"));
    let file = probe
        .held_files()
        .expect("the socket-file iterator loads on every supported kernel (5.10+)");
    let listed = decode::read_held_files(file).unwrap();

    let me = std::process::id();
    let from_iterator: BTreeSet<(u32, i32, u64)> = listed
        .iter()
        .filter(|f| f.tgid == me)
        .map(|f| (f.kind, i32::try_from(f.fd).unwrap(), f.inode))
        .collect();
    let from_procfs: BTreeSet<(u32, i32, u64)> = procfs::process::Process::myself()
        .unwrap()
        .fd()
        .unwrap()
        .flatten()
        .filter_map(|fd| match fd.target {
            procfs::process::FDTarget::Socket(inode) => Some((HELD_SOCKET, fd.fd, inode)),
            procfs::process::FDTarget::Net(inode) => Some((HELD_NAMESPACE, fd.fd, inode)),
            _ => None,
        })
        .collect();
    assert_eq!(from_iterator, from_procfs);
    assert!(
        from_iterator.len() >= listeners.len() + 7,
        "{} files listed for this process",
        from_iterator.len()
    );
    let netns_inode = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    assert!(from_iterator.contains(&(HELD_NAMESPACE, netns.as_raw_fd(), netns_inode)));
    // Other processes are listed too, by the pid `/proc` gives them.
    let other = HeldFile {
        inode: lent_inode,
        tgid: child.id(),
        fd: 0,
        kind: HELD_SOCKET,
        reserved: 0,
    };
    let found = listed.contains(&other);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(found, "{other:?} not among {} sockets listed", listed.len());
    drop((client, server, udp, unix_a, unix_b, netns));
}

/// A lookup says which walk it used (`-v`): the iterator on the host; `/proc/*/fd`, and why,
/// for a tracer in a pid namespace of its own (`unshare -p --mount-proc`: the kernel's pids are
/// not that `/proc`'s, so the iterator would name the wrong processes).
#[test]
#[ignore = "needs root and BPF"]
fn the_walk_falls_back_to_proc_in_a_pid_namespace_of_its_own() {
    let tracer = crate::support::tracer_binary();
    let run = |prefix: &[&str]| {
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&tracer);
                cmd
            }
            None => Command::new(&tracer),
        };
        let out = cmd
            .env_remove("TRACER_LOG")
            .args(["-v", "-p", "1", "--duration", "1s"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let host = run(&[]);
    assert!(host.contains("fd walk: bpf iter/task_file"), "{host}");
    let inner = run(&["unshare", "--pid", "--fork", "--mount-proc"]);
    assert!(inner.contains("fd walk: /proc/*/fd"), "{inner}");
    assert!(inner.contains("pid namespace of its own"), "{inner}");
}
