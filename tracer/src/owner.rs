//! Who holds a socket.
//!
//! The task running when a transition fires owns the socket only when the transition was made
//! in process context (a system call on the socket). Packet-driven transitions run in softirq,
//! on top of whatever task was interrupted, so their task is never taken as the owner. For the
//! rest, the kernel's socket tables are matched the way `ss -p` does: socket inode by 4-tuple,
//! then the process holding `socket:[inode]` among `/proc/*/fd`.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::event::{Endpoints, Task, TcpState};

/// The process that holds a socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    /// The file descriptor, when found by a /proc scan.
    pub fd: Option<i32>,
}

impl Owner {
    pub fn from_task(task: &Task) -> Self {
        Self {
            pid: task.pid,
            comm: task.comm.clone(),
            fd: None,
        }
    }
}

/// Is `old -> new` always made by a system call of the socket's owner?
///
/// connect() (CLOSE -> SYN_SENT), listen() (CLOSE -> LISTEN), close()/shutdown() of an open
/// connection (ESTABLISHED -> FIN_WAIT1, CLOSE_WAIT -> LAST_ACK) and close() of a listener
/// (LISTEN -> CLOSE). Transitions that can also be driven by an incoming packet
/// (SYN_SENT -> CLOSE on a RST, ESTABLISHED -> CLOSE, ...) are left out on purpose.
pub fn is_process_context(old: TcpState, new: TcpState) -> bool {
    use TcpState::{Close, CloseWait, Established, FinWait1, LastAck, Listen, SynSent};
    matches!(
        (old, new),
        (Close, SynSent | Listen)
            | (Established, FinWait1)
            | (CloseWait, LastAck)
            | (Listen, Close)
    )
}

/// One row of a kernel socket table (`/proc/<pid>/net/tcp{,6}`), with its holder if found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketEntry {
    pub endpoints: Endpoints,
    pub state: TcpState,
    /// Bytes received and not yet read by the application.
    pub recv_q: u32,
    pub inode: u64,
    /// Inode of the network namespace the table was read from.
    pub netns: u64,
    pub owner: Option<Owner>,
}

/// A snapshot of the TCP sockets of every network namespace that has a process in it.
#[derive(Clone, Debug, Default)]
pub struct SocketTable {
    pub entries: Vec<SocketEntry>,
}

impl SocketTable {
    /// The entry for a connection, preferring one in `state` when the 4-tuple repeats across
    /// network namespaces.
    pub fn find(&self, endpoints: &Endpoints, state: TcpState) -> Option<&SocketEntry> {
        let mut found = None;
        for entry in self
            .entries
            .iter()
            .filter(|e| same(&e.endpoints, endpoints))
        {
            if entry.state == state {
                return Some(entry);
            }
            found.get_or_insert(entry);
        }
        found
    }

    /// Entries in `state`.
    pub fn in_state(&self, state: TcpState) -> impl Iterator<Item = &SocketEntry> {
        self.entries.iter().filter(move |e| e.state == state)
    }
}

/// Compares 4-tuples, treating an IPv4-mapped IPv6 address as its IPv4 address.
fn same(a: &Endpoints, b: &Endpoints) -> bool {
    let canon = |ip: std::net::IpAddr| ip.to_canonical();
    a.lport == b.lport
        && a.rport == b.rport
        && canon(a.laddr) == canon(b.laddr)
        && canon(a.raddr) == canon(b.raddr)
}

/// Unread bytes from the table's `rx_queue`, which is `rcv_nxt - copied_seq`: once the peer's
/// FIN has arrived it takes one sequence number that is not data (netstat shows it as one more
/// byte of Recv-Q).
pub fn unread_bytes(state: TcpState, rx_queue: u32) -> u32 {
    match state {
        TcpState::CloseWait | TcpState::LastAck | TcpState::Closing => rx_queue.saturating_sub(1),
        _ => rx_queue,
    }
}

