//! Command line: clap parses what the user typed into [`Args`]; [`Config::try_from`] validates it
//! into what the library runs.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand};
use tracer::{
    analyze,
    config::{Config, ExportTarget, HookChoice, KernelFilter, MetricsTarget},
    defaults::{self, nanos},
    engine,
    error::ConfigError,
    event::TcpState,
    output::Buffer,
    top,
    units::parse_duration,
};
use tracer_common::{AF_INET, AF_INET6, IPPROTO_TCP};

const EXAMPLES: &str = "\
Examples:
  tracer                              # every TCP state transition, live
  tracer --json > states.ndjson       # one JSON object per line
  tracer -p 8080 -p 443               # only connections on these ports (local or remote)
  tracer --pid 1234                   # only sockets owned by process 1234
  tracer -6 -w                        # IPv6 only, wide columns
  tracer --netns 4026532290           # only one network namespace (inode, as lsns -t net shows)
  tracer --timelines --no-transitions # one line per finished connection
  tracer --close-wait-threshold 2s    # report sockets stuck in CLOSE_WAIT for 2 s
  tracer --stuck FIN_WAIT2=60s        # also a peer that never closes its end
  tracer --duration 30s               # stop by itself after 30 seconds
  tracer --export run.ndjson          # also keep every record in a file (mode 0600)
  tracer analyze run.ndjson           # later, anywhere, no root: timelines, CLOSE_WAIT, stats
  tracer --quiet --metrics 127.0.0.1:9464  # unattended agent: Prometheus metrics, reports on stderr
  tracer analyze --html out.html run.ndjson  # the same as an HTML report with charts
  tracer top                          # a live full-screen view: leaks by process, health

Run as root (it loads an eBPF program). Ctrl-C prints a summary, including lost events.";

#[derive(Debug, Parser)]
#[command(
    name = "tracer",
    version,
    about = "Trace every TCP state transition with eBPF; find sockets stuck in CLOSE_WAIT and who holds them",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub trace: TraceArgs,

    #[command(flatten)]
    pub output: OutputArgs,

    /// Do not print individual transitions (timelines and CLOSE_WAIT reports still print)
    #[arg(long)]
    pub no_transitions: bool,

    /// Print a digest of sockets stuck in CLOSE_WAIT, grouped by process, this often
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION", default_value_t = defaults::text(defaults::REPORT_INTERVAL))]
    pub report_interval: String,

    /// Serve Prometheus metrics (/metrics, text or OpenMetrics) and /healthz on ADDR:
    /// 127.0.0.1:9464, [::1]:9464, or a port alone (loopback). See docs/metrics.md
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,

    /// Processes with series of their own in the per-process metrics; the rest are summed
    /// into one pid="other" series
    #[arg(long, value_name = "N", default_value_t = defaults::METRICS_MAX_PROCESSES, requires = "metrics")]
    pub metrics_max_processes: usize,

    /// Run unattended: nothing on stdout; each CLOSE_WAIT report, resolution and loss report
    /// is one JSON line on stderr (the journal, under systemd)
    #[arg(short, long, conflicts_with_all = ["json", "wide", "timelines", "no_transitions"])]
    pub quiet: bool,
}

