//! Typed errors of the library. The binary wraps them with anyhow at the edges.

use std::{io, path::PathBuf};

/// A ring buffer record that cannot be decoded. Counted and skipped, never fatal.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record is {size} bytes, expected {expected}")]
    Size { size: usize, expected: usize },
    #[error("unknown address family {family}")]
    Family { family: u16 },
}

/// Invalid command-line input.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid port {token:?}: expected a number from 1 to 65535")]
    Port { token: String },
    #[error("too many ports ({count}): at most {max} can be filtered in the kernel")]
    TooManyPorts { count: usize, max: u32 },
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
    #[error("-4 and -6 exclude each other: give neither to trace both families")]
    BothFamilies,
}

/// Loading or attaching the eBPF program failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "the eBPF object was not built into this binary: build with `cargo xtask build` (or `cargo xtask run`), which builds the eBPF program first"
    )]
    MissingObject,
    #[error(
        "permission denied {action}: run as root (or with CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN), e.g. `sudo tracer` or `cargo xtask run`"
    )]
    Permission {
        action: &'static str,
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
        "tracepoint sock/inet_sock_set_state not found in {tracefs}: this kernel is older than 4.16 or lacks tracepoints (CONFIG_TRACEPOINTS)"
    )]
    MissingTracepoint { tracefs: PathBuf },
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed: mount it with `mount -t tracefs nodev /sys/kernel/tracing`"
    )]
    Tracefs {
        #[source]
        source: io::Error,
    },
    #[error("{action} failed")]
    Aya {
        action: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
