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
    fs,
    io::BufReader,
    net::{Ipv4Addr, SocketAddr},
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    churn::ChurnArgs,
    count::{self, Capture},
    generator::Generator,
    observer::{self, Scratch, Stopped},
    report::{Soak, Timed},
    runner::{RssSample, RunResult, Tools},
    sys::{self, Proc},
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

/// Runs the soak and judges it: the tracer started, the churn until the time is up, the
/// tracer stopped and its output's count read.
pub fn run(tools: &Tools, base: &ChurnArgs, plan: &Plan) -> Result<Soak> {
    if plan.minutes == 0 || plan.chunk == 0 {
        bail!("--soak-minutes and --soak-chunk must be positive");
    }
    let mut tracer = SoakTracer::start(tools, plan)?;
    let churned = tracer.churn(tools, base, plan)?;
    tracer.finish(churned, plan)
}

/// The one tracer of the soak, its output counted on a thread as it streams.
struct SoakTracer {
    /// The port, reserved on the host for the whole soak (the tracepoint is global: a host
    /// socket on this port would be counted too).
    reserved: socket2::Socket,
    port: u16,
    proc: Proc,
    errors: PathBuf,
    _files: Scratch,
    counter: JoinHandle<Result<Capture>>,
    /// Transitions on the port counted so far, and bytes read from the pipe.
    seen: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    cpu_at_attach: Option<f64>,
}

/// What the churn of the soak did.
struct Churned {
    connections: u64,
    /// Runs of the generator.
    chunks: u64,
    churn_ns: u64,
    wall_s: f64,
    background_cpus: f64,
    sampler: Sampler,
}

impl SoakTracer {
    /// Reserves the port, starts the tracer on it with its stdout on a pipe to a counting
    /// thread, and waits until it is attached.
    fn start(tools: &Tools, plan: &Plan) -> Result<Self> {
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
        let files = Scratch {
            paths: vec![errors.clone()],
            keep: tools.keep,
        };
        let err =
            fs::File::create(&errors).with_context(|| format!("creating {}", errors.display()))?;
        // Its own limit, past which it stops by itself: the soak plus a generous margin.
        let limit_s = plan.minutes * 60 + 600;
        let mut cmd = Command::new(&tools.tracer);
        cmd.args(["--json", "-p", &port.to_string(), "--duration"])
            .arg(format!("{limit_s}s"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err);
        let (mut proc, mut child) = Proc::spawn("tracer", &mut cmd, libc::SIGTERM)?;
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
                    let reader = BufReader::with_capacity(1 << 20, reader);
                    count::count_tracer_stream(reader, port, Some(&seen))
                })?
        };
        observer::wait_attached(&mut proc, &errors, observer::tracer_attached)?;
        Ok(Self {
            cpu_at_attach: sys::cpu_seconds_reaped(proc.pid),
            reserved,
            port,
            proc,
            errors,
            _files: files,
            counter,
            seen,
            bytes,
        })
    }

    /// Runs the generator again and again on the soak's port until the time is up, the
    /// last run sized to end about on time.
    fn churn(&mut self, tools: &Tools, base: &ChurnArgs, plan: &Plan) -> Result<Churned> {
        let busy_before = sys::machine_busy_ticks();
        let self_before = sys::cpu_seconds(std::process::id());
        let tracer_before = sys::cpu_seconds(self.proc.pid);
        let start = Instant::now();
        let until = start + Duration::from_secs(plan.minutes * 60);
        let mut sampler = Sampler {
            pid: self.proc.pid,
            start,
            every: plan.sample_every,
            next: start,
            samples: Vec::new(),
            seen: Arc::clone(&self.seen),
            holders: Vec::new(),
        };
        sampler.maybe(0);
        let (mut total, mut chunks, mut churn_ns, mut churn_cpu_s) = (0u64, 0u64, 0u64, 0.0);
        while Instant::now() < until {
            if let Some(exit) = self.proc.try_reap()? {
                bail!(
                    "the tracer exited during the soak ({}): {}",
                    exit.describe(),
                    fs::read_to_string(&self.errors).unwrap_or_default().trim()
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
                port: self.port,
                ..base.clone()
            };
            let generator = Generator::start(&tools.churn_exe, &args)?;
            let done = generator.run(Duration::from_millis(250), |progress| {
                sampler.maybe(total + progress);
            })?;
            total += done.connections;
            chunks += 1;
            churn_ns += done.elapsed_ns;
            churn_cpu_s += done.cpu_s;
        }
        let wall_s = start.elapsed().as_secs_f64();
        // The machine's busy time less ours (tracer, bench, generators): unlike the per-run
        // bench's count, this sees short-lived processes (a test suite, a build) too.
        let background_cpus = match (
            busy_before,
            sys::machine_busy_ticks(),
            tracer_before,
            sys::cpu_seconds(self.proc.pid),
            self_before,
            sys::cpu_seconds(std::process::id()),
        ) {
            (Some(b0), Some(b1), Some(t0), Some(t1), Some(s0), Some(s1)) => {
                let machine = b1.saturating_sub(b0) as f64 / sys::clock_ticks();
                ((machine - (t1 - t0) - (s1 - s0) - churn_cpu_s) / wall_s).max(0.0)
            }
            _ => 0.0,
        };
        Ok(Churned {
            connections: total,
            chunks,
            churn_ns,
            wall_s,
            background_cpus,
            sampler,
        })
    }

    /// Lets the tracer write everything out and the counter read it, stops the tracer, and
    /// judges the soak.
    fn finish(mut self, churned: Churned, plan: &Plan) -> Result<Soak> {
        let drain_deadline = Instant::now() + Duration::from_secs(60);
        let mut last = (self.seen.load(Ordering::Relaxed), Instant::now());
        while Instant::now() < drain_deadline && last.1.elapsed() < Duration::from_millis(500) {
            thread::sleep(Duration::from_millis(50));
            let now = self.seen.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            }
        }
        let Churned {
            connections,
            chunks,
            mut sampler,
            ..
        } = churned;
        sampler.take(connections);
        let tracer_pid = self.proc.pid;
        let stopped = Stopped::stop(&mut self.proc)?;
        let capture = self
            .counter
            .join()
            .map_err(|_| anyhow::anyhow!("the counting thread panicked"))??;
        drop(self.reserved);

        let mut result = RunResult::new(
            "tracer",
            0,
            connections,
            churned.churn_ns,
            churned.background_cpus,
        );
        for holder in &sampler.holders {
            result.note_holder(holder);
        }
        result.rss_samples = std::mem::take(&mut sampler.samples);
        result.account(&stopped, self.cpu_at_attach, &capture, chunks);
        let timed = Timed {
            minutes: plan.minutes,
            wall_s: churned.wall_s,
            chunks,
            chunk_connections: plan.chunk,
            port: self.port,
            tracer_pid,
            output_bytes: self.bytes.load(Ordering::Relaxed),
            other_bpf_holders: sampler.holders,
            ..Timed::default()
        };
        Ok(Soak::judge_timed(result, timed))
    }
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