/// What is traced and kept, for the stream and `tracer top` alike.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Keep only connections with this local or remote port (repeatable, or comma-separated)
    #[arg(short = 'p', long = "port", value_name = "PORT", value_delimiter = ',')]
    pub ports: Vec<String>,

    /// Keep only sockets owned by this process (repeatable)
    #[arg(long = "pid", value_name = "PID", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// IPv4 on the wire only (dual-stack sockets with ::ffff: addresses included)
    #[arg(short = '4', long = "ipv4")]
    pub ipv4: bool,

    /// IPv6 on the wire only (dual-stack sockets with ::ffff: addresses left out)
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Keep only sockets of this network namespace: its inode number, as `lsns -t net` or
    /// `stat -L -c %i /proc/PID/ns/net` show it (filtered in the kernel)
    #[arg(long, value_name = "INODE")]
    pub netns: Option<u32>,

    /// Also trace other protocols that use the tracepoint (SCTP, MPTCP)
    #[arg(long)]
    pub all_protocols: bool,

    /// Report a socket that stays in CLOSE_WAIT longer than this (e.g. 500ms, 10s)
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION", default_value_t = defaults::text(defaults::CLOSE_WAIT_THRESHOLD))]
    pub close_wait_threshold: String,

    /// Also report sockets stuck in STATE longer than DURATION, as CLOSE_WAIT is (repeatable):
    /// FIN_WAIT2 held long is a peer leaking CLOSE_WAIT; LAST_ACK, SYN_SENT or SYN_RECV stuck
    /// long mean a dead or filtered peer. STATE is SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2,
    /// CLOSING or LAST_ACK (CLOSE_WAIT=D is --close-wait-threshold D). E.g. --stuck
    /// FIN_WAIT2=60s --stuck SYN_SENT=5s
    #[arg(
        long = "stuck",
        allow_hyphen_values = true,
        value_name = "STATE=DURATION"
    )]
    pub stuck: Vec<String>,

    /// Stop by itself after this long (e.g. 30s, 5m)
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION")]
    pub duration: Option<String>,

    /// Track at most this many sockets; the oldest are evicted (and counted) beyond it
    #[arg(long, value_name = "N", default_value_t = defaults::MAX_SOCKETS)]
    pub max_sockets: usize,

    /// Size of the kernel ring buffer (a power of two and a multiple of the page size; e.g.
    /// 8MiB, 64MiB, 4096; K, M and G are powers of 1024)
    #[arg(long, allow_hyphen_values = true, value_name = "SIZE", default_value_t = defaults::RING_BUFFER_BYTES.to_string())]
    pub ring_buffer_size: String,

    /// Which kernel hook to attach: the BTF-enabled raw tracepoint (cheaper: no trace record
    /// is built), the classic tracepoint, or auto (tp-btf where the kernel accepts it, else
    /// tracepoint; the header and -v say which and why)
    #[arg(
        long,
        value_enum,
        value_name = "HOOK",
        env = "TRACER_HOOK",
        default_value = "auto"
    )]
    pub hook: HookChoice,

    /// Record the last read of every TCP socket (time, thread) so a report can say who last
    /// read the stuck socket and what that thread does now. Off by default: it adds a probe to
    /// every socket read on the host (the kernel's sock:sock_recv_length, Linux 6.3+)
    #[arg(long)]
    pub track_reads: bool,

    /// Formatted output that may wait for a slow reader, per destination (e.g. 64MiB; K, M
    /// and G are powers of 1024). Past it stdout drops records (counted by type) and the
    /// export holds the tracer until its disk catches up. From 16 KiB to the machine's
    /// memory. Default: room for as many records as the ring buffer holds events (19 MiB
    /// with the default ring buffer)
    #[arg(long, allow_hyphen_values = true, value_name = "SIZE")]
    pub output_buffer: Option<String>,

    /// Also write every record (transitions, timelines, CLOSE_WAIT, summary) to FILE as NDJSON,
    /// whatever stdout shows; created with mode 0600, never replacing a file without --force
    #[arg(long, value_name = "FILE")]
    pub export: Option<PathBuf>,

    /// Let --export replace an existing file
    #[arg(long, requires = "export")]
    pub force: bool,

    /// More diagnostics on stderr (-v: info, -vv: debug); -v also prints each report's whole diagnosis
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// How records are printed, for the live tracer and `tracer analyze` alike.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArgs {
    /// Print NDJSON (one JSON object per line) instead of text
    #[arg(long)]
    pub json: bool,

    /// Wide address columns that fit any IPv6 address
    #[arg(short = 'w', long)]
    pub wide: bool,

    /// Print one line per finished connection: its states with durations and how it ended
    #[arg(long)]
    pub timelines: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Analyse an export offline (no root needed): rebuild timelines and the CLOSE_WAIT report,
    /// then print a summary of outcomes, time spent per state and the processes that leak
    /// CLOSE_WAIT
    #[command(after_help = ANALYZE_EXAMPLES)]
    Analyze(AnalyzeArgs),
    /// A live full-screen view (as root): sockets per state, transitions per second, sockets
    /// stuck by process with their growth and fd forecast, recently ended connections and the
    /// tracer's health. Keys: q quit, p pause, s sort, / filter, arrows and Enter select, ? help
    #[command(after_help = TOP_EXAMPLES)]
    Top(TopArgs),
}

