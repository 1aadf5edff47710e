//! Human output: one line per transition with fixed columns (as tcpstates prints), and
//! marked lines for timelines, CLOSE_WAIT alerts and digests.

use std::{
    fmt::Write as _,
    io::{self, Write},
    net::IpAddr,
};

use super::Sink;
use crate::{
    delivery::ByType,
    event::TcpState,
    printable::printable_or,
    record::{
        CloseWaitRecord, CloseWaitResolvedRecord, DigestRecord, Record, Summary, TimelineRecord,
        TransitionRecord, UnownedReason,
    },
    timeline::Step,
    units::{ms, Rfc3339, WallTime},
};

/// Aligned columns for a terminal, one line per record (see the README for each line kind).
pub struct TextSink<W> {
    out: W,
    /// Address column width: 15 fits IPv4, 39 any IPv6 address. Longer values push the
    /// following columns right rather than being cut.
    addr_width: usize,
    /// Highlight CLOSE_WAIT reports with ANSI colour (a terminal, and `NO_COLOR` unset).
    color: bool,
    /// Print a report's whole diagnosis (`-v`), not its two or three lines.
    detail: bool,
    line: String,
}

impl<W: Write> TextSink<W> {
    /// A sink writing to `out`; `wide` makes the address columns fit any IPv6 address.
    pub fn new(out: W, wide: bool) -> Self {
        Self {
            out,
            addr_width: if wide { 39 } else { 15 },
            color: false,
            detail: false,
            line: String::with_capacity(160),
        }
    }

    /// Highlights CLOSE_WAIT reports in bold red (resolutions in yellow).
    pub fn with_color(mut self, color: bool) -> Self {
        self.color = color;
        self
    }

    /// Prints each report's whole diagnosis (every listed thread and frame, what could not
    /// be read), not its two or three lines.
    pub fn with_detail(mut self, detail: bool) -> Self {
        self.detail = detail;
        self
    }

    /// The writer back.
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// `HH:MM:SS.mmm` of a wall-clock time.
fn clock(time: WallTime) -> Clock {
    Clock(time.text())
}

/// The time of day of a [`WallTime`], `HH:MM:SS.mmm`, written without allocating.
struct Clock(Rfc3339);

impl std::fmt::Display for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let time = self.0.as_str();
        // `{:<12}` in the callers: pad as a string would be.
        f.pad(time.get(11..23).unwrap_or(time))
    }
}

/// The socket's own history under a report, e.g. `socket: last data from the peer 3.0 s ago,
/// last ACK 3.0 s ago; FIN not read` (none when nothing is known).
fn socket_line(r: &CloseWaitRecord) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(t) = &r.tcp_info {
        parts.push(format!(
            "last data from the peer {} ago, last ACK {} ago",
            seconds(t.last_data_recv_ms),
            seconds(t.last_ack_recv_ms)
        ));
    }
    match r.fin_read {
        Some(true) => parts.push("read up to the FIN".to_owned()),
        Some(false) => parts.push("FIN not read".to_owned()),
        None => {}
    }
    (!parts.is_empty()).then(|| format!("socket: {}", parts.join("; ")))
}

