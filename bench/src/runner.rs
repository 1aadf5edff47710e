//! One measured run: the churn generator alone, or beside a tracer that streams to a file.
//!
//! Order of a run: start the generator (it binds its listener and says the port), start the
//! observer with that port and wait until it is attached, tell the generator to go, sample
//! the observer's memory while the churn runs, wait for its output to stop growing, read its
//! BPF counters, stop it with SIGINT, reap it (its CPU time and peak RSS come with it), count
//! what it wrote.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead, BufReader, Write as _},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

use super::{
    churn::{self, ChurnArgs, Message},
    peer, sys,
};

/// What runs beside the generator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// No tracer.
    None,
    /// Our tracer, `--json` to a file.
    Tracer,
    /// bpftrace, tcpstates-style script, to a file.
    Bpftrace,
    /// bpftrace counting in a map, streaming nothing.
    BpftraceCount,
}

impl Mode {
    pub const ALL: [Mode; 4] = [
        Mode::None,
        Mode::Tracer,
        Mode::Bpftrace,
        Mode::BpftraceCount,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Tracer => "tracer",
            Mode::Bpftrace => "bpftrace",
            Mode::BpftraceCount => "bpftrace-count",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.name() == name)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Mode::None => "no tracer",
            Mode::Tracer => "our tracer, --json to a file",
            Mode::Bpftrace => "bpftrace tcpstates-style script to a file",
            Mode::BpftraceCount => "bpftrace count-only (streams nothing)",
        }
    }

    pub fn streams(self) -> bool {
        matches!(self, Mode::Tracer | Mode::Bpftrace)
    }
}

/// The programs a run uses.
pub struct Tools {
    pub churn_exe: PathBuf,
    pub tracer: PathBuf,
    pub bpftrace: Option<PathBuf>,
    pub stream_script: Option<PathBuf>,
    pub count_script: Option<PathBuf>,
    /// Where the observers write (files are deleted after counting unless `keep`).
    pub dir: PathBuf,
    pub keep: bool,
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
    /// expected - captured - reported_lost, when positive: lost without a word.
    pub missing_unreported: Option<u64>,
    /// captured beyond expected (traffic of someone else on the port, or duplicates).
    pub extra: Option<u64>,
    /// (old->new, expected, captured) for every transition kind whose count is off.
    pub shape_mismatches: Vec<(String, u64, u64)>,
    /// Observer CPU (user + system) from attached to exit, seconds.
    pub cpu_s: Option<f64>,
    /// The same per million captured events (= microseconds per event).
    pub cpu_s_per_m_events: Option<f64>,
    /// Observer peak RSS, KiB.
    pub peak_rss_kib: Option<u64>,
    pub rss_samples: Vec<RssSample>,
    pub prog_run_cnt: Option<u64>,
    pub prog_run_time_ns: Option<u64>,
    pub ns_per_run: Option<f64>,
    /// CPU seconds other processes on the machine used during the churn, per second of it:
    /// 0 on a quiet machine, up to the number of cores. Runs beside a busy neighbour are
    /// not comparable.
    pub background_cpus: f64,
    pub notes: Vec<String>,
}

/// A child process we started; killed and reaped on drop unless already reaped.
pub(super) struct Proc {
    pub(super) pid: u32,
    pub(super) name: &'static str,
    pub(super) reaped: bool,
}

impl Proc {
    pub(super) fn spawn(
        name: &'static str,
        cmd: &mut Command,
        death_signal: i32,
    ) -> Result<(Self, std::process::Child)> {
        // SAFETY: prctl is async-signal-safe; the child only sets its parent-death signal, so
        // it does not outlive the bench.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({:?})", cmd.get_program()))?;
        Ok((
            Self {
                pid: child.id(),
                name,
                reaped: false,
            },
            child,
        ))
    }

    pub(super) fn try_reap(&mut self) -> Result<Option<sys::Exit>> {
        let exit = sys::try_reap(self.pid)?;
        self.reaped |= exit.is_some();
        Ok(exit)
    }

