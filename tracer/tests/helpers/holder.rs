//! `holder ROLE`: a helper process for the privileged tests, not a user tool. It holds TCP
//! sockets the way the situation under test needs (in another network namespace, forked,
//! passed over a unix socket, from a renamed thread, as `nobody`), so that the tracer has to
//! name a process other than the test's. It talks to the test over stdin/stdout, one line at a
//! time: it prints what it did (`ready PORT`, `fd N`, ...) and waits for commands (`accept`,
//! `close`, `exit`, ...). Stdin at its end counts as `exit`.
//!
//! Roles (environment: `HOLDER_PORT` the port, 0 or unset for any; `HOLDER_NETNS` a network
//! namespace file to enter first; `HOLDER_UNIX` a unix socket path):
//! - `server`: listens on 127.0.0.1, says `ready PORT`; on `accept` accepts one connection
//!   and says `fd N`; holds it until `exit`.
//! - `mover`: a `server` whose thread goes back to its first namespace right after listening.
//! - `forker`: a `server` that forks a worker after accepting (`fd N worker PID`).
//! - `lazy`: listens (`ready PORT`) and never accepts.
//! - `dual`: listens on `[::]` (`ready PORT`); each `accept` accepts one more (`fd N`);
//!   `close` reads each to its end and closes it (`closed`).
//! - `leak`: listens on 127.0.0.1 (`ready PORT`), accepts 3 connections (`accepted`) and keeps
//!   them after their peers close; `close` closes them (`closed`).
//! - `receiver`: listens on the unix socket `HOLDER_UNIX` (`ready`); on `recv` takes one
//!   descriptor passed with SCM_RIGHTS and says `fd N`.
//! - `passer`: connects twice to 127.0.0.1:`HOLDER_PORT`, sends both sockets to `HOLDER_UNIX`
//!   in two messages, closes its copies and says `sent PORT1 PORT2`.
//! - `threaded`: renames its process `c04-java`, then a thread named `http-exec-0` connects to
//!   127.0.0.1:`HOLDER_PORT` and says `tid N`; on `close` the thread closes it (`closed`).
//! - `linger-client`: renames its process `c06-client`, connects to 127.0.0.1:`HOLDER_PORT`
//!   and says `port N` (its local port); on `close` sets `SO_LINGER {1, 0}` and closes
//!   (`closed`).
//! - `unread-server`: renames its process `c06-server`, listens on 127.0.0.1 (`port N`),
//!   accepts one connection and says `queued N` once N >= 11 bytes wait unread; on `close`
//!   closes it with them unread (`closed`).
//! - `accept-one`: listens on 127.0.0.1 (`listening`), accepts one connection (`accepted FD`)
//!   and keeps it until `exit` (run as `nobody` by the capability tests).

