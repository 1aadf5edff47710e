//! Output records: what the sinks print and the export holds. One schema for text, JSON and
//! offline analysis. Every JSON line has a `type`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{
    cause::ResetBy,
    defaults,
    delivery::Destination,
    event::{Family, Name, TcpState},
    owner::{NoOwner, Owner},
    timeline::{Outcome, Step},
    units::WallTime,
};

/// Version of the JSON schema; bumped on incompatible changes.
pub const SCHEMA: u32 = 1;

/// One output record: one line of text or one NDJSON object, its `type` the variant's name in
/// snake case. Times are kernel monotonic ns (`ts_ns`) with their wall-clock `time` (RFC 3339,
/// UTC, microseconds); durations are ns (`_ns`) or whole ms (`_ms`). Every field is described
/// in `docs/schema.md`, the contract for readers. The large, rare variants are boxed (serde
/// writes them the same), so that moving a record costs what moving a transition does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// The first line of every stream from the tracer.
    Header(Box<Header>),
    /// One TCP state change, as the kernel reported it.
    Transition(TransitionRecord),
    /// One connection's life, written when it ends or when the tracer stops.
    Timeline(TimelineRecord),
    /// A socket in CLOSE_WAIT longer than the threshold, reported once.
    CloseWait(Box<CloseWaitRecord>),
    /// A reported `close_wait` socket left CLOSE_WAIT.
    CloseWaitResolved(CloseWaitResolvedRecord),
    /// A socket stuck in a state given with `--stuck` (same fields as `close_wait`).
    Stuck(Box<CloseWaitRecord>),
    /// A reported `stuck` socket left its state.
    StuckResolved(CloseWaitResolvedRecord),
    /// Every `--report-interval`, the reported sockets still stuck, by process.
    Digest(DigestRecord),
    /// Something was lost since the previous `lost` record.
    Lost(Box<LostRecord>),
    /// Totals, written last on a clean stop.
    Summary(Box<Summary>),
    /// Written by `tracer analyze` only, as its last record.
    Analysis(AnalysisRecord),
}

/// First line of an export (and of `--json` output): where and how the records were made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Version of this schema, [`SCHEMA`].
    pub schema: u32,
    /// Version of the tracer that wrote the stream.
    pub version: String,
    /// Host name from `/proc/sys/kernel/hostname`; empty if unreadable.
    pub hostname: String,
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// Wall-clock start, RFC 3339.
    pub start_time: String,
    /// Kernel monotonic ns at start; `time = start_time + (ts_ns - monotonic_start_ns)`.
    pub monotonic_start_ns: u64,
    /// Wall-clock ns since the epoch at monotonic zero: `wall_ns = ts_ns + wall_offset_ns`.
    /// An i64 (fits until 2262): JSON readers and serde's tagged enums handle no wider type.
    pub wall_offset_ns: i64,
    /// Every record the tracer produced is in this stream (an `--export` file). False for
    /// stdout, where `--no-transitions`, `--timelines` and `--pid` choose what is printed.
    pub complete: bool,
    /// Which of the run's destinations this stream is: its drops are the summary's
    /// `output_dropped` (stdout) or `export_dropped` (export). Absent in streams written before
    /// it was recorded, and in the header `/metrics` reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_to: Option<WrittenTo>,
    /// The options of the run.
    pub options: RunOptions,
    /// What the kernel offered the tracer (absent in exports written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_features: Option<crate::features::KernelFeatures>,
}

/// A destination of the tracer's records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WrittenTo {
    /// Standard output (which drops, and counts, what a slow reader leaves no room for).
    Stdout,
    /// The `--export` file (which never drops while its disk accepts writes).
    Export,
}

