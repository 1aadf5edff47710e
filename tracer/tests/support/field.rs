//! Network namespaces and sockets for the identity tests: each namespace is created by the
//! test (`ip netns add`, uniquely named) and removed when its guard drops.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, IntoRawFd as _},
        unix::fs::MetadataExt as _,
    },
    process::Command,
    process::{Child, ChildStdin, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
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

fn ip(args: &[&str]) {
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

/// A helper process (this test binary re-run with a filter) that owns sockets, so the tracer
/// has to name a process other than the test's.
pub struct Helper {
    child: Child,
    stdin: ChildStdin,
    lines: std::sync::mpsc::Receiver<String>,
}

/// Name of the environment variable that turns a test into a helper.
pub const HELPER_ENV: &str = "TRACER_TEST_HELPER";

impl Helper {
    /// Runs `test_name` of this test binary as a helper in role `role`, with more
    /// environment variables.
    pub fn spawn_with(test_name: &str, role: &str, env: &[(&str, &str)]) -> Helper {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                test_name,
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HELPER_ENV, role)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the helper");
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // libtest prints "test name ... " on the same line before the test's output.
                if let Some((_, msg)) = line.split_once("HELPER ") {
                    let _ = tx.send(msg.to_owned());
                }
            }
        });
        Helper {
            child,
            stdin,
            lines: rx,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The helper's comm, as the kernel has it.
    pub fn comm(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/comm", self.pid()))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The next message the helper printed.
    pub fn recv(&self) -> String {
        self.lines
            .recv_timeout(super::WAIT)
            .expect("the helper did not answer in time")
    }

    pub fn send(&mut self, msg: &str) {
        writeln!(self.stdin, "{msg}").unwrap();
        self.stdin.flush().unwrap();
    }

    pub fn wait(mut self) {
        let deadline = Instant::now() + super::WAIT;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "helper did not exit");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Helper side: prints a message for the parent.
pub fn tell(msg: &str) {
    println!("HELPER {msg}");
    std::io::stdout().flush().unwrap();
}

/// Helper side: waits for a line from the parent.
pub fn hear() -> String {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    line.trim().to_owned()
}