    pub(super) fn stop(&mut self, signal: i32, grace: Duration) -> Result<(sys::Exit, bool)> {
        let result = sys::stop(self.pid, signal, grace);
        self.reaped = true;
        result
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            eprintln!("bench: stopping {} (pid {})", self.name, self.pid);
            let _ = sys::stop(self.pid, libc::SIGKILL, Duration::from_secs(5));
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

/// How long a run may take at worst: the churn at 1,000 connections/s plus a minute.
pub(super) fn run_deadline(connections: u64) -> Duration {
    Duration::from_secs(60 + connections / 1_000)
}

/// One measured run.
pub fn run(
    tools: &Tools,
    mode: Mode,
    args: &ChurnArgs,
    round: usize,
    sample_every: Duration,
) -> Result<RunResult> {
    let deadline = run_deadline(args.connections);
    let mut cmd = Command::new(&tools.churn_exe);
    cmd.args(args.to_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let (mut churn_proc, mut churn) = Proc::spawn("churn generator", &mut cmd, libc::SIGKILL)?;
    let mut go: ChildStdin = churn.stdin.take().context("churn stdin")?;
    let messages = read_messages(churn.stdout.take().context("churn stdout")?);
    let port = match messages.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(Message::Ready { port })) => port,
        Ok(Ok(other)) => bail!("churn generator: expected its port, got {other:?}"),
        Ok(Err(e)) => return Err(e),
        Err(_) => bail!("churn generator did not report its port"),
    };

    let output = tools
        .dir
        .join(format!("{}-r{round}-{port}.out", mode.name()));
    let errors = tools
        .dir
        .join(format!("{}-r{round}-{port}.err", mode.name()));
    let _files = Scratch {
        paths: vec![output.clone(), errors.clone()],
        keep: tools.keep,
    };
    let mut observer = match mode {
        Mode::None => None,
        Mode::Tracer => {
            let mut cmd = Command::new(&tools.tracer);
            cmd.args(["--json", "-p", &port.to_string(), "--duration"])
                .arg(format!("{}s", deadline.as_secs() + 30));
            Some(start_observer("tracer", &mut cmd, &output, &errors)?)
        }
        Mode::Bpftrace | Mode::BpftraceCount => {
            let binary = tools.bpftrace.as_ref().context("no bpftrace")?;
            let script = if mode == Mode::Bpftrace {
                &tools.stream_script
            } else {
                &tools.count_script
            };
            let mut cmd = Command::new(binary);
            cmd.arg(script.as_ref().context("no bpftrace script")?)
                .arg(port.to_string());
            Some(start_observer("bpftrace", &mut cmd, &output, &errors)?)
        }
    };
    if let Some(obs) = &mut observer {
        wait_attached(mode, obs, &output, &errors)?;
    }
    let cpu_at_attach = observer.as_ref().and_then(|o| sys::cpu_seconds(o.proc.pid));

    let mut ours = vec![churn_proc.pid];
    ours.extend(observer.as_ref().map(|o| o.proc.pid));
    let holders = sys::bpf_program_holders(&ours);
    let others_before = sys::others_cpu_ticks(&ours);
    writeln!(go, "go").context("starting the churn")?;
    drop(go);
    let start = Instant::now();
    let mut samples = Vec::new();
    let mut progress = 0;
    let mut done = None;
    while done.is_none() {
        if start.elapsed() > deadline {
            bail!("the churn did not finish within {deadline:?}");
        }
        match next_churn_event(&messages, sample_every, &mut churn_proc)? {
            ChurnEvent::Progress(p) => progress = p,
            ChurnEvent::Done(n, elapsed_ns) => done = Some((n, elapsed_ns)),
            ChurnEvent::Quiet => {}
        }
        if let Some(obs) = &observer {
            if let Some(mem) = sys::memory(obs.proc.pid) {
                samples.push(RssSample {
                    t_s: start.elapsed().as_secs_f64(),
                    connections: progress,
                    rss_kib: mem.rss_kib,
                    hwm_kib: None,
                    anon_kib: None,
                    events: None,
                });
            }
        }
    }
    let (completed, elapsed_ns) = done.expect("loop ends on done");
    let background_cpus = sys::others_cpu_between(&others_before, &sys::others_cpu_ticks(&ours))
        / start.elapsed().as_secs_f64();
    let churn_exit = sys::reap_within(churn_proc.pid, Duration::from_secs(30))?;
    churn_proc.reaped = churn_exit.is_some();
    match churn_exit {
        Some(exit) if exit.success() => {}
        Some(exit) => bail!("churn generator failed: {}", exit.describe()),
        None => bail!("churn generator did not exit"),
    }
    if completed != args.connections {
        bail!(
            "churn generator completed {completed} of {} connections",
            args.connections
        );
    }
    let elapsed_s = elapsed_ns as f64 / 1e9;
    let mut result = RunResult {
        mode: mode.name().into(),
        round,
        connections: completed,
        elapsed_s,
        conn_per_s: completed as f64 / elapsed_s,
        background_cpus,
        ..RunResult::default()
    };
    for (pid, cmdline) in &holders {
        result.notes.push(format!(
            "another process holds BPF programs (pid {pid}: {cmdline}); if they are on this \
             tracepoint they run on every event"
        ));
    }
    if background_cpus > NOISY_CPUS {
        result.notes.push(format!(
            "noisy: other processes used {background_cpus:.2} CPUs during the churn"
        ));
    }
    let Some(mut obs) = observer else {
        return Ok(result);
    };

    // Everything was emitted by now; let the observer write it out.
    if mode.streams() {
        wait_quiet(&output, Duration::from_millis(300), Duration::from_secs(60));
    } else {
        std::thread::sleep(Duration::from_millis(300));
    }
    if let Some(mem) = sys::memory(obs.proc.pid) {
        samples.push(RssSample {
            t_s: start.elapsed().as_secs_f64(),
            connections: completed,
            rss_kib: mem.rss_kib,
            hwm_kib: None,
            anon_kib: None,
            events: None,
        });
    }
    let hwm = sys::memory(obs.proc.pid).map(|m| m.hwm_kib);
    let prog = sys::busiest_program(obs.proc.pid);
    let (exit, killed) = obs.proc.stop(libc::SIGINT, Duration::from_secs(60))?;
    if killed {
        result
            .notes
            .push(format!("{} ignored SIGINT and was killed", obs.proc.name));
    } else if !exit.success() {
        result
            .notes
            .push(format!("{} ended with {}", obs.proc.name, exit.describe()));
    }

    result.expected = Some(churn::expected_transitions(completed));
    result.cpu_s = cpu_at_attach.map(|at| (exit.cpu_s - at).max(0.0));
    result.peak_rss_kib = Some(hwm.unwrap_or(0).max(exit.maxrss_kib));
    result.rss_samples = samples;
    if let Some(p) = prog {
        result.prog_run_cnt = Some(p.run_cnt);
        result.prog_run_time_ns = Some(p.run_time_ns);
        result.kernel_recursion_misses = Some(p.recursion_misses);
        if p.run_cnt > 0 && p.run_time_ns > 0 {
            result.ns_per_run = Some(p.run_time_ns as f64 / p.run_cnt as f64);
        }
    }

    let text = fs::read_to_string(&errors).unwrap_or_default();
    let capture = match mode {
        Mode::Tracer => count_tracer(&output, port)?,
        Mode::Bpftrace => count_bpftrace(&output, &text, port)?,
        Mode::BpftraceCount => count_bpftrace_map(&output, &text)?,
        Mode::None => unreachable!("no observer"),
    };
    if !capture.summary_seen && mode == Mode::Tracer {
        result
            .notes
            .push("no summary record: the tracer's loss counters are unknown".into());
    }
    let expected = result.expected.unwrap_or(0);
    let accounted = capture.captured + capture.reported_lost;
    result.captured = Some(capture.captured);
    result.reported_lost = Some(capture.reported_lost);
    result.reported_recursion_misses = capture.reported_recursion_misses;
    result.reported_buffer_full = Some(capture.reported_buffer_full);
    result.reported_output_dropped = capture.reported_output_dropped;
    result.missing_unreported = Some(expected.saturating_sub(accounted));
    result.extra = Some(capture.captured.saturating_sub(expected));
    result.shape_mismatches = shape_mismatches(&capture.shape, completed);
    if let Some(cpu) = result.cpu_s {
        if capture.captured > 0 {
            result.cpu_s_per_m_events = Some(cpu / capture.captured as f64 * 1e6);
        }
    }
    Ok(result)
}

/// The observer's output files: removed when the run ends, however it ends, unless kept.
pub(super) struct Scratch {
    pub(super) paths: Vec<PathBuf>,
    pub(super) keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            for path in &self.paths {
                let _ = fs::remove_file(path);
            }
        }
    }
}