/// The options a run was started with, as the header records them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunOptions {
    /// Kernel port filter (local or remote port); empty keeps every port.
    pub ports: Vec<u16>,
    /// Kernel family filter; null keeps both.
    pub family: Option<Family>,
    /// Other protocols than TCP that use the tracepoint were traced too.
    pub all_protocols: bool,
    /// `--netns`: the one network namespace traced (its inode); null traces every one.
    pub netns: Option<u64>,
    /// `--pid`: stdout shows only sockets of these processes; empty shows all.
    pub pids: Vec<u32>,
    /// stdout shows transitions (not `--no-transitions`).
    pub transitions: bool,
    /// stdout shows timelines (`--timelines`).
    pub timelines: bool,
    /// stdout was JSON (`--json`).
    pub json: bool,
    /// `--close-wait-threshold`, in nanoseconds.
    pub close_wait_threshold_ns: u64,
    /// `--stuck STATE=DURATION`: other states watched, with thresholds.
    pub stuck: Vec<StuckOption>,
    /// `--report-interval` (digests), in nanoseconds.
    pub report_interval_ns: u64,
    /// `--duration`, in nanoseconds; null: until stopped.
    pub duration_ns: Option<u64>,
    /// `--max-sockets`: the most sockets tracked at once.
    pub max_sockets: usize,
    /// Size of the kernel ring buffer, in bytes.
    pub ring_buffer_bytes: u32,
    /// `--track-reads`: the last read of each socket was asked for (reports' `last_read`).
    #[serde(default)]
    pub track_reads: bool,
}

impl Default for RunOptions {
    /// The defaults of the command line.
    fn default() -> Self {
        Self {
            ports: Vec::new(),
            family: None,
            all_protocols: false,
            netns: None,
            pids: Vec::new(),
            transitions: true,
            timelines: false,
            json: false,
            close_wait_threshold_ns: defaults::nanos(defaults::CLOSE_WAIT_THRESHOLD),
            stuck: Vec::new(),
            report_interval_ns: defaults::nanos(defaults::REPORT_INTERVAL),
            duration_ns: None,
            max_sockets: defaults::MAX_SOCKETS,
            ring_buffer_bytes: defaults::RING_BUFFER_BYTES,
            track_reads: false,
        }
    }
}

/// One `--stuck STATE=DURATION`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckOption {
    /// The state watched.
    pub state: TcpState,
    /// How long a socket may stay in it before it is reported, in nanoseconds.
    pub threshold_ns: u64,
}

/// One TCP state change, as the tracepoint `sock:inet_sock_set_state` reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionRecord {
    /// When it happened: nanoseconds of kernel CLOCK_MONOTONIC (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    /// `ts_ns` as wall-clock time: RFC 3339, UTC, microseconds.
    pub time: WallTime,
    /// Kernel address of the socket, written as 0x-prefixed lowercase hex ([`SkAddr`]).
    pub skaddr: SkAddr,
    /// Address family: `ipv4` or `ipv6`.
    pub family: Family,
    /// Local IP address.
    pub laddr: IpAddr,
    /// Local port (can be 0 before `connect()` completes).
    pub lport: u16,
    /// Remote IP address.
    pub raddr: IpAddr,
    /// Remote port (0 for a listener).
    pub rport: u16,
    /// IP protocol number: 6 (TCP), or 132 (SCTP) / 262 (MPTCP) with `--all-protocols`.
    #[serde(default = "tcp")]
    pub protocol: u16,
    /// State before the change.
    pub old_state: TcpState,
    /// State after the change.
    pub new_state: TcpState,
    /// Time spent in `old_state`; null when the tracer did not see it enter that state.
    pub duration_ns: Option<u64>,
    /// The socket's owner; null until a system call of the owner was seen. `comm` is the
    /// process's name (its thread-group leader's `comm`, as `ps` and `ss -p` show it).
    pub pid: Option<u32>,
    /// The owner's process name; null with `pid`.
    pub comm: Option<Name>,
    /// The process running when the transition fired (not the owner in softirq), and its
    /// name (the thread-group leader's `comm`).
    pub ctx_pid: u32,
    /// Name of the running process (its thread-group leader's `comm`).
    pub ctx_comm: Name,
    /// Thread id of the running task (equal to `ctx_pid` in exports older than this field).
    #[serde(default)]
    pub ctx_tid: u32,
    /// Name of the running thread (its own `comm`: `prctl(PR_SET_NAME)`,
    /// `pthread_setname_np`); null in exports older than this field.
    #[serde(default)]
    pub ctx_thread: Option<Name>,
    /// CPU that ran the transition.
    pub cpu: u32,
    /// On a transition to CLOSE: the errno name the application saw (`ECONNRESET`,
    /// `ETIMEDOUT`, `ECONNREFUSED`, ...), from `sock:inet_sk_error_report`; null when it got
    /// none, on other transitions, and in exports older than this field.
    #[serde(default)]
    pub error: Option<String>,
    /// On a transition to CLOSE: `local` or `peer` when an RST was sent or received
    /// (`tcp:tcp_send_reset`, `tcp:tcp_receive_reset`); null otherwise.
    #[serde(default)]
    pub reset_by: Option<ResetBy>,
    /// Inode of the socket's network namespace (as `lsns -t net` shows it); null when the
    /// kernel's BTF does not give its offsets, and in exports older than this field.
    #[serde(default)]
    pub netns: Option<u64>,
    /// A process held the socket lock when the transition fired (the kernel's
    /// `sock_owned_by_user()`): it ran in that process's context (`ctx_pid`), which then owns
    /// the socket; `false` in softirq and timers. Null when the kernel's BTF does not give its
    /// offset (the owner then comes from the state pair), and in exports older than this field.
    #[serde(default)]
    pub sock_owned: Option<bool>,
    /// On FIN_WAIT2 -> CLOSE: the peer's FIN had arrived (`true`: the connection went on to
    /// TIME_WAIT) or not (`false`: it waits for it in a timewait socket in the FIN_WAIT2
    /// sub-state). Null on other transitions, without the offset, and in older exports.
    #[serde(default)]
    pub peer_fin: Option<bool>,
}

