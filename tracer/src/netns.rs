//! Network namespaces: find every one that holds TCP sockets, and run a reader inside each.
//!
//! A namespace is reachable from userspace through an nsfs file: a task's `ns/net` (every
//! thread of every process: a thread may have moved with `setns`), an open namespace file
//! descriptor a process holds, an nsfs bind mount (`ip netns add` keeps one in `/run/netns`),
//! or a socket itself (`ioctl(SIOCGSKNS)` on a duplicate of a process's socket descriptor).
//! How a namespace's table is read is kept apart from how namespaces are found:
//! [`in_netns`] runs any reader on a thread that has entered the namespace.

use std::{
    collections::HashSet,
    fs::File,
    io,
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

/// An open network namespace.
#[derive(Debug)]
pub struct Netns {
    /// Inode number of the namespace, as `lsns -t net` and `/proc/PID/ns/net` show it.
    pub inode: u64,
    file: File,
    /// The `/proc/PID/task/TID` of a task found in it, when it was found through one.
    task: Option<PathBuf>,
}

impl Netns {
    /// Opens a namespace file (`/proc/PID/ns/net`, `/proc/PID/task/TID/ns/net`,
    /// `/run/netns/NAME`, ...).
    pub fn open(path: &Path) -> io::Result<Netns> {
        let file = File::open(path)?;
        let inode = file.metadata()?.ino();
        let task = path
            .strip_prefix("/proc")
            .is_ok()
            .then(|| path.parent().and_then(Path::parent).map(Path::to_path_buf))
            .flatten()
            .filter(|_| path.ends_with("ns/net"));
        Ok(Netns { inode, file, task })
    }

    /// The `/proc/.../net` directory of a task in this namespace, whose `tcp` and `tcp6` are
    /// the namespace's tables, readable without entering it (`setns` needs `CAP_SYS_ADMIN`);
    /// `None` when it was found through no task (only through a bind mount, a descriptor or a
    /// socket), or that task and its process's leader have left it.
    pub fn proc_net(&self) -> Option<PathBuf> {
        let task = self.task.as_ref()?;
        // The thread it was found through, or (that thread gone) its process's leader.
        let process = task
            .parent()
            .filter(|dir| dir.ends_with("task"))
            .and_then(Path::parent);
        [Some(task.as_path()), process]
            .into_iter()
            .flatten()
            .find(|dir| inode_of(&dir.join("ns/net")) == Some(self.inode))
            .map(|dir| dir.join("net"))
    }

    /// The namespace of the calling thread.
    #[cfg(test)]
    pub fn current() -> io::Result<Netns> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }
}

/// The namespace inode of a namespace file, without opening it.
pub fn inode_of(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.ino())
}

/// Runs `read` on a new thread that has entered `netns`; the caller's thread is untouched.
pub fn in_netns<T: Send>(
    netns: &Netns,
    read: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(netns.file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)?;
                read()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace reader panicked")))
    })
}

/// Finds namespaces, each once, in the order first met.
#[derive(Debug, Default)]
pub struct Finder {
    seen: HashSet<u64>,
    found: Vec<Netns>,
}

impl Finder {
    /// Adds the namespace behind `path` when it is new. Unreadable paths are skipped.
    pub fn add_path(&mut self, path: &Path) {
        let Some(inode) = inode_of(path) else { return };
        if self.seen.contains(&inode) {
            return;
        }
        if let Ok(ns) = Netns::open(path) {
            // The namespace may be another one if the path changed between the two calls.
            if self.seen.insert(ns.inode) {
                self.found.push(ns);
            }
        }
    }

    /// Adds an already open namespace when it is new.
    pub fn add(&mut self, ns: Netns) {
        if self.seen.insert(ns.inode) {
            self.found.push(ns);
        }
    }

    /// Has this namespace been found?
    pub fn knows(&self, inode: u64) -> bool {
        self.seen.contains(&inode)
    }

    /// Every task's namespace, and (unless `threads_only`: the held-file iterator lists them
    /// instead, see [`Finder::add_descriptor`]) the namespace files processes hold open, found
    /// by reading the link of every descriptor in every `/proc/PID/fd`.
    pub fn add_tasks(&mut self, threads_only: bool) {
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for entry in procs.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let dir = entry.path();
            if let Ok(tasks) = std::fs::read_dir(dir.join("task")) {
                for task in tasks.flatten() {
                    self.add_path(&task.path().join("ns/net"));
                }
            }
            let pid = name.to_string_lossy().parse::<u32>().ok();
            if let (false, Some(pid), Ok(fds)) =
                (threads_only, pid, std::fs::read_dir(dir.join("fd")))
            {
                for fd in fds.flatten() {
                    if let Ok(fd) = fd.file_name().to_string_lossy().parse::<u32>() {
                        self.add_descriptor(pid, fd);
                    }
                }
            }
        }
    }

    /// A namespace file process `pid` holds open as descriptor `fd` (one the held-file
    /// iterator listed, or one of a `/proc/PID/fd` walk), when it is a network namespace's.
    /// The descriptor itself is duplicated (`pidfd_getfd`) and its kind checked on the copy:
    /// opening `/proc/PID/fd/N` again could open another file if the number was reused since
    /// (a FIFO would block the scan), and a check of the link before opening could be stale.
    pub fn add_descriptor(&mut self, pid: u32, fd: u32) {
        let link = format!("/proc/{pid}/fd/{fd}");
        // The link's text sorts out the many descriptors that are no namespace at all.
        let named_net = std::fs::read_link(&link)
            .is_ok_and(|target| target.to_string_lossy().starts_with("net:["));
        if !named_net || inode_of(Path::new(&link)).is_some_and(|inode| self.seen.contains(&inode))
        {
            return;
        }
        let Ok(fd) = i32::try_from(fd) else { return };
        let Ok(copy) = duplicate(pid, fd).map(File::from) else {
            return;
        };
        if is_net_namespace(&copy) {
            if let Ok(meta) = copy.metadata() {
                self.add(Netns {
                    inode: meta.ino(),
                    file: copy,
                    task: None,
                });
            }
        }
    }

    /// Namespaces bind-mounted anywhere (`/run/netns/*`, container runtimes' own places).
    pub fn add_mounts(&mut self) {
        let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        for path in nsfs_mounts(&mountinfo) {
            self.add_path(Path::new(&path));
        }
    }

    /// The namespace a socket of process `pid` (its descriptor `fd`) lives in: found even when
    /// nothing else keeps that namespace. Needs `PTRACE_MODE_ATTACH` on the process (root).
    /// Returns the namespace's inode.
    pub fn add_socket(&mut self, pid: u32, fd: i32) -> io::Result<u64> {
        let ns = socket_netns(pid, fd)?;
        let inode = ns.inode;
        self.add(ns);
        Ok(inode)
    }

    /// The namespaces found so far, in the order met.
    pub fn found(&self) -> &[Netns] {
        &self.found
    }
}

