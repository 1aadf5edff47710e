//! The holder of the owner-scan bench (the `scan-holder` binary of this crate): in a private
//! network namespace (as the churn's), it opens many established loopback connections and
//! holds both ends, then closes the client end of some of them, so that their server ends sit
//! in CLOSE_WAIT, held by this process, until it ends. Meanwhile a modest churn of short
//! connections on a second listener keeps transitions flowing. The connections beyond what one
//! process's RLIMIT_NOFILE can hold (its hard limit, when raising it is not allowed: that needs
//! CAP_SYS_RESOURCE) are held by worker processes it starts in the same namespace; the
//! CLOSE_WAIT sockets are always the holder's own.
//!
//! Protocol with the bench: one JSON object per line on stdout ([`Message`]), one command per
//! line on stdin: `open` (make the connections), `close` (close the client end of the first
//! `--close-wait` of them and start the side churn), `end` (stop the churn and exit: the
//! namespace goes with this process). End of stdin ends it too. Errors go to stderr with a
//! non-zero exit.

use std::{
    io::{self, BufRead as _, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::protocol::{expect, say};

/// Listen backlog: the connections are made faster than one thread accepts them.
const BACKLOG: i32 = 4096;
/// File descriptors kept beyond the two per connection (listeners, the churn, std's own).
const SPARE_FDS: u64 = 1024;
/// The side churn stops by itself after this long, whatever the bench says.
const CHURN_LIMIT: Duration = Duration::from_secs(300);

/// The holder's flags, as the bench passes them.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "scan-holder",
    about = "The owner-scan bench's load: many held loopback connections, some left in CLOSE_WAIT"
)]
pub struct HolderArgs {
    /// Established connections to open and hold (both ends).
    #[arg(long, default_value_t = 50_000)]
    pub connections: u64,
    /// Of those, how many the client closes, leaving the server end in CLOSE_WAIT.
    #[arg(long, default_value_t = 100)]
    pub close_wait: u64,
    /// Short connections per second on the side listener, from `close` to `end`.
    #[arg(long, default_value_t = 1000)]
    pub churn_rate: u64,
    /// Started by the holder: hold --connections connections on a listener of its own, in the
    /// holder's namespace, until stdin ends (for the share one process's RLIMIT_NOFILE cannot
    /// hold).
    #[arg(long, hide = true)]
    pub worker: bool,
}

/// A line the holder prints.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Message {
    /// Listening; `port` is the held connections' listener.
    Ready { port: u16, churn_port: u16 },
    /// Every connection is established and held, by the holder and `workers` more processes
    /// (the connections one process's RLIMIT_NOFILE leaves over).
    Opened {
        opened: u64,
        workers: u64,
        elapsed_ns: u64,
    },
    /// The client ends are closed, the side churn runs.
    Closed { closed: u64 },
    /// The side churn stopped after this many connections.
    Done { churned: u64 },
    /// A worker holds its connections.
    Held { held: u64 },
}

