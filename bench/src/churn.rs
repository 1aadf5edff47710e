//! The churn generator: many short loopback connections of one known shape, as fast as two
//! cores allow, with bounded concurrency.
//!
//! It runs as its own process (the `churn` binary of this crate, built in release) inside a fresh network namespace whose only interface is
//! `lo`. The namespace gives every run the same start (no TIME_WAIT sockets left by the
//! previous run, which would otherwise pile up to `tcp_max_tw_buckets` and make later runs
//! cheaper), and the sysctls changed below are the namespace's own: nothing to restore.
//!
//! Shape of one connection. Client: connect, write a few bytes, close. Server: accept, read
//! to EOF, close. That is 10 transitions (see [`SHAPE`]), plus 2 for the listener.
//!
//! Protocol with the bench, one JSON object per line on stdout:
//! `{"port":P}` once the listener is bound (not yet listening), then it waits for a line on
//! stdin; then `{"progress":n,"elapsed_ns":t}` every `--progress-every` connections and
//! finally `{"done":n,"elapsed_ns":t}`. Errors go to stderr with a non-zero exit.

use std::{
    io::{self, BufRead as _, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::protocol::{expect, say};

/// The transitions of one connection, as (old, new) state names.
pub const SHAPE: [(&str, &str); 10] = [
    // Client.
    ("CLOSE", "SYN_SENT"),
    ("SYN_SENT", "ESTABLISHED"),
    ("ESTABLISHED", "FIN_WAIT1"),
    ("FIN_WAIT1", "FIN_WAIT2"),
    // TIME_WAIT is never a new state: the kernel reports FIN_WAIT2 -> CLOSE.
    ("FIN_WAIT2", "CLOSE"),
    // Server.
    ("LISTEN", "SYN_RECV"),
    ("SYN_RECV", "ESTABLISHED"),
    ("ESTABLISHED", "CLOSE_WAIT"),
    ("CLOSE_WAIT", "LAST_ACK"),
    ("LAST_ACK", "CLOSE"),
];

/// The listener's own transitions, once per run.
pub const LISTENER_SHAPE: [(&str, &str); 2] = [("CLOSE", "LISTEN"), ("LISTEN", "CLOSE")];

/// Transitions that `connections` connections over `listeners` runs of the generator make
/// (each run has its own listener).
pub fn expected_transitions(connections: u64, listeners: u64) -> u64 {
    connections * SHAPE.len() as u64 + listeners * LISTENER_SHAPE.len() as u64
}

/// Bytes each client writes.
const PAYLOAD: &[u8] = b"churn\n";
/// Listen backlog: far above any concurrency used, so no SYN is ever dropped.
const BACKLOG: i32 = 4096;
/// Pause between the last connection and the listener's close, so the last ACKs of the last
/// connections are processed (and traced) before the run ends. Not counted in the rate.
const SETTLE: Duration = Duration::from_millis(100);

/// How hard the generator pushes: connections in flight and threads (flags of both `churn`
/// and `bench`).
#[derive(Clone, Debug, clap::Args)]
pub struct Load {
    /// Connections started but not yet closed by the server, at most.
    #[arg(long, default_value_t = 128)]
    pub concurrency: u64,
    /// Client threads of the generator (connect, write, close).
    #[arg(long, default_value_t = 2)]
    pub client_threads: usize,
    /// Server threads of the generator (accept, read to EOF, close).
    #[arg(long, default_value_t = 2)]
    pub server_threads: usize,
}

/// The generator's flags, as `bench` passes them (see [`ChurnArgs::to_args`]).
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "churn",
    about = "The bench's load: short loopback connections of one shape",
    after_help = "It starts when a line `go` comes on stdin (the bench sends it once the \
                  observer is attached), and prints one JSON object per line on stdout.\n\n\
                  Example: echo go | ip netns exec NS churn --port 5555 --connections 100000"
)]
pub struct ChurnArgs {
    /// Connections to make.
    #[arg(long, default_value_t = 100_000)]
    pub connections: u64,
    #[command(flatten)]
    pub load: Load,
    /// Destination addresses 127.0.0.1..=127.0.0.N: each is its own space of 4-tuples, so
    /// ephemeral ports never run out while earlier connections sit in TIME_WAIT.
    #[arg(long, default_value_t = 16)]
    pub destinations: u8,
    /// Print a progress line every this many connections (0: never).
    #[arg(long, default_value_t = 0)]
    pub progress_every: u64,
    /// Pin client thread i and server thread i to CPU i (modulo the CPUs).
    #[arg(long)]
    pub pin: bool,
    /// Listen on this port (0: one the kernel picks). The namespace is private, so any port
    /// is free in it; the soak gives every run the same port, for one long-lived tracer.
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Pace: connections started per second on average (0: as fast as the cores allow). They
    /// start in bursts of `--burst`, each at full speed.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Connections per burst when `--rate` paces the churn.
    #[arg(long, default_value_t = 1_000)]
    pub burst: u64,
}