use std::{
    fs::File,
    io::{self, BufRead as _, Read as _, Write as _},
    net::{Shutdown, TcpListener, TcpStream},
    os::{
        fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
};

fn main() {
    let role = std::env::args().nth(1).expect("usage: holder ROLE");
    let port: u16 = std::env::var("HOLDER_PORT").map_or(0, |p| p.parse().expect("a port"));
    let home = File::open("/proc/thread-self/ns/net").expect("our network namespace");
    if let Ok(path) = std::env::var("HOLDER_NETNS") {
        enter(&File::open(path).expect("the namespace file"));
    }
    let unix_path = || std::env::var("HOLDER_UNIX").expect("HOLDER_UNIX");
    match role.as_str() {
        "server" | "mover" | "forker" | "lazy" => {
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            if role == "mover" {
                enter(&home);
            }
            tell(&format!("ready {}", listener.local_addr().unwrap().port()));
            if role == "lazy" {
                until_exit();
                return;
            }
            expect("accept");
            let (conn, _) = listener.accept().unwrap();
            let fd = conn.as_raw_fd();
            if role == "forker" {
                let worker = fork_worker();
                tell(&format!("fd {fd} worker {worker}"));
                until_exit();
                // Our own child, by its pid.
                // SAFETY: plain system calls on our own child.
                unsafe {
                    libc::kill(worker, libc::SIGKILL);
                    libc::waitpid(worker, std::ptr::null_mut(), 0);
                }
            } else {
                tell(&format!("fd {fd}"));
                until_exit();
            }
            drop(conn);
        }
        "dual" => {
            let listener = TcpListener::bind("[::]:0").unwrap();
            tell(&format!("ready {}", listener.local_addr().unwrap().port()));
            let mut held = Vec::new();
            loop {
                match hear().as_str() {
                    "accept" => {
                        let (conn, _) = listener.accept().unwrap();
                        tell(&format!("fd {}", conn.as_raw_fd()));
                        held.push(conn);
                    }
                    "close" => {
                        for mut conn in held.drain(..) {
                            read_to_end(&mut conn);
                        }
                        tell("closed");
                    }
                    "exit" => return,
                    other => panic!("unknown command {other:?}"),
                }
            }
        }
        "leak" => {
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            tell(&format!("ready {}", listener.local_addr().unwrap().port()));
            let held: Vec<TcpStream> = (0..3).map(|_| listener.accept().unwrap().0).collect();
            tell("accepted");
            expect("close");
            drop(held);
            tell("closed");
            until_exit();
        }
        "receiver" => {
            let listener = UnixListener::bind(unix_path()).unwrap();
            tell("ready");
            let (conn, _) = listener.accept().unwrap();
            expect("recv");
            let fd = recv_fd(&conn);
            tell(&format!("fd {}", fd.as_raw_fd()));
            until_exit();
            drop(fd);
        }
        "passer" => {
            let unix = UnixStream::connect(unix_path()).unwrap();
            let a = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let b = TcpStream::connect(("127.0.0.1", port)).unwrap();
            let ports = (
                a.local_addr().unwrap().port(),
                b.local_addr().unwrap().port(),
            );
            send_fd(&unix, a.as_raw_fd());
            send_fd(&unix, b.as_raw_fd());
            drop((a, b));
            tell(&format!("sent {} {}", ports.0, ports.1));
            until_exit();
        }
        "threaded" => {
            // The process's name is its thread-group leader's.
            std::fs::write("/proc/self/comm", "c04-java").unwrap();
            std::thread::Builder::new()
                .name("http-exec-0".into())
                .spawn(move || {
                    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
                    tell(&format!("tid {}", nix::unistd::gettid()));
                    expect("close");
                    conn.shutdown(Shutdown::Write).unwrap();
                    read_to_end(&mut conn);
                    drop(conn);
                    tell("closed");
                })
                .unwrap()
                .join()
                .unwrap();
            until_exit();
        }
        "linger-client" => {
            std::fs::write("/proc/self/comm", "c06-client").unwrap();
            let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
            tell(&format!("port {}", conn.local_addr().unwrap().port()));
            expect("close");
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            nix::sys::socket::setsockopt(&conn, nix::sys::socket::sockopt::Linger, &linger)
                .unwrap();
            drop(conn);
            tell("closed");
            until_exit();
        }
        "unread-server" => {
            std::fs::write("/proc/self/comm", "c06-server").unwrap();
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            tell(&format!("port {}", listener.local_addr().unwrap().port()));
            let (conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            let queued = loop {
                // Blocks until data is there; loops until all 11 bytes are.
                let n = nix::sys::socket::recv(
                    conn.as_raw_fd(),
                    &mut buf,
                    nix::sys::socket::MsgFlags::MSG_PEEK,
                )
                .unwrap();
                if n >= 11 || n == 0 {
                    break n;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            };
            tell(&format!("queued {queued}"));
            expect("close");
            drop(conn);
            tell("closed");
            until_exit();
        }
        "accept-one" => {
            let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
            tell("listening");
            let (conn, _) = listener.accept().unwrap();
            tell(&format!("accepted {}", conn.as_raw_fd()));
            until_exit();
            drop(conn);
        }
        other => panic!("unknown role {other:?}"),
    }
}

/// Prints a line for the test.
fn tell(msg: &str) {
    let mut out = io::stdout().lock();
    writeln!(out, "{msg}").unwrap();
    out.flush().unwrap();
}

/// The next line from the test; `exit` when stdin ends.
fn hear() -> String {
    let mut line = String::new();
    match io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => "exit".to_owned(),
        Ok(_) => line.trim().to_owned(),
    }
}

fn expect(command: &str) {
    let got = hear();
    assert_eq!(got, command, "the test said {got:?}, not {command:?}");
}

fn until_exit() {
    while hear() != "exit" {}
}

fn enter(file: &File) {
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("enter the network namespace");
}

/// Reads until the peer closes (bounded by the peer: the tests close their ends).
fn read_to_end(conn: &mut TcpStream) {
    let mut sink = Vec::new();
    let _ = conn.read_to_end(&mut sink);
}

/// Forks a worker that shares our descriptors and only waits, dying with us.
fn fork_worker() -> libc::pid_t {
    // SAFETY: the child only calls prctl and pause, which are async-signal-safe.
    let worker = unsafe { libc::fork() };
    assert!(worker >= 0, "fork failed");
    if worker == 0 {
        // SAFETY: see above; the worker dies with its master, however the test ends.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
        loop {
            // SAFETY: see above.
            unsafe { libc::pause() };
        }
    }
    worker
}

fn send_fd(unix: &UnixStream, fd: i32) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let fds = [fd];
    sendmsg::<UnixAddr>(
        unix.as_raw_fd(),
        &[io::IoSlice::new(b"f")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
}

fn recv_fd(unix: &UnixStream) -> OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([i32; 1]);
    let msg = recvmsg::<UnixAddr>(
        unix.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    let fd = msg
        .cmsgs()
        .unwrap()
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .expect("a descriptor");
    // SAFETY: the descriptor was received for us and is owned (closed) once, here.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