/// One connection's life, from its first transition seen to CLOSE or the tracer's stop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineRecord {
    /// When the timeline ended (CLOSE, or the tracer's stop for `open`).
    pub ts_ns: u64,
    /// `ts_ns` as wall-clock time: RFC 3339, UTC, microseconds.
    pub time: WallTime,
    /// Kernel address of the socket, 0x-prefixed hex.
    pub skaddr: SkAddr,
    /// Address family: `ipv4` or `ipv6`.
    pub family: Family,
    /// Local IP address (the last 4-tuple seen).
    pub laddr: IpAddr,
    /// Local port.
    pub lport: u16,
    /// Remote IP address.
    pub raddr: IpAddr,
    /// Remote port.
    pub rport: u16,
    /// The owner's process id; null if never learnt.
    pub pid: Option<u32>,
    /// The owner's process name; null if never learnt.
    pub comm: Option<Name>,
    /// Inode of the socket's network namespace; null when not known.
    #[serde(default)]
    pub netns: Option<u64>,
    /// The tracer saw the socket's first transition.
    pub from_birth: bool,
    /// How the connection ended (`active_close`, `reset`, `open`, ...).
    pub outcome: Outcome,
    /// Why it ended, as on its transition to CLOSE ([`TransitionRecord::error`]).
    #[serde(default)]
    pub error: Option<String>,
    /// Who sent the RST that ended it ([`TransitionRecord::reset_by`]).
    #[serde(default)]
    pub reset_by: Option<ResetBy>,
    /// Sum of the known durations.
    pub duration_ns: Option<u64>,
    /// The steps, in the order the states were entered.
    pub states: Vec<Step>,
}