/// Milliseconds as seconds with one decimal: `3.0 s`.
fn seconds(ms: u64) -> String {
    format!("{}.{} s", ms / 1000, ms % 1000 / 100)
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

impl<W: Write> TextSink<W> {
    /// An address for a fixed-width column: in the narrow (IPv4) layout, a v4-mapped address
    /// (`::ffff:127.0.0.1`, a dual-stack socket serving an IPv4 peer) is shown as its IPv4
    /// address so the columns stay aligned; `-w` and JSON show it whole.
    fn column(&self, ip: IpAddr) -> IpAddr {
        if self.addr_width < 39 {
            ip.to_canonical()
        } else {
            ip
        }
    }

    /// An address and port in a report or timeline line, the address as in [`Self::column`].
    fn endpoint(&self, ip: IpAddr, port: u16) -> String {
        match self.column(ip) {
            IpAddr::V4(v4) => format!("{v4}:{port}"),
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        }
    }

    fn transition(&mut self, r: &TransitionRecord) -> std::fmt::Result {
        let w = self.addr_width;
        write!(
            self.line,
            "{:<12} {:<7} {:<16} {:<w$} {:<5} {:<w$} {:<5} {:<12} -> {:<12} {}",
            clock(r.time),
            opt(r.pid),
            printable_or(r.comm.as_deref(), "-"),
            self.column(r.laddr),
            r.lport,
            self.column(r.raddr),
            r.rport,
            r.old_state,
            r.new_state,
            r.duration_ns.map_or_else(|| "-".to_owned(), ms),
        )
    }

    fn timeline(&mut self, r: &TimelineRecord) -> std::fmt::Result {
        write!(
            self.line,
            "{:<12} TIMELINE pid={} comm={} {} -> {} outcome={}{}{}{}{} {}",
            clock(r.time),
            opt(r.pid),
            printable_or(r.comm.as_deref(), "-"),
            self.endpoint(r.laddr, r.lport),
            self.endpoint(r.raddr, r.rport),
            r.outcome.name(),
            if r.error.is_some() { " error=" } else { "" },
            r.error.as_deref().unwrap_or(""),
            match r.reset_by {
                Some(crate::cause::ResetBy::Local) => " reset_by=local",
                Some(crate::cause::ResetBy::Peer) => " reset_by=peer",
                None => "",
            },
            if r.from_birth {
                ""
            } else {
                " (first seen mid-life)"
            },
            path(&r.states),
        )
    }

    fn close_wait(&mut self, r: &CloseWaitRecord) -> std::fmt::Result {
        write!(
            self.line,
            "{:<12} *** {} for {}{}ms: pid={} comm={} fd={}",
            clock(r.time),
            r.state,
            if r.age_at_least { ">=" } else { "" },
            r.age_ms,
            opt(r.pid),
            printable_or(r.comm.as_deref(), "-"),
            opt(r.fd),
        )?;
        if r.holders.len() > 1 {
            write!(self.line, " holders={}", r.holders.len())?;
        }
        write!(
            self.line,
            " {} <- {} recv-q={}",
            self.endpoint(r.laddr, r.lport),
            self.endpoint(r.raddr, r.rport),
            opt(r.recv_q),
        )?;
        if let Some(netns) = r.netns {
            write!(self.line, " netns={netns}")?;
        }
        if let Some(container) = &r.container {
            write!(
                self.line,
                " container={}",
                container.get(..12).unwrap_or(container)
            )?;
        }
        if let Some(pod) = &r.pod_uid {
            write!(self.line, " pod={pod}")?;
        }
        match &r.unowned {
            Some(u) if u.reason == UnownedReason::AcceptQueue => write!(
                self.line,
                " (never accepted: waiting in the accept queue of {} held by pid={} comm={})",
                u.listener.map_or_else(|| "-".to_owned(), |l| l.to_string()),
                opt(u.listener_pid),
                printable_or(u.listener_comm.as_deref(), "-"),
            ),
            Some(_) => write!(self.line, " (no process holds it)"),
            None => write!(self.line, " ({})", stuck_hint(r.state)),
        }?;
        if let Some(line) = socket_line(r) {
            write!(self.line, "\n{:<12}   {line}", "")?;
        }
        self.diagnosis(r.diagnosis.as_ref())
    }

    /// The diagnosis lines under a report, indented under its time.
    fn diagnosis(&mut self, d: Option<&crate::diagnosis::Diagnosis>) -> std::fmt::Result {
        for line in d
            .map(|d| crate::diagnosis::text::lines(d, self.detail))
            .unwrap_or_default()
        {
            write!(self.line, "\n{:<12}   {line}", "")?;
        }
        Ok(())
    }

    fn resolved(&mut self, r: &CloseWaitResolvedRecord) -> std::fmt::Result {
        write!(
            self.line,
            "{:<12} *** {} resolved after {}{}ms -> {}: pid={} comm={} {} <- {}",
            clock(r.time),
            r.state,
            if r.stuck_at_least { ">=" } else { "" },
            r.stuck_ms,
            r.new_state,
            opt(r.pid),
            printable_or(r.comm.as_deref(), "-"),
            self.endpoint(r.laddr, r.lport),
            self.endpoint(r.raddr, r.rport),
        )
    }

    fn digest(&mut self, r: &DigestRecord) -> std::fmt::Result {
        write!(
            self.line,
            "{:<12} DIGEST {} socket(s) stuck in {}",
            clock(r.time),
            r.stuck,
            if r.processes.iter().all(|p| p.state == TcpState::CloseWait) {
                "CLOSE_WAIT".to_owned()
            } else {
                let mut states: Vec<String> = r
                    .processes
                    .iter()
                    .map(|p| p.state.name().into_owned())
                    .collect();
                states.sort();
                states.dedup();
                states.join(", ")
            }
        )?;
        for p in &r.processes {
            if p.state != TcpState::CloseWait {
                write!(self.line, "\n{:<12}   state={}", "", p.state)?;
            }
            write!(
                self.line,
                "\n{:<12}   pid={} comm={} stuck={} oldest={}ms",
                "",
                opt(p.pid),
                printable_or(p.comm.as_deref(), "-"),
                p.count,
                p.oldest_age_ms
            )?;
            self.diagnosis(p.diagnosis.as_ref())?;
        }
        Ok(())
    }
}

/// What a socket stuck in `state` usually means.
fn stuck_hint(state: TcpState) -> &'static str {
    match state {
        TcpState::CloseWait => "the process has not closed a socket its peer closed",
        TcpState::FinWait2 => "the peer has not closed its end: it may leak CLOSE_WAIT",
        TcpState::FinWait1 | TcpState::Closing | TcpState::LastAck => {
            "the peer does not acknowledge our FIN: dead or filtered"
        }
        TcpState::SynSent => "no answer to our SYN: the peer is dead or filtered",
        TcpState::SynRecv => "the handshake is not completed by the peer",
        _ => "stuck longer than its threshold",
    }
}

