//! One measured run: the churn generator alone, or beside an observer that writes to a file.
//!
//! Order of a run: start the generator (it binds its listener and says the port), start the
//! observer with that port and wait until it is attached, tell the generator to go, sample
//! the observer's memory while the churn runs, wait for its output to stop growing, read its
//! BPF counters, stop it with SIGINT, reap it (its CPU time and peak RSS come with it), count
//! what it wrote.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::{
    churn::{self, ChurnArgs},
    count::{self, Capture},
    generator::{self, Generator},
    observer::{Observer, Stopped},
    sys,
};

/// What runs beside the generator.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No tracer.
    None,
    /// Our tracer, `--json` to a file, on its default hook (`tp_btf` where the kernel takes it).
    Tracer,
    /// Our tracer forced onto the classic tracepoint (`--hook tracepoint`), `--json` to a file.
    TracerTracepoint,
    /// Our tracer, `--json --timelines` to a file.
    TracerTimelines,
    /// Our tracer, `--json` to a file and `--export` to another: both destinations.
    TracerExport,
    /// Our tracer, `--json --timelines` through a pipe into a Python line reader (what a
    /// user's own script does).
    TracerPython,
    /// The same, the churn paced (`--python-rate`, in bursts of `--python-burst`) so that the
    /// reader keeps up on average: the output buffer must absorb each burst.
    TracerPythonPaced,
    /// Our tracer, `--json` to a file with `--metrics`, scraped every second.
    TracerScraped,
    /// Our tracer, `--json` to a file with `--track-reads` (a probe on every socket read).
    TracerTrackReads,
    /// libbpf-tools `tcpstates` (Debian's), to a file.
    Tcpstates,
    /// bpftrace, tcpstates-style script, to a file.
    Bpftrace,
    /// bpftrace counting in a map, streaming nothing.
    BpftraceCount,
}

impl Mode {
    pub const ALL: [Mode; 12] = [
        Mode::None,
        Mode::Tracer,
        Mode::TracerTracepoint,
        Mode::TracerTimelines,
        Mode::TracerExport,
        Mode::TracerPython,
        Mode::TracerPythonPaced,
        Mode::TracerScraped,
        Mode::TracerTrackReads,
        Mode::Tcpstates,
        Mode::Bpftrace,
        Mode::BpftraceCount,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Tracer => "tracer",
            Mode::TracerTracepoint => "tracer-tracepoint",
            Mode::TracerTimelines => "tracer-timelines",
            Mode::TracerExport => "tracer-export",
            Mode::TracerPython => "tracer-python",
            Mode::TracerPythonPaced => "tracer-python-paced",
            Mode::TracerScraped => "tracer-scraped",
            Mode::TracerTrackReads => "tracer-track-reads",
            Mode::Tcpstates => "tcpstates",
            Mode::Bpftrace => "bpftrace",
            Mode::BpftraceCount => "bpftrace-count",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Mode::None => "no tracer",
            Mode::Tracer => "our tracer, --json to a file",
            Mode::TracerTracepoint => "our tracer on the classic tracepoint, --json to a file",
            Mode::TracerTimelines => "our tracer, --json --timelines to a file",
            Mode::TracerExport => "our tracer, --json to a file and --export to another",
            Mode::TracerPython => "our tracer, --json --timelines | a Python line reader",
            Mode::TracerPythonPaced => {
                "our tracer, --json --timelines | a Python line reader, the churn paced in \
                 bursts so the reader keeps up on average"
            }
            Mode::TracerScraped => "our tracer, --json to a file, /metrics scraped every 1 s",
            Mode::TracerTrackReads => "our tracer, --json --track-reads to a file",
            Mode::Tcpstates => {
                "libbpf-tools tcpstates to a file (unfiltered: its -L/-D cannot select \
                 both ends of a connection)"
            }
            Mode::Bpftrace => "bpftrace tcpstates-style script to a file",
            Mode::BpftraceCount => "bpftrace count-only (streams nothing)",
        }
    }

    /// It writes one line per transition as the churn runs (its output is waited for).
    pub fn streams(self) -> bool {
        !matches!(self, Mode::None | Mode::BpftraceCount)
    }

    /// It is our tracer, in one configuration or another.
    pub fn is_tracer(self) -> bool {
        matches!(
            self,
            Mode::Tracer
                | Mode::TracerTracepoint
                | Mode::TracerTimelines
                | Mode::TracerExport
                | Mode::TracerPython
                | Mode::TracerPythonPaced
                | Mode::TracerScraped
                | Mode::TracerTrackReads
        )
    }

    /// Its stdout goes through a pipe into the Python line reader.
    pub fn is_python(self) -> bool {
        matches!(self, Mode::TracerPython | Mode::TracerPythonPaced)
    }

    /// It needs bpftrace.
    pub fn is_peer(self) -> bool {
        matches!(self, Mode::Bpftrace | Mode::BpftraceCount)
    }
}

