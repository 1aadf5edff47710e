//! Load for the loss-accounting tests: a server that reads each connection to EOF and closes,
//! and clients that connect and close as fast as they go.

use std::{
    io::Read as _,
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
};

use super::Tracer;

/// Transitions of one connection of this shape when nothing races: client connects and
/// closes; server reads to EOF and closes. Client:
/// CLOSE->SYN_SENT->ESTABLISHED->FIN_WAIT1->FIN_WAIT2->CLOSE; server:
/// LISTEN->SYN_RECV->ESTABLISHED->CLOSE_WAIT->LAST_ACK->CLOSE. Under churn a burst may make
/// more or fewer (two CPUs handling the handshake's last ACK make a second child that dies in
/// SYN_RECV); what a burst really made is [`Oracle`]'s to count.
pub const PER_CONNECTION: usize = 10;

/// A second tracer with room for every event of a test's burst: the count of transitions
/// the kernel made on the port, to hold a tracer under test to.
pub struct Oracle {
    tracer: Tracer,
    port: u16,
}

/// What [`Oracle`] saw: the transitions on its port and the runs the kernel skipped for it
/// (`None` before Linux 5.12, which does not count them).
#[derive(Debug, Clone, Copy)]
pub struct Made {
    pub transitions: u64,
    pub skipped: Option<u64>,
}

impl Oracle {
    /// Starts counting transitions on `port` (64 MiB of ring buffer: 500,000 events).
    pub fn start(port: u16) -> Oracle {
        let tracer = Tracer::start(&["-p", &port.to_string(), "--ring-buffer-size", "64MiB"]);
        Oracle { tracer, port }
    }

    /// Stops and counts; panics if the oracle itself lost events to its ring buffer.
    pub fn stop(self) -> Made {
        let (records, summary) = self.tracer.stop();
        assert_eq!(
            summary.lost_ringbuf, 0,
            "the oracle lost events: {summary:?}"
        );
        Made {
            transitions: super::transitions_on(&records, self.port).len() as u64,
            skipped: summary.recursion_misses,
        }
    }
}

impl Made {
    /// Asserts that a tracer which accounted for `reported` transitions (captured plus lost)
    /// and skipped `skipped` runs saw the same burst: the true count lies in
    /// `[made, made + oracle's skipped]` and in `[reported, reported + skipped]`, so equal
    /// when neither skipped any. A side whose kernel does not count skips bounds nothing.
    pub fn assert_accounts_for(&self, reported: u64, skipped: Option<u64>, context: &str) {
        if let Some(oracle_skipped) = self.skipped {
            assert!(
                reported <= self.transitions + oracle_skipped,
                "more accounted for than the kernel made: {reported} vs {self:?}\n{context}"
            );
        }
        if let Some(skipped) = skipped {
            assert!(
                self.transitions <= reported + skipped,
                "transitions missing without a count: {reported} + {skipped} skipped vs \
                 {self:?}\n{context}"
            );
        }
    }
}

/// Serves `count` connections on `listener`: read to EOF, close.
pub fn serve(listener: TcpListener, count: usize) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for _ in 0..count {
            let (mut conn, _) = listener.accept().unwrap();
            let mut sink = Vec::new();
            conn.read_to_end(&mut sink).unwrap();
        }
    })
}

/// `count` connections from `threads` threads, as fast as they go.
pub fn churn(addr: SocketAddr, count: usize, threads: usize) {
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let n = count / threads + usize::from(i < count % threads);
            thread::spawn(move || {
                for _ in 0..n {
                    drop(TcpStream::connect(addr).unwrap());
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

/// Waits (up to [`super::WAIT`]) until every IPv4 connection on `port` in the calling thread's
/// network namespace has finished closing (`/proc/thread-self/net/tcp`: the load of this
/// module is IPv4): only the listener and TIME_WAIT sockets left. A
/// burst's last transitions can run after its threads return (a FIN handled later by
/// ksoftirqd); a tracer stopped before them would miss what an oracle stopped after sees.
pub fn wait_closed(port: u16) {
    use procfs::FromBufReadSI as _;
    let deadline = std::time::Instant::now() + super::WAIT;
    loop {
        let file = std::fs::File::open("/proc/thread-self/net/tcp").unwrap();
        let procfs::net::TcpNetEntries(rows) = procfs::net::TcpNetEntries::from_buf_read(
            std::io::BufReader::new(file),
            procfs::current_system_info(),
        )
        .unwrap();
        let open = rows
            .iter()
            .filter(|r| r.local_address.port() == port || r.remote_address.port() == port)
            .filter(|r| {
                !matches!(
                    r.state,
                    procfs::net::TcpState::Listen | procfs::net::TcpState::TimeWait
                )
            })
            .count();
        if open == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{open} connections on port {port} still closing"
        );
        thread::sleep(std::time::Duration::from_millis(5));
    }
}
