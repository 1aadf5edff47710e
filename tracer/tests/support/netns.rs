//! A network namespace of its own for each privileged test.
//!
//! [`NetNs::enter`] moves the calling thread into a new network namespace with `lo` up; every
//! socket the test opens after that, every thread it starts and every process it spawns (the
//! tracer, helpers) live there, so tests see neither each other's ports nor the host's. Dropping
//! the guard moves the thread back; the namespace goes away with the last socket or process in
//! it. The tracepoint is global across namespaces, so the tracer still sees every namespace's
//! transitions: tests keep their port filters.

use std::{fs::File, marker::PhantomData, process::Command};

use nix::sched::{setns, unshare, CloneFlags};

use super::require_root;

/// While alive, the calling thread is in a fresh network namespace. Not `Send`: the namespace
/// belongs to the thread that entered it.
pub struct NetNs {
    host: File,
    _thread_bound: PhantomData<*const ()>,
}

impl NetNs {
    /// Enters a new network namespace and brings its loopback up (with Debian's iproute2,
    /// `ip link set lo up`). Panics when that is not possible (not root, no `ip`).
    pub fn enter() -> NetNs {
        require_root();
        let host = File::open("/proc/thread-self/ns/net").expect("open this thread's netns");
        unshare(CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        let inode = |file: &File| std::os::unix::fs::MetadataExt::ino(&file.metadata().unwrap());
        let own = File::open("/proc/thread-self/ns/net").expect("open the new netns");
        assert_ne!(
            inode(&own),
            inode(&host),
            "unshare left the thread in its namespace"
        );
        let guard = NetNs {
            host,
            _thread_bound: PhantomData,
        };
        // A child inherits the namespace of the thread that spawns it.
        let status = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap_or_else(|e| panic!("run `ip link set lo up` (install iproute2): {e}"));
        assert!(status.success(), "`ip link set lo up` failed: {status}");
        guard
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.host, CloneFlags::CLONE_NEWNET) {
            if std::thread::panicking() {
                eprintln!("could not return to the host's network namespace: {e}");
            } else {
                panic!("could not return to the host's network namespace: {e}");
            }
        }
    }
}