/// Entry point of the `scan-holder` binary.
pub fn holder(args: &HolderArgs) -> Result<()> {
    if args.connections == 0 || args.close_wait > args.connections {
        bail!("--connections must be positive and --close-wait at most --connections");
    }
    let capacity = raise_nofile(2 * args.connections + SPARE_FDS)?;
    if args.worker {
        return worker(args.connections);
    }
    if capacity < args.close_wait {
        bail!(
            "this process can hold only {capacity} connections (RLIMIT_NOFILE), fewer than \
             --close-wait {}",
            args.close_wait
        );
    }
    crate::churn::enter_private_netns()?;
    let listener = listen()?;
    let churn_listener = listen()?;
    say(&Message::Ready {
        port: listener.local_addr()?.port(),
        churn_port: churn_listener.local_addr()?.port(),
    })?;

    let mut commands = io::stdin().lock().lines();
    let mut next = || -> Result<String> {
        Ok(commands
            .next()
            .transpose()
            .context("reading a command")?
            .unwrap_or_default())
    };
    expect(&next()?, "open")?;
    let start = Instant::now();
    // What this process cannot hold, its workers do (in this namespace, on their own ports).
    let own = args.connections.min(capacity);
    let mut workers = Vec::new();
    let mut rest = args.connections - own;
    while rest > 0 {
        let share = rest.min(capacity);
        workers.push(Worker::start(share)?);
        rest -= share;
    }
    for w in &mut workers {
        w.wait_opened()?;
    }
    let (mut clients, _servers) = open(&listener, own)?;
    say(&Message::Opened {
        opened: args.connections,
        workers: workers.len() as u64,
        elapsed_ns: u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
    })?;

    expect(&next()?, "close")?;
    let churn = Churn::start(churn_listener, args.churn_rate)?;
    clients.drain(..args.close_wait as usize);
    say(&Message::Closed {
        closed: args.close_wait,
    })?;

    // `end`, or the end of stdin.
    let _ = next();
    let churned = churn.stop();
    for w in workers {
        w.end()?;
    }
    say(&Message::Done { churned })
}

/// A worker: holds `n` connections on a listener of its own until its stdin ends.
fn worker(n: u64) -> Result<()> {
    let listener = listen()?;
    let (_clients, _servers) = open(&listener, n)?;
    say(&Message::Held { held: n })?;
    let mut line = String::new();
    let _ = io::stdin().lock().read_line(&mut line);
    Ok(())
}

/// A worker process of the holder, started from the holder's own binary: it inherits the
/// namespace, and dies with the holder (`PR_SET_PDEATHSIG`).
struct Worker {
    child: std::process::Child,
    out: io::BufReader<std::process::ChildStdout>,
}

impl Worker {
    fn start(n: u64) -> Result<Self> {
        let mut cmd = Command::new(std::env::current_exe().context("locating the holder")?);
        cmd.args([
            "--worker",
            "--connections",
            &n.to_string(),
            "--close-wait",
            "0",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
        // SAFETY: prctl is async-signal-safe; the child only sets its parent-death signal.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting a holder worker")?;
        let out = io::BufReader::new(child.stdout.take().context("a worker's stdout")?);
        Ok(Self { child, out })
    }

    /// Waits for its `held` line.
    fn wait_opened(&mut self) -> Result<()> {
        let mut line = String::new();
        self.out.read_line(&mut line).context("reading a worker")?;
        match serde_json::from_str(&line) {
            Ok(Message::Held { .. }) => Ok(()),
            _ => bail!(
                "holder worker {} failed (its error is above)",
                self.child.id()
            ),
        }
    }

    /// Closes its stdin (it then exits) and reaps it.
    fn end(mut self) -> Result<()> {
        drop(self.child.stdin.take());
        self.child.wait().context("reaping a holder worker")?;
        Ok(())
    }
}

/// Raises this process's open file limit to `fds`, or as far as the hard limit lets it
/// (raising the hard limit needs CAP_SYS_RESOURCE); the connections it can then hold.
fn raise_nofile(fds: u64) -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to a local rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur < fds {
        let raised = libc::rlimit {
            rlim_cur: fds,
            rlim_max: limit.rlim_max.max(fds),
        };
        // SAFETY: a valid pointer to a local rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        } else {
            limit.rlim_cur = limit.rlim_max;
            // SAFETY: as above; the soft limit up to the hard one is always allowed.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
                return Err(io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
            }
        }
    }
    let capacity = limit.rlim_cur.saturating_sub(SPARE_FDS) / 2;
    if capacity == 0 {
        bail!(
            "RLIMIT_NOFILE is {}: too low to hold connections",
            limit.rlim_cur
        );
    }
    Ok(capacity)
}