/// `SYN_SENT(0.120) > ESTABLISHED(3.000) > FIN_WAIT1(0.010) > TIME_WAIT*`; durations in ms,
/// `*` marks an inferred state.
pub fn path(states: &[Step]) -> String {
    let mut out = String::new();
    for (i, step) in states.iter().enumerate() {
        if i > 0 {
            out.push_str(" > ");
        }
        out.push_str(&step.state.name());
        if step.inferred {
            out.push('*');
        }
        if let Some(d) = step.duration_ns {
            let _ = write!(out, "({})", ms(d));
        }
    }
    out
}

/// The summary as a few lines for stderr: what each destination dropped, by type, when it
/// dropped anything.
pub fn summary(s: &Summary) -> String {
    let mut text = totals(s);
    let destinations = [("stdout", Some(&s.stdout)), ("export", s.export.as_ref())];
    for (name, d) in destinations {
        if let Some(d) = d.filter(|d| d.dropped.total() > 0) {
            let _ = write!(
                text,
                "\ntracer: {name} dropped {} of {} records: {}",
                d.dropped.total(),
                d.shown.total(),
                by_type(&d.dropped)
            );
        }
    }
    text
}

/// `12 transition, 3 timeline` (the non-zero counts, by record type).
pub fn by_type(counts: &ByType) -> String {
    let json = serde_json::to_value(counts).unwrap_or_default();
    let Some(fields) = json.as_object() else {
        return String::new();
    };
    let parts: Vec<String> = fields
        .iter()
        .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
        .map(|(name, n)| format!("{n} {name}"))
        .collect();
    if parts.is_empty() {
        "none".to_owned()
    } else {
        parts.join(", ")
    }
}

fn totals(s: &Summary) -> String {
    format!(
        "tracer: {} events, {} transitions, {} timelines, {} CLOSE_WAIT alerts ({} resolved){}\n\
         tracer: lost: {} (ring buffer full), {} (kernel skipped the program: recursion_misses), {} undecodable, {} output records dropped, {} export records dropped, {} sockets evicted at the cap",
        s.events,
        s.transitions,
        s.timelines,
        s.close_wait_alerts,
        s.close_wait_resolved,
        // `--stuck` reports, when there were any.
        if s.stuck_alerts > 0 {
            format!(", {} stuck alerts ({} resolved)", s.stuck_alerts, s.stuck_resolved)
        } else {
            String::new()
        },
        s.lost_ringbuf,
        s.recursion_misses.map_or_else(
            || "not available".to_owned(),
            |n| n.to_string()
        ),
        s.decode_errors,
        s.output_dropped,
        s.export_dropped,
        s.evicted,
    )
}

impl<W: Write> Sink for TextSink<W> {
    fn begin(&mut self) -> io::Result<()> {
        let w = self.addr_width;
        writeln!(
            self.out,
            "{:<12} {:<7} {:<16} {:<w$} {:<5} {:<w$} {:<5} {:<12} -> {:<12} MS",
            "TIME", "PID", "COMM", "LADDR", "LPORT", "RADDR", "RPORT", "OLDSTATE", "NEWSTATE"
        )
    }

    fn write(&mut self, record: &Record) -> io::Result<()> {
        self.line.clear();
        let highlight = match record {
            Record::CloseWait(_) | Record::Stuck(_) | Record::Digest(_) | Record::Lost(_) => {
                "\x1b[1;31m"
            }
            Record::CloseWaitResolved(_) | Record::StuckResolved(_) => "\x1b[33m",
            _ => "",
        };
        if self.color && !highlight.is_empty() {
            self.line.push_str(highlight);
        }
        let _ = match record {
            Record::Transition(r) => self.transition(r),
            Record::Timeline(r) => self.timeline(r),
            Record::CloseWait(r) | Record::Stuck(r) => self.close_wait(r),
            Record::CloseWaitResolved(r) | Record::StuckResolved(r) => self.resolved(r),
            Record::Digest(r) => self.digest(r),
            Record::Lost(r) => write!(
                self.line,
                "{:<12} LOST {} events (ring buffer full) and {} program runs skipped by the kernel; output records dropped so far: stdout {}{}",
                clock(r.time),
                r.ringbuf,
                r.recursion_misses,
                by_type(&r.stdout.dropped),
                r.export
                    .map(|e| format!(", export {}", by_type(&e.dropped)))
                    .unwrap_or_default(),
            ),
            Record::Analysis(r) => {
                self.line.push_str(&super::analysis::render(r));
                Ok(())
            }
            // Header and summary are not part of the text stream (the summary goes to stderr).
            Record::Header(_) | Record::Summary(_) => return Ok(()),
        };
        if self.color && !highlight.is_empty() {
            self.line.push_str("\x1b[0m");
        }
        self.line.push('\n');
        self.out.write_all(self.line.as_bytes())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}