/// The programs a run uses.
pub struct Tools {
    pub churn_exe: PathBuf,
    pub tracer: PathBuf,
    /// bpftrace and its scripts, when the peer runs.
    pub peer: Option<PeerTools>,
    /// libbpf-tools `tcpstates`, when it runs.
    pub tcpstates: Option<PathBuf>,
    /// Python and the line reader's script, when the Python mode runs.
    pub python: Option<(PathBuf, PathBuf)>,
    /// Where the observers write (files are deleted after counting unless `keep`).
    pub dir: PathBuf,
    pub keep: bool,
}

/// bpftrace and the scripts written for it.
pub struct PeerTools {
    pub binary: PathBuf,
    pub stream_script: PathBuf,
    pub count_script: PathBuf,
}

/// A memory sample of the observer.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct RssSample {
    pub t_s: f64,
    /// Connections the generator had completed at about that time.
    pub connections: u64,
    pub rss_kib: u64,
    /// Peak RSS so far (VmHWM); sampled by the time-bounded soak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hwm_kib: Option<u64>,
    /// Of the RSS, anonymous memory (RssAnon); sampled by the time-bounded soak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anon_kib: Option<u64>,
    /// Transitions counted in the observer's output so far; sampled by the time-bounded soak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
}

/// Everything measured in one run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunResult {
    pub mode: String,
    pub round: usize,
    pub connections: u64,
    pub elapsed_s: f64,
    pub conn_per_s: f64,
    /// Transitions the generator made (its own count times the shape), when traced.
    pub expected: Option<u64>,
    /// Transitions on the bench's port in the observer's output.
    pub captured: Option<u64>,
    /// Losses the observer itself reported (ring/perf buffer full, runs the kernel skipped,
    /// records its output dropped).
    pub reported_lost: Option<u64>,
    /// Of those, runs skipped by the kernel as the observer reported them.
    pub reported_recursion_misses: Option<u64>,
    /// Of those, records the ring (or perf) buffer had no room for.
    pub reported_buffer_full: Option<u64>,
    /// Of those, records our tracer dropped: its writer was too far behind, or (never seen)
    /// a record could not be decoded.
    pub reported_output_dropped: Option<u64>,
    /// `recursion_misses` of the observer's programs, read by the bench from fdinfo.
    pub kernel_recursion_misses: Option<u64>,
    /// With `--export`: transitions on the bench's port in the export file (the other
    /// destination; `captured` counts stdout's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_captured: Option<u64>,
    /// expected - captured - reported_lost, when positive: lost without a word.
    pub missing_unreported: Option<u64>,
    /// captured beyond expected (traffic of someone else on the port, or duplicates).
    pub extra: Option<u64>,
    /// (old->new, expected, captured) for every transition kind whose count is off.
    pub shape_mismatches: Vec<(String, u64, u64)>,
    /// Observer CPU (user + system) from attached to the stop signal, seconds: the stop comes
    /// once its output has been quiet for a while (every event handled). From attached to
    /// exit when the CPU before the stop could not be read.
    pub cpu_s: Option<f64>,
    /// The same per million captured events (= microseconds per event).
    pub cpu_s_per_m_events: Option<f64>,
    /// Observer CPU (user + system) from the stop signal to its exit, seconds: its last
    /// records and detaching its programs, once per run, not per event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_cpu_s: Option<f64>,
    /// Observer peak RSS, KiB.
    pub peak_rss_kib: Option<u64>,
    pub rss_samples: Vec<RssSample>,
    /// The kernel's BPF run-time statistics were on during the run (round 1, which times the
    /// programs in the kernel): every program run also read the clock twice, which users do
    /// not pay, so the rate and CPU figures come from the other rounds.
    #[serde(default)]
    pub bpf_stats: bool,
    pub prog_run_cnt: Option<u64>,
    pub prog_run_time_ns: Option<u64>,
    /// In-kernel ns per program run (`run_time_ns / run_cnt`), with [`Self::bpf_stats`] only.
    pub ns_per_run: Option<f64>,
    /// CPU seconds other processes on the machine used during the churn, per second of it:
    /// 0 on a quiet machine, up to the number of cores. Runs beside a busy neighbour are
    /// not comparable.
    pub background_cpus: f64,
    pub notes: Vec<String>,
}

