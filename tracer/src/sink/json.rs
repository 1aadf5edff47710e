//! NDJSON: one record per line, each with a `type`.
//!
//! Transitions, the bulk of the stream, are written by hand, at a cursor into room made once
//! for the widest line: at full churn serde's per-field escaping of every string was a quarter
//! of the tracer's CPU. The bytes are exactly serde_json's (the tests compare them); a
//! transition with a string that needs escaping or is unusually long, or an unknown state,
//! goes through serde_json whole, as every other record does.

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
    recent: Recent,
}

impl<W: Write> JsonSink<W> {
    /// A sink writing to `out` (buffer it: every record is one `write_all`).
    pub fn new(out: W) -> Self {
        Self {
            out,
            line: Vec::with_capacity(PLAIN_LINE_BYTES),
            recent: Recent::default(),
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
        line(&mut self.line, record, &mut self.recent)?;
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
    recent: Recent,
}

impl JsonChunkSink {
    /// A sink appending to `chunk`.
    pub fn new(chunk: ChunkWriter) -> Self {
        Self {
            chunk,
            recent: Recent::default(),
        }
    }
}

impl Sink for JsonChunkSink {
    fn write(&mut self, record: &Record) -> io::Result<()> {
        let recent = &mut self.recent;
        self.chunk.append(|bytes| line(bytes, record, recent))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn json_lines(&self) -> bool {
        true
    }
}

/// Text that repeats from one transition to the next, kept to be copied: the second of `time`,
/// the seconds of `ts_ns`, and the network namespace.
#[derive(Default)]
struct Recent {
    second: Second,
    ts_seconds: Kept,
    netns: Kept,
}

/// The decimal text of the last number written this way (most lines repeat it).
#[derive(Default)]
struct Kept {
    number: Option<u64>,
    len: usize,
    text: [u8; 20],
}

impl Kept {
    /// Writes `n` as [`Cursor::number`] does.
    fn write(&mut self, out: &mut Cursor<'_>, n: u64) {
        if self.number != Some(n) {
            self.len = decimal_len(n);
            decimal(&mut self.text[..self.len], n);
            self.number = Some(n);
        }
        // All 20 bytes at once, then the cursor moves by the number's length: the bytes after
        // it are written over by what follows (the room made for a line leaves more than 20
        // bytes after any number).
        out.buf[out.at..out.at + self.text.len()].copy_from_slice(&self.text);
        out.at += self.len;
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
    fn write(&mut self, out: &mut Cursor<'_>, time: WallTime) {
        let ns = time.unix_ns();
        let key = ns / 1_000_000_000 + 1;
        if key != self.key {
            let whole = WallTime::from_unix_ns(ns - ns % 1_000_000_000).text();
            self.text.copy_from_slice(&whole.as_bytes()[..19]);
            self.key = key;
        }
        out.put(&self.text);
        let micros = (ns % 1_000_000_000 / 1_000) as usize;
        let mut tail = *b".000000Z";
        for (i, pair) in [micros / 10_000, micros / 100 % 100, micros % 100]
            .into_iter()
            .enumerate()
        {
            tail[1 + 2 * i..3 + 2 * i].copy_from_slice(&PAIRS[pair * 2..pair * 2 + 2]);
        }
        out.put(&tail);
    }
}

/// Appends `record`'s line, newline included.
fn line(out: &mut Vec<u8>, record: &Record, recent: &mut Recent) -> io::Result<()> {
    match record {
        Record::Transition(r) if plain(r) => transition(out, r, recent),
        other => {
            serde_json::to_writer(&mut *out, other)?;
            out.push(b'\n');
        }
    }
    Ok(())
}

/// Names and error texts longer than this (in bytes) are written by serde_json.
const PLAIN_STRING_BYTES: usize = 64;

/// The longest line [`transition`] writes, newline included: its fixed text, every number at
/// its widest, IPv6 addresses, and four strings of [`PLAIN_STRING_BYTES`] (a test writes it).
const PLAIN_LINE_BYTES: usize = 900;

/// A transition [`transition`] can write: its strings are short and need no escaping, its
/// states are known. Any other is written by serde_json (the same text, slower).
fn plain(r: &TransitionRecord) -> bool {
    let string = |s: &str| {
        #[expect(
            clippy::needless_bitwise_bool,
            reason = "without an early exit the test vectorizes; the strings are short"
        )]
        let escape = s.bytes().fold(false, |any, b| {
            any | (b < 0x20) | (b == b'"') | (b == b'\\')
        });
        s.len() <= PLAIN_STRING_BYTES && !escape
    };
    r.old_state.known_name().is_some()
        && r.new_state.known_name().is_some()
        && r.comm.as_deref().is_none_or(string)
        && string(&r.ctx_comm)
        && r.ctx_thread.as_deref().is_none_or(string)
        && r.error.as_deref().is_none_or(string)
}

/// A [`plain`] transition's line, field for field as serde_json writes `Record::Transition`,
/// newline included. Room for the longest such line is made at once and the bytes are put at
/// a cursor in it: one capacity check a line instead of one per append.
fn transition(out: &mut Vec<u8>, r: &TransitionRecord, recent: &mut Recent) {
    let start = out.len();
    out.resize(start + PLAIN_LINE_BYTES, 0);
    let mut line = Cursor {
        buf: &mut out[start..],
        at: 0,
    };
    line.put(br#"{"type":"transition","ts_ns":"#);
    // The seconds, kept, then nine digits of nanoseconds (or the nanoseconds alone).
    let (seconds, nanos) = (r.ts_ns / 1_000_000_000, r.ts_ns % 1_000_000_000);
    if seconds == 0 {
        line.number(nanos);
    } else {
        recent.ts_seconds.write(&mut line, seconds);
        nine_digits(line.take(9), nanos);
    }
    // Both are ASCII digits and separators: nothing to escape.
    line.put(br#","time":""#);
    recent.second.write(&mut line, r.time);
    line.put(br#"","skaddr":""#);
    // 18 bytes written, the cursor moved by the text's length.
    let len = SkAddr::write_into(&mut line.buf[line.at..], r.skaddr.0);
    line.at += len;
    line.put(match r.family {
        Family::Ipv4 => br#"","family":"ipv4","laddr":""#,
        Family::Ipv6 => br#"","family":"ipv6","laddr":""#,
    });
    line.ip(r.laddr);
    line.put(br#"","lport":"#);
    line.number(r.lport);
    line.put(br#","raddr":""#);
    line.ip(r.raddr);
    line.put(br#"","rport":"#);
    line.number(r.rport);
    line.put(br#","protocol":"#);
    line.number(r.protocol);
    line.put(br#","old_state":"#);
    line.state(r.old_state);
    line.put(br#","new_state":"#);
    line.state(r.new_state);
    line.put(br#","duration_ns":"#);
    line.optional(r.duration_ns);
    line.put(br#","pid":"#);
    line.optional(r.pid);
    line.put(br#","comm":"#);
    line.string(r.comm.as_deref());
    line.put(br#","ctx_pid":"#);
    line.number(r.ctx_pid);
    line.put(br#","ctx_comm":"#);
    line.string(Some(&r.ctx_comm));
    line.put(br#","ctx_tid":"#);
    line.number(r.ctx_tid);
    line.put(br#","ctx_thread":"#);
    line.string(r.ctx_thread.as_deref());
    line.put(br#","cpu":"#);
    line.number(r.cpu);
    line.put(br#","error":"#);
    line.string(r.error.as_deref());
    line.put(match r.reset_by {
        None => br#","reset_by":null"#.as_slice(),
        Some(ResetBy::Local) => br#","reset_by":"local""#,
        Some(ResetBy::Peer) => br#","reset_by":"peer""#,
    });
    line.put(br#","netns":"#);
    match r.netns {
        Some(netns) => recent.netns.write(&mut line, netns),
        None => line.put(b"null"),
    }
    line.put(br#","sock_owned":"#);
    line.boolean(r.sock_owned);
    line.put(br#","peer_fin":"#);
    line.boolean(r.peer_fin);
    line.put(b"}\n");
    let len = line.at;
    out.truncate(start + len);
}

/// Bytes put one after the other into room made for them.
struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    /// The next `len` bytes, to write in place (a copy of a constant size is a few moves, where
    /// bytes written into a stack buffer and copied out at once stall the CPU).
    fn take(&mut self, len: usize) -> &mut [u8] {
        let at = self.at;
        self.at += len;
        &mut self.buf[at..at + len]
    }

    fn put(&mut self, bytes: &[u8]) {
        self.take(bytes.len()).copy_from_slice(bytes);
    }

    fn number(&mut self, n: impl Into<u64>) {
        let n = n.into();
        decimal(self.take(decimal_len(n)), n);
    }

    fn optional(&mut self, n: Option<impl Into<u64>>) {
        match n {
            Some(n) => self.number(n),
            None => self.put(b"null"),
        }
    }

    fn boolean(&mut self, b: Option<bool>) {
        self.put(match b {
            None => b"null".as_slice(),
            Some(false) => b"false",
            Some(true) => b"true",
        });
    }

    /// A string [`plain`] let through (nothing to escape), or null.
    fn string(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.put(b"\"");
                self.put(s.as_bytes());
                self.put(b"\"");
            }
            None => self.put(b"null"),
        }
    }

    /// A known state's name, quoted ([`plain`] keeps unknown states out; a state without a
    /// name in the table is written as `""`).
    fn state(&mut self, s: TcpState) {
        let index = s.number().wrapping_sub(1) as usize;
        let (text, len) = QUOTED_STATES.get(index).copied().unwrap_or(EMPTY_QUOTES);
        // 16 bytes at once, then the cursor moves by the name's length, as for octets.
        self.buf[self.at..self.at + text.len()].copy_from_slice(&text);
        self.at += usize::from(len);
    }

    /// An address as its `Display` (only digits, dots, colons and hex letters: nothing to
    /// escape).
    fn ip(&mut self, addr: IpAddr) {
        match addr {
            IpAddr::V4(v4) => {
                // Two octets at a time, each with a dot after it, side by side in one 8-byte
                // word ("255.255." is 8 bytes) written at once, the cursor moving by their
                // length; the last dot is written over by what follows.
                let [a, b, c, d] = v4.octets();
                for (first, second) in [(a, b), (c, d)] {
                    let (first, first_len) = DOTTED_OCTETS[usize::from(first)];
                    let (second, second_len) = DOTTED_OCTETS[usize::from(second)];
                    let word = u64::from(first) | u64::from(second) << (8 * first_len);
                    self.buf[self.at..self.at + 8].copy_from_slice(&word.to_le_bytes());
                    self.at += usize::from(first_len + second_len);
                }
                self.at -= 1;
            }
            IpAddr::V6(v6) => self.ipv6(v6),
        }
    }

    /// An IPv6 address as its `Display`; apart, so that the IPv4 path stays small.
    #[cold]
    #[inline(never)]
    fn ipv6(&mut self, v6: std::net::Ipv6Addr) {
        let mut rest = &mut self.buf[self.at..];
        let room = rest.len();
        // The room left holds the longest IPv6 text (39 bytes) and more.
        let _ = write!(rest, "{v6}");
        self.at += room - rest.len();
    }
}

/// Each state the kernel defines, by its number - 1: its name in quotes, padded to 16 bytes,
/// and that text's length.
const QUOTED_STATES: [([u8; 16], u8); 12] = {
    let mut table = [EMPTY_QUOTES; 12];
    let mut i = 0;
    while i < table.len() {
        let name = crate::event::NAMES[i].1.as_bytes();
        let mut j = 0;
        while j < name.len() {
            table[i].0[j + 1] = name[j];
            j += 1;
        }
        table[i].0[name.len() + 1] = b'"';
        table[i].1 = name.len() as u8 + 2;
        i += 1;
    }
    table
};

/// `""`, padded to 16 bytes, and its length.
const EMPTY_QUOTES: ([u8; 16], u8) = (*b"\"\"\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 2);

/// The decimal text of every octet followed by a dot, as the bytes of a little-endian `u32`
/// (zero-padded), and that text's length.
const DOTTED_OCTETS: [(u32, u8); 256] = {
    let mut table = [(0u32, 0u8); 256];
    let mut n = 0u8;
    loop {
        let (hundreds, tens, ones) = (b'0' + n / 100, b'0' + n / 10 % 10, b'0' + n % 10);
        table[n as usize] = if n >= 100 {
            (u32::from_le_bytes([hundreds, tens, ones, b'.']), 4)
        } else if n >= 10 {
            (u32::from_le_bytes([tens, ones, b'.', 0]), 3)
        } else {
            (u32::from_le_bytes([ones, b'.', 0, 0]), 2)
        };
        if n == u8::MAX {
            break table;
        }
        n += 1;
    }
};

/// "00" to "99".
const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

/// Writes `n` (below 10^9) as nine decimal digits, with leading zeros.
fn nine_digits(digits: &mut [u8], n: u64) {
    let mut rest = n;
    for end in [9, 7, 5, 3] {
        let pair = (rest % 100) as usize * 2;
        rest /= 100;
        digits[end - 2..end].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    digits[0] = b'0' + rest as u8;
}

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

    /// One sink over a stream whose timestamps and namespaces repeat, change, go back and
    /// have leading zeros in their nanoseconds: every line is serde_json's.
    #[test]
    fn kept_numbers_are_written_as_serde_json() {
        let stamps = [
            0,
            7,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            1_000_000_001,
            1_999_999_999,
            5_000_000_007,
            5_000_000_007,
            5_000_000_070,
            5_100_000_000,
            4_999_999_999,
            123_456_789_012_345,
            u64::MAX,
            u64::MAX - 999_999_999,
        ];
        let namespaces = [
            Some(4_026_531_840),
            Some(4_026_531_840),
            None,
            Some(4_026_531_840),
            Some(0),
            Some(1),
            Some(u64::MAX),
        ];
        let mut sink = JsonSink::new(Vec::new());
        let mut serde = String::new();
        for (i, ts_ns) in stamps.into_iter().enumerate() {
            for (j, netns) in namespaces.into_iter().enumerate() {
                let r = Record::Transition(TransitionRecord {
                    ts_ns,
                    netns,
                    ..record((i * namespaces.len() + j) as u64)
                });
                sink.write(&r).unwrap();
                serde += &(serde_json::to_string(&r).unwrap() + "\n");
            }
        }
        let ours = String::from_utf8(sink.into_inner()).unwrap();
        for (ours, serde) in ours.lines().zip(serde.lines()) {
            assert_eq!(ours, serde);
        }
        assert_eq!(ours, serde);
    }

    /// What `write` puts at a cursor into 64 bytes of room.
    fn written(write: impl FnOnce(&mut Cursor<'_>)) -> Vec<u8> {
        let mut buf = [0u8; 64];
        let mut out = Cursor {
            buf: &mut buf,
            at: 0,
        };
        write(&mut out);
        let len = out.at;
        buf[..len].to_vec()
    }

    /// Every state the kernel defines is written as its name in quotes.
    #[test]
    fn states_are_written_quoted() {
        for number in 1..=12 {
            let state = TcpState::from(number);
            assert_eq!(
                written(|out| out.state(state)),
                format!("\"{}\"", state.name()).as_bytes()
            );
        }
    }

    /// Every octet, in every position, as `Ipv4Addr`'s `Display` writes it.
    #[test]
    fn addresses_are_written_as_display() {
        for n in 0..=255u8 {
            for addr in [[n, 0, 0, 0], [1, n, 2, 3], [255, 9, n, 10], [0, 0, 0, n]] {
                let addr = IpAddr::from(addr);
                assert_eq!(written(|out| out.ip(addr)), addr.to_string().as_bytes());
            }
        }
    }

    /// The widest line the cursor writes fits the room made for it, and is serde_json's; a
    /// string one byte longer goes to serde_json.
    #[test]
    fn the_widest_plain_line_fits() {
        let name = "é".repeat(PLAIN_STRING_BYTES / 2);
        let widest = TransitionRecord {
            ts_ns: u64::MAX,
            time: WallTime::from_unix_ns(u64::MAX),
            skaddr: SkAddr(u64::MAX),
            family: Family::Ipv6,
            laddr: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            lport: u16::MAX,
            raddr: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            rport: u16::MAX,
            protocol: u16::MAX,
            old_state: TcpState::NewSynRecv,
            new_state: TcpState::NewSynRecv,
            duration_ns: Some(u64::MAX),
            pid: Some(u32::MAX),
            comm: Some(name.as_str().into()),
            ctx_pid: u32::MAX,
            ctx_comm: name.as_str().into(),
            ctx_tid: u32::MAX,
            ctx_thread: Some(name.as_str().into()),
            cpu: u32::MAX,
            error: Some(name.clone()),
            reset_by: Some(ResetBy::Local),
            netns: Some(u64::MAX),
            sock_owned: Some(false),
            peer_fin: Some(false),
        };
        assert!(plain(&widest));
        let mut out = Vec::new();
        transition(&mut out, &widest, &mut Recent::default());
        let serde = serde_json::to_string(&Record::Transition(widest.clone())).unwrap() + "\n";
        assert_eq!(String::from_utf8(out.clone()).unwrap(), serde);
        assert!(out.len() <= PLAIN_LINE_BYTES, "{} bytes", out.len());
        let v4 = "255.255.255.255".parse().unwrap();
        let ipv4 = TransitionRecord {
            family: Family::Ipv4,
            laddr: v4,
            raddr: v4,
            ..widest.clone()
        };
        assert!(plain(&ipv4));
        let longer = format!("{name}x");
        let too_long = [
            TransitionRecord {
                comm: Some(longer.as_str().into()),
                ..widest.clone()
            },
            TransitionRecord {
                ctx_comm: longer.as_str().into(),
                ..widest.clone()
            },
            TransitionRecord {
                ctx_thread: Some(longer.as_str().into()),
                ..widest.clone()
            },
            TransitionRecord {
                error: Some(longer.clone()),
                ..widest.clone()
            },
            // A number the kernel defines, made unknown by hand: its name is UNKNOWN(5).
            TransitionRecord {
                old_state: TcpState::Unknown(5),
                ..widest
            },
        ];
        for r in too_long {
            assert!(!plain(&r));
            let record = Record::Transition(r);
            let mut sink = JsonSink::new(Vec::new());
            sink.write(&record).unwrap();
            let serde = serde_json::to_string(&record).unwrap() + "\n";
            assert_eq!(String::from_utf8(sink.into_inner()).unwrap(), serde);
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
            let mut buf = [0u8; 64];
            let mut out = Cursor {
                buf: &mut buf,
                at: 0,
            };
            second.write(&mut out, time);
            let len = out.at;
            assert_eq!(&buf[..len], time.text().as_bytes(), "{offset}");
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
