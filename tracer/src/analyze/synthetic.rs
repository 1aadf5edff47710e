//! A synthetic export of any size, for the bench (`cargo xtask bench --html-report`) and the
//! tests of large reports: a server on `127.0.0.1:80` whose connections are accepted, pass
//! through CLOSE_WAIT (0 to 999 ms) and close, spread over a number of processes.

use std::io::{self, Write};

/// Transitions per synthetic connection: LISTEN -> SYN_RECV -> ESTABLISHED -> CLOSE_WAIT ->
/// LAST_ACK -> CLOSE.
pub const TRANSITIONS_PER_CONNECTION: u64 = 5;

/// Writes a complete export (header, `connections` × 5 transitions a millisecond apart,
/// summary) to `out`. Connection `i` belongs to process `100 + i % processes` (named
/// `srvPID`), which is its owner on the transition to LAST_ACK; the summary says the run lost
/// 7 records, so the report has a loss to show. `processes` must be positive.
///
/// # Errors
/// Those of `out`.
pub fn write(out: &mut impl Write, connections: u64, processes: u32) -> io::Result<()> {
    writeln!(
        out,
        r#"{{"type":"header","schema":1,"version":"0.1.0","hostname":"big","kernel":"6.18","start_time":"2026-11-25T08:00:00.000000Z","monotonic_start_ns":1000000000,"wall_offset_ns":1795593034487429966,"complete":true,"options":{{"ports":[],"family":null,"all_protocols":false,"pids":[],"transitions":true,"timelines":false,"json":true,"close_wait_threshold_ns":5000000000,"report_interval_ns":30000000000,"duration_ns":null,"max_sockets":262144,"ring_buffer_bytes":8388608}}}}"#
    )?;
    for i in 0..connections {
        let start = 1_000_000_000 + i * 1_000_000;
        let close_wait = (i % 1000) * 1_000_000;
        let connection = Connection {
            skaddr: 0xffff_8880_0000_0000 + i * 64,
            rport: 1024 + i % 60_000,
            pid: 100 + u32::try_from(i % u64::from(processes)).unwrap_or(0),
        };
        let steps = [
            (start, "LISTEN", "SYN_RECV", None),
            (start + 10_000, "SYN_RECV", "ESTABLISHED", Some(10_000)),
            (start + 20_000, "ESTABLISHED", "CLOSE_WAIT", Some(10_000)),
            (
                start + 20_000 + close_wait,
                "CLOSE_WAIT",
                "LAST_ACK",
                Some(close_wait),
            ),
            (
                start + 30_000 + close_wait,
                "LAST_ACK",
                "CLOSE",
                Some(10_000),
            ),
        ];
        for (ts, old, new, duration) in steps {
            connection.transition(out, ts, old, new, duration)?;
        }
    }
    let n = connections * TRANSITIONS_PER_CONNECTION;
    writeln!(
        out,
        r#"{{"type":"summary","ts_ns":{},"time":"2026-11-25T08:00:00.000000Z","events":{n},"transitions":{n},"lost_ringbuf":7,"recursion_misses":0,"decode_errors":0,"evicted":0,"timelines":{connections},"close_wait_alerts":0,"close_wait_resolved":0,"output_records":0,"output_dropped":0,"export_dropped":0}}"#,
        2_000_000_000 + connections * 1_000_000
    )
}

struct Connection {
    skaddr: u64,
    rport: u64,
    pid: u32,
}

impl Connection {
    fn transition(
        &self,
        out: &mut impl Write,
        ts: u64,
        old: &str,
        new: &str,
        duration: Option<u64>,
    ) -> io::Result<()> {
        let Connection { skaddr, rport, pid } = self;
        let (owner, comm) = if new == "LAST_ACK" {
            (pid.to_string(), format!("\"srv{pid}\""))
        } else {
            ("null".to_owned(), "null".to_owned())
        };
        let duration = duration.map_or_else(|| "null".to_owned(), |d| d.to_string());
        writeln!(
            out,
            r#"{{"type":"transition","ts_ns":{ts},"time":"2026-11-25T08:00:00.000000Z","skaddr":"{skaddr:#x}","family":"ipv4","laddr":"127.0.0.1","lport":80,"raddr":"127.0.0.1","rport":{rport},"protocol":6,"old_state":"{old}","new_state":"{new}","duration_ns":{duration},"pid":{owner},"comm":{comm},"ctx_pid":{pid},"ctx_comm":"srv{pid}","cpu":0}}"#
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::reader::Reader;

    #[test]
    fn every_line_reads_back() {
        let mut text = Vec::new();
        write(&mut text, 30, 4).unwrap();
        let mut reader = Reader::new(&text[..]);
        let mut warnings = Vec::new();
        let mut records = 0;
        while reader
            .next_record(&mut |w| warnings.push(w))
            .unwrap()
            .is_some()
        {
            records += 1;
        }
        assert_eq!(records, 2 + 30 * TRANSITIONS_PER_CONNECTION);
        assert!(warnings.is_empty(), "{warnings:?}");
    }
}
