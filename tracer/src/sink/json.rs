//! NDJSON: one record per line, each with a `type`.
//!
//! Transitions, the bulk of the stream, are written by hand into a reused line buffer: at full
//! churn serde's per-field escaping of every string was a quarter of the tracer's CPU. The
//! bytes are exactly serde_json's (the tests compare them); strings that need escaping go
//! through serde_json. Every other record is written by serde_json.

use std::{
    io::{self, Write},
    net::IpAddr,
};

use super::Sink;
use crate::{
    cause::ResetBy,
    event::{Family, TcpState},
    output::ChunkWriter,
    record::{Record, SkAddr, TransitionRecord},
    units::WallTime,
};

/// NDJSON: one record per line, the bytes serde_json would write for [`Record`].
pub struct JsonSink<W> {
    out: W,
    line: Vec<u8>,
    second: Second,
}

impl<W: Write> JsonSink<W> {
    /// A sink writing to `out` (buffer it: every record is one `write_all`).
    pub fn new(out: W) -> Self {
        Self {
            out,
            line: Vec::with_capacity(LINE_BYTES),
            second: Second::default(),
        }
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Sink for JsonSink<W> {
    fn write(&mut self, record: &Record) -> io::Result<()> {
        self.line.clear();
        line(&mut self.line, record, &mut self.second)?;
        self.out.write_all(&self.line)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn json_lines(&self) -> bool {
        true
    }
}

/// NDJSON formatted straight into an [`Output`](crate::output::Output)'s chunk: the same bytes
/// as [`JsonSink`], without a line buffer to copy out of.
pub struct JsonChunkSink {
    chunk: ChunkWriter,
    second: Second,
}

impl JsonChunkSink {
    /// A sink appending to `chunk`.
    pub fn new(chunk: ChunkWriter) -> Self {
        Self {
            chunk,
            second: Second::default(),
        }
    }
}

impl Sink for JsonChunkSink {
    fn write(&mut self, record: &Record) -> io::Result<()> {
        let second = &mut self.second;
        self.chunk.append(|bytes| line(bytes, record, second))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn json_lines(&self) -> bool {
        true
    }
}

/// The RFC 3339 text of the last second a transition's `time` fell in, up to the seconds
/// (`2026-11-25T08:00:00`): records come in time order, thousands a second, and the calendar
/// arithmetic is then done once a second.
#[derive(Default)]
struct Second {
    /// Unix seconds + 1 (0: none yet).
    key: u64,
    text: [u8; 19],
}

impl Second {
    /// Writes `time` as [`WallTime::text`] does.
    fn write(&mut self, out: &mut Vec<u8>, time: WallTime) {
        let ns = time.unix_ns();
        let key = ns / 1_000_000_000 + 1;
        if key != self.key {
            let whole = WallTime::from_unix_ns(ns - ns % 1_000_000_000).text();
            self.text.copy_from_slice(&whole.as_bytes()[..19]);
            self.key = key;
        }
        out.extend_from_slice(&self.text);
        let micros = (ns % 1_000_000_000 / 1_000) as usize;
        let mut tail = *b".000000Z";
        for (i, pair) in [micros / 10_000, micros / 100 % 100, micros % 100]
            .into_iter()
            .enumerate()
        {
            tail[1 + 2 * i..3 + 2 * i].copy_from_slice(&PAIRS[pair * 2..pair * 2 + 2]);
        }
        out.extend_from_slice(&tail);
    }
}

/// Appends `record`'s line, newline included.
fn line(out: &mut Vec<u8>, record: &Record, second: &mut Second) -> io::Result<()> {
    match record {
        Record::Transition(r) => transition(out, r, second)?,
        other => serde_json::to_writer(&mut *out, other)?,
    }
    out.push(b'\n');
    Ok(())
}

/// A transition record, field for field as serde_json writes `Record::Transition`.
fn transition(out: &mut Vec<u8>, r: &TransitionRecord, second: &mut Second) -> io::Result<()> {
    // Room for the whole line but for long or escaped strings: the appends below then never
    // reallocate.
    out.reserve(LINE_BYTES);
    out.extend_from_slice(br#"{"type":"transition","ts_ns":"#);
    number(out, r.ts_ns);
    // Both are ASCII digits and separators: nothing to escape.
    out.extend_from_slice(br#","time":""#);
    second.write(out, r.time);
    out.extend_from_slice(br#"","skaddr":""#);
    let skaddr = r.skaddr.0;
    in_place::<18>(out, SkAddr::text_len(skaddr), |text| {
        SkAddr::write(text, skaddr);
    });
    out.push(b'"');
    out.extend_from_slice(match r.family {
        Family::Ipv4 => br#","family":"ipv4","laddr":""#,
        Family::Ipv6 => br#","family":"ipv6","laddr":""#,
    });
    ip(out, r.laddr);
    out.extend_from_slice(br#"","lport":"#);
    number(out, r.lport);
    out.extend_from_slice(br#","raddr":""#);
    ip(out, r.raddr);
    out.extend_from_slice(br#"","rport":"#);
    number(out, r.rport);
    out.extend_from_slice(br#","protocol":"#);
    number(out, r.protocol);
    out.extend_from_slice(br#","old_state":"#);
    state(out, r.old_state);
    out.extend_from_slice(br#","new_state":"#);
    state(out, r.new_state);
    out.extend_from_slice(br#","duration_ns":"#);
    optional(out, r.duration_ns);
    out.extend_from_slice(br#","pid":"#);
    optional(out, r.pid);
    out.extend_from_slice(br#","comm":"#);
    match &r.comm {
        Some(comm) => string(out, comm)?,
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","ctx_pid":"#);
    number(out, r.ctx_pid);
    out.extend_from_slice(br#","ctx_comm":"#);
    string(out, &r.ctx_comm)?;
    out.extend_from_slice(br#","ctx_tid":"#);
    number(out, r.ctx_tid);
    out.extend_from_slice(br#","ctx_thread":"#);
    match &r.ctx_thread {
        Some(thread) => string(out, thread)?,
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","cpu":"#);
    number(out, r.cpu);
    out.extend_from_slice(br#","error":"#);
    match &r.error {
        Some(error) => string(out, error)?,
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(match r.reset_by {
        None => br#","reset_by":null"#.as_slice(),
        Some(ResetBy::Local) => br#","reset_by":"local""#,
        Some(ResetBy::Peer) => br#","reset_by":"peer""#,
    });
    out.extend_from_slice(br#","netns":"#);
    optional(out, r.netns);
    out.extend_from_slice(br#","sock_owned":"#);
    boolean(out, r.sock_owned);
    out.extend_from_slice(br#","peer_fin":"#);
    boolean(out, r.peer_fin);
    out.push(b'}');
    Ok(())
}

fn boolean(out: &mut Vec<u8>, b: Option<bool>) {
    out.extend_from_slice(match b {
        None => b"null".as_slice(),
        Some(false) => b"false",
        Some(true) => b"true",
    });
}

/// What a transition's line takes but for its strings (see [`crate::output::Buffer::RECORD_BYTES`]
/// for the lengths measured).
const LINE_BYTES: usize = 640;

/// Appends `len` (at most `N`) bytes that `fill` writes in place. `N` zeros are appended and
/// the rest cut off, because a copy of a constant size is a few moves, where one of a variable
/// size is a call to `memcpy`, and bytes written into a stack buffer and copied out at once
/// stall the CPU (each number through `itoa` and `memcpy` cost a tenth of the tracer's time).
fn in_place<const N: usize>(out: &mut Vec<u8>, len: usize, fill: impl FnOnce(&mut [u8])) {
    let start = out.len();
    out.extend_from_slice(&[0u8; N]);
    fill(&mut out[start..start + len]);
    out.truncate(start + len);
}

fn number(out: &mut Vec<u8>, n: impl Into<u64>) {
    let n = n.into();
    in_place::<20>(out, decimal_len(n), |digits| decimal(digits, n));
}

/// "00" to "99".
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// How many decimal digits `n` has.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |l| l as usize + 1)
}

/// Writes `n` in decimal into `digits`, which is [`decimal_len`] long (`itoa`'s text; a test
/// compares them).
fn decimal(digits: &mut [u8], n: u64) {
    let (mut rest, mut end) = (n, digits.len());
    while rest >= 100 {
        let pair = (rest % 100) as usize * 2;
        rest /= 100;
        end -= 2;
        digits[end..end + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if rest >= 10 {
        let pair = rest as usize * 2;
        digits[..2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        digits[0] = b'0' + rest as u8;
    }
}

fn optional(out: &mut Vec<u8>, n: Option<impl Into<u64>>) {
    match n {
        Some(n) => number(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// A JSON string: raw when no byte needs escaping (the usual case), else through serde_json.
fn string(out: &mut Vec<u8>, s: &str) -> io::Result<()> {
    #[expect(
        clippy::needless_bitwise_bool,
        reason = "without an early exit the test vectorizes; the strings are short"
    )]
    let escape = s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    if escape {
        serde_json::to_writer(out, s).map_err(io::Error::from)
    } else {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        Ok(())
    }
}

fn state(out: &mut Vec<u8>, s: TcpState) {
    out.push(b'"');
    out.extend_from_slice(s.name().as_bytes());
    out.push(b'"');
}

/// An address as its `Display` (only digits, dots, colons and hex letters: nothing to escape).
fn ip(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                let octet = u64::from(octet);
                in_place::<3>(out, decimal_len(octet), |digits| decimal(digits, octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64) -> TransitionRecord {
        let comms = [
            "curl",
            "",
            "a \"quoted\" name",
            "back\\slash",
            "tab\there",
            "nl\n\u{1}\u{1f}",
            "del\u{7f}",
            "ünïcødé ✓",
            "sixteen-bytes-xx",
        ];
        let addrs: [IpAddr; 7] = [
            "127.0.0.1".parse().unwrap(),
            "10.20.99.5".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            "255.255.255.255".parse().unwrap(),
            "::1".parse().unwrap(),
            "2001:db8::ff00:42:8329".parse().unwrap(),
            "::ffff:10.0.0.1".parse().unwrap(),
        ];
        let n = i as usize;
        TransitionRecord {
            ts_ns: i * 1_234_567_891,
            time: crate::units::WallTime::from_unix_ns(
                1_764_057_960_000_000_000 + i * 1_000_123_457,
            ),
            skaddr: crate::record::SkAddr(match i % 4 {
                0 => 0xffff_8881_0000_0000u64 + i * 64,
                1 => i,
                2 => 0xabc + i * 4096,
                _ => u64::MAX - i,
            }),
            family: if n.is_multiple_of(2) {
                Family::Ipv4
            } else {
                Family::Ipv6
            },
            laddr: addrs[n % addrs.len()],
            lport: (i * 7919 % 65_536) as u16,
            raddr: addrs[(n / 3) % addrs.len()],
            rport: (i * 104_729 % 65_536) as u16,
            protocol: [6, 132, 262][n % 3],
            old_state: TcpState::from((i % 15) as u32),
            new_state: TcpState::from(((i + 5) % 15) as u32),
            duration_ns: (!i.is_multiple_of(3)).then_some(i * 1_000 + u64::MAX / (i + 1)),
            pid: (!i.is_multiple_of(4)).then_some((i * 31) as u32),
            comm: (!i.is_multiple_of(4)).then(|| comms[n % comms.len()].into()),
            ctx_pid: (i * 17) as u32,
            ctx_comm: comms[(n / 2) % comms.len()].into(),
            ctx_tid: (i * 19) as u32,
            ctx_thread: (!i.is_multiple_of(5)).then(|| comms[(n / 3) % comms.len()].into()),
            cpu: (i % 2) as u32,
            error: i
                .is_multiple_of(6)
                .then(|| ["ECONNRESET", "ETIMEDOUT", "errno 200"][n % 3].to_owned()),
            reset_by: [None, Some(ResetBy::Local), Some(ResetBy::Peer)][n % 3],
            netns: (!i.is_multiple_of(6)).then_some(4_026_531_840 + i),
            sock_owned: [None, Some(false), Some(true)][(n / 2) % 3],
            peer_fin: [None, Some(false), Some(true)][(n / 5) % 3],
        }
    }

    #[test]
    fn decimal_writes_what_itoa_writes() {
        let mut values: Vec<u64> = vec![0, u64::MAX, u64::MAX - 1];
        for power in 0..20 {
            let p = 10u64.pow(power);
            values.extend([
                p - 1,
                p,
                p + 1,
                p.saturating_mul(9),
                p.saturating_mul(10) - 1,
            ]);
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(x >> (x % 64));
        }
        for n in values {
            let mut digits = vec![0; decimal_len(n)];
            decimal(&mut digits, n);
            assert_eq!(digits, itoa::Buffer::new().format(n).as_bytes(), "{n}");
        }
    }

    #[test]
    fn transitions_are_byte_for_byte_serde_json() {
        for i in 0..500 {
            let r = Record::Transition(record(i));
            let mut sink = JsonSink::new(Vec::new());
            sink.write(&r).unwrap();
            let ours = String::from_utf8(sink.into_inner()).unwrap();
            let serde = serde_json::to_string(&r).unwrap() + "\n";
            assert_eq!(ours, serde, "record {i}");
            let back: Record = serde_json::from_str(&ours).unwrap();
            assert_eq!(back, r);
        }
    }

    /// Times are written as `WallTime::text` writes them, within a second, across seconds and
    /// back (a record out of order), at the edges of a second.
    #[test]
    fn times_are_written_as_wall_time_text() {
        let base = 1_764_057_959_000_000_000u64;
        let mut second = Second::default();
        for offset in [
            0,
            1_000,
            999_999_000,
            1_000_000_000,
            1_000_010_000,
            5_000,
            86_400_000_000_000 + 123_456_000,
            3_600_000_000_000 - 1_000,
        ] {
            let time = WallTime::from_unix_ns(base + offset);
            let mut out = Vec::new();
            second.write(&mut out, time);
            assert_eq!(out, time.text().as_bytes(), "{offset}");
        }
    }

    /// The chunk sink appends exactly the line buffer sink's bytes, record after record.
    #[test]
    fn the_chunk_sink_writes_the_same_lines() {
        let chunk = ChunkWriter::default();
        let mut direct = JsonChunkSink::new(chunk.clone());
        let mut buffered = JsonSink::new(Vec::new());
        for i in 0..200 {
            let r = Record::Transition(record(i));
            direct.write(&r).unwrap();
            buffered.write(&r).unwrap();
        }
        let summary = Record::Summary(Box::default());
        direct.write(&summary).unwrap();
        buffered.write(&summary).unwrap();
        let mut bytes = Vec::new();
        chunk
            .append(|b| {
                bytes = std::mem::take(b);
                Ok(())
            })
            .unwrap();
        assert_eq!(bytes, buffered.into_inner());
    }
}
