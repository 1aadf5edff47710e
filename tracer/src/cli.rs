//! Command line: clap parses what the user typed into [`Args`]; [`Config::try_from`] validates it
//! into what the program uses.

use std::{collections::HashSet, time::Duration};

use clap::Parser;
use tracer_common::{AF_INET, AF_INET6, DEFAULT_RING_BUFFER_BYTES, IPPROTO_TCP, MAX_PORTS};

use crate::{engine, error::ConfigError, probe::KernelFilter, units::parse_duration};

const EXAMPLES: &str = "\
Examples:
  tracer                              # every TCP state transition, live
  tracer --json > states.ndjson       # one JSON object per line
  tracer -p 8080 -p 443               # only connections on these ports (local or remote)
  tracer --pid 1234                   # only sockets owned by process 1234
  tracer -6 -w                        # IPv6 only, wide columns
  tracer --timelines --no-transitions # one line per finished connection
  tracer --close-wait-threshold 2s    # report sockets stuck in CLOSE_WAIT for 2 s
  tracer --duration 30s               # stop by itself after 30 seconds

Run as root (it loads an eBPF program). Ctrl-C prints a summary, including lost events.";

#[derive(Debug, Parser)]
#[command(
    name = "tracer",
    version,
    about = "Trace every TCP state transition with eBPF; find sockets stuck in CLOSE_WAIT and who holds them",
    after_help = EXAMPLES
)]
pub struct Args {
    /// Keep only connections with this local or remote port (repeatable, or comma-separated)
    #[arg(short = 'p', long = "port", value_name = "PORT", value_delimiter = ',')]
    pub ports: Vec<String>,

    /// Keep only sockets owned by this process (repeatable)
    #[arg(long = "pid", value_name = "PID", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// IPv4 only
    #[arg(short = '4', long = "ipv4")]
    pub ipv4: bool,

    /// IPv6 only
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Also trace other protocols that use the tracepoint (SCTP, MPTCP)
    #[arg(long)]
    pub all_protocols: bool,

    /// Print NDJSON (one JSON object per line) instead of text
    #[arg(long)]
    pub json: bool,

    /// Wide address columns that fit any IPv6 address
    #[arg(short = 'w', long)]
    pub wide: bool,

    /// Print one line per finished connection: its states with durations and how it ended
    #[arg(long)]
    pub timelines: bool,

    /// Do not print individual transitions (timelines and CLOSE_WAIT reports still print)
    #[arg(long)]
    pub no_transitions: bool,

    /// Report a socket that stays in CLOSE_WAIT longer than this (e.g. 500ms, 10s)
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub close_wait_threshold: String,

    /// Print a digest of sockets stuck in CLOSE_WAIT, grouped by process, this often
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub report_interval: String,

    /// Stop by itself after this long (e.g. 30s, 5m)
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,

    /// Track at most this many sockets; the oldest are evicted (and counted) beyond it
    #[arg(long, value_name = "N", default_value_t = 262_144)]
    pub max_sockets: usize,

    /// Size of the kernel ring buffer in bytes (a power of two, multiple of the page size)
    #[arg(long, value_name = "BYTES", default_value_t = u64::from(DEFAULT_RING_BUFFER_BYTES))]
    pub ring_buffer_size: u64,

    /// More diagnostics on stderr (-v: info, -vv: debug)
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub kernel: KernelFilter,
    pub engine: engine::Options,
    pub json: bool,
    pub wide: bool,
    pub report_interval: Duration,
    pub duration: Option<Duration>,
}

impl TryFrom<&Args> for Config {
    type Error = ConfigError;

    fn try_from(args: &Args) -> Result<Self, ConfigError> {
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
        if ports.len() > MAX_PORTS as usize {
            return Err(ConfigError::TooManyPorts {
                count: ports.len(),
                max: MAX_PORTS,
            });
        }
        let threshold = duration("--close-wait-threshold", &args.close_wait_threshold)?;
        let report_interval = duration("--report-interval", &args.report_interval)?;
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
        let ring_buffer_bytes = ring_buffer_size(args.ring_buffer_size)?;
        Ok(Config {
            kernel: KernelFilter {
                family,
                protocol: if args.all_protocols { 0 } else { IPPROTO_TCP },
                ports,
                ring_buffer_bytes,
            },
            engine: engine::Options {
                transitions: !args.no_transitions,
                timelines: args.timelines,
                pids: args.pids.iter().copied().collect::<HashSet<_>>(),
                close_wait_threshold_ns: u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX),
                max_sockets: args.max_sockets,
            },
            json: args.json,
            wide: args.wide,
            report_interval,
            duration: stop_after,
        })
    }
}

fn parse_port(token: &str) -> Result<u16, ConfigError> {
    match token.trim().parse::<u16>() {
        Ok(port) if port > 0 => Ok(port),
        _ => Err(ConfigError::Port {
            token: token.to_owned(),
        }),
    }
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

fn ring_buffer_size(size: u64) -> Result<u32, ConfigError> {
    // SAFETY: sysconf has no preconditions.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    match u32::try_from(size) {
        Ok(bytes) if size.is_power_of_two() && size.is_multiple_of(page) => Ok(bytes),
        _ => Err(ConfigError::RingBufferSize { size, page }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(argv: &[&str]) -> Result<Config, ConfigError> {
        let args =
            Args::try_parse_from(std::iter::once("tracer").chain(argv.iter().copied())).unwrap();
        Config::try_from(&args)
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
    fn ports_repeat_and_split() {
        let c = config(&["-p", "80,443", "--port", "80", "-p", "8080"]).unwrap();
        assert_eq!(c.kernel.ports, vec![80, 443, 8080]);
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
    fn ring_buffer_sizes() {
        assert!(config(&["--ring-buffer-size", "65536"]).is_ok());
        for bad in ["1000", "3", "8589934592", "0"] {
            assert!(matches!(
                config(&["--ring-buffer-size", bad]),
                Err(ConfigError::RingBufferSize { .. })
            ));
        }
    }
}
