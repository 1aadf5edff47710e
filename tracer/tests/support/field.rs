//! Network namespaces and sockets for the identity tests: each namespace is created by the
//! test (`ip netns add`, uniquely named) and removed when its guard drops.

use std::{
    fs::File,
    net::{SocketAddr, TcpStream},
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, IntoRawFd as _},
        unix::fs::MetadataExt as _,
    },
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// A network namespace made with `ip netns add`, loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
    deleted: bool,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Netns {
    pub fn new() -> Netns {
        let name = format!(
            "tr11-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name,
            deleted: false,
        };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Inode of the namespace, as `lsns -t net` shows it.
    pub fn inode(&self) -> u64 {
        std::fs::metadata(self.path()).unwrap().ino()
    }

    /// Removes the bind mount: the namespace then lives only as long as what is inside it.
    pub fn delete(&mut self) {
        ip(&["netns", "del", &self.name]);
        self.deleted = true;
    }

    /// Runs `f` on a thread inside this namespace (sockets it makes stay in it).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.path()).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&file);
                f()
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }
}

/// Moves the calling thread into the namespace open as `file`.
pub fn enter(file: &File) {
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("enter the network namespace");
}

/// Inode of the calling thread's network namespace.
pub fn current_netns() -> u64 {
    std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

/// Runs `ip ARGS` (Debian's iproute2) and fails the test unless it succeeds.
pub fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip {args:?} failed: {status}");
}

/// A TCP connection from `local` to `remote` (the local port chosen by the test).
pub fn connect_from(local: SocketAddr, remote: SocketAddr) -> TcpStream {
    use nix::sys::socket::{
        bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let SocketAddr::V4(local) = local else {
        panic!("IPv4 only")
    };
    let SocketAddr::V4(remote) = remote else {
        panic!("IPv4 only")
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    setsockopt(&fd, sockopt::ReuseAddr, &true).unwrap();
    bind(fd.as_raw_fd(), &SockaddrIn::from(local)).unwrap();
    connect(fd.as_raw_fd(), &SockaddrIn::from(remote)).unwrap();
    // SAFETY: the descriptor is ours and moves into the stream.
    unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) }
}