const TOP_EXAMPLES: &str = "\
Examples:
  sudo tracer top                          # the whole host, refreshed every second
  sudo tracer top -p 8080 --interval 2s    # one port, every two seconds
  sudo tracer top --export run.ndjson      # and keep every record for tracer analyze

Leaving (q, Ctrl-C, SIGTERM) restores the terminal and prints the summary on stderr.";

#[derive(Debug, Clone, clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub trace: TraceArgs,

    /// Refresh the screen this often (e.g. 500ms, 2s)
    #[arg(
        long,
        allow_hyphen_values = true,
        value_name = "DURATION",
        default_value = "1s"
    )]
    pub interval: String,
}

const ANALYZE_EXAMPLES: &str = "\
Examples:
  tracer analyze run.ndjson                      # CLOSE_WAIT findings and the summary tables
  tracer analyze --timelines run.ndjson          # plus one line per connection
  tracer analyze --json run.ndjson | jq .        # the same as NDJSON
  tracer analyze --close-wait-threshold 100ms run.ndjson
  tracer analyze --html out.html run.ndjson      # a report to open in a browser (one file, offline)
  tracer --json | tee run.ndjson | tracer analyze -";

#[derive(Debug, Clone, clap::Args)]
pub struct AnalyzeArgs {
    /// An export (`tracer --export`) or `tracer --json` output; `-` reads stdin
    #[arg(value_name = "FILE")]
    pub input: PathBuf,

    #[command(flatten)]
    pub output: OutputArgs,

    /// Print every transition too
    #[arg(long)]
    pub transitions: bool,

    /// CLOSE_WAIT threshold of the recomputed report (default: the traced run's)
    #[arg(long, allow_hyphen_values = true, value_name = "DURATION")]
    pub close_wait_threshold: Option<String>,

    /// Keep only sockets owned by these processes (default: the traced run's --pid)
    #[arg(long = "pid", value_name = "PID", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Print every warning, not only the first of each kind, and each report's whole diagnosis
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Also write the analysis as a self-contained HTML report (charts, state diagram) to FILE
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

impl TryFrom<&AnalyzeArgs> for analyze::Options {
    type Error = ConfigError;

    fn try_from(args: &AnalyzeArgs) -> Result<Self, ConfigError> {
        let threshold = args
            .close_wait_threshold
            .as_deref()
            .map(|d| duration("--close-wait-threshold", d))
            .transpose()?;
        Ok(analyze::Options {
            json: args.output.json,
            wide: args.output.wide,
            timelines: args.output.timelines,
            transitions: args.transitions,
            close_wait_threshold_ns: threshold.map(nanos),
            pids: (!args.pids.is_empty()).then(|| args.pids.iter().copied().collect()),
            all_warnings: args.verbose > 0,
            html: args.html.clone(),
        })
    }
}

impl TryFrom<&Args> for Config {
    type Error = ConfigError;

    fn try_from(args: &Args) -> Result<Self, ConfigError> {
        let mut config = Config::try_from(&args.trace)?;
        config.report_interval = duration("--report-interval", &args.report_interval)?;
        if args.metrics_max_processes == 0 {
            return Err(ConfigError::Zero {
                flag: "--metrics-max-processes",
            });
        }
        config.metrics = args
            .metrics
            .as_deref()
            .map(|token| {
                metrics_addr(token).map(|addr| MetricsTarget {
                    addr,
                    max_processes: args.metrics_max_processes,
                })
            })
            .transpose()?;
        config.quiet = args.quiet;
        config.engine.transitions = !args.no_transitions;
        config.engine.timelines = args.output.timelines;
        config.json = args.output.json;
        config.wide = args.output.wide;
        Ok(config)
    }
}

impl TryFrom<&TopArgs> for (Config, top::Options) {
    type Error = ConfigError;

