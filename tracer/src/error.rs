//! Typed errors of the library. The binary wraps them with anyhow at the edges.

use std::{io, path::PathBuf};

/// A ring buffer record that cannot be decoded. Counted and skipped, never fatal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The record's length does not match a transition event.
    #[error("record is {size} bytes, expected {expected}")]
    Size {
        /// Length of the ring buffer record, in bytes.
        size: usize,
        /// Size of a transition event (`TcpStateEvent`), in bytes.
        expected: usize,
    },
    /// The transition's address family is neither `AF_INET` (2) nor `AF_INET6` (10).
    #[error("unknown address family {family}")]
    Family {
        /// The `family` field of the record, as the kernel wrote it.
        family: u16,
    },
    /// A cause record (reset or socket error) whose kind or family is not known.
    #[error("cause record of unknown kind {kind} or family {family}")]
    Cause {
        /// The `kind` field of the cause record.
        kind: u16,
        /// The `family` field of the cause record.
        family: u16,
    },
}

/// Invalid command-line input.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A port that is not a number from 1 to 65535.
    #[error("invalid port {token:?}: expected a number from 1 to 65535")]
    Port {
        /// The command-line token, as given.
        token: String,
    },
    /// A duration that does not parse.
    #[error("invalid duration {token:?} for {flag}: {reason} (examples: 500ms, 30s, 5m)")]
    Duration {
        /// The flag it was given to, such as `--report-interval`.
        flag: &'static str,
        /// The command-line token, as given.
        token: String,
        /// Why it does not parse (the parser's message).
        reason: String,
    },
    /// Zero given to a flag that needs a positive value (a count, a duration, a namespace inode).
    #[error("{flag} must be greater than zero")]
    Zero {
        /// The flag given zero.
        flag: &'static str,
    },
    #[error(
        "invalid ring buffer size {size}: must be a power of two and a multiple of the page size ({page} bytes), e.g. 4194304"
    )]
    /// A ring buffer size that is not a power of two and a multiple of the page size.
    RingBufferSize {
        /// The size asked for, in bytes.
        size: u64,
        /// This machine's page size, in bytes.
        page: u64,
    },
    #[error(
        "invalid size {token:?} for {flag}: {reason} (examples: 32MiB, 512KiB, 8388608{})",
        at_least(*.min)
    )]
    /// A byte size that does not parse or is below the minimum.
    Size {
        /// The flag it was given to.
        flag: &'static str,
        /// The command-line token, as given.
        token: String,
        /// Why it was refused.
        reason: String,
        /// The smallest size the flag accepts, in bytes.
        min: usize,
    },
    /// Both `-4` and `-6` were given.
    #[error("-4 and -6 exclude each other: give neither to trace both families")]
    BothFamilies,
    #[error(
        "invalid --stuck {token:?}: expected STATE=DURATION with STATE one of SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, CLOSING, LAST_ACK, CLOSE_WAIT (e.g. --stuck FIN_WAIT2=60s)"
    )]
    /// A `--stuck` value that is not `STATE=DURATION` with a state a socket can be stuck in.
    Stuck {
        /// The command-line token, as given.
        token: String,
    },
    #[error("--stuck {state} is given twice: give each state once")]
    /// Two `--stuck` values for one state.
    StuckTwice {
        /// The state's name.
        state: String,
    },
    #[error(
        "CLOSE_WAIT's threshold is given twice (--close-wait-threshold {threshold} and --stuck {token}): give one"
    )]
    /// `--stuck CLOSE_WAIT=D` with a `--close-wait-threshold` other than the default.
    CloseWaitTwice {
        /// The `--close-wait-threshold` value.
        threshold: String,
        /// The `--stuck` token.
        token: String,
    },
    #[error("--pid 0: 0 is no process (give a process id, as ps shows)")]
    /// `--pid 0`.
    PidZero,
    #[error(
        "invalid --metrics address {token:?}: expected IP:PORT, e.g. 127.0.0.1:9464, [::1]:9464, \
         or a port alone for 127.0.0.1"
    )]
    /// A `--metrics` value that is neither `IP:PORT` nor a port.
    MetricsAddr {
        /// The command-line token, as given.
        token: String,
    },
}