/// A socket stuck in a state longer than its threshold (`close_wait` and `stuck` records).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CloseWaitRecord {
    /// When it was reported: nanoseconds of kernel CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// `ts_ns` as wall-clock time: RFC 3339, UTC, microseconds.
    pub time: WallTime,
    /// Null for a socket found in CLOSE_WAIT at start-up.
    pub skaddr: Option<SkAddr>,
    /// Its owner: the first process (lowest pid) holding it now, from the socket tables and `/proc/*/fd`; null when none does (see `unowned`) or none is known.
    pub pid: Option<u32>,
    /// The owner's process name (the thread-group leader's `comm`); null with `pid`.
    pub comm: Option<Name>,
    /// The owner's file descriptor; null when not known.
    pub fd: Option<i32>,
    /// Address family: `ipv4` or `ipv6`.
    pub family: Family,
    /// Local IP address.
    pub laddr: IpAddr,
    /// Local port.
    pub lport: u16,
    /// Remote IP address.
    pub raddr: IpAddr,
    /// Remote port.
    pub rport: u16,
    /// How long it has been in CLOSE_WAIT.
    pub age_ms: u64,
    /// It was already in CLOSE_WAIT when the tracer started: `age_ms` is a lower bound.
    pub age_at_least: bool,
    /// Unread bytes in its receive queue.
    pub recv_q: Option<u32>,
    /// Inode of its network namespace (as `lsns -t net` shows it); null when not known.
    #[serde(default)]
    pub netns: Option<u64>,
    /// Every process holding the socket (`pid`/`comm`/`fd` name the first); empty when none
    /// does or the socket tables could not be read.
    #[serde(default)]
    pub holders: Vec<Holder>,
    /// Why no process holds it (null when one does, or when the tables were not read).
    #[serde(default)]
    pub unowned: Option<Unowned>,
    /// cgroup v2 path of the owner (`/proc/PID/cgroup`).
    #[serde(default)]
    pub cgroup: Option<String>,
    /// Container id parsed from `cgroup` (docker, containerd/CRI, CRI-O, podman).
    #[serde(default)]
    pub container: Option<String>,
    /// Kubernetes pod UID parsed from `cgroup`.
    #[serde(default)]
    pub pod_uid: Option<String>,
    /// The state it is stuck in (CLOSE_WAIT for a `close_wait` record).
    #[serde(default = "close_wait")]
    pub state: TcpState,
    /// The socket's own history from the kernel (`tcp_info`, read with the tables for this
    /// report); null when the tables were not read through `sock_diag`.
    #[serde(default)]
    pub tcp_info: Option<TcpInfo>,
    /// For a socket that got the peer's FIN: the application has read up to and including it
    /// (`false`: bytes or the FIN itself wait unread, so it stopped reading before the end).
    #[serde(default)]
    pub fin_read: Option<bool>,
    /// Why the owner is stuck and how long until it falls over (null when there is no owner,
    /// or in older exports).
    #[serde(default)]
    pub diagnosis: Option<crate::diagnosis::Diagnosis>,
}

/// A stuck socket's times from the kernel's `struct tcp_info` (milliseconds before the tables
/// were read for the report; the kernel counts in jiffies, so up to one tick, 10 ms at most,
/// more than the true time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpInfo {
    /// Since the peer last sent data (`tcpi_last_data_recv`; the handshake when it never did).
    /// A bare FIN is no data: in CLOSE_WAIT this is at least the time since the FIN.
    pub last_data_recv_ms: u64,
    /// Since the last ACK arrived (`tcpi_last_ack_recv`). The FIN carries one: in CLOSE_WAIT this
    /// is at most the time since the FIN.
    pub last_ack_recv_ms: u64,
}

/// A process holding a socket: its pid, name (the thread-group leader's `comm`) and fd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id (thread-group id).
    pub pid: u32,
    /// Process name (the thread-group leader's `comm`, at most 15 characters).
    pub comm: Name,
    /// The file descriptor that holds the socket; null when not known.
    pub fd: Option<i32>,
}

impl From<&Owner> for Holder {
    fn from(o: &Owner) -> Self {
        Holder {
            pid: o.pid,
            comm: o.comm.clone(),
            fd: o.fd,
        }
    }
}

impl From<&Holder> for Owner {
    fn from(h: &Holder) -> Self {
        Owner {
            pid: h.pid,
            comm: h.comm.clone(),
            fd: h.fd,
        }
    }
}

/// Why a stuck socket has no owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unowned {
    /// Why: never accepted, or held by no process.
    pub reason: UnownedReason,
    /// `accept_queue`: the listener's local address and port.
    #[serde(default)]
    pub listener: Option<std::net::SocketAddr>,
    /// `accept_queue`: the process holding the listener, if any.
    #[serde(default)]
    pub listener_pid: Option<u32>,
    #[serde(default)]
    /// `accept_queue`: the name of the process holding the listener, if any.
    pub listener_comm: Option<Name>,
}

