//! `--track-reads` (off by default): the last read of each TCP socket, from the kernel's
//! `sock:sock_recv_length` tracepoint where it exists (Linux 6.3+). The eBPF program keeps the
//! last read per socket address in an LRU hash map (see `tracer_common::reads`); a report looks
//! its socket up when it is due, and its diagnosis says how long ago, by which thread, and
//! what that thread blocks in now.
//!
//! It adds a probe to every socket read on the host (a few instructions for a read that is not
//! TCP, a map lookup and a write for one that is): `cargo xtask bench` measures it.

use std::path::Path;

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use serde::{Deserialize, Serialize};
use tracer_common::reads::{LastRead, FIELDS, LAST_READS_MAP, SOCK_RECV_LENGTH_PROGRAM};

/// The tracepoint, as `category/name` in [`crate::features::TRACEPOINTS`].
pub const TRACEPOINT: (&str, &str) = ("sock", "sock_recv_length");

/// The attached program's map of last reads.
pub struct LastReads {
    map: HashMap<MapData, u64, LastRead>,
}

impl LastReads {
    /// Attaches the program where the kernel has the tracepoint with the layout it reads.
    ///
    /// # Errors
    ///
    /// Why it could not (the kernel lacks the tracepoint, its record differs, the verifier
    /// refused the program), as a phrase for the one-line message at start.
    pub fn attach(ebpf: &mut Ebpf, tracefs: &Path) -> Result<LastReads, String> {
        crate::cause::probe::attach_checked(
            ebpf,
            tracefs,
            TRACEPOINT,
            SOCK_RECV_LENGTH_PROGRAM,
            &FIELDS,
        )?;
        let map = ebpf
            .take_map(LAST_READS_MAP)
            .ok_or_else(|| format!("the eBPF object has no map {LAST_READS_MAP}"))?;
        let map = HashMap::try_from(map).map_err(|e| format!("opening {LAST_READS_MAP}: {e}"))?;
        Ok(LastReads { map })
    }

    /// The last read of the socket at kernel address `skaddr`, if one was seen (and not yet
    /// pushed out of the map by [`tracer_common::reads::LAST_READS_ENTRIES`] sockets read since).
    pub fn get(&self, skaddr: u64) -> Option<LastRead> {
        self.map.get(&skaddr, 0).ok()
    }
}

/// A socket's last read, as a report's diagnosis carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastReadReport {
    /// Milliseconds between the read and the report.
    pub age_ms: u64,
    /// The reading process and thread, and the thread's name then.
    pub pid: u32,
    /// The reading thread's id.
    pub tid: u32,
    /// The reading thread's name (its `comm`) at the read.
    pub thread: String,
    /// What the read returned: bytes, 0 for end of file.
    pub bytes: i32,
    /// What that thread blocks in now (as `thread_groups` says it), when it is one of the
    /// diagnosis's listed threads; null otherwise.
    pub now_blocked_in: Option<String>,
}

impl LastReadReport {
    /// The report of `read` for a report made at `now_ns` (monotonic).
    pub fn new(read: &LastRead, now_ns: u64) -> Self {
        let end = read
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(read.comm.len());
        Self {
            age_ms: now_ns.saturating_sub(read.ts_ns) / 1_000_000,
            pid: read.tgid,
            tid: read.tid,
            thread: String::from_utf8_lossy(&read.comm[..end]).into_owned(),
            bytes: read.bytes,
            now_blocked_in: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_becomes_its_report() {
        let mut comm = [0u8; 16];
        comm[..8].copy_from_slice(b"worker-3");
        let read = LastRead {
            ts_ns: 1_000_000_000,
            tgid: 42,
            tid: 4242,
            comm,
            bytes: 0,
            flags: 0,
        };
        let r = LastReadReport::new(&read, 42_500_000_000);
        assert_eq!(
            (r.age_ms, r.pid, r.tid, r.thread.as_str(), r.bytes),
            (41_500, 42, 4242, "worker-3", 0)
        );
    }
}