    fn try_from(args: &TopArgs) -> Result<Self, ConfigError> {
        let config = Config::try_from(&args.trace)?;
        let interval = duration("--interval", &args.interval)?;
        Ok((config, top::Options { interval }))
    }
}

/// The settings shared by the stream and `tracer top`; the stream's own are at their defaults.
impl TryFrom<&TraceArgs> for Config {
    type Error = ConfigError;

    fn try_from(args: &TraceArgs) -> Result<Self, ConfigError> {
        let family = match (args.ipv4, args.ipv6) {
            (true, true) => return Err(ConfigError::BothFamilies),
            (true, false) => AF_INET,
            (false, true) => AF_INET6,
            (false, false) => 0,
        };
        let mut ports: Vec<u16> = args
            .ports
            .iter()
            .map(|t| parse_port(t))
            .collect::<Result<_, _>>()?;
        ports.sort_unstable();
        ports.dedup();
        let mut threshold = duration("--close-wait-threshold", &args.close_wait_threshold)?;
        let mut stuck: Vec<(TcpState, u64)> = Vec::new();
        let mut close_wait_given = false;
        for token in &args.stuck {
            let (state, d) = parse_stuck(token)?;
            let twice = if state == TcpState::CloseWait {
                std::mem::replace(&mut close_wait_given, true)
            } else {
                stuck.iter().any(|(s, _)| *s == state)
            };
            if twice {
                return Err(ConfigError::StuckTwice {
                    state: state.name().into_owned(),
                });
            }
            if state == TcpState::CloseWait {
                if args.close_wait_threshold != defaults::text(defaults::CLOSE_WAIT_THRESHOLD) {
                    return Err(ConfigError::CloseWaitTwice {
                        threshold: args.close_wait_threshold.clone(),
                        token: token.clone(),
                    });
                }
                threshold = d;
            } else {
                stuck.push((state, nanos(d)));
            }
        }
        if args.pids.contains(&0) {
            return Err(ConfigError::PidZero);
        }
        let stop_after = args
            .duration
            .as_deref()
            .map(|d| duration("--duration", d))
            .transpose()?;
        if args.max_sockets == 0 {
            return Err(ConfigError::Zero {
                flag: "--max-sockets",
            });
        }
        let ring_buffer_bytes = ring_buffer_size(&args.ring_buffer_size)?;
        let output_buffer = match &args.output_buffer {
            Some(token) => output_buffer(token, 1 + u64::from(args.export.is_some()))?,
            None => Buffer::default_for(ring_buffer_bytes),
        };
        let mut pids = args.pids.clone();
        pids.sort_unstable();
        pids.dedup();
        if args.netns == Some(0) {
            return Err(ConfigError::Zero { flag: "--netns" });
        }
        Ok(Config {
            metrics: None,
            detail: args.verbose > 0,
            quiet: false,
            kernel: KernelFilter {
                family,
                protocol: if args.all_protocols { 0 } else { IPPROTO_TCP },
                ports,
                ring_buffer_bytes,
                netns: args.netns,
                hook: args.hook,
                track_reads: args.track_reads,
            },
            engine: engine::Options {
                transitions: true,
                timelines: false,
                close_wait_threshold_ns: nanos(threshold),
                stuck,
                max_sockets: args.max_sockets,
                // The probe says which causes the kernel reports, once loaded.
                causes: engine::CauseSource::default(),
            },
            json: false,
            wide: false,
            pids,
            report_interval: defaults::REPORT_INTERVAL,
            duration: stop_after,
            export: args.export.as_ref().map(|path| ExportTarget {
                path: path.clone(),
                force: args.force,
            }),
            output_buffer,
        })
    }
}

/// `STATE=DURATION` of `--stuck`: a state a socket can be stuck in (not LISTEN, ESTABLISHED,
/// CLOSE or TIME_WAIT, which are where sockets rest or end) and a non-zero duration.
pub fn parse_stuck(token: &str) -> Result<(TcpState, Duration), ConfigError> {
    let bad = || ConfigError::Stuck {
        token: token.to_owned(),
    };
    let (state, d) = token.split_once('=').ok_or_else(bad)?;
    let name = state.trim().to_ascii_uppercase().replace('-', "_");
    let state = TcpState::from_name(&name).ok_or_else(bad)?;
    if !matches!(
        state,
        TcpState::SynSent
            | TcpState::SynRecv
            | TcpState::FinWait1
            | TcpState::FinWait2
            | TcpState::Closing
            | TcpState::LastAck
            | TcpState::CloseWait
    ) {
        return Err(bad());
    }
    Ok((state, duration("--stuck", d.trim())?))
}

fn parse_port(token: &str) -> Result<u16, ConfigError> {
    match token.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(ConfigError::Port {
            token: token.to_owned(),
        }),
    }
}

