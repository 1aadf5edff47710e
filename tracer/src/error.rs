//! Typed errors of the library. The binary wraps them with anyhow at the edges.

use std::{io, path::PathBuf};

/// A ring buffer record that cannot be decoded. Counted and skipped, never fatal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record is {size} bytes, expected {expected}")]
    Size { size: usize, expected: usize },
    #[error("unknown address family {family}")]
    Family { family: u16 },
    #[error("cause record of unknown kind {kind} or family {family}")]
    Cause { kind: u16, family: u16 },
}

/// Invalid command-line input.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid port {token:?}: expected a number from 1 to 65535")]
    Port { token: String },
    #[error("invalid duration {token:?} for {flag}: {reason} (examples: 500ms, 30s, 5m)")]
    Duration {
        flag: &'static str,
        token: String,
        reason: String,
    },
    #[error("{flag} must be greater than zero")]
    Zero { flag: &'static str },
    #[error(
        "invalid ring buffer size {size}: must be a power of two and a multiple of the page size ({page} bytes), e.g. 4194304"
    )]
    RingBufferSize { size: u64, page: u64 },
    #[error(
        "invalid size {token:?} for {flag}: {reason} (examples: 32MiB, 512KiB, 8388608; at least {min} bytes)"
    )]
    Size {
        flag: &'static str,
        token: String,
        reason: String,
        min: usize,
    },
    #[error("-4 and -6 exclude each other: give neither to trace both families")]
    BothFamilies,
    #[error(
        "invalid --stuck {token:?}: expected STATE=DURATION with STATE one of SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK, CLOSE_WAIT (e.g. --stuck FIN_WAIT2=60s)"
    )]
    Stuck { token: String },
    #[error(
        "invalid --metrics address {token:?}: expected IP:PORT, e.g. 127.0.0.1:9464, [::1]:9464, \
         or a port alone for 127.0.0.1"
    )]
    MetricsAddr { token: String },
}

/// Loading or attaching the eBPF program failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the eBPF object was not built into this binary: build with `cargo xtask build` (or `cargo xtask run`), which builds the eBPF program first"
    )]
    MissingObject,
    #[error(
        "permission denied {action}: run as root (or with CAP_BPF and CAP_PERFMON, plus CAP_DAC_READ_SEARCH for a user other than root, and CAP_SYS_ADMIN where tracefs is not mounted), e.g. `sudo tracer` or `cargo xtask run`"
    )]
    Permission {
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "this kernel ({kernel}, before 5.11) charges eBPF maps and programs to the locked-memory limit (RLIMIT_MEMLOCK), which is {limit} here, and the tracer could not lift it (that needs CAP_SYS_RESOURCE): start it with the limit lifted: `LimitMEMLOCK=infinity` in its systemd unit (deploy/systemd/tracer.service has it), `ulimit -l unlimited` in the root shell that starts it, `--ulimit memlock=-1` with docker or podman, or grant it CAP_SYS_RESOURCE (the Kubernetes DaemonSet does)"
    )]
    Memlock {
        /// `uname -r`.
        kernel: String,
        /// The limit left in place, as `ulimit -l` would read it (`64 KiB`).
        limit: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("the kernel refused the eBPF program {program}:\n{log}\nhint: {hint}")]
    Verifier {
        program: String,
        log: String,
        hint: &'static str,
    },
    #[error(
        "permission denied reading tracefs at {dir}: it is mounted but only root may read it; run as root, or grant CAP_DAC_READ_SEARCH (with CAP_BPF and CAP_PERFMON) to a user other than root"
    )]
    TracefsUnreadable {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "tracepoint sock/inet_sock_set_state not found in {tracefs}: this kernel is older than 4.16 or lacks tracepoints (CONFIG_TRACEPOINTS)"
    )]
    MissingTracepoint { tracefs: PathBuf },
    #[error(
        "kernel lockdown is in {mode} mode (/sys/kernel/security/lockdown): it forbids tracing the kernel from BPF and tracefs; boot without `lockdown={mode}` (Secure Boot's default, `integrity`, is fine)"
    )]
    Lockdown { mode: String },
    #[error(
        "this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8+), which the tracer needs: run it on Linux 5.10 or later"
    )]
    NoRingBuffer,
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed: mount it with `mount -t tracefs nodev /sys/kernel/tracing`"
    )]
    Tracefs {
        #[source]
        source: io::Error,
    },
    #[error(
        "tp_btf/inet_sock_set_state needs socket offsets the kernel's BTF does not give ({reason}): use --hook tracepoint"
    )]
    NoSocketOffsets { reason: String },
    #[error(
        "--netns needs the network namespace of each socket, which this kernel's BTF does not give ({reason}): run without --netns"
    )]
    NoNetnsOffsets { reason: String },
    #[error("{action} failed")]
    Aya {
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The kernel's BTF does not give an offset the eBPF programs need. Never fatal: the
/// tracer falls back to the classic tracepoint (or leaves the field at 0) and says why.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("reading the kernel's BTF from {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("parsing the kernel's BTF from {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("the kernel's BTF has no {what}")]
    Missing { what: String },
    #[error("unexpected kernel layout: {what}")]
    Layout { what: String },
    #[error("finding the offsets in a child process: {reason}")]
    Child { reason: String },
}

