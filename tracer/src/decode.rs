//! Turns a ring buffer record into a [`Transition`]. Lengths are checked, the bytes are copied
//! out with `read_unaligned`, and nothing downstream sees the raw layout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tracer_common::{
    cause::{CauseEvent, CAUSE_EVENT_SIZE},
    HeldFile, TcpStateEvent, AF_INET, AF_INET6, COMM_LEN, EVENT_SIZE, HELD_FILE_SIZE,
};

use crate::{
    cause::Signal,
    error::DecodeError,
    event::{Family, Name, Task, TcpState, Transition},
};

/// A ring buffer record: a transition, or a cause of a connection's end (told apart by size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A TCP state transition (a `TcpStateEvent` record).
    Transition(Transition),
    /// A cause of a connection's end: a reset sent or received, or a socket error (a `CauseEvent` record).
    Cause(Signal),
}

/// Decodes records one after another, remembering the task names it last decoded: most
/// records of a burst come from a few tasks, whose names are then copied rather than scanned
/// and validated again. Decodes exactly what [`decode_any`] does.
#[derive(Default)]
pub struct Decoder {
    comm: Names,
    thread: Names,
}

impl Decoder {
    /// [`decode_any`], with the names remembered.
    pub fn decode_any(&mut self, bytes: &[u8]) -> Result<Decoded, DecodeError> {
        if bytes.len() != CAUSE_EVENT_SIZE {
            let raw = read_transition(bytes)?;
            return self.transition(&raw).map(Decoded::Transition);
        }
        decode_cause(bytes)
    }

    fn transition(&mut self, raw: &TcpStateEvent) -> Result<Transition, DecodeError> {
        let comm = self.comm.name(&raw.comm);
        let thread = self.thread.name(&raw.thread);
        transition(raw, comm, thread)
    }
}

/// The last two names decoded from one field, with their raw bytes.
#[derive(Default)]
struct Names {
    last: [Option<([u8; COMM_LEN], Name)>; 2],
    /// The entry the next new name replaces.
    next: usize,
}

impl Names {
    fn name(&mut self, bytes: &[u8; COMM_LEN]) -> Name {
        for (raw, name) in self.last.iter().flatten() {
            if raw == bytes {
                return name.clone();
            }
        }
        let name = comm(bytes);
        self.last[self.next] = Some((*bytes, name.clone()));
        self.next = (self.next + 1) % self.last.len();
        name
    }
}

/// Decodes one record of either kind. A record of another size, or with an unknown family or
/// kind, is an error (to be counted and skipped).
pub fn decode_any(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    if bytes.len() != CAUSE_EVENT_SIZE {
        return decode(bytes).map(Decoded::Transition);
    }
    decode_cause(bytes)
}

/// Decodes a cause record, [`CAUSE_EVENT_SIZE`] bytes long.
fn decode_cause(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    // SAFETY: the length is checked above, `CauseEvent` is plain old data for which every bit
    // pattern is valid, and `read_unaligned` makes no alignment assumption.
    let raw = unsafe { bytes.as_ptr().cast::<CauseEvent>().read_unaligned() };
    Signal::from_raw(&raw)
        .map(Decoded::Cause)
        .ok_or(DecodeError::Cause {
            kind: raw.kind,
            family: raw.family,
        })
}

/// The records of one run of the held-file iterator ([`crate::probe::Probe::held_files`]):
/// [`HeldFile`]s of [`HELD_FILE_SIZE`] bytes, back to back. A length that is not a whole
/// number of records is an error.
pub fn held_files(bytes: &[u8]) -> Result<Vec<HeldFile>, DecodeError> {
    if !bytes.len().is_multiple_of(HELD_FILE_SIZE) {
        // The torn last record's length.
        return Err(DecodeError::Size {
            size: bytes.len() % HELD_FILE_SIZE,
            expected: HELD_FILE_SIZE,
        });
    }
    let u32_at = |chunk: &[u8], at: usize| {
        u32::from_ne_bytes(chunk[at..at + 4].try_into().unwrap_or_default())
    };
    Ok(bytes
        .chunks_exact(HELD_FILE_SIZE)
        .map(|chunk| HeldFile {
            inode: u64::from_ne_bytes(chunk[..8].try_into().unwrap_or_default()),
            tgid: u32_at(chunk, 8),
            fd: u32_at(chunk, 12),
            kind: u32_at(chunk, 16),
            reserved: u32_at(chunk, 20),
        })
        .collect())
}

/// [`held_files`] of everything `run` gives (a run of the iterator, read to its end); a
/// decoding error comes back as [`std::io::ErrorKind::Other`].
pub fn read_held_files(mut run: impl std::io::Read) -> std::io::Result<Vec<HeldFile>> {
    let mut bytes = Vec::new();
    run.read_to_end(&mut bytes)?;
    held_files(&bytes).map_err(std::io::Error::other)
}