/// The observer process and where it writes.
struct Observer {
    proc: Proc,
}

fn start_observer(
    name: &'static str,
    cmd: &mut Command,
    output: &Path,
    errors: &Path,
) -> Result<Observer> {
    let out = fs::File::create(output).with_context(|| format!("creating {}", output.display()))?;
    let err = fs::File::create(errors).with_context(|| format!("creating {}", errors.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    let (proc, _child) = Proc::spawn(name, cmd, libc::SIGTERM)?;
    Ok(Observer { proc })
}

/// Waits until the observer's program is attached: our tracer starts its output thread
/// after attaching and filling the port map; the bpftrace scripts print READY from BEGIN,
/// which runs once every probe is attached.
fn wait_attached(mode: Mode, obs: &mut Observer, output: &Path, errors: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = match mode {
            Mode::Tracer => sys::thread_names(obs.proc.pid)
                .iter()
                .any(|n| n == "tracer-output"),
            _ => fs::read_to_string(output).is_ok_and(|t| t.lines().any(|l| l == "READY")),
        };
        if ready {
            return Ok(());
        }
        if let Some(exit) = obs.proc.try_reap()? {
            bail!(
                "{} exited before attaching ({}): {}",
                obs.proc.name,
                exit.describe(),
                fs::read_to_string(errors).unwrap_or_default().trim()
            );
        }
        if Instant::now() > deadline {
            bail!("{} did not attach within a minute", obs.proc.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until a file has not grown for `quiet`, at most `limit`.
fn wait_quiet(path: &Path, quiet: Duration, limit: Duration) {
    let start = Instant::now();
    let mut len = sys::file_len(path);
    let mut since = Instant::now();
    while start.elapsed() < limit && since.elapsed() < quiet {
        std::thread::sleep(Duration::from_millis(50));
        let now = sys::file_len(path);
        if now != len {
            len = now;
            since = Instant::now();
        }
    }
}

/// What the running churn generator said within a wait.
pub(super) enum ChurnEvent {
    /// Connections completed so far.
    Progress(u64),
    /// Connections completed and the churn's own elapsed time, in ns.
    Done(u64, u64),
    /// Nothing yet.
    Quiet,
}

/// Waits up to `wait` for the generator's next message; an unexpected message or a generator
/// that stopped before it was done is an error.
pub(super) fn next_churn_event(
    messages: &mpsc::Receiver<Result<Message>>,
    wait: Duration,
    churn_proc: &mut Proc,
) -> Result<ChurnEvent> {
    match messages.recv_timeout(wait) {
        Ok(Ok(Message::Progress { progress, .. })) => Ok(ChurnEvent::Progress(progress)),
        Ok(Ok(Message::Done { done, elapsed_ns })) => Ok(ChurnEvent::Done(done, elapsed_ns)),
        Ok(Ok(other)) => bail!("churn generator: unexpected {other:?}"),
        Ok(Err(e)) => Err(e),
        Err(mpsc::RecvTimeoutError::Timeout) => Ok(ChurnEvent::Quiet),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let exit = churn_proc.try_reap()?;
            bail!(
                "the churn generator stopped before it was done ({})",
                exit.map_or_else(|| "still running".into(), |e| e.describe())
            );
        }
    }
}

pub(super) fn read_messages(stdout: std::process::ChildStdout) -> mpsc::Receiver<Result<Message>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let message = line.context("reading the churn generator").and_then(|l| {
                serde_json::from_str::<Message>(&l)
                    .with_context(|| format!("churn generator said {l:?}"))
            });
            if tx.send(message).is_err() {
                return;
            }
        }
    });
    rx
}