/// See [`Unowned`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnownedReason {
    /// Never accepted: still in a listener's accept queue.
    AcceptQueue,
    /// No process holds a descriptor of it.
    NoHolder,
}

impl From<&NoOwner> for Unowned {
    fn from(n: &NoOwner) -> Self {
        match n {
            NoOwner::AcceptQueue { listener, holder } => Unowned {
                reason: UnownedReason::AcceptQueue,
                listener: Some(*listener),
                listener_pid: holder.as_ref().map(|h| h.pid),
                listener_comm: holder.as_ref().map(|h| h.comm.clone()),
            },
            NoOwner::NoHolder => Unowned {
                reason: UnownedReason::NoHolder,
                listener: None,
                listener_pid: None,
                listener_comm: None,
            },
        }
    }
}

/// A reported stuck socket left its state (`close_wait_resolved` and `stuck_resolved` records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseWaitResolvedRecord {
    /// When it left: nanoseconds of kernel CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// `ts_ns` as wall-clock time: RFC 3339, UTC, microseconds.
    pub time: WallTime,
    /// Kernel address of the socket, 0x-prefixed hex; null for a socket found at start-up.
    pub skaddr: Option<SkAddr>,
    /// Its owner's process id as known when it left; null when not known.
    pub pid: Option<u32>,
    /// Its owner's process name; null with `pid`.
    pub comm: Option<Name>,
    /// The owner's file descriptor; null when not known.
    pub fd: Option<i32>,
    /// Address family: `ipv4` or `ipv6`.
    pub family: Family,
    /// Local IP address.
    pub laddr: IpAddr,
    /// Local port.
    pub lport: u16,
    /// Remote IP address.
    pub raddr: IpAddr,
    /// Remote port.
    pub rport: u16,
    /// Total time in the stuck state (CLOSE_WAIT for `close_wait_resolved`), in milliseconds.
    pub stuck_ms: u64,
    /// It was already stuck when the tracer started: `stuck_ms` is a lower bound.
    pub stuck_at_least: bool,
    /// Where it went: LAST_ACK (closed by the application) or CLOSE (reset).
    pub new_state: TcpState,
    /// Inode of its network namespace; null when not known.
    #[serde(default)]
    pub netns: Option<u64>,
    /// The state it was stuck in (CLOSE_WAIT for a `close_wait_resolved` record).
    #[serde(default = "close_wait")]
    pub state: TcpState,
}

/// Every `--report-interval`, the reported sockets still stuck, grouped by state and process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DigestRecord {
    /// When it was made: nanoseconds of kernel CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// `ts_ns` as wall-clock time: RFC 3339, UTC, microseconds.
    pub time: WallTime,
    /// Reported sockets still stuck, in every watched state (`processes` says which).
    pub stuck: usize,
    /// One entry per state and process, most sockets first.
    pub processes: Vec<DigestProcess>,
}

/// One state and process of a [`DigestRecord`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DigestProcess {
    /// The state these sockets are stuck in.
    #[serde(default = "close_wait")]
    pub state: TcpState,
    /// The owner's process id; null for sockets whose owner is unknown.
    pub pid: Option<u32>,
    /// The owner's process name; null with `pid`.
    pub comm: Option<Name>,
    /// The owner's container id (as in `close_wait`); null outside a container, when the owner
    /// is unknown, and in exports written before it existed.
    #[serde(default)]
    pub container: Option<String>,
    /// Reported sockets of this process still in `state`.
    pub count: usize,
    /// Age of its oldest such socket, in whole milliseconds.
    pub oldest_age_ms: u64,
    /// The process's diagnosis at the digest (null without a pid, or in older exports).
    #[serde(default)]
    pub diagnosis: Option<crate::diagnosis::Diagnosis>,
}