/// Loading or attaching the eBPF program failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the eBPF object was not built into this binary: build with `cargo xtask build` (or `cargo xtask run`), which builds the eBPF program first"
    )]
    /// The binary was built without `TRACER_EBPF_OBJECT`, so it embeds no eBPF program.
    MissingObject,
    #[error(
        "permission denied {action}: run as root (or with CAP_BPF and CAP_PERFMON, plus CAP_DAC_READ_SEARCH for a user other than root, and CAP_SYS_ADMIN where tracefs is not mounted), e.g. `sudo tracer` or `cargo xtask run`"
    )]
    /// The kernel or the effective capabilities refused an action (EPERM or EACCES).
    Permission {
        /// What was being done, such as `"loading the eBPF program"` or `"mounting tracefs"`.
        action: &'static str,
        /// The refusal: an aya or I/O error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "this kernel ({kernel}, before 5.11) charges eBPF maps and programs to the locked-memory limit (RLIMIT_MEMLOCK), which is {limit} here, and the tracer could not lift it (that needs CAP_SYS_RESOURCE): start it with the limit lifted: `LimitMEMLOCK=infinity` in its systemd unit (deploy/systemd/tracer.service has it), `ulimit -l unlimited` in the root shell that starts it, `--ulimit memlock=-1` with docker or podman, or grant it CAP_SYS_RESOURCE (the Kubernetes DaemonSet does)"
    )]
    /// A kernel before 5.11 refused the maps or the program under `RLIMIT_MEMLOCK`, and
    /// the limit could not be raised.
    Memlock {
        /// `uname -r`.
        kernel: String,
        /// The limit left in place, as `ulimit -l` would read it (`64 KiB`).
        limit: String,
        /// The kernel's refusal, as aya reported it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The verifier rejected a program.
    #[error("the kernel refused the eBPF program {program}:\n{log}\nhint: {hint}")]
    Verifier {
        /// The program's name in the eBPF object.
        program: String,
        /// The load error's errno text, a newline, then the verifier log, as the kernel wrote it.
        log: String,
        /// What to do next.
        hint: &'static str,
    },
    #[error(
        "permission denied reading tracefs at {dir}: it is mounted but only root may read it; run as root, or grant CAP_DAC_READ_SEARCH (with CAP_BPF and CAP_PERFMON) to a user other than root"
    )]
    /// tracefs is mounted but its directory is not readable (mode 0700, not root).
    TracefsUnreadable {
        /// The tracefs directory tried: `/sys/kernel/tracing` or `/sys/kernel/debug/tracing`.
        dir: PathBuf,
        /// The `PermissionDenied` error from reading it.
        #[source]
        source: io::Error,
    },
    #[error(
        "tracepoint sock/inet_sock_set_state not found in {tracefs}: this kernel is older than 4.16 or lacks tracepoints (CONFIG_TRACEPOINTS)"
    )]
    /// tracefs has no `events/sock/inet_sock_set_state`.
    MissingTracepoint {
        /// The tracefs directory searched.
        tracefs: PathBuf,
    },
    #[error(
        "kernel lockdown is in {mode} mode (/sys/kernel/security/lockdown): it forbids tracing the kernel from BPF and tracefs; boot without `lockdown={mode}` (Secure Boot's default, `integrity`, is fine)"
    )]
    /// Kernel lockdown forbids tracing.
    Lockdown {
        /// The lockdown mode from `/sys/kernel/security/lockdown` (only `confidentiality` is fatal).
        mode: String,
    },
    #[error(
        "this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF, Linux 5.8+), which the tracer needs: run it on Linux 5.10 or later"
    )]
    /// The kernel has no `BPF_MAP_TYPE_RINGBUF` (before Linux 5.8).
    NoRingBuffer,
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed: mount it with `mount -t tracefs nodev /sys/kernel/tracing`"
    )]
    /// tracefs was not mounted and mounting it failed for a reason other than permission.
    Tracefs {
        /// The error from `mount(2)`.
        #[source]
        source: io::Error,
    },
    #[error(
        "tp_btf/inet_sock_set_state needs socket offsets the kernel's BTF does not give ({reason}): use --hook tracepoint"
    )]
    /// The `tp_btf` hook needs socket offsets the kernel's BTF does not give. Fatal with
    /// `--hook tp_btf`; `--hook auto` falls back to the classic tracepoint and says why.
    NoSocketOffsets {
        /// What is missing, the [`OffsetsError`] messages joined with `"; "`.
        reason: String,
    },
    #[error(
        "--netns needs the network namespace of each socket, which this kernel's BTF does not give ({reason}): run without --netns"
    )]
    /// `--netns` needs the offsets of the socket's network namespace, which the BTF does not give.
    NoNetnsOffsets {
        /// What is missing, the [`OffsetsError`] messages joined with `"; "`.
        reason: String,
    },
    /// Any other failure of aya while loading, attaching or reading the program and its maps.
    #[error("{action} failed")]
    Aya {
        /// What was being done, such as `"loading the eBPF object"`.
        action: &'static str,
        /// The aya error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The kernel's BTF does not give an offset the eBPF programs need. Never fatal: the
/// tracer falls back to the classic tracepoint (or leaves the field at 0) and says why.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("reading the kernel's BTF from {path}: {source}")]
    /// The BTF file cannot be read.
    Read {
        /// The BTF file, normally `/sys/kernel/btf/vmlinux`.
        path: PathBuf,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// The BTF file does not parse.
    #[error("parsing the kernel's BTF from {path}: {reason}")]
    Parse {
        /// The BTF file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A struct or member is not in the BTF.
    #[error("the kernel's BTF has no {what}")]
    Missing {
        /// What is missing, such as `struct sock` or `struct sock member __sk_common.skc_net`.
        what: String,
    },
    /// A member is there but not in the shape the eBPF program reads (size, bit field).
    #[error("unexpected kernel layout: {what}")]
    Layout {
        /// What differs.
        what: String,
    },
    /// The child process that reads the BTF failed or reported nothing usable.
    #[error("finding the offsets in a child process: {reason}")]
    Child {
        /// What went wrong, in words.
        reason: String,
    },
}

/// The `--export` file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(
        "refusing to overwrite {}: the file exists (pass --force to replace it)",
        .path.display()
    )]
    /// The file exists and `--force` was not given.
    Exists {
        /// The `--export` path.
        path: PathBuf,
    },
    /// The path is a symbolic link (never followed).
    #[error("refusing to write the export to {}: it is a symbolic link", .path.display())]
    Symlink {
        /// The `--export` path.
        path: PathBuf,
    },
    /// The path exists and is not a regular file.
    #[error("refusing to write the export to {}: not a regular file", .path.display())]
    NotRegular {
        /// The `--export` path.
        path: PathBuf,
    },
    /// Creating or opening the file failed.
    #[error("cannot create the export file {}", .path.display())]
    Io {
        /// The `--export` path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// An input `tracer analyze` cannot use. The analysis stops at the first such problem.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// One line of the input cannot be used.
    #[error("line {line}: {problem}")]
    Line {
        /// Line number in the input, from 1.
        line: u64,
        /// What is wrong with it.
        problem: LineProblem,
    },
    /// Reading the input failed.
    #[error("reading the input failed")]
    Read {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The input holds no record.
    #[error("no records in the input (is it a tracer export?)")]
    Empty,
}

/// What is wrong with one line of an export.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineProblem {
    #[error("longer than {max} bytes (not a tracer record)")]
    /// The line is longer than the reader accepts.
    TooLong {
        /// The longest line accepted, in bytes (`analyze::reader::MAX_LINE`, 1 MiB).
        max: usize,
    },
    /// The line is not valid UTF-8.
    #[error("not UTF-8 text")]
    NotUtf8,
    /// The line is not JSON.
    #[error("not JSON: {message}")]
    Json {
        /// serde_json's message.
        message: String,
    },
    /// The line is JSON but not an object.
    #[error("expected a JSON object, found {found}")]
    NotObject {
        /// The JSON type found, such as `"an array"`.
        found: &'static str,
    },
    /// The object has no `type` field.
    #[error("no \"type\" field (every record has one)")]
    NoType,
    /// The `type` field is not a string.
    #[error("\"type\" is not a string")]
    TypeNotString,
    /// A record of a known type whose fields do not match the schema.
    #[error("bad {kind} record: {message}")]
    Record {
        /// The record type, such as `"transition"`.
        kind: &'static str,
        /// serde's message: the field and what is wrong with it.
        message: String,
    },
    /// A header after the first line.
    #[error("a second header: concatenated exports are not supported, analyse them one by one")]
    SecondHeader,
    /// The header's schema version is not valid (0).
    #[error("header schema {schema} is not a valid schema version")]
    Schema {
        /// The header's `schema` field.
        schema: u32,
    },
    /// A record after the summary, which ends every export.
    #[error("a {kind} record after the summary (concatenated exports?)")]
    AfterSummary {
        /// The record type found, such as `"transition"`.
        kind: &'static str,
    },
}