/// Local and remote address of a record of `family` (IPv4 in the first 4 bytes); `None` for a
/// family other than `AF_INET` and `AF_INET6`.
pub fn addresses(family: u16, saddr: &[u8; 16], daddr: &[u8; 16]) -> Option<(IpAddr, IpAddr)> {
    match family {
        AF_INET => Some((v4(saddr), v4(daddr))),
        AF_INET6 => Some((v6(saddr), v6(daddr))),
        _ => None,
    }
}

/// Decodes one record. A record of the wrong size or an unknown family is an error (to be
/// counted and skipped); an unknown state number decodes to [`TcpState::Unknown`].
pub fn decode(bytes: &[u8]) -> Result<Transition, DecodeError> {
    from_raw(&read_transition(bytes)?)
}

/// Copies a transition record out of `bytes`, which must be [`EVENT_SIZE`] long.
fn read_transition(bytes: &[u8]) -> Result<TcpStateEvent, DecodeError> {
    if bytes.len() != EVENT_SIZE {
        return Err(DecodeError::Size {
            size: bytes.len(),
            expected: EVENT_SIZE,
        });
    }
    // SAFETY: the length is checked above, `TcpStateEvent` is plain old data for which every
    // bit pattern is valid, and `read_unaligned` makes no alignment assumption.
    Ok(unsafe { bytes.as_ptr().cast::<TcpStateEvent>().read_unaligned() })
}

/// Converts the shared struct into the owned domain type.
pub fn from_raw(raw: &TcpStateEvent) -> Result<Transition, DecodeError> {
    transition(raw, comm(&raw.comm), comm(&raw.thread))
}

/// The transition of `raw`, whose task names are `comm` and `thread`.
fn transition(raw: &TcpStateEvent, comm: Name, thread: Name) -> Result<Transition, DecodeError> {
    let (family, laddr, raddr) = match raw.family {
        AF_INET => (Family::Ipv4, v4(&raw.saddr), v4(&raw.daddr)),
        AF_INET6 => (Family::Ipv6, v6(&raw.saddr), v6(&raw.daddr)),
        family => return Err(DecodeError::Family { family }),
    };
    Ok(Transition {
        ts_ns: raw.ts_ns,
        skaddr: raw.skaddr,
        family,
        protocol: raw.protocol,
        laddr,
        lport: raw.sport,
        raddr,
        rport: raw.dport,
        old: TcpState::from(raw.oldstate),
        new: TcpState::from(raw.newstate),
        task: Task {
            pid: raw.tgid,
            tid: raw.tid,
            comm,
            thread,
        },
        cpu: u32::from(raw.cpu),
        netns: u64::from(raw.netns),
        sock_owned: crate::sock_state::owned(raw.sock),
        kernel_thread: crate::sock_state::kernel_thread(raw.sock),
        // `SOCK_DONE` is set by `tcp_fin()`: it tells nothing of an MPTCP or SCTP socket.
        peer_fin: (raw.protocol == tracer_common::IPPROTO_TCP)
            .then(|| crate::sock_state::peer_fin(raw.sock))
            .flatten(),
        orphan: crate::sock_state::orphan(raw.sock),
        ulp: crate::sock_state::ulp(raw.sock),
    })
}

fn v4(bytes: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
}

fn v6(bytes: &[u8; 16]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(*bytes))
}

/// A task name: up to the first NUL, lossy UTF-8.
pub fn comm(bytes: &[u8]) -> Name {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    // Valid UTF-8 (the usual case) is copied inline; compact_str's lossy path is far slower.
    match std::str::from_utf8(&bytes[..end]) {
        Ok(name) => Name::new(name),
        Err(_) => Name::from(String::from_utf8_lossy(&bytes[..end])),
    }
}

/// Encodes a transition back into the shared layout (for tests).
#[cfg(test)]
fn to_raw(t: &Transition) -> TcpStateEvent {
    let addr = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&v4.octets());
            out
        }
        IpAddr::V6(v6) => v6.octets(),
    };
    let state = |s: TcpState| match s {
        TcpState::Unknown(n) => n,
        known => (1..=12).find(|&n| TcpState::from(n) == known).unwrap_or(0),
    };
    let name = |name: &str| {
        let mut out = [0u8; 16];
        let len = name.len().min(15);
        out[..len].copy_from_slice(&name.as_bytes()[..len]);
        out
    };
    TcpStateEvent {
        ts_ns: t.ts_ns,
        skaddr: t.skaddr,
        saddr: addr(t.laddr),
        daddr: addr(t.raddr),
        tgid: t.task.pid,
        tid: t.task.tid,
        oldstate: state(t.old),
        newstate: state(t.new),
        sport: t.lport,
        dport: t.rport,
        family: match t.family {
            Family::Ipv4 => AF_INET,
            Family::Ipv6 => AF_INET6,
        },
        protocol: t.protocol,
        cpu: u16::try_from(t.cpu).unwrap_or(u16::MAX),
        sock: crate::sock_state::bits(t.sock_owned, t.peer_fin, t.orphan, t.ulp, t.kernel_thread),
        netns: u32::try_from(t.netns).unwrap_or(0),
        comm: name(&t.task.comm),
        thread: name(&t.task.thread),
    }
}

