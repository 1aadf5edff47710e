//! The time-bounded soak (`--soak-minutes N`): ONE tracer process for N minutes of churn,
//! its memory sampled over time, its output counted as it streams and never stored.
//!
//! At ~30k connections/s the tracer writes ~100 MB/s of NDJSON: ten minutes would be ~60 GB
//! in a file. So its stdout is a pipe, read by a thread of the bench that counts the
//! transitions on the soak's port and keeps the summary's loss counters (constant memory).
//!
//! The churn is the same generator as in the per-run bench, run again and again (each run
//! in a fresh network namespace, so TIME_WAIT sockets do not pile up) until the time is up.
//! Every run listens on the same port: one the bench reserves on the host (bound, never
//! listening, so no host socket takes it), given to the tracer once with `-p`.

use std::{
    io::{BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    churn::{self, ChurnArgs, Message},
    report::{Soak, Timed},
    runner::{self, ChurnEvent, Proc, RssSample, RunResult, Tools, NOISY_CPUS},
    sys,
};

/// How the soak runs.
pub struct Plan {
    pub minutes: u64,
    /// Connections per run of the generator, at most.
    pub chunk: u64,
    pub sample_every: Duration,
}

/// Smallest run of the generator: the last one is sized to end about on time, not shorter.
const MIN_CHUNK: u64 = 10_000;
/// Pipe buffer between the tracer and the counting thread (the default is 64 KiB).
const PIPE_BYTES: i32 = 1 << 20;

/// Runs the soak and judges it.
pub fn run(tools: &Tools, base: &ChurnArgs, plan: &Plan) -> Result<Soak> {
    if plan.minutes == 0 || plan.chunk == 0 {
        bail!("--soak-minutes and --soak-chunk must be positive");
    }
    // The port, reserved on the host for the whole soak (the tracepoint is global: a host
    // socket on this port would be counted too).
    let reserved = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .context("creating the port reservation")?;
    reserved
        .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())
        .context("reserving a port")?;
    let port = reserved
        .local_addr()?
        .as_socket()
        .context("reserved address")?
        .port();

    let errors = tools.dir.join(format!("tracer-r0-soak-{port}.err"));
    let _files = runner::Scratch {
        paths: vec![errors.clone()],
        keep: tools.keep,
    };
    let err =
        std::fs::File::create(&errors).with_context(|| format!("creating {}", errors.display()))?;
    // Its own limit, past which it stops by itself: the soak plus a generous margin.
    let limit_s = plan.minutes * 60 + 600;
    let mut cmd = Command::new(&tools.tracer);
    cmd.args(["--json", "-p", &port.to_string(), "--duration"])
        .arg(format!("{limit_s}s"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err);
    let (mut tracer, mut child) = Proc::spawn("tracer", &mut cmd, libc::SIGTERM)?;
    let stdout = child.stdout.take().context("tracer stdout")?;
    // SAFETY: fcntl on a pipe fd we own; F_SETPIPE_SZ only resizes its buffer.
    if unsafe { libc::fcntl(stdout.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) } < 0 {
        eprintln!(
            "bench: soak: could not grow the tracer's pipe: {}",
            std::io::Error::last_os_error()
        );
    }
    let seen = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let counter = {
        let (seen, bytes) = (Arc::clone(&seen), Arc::clone(&bytes));
        thread::Builder::new()
            .name("soak-count".into())
            .spawn(move || {
                let reader = CountingReader {
                    inner: stdout,
                    bytes,
                };
                runner::count_tracer_stream(
                    BufReader::with_capacity(1 << 20, reader),
                    port,
                    Some(&seen),
                )
            })?
    };

    // Attached once its output thread exists (it starts after the attach and the port map).
    let attach_deadline = Instant::now() + Duration::from_secs(60);
    while !sys::thread_names(tracer.pid)
        .iter()
        .any(|n| n == "tracer-output")
    {
        if let Some(exit) = tracer.try_reap()? {
            bail!(
                "the tracer exited before attaching ({}): {}",
                exit.describe(),
                std::fs::read_to_string(&errors).unwrap_or_default().trim()
            );
        }
        if Instant::now() > attach_deadline {
            bail!("the tracer did not attach within a minute");
        }
        thread::sleep(Duration::from_millis(20));
    }
    let cpu_at_attach = sys::cpu_seconds(tracer.pid);
    let busy_before = sys::machine_busy_ticks();
    let self_before = sys::cpu_seconds(std::process::id());

    let start = Instant::now();
    let until = start + Duration::from_secs(plan.minutes * 60);
    let mut sampler = Sampler {
        pid: tracer.pid,
        start,
        every: plan.sample_every,
        next: start,
        samples: Vec::new(),
        seen: Arc::clone(&seen),
        holders: Vec::new(),
    };
    sampler.maybe(0);
    let (mut total, mut chunks, mut churn_ns, mut churn_cpu_s) = (0u64, 0u64, 0u64, 0.0);
    while Instant::now() < until {
        if let Some(exit) = tracer.try_reap()? {
            bail!(
                "the tracer exited during the soak ({}): {}",
                exit.describe(),
                std::fs::read_to_string(&errors).unwrap_or_default().trim()
            );
        }
        // Size the run to the time left, at the rate seen so far.
        let left = until
            .saturating_duration_since(Instant::now())
            .as_secs_f64();
        let connections = if churn_ns == 0 {
            plan.chunk
        } else {
            let rate = total as f64 / (churn_ns as f64 / 1e9);
            ((rate * left) as u64).clamp(MIN_CHUNK.min(plan.chunk), plan.chunk)
        };
        let args = ChurnArgs {
            connections,
            progress_every: (connections / 100).max(1),
            port,
            ..base.clone()
        };
        let (done, elapsed_ns, cpu_s) = churn_once(tools, &args, total, &mut sampler)?;
        total += done;
        chunks += 1;
        churn_ns += elapsed_ns;
        churn_cpu_s += cpu_s;
    }
    let wall_s = start.elapsed().as_secs_f64();
    // The machine's busy time less ours (tracer, bench, generators): unlike the per-run
    // bench's count, this sees short-lived processes (a test suite, a build) too.
    let background_cpus = match (
        busy_before,
        sys::machine_busy_ticks(),
        cpu_at_attach,
        sys::cpu_seconds(tracer.pid),
        self_before,
        sys::cpu_seconds(std::process::id()),
    ) {
        (Some(b0), Some(b1), Some(t0), Some(t1), Some(s0), Some(s1)) => {
            let machine = b1.saturating_sub(b0) as f64 / sys::clock_ticks();
            ((machine - (t1 - t0) - (s1 - s0) - churn_cpu_s) / wall_s).max(0.0)
        }
        _ => 0.0,
    };

    // Everything was emitted: let the tracer write it out and the counter read it.
    let expected = total * churn::SHAPE.len() as u64 + chunks * churn::LISTENER_SHAPE.len() as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(60);
    let mut last = (seen.load(Ordering::Relaxed), Instant::now());
    while Instant::now() < drain_deadline && last.1.elapsed() < Duration::from_millis(500) {
        thread::sleep(Duration::from_millis(50));
        let now = seen.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    sampler.take(total);
    let hwm = sys::memory(tracer.pid).map(|m| m.hwm_kib);
    let prog = sys::busiest_program(tracer.pid);
    let tracer_pid = tracer.pid;
    let (exit, killed) = tracer.stop(libc::SIGINT, Duration::from_secs(60))?;
    let capture = counter
        .join()
        .map_err(|_| anyhow::anyhow!("the counting thread panicked"))??;
    drop(reserved);

    let churn_s = churn_ns as f64 / 1e9;
    let mut result = RunResult {
        mode: "tracer".into(),
        round: 0,
        connections: total,
        elapsed_s: churn_s,
        conn_per_s: total as f64 / churn_s,
        background_cpus,
        expected: Some(expected),
        ..RunResult::default()
    };
    for holder in &sampler.holders {
        result.notes.push(format!(
            "another process held BPF programs during the soak ({holder}); if they are on \
             this tracepoint they run on every event"
        ));
    }
    if background_cpus > NOISY_CPUS {
        result.notes.push(format!(
            "noisy: other processes used {background_cpus:.2} CPUs during the soak (the \
             machine's busy time less the tracer's, the bench's and the generators')"
        ));
    }
    if killed {
        result
            .notes
            .push("tracer ignored SIGINT and was killed".into());
    } else if !exit.success() {
        result
            .notes
            .push(format!("tracer ended with {}", exit.describe()));
    }
    if !capture.summary_seen {
        result
            .notes
            .push("no summary record: the tracer's loss counters are unknown".into());
    }
    result.cpu_s = cpu_at_attach.map(|at| (exit.cpu_s - at).max(0.0));
    result.peak_rss_kib = Some(hwm.unwrap_or(0).max(exit.maxrss_kib));
    result.rss_samples = std::mem::take(&mut sampler.samples);
    if let Some(p) = prog {
        result.prog_run_cnt = Some(p.run_cnt);
        result.prog_run_time_ns = Some(p.run_time_ns);
        result.kernel_recursion_misses = Some(p.recursion_misses);
        if p.run_cnt > 0 && p.run_time_ns > 0 {
            result.ns_per_run = Some(p.run_time_ns as f64 / p.run_cnt as f64);
        }
    }
    let accounted = capture.captured + capture.reported_lost;
    result.captured = Some(capture.captured);
    result.reported_lost = Some(capture.reported_lost);
    result.reported_recursion_misses = capture.reported_recursion_misses;
    result.reported_buffer_full = Some(capture.reported_buffer_full);
    result.reported_output_dropped = capture.reported_output_dropped;
    result.missing_unreported = Some(expected.saturating_sub(accounted));
    result.extra = Some(capture.captured.saturating_sub(expected));
    result.shape_mismatches = runner::shape_mismatches_of(&capture.shape, total, chunks);
    if let Some(cpu) = result.cpu_s {
        if capture.captured > 0 {
            result.cpu_s_per_m_events = Some(cpu / capture.captured as f64 * 1e6);
        }
    }
    Ok(Soak::judge_timed(
        result,
        Timed {
            minutes: plan.minutes,
            wall_s,
            chunks,
            chunk_connections: plan.chunk,
            port,
            tracer_pid,
            output_bytes: bytes.load(Ordering::Relaxed),
            other_bpf_holders: sampler.holders.clone(),
            ..Timed::default()
        },
    ))
}

/// One run of the generator on the soak's port; returns (completed, elapsed ns, its CPU
/// seconds).
fn churn_once(
    tools: &Tools,
    args: &ChurnArgs,
    before: u64,
    sampler: &mut Sampler,
) -> Result<(u64, u64, f64)> {
    let mut cmd = Command::new(&tools.churn_exe);
    cmd.args(args.to_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let (mut churn_proc, mut churn) = Proc::spawn("churn generator", &mut cmd, libc::SIGKILL)?;
    let mut go = churn.stdin.take().context("churn stdin")?;
    let messages = runner::read_messages(churn.stdout.take().context("churn stdout")?);
    match messages.recv_timeout(Duration::from_secs(10)) {
        Ok(Ok(Message::Ready { port })) if port == args.port => {}
        Ok(Ok(other)) => bail!(
            "churn generator: expected port {}, got {other:?}",
            args.port
        ),
        Ok(Err(e)) => return Err(e),
        Err(_) => bail!("churn generator did not report its port"),
    }
    writeln!(go, "go").context("starting the churn")?;
    drop(go);
    let deadline = runner::run_deadline(args.connections);
    let start = Instant::now();
    let mut progress = 0;
    let done = loop {
        if start.elapsed() > deadline {
            bail!("a soak run did not finish within {deadline:?}");
        }
        match runner::next_churn_event(&messages, Duration::from_millis(250), &mut churn_proc)? {
            ChurnEvent::Progress(p) => progress = p,
            ChurnEvent::Done(n, elapsed_ns) => break (n, elapsed_ns),
            ChurnEvent::Quiet => {}
        }
        sampler.maybe(before + progress);
    };
    let exit = sys::reap_within(churn_proc.pid, Duration::from_secs(30))?;
    churn_proc.reaped = exit.is_some();
    let cpu_s = match exit {
        Some(exit) if exit.success() => exit.cpu_s,
        Some(exit) => bail!("churn generator failed: {}", exit.describe()),
        None => bail!("churn generator did not exit"),
    };
    if done.0 != args.connections {
        bail!(
            "churn generator completed {} of {} connections",
            done.0,
            args.connections
        );
    }
    sampler.maybe(before + done.0);
    Ok((done.0, done.1, cpu_s))
}

/// Samples the tracer's memory every so often, with the connections and events seen then.
struct Sampler {
    pid: u32,
    start: Instant,
    every: Duration,
    next: Instant,
    samples: Vec<RssSample>,
    seen: Arc<AtomicU64>,
    /// Other processes seen holding BPF programs at a sample ("pid N: command line").
    holders: Vec<String>,
}

impl Sampler {
    fn maybe(&mut self, connections: u64) {
        let now = Instant::now();
        if now >= self.next {
            self.take(connections);
            while self.next <= now {
                self.next += self.every;
            }
        }
    }

    fn take(&mut self, connections: u64) {
        let Some(mem) = sys::memory(self.pid) else {
            return;
        };
        let sample = RssSample {
            t_s: self.start.elapsed().as_secs_f64(),
            connections,
            rss_kib: mem.rss_kib,
            hwm_kib: Some(mem.hwm_kib),
            anon_kib: mem.anon_kib,
            events: Some(self.seen.load(Ordering::Relaxed)),
        };
        for (pid, cmdline) in sys::bpf_program_holders(&[self.pid]) {
            let holder = format!("pid {pid}: {cmdline}");
            if !self.holders.contains(&holder) {
                eprintln!("bench: soak: another process holds BPF programs ({holder})");
                self.holders.push(holder);
            }
        }
        eprintln!(
            "bench: soak {:>4.0} s: {:>10} connections, {:>11} events, RSS {:.1} MiB (anon \
             {:.1}, peak {:.1})",
            sample.t_s,
            connections,
            sample.events.unwrap_or(0),
            mem.rss_kib as f64 / 1024.0,
            mem.anon_kib.unwrap_or(0) as f64 / 1024.0,
            mem.hwm_kib as f64 / 1024.0
        );
        self.samples.push(sample);
    }
}

/// Counts the bytes read through it.
struct CountingReader<R> {
    inner: R,
    bytes: Arc<AtomicU64>,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