/// A problem `tracer analyze` works around.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    #[error(
        "line {line}: the last line is cut short (the tracer was killed while writing?): ignored"
    )]
    /// The last line has no newline, starts with `{` and does not parse: ignored.
    TruncatedLastLine {
        /// Line number, from 1.
        line: u64,
    },
    /// A record type this version does not know: skipped.
    #[error("line {line}: unknown record type {name:?} (from a newer tracer?): skipped")]
    UnknownType {
        /// Line number, from 1.
        line: u64,
        /// The record's `type` field.
        name: String,
    },
    #[error(
        "line {line}: unknown field {field:?} in a {kind} record (from a newer tracer?): ignored"
    )]
    /// A field this version does not know in a known record type: ignored.
    UnknownField {
        /// Line number, from 1.
        line: u64,
        /// The record type.
        kind: &'static str,
        /// The field's name.
        field: String,
    },
    /// A record type `analyze` does not read back: skipped.
    #[error("line {line}: {kind} records are not read back: skipped")]
    Skipped {
        /// Line number, from 1.
        line: u64,
        /// The record type.
        kind: &'static str,
    },
    #[error("the header says schema {schema}, newer than this tracer's ({known}): what it does not know is skipped")]
    /// The header's schema is newer than this tracer's.
    NewerSchema {
        /// The header's `schema` field.
        schema: u32,
        /// This tracer's schema version.
        known: u32,
    },
    #[error(
        "no header: options unknown, using the defaults (CLOSE_WAIT threshold {}); wall-clock times are estimated",
        crate::defaults::text(crate::defaults::CLOSE_WAIT_THRESHOLD)
    )]
    /// The input does not start with a header: defaults are assumed.
    NoHeader,
    #[error("the stream is tracer stdout with --no-transitions or --pid, not an --export file: transitions are missing and rebuilt timelines may be incomplete")]
    /// The header says the stream is not a complete export: stdout with `--no-transitions` or `--pid`.
    Incomplete,
    #[error("no summary at the end: the tracer did not stop cleanly (killed?); connections still open at the last record are reported open")]
    /// The input does not end with a summary.
    NoSummary,
    #[error("the traced run lost {events} record(s) ({detail}): some timelines miss transitions")]
    /// The summary counts records the traced run lost.
    Lost {
        /// Records lost, as counted in the summary.
        events: u64,
        /// Where they were lost, in words, from the summary's counters.
        detail: String,
    },
    /// Replayed timelines differ from the timeline records of the export.
    #[error("{count} rebuilt timeline(s) differ from those the traced run recorded (records missing from the export?)")]
    TimelineMismatch {
        /// Number of timelines that differ.
        count: u64,
    },
    #[error("the export's timeline records do not follow its transitions (edited, or records missing?): the rebuilt timelines could not be checked against them")]
    /// The export's timeline records could not be matched to its transitions, so the replay was not checked.
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
    /// The input cannot be used.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Writing the report failed.
    #[error("writing the output failed")]
    Output {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// The minimum a size flag takes, as the end of its error message ("" when any size parses).
fn at_least(min: usize) -> String {
    if min == 0 {
        String::new()
    } else {
        format!("; at least {min} bytes")
    }
}