/// Reads the socket tables of every network namespace and who holds each socket.
/// Processes that vanish or cannot be read during the scan are skipped.
pub fn scan() -> Result<SocketTable, procfs::ProcError> {
    let mut holders: HashMap<u64, Owner> = HashMap::new();
    let mut seen_netns: HashSet<u64> = HashSet::new();
    let mut table = SocketTable::default();
    for process in procfs::process::all_processes()?.flatten() {
        let Ok(fds) = process.fd() else { continue };
        let Ok(pid) = u32::try_from(process.pid()) else {
            continue;
        };
        let mut comm = None;
        for fd in fds.flatten() {
            if let procfs::process::FDTarget::Socket(inode) = fd.target {
                let comm =
                    comm.get_or_insert_with(|| process.stat().map(|s| s.comm).unwrap_or_default());
                holders.entry(inode).or_insert_with(|| Owner {
                    pid,
                    comm: comm.clone(),
                    fd: Some(fd.fd),
                });
            }
        }
        let Ok(netns) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        let netns = std::os::unix::fs::MetadataExt::ino(&netns);
        if seen_netns.insert(netns) {
            for rows in [process.tcp(), process.tcp6()].into_iter().flatten() {
                for row in rows {
                    let state = TcpState::from(u32::from(row.state.to_u8()));
                    table.entries.push(SocketEntry {
                        endpoints: Endpoints {
                            laddr: row.local_address.ip(),
                            lport: row.local_address.port(),
                            raddr: row.remote_address.ip(),
                            rport: row.remote_address.port(),
                        },
                        state,
                        recv_q: unread_bytes(state, row.rx_queue),
                        inode: row.inode,
                        netns,
                        owner: None,
                    });
                }
            }
        }
    }
    for entry in &mut table.entries {
        entry.owner = holders.get(&entry.inode).cloned();
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::TcpState::*;

    #[test]
    fn only_syscall_transitions_name_the_owner() {
        assert!(is_process_context(Close, SynSent));
        assert!(is_process_context(Close, Listen));
        assert!(is_process_context(Established, FinWait1));
        assert!(is_process_context(CloseWait, LastAck));
        assert!(is_process_context(Listen, Close));
        // Packet driven: run in softirq on top of an unrelated task.
        assert!(!is_process_context(Listen, SynRecv));
        assert!(!is_process_context(SynRecv, Established));
        assert!(!is_process_context(SynSent, Established));
        assert!(!is_process_context(Established, CloseWait));
        assert!(!is_process_context(FinWait1, FinWait2));
        assert!(!is_process_context(SynSent, Close));
        assert!(!is_process_context(Established, Close));
    }

    #[test]
    fn fin_is_not_an_unread_byte() {
        assert_eq!(unread_bytes(CloseWait, 27), 26);
        assert_eq!(unread_bytes(CloseWait, 0), 0);
        assert_eq!(unread_bytes(Established, 27), 27);
    }

    #[test]
    fn scan_finds_our_own_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let table = scan().unwrap();
        let me = std::process::id();
        let entry = table
            .in_state(Listen)
            .find(|e| e.endpoints.lport == port && e.endpoints.laddr.is_ipv4())
            .expect("our listener is in the table");
        let owner = entry.owner.as_ref().expect("we hold it");
        assert_eq!(owner.pid, me);
        assert!(owner.fd.is_some());
    }

    #[test]
    fn scan_finds_close_wait_with_unread_bytes() {
        use std::io::Write as _;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, peer) = listener.accept().unwrap();
        client.write_all(&[7u8; 26]).unwrap();
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let table = scan().unwrap();
        let entry = table
            .in_state(CloseWait)
            .find(|e| e.endpoints.rport == peer.port())
            .expect("the server socket is in CLOSE_WAIT");
        assert_eq!(entry.recv_q, 26);
        assert_eq!(
            entry.owner.as_ref().map(|o| o.pid),
            Some(std::process::id())
        );
        drop(server);
    }

    #[test]
    fn find_treats_v4_mapped_as_v4() {
        let ep = |l: &str, r: &str| {
            let l: std::net::SocketAddr = l.parse().unwrap();
            let r: std::net::SocketAddr = r.parse().unwrap();
            Endpoints {
                laddr: l.ip(),
                lport: l.port(),
                raddr: r.ip(),
                rport: r.port(),
            }
        };
        let table = SocketTable {
            entries: vec![SocketEntry {
                endpoints: ep("[::ffff:127.0.0.1]:80", "[::ffff:127.0.0.1]:5000"),
                state: CloseWait,
                recv_q: 3,
                inode: 9,
                netns: 1,
                owner: None,
            }],
        };
        let found = table.find(&ep("127.0.0.1:80", "127.0.0.1:5000"), CloseWait);
        assert_eq!(found.map(|e| e.recv_q), Some(3));
        assert!(table
            .find(&ep("127.0.0.1:81", "127.0.0.1:5000"), CloseWait)
            .is_none());
    }
}