/// Events the kernel side could not deliver since the previous report, and what each
/// destination has lost so far.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostRecord {
    /// When the loss was noticed: nanoseconds of kernel CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// `ts_ns` as wall-clock time: RFC 3339, UTC, microseconds.
    pub time: WallTime,
    /// Ring buffer full: new since the last `lost` record.
    pub ringbuf: u64,
    /// Program runs the kernel skipped (already running on that CPU): new since the last one.
    pub recursion_misses: u64,
    /// stdout: records shown and dropped so far, by type (totals since the start, so a reader
    /// that missed a `lost` record still has the full count). Read as zeros when absent.
    #[serde(default)]
    pub stdout: Destination,
    /// The same for the `--export` file; null without one.
    #[serde(default)]
    pub export: Option<Destination>,
}

/// Totals: the last record of a clean stop (stdout and the export), also printed on stderr.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// When the tracer stopped: nanoseconds of kernel CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// `ts_ns` as wall-clock time: RFC 3339, UTC, microseconds.
    pub time: WallTime,
    /// Records received from the kernel.
    pub events: u64,
    /// `transition` records produced: every transition with `--export`, none with
    /// `--no-transitions` and no export. stdout may show fewer (`--pid`).
    pub transitions: u64,
    /// Records lost because the ring buffer was full.
    pub lost_ringbuf: u64,
    /// Runs of our program the kernel skipped: events lost without entering the ring buffer.
    /// Null where the kernel does not count them (no `recursion_misses` in fdinfo before 5.12).
    pub recursion_misses: Option<u64>,
    /// Records that could not be decoded.
    pub decode_errors: u64,
    /// Causes of connection ends (resets, error reports) lost because the ring buffer was full:
    /// the transitions to CLOSE they belonged to may lack their `error` or `reset_by`.
    #[serde(default)]
    pub lost_causes: u64,
    /// Sockets dropped from tracking at the `--max-sockets` cap.
    pub evicted: u64,
    /// `timeline` records produced.
    pub timelines: u64,
    /// `close_wait` records produced.
    pub close_wait_alerts: u64,
    /// `close_wait_resolved` records produced.
    pub close_wait_resolved: u64,
    /// `stuck` reports (states given with `--stuck`).
    #[serde(default)]
    pub stuck_alerts: u64,
    #[serde(default)]
    /// `stuck_resolved` records produced.
    pub stuck_resolved: u64,
    /// Records offered to stdout, the summary aside.
    #[serde(default)]
    pub output_records: u64,
    /// Of those, records stdout could not take (a stalled reader) and dropped.
    pub output_dropped: u64,
    /// Records the export file could not take and dropped (0 without `--export`).
    #[serde(default)]
    pub export_dropped: u64,
    /// stdout: records shown and dropped, by type. Read as zeros when absent (older tracers).
    #[serde(default)]
    pub stdout: Destination,
    /// The same for the `--export` file; null without one.
    #[serde(default)]
    pub export: Option<Destination>,
}

impl Summary {
    /// Sets what stdout and the export showed and lost, by type and in total.
    pub fn set_delivery(&mut self, stdout: Destination, export: Option<Destination>) {
        self.output_records = stdout.shown.total();
        self.output_dropped = stdout.dropped.total();
        self.export_dropped = export.map_or(0, |e| e.dropped.total());
        self.stdout = stdout;
        self.export = export;
    }
}

impl Record {
    /// The record's `type` in JSON, such as `"close_wait"`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Record::Header(_) => "header",
            Record::Transition(_) => "transition",
            Record::Timeline(_) => "timeline",
            Record::CloseWait(_) => "close_wait",
            Record::CloseWaitResolved(_) => "close_wait_resolved",
            Record::Stuck(_) => "stuck",
            Record::StuckResolved(_) => "stuck_resolved",
            Record::Digest(_) => "digest",
            Record::Lost(_) => "lost",
            Record::Summary(_) => "summary",
            Record::Analysis(_) => "analysis",
        }
    }
}