/// Mount points of nsfs mounts in a `mountinfo` file (octal escapes decoded).
pub fn nsfs_mounts(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            (fstype == "nsfs").then_some(())?;
            before.split_whitespace().nth(4).map(unescape)
        })
        .collect()
}

/// Decodes mountinfo's `\040`-style escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            if let Ok(code) = u8::from_str_radix(field.get(i + 1..i + 4).unwrap_or(""), 8) {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Is `file` a network namespace? `ioctl(NS_GET_NSTYPE)` (Linux 4.11) answers for an nsfs
/// file; any other file is first ruled out by its file system (no ioctl reaches its driver).
fn is_net_namespace(file: &File) -> bool {
    let nsfs = nix::sys::statfs::fstatfs(file)
        .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::NSFS_MAGIC);
    // SAFETY: an ioctl without an argument on an nsfs descriptor `file` keeps open.
    nsfs && unsafe { libc::ioctl(file.as_raw_fd(), libc::NS_GET_NSTYPE, 0) } == libc::CLONE_NEWNET
}

/// A copy of descriptor `fd` of process `pid` (`pidfd_open` and `pidfd_getfd`, Linux 5.6;
/// `PTRACE_MODE_ATTACH` on the process, which root has).
fn duplicate(pid: u32, fd: i32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: plain system calls with integer arguments; each returned descriptor is owned at
    // once and closed on drop.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if pidfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let copy = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if copy < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(copy as i32))
    }
}

/// Opens the network namespace of a socket another process holds: duplicate the descriptor,
/// then `ioctl(SIOCGSKNS)`.
fn socket_netns(pid: u32, fd: i32) -> io::Result<Netns> {
    let sock = duplicate(pid, fd)?;
    // SAFETY: an ioctl without an argument on a descriptor `sock` keeps open; the descriptor
    // it returns is owned at once and closed on drop.
    let file = unsafe {
        let ns = libc::ioctl(sock.as_raw_fd(), libc::SIOCGSKNS, 0);
        if ns < 0 {
            return Err(io::Error::last_os_error());
        }
        File::from_raw_fd(ns)
    };
    let inode = file.metadata()?.ino();
    Ok(Netns {
        inode,
        file,
        task: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_nsfs_mounts() {
        let info = "\
24 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
610 25 0:4 net:[4026532290] /run/netns/tr11\\040a rw shared:300 - nsfs nsfs rw
611 25 0:4 net:[4026532291] /run/netns/b rw - nsfs nsfs rw
";
        assert_eq!(nsfs_mounts(info), ["/run/netns/tr11 a", "/run/netns/b"]);
    }

    #[test]
    fn reads_inside_our_own_namespace() {
        let me = Netns::current().unwrap();
        let inside = in_netns(&me, || Ok(inode_of(Path::new("/proc/thread-self/ns/net")))).unwrap();
        assert_eq!(inside, Some(me.inode));
    }

    /// A descriptor is added only when it is a network namespace, checked on a copy of the
    /// descriptor itself: another namespace file, or a plain file, is not one. (A number
    /// reused between the link's read and the copy is what the check on the copy guards
    /// against; that race is not reproduced here.)
    #[test]
    fn only_network_namespaces_are_added_from_descriptors() {
        let opened = |path: &str| File::open(path).unwrap();
        assert!(is_net_namespace(&opened("/proc/self/ns/net")));
        assert!(!is_net_namespace(&opened("/proc/self/ns/uts")));
        assert!(!is_net_namespace(&opened("/proc/self/status")));
        let uts = opened("/proc/self/ns/uts");
        let net = opened("/proc/self/ns/net");
        let mut f = Finder::default();
        f.add_descriptor(std::process::id(), uts.as_raw_fd() as u32);
        assert!(f.found().is_empty());
        f.add_descriptor(std::process::id(), net.as_raw_fd() as u32);
        assert_eq!(f.found().len(), 1);
    }

    #[test]
    fn finder_dedups() {
        let mut f = Finder::default();
        f.add_path(Path::new("/proc/self/ns/net"));
        f.add_path(Path::new("/proc/thread-self/ns/net"));
        assert_eq!(f.found().len(), 1);
    }
}