/// `IP:PORT`, `[IPv6]:PORT`, or a port alone (on 127.0.0.1, never every interface by default).
fn metrics_addr(token: &str) -> Result<SocketAddr, ConfigError> {
    let token = token.trim();
    if let Ok(port) = token.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    token
        .parse::<SocketAddr>()
        .map_err(|_| ConfigError::MetricsAddr {
            token: token.to_owned(),
        })
}

fn duration(flag: &'static str, token: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(token).map_err(|reason| ConfigError::Duration {
        flag,
        token: token.to_owned(),
        reason,
    })?;
    if d.is_zero() {
        return Err(ConfigError::Zero { flag });
    }
    Ok(d)
}

/// A size flag's value in bytes, at least `min`: bytes, or with a binary suffix (`64MiB`,
/// `64M`, `512k`).
fn size(flag: &'static str, token: &str, min: usize) -> Result<usize, ConfigError> {
    let error = |reason: String| ConfigError::Size {
        flag,
        token: token.to_owned(),
        reason,
        min,
    };
    let bytes = parse_size::Config::new()
        .with_binary()
        .parse_size(token.trim())
        .map_err(|e| error(e.to_string()))?;
    match usize::try_from(bytes) {
        Ok(bytes) if bytes >= min => Ok(bytes),
        _ => Err(error("out of range".to_owned())),
    }
}

/// `--output-buffer`: at least [`Buffer::MIN_BYTES`], and, for all `destinations` (stdout, and
/// the export), no more than the memory the tracer may use ([`memory_limit`]): a stalled
/// reader fills it, and a buffer larger than the memory bounds nothing.
fn output_buffer(token: &str, destinations: u64) -> Result<Buffer, ConfigError> {
    let bytes = size("--output-buffer", token, Buffer::MIN_BYTES)?;
    let (memory, whose) = memory_limit();
    if (bytes as u64).saturating_mul(destinations) > memory {
        return Err(ConfigError::Size {
            flag: "--output-buffer",
            token: token.to_owned(),
            reason: format!(
                "{} more than {whose} ({} MiB): a reader that stalls fills it",
                if destinations > 1 {
                    "one for stdout and one for the export are"
                } else {
                    "it is"
                },
                memory >> 20
            ),
            min: Buffer::MIN_BYTES,
        });
    }
    Ok(Buffer { bytes })
}