/// What `tracer analyze` found in a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalysisRecord {
    /// From the stream's header; null without one.
    pub hostname: Option<String>,
    /// Wall-clock start from the stream's header, RFC 3339; null without one.
    pub start_time: Option<String>,
    /// The last record's time.
    pub end_ts_ns: u64,
    /// `end_ts_ns` as wall-clock time, RFC 3339.
    pub end_time: String,
    /// The stream ends with a summary: the tracer stopped cleanly.
    pub clean_end: bool,
    /// Records the traced run lost (ring buffer, kernel-skipped runs, export drops).
    pub lost: u64,
    /// Warnings met while reading.
    pub warnings: u64,
    /// Connections (timelines) analysed.
    pub connections: u64,
    /// Connections by how they ended, in [`Outcome::ALL`] order, zero counts left out.
    pub outcomes: Vec<OutcomeCount>,
    /// Time spent per state, over every step whose duration is known.
    pub dwell: Vec<StateDwell>,
    /// Threshold of the findings, in nanoseconds: the run's, or `analyze --close-wait-threshold`.
    pub close_wait_threshold_ns: u64,
    /// Sockets that stayed in CLOSE_WAIT at least the threshold, oldest first.
    pub close_wait: Vec<CloseWaitFinding>,
    /// The same grouped by process, most sockets first.
    pub top_processes: Vec<ProcessCloseWait>,
}

/// How many connections ended one way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCount {
    /// How they ended.
    pub outcome: Outcome,
    /// How many did.
    pub count: u64,
}

/// Nearest-rank percentiles of the time spent in a state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDwell {
    /// The state.
    pub state: TcpState,
    /// Steps in this state whose duration is known.
    pub count: u64,
    /// 50th percentile (nearest rank) of the time in the state, in nanoseconds.
    pub p50_ns: u64,
    /// 90th percentile (nearest rank), in nanoseconds.
    pub p90_ns: u64,
    /// 99th percentile (nearest rank), in nanoseconds.
    pub p99_ns: u64,
    /// Longest time in the state, in nanoseconds.
    pub max_ns: u64,
}

/// A socket that stayed in CLOSE_WAIT at least the threshold, found by `tracer analyze`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseWaitFinding {
    /// Null for a socket found in CLOSE_WAIT when the run started.
    pub skaddr: Option<SkAddr>,
    /// Its owner's process id; null when not known.
    pub pid: Option<u32>,
    /// Its owner's process name; null with `pid`.
    pub comm: Option<Name>,
    /// Address family: `ipv4` or `ipv6`.
    pub family: Family,
    /// Local IP address.
    pub laddr: IpAddr,
    /// Local port.
    pub lport: u16,
    /// Remote IP address.
    pub raddr: IpAddr,
    /// Remote port.
    pub rport: u16,
    /// When it entered CLOSE_WAIT; null when that was before the run started.
    pub since_ns: Option<u64>,
    /// Time in CLOSE_WAIT, until it left or the end of the stream.
    pub age_ms: u64,
    /// It was in CLOSE_WAIT before the run started: `age_ms` is a lower bound.
    pub age_at_least: bool,
    /// Where it went (LAST_ACK: closed by its process; CLOSE: reset); null if still there.
    pub left_to: Option<TcpState>,
    /// The live run reported it (a `close_wait` record).
    pub reported_live: bool,
}

/// CLOSE_WAIT findings of one process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessCloseWait {
    /// The process id; null for sockets whose owner is unknown.
    pub pid: Option<u32>,
    /// The process name; null with `pid`.
    pub comm: Option<Name>,
    /// Its sockets found in CLOSE_WAIT.
    pub sockets: u64,
    /// Age of its oldest such socket, in whole milliseconds.
    pub oldest_ms: u64,
}

fn tcp() -> u16 {
    6
}

fn close_wait() -> TcpState {
    TcpState::CloseWait
}

/// A socket's kernel address (`struct sock *`): the key that ties a socket's records together.
/// Written (Display, serde) as 0x-prefixed lowercase hex, `0xffff888012345678`, exactly as
/// `format!("{addr:#x}")` does, without allocating: it is written for every event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SkAddr(pub u64);

impl SkAddr {
    /// The hex text, on the stack.
    pub fn text(self) -> SkAddrText {
        let len = Self::text_len(self.0);
        let mut bytes = [0u8; 18];
        Self::write(&mut bytes[..len], self.0);
        SkAddrText {
            bytes,
            len: len as u8,
        }
    }