impl RunResult {
    /// A run of `connections` connections in `elapsed_ns`, with the other processes' load.
    pub fn new(
        mode: &str,
        round: usize,
        connections: u64,
        elapsed_ns: u64,
        background: f64,
    ) -> Self {
        let elapsed_s = elapsed_ns as f64 / 1e9;
        let mut result = Self {
            mode: mode.into(),
            round,
            connections,
            elapsed_s,
            conn_per_s: connections as f64 / elapsed_s,
            background_cpus: background,
            ..Self::default()
        };
        if background > NOISY_CPUS {
            result.notes.push(format!(
                "noisy: other processes used {background:.2} CPUs during the churn"
            ));
        }
        result
    }

    /// Notes another process holding BPF programs (`pid N: command line`).
    pub fn note_holder(&mut self, holder: &str) {
        self.notes.push(format!(
            "another process holds BPF programs ({holder}); if they are on this tracepoint \
             they run on every event"
        ));
    }

    /// Fills in what the observer used (from `cpu_at_attach` to its exit) and what it wrote,
    /// against what `self.connections` connections and `listeners` listeners make.
    pub fn account(
        &mut self,
        stopped: &Stopped,
        cpu_at_attach: Option<f64>,
        capture: &Capture,
        listeners: u64,
    ) {
        if stopped.killed {
            self.notes
                .push(format!("{} ignored SIGINT and was killed", stopped.name));
        } else if !stopped.exit.success() {
            self.notes.push(format!(
                "{} ended with {}",
                stopped.name,
                stopped.exit.describe()
            ));
        }
        if self.mode.starts_with("tracer") && !capture.summary_seen {
            self.notes
                .push("no summary record: the tracer's loss counters are unknown".into());
        }
        // The tracer's own peak (VmHWM): ru_maxrss at exit also covers its reaped children,
        // such as the short-lived process that parses the kernel's BTF at start-up.
        let hwm = stopped.memory.map_or(0, |m| m.hwm_kib);
        self.peak_rss_kib = Some(if hwm > 0 {
            hwm
        } else {
            stopped.exit.maxrss_kib
        });
        let until_stop = stopped.cpu_s.unwrap_or(stopped.exit.cpu_s);
        self.cpu_s = cpu_at_attach.map(|at| (until_stop - at).max(0.0));
        self.stop_cpu_s = stopped
            .cpu_s
            .map(|before| (stopped.exit.cpu_s - before).max(0.0));
        if let Some(p) = stopped.prog {
            // Programs that counted runs ran with the kernel's statistics on, whoever turned
            // them on (the bench in round 1, the sysctl, another process).
            self.bpf_stats |= p.run_cnt > 0;
            self.prog_run_cnt = Some(p.run_cnt);
            self.prog_run_time_ns = Some(p.run_time_ns);
            self.kernel_recursion_misses = Some(p.recursion_misses);
            if p.run_cnt > 0 && p.run_time_ns > 0 {
                self.ns_per_run = Some(p.run_time_ns as f64 / p.run_cnt as f64);
            }
        }
        let expected = churn::expected_transitions(self.connections, listeners);
        let accounted = capture.captured + capture.reported_lost;
        self.expected = Some(expected);
        self.captured = Some(capture.captured);
        self.reported_lost = Some(capture.reported_lost);
        self.reported_recursion_misses = capture.reported_recursion_misses;
        self.reported_buffer_full = Some(capture.reported_buffer_full);
        self.reported_output_dropped = capture.reported_output_dropped;
        self.missing_unreported = Some(expected.saturating_sub(accounted));
        if let Some(exported) = capture.export_captured {
            self.export_captured = Some(exported);
            // The export never drops: only the kernel side's losses may be missing from it.
            let kernel =
                capture.reported_buffer_full + capture.reported_recursion_misses.unwrap_or(0);
            let missing = expected.saturating_sub(exported + kernel);
            if missing > 0 {
                self.notes.push(format!(
                    "the export is missing {missing} transitions beyond the kernel's losses"
                ));
            }
        }
        self.notes.extend(capture.notes.iter().cloned());
        self.extra = Some(capture.captured.saturating_sub(expected));
        self.shape_mismatches =
            count::shape_mismatches(&capture.shape, self.connections, listeners);
        if let (Some(cpu), true) = (self.cpu_s, capture.captured > 0) {
            self.cpu_s_per_m_events = Some(cpu / capture.captured as f64 * 1e6);
        }
    }
}