/// What an observer wrote.
#[derive(Debug, Default)]
pub struct Capture {
    pub captured: u64,
    /// "OLD->NEW" -> count.
    pub shape: BTreeMap<String, u64>,
    pub reported_lost: u64,
    pub reported_recursion_misses: Option<u64>,
    pub reported_buffer_full: u64,
    pub reported_output_dropped: Option<u64>,
    pub summary_seen: bool,
}

impl Capture {
    /// Counts `n` transitions old -> new; allocates only for a kind not seen before.
    fn add(&mut self, old: &str, new: &str, n: u64) {
        self.captured += n;
        let seen = self.shape.iter_mut().find(|(kind, _)| {
            kind.len() == old.len() + 2 + new.len()
                && kind.starts_with(old)
                && kind[old.len()..].starts_with("->")
                && kind.ends_with(new)
        });
        match seen {
            Some((_, count)) => *count += n,
            None => {
                self.shape.insert(format!("{old}->{new}"), n);
            }
        }
    }
}

#[derive(Deserialize)]
struct TracerLine {
    #[serde(rename = "type")]
    kind: String,
    lport: Option<u16>,
    rport: Option<u16>,
    old_state: Option<String>,
    new_state: Option<String>,
    lost_ringbuf: Option<u64>,
    recursion_misses: Option<u64>,
    output_dropped: Option<u64>,
    decode_errors: Option<u64>,
}

