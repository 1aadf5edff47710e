//! Validated settings of a live run: what the kernel side keeps ([`KernelFilter`]), what the
//! engine produces, what stdout shows and where the export goes. The binary builds a [`Config`]
//! from the command line; [`crate::app::run`] runs it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tracer_common::{AF_INET, AF_INET6};

use crate::{
    defaults::nanos,
    engine,
    event::{Endpoints, Family},
    output::Buffer,
    record::{RunOptions, StuckOption},
    sink::Filter,
};

/// What the kernel side keeps. Applied in the eBPF program, so filtered events never reach
/// userspace.
#[derive(Clone, Debug, Default)]
pub struct KernelFilter {
    /// `AF_INET`/`AF_INET6`, or 0 for both.
    pub family: u16,
    /// `IPPROTO_TCP`, or 0 for every protocol that uses the tracepoint.
    pub protocol: u16,
    /// Keep only these ports (local or remote), sorted and distinct; empty keeps all.
    pub ports: Vec<u16>,
    /// Size of the ring buffer in bytes: a power of two and a multiple of the page size.
    pub ring_buffer_bytes: u32,
    /// Keep only sockets of this network namespace (its inode, as `lsns -t net` shows it).
    pub netns: Option<u32>,
    /// Which program to attach.
    pub hook: HookChoice,
    /// `--track-reads`: also attach the program on `sock:sock_recv_length`.
    pub track_reads: bool,
}

/// Which kernel program `--hook` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    /// The BTF-enabled raw tracepoint, or the classic tracepoint where it is refused.
    #[default]
    Auto,
    /// Only the BTF-enabled raw tracepoint (`tp_btf/inet_sock_set_state`); an error where
    /// the kernel refuses it.
    TpBtf,
    /// Only the classic tracepoint (`tracepoint/sock/inet_sock_set_state`).
    Tracepoint,
}

impl KernelFilter {
    /// Does a connection of namespace `netns` pass these filters? (The same test the kernel
    /// side applies, for sockets found in the socket tables rather than through the
    /// tracepoint.)
    pub fn matches(&self, netns: u64, e: &Endpoints) -> bool {
        if self.netns.is_some_and(|want| u64::from(want) != netns) {
            return false;
        }
        let family_ok = match self.family {
            AF_INET => e.ipv4_on_wire(),
            AF_INET6 => !e.ipv4_on_wire(),
            _ => true,
        };
        family_ok
            && (self.ports.is_empty()
                || self.ports.contains(&e.lport)
                || self.ports.contains(&e.rport))
    }
}

/// Where `--export` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTarget {
    /// The file to create.
    pub path: PathBuf,
    /// Replace an existing file (`--force`).
    pub force: bool,
}

/// Where and how `--metrics` serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsTarget {
    /// The address to listen on (port 0: any free port).
    pub addr: SocketAddr,
    /// Processes with per-process series; the rest are aggregated.
    pub max_processes: usize,
}

/// Validated settings of a live run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Serve Prometheus metrics (`--metrics`).
    pub metrics: Option<MetricsTarget>,
    /// Unattended (`--quiet`): nothing on stdout; reports as JSON lines on stderr.
    pub quiet: bool,
    /// What the eBPF program keeps.
    pub kernel: KernelFilter,
    /// What the engine produces for stdout (an export makes it produce everything).
    pub engine: engine::Options,
    /// Print NDJSON instead of text.
    pub json: bool,
    /// Wide address columns in the text output.
    pub wide: bool,
    /// Print each report's whole diagnosis in the text output (`-v`).
    pub detail: bool,
    /// Keep only sockets owned by these processes on stdout, sorted; empty keeps all.
    pub pids: Vec<u32>,
    /// How often the CLOSE_WAIT digest is printed.
    pub report_interval: Duration,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    /// Also write every record to this file (`--export`).
    pub export: Option<ExportTarget>,
    /// Bytes of formatted records that may wait for each destination's writer
    /// (`--output-buffer`).
    pub output_buffer: Buffer,
}

impl Config {
    /// What stdout shows: the engine produces every record, the flags choose.
    pub fn display(&self) -> Filter {
        Filter {
            transitions: self.engine.transitions,
            timelines: self.engine.timelines,
            pids: self.pids.iter().copied().collect(),
        }
    }

    /// The options as an export's header records them.
    pub fn run_options(&self) -> RunOptions {
        RunOptions {
            ports: self.kernel.ports.clone(),
            family: match self.kernel.family {
                AF_INET => Some(Family::Ipv4),
                AF_INET6 => Some(Family::Ipv6),
                _ => None,
            },
            all_protocols: self.kernel.protocol == 0,
            netns: self.kernel.netns.map(u64::from),
            pids: self.pids.clone(),
            transitions: self.engine.transitions,
            timelines: self.engine.timelines,
            json: self.json,
            close_wait_threshold_ns: self.engine.close_wait_threshold_ns,
            stuck: self
                .engine
                .stuck
                .iter()
                .map(|&(state, threshold_ns)| StuckOption {
                    state,
                    threshold_ns,
                })
                .collect(),
            report_interval_ns: nanos(self.report_interval),
            duration_ns: self.duration.map(nanos),
            max_sockets: self.engine.max_sockets,
            ring_buffer_bytes: self.kernel.ring_buffer_bytes,
            track_reads: self.kernel.track_reads,
        }
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::{AF_INET, AF_INET6};

    use super::KernelFilter;
    use crate::testing::transition;

    #[test]
    fn filter_matches_table_entries_like_the_kernel() {
        let ep = transition(0, 0, "127.0.0.1:80", "127.0.0.1:5000", 1, 8).endpoints();
        let ep6 = transition(0, 0, "[::1]:80", "[::1]:5000", 1, 8).endpoints();
        let f = |family, ports: &[u16]| KernelFilter {
            family,
            ports: ports.to_vec(),
            ..Default::default()
        };
        assert!(f(0, &[]).matches(7, &ep));
        assert!(f(0, &[5000]).matches(7, &ep));
        assert!(!f(0, &[81]).matches(7, &ep));
        assert!(f(AF_INET, &[80]).matches(7, &ep));
        assert!(!f(AF_INET, &[]).matches(7, &ep6));
        assert!(f(AF_INET6, &[]).matches(7, &ep6));
        // A dual-stack socket serving an IPv4 peer carries IPv4 on the wire.
        let mapped = transition(
            0,
            0,
            "[::ffff:127.0.0.1]:80",
            "[::ffff:127.0.0.1]:5000",
            1,
            8,
        )
        .endpoints();
        assert!(f(AF_INET, &[]).matches(7, &mapped));
        assert!(!f(AF_INET6, &[]).matches(7, &mapped));
        // --netns: only that namespace's sockets.
        let only = |netns| KernelFilter {
            netns: Some(netns),
            ..Default::default()
        };
        assert!(only(7).matches(7, &ep));
        assert!(!only(8).matches(7, &ep));
    }
}