/// The bytes of a shared struct, as the ring buffer would carry them.
#[cfg(test)]
fn raw_bytes(raw: &TcpStateEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(EVENT_SIZE);
    out.extend_from_slice(&raw.ts_ns.to_ne_bytes());
    out.extend_from_slice(&raw.skaddr.to_ne_bytes());
    out.extend_from_slice(&raw.saddr);
    out.extend_from_slice(&raw.daddr);
    for v in [raw.tgid, raw.tid, raw.oldstate, raw.newstate] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    for v in [raw.sport, raw.dport, raw.family, raw.protocol] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    out.extend_from_slice(&raw.cpu.to_ne_bytes());
    out.extend_from_slice(&raw.sock.to_ne_bytes());
    out.extend_from_slice(&raw.netns.to_ne_bytes());
    out.extend_from_slice(&raw.comm);
    out.extend_from_slice(&raw.thread);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::transition;

    #[test]
    fn round_trip_v4_and_v6() {
        for t in [
            transition(
                1,
                0xffff_8880_1234_5678,
                "127.0.0.1:40000",
                "127.0.0.1:8080",
                7,
                2,
            ),
            transition(2, 0xffff_8880_0000_0001, "[::1]:40000", "[::1]:8080", 1, 8),
        ] {
            let bytes = raw_bytes(&to_raw(&t));
            assert_eq!(decode(&bytes).unwrap(), t);
        }
    }

    /// The decoder that remembers names decodes what `decode_any` does, as names repeat,
    /// alternate, come back after being forgotten, and are not UTF-8.
    #[test]
    fn the_decoder_decodes_what_decode_any_does() {
        let names: [&[u8]; 5] = [
            b"churn",
            b"client-0",
            b"server-1",
            b"\xffbad",
            b"sixteen-bytes-xx",
        ];
        let mut decoder = Decoder::default();
        for i in 0..200usize {
            let t = transition(i as u64, 1, "127.0.0.1:1", "127.0.0.1:2", 7, 2);
            let mut raw = to_raw(&t);
            raw.comm = [0; COMM_LEN];
            raw.thread = [0; COMM_LEN];
            let comm = names[(i / 7) % names.len()];
            let thread = names[(i * 3 + i / 5) % names.len()];
            raw.comm[..comm.len()].copy_from_slice(comm);
            raw.thread[..thread.len()].copy_from_slice(thread);
            let bytes = raw_bytes(&raw);
            assert_eq!(
                decoder.decode_any(&bytes).unwrap(),
                decode_any(&bytes).unwrap(),
                "{i}"
            );
        }
        assert!(decoder.decode_any(&[0; 3]).is_err());
    }

    #[test]
    fn process_name_thread_name_and_netns_are_kept_apart() {
        let mut t = transition(1, 1, "127.0.0.1:1", "127.0.0.1:2", 7, 2);
        t.task.comm = "nginx".into();
        t.task.thread = "worker-3".into();
        t.task.tid = 101;
        t.netns = 4_026_531_840;
        let raw = to_raw(&t);
        assert_eq!(&raw.comm[..6], b"nginx\0");
        assert_eq!(&raw.thread[..9], b"worker-3\0");
        assert_eq!(raw.netns, 4_026_531_840);
        assert_eq!(decode(&raw_bytes(&raw)).unwrap(), t);
    }

    #[test]
    fn socket_lock_and_peer_fin_bits_round_trip() {
        let mut t = transition(1, 1, "127.0.0.1:1", "127.0.0.1:2", 5, 7);
        t.cpu = 3;
        let any = [None, Some(false), Some(true)];
        for owned in any {
            for fin in any {
                for orphan in any {
                    for ulp in any {
                        for kernel_thread in any {
                            t.sock_owned = owned;
                            t.peer_fin = fin;
                            t.orphan = orphan;
                            t.ulp = ulp;
                            t.kernel_thread = kernel_thread;
                            let raw = to_raw(&t);
                            assert_eq!(raw.cpu, 3);
                            assert_eq!(decode(&raw_bytes(&raw)).unwrap(), t);
                        }
                    }
                }
            }
        }
        // The bits as the eBPF program sets them.
        let mut raw = to_raw(&t);
        raw.sock = tracer_common::SOCK_OWNED_READ | tracer_common::SOCK_OWNED;
        let d = decode(&raw_bytes(&raw)).unwrap();
        assert_eq!((d.sock_owned, d.peer_fin), (Some(true), None));
        raw.sock = tracer_common::SOCK_OWNED_READ | tracer_common::SOCK_PEER_FIN_READ;
        let d = decode(&raw_bytes(&raw)).unwrap();
        assert_eq!((d.sock_owned, d.peer_fin), (Some(false), Some(false)));
        raw.sock = tracer_common::SOCK_ORPHAN_READ | tracer_common::SOCK_ORPHAN;
        let d = decode(&raw_bytes(&raw)).unwrap();
        assert_eq!((d.sock_owned, d.orphan), (None, Some(true)));
        raw.sock = tracer_common::SOCK_ULP_READ | tracer_common::SOCK_ULP;
        let d = decode(&raw_bytes(&raw)).unwrap();
        assert_eq!((d.orphan, d.ulp), (None, Some(true)));
        raw.sock = 0;
        let d = decode(&raw_bytes(&raw)).unwrap();
        assert_eq!((d.sock_owned, d.peer_fin), (None, None));
        // `SOCK_DONE` is TCP's: an MPTCP (or SCTP) socket's peer FIN is not known.
        raw.sock = tracer_common::SOCK_PEER_FIN_READ | tracer_common::SOCK_PEER_FIN;
        raw.protocol = 262;
        assert_eq!(decode(&raw_bytes(&raw)).unwrap().peer_fin, None);
        raw.protocol = tracer_common::IPPROTO_TCP;
        assert_eq!(decode(&raw_bytes(&raw)).unwrap().peer_fin, Some(true));
    }

    #[test]
    fn unaligned_buffer_decodes() {
        let t = transition(3, 42, "10.0.0.1:1", "10.0.0.2:2", 1, 4);
        let mut buf = vec![0u8];
        buf.extend(raw_bytes(&to_raw(&t)));
        assert_eq!(decode(&buf[1..]).unwrap(), t);
    }

    #[test]
    fn truncated_and_oversized_buffers_are_errors() {
        let bytes = raw_bytes(&to_raw(&transition(
            1,
            1,
            "127.0.0.1:1",
            "127.0.0.1:2",
            7,
            2,
        )));
        for len in [0, 1, 8, EVENT_SIZE - 1] {
            assert!(matches!(
                decode(&bytes[..len]),
                Err(DecodeError::Size { size, expected: EVENT_SIZE }) if size == len
            ));
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode(&long).is_err());
    }

    #[test]
    fn unknown_state_and_family() {
        let mut raw = to_raw(&transition(1, 1, "127.0.0.1:1", "127.0.0.1:2", 7, 2));
        raw.newstate = 77;
        let t = decode(&raw_bytes(&raw)).unwrap();
        assert_eq!(t.new, TcpState::Unknown(77));
        assert_eq!(t.new.name(), "UNKNOWN(77)");
        raw.family = 1;
        assert!(matches!(
            decode(&raw_bytes(&raw)),
            Err(DecodeError::Family { family: 1 })
        ));
    }

    #[test]
    fn comm_stops_at_nul_and_survives_bad_utf8() {
        assert_eq!(comm(b"curl\0\0\0junk"), "curl");
        assert_eq!(comm(&[0xff, b'a', 0]), "\u{fffd}a");
        assert_eq!(comm(b"sixteen-bytes-xx"), "sixteen-bytes-xx");
    }

    /// The iterator's records decode field for field, in the layout the program writes
    /// (`HeldFile` is `repr(C)`: inode, tgid, fd, kind, reserved); a torn last record is an
    /// error, not a short list.
    #[test]
    fn held_files_decode_whole_records_only() {
        let files = [
            HeldFile {
                inode: 0x1122_3344_5566_7788,
                tgid: 4242,
                fd: 7,
                kind: tracer_common::HELD_SOCKET,
                reserved: 0,
            },
            HeldFile {
                inode: 4_026_531_840,
                tgid: 1,
                fd: 3,
                kind: tracer_common::HELD_NAMESPACE,
                reserved: 0,
            },
        ];
        let mut bytes = Vec::new();
        for f in &files {
            bytes.extend_from_slice(&f.inode.to_ne_bytes());
            for word in [f.tgid, f.fd, f.kind, f.reserved] {
                bytes.extend_from_slice(&word.to_ne_bytes());
            }
        }
        assert_eq!(held_files(&bytes).unwrap(), files);
        assert_eq!(held_files(&[]).unwrap(), []);
        assert!(matches!(
            held_files(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Size { expected: 24, .. })
        ));
    }
}