/// Counts the tracer's NDJSON in a file: transitions on `port`, and the loss counters of its
/// summary.
pub fn count_tracer(path: &Path, port: u16) -> Result<Capture> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    count_tracer_stream(BufReader::with_capacity(1 << 20, file), port, None)
}

/// Counts the tracer's NDJSON as it streams by (a file, or a pipe from a running tracer), in
/// constant memory: one line is held at a time. When `seen` is given, it follows the count
/// of transitions on `port` as they are read.
pub fn count_tracer_stream(
    mut reader: impl BufRead,
    port: u16,
    seen: Option<&AtomicU64>,
) -> Result<Capture> {
    let mut capture = Capture::default();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches('\n');
        if let Some((lport, rport, old, new)) = quick_transition(line) {
            if lport == port || rport == port {
                capture.add(old, new, 1);
                if let Some(seen) = seen {
                    seen.store(capture.captured, Ordering::Relaxed);
                }
            }
            continue;
        }
        let Ok(record) = serde_json::from_str::<TracerLine>(line) else {
            continue;
        };
        match record.kind.as_str() {
            "transition" if record.lport == Some(port) || record.rport == Some(port) => {
                capture.add(
                    record.old_state.as_deref().unwrap_or("?"),
                    record.new_state.as_deref().unwrap_or("?"),
                    1,
                );
                if let Some(seen) = seen {
                    seen.store(capture.captured, Ordering::Relaxed);
                }
            }
            "summary" => {
                let recursion = record.recursion_misses.unwrap_or(0);
                let ringbuf = record.lost_ringbuf.unwrap_or(0);
                // Records that could not be decoded are reported too (and never expected).
                let dropped =
                    record.output_dropped.unwrap_or(0) + record.decode_errors.unwrap_or(0);
                capture.summary_seen = true;
                capture.reported_recursion_misses = Some(recursion);
                capture.reported_buffer_full = ringbuf;
                capture.reported_output_dropped = Some(dropped);
                capture.reported_lost = ringbuf + recursion + dropped;
            }
            _ => {}
        }
    }
    Ok(capture)
}