impl ChurnArgs {
    /// The arguments as they are passed to the `churn` binary.
    pub fn to_args(&self) -> Vec<String> {
        vec![
            "--connections".into(),
            self.connections.to_string(),
            "--concurrency".into(),
            self.load.concurrency.to_string(),
            "--client-threads".into(),
            self.load.client_threads.to_string(),
            "--server-threads".into(),
            self.load.server_threads.to_string(),
            "--destinations".into(),
            self.destinations.to_string(),
            "--progress-every".into(),
            self.progress_every.to_string(),
        ]
        .into_iter()
        .chain(self.pin.then(|| "--pin".to_owned()))
        .chain((self.port != 0).then(|| format!("--port={}", self.port)))
        .chain((self.rate != 0).then(|| format!("--rate={}", self.rate)))
        .chain((self.rate != 0).then(|| format!("--burst={}", self.burst)))
        .collect()
    }
}

/// A line the generator prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Message {
    Ready { port: u16 },
    Progress { progress: u64, elapsed_ns: u64 },
    Done { done: u64, elapsed_ns: u64 },
}

/// Entry point of the `churn` binary.
pub fn churn(args: &ChurnArgs) -> Result<()> {
    if args.connections == 0 || args.load.concurrency == 0 {
        bail!("--connections and --concurrency must be positive");
    }
    if args.burst == 0 {
        bail!("--burst must be positive");
    }
    if args.load.client_threads == 0 || args.load.server_threads == 0 || args.destinations == 0 {
        bail!("thread and destination counts must be positive");
    }
    enter_private_netns()?;
    // Bound now (so the port is known), listening only after "go": the listener's
    // CLOSE -> LISTEN is then seen by a tracer started in between.
    let (socket, port) = bind_listener(args.port)?;
    say(&Message::Ready { port })?;
    wait_for_go()?;

    socket.listen(BACKLOG).context("listen")?;
    let listener = Arc::new(TcpListener::from(socket));
    let state = Arc::new(State {
        args: args.clone(),
        port,
        start: Instant::now(),
        next: AtomicU64::new(0),
        accepted: AtomicU64::new(0),
        done: AtomicU64::new(0),
        finished_ns: AtomicU64::new(0),
        abort: AtomicBool::new(false),
        waiting: AtomicBool::new(false),
        room: (Mutex::new(()), Condvar::new()),
    });
    run_threads(&state, &listener)?;
    let elapsed_ns = state.finished_ns.load(Ordering::Acquire);
    thread::sleep(SETTLE);
    drop(listener);
    say(&Message::Done {
        done: state.done.load(Ordering::Acquire),
        elapsed_ns,
    })
}

/// A listening socket's first half: bound to `port` (0: the kernel picks) on the wildcard
/// address, not yet listening. The namespace has no interface but lo: the wildcard address
/// is loopback only, and lets the clients spread over 127.0.0.1..=N.
fn bind_listener(port: u16) -> Result<(socket2::Socket, u16)> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .context("creating the listener")?;
    socket
        .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .with_context(|| format!("binding the listener to port {port}"))?;
    let port = socket
        .local_addr()?
        .as_socket()
        .context("listener address")?
        .port();
    Ok((socket, port))
}

/// Waits for the bench's `go` line on stdin.
fn wait_for_go() -> Result<()> {
    let mut line = String::new();
    io::stdin()
        .lock()
        .read_line(&mut line)
        .context("waiting for the go line")?;
    expect(&line, "go")
}

/// Runs the server and client threads to the end; the first error of any of them.
fn run_threads(state: &Arc<State>, listener: &Arc<TcpListener>) -> Result<()> {
    let servers = (0..state.args.load.server_threads).map(|i| (true, i));
    let clients = (0..state.args.load.client_threads).map(|i| (false, i));
    let mut threads = Vec::new();
    for (server, i) in servers.chain(clients) {
        let (state, listener) = (Arc::clone(state), Arc::clone(listener));
        let name = format!("{}-{i}", if server { "server" } else { "client" });
        threads.push(thread::Builder::new().name(name).spawn(move || {
            state.pin(i);
            if server {
                state.guard(&listener, || state.server(&listener))
            } else {
                state.guard(&listener, || state.client())
            }
        })?);
    }
    let mut failure = None;
    for t in threads {
        let result = t
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a churn thread panicked")));
        if let Err(e) = result {
            failure.get_or_insert(e);
        }
    }
    failure.map_or(Ok(()), Err)
}

struct State {
    args: ChurnArgs,
    port: u16,
    start: Instant,
    /// Next connection a client starts.
    next: AtomicU64,
    /// Accepts claimed by the servers.
    accepted: AtomicU64,
    /// Connections the server has closed.
    done: AtomicU64,
    /// When the last connection was closed, ns since `start`.
    finished_ns: AtomicU64,
    abort: AtomicBool,
    /// A client waits for room under the concurrency bound.
    waiting: AtomicBool,
    room: (Mutex<()>, Condvar),
}