    /// How long the text of the address `addr` is: `0x` and 1 to 16 digits.
    pub fn text_len(addr: u64) -> usize {
        2 + (16 - addr.leading_zeros() as usize / 4).max(1)
    }

    /// Writes the text of `addr` into `text`, which is [`SkAddr::text_len`] long.
    ///
    /// # Panics
    ///
    /// If `text` is not [`SkAddr::text_len`] long.
    pub fn write(text: &mut [u8], addr: u64) {
        let mut room = [0u8; 18];
        let len = Self::write_into(&mut room, addr);
        text.copy_from_slice(&room[..len]);
    }

    /// Writes the text of `addr` at the start of `room`, using its first 18 bytes (`0x` and 16
    /// digits: those after the text's end are filler for the caller to write over), and
    /// returns the text's length, [`SkAddr::text_len`].
    ///
    /// # Panics
    ///
    /// If `room` is shorter than 18 bytes.
    pub fn write_into(room: &mut [u8], addr: u64) -> usize {
        let len = Self::text_len(addr);
        // The significant digits shifted to the top, then all 16 written at once.
        let top = addr << (4 * (18 - len));
        room[..2].copy_from_slice(b"0x");
        room[2..10].copy_from_slice(&hex_digits((top >> 32) as u32));
        room[10..18].copy_from_slice(&hex_digits(top as u32));
        len
    }

    /// Parses an address as [`SkAddr::text`] writes it (`0x` and 1 to 16 hex digits).
    pub fn parse(text: &str) -> Option<Self> {
        let hex = text.strip_prefix("0x")?;
        if hex.is_empty() || hex.len() > 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok().map(Self)
    }
}

/// The 8 lowercase hex digits of `x`, most significant first: each nibble spread into a byte
/// of its own, then made ASCII (`'0'` added, and 39 more to those above 9 to reach `'a'`).
fn hex_digits(x: u32) -> [u8; 8] {
    let x = u64::from(x);
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    let x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    // Byte i holds nibble i (the lowest first): big-endian bytes put the highest first.
    let nibbles = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    let above_nine = ((nibbles + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (nibbles + 0x3030_3030_3030_3030 + above_nine * 39).to_be_bytes()
}

/// A [`SkAddr`] written out.
#[derive(Clone, Copy)]
pub struct SkAddrText {
    bytes: [u8; 18],
    len: u8,
}

impl SkAddrText {
    /// The text.
    pub fn as_str(&self) -> &str {
        // Only `0x` and hex digits are ever stored.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::fmt::Display for SkAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text().as_str())
    }
}

impl PartialEq<&str> for SkAddr {
    fn eq(&self, other: &&str) -> bool {
        self.text().as_str() == *other
    }
}

impl Serialize for SkAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.text().as_str())
    }
}

impl<'de> Deserialize<'de> for SkAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::{Error, Unexpected};
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).ok_or_else(|| {
            Error::invalid_value(Unexpected::Str(&text), &"a socket address, 0x and hex")
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn skaddr_is_lower_hex() {
        for addr in [
            0,
            1,
            0xf,
            0x10,
            0xffff_8881_0271_2500,
            u64::MAX,
            1 << 63,
            0xabc,
        ]
        .into_iter()
        .chain((0..64).map(|bit| 1 << bit))
        .chain((0..10_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (i % 64)))
        {
            let text = super::SkAddr(addr).to_string();
            assert_eq!(text, format!("{addr:#x}"));
            assert_eq!(super::SkAddr::parse(&text), Some(super::SkAddr(addr)));
        }
        for bad in ["ffff", "0x", "0xg", "0x12345678901234567"] {
            let e = serde_json::from_value::<super::SkAddr>(serde_json::json!(bad)).unwrap_err();
            assert!(e.to_string().contains("a socket address"), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod size {
    /// Every transition moves a `Record` (into the batch, through the outputs): the rare, large
    /// variants are boxed so that it stays the size of a transition.
    #[test]
    fn a_record_is_no_larger_than_a_transition() {
        use std::mem::size_of;
        assert_eq!(
            size_of::<super::Record>(),
            size_of::<super::TransitionRecord>()
        );
    }
}
