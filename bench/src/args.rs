//! The bench's flags (`cargo xtask bench --help`).

use std::path::PathBuf;

use crate::{churn::Load, runner::Mode};

/// The flags of `cargo xtask bench`.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "cargo xtask bench",
    about = "Benchmark the tracer at full connection churn on loopback, beside no tracer and \
             its peers (libbpf-tools tcpstates, bpftrace); needs root"
)]
pub struct BenchArgs {
    /// Connections per run.
    #[arg(long, default_value_t = 100_000)]
    pub connections: u64,
    /// Rounds; each round runs every mode once, in turn (A B C A B C ...). 0 with --soak or
    /// --soak-minutes: the soak only.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Modes to run, in this order within a round: our tracer as users run it (to a file, the
    /// same forced onto the classic tracepoint, with timelines, with an export, through a Python
    /// reader at full churn and paced so that it keeps up, scraped for metrics, with
    /// --track-reads), the
    /// peers (installed from Debian when missing), and bpftrace count-only as the floor.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "none,tracer,tracer-tracepoint,tracer-timelines,tracer-export,tracer-python,tracer-python-paced,tracer-scraped,tracer-track-reads,tcpstates,bpftrace,bpftrace-count"
    )]
    pub modes: Vec<Mode>,
    /// Connections per second, on average, of the tracer-python-paced mode: a pace its Python
    /// reader (json.loads on every line) keeps up with on 2 cores beside the churn.
    #[arg(long, default_value_t = 5_000)]
    pub python_rate: u64,
    /// Connections per burst of the tracer-python-paced mode, each burst at full speed.
    #[arg(long, default_value_t = 1_000)]
    pub python_burst: u64,
    #[command(flatten)]
    pub load: Load,
    /// Leave the generator's threads unpinned (by default client and server thread i run on
    /// CPU i: unpinned, the scheduler's placement makes the rate swing by a third from run
    /// to run on 2 cores).
    #[arg(long)]
    pub no_pin: bool,
    /// Also run one long tracer run and sample its memory over time.
    #[arg(long)]
    pub soak: bool,
    /// Connections of the soak run.
    #[arg(long, default_value_t = 1_000_000)]
    pub soak_connections: u64,
    /// Instead, soak for this many minutes: one tracer process, its output counted from a
    /// pipe (not stored), the churn generator run again and again on one port until the time
    /// is up, RSS sampled every 10 s. Implies --soak.
    #[arg(long, value_name = "MINUTES", conflicts_with = "soak_connections")]
    pub soak_minutes: Option<u64>,
    /// Connections per run of the generator in a --soak-minutes soak (about 30 s each).
    #[arg(long, default_value_t = 1_000_000)]
    pub soak_chunk: u64,
    /// Where to write the results as JSON (relative to the repository's root).
    #[arg(long, default_value = "target/bench/results.json")]
    pub output: PathBuf,
    /// Keep the tracers' output files (in the output's directory).
    #[arg(long)]
    pub keep: bool,
    /// Do not install bpftrace or libbpf-tools when missing (those peers are then skipped).
    #[arg(long)]
    pub no_install: bool,
    /// Pause between runs, so the previous run's namespace teardown and writeback settle.
    #[arg(long, default_value_t = 1000)]
    pub cooldown_ms: u64,
    /// Before each run, wait up to this many seconds for other processes to go quiet
    /// (runs still noisy are marked so in the report).
    #[arg(long, default_value_t = 30)]
    pub quiet_wait_s: u64,
    /// Also time `tracer analyze --html` on a synthetic export of --html-connections
    /// connections (5 transitions each); with --rounds 0, only that.
    #[arg(long)]
    pub html_report: bool,
    /// Connections of the HTML report's synthetic export (200,000: a million transitions).
    #[arg(long, default_value_t = 200_000)]
    pub html_connections: u64,
    /// Also bench the tracer's owner lookups at scale: --scan-connections established
    /// loopback connections held in a private namespace (by one process, and workers for what
    /// its RLIMIT_NOFILE cannot hold), --scan-close-wait of them then left in CLOSE_WAIT; the
    /// alerts' arrival after crossing a 1 s threshold, ring buffer losses and each socket
    /// table scan's wall and CPU time. With --rounds 0, only that.
    #[arg(long)]
    pub owner_scan: bool,
    /// Established connections the owner-scan bench holds (two sockets and fds each).
    #[arg(long, default_value_t = 50_000)]
    pub scan_connections: u64,
    /// Of those, the ones left in CLOSE_WAIT (their client end closed).
    #[arg(long, default_value_t = 100)]
    pub scan_close_wait: u64,
    /// Short connections per second in the same namespace while the owner-scan alerts are due
    /// (keeps transitions flowing, so a drain stalled by a scan would lose events).
    #[arg(long, default_value_t = 1000)]
    pub scan_churn_rate: u64,
}