impl State {
    /// Pins the calling thread to CPU `i` modulo the CPUs, when asked to.
    fn pin(&self, i: usize) {
        if !self.args.pin {
            return;
        }
        let cpus = thread::available_parallelism().map_or(1, usize::from);
        // SAFETY: cpu_set_t is plain data; the libc macros index within it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(i % cpus, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set);
        }
    }

    /// Runs a thread's work; on error, stops the others (a shut-down listener wakes a
    /// blocked accept) and returns the error.
    fn guard(&self, listener: &TcpListener, work: impl FnOnce() -> Result<()>) -> Result<()> {
        let result = work();
        if result.is_err() {
            self.abort.store(true, Ordering::Release);
            // SAFETY: shutdown on a valid listening socket fd; it only wakes blocked accepts.
            unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
            self.room.1.notify_all();
        }
        result
    }

    fn client(&self) -> Result<()> {
        let n = self.args.connections;
        let destinations = u32::from(self.args.destinations);
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                return Ok(());
            }
            self.wait_for_burst(i)?;
            self.wait_for_room(i)?;
            let host = 1 + (i % u64::from(destinations)) as u32;
            let addr = SocketAddrV4::new(Ipv4Addr::from(0x7f00_0000 | host), self.port);
            let mut stream = TcpStream::connect(addr)
                .with_context(|| format!("connection {i}: connect to {addr}"))?;
            stream
                .write_all(PAYLOAD)
                .with_context(|| format!("connection {i}: write"))?;
            drop(stream);
        }
    }

    /// With `--rate`, waits until the burst of connection `i` is due: burst k starts
    /// k × burst / rate seconds after the start.
    fn wait_for_burst(&self, i: u64) -> Result<()> {
        let (rate, burst) = (self.args.rate, self.args.burst);
        if rate == 0 {
            return Ok(());
        }
        let first = i / burst * burst;
        let due = Duration::from_nanos(
            u64::try_from(u128::from(first) * 1_000_000_000 / u128::from(rate)).unwrap_or(u64::MAX),
        );
        while let Some(left) = due.checked_sub(self.start.elapsed()) {
            if self.abort.load(Ordering::Acquire) {
                bail!("aborted");
            }
            thread::sleep(left.min(Duration::from_millis(50)));
        }
        Ok(())
    }

    fn wait_for_room(&self, i: u64) -> Result<()> {
        let bound = self.args.load.concurrency;
        if i < self.done.load(Ordering::Acquire) + bound {
            return Ok(());
        }
        let (lock, room) = &self.room;
        let mut guard = lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        while i >= self.done.load(Ordering::Acquire) + bound {
            if self.abort.load(Ordering::Acquire) {
                bail!("aborted");
            }
            self.waiting.store(true, Ordering::Release);
            guard = room
                .wait_timeout(guard, Duration::from_millis(5))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        self.waiting.store(false, Ordering::Release);
        Ok(())
    }

    fn server(&self, listener: &TcpListener) -> Result<()> {
        let n = self.args.connections;
        let mut buf = [0u8; 256];
        loop {
            if self.accepted.fetch_add(1, Ordering::Relaxed) >= n {
                return Ok(());
            }
            let (mut stream, _) = listener.accept().context("accept")?;
            if self.abort.load(Ordering::Acquire) {
                bail!("aborted");
            }
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context("reading to EOF"),
                }
            }
            drop(stream);
            let done = self.done.fetch_add(1, Ordering::AcqRel) + 1;
            if self.waiting.load(Ordering::Acquire) {
                let _guard = self.room.0.lock();
                self.room.1.notify_one();
            }
            let every = self.args.progress_every;
            if done == n {
                self.finished_ns.store(self.elapsed_ns(), Ordering::Release);
            } else if every > 0 && done.is_multiple_of(every) {
                say(&Message::Progress {
                    progress: done,
                    elapsed_ns: self.elapsed_ns(),
                })?;
            }
        }
    }

    fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Moves this (still single-threaded) process into a new network namespace, brings `lo` up
/// and widens the namespace's ephemeral port range.
pub fn enter_private_netns() -> Result<()> {
    // SAFETY: unshare has no memory preconditions; it moves only the calling thread, and no
    // other thread exists yet.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("unshare(CLONE_NEWNET) (needs root)");
    }
    set_lo_up()?;
    std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "1024 65535\n")
        .context("setting the namespace's ip_local_port_range")?;
    Ok(())
}

fn set_lo_up() -> Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: ioctl on a valid socket with a valid, initialised ifreq.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(io::Error::last_os_error()).context("SIOCGIFFLAGS lo");
    }
    // SAFETY: the flags member of the union was just filled by SIOCGIFFLAGS.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: as above.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(io::Error::last_os_error()).context("SIOCSIFFLAGS lo up");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::assert_round_trips;

    #[test]
    fn messages_round_trip() {
        assert_round_trips(&[
            Message::Ready { port: 4242 },
            Message::Progress {
                progress: 10,
                elapsed_ns: 5,
            },
            Message::Done {
                done: 10,
                elapsed_ns: 7,
            },
        ]);
    }

    #[test]
    fn expected_counts() {
        assert_eq!(expected_transitions(1, 1), 12);
        assert_eq!(expected_transitions(100_000, 1), 1_000_002);
        assert_eq!(expected_transitions(10, 3), 106);
    }
}
