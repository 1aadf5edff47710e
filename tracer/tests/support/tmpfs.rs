//! A small disk of the test's own: a tmpfs in a mount namespace of the calling thread.
//!
//! [`Tmpfs::mount`] moves the calling thread into a new mount namespace (mounts there do not
//! propagate to the host's) and mounts a tmpfs of the given size on a fresh directory; the
//! processes the thread spawns (the tracer) see it. Dropping the guard moves the thread back;
//! the tmpfs goes away with the namespace.

use std::{fs::File, marker::PhantomData, path::Path};

use nix::{
    mount::{mount, MsFlags},
    sched::{setns, unshare, CloneFlags},
};

use super::require_root;

/// While alive, the calling thread sees a tmpfs of a fixed size at [`Tmpfs::path`]. Not
/// `Send`: the mount namespace belongs to the thread that entered it.
pub struct Tmpfs {
    host: File,
    dir: tempfile::TempDir,
    _thread_bound: PhantomData<*const ()>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` bytes (rounded up to pages) in a new mount namespace.
    pub fn mount(bytes: u64) -> Tmpfs {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        let host = File::open("/proc/thread-self/ns/mnt").expect("open this thread's mount ns");
        unshare(CloneFlags::CLONE_NEWNS).expect("unshare(CLONE_NEWNS)");
        let guard = Tmpfs {
            host,
            dir,
            _thread_bound: PhantomData,
        };
        // Nothing mounted from here on reaches the host's namespace.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .expect("make the new mount namespace private");
        mount(
            Some("tmpfs"),
            guard.dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(format!("size={bytes}").as_str()),
        )
        .expect("mount a tmpfs");
        guard
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Threads spawned meanwhile share this thread's filesystem context until they end
        // (setns refuses while they do: EINVAL): the readers of a tracer that exited end at
        // once. Staying in the namespace is harmless: this thread ends with the test.
        for _ in 0..100 {
            match setns(&self.host, CloneFlags::CLONE_NEWNS) {
                Ok(()) => return,
                Err(nix::errno::Errno::EINVAL) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    eprintln!("could not return to the host's mount namespace: {e}");
                    return;
                }
            }
        }
        eprintln!("could not return to the host's mount namespace: threads still share it");
    }
}