/// The `--export` file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "refusing to overwrite {}: the file exists (pass --force to replace it)",
        .path.display()
    )]
    Exists { path: PathBuf },
    #[error("refusing to write the export to {}: it is a symbolic link", .path.display())]
    Symlink { path: PathBuf },
    #[error("refusing to write the export to {}: not a regular file", .path.display())]
    NotRegular { path: PathBuf },
    #[error("cannot create the export file {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An input `tracer analyze` cannot use. The analysis stops at the first such problem.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("line {line}: {problem}")]
    Line { line: u64, problem: LineProblem },
    #[error("reading the input failed")]
    Read {
        #[source]
        source: io::Error,
    },
    #[error("no records in the input (is it a tracer export?)")]
    Empty,
}

/// What is wrong with one line of an export.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineProblem {
    #[error("longer than {max} bytes (not a tracer record)")]
    TooLong { max: usize },
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("not JSON: {message}")]
    Json { message: String },
    #[error("expected a JSON object, found {found}")]
    NotObject { found: &'static str },
    #[error("no \"type\" field (every record has one)")]
    NoType,
    #[error("\"type\" is not a string")]
    TypeNotString,
    #[error("bad {kind} record: {message}")]
    Record { kind: &'static str, message: String },
    #[error("bad skaddr {value:?}: expected a hex address such as \"0xffff888012345678\"")]
    Skaddr { value: String },
    #[error("a second header: concatenated exports are not supported, analyse them one by one")]
    SecondHeader,
    #[error("header schema {schema} is not a valid schema version")]
    Schema { schema: u32 },
    #[error("a {kind} record after the summary (concatenated exports?)")]
    AfterSummary { kind: &'static str },
}

/// A problem `tracer analyze` works around.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    #[error(
        "line {line}: the last line is cut short (the tracer was killed while writing?): ignored"
    )]
    TruncatedLastLine { line: u64 },
    #[error("line {line}: unknown record type {name:?} (from a newer tracer?): skipped")]
    UnknownType { line: u64, name: String },
    #[error(
        "line {line}: unknown field {field:?} in a {kind} record (from a newer tracer?): ignored"
    )]
    UnknownField {
        line: u64,
        kind: &'static str,
        field: String,
    },
    #[error("line {line}: {kind} records are not read back: skipped")]
    Skipped { line: u64, kind: &'static str },
    #[error("the header says schema {schema}, newer than this tracer's ({known}): what it does not know is skipped")]
    NewerSchema { schema: u32, known: u32 },
    #[error(
        "no header: options unknown, using the defaults (CLOSE_WAIT threshold {}); wall-clock times are estimated",
        crate::defaults::text(crate::defaults::CLOSE_WAIT_THRESHOLD)
    )]
    NoHeader,
    #[error("the stream is tracer stdout with --no-transitions or --pid, not an --export file: transitions are missing and rebuilt timelines may be incomplete")]
    Incomplete,
    #[error("no summary at the end: the tracer did not stop cleanly (killed?); connections still open at the last record are reported open")]
    NoSummary,
    #[error("the traced run lost {events} record(s) ({detail}): some timelines miss transitions")]
    Lost { events: u64, detail: String },
    #[error("{count} rebuilt timeline(s) differ from those the traced run recorded (records missing from the export?)")]
    TimelineMismatch { count: u64 },
    #[error("the export's timeline records do not follow its transitions (edited, or records missing?): the rebuilt timelines could not be checked against them")]
    TimelinesUnchecked,
}

impl Warning {
    /// Warnings with the same key say the same thing about different lines.
    pub fn key(&self) -> String {
        match self {
            Warning::UnknownType { name, .. } => format!("type {name}"),
            Warning::UnknownField { kind, field, .. } => format!("field {kind}.{field}"),
            Warning::Skipped { kind, .. } => format!("skipped {kind}"),
            other => format!("{:?}", std::mem::discriminant(other)),
        }
    }
}

/// `tracer analyze` failed.
#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("writing the output failed")]
    Output {
        #[source]
        source: io::Error,
    },
}