/// Background load above which a run is marked noisy, in CPUs.
pub const NOISY_CPUS: f64 = 0.1;

/// Waits until the machine is quiet (other processes use less than [`NOISY_CPUS`] over half
/// a second), at most `limit`. Returns the load last seen.
pub fn wait_quiet_machine(limit: Duration) -> f64 {
    let start = Instant::now();
    loop {
        let before = sys::others_cpu_ticks(&[]);
        std::thread::sleep(Duration::from_millis(500));
        let load = sys::others_cpu_between(&before, &sys::others_cpu_ticks(&[])) / 0.5;
        if load < NOISY_CPUS || start.elapsed() >= limit {
            return load;
        }
    }
}

/// One measured run of `mode`: generator and observer started, the churn, the observer
/// stopped and its output counted.
pub fn run(
    tools: &Tools,
    mode: Mode,
    args: &ChurnArgs,
    round: usize,
    sample_every: Duration,
) -> Result<RunResult> {
    let generator = Generator::start(&tools.churn_exe, args)?;
    let limit = generator::deadline(args.connections) + Duration::from_secs(30);
    let observer = Observer::start(tools, mode, generator.port, round, limit)?;
    let observer_pid = observer.as_ref().map(|o| o.proc.pid);
    let cpu_at_attach = observer_pid.and_then(sys::cpu_seconds_reaped);

    let ours: Vec<u32> = std::iter::once(generator.pid())
        .chain(observer.iter().flat_map(Observer::pids))
        .collect();
    let holders = sys::bpf_program_holders(&ours);
    let others_before = sys::others_cpu_ticks(&ours);
    let start = Instant::now();
    let mut samples = Vec::new();
    let done = generator.run(sample_every, |connections| {
        let memory = observer_pid.and_then(sys::memory);
        samples.extend(memory.map(|m| RssSample::of(start, connections, m.rss_kib)));
    })?;
    let background = sys::others_cpu_between(&others_before, &sys::others_cpu_ticks(&ours))
        / start.elapsed().as_secs_f64();

    let mut result = RunResult::new(
        mode.name(),
        round,
        done.connections,
        done.elapsed_ns,
        background,
    );
    for (pid, cmdline) in &holders {
        result.note_holder(&format!("pid {pid}: {cmdline}"));
    }
    let Some(observer) = observer else {
        return Ok(result);
    };
    let (stopped, capture) = observer.finish()?;
    samples.extend(
        stopped
            .memory
            .map(|m| RssSample::of(start, done.connections, m.rss_kib)),
    );
    result.rss_samples = samples;
    result.account(&stopped, cpu_at_attach, &capture, 1);
    Ok(result)
}

impl RssSample {
    /// A sample of the RSS alone, at `connections` connections.
    fn of(start: Instant, connections: u64, rss_kib: u64) -> Self {
        Self {
            t_s: start.elapsed().as_secs_f64(),
            connections,
            rss_kib,
            hwm_kib: None,
            anon_kib: None,
            events: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{observer::Stopped, sys::Exit};

    /// CPU per event counts from attach to the stop signal; what stopping takes is apart, and
    /// without a reading before the stop the count runs to the exit.
    #[test]
    fn cpu_per_event_ends_at_the_stop_signal() {
        let capture = Capture {
            captured: 1_000_000,
            ..Capture::default()
        };
        let stopped = |before| Stopped {
            name: "tracer",
            exit: Exit {
                status: 0,
                cpu_s: 1.0,
                maxrss_kib: 0,
            },
            killed: false,
            memory: None,
            prog: None,
            cpu_s: before,
        };
        let mut run = RunResult::new("tracer", 1, 100_000, 1_000_000_000, 0.0);
        run.account(&stopped(Some(0.7)), Some(0.1), &capture, 1);
        let close = |a: Option<f64>, b: f64| a.is_some_and(|a| (a - b).abs() < 1e-9);
        assert!(close(run.cpu_s, 0.6), "{:?}", run.cpu_s);
        assert!(close(run.cpu_s_per_m_events, 0.6));
        assert!(close(run.stop_cpu_s, 0.3), "{:?}", run.stop_cpu_s);
        run.account(&stopped(None), Some(0.1), &capture, 1);
        assert!(close(run.cpu_s, 0.9));
        assert_eq!(run.stop_cpu_s, None);
    }
}