/// A listener on the wildcard address (the namespace has only `lo`) and a port the kernel
/// picks, so clients can spread over several loopback addresses.
fn listen() -> Result<TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .context("creating a listener")?;
    socket
        .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())
        .context("binding a listener")?;
    socket.listen(BACKLOG).context("listen")?;
    Ok(socket.into())
}

/// The loopback address of connection `i`: 127.0.0.1..=4 in turn, four spaces of 4-tuples.
fn destination(i: u64, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1 + (i % 4) as u8), port)
}

/// Opens `n` connections to `listener`: the client ends and the accepted server ends.
fn open(listener: &TcpListener, n: u64) -> Result<(Vec<TcpStream>, Vec<TcpStream>)> {
    let port = listener.local_addr()?.port();
    let accepting = listener.try_clone().context("cloning the listener")?;
    let server = thread::spawn(move || -> Result<Vec<TcpStream>> {
        let mut held = Vec::with_capacity(n as usize);
        while (held.len() as u64) < n {
            let (stream, _) = accepting
                .accept()
                .with_context(|| format!("accepting connection {}", held.len()))?;
            held.push(stream);
        }
        Ok(held)
    });
    let mut clients = Vec::with_capacity(n as usize);
    for i in 0..n {
        let addr = destination(i, port);
        match TcpStream::connect(addr) {
            Ok(stream) => clients.push(stream),
            Err(e) => {
                // Wake the accepting thread so the error, not a hang, is what the bench sees.
                // SAFETY: shutdown on a valid listening socket; it only wakes a blocked accept.
                unsafe {
                    libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(listener), libc::SHUT_RDWR);
                }
                return Err(e).with_context(|| {
                    format!("connection {i} of {n}: connect to {addr} ({i} were open)")
                });
            }
        }
    }
    let servers = server
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the accepting thread panicked")))?;
    Ok((clients, servers))
}

/// Short connections (connect, write, close; accept, read to EOF, close) at a steady rate.
struct Churn {
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
    client: thread::JoinHandle<()>,
}

impl Churn {
    fn start(listener: TcpListener, rate: u64) -> Result<Self> {
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let made = Arc::new(AtomicU64::new(0));
        // The server thread ends with the process (it blocks in accept).
        thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((mut stream, _)) = listener.accept() {
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            }
        });
        let (flag, count) = (Arc::clone(&stop), Arc::clone(&made));
        let client = thread::spawn(move || {
            let start = Instant::now();
            let every = Duration::from_secs(1) / u32::try_from(rate.max(1)).unwrap_or(u32::MAX);
            let mut i = 0u64;
            while !flag.load(Ordering::Relaxed) && start.elapsed() < CHURN_LIMIT && rate > 0 {
                // A destination of its own (127.0.0.5..): its ports never compete with the
                // held connections' 4-tuples.
                let addr = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 5 + (i % 4) as u8), port);
                if let Ok(mut stream) = TcpStream::connect(addr) {
                    let _ = stream.write_all(b"churn\n");
                    count.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                let due = every * u32::try_from(i).unwrap_or(u32::MAX);
                thread::sleep(due.saturating_sub(start.elapsed()));
            }
        });
        Ok(Self { stop, made, client })
    }

    /// Stops the client thread; the connections it made.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.join();
        self.made.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::assert_round_trips;

    #[test]
    fn messages_round_trip() {
        assert_round_trips(&[
            Message::Ready {
                port: 1,
                churn_port: 2,
            },
            Message::Opened {
                opened: 3,
                workers: 1,
                elapsed_ns: 4,
            },
            Message::Closed { closed: 5 },
            Message::Done { churned: 6 },
            Message::Held { held: 7 },
        ]);
    }

    #[test]
    fn destinations_cycle_over_four_addresses() {
        assert_eq!(destination(0, 9), "127.0.0.1:9".parse().unwrap());
        assert_eq!(destination(5, 9), "127.0.0.2:9".parse().unwrap());
    }
}