/// The memory the tracer may use, in bytes, and whose limit that is: this machine's
/// (`MemTotal`), or its cgroup's when lower (`memory.max`, cgroup v2; `memory.limit_in_bytes`,
/// v1: a systemd `MemoryMax`, a container's limit).
fn memory_limit() -> (u64, &'static str) {
    let total = <procfs::Meminfo as procfs::Current>::current().map_or(u64::MAX, |m| m.mem_total);
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let limit = cgroups.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (hierarchy, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let file = if hierarchy == "0" && controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else {
            return None;
        };
        std::fs::read_to_string(file)
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
    });
    match limit {
        Some(limit) if limit < total => (limit, "the memory limit of the tracer's cgroup"),
        _ => (total, "this machine's memory"),
    }
}

/// `--ring-buffer-size`: a power of two and a multiple of the page size, below 4 GiB.
fn ring_buffer_size(token: &str) -> Result<u32, ConfigError> {
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    // Zero is a size too: the power-of-two rule below names what is wrong with it.
    let size = size("--ring-buffer-size", token, 0)? as u64;
    match u32::try_from(size) {
        Ok(bytes) if size.is_power_of_two() && size.is_multiple_of(page) => Ok(bytes),
        _ => Err(ConfigError::RingBufferSize { size, page }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use tracer::event::Family;

    use super::*;

    fn config(argv: &[&str]) -> Result<Config, ConfigError> {
        let args =
            Args::try_parse_from(std::iter::once("tracer").chain(argv.iter().copied())).unwrap();
        Config::try_from(&args)
    }

    #[test]
    fn metrics_addresses() {
        let target = |a: &str| config(&["--metrics", a]).map(|c| c.metrics.unwrap().addr);
        assert_eq!(
            target("127.0.0.1:9464").unwrap().to_string(),
            "127.0.0.1:9464"
        );
        assert_eq!(target("[::1]:9464").unwrap().to_string(), "[::1]:9464");
        assert_eq!(target("9464").unwrap().to_string(), "127.0.0.1:9464");
        for bad in ["localhost:9464", "9464x", "1.2.3.4", "[::1]", ":9464", ""] {
            let err = target(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        let c = config(&["--metrics", "9464", "--metrics-max-processes", "7"]).unwrap();
        assert_eq!(c.metrics.unwrap().max_processes, 7);
        assert!(config(&["--metrics", "9464", "--metrics-max-processes", "0"]).is_err());
        assert!(Args::try_parse_from(["tracer", "--metrics-max-processes", "7"]).is_err());
        assert!(config(&[]).unwrap().metrics.is_none());
    }

    #[test]
    fn quiet_excludes_stdout_formats() {
        assert!(config(&["-q"]).unwrap().quiet);
        assert!(Args::try_parse_from(["tracer", "--quiet", "--json"]).is_err());
    }

    #[test]
    fn defaults() {
        let c = config(&[]).unwrap();
        assert_eq!(c.kernel.family, 0);
        assert_eq!(c.kernel.protocol, IPPROTO_TCP);
        assert!(c.kernel.ports.is_empty());
        assert_eq!(c.engine.close_wait_threshold_ns, 5_000_000_000);
        assert!(c.engine.transitions && !c.engine.timelines);
        assert!(c.duration.is_none());
    }

    #[test]
    fn stuck_states_and_thresholds() {
        let c = config(&[
            "--stuck",
            "FIN_WAIT2=90s",
            "--stuck",
            "syn-sent=5s",
            "--stuck",
            "CLOSE_WAIT=2s",
        ])
        .unwrap();
        assert_eq!(
            c.engine.stuck,
            [
                (TcpState::FinWait2, 90_000_000_000),
                (TcpState::SynSent, 5_000_000_000)
            ]
        );
        assert_eq!(
            c.engine.close_wait_threshold_ns, 2_000_000_000,
            "the same as the flag"
        );
        for bad in [
            "LISTEN=5s",
            "TIME_WAIT=1s",
            "ESTABLISHED=1s",
            "FIN_WAIT2",
            "NOPE=1s",
        ] {
            let err = config(&["--stuck", bad]).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{bad:?}")) && err.contains("STATE=DURATION"),
                "{err}"
            );
        }
        let err = config(&["--stuck", "LAST_ACK=0s"]).unwrap_err().to_string();
        assert!(err.contains("--stuck"), "{err}");
        // One threshold per state: a second one is an error, not silently the last.
        let err = config(&["--stuck", "FIN_WAIT2=60s", "--stuck", "fin-wait2=9s"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("FIN_WAIT2 is given twice"), "{err}");
        let err = config(&["--close-wait-threshold", "10s", "--stuck", "CLOSE_WAIT=2s"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--close-wait-threshold 10s") && err.contains("CLOSE_WAIT=2s"),
            "{err}"
        );
        let err = config(&["--stuck", "CLOSE_WAIT=2s", "--stuck", "CLOSE_WAIT=3s"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("CLOSE_WAIT is given twice"), "{err}");
    }

    #[test]
    fn pid_zero_is_no_process() {
        let err = config(&["--pid", "0"]).unwrap_err().to_string();
        assert!(err.contains("--pid 0"), "{err}");
    }

    #[test]
    fn ports_repeat_and_split() {
        let c = config(&["-p", "80,443", "--port", "80", "-p", "8080"]).unwrap();
        assert_eq!(c.kernel.ports, vec![80, 443, 8080]);
    }

    #[test]
    fn every_port_fits_the_kernel_bitmap() {
        let all: Vec<String> = (1..=u16::MAX).map(|p| p.to_string()).collect();
        let c = config(&["-p", &all.join(",")]).unwrap();
        assert_eq!(c.kernel.ports.len(), usize::from(u16::MAX));
    }

    #[test]
    fn bad_ports_name_the_token() {
        for bad in ["0", "65536", "http", "-1", ""] {
            let flag = format!("--port={bad}");
            let err = config(&[&flag]).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn families() {
        assert_eq!(config(&["-4"]).unwrap().kernel.family, AF_INET);
        assert_eq!(config(&["-6"]).unwrap().kernel.family, AF_INET6);
        assert!(matches!(
            config(&["-4", "-6"]),
            Err(ConfigError::BothFamilies)
        ));
    }

    #[test]
    fn durations() {
        let c = config(&["--duration", "1500ms", "--close-wait-threshold", "2s"]).unwrap();
        assert_eq!(c.duration, Some(Duration::from_millis(1500)));
        assert_eq!(c.engine.close_wait_threshold_ns, 2_000_000_000);
        let err = config(&["--duration", "soon"]).unwrap_err().to_string();
        assert!(
            err.contains("--duration") && err.contains("\"soon\""),
            "{err}"
        );
        assert!(matches!(
            config(&["--duration", "0s"]),
            Err(ConfigError::Zero { .. })
        ));
    }

    #[test]
    fn export_and_force() {
        let c = config(&["--export", "x.ndjson"]).unwrap();
        assert_eq!(
            c.export,
            Some(ExportTarget {
                path: "x.ndjson".into(),
                force: false
            })
        );
        assert!(
            config(&["--export", "x", "--force"])
                .unwrap()
                .export
                .unwrap()
                .force
        );
        assert!(Args::try_parse_from(["tracer", "--force"]).is_err());
    }

    #[test]
    fn run_options_record_the_flags() {
        let c = config(&["-6", "-p", "80", "--pid", "9,3", "--timelines"]).unwrap();
        let o = c.run_options();
        assert_eq!(o.family, Some(Family::Ipv6));
        assert_eq!((o.ports, o.pids), (vec![80], vec![3, 9]));
        assert!(o.transitions && o.timelines && !o.all_protocols);
        assert!(!c.display().is_everything());
        assert!(config(&["--timelines"]).unwrap().display().is_everything());
    }

    #[test]
    fn analyze_subcommand() {
        let args =
            Args::try_parse_from(["tracer", "analyze", "-", "--json", "--pid", "4"]).unwrap();
        let Some(Command::Analyze(a)) = &args.command else {
            panic!("analyze parsed");
        };
        let o = analyze::Options::try_from(a).unwrap();
        assert_eq!(a.input, PathBuf::from("-"));
        assert!(o.json && !o.timelines);
        assert_eq!(o.pids, Some(HashSet::from([4])));
        assert!(Args::try_parse_from(["tracer", "--json", "analyze", "x"]).is_err());
        let bad = AnalyzeArgs {
            close_wait_threshold: Some("soon".into()),
            ..a.clone()
        };
        assert!(analyze::Options::try_from(&bad).is_err());
    }

    #[test]
    fn top_shares_the_trace_flags() {
        let args = Args::try_parse_from([
            "tracer",
            "top",
            "-6",
            "-p",
            "80,443",
            "--pid",
            "9",
            "--interval",
            "2s",
            "--export",
            "x.ndjson",
            "--stuck",
            "FIN_WAIT2=60s",
            "--close-wait-threshold",
            "2s",
            "--netns",
            "4026531840",
        ])
        .unwrap();
        let Some(Command::Top(top)) = &args.command else {
            panic!("top parsed");
        };
        let (c, options) = <(Config, top::Options)>::try_from(top).unwrap();
        assert_eq!(options.interval, Duration::from_secs(2));
        assert_eq!(c.kernel.family, AF_INET6);
        assert_eq!((c.kernel.ports, c.pids), (vec![80, 443], vec![9]));
        assert_eq!(c.export.unwrap().path, PathBuf::from("x.ndjson"));
        assert_eq!(c.engine.close_wait_threshold_ns, 2_000_000_000);
        assert_eq!(c.engine.stuck, [(TcpState::FinWait2, 60_000_000_000)]);
        assert_eq!(c.kernel.netns, Some(4_026_531_840));
        let (_, options) = <(Config, top::Options)>::try_from(&TopArgs {
            interval: "1s".into(),
            ..top.clone()
        })
        .unwrap();
        assert_eq!(options.interval, Duration::from_secs(1));
        let bad = TopArgs {
            interval: "0s".into(),
            ..top.clone()
        };
        assert!(<(Config, top::Options)>::try_from(&bad).is_err());
        // The stream's own flags are not top's, and the trace flags go after `top`.
        assert!(Args::try_parse_from(["tracer", "top", "--json"]).is_err());
        assert!(Args::try_parse_from(["tracer", "-p", "80", "top"]).is_err());
    }

    #[test]
    fn output_buffer_sizes() {
        let size = |argv: &[&str]| config(argv).map(|c| c.output_buffer.bytes);
        assert_eq!(size(&[]).unwrap(), 19 << 20);
        assert_eq!(
            size(&["--ring-buffer-size", "4096"]).unwrap(),
            Buffer::default_for(4096).bytes
        );
        assert_eq!(size(&["--output-buffer", "64MiB"]).unwrap(), 64 << 20);
        assert_eq!(size(&["--output-buffer", "64M"]).unwrap(), 64 << 20);
        assert_eq!(size(&["--output-buffer", "65536"]).unwrap(), 65536);
        for bad in [
            "lots",
            "-1",
            "1",
            "12 parsecs",
            "1TiB",
            "18446744073709551615",
        ] {
            let flag = format!("--output-buffer={bad}");
            let err = config(&[&flag]).unwrap_err().to_string();
            assert!(
                err.contains("--output-buffer") && err.contains(&format!("{bad:?}")),
                "{err}"
            );
        }
    }

    #[test]
    fn ring_buffer_sizes() {
        let bytes = |token: &str| {
            config(&["--ring-buffer-size", token]).map(|c| c.kernel.ring_buffer_bytes)
        };
        assert_eq!(bytes("65536").unwrap(), 65536);
        assert_eq!(bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(bytes("4k").unwrap(), 4096);
        assert!(matches!(bytes("lots"), Err(ConfigError::Size { .. })));
        for bad in ["0", "1000", "3", "8589934592", "4GiB", "3MiB"] {
            assert!(matches!(
                config(&["--ring-buffer-size", bad]),
                Err(ConfigError::RingBufferSize { .. })
            ));
        }
    }
}