/// (lport, rport, old_state, new_state) of a transition line as the tracer writes it (by
/// hand, fields in a fixed order: `{"type":"transition",...,"lport":N,...,"rport":N,...,
/// "old_state":"S","new_state":"S",...}`), found without a JSON parser: a JSON parser is
/// too slow to follow a tracer at full churn on the same two cores. `None` for any other
/// line, which is then parsed as JSON. Keys are searched in order, before the first string
/// that could hold arbitrary text (`comm` comes after them), so they cannot match inside a
/// value.
fn quick_transition(line: &str) -> Option<(u16, u16, &str, &str)> {
    fn after<'a>(text: &'a str, key: &str) -> Option<&'a str> {
        text.find(key).map(|at| &text[at + key.len()..])
    }
    fn number(text: &str) -> Option<(u16, &str)> {
        let end = text.find(|c: char| !c.is_ascii_digit())?;
        Some((text[..end].parse().ok()?, &text[end..]))
    }
    fn name(text: &str) -> Option<(&str, &str)> {
        let end = text.find('"')?;
        let value = &text[..end];
        value
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            .then_some((value, &text[end..]))
    }
    let rest = line.strip_prefix(r#"{"type":"transition","#)?;
    let (lport, rest) = number(after(rest, r#","lport":"#)?)?;
    let (rport, rest) = number(after(rest, r#","rport":"#)?)?;
    let (old, rest) = name(after(rest, r#","old_state":""#)?)?;
    let (new, rest) = name(after(rest, r#","new_state":""#)?)?;
    rest.ends_with('}').then_some((lport, rport, old, new))
}

fn count_bpftrace(path: &Path, stderr: &str, port: u16) -> Result<Capture> {
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut capture = Capture::default();
    let mut lost = peer::reported_lost(stderr);
    for line in BufReader::with_capacity(1 << 20, file).lines() {
        let line = line?;
        if let Some((old, new)) = peer::parse_stream_line(&line, port) {
            capture.add(&peer::state_name(old), &peer::state_name(new), 1);
        } else {
            lost += peer::reported_lost(&line);
        }
    }
    capture.reported_lost = lost;
    capture.reported_buffer_full = lost;
    Ok(capture)
}

fn count_bpftrace_map(path: &Path, stderr: &str) -> Result<Capture> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut capture = Capture::default();
    for (old, new, n) in text.lines().filter_map(peer::parse_count_line) {
        capture.add(&peer::state_name(old), &peer::state_name(new), n);
    }
    capture.reported_lost = peer::reported_lost(stderr) + peer::reported_lost(&text);
    capture.reported_buffer_full = capture.reported_lost;
    Ok(capture)
}

/// Transition kinds whose count differs from the generator's shape.
pub fn shape_mismatches(
    shape: &BTreeMap<String, u64>,
    connections: u64,
) -> Vec<(String, u64, u64)> {
    shape_mismatches_of(shape, connections, 1)
}

/// The same, over `listeners` runs of the generator (each with its own listener).
pub fn shape_mismatches_of(
    shape: &BTreeMap<String, u64>,
    connections: u64,
    listeners: u64,
) -> Vec<(String, u64, u64)> {
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (old, new) in churn::SHAPE {
        *expected.entry(format!("{old}->{new}")).or_default() += connections;
    }
    for (old, new) in churn::LISTENER_SHAPE {
        *expected.entry(format!("{old}->{new}")).or_default() += listeners;
    }
    let mut out = Vec::new();
    for (kind, &want) in &expected {
        let got = shape.get(kind).copied().unwrap_or(0);
        if got != want {
            out.push((kind.clone(), want, got));
        }
    }
    for (kind, &got) in shape {
        if !expected.contains_key(kind) {
            out.push((kind.clone(), 0, got));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_of_exact_run_matches() {
        let mut shape = BTreeMap::new();
        for (old, new) in churn::SHAPE {
            *shape.entry(format!("{old}->{new}")).or_default() += 3;
        }
        for (old, new) in churn::LISTENER_SHAPE {
            shape.insert(format!("{old}->{new}"), 1);
        }
        assert!(shape_mismatches(&shape, 3).is_empty());
        shape.insert("SYN_SENT->CLOSE".into(), 1);
        *shape.get_mut("FIN_WAIT1->FIN_WAIT2").unwrap() -= 1;
        assert_eq!(
            shape_mismatches(&shape, 3),
            vec![
                ("FIN_WAIT1->FIN_WAIT2".into(), 3, 2),
                ("SYN_SENT->CLOSE".into(), 0, 1)
            ]
        );
    }

    /// Lines as the tracer writes them (a listener, a client, a server socket with no owner,
    /// an IPv6 socket whose comm holds a quote, the summary).
    const REAL_LINES: &str = concat!(
        r#"{"type":"transition","ts_ns":5153572962965,"time":"2026-11-25T09:16:28.060391Z","skaddr":"0xffff88812d44d340","family":"ipv4","laddr":"127.0.0.1","lport":9999,"raddr":"0.0.0.0","rport":0,"old_state":"CLOSE","new_state":"LISTEN","duration_ns":null,"pid":11121,"comm":"python3","ctx_pid":11121,"ctx_comm":"python3","cpu":1}"#,
        "\n",
        r#"{"type":"transition","ts_ns":5153576923393,"time":"2026-11-25T09:16:28.064351Z","skaddr":"0xffff88812d44b780","family":"ipv4","laddr":"127.0.0.1","lport":57998,"raddr":"127.0.0.1","rport":9999,"old_state":"SYN_SENT","new_state":"ESTABLISHED","duration_ns":65838,"pid":11121,"comm":"python3","ctx_pid":11121,"ctx_comm":"python3","cpu":1}"#,
        "\n",
        r#"{"type":"transition","ts_ns":5153576930363,"time":"2026-11-25T09:16:28.064358Z","skaddr":"0xffff88812d448940","family":"ipv4","laddr":"127.0.0.1","lport":9999,"raddr":"127.0.0.1","rport":57998,"old_state":"LISTEN","new_state":"SYN_RECV","duration_ns":null,"pid":null,"comm":null,"ctx_pid":11121,"ctx_comm":"python3","cpu":1}"#,
        "\n",
        r#"{"type":"transition","ts_ns":1,"time":"t","skaddr":"0x1","family":"ipv6","laddr":"::1","lport":443,"raddr":"::1","rport":40000,"old_state":"ESTABLISHED","new_state":"CLOSE_WAIT","duration_ns":5,"pid":7,"comm":"a\",\"lport\":9999","ctx_pid":7,"ctx_comm":"x","cpu":0}"#,
        "\n",
        r#"{"type":"summary","ts_ns":5155005411430,"time":"2026-11-25T09:16:29.492839Z","events":12,"transitions":12,"lost_ringbuf":3,"recursion_misses":0,"decode_errors":1,"evicted":0,"timelines":0,"close_wait_alerts":0,"close_wait_resolved":0,"output_dropped":2}"#,
        "\n",
    );

    #[test]
    fn quick_transition_agrees_with_json() {
        for line in REAL_LINES.lines() {
            let json: TracerLine = serde_json::from_str(line).unwrap();
            let quick = quick_transition(line);
            if json.kind == "transition" {
                assert_eq!(
                    quick,
                    Some((
                        json.lport.unwrap(),
                        json.rport.unwrap(),
                        json.old_state.as_deref().unwrap(),
                        json.new_state.as_deref().unwrap()
                    )),
                    "{line}"
                );
            } else {
                assert_eq!(quick, None);
            }
        }
        // Anything unusual goes to the JSON parser.
        assert_eq!(quick_transition(r#"{"type":"transition","lport":1}"#), None);
        let odd = REAL_LINES
            .lines()
            .next()
            .unwrap()
            .replace("LISTEN", "UNKNOWN(13)");
        assert_eq!(quick_transition(&odd), None);
    }

    #[test]
    fn counts_a_stream() {
        let seen = AtomicU64::new(0);
        let c = count_tracer_stream(REAL_LINES.as_bytes(), 9999, Some(&seen)).unwrap();
        assert_eq!(c.captured, 3);
        assert_eq!(seen.load(Ordering::Relaxed), 3);
        assert_eq!(c.reported_lost, 6);
        assert_eq!(c.reported_output_dropped, Some(3));
        assert_eq!(c.shape.get("LISTEN->SYN_RECV"), Some(&1));
        assert_eq!(c.shape.len(), 3);
    }

    #[test]
    fn counts_tracer_output() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.ndjson");
        fs::write(
            &path,
            concat!(
                r#"{"type":"transition","lport":5000,"rport":0,"old_state":"CLOSE","new_state":"LISTEN"}"#, "\n",
                r#"{"type":"transition","lport":40000,"rport":5000,"old_state":"CLOSE","new_state":"SYN_SENT"}"#, "\n",
                r#"{"type":"transition","lport":40000,"rport":80,"old_state":"CLOSE","new_state":"SYN_SENT"}"#, "\n",
                r#"{"type":"lost","ringbuf":2,"recursion_misses":1}"#, "\n",
                r#"{"type":"summary","events":3,"lost_ringbuf":2,"recursion_misses":1,"output_dropped":4}"#, "\n",
            ),
        )
        .unwrap();
        let c = count_tracer(&path, 5000).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.captured, 2);
        assert_eq!(c.reported_lost, 7);
        assert_eq!(c.reported_recursion_misses, Some(1));
        assert!(c.summary_seen);
        assert_eq!(c.shape.get("CLOSE->SYN_SENT"), Some(&1));
    }
}
