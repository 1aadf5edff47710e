//! The observer of a run (our tracer in one of its configurations, tcpstates or bpftrace,
//! writing to a file or to a Python reader): started with the generator's port, waited for
//! until attached, stopped with SIGINT after the churn, and what it used and wrote read back.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{
    count::{self, Capture},
    runner::{Mode, Tools},
    sys::{self, Exit, Memory, Proc, ProgStats},
};

/// A running observer and the files it writes.
pub struct Observer {
    pub proc: Proc,
    mode: Mode,
    port: u16,
    output: PathBuf,
    errors: PathBuf,
    /// The export file of [`Mode::TracerExport`].
    export: Option<PathBuf>,
    /// The Python reader of the Python modes, fed by the tracer's stdout.
    reader: Option<Proc>,
    /// The scraper of [`Mode::TracerScraped`].
    scraper: Option<Scraper>,
    _files: Scratch,
}

impl Observer {
    /// The process ids of the observer and of its Python reader, if any: the load they put
    /// on the machine is theirs, not a neighbour's.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.proc.pid)
            .chain(self.reader.as_ref().map(|r| r.pid))
            .collect()
    }
}

/// What is read from an observer as it stops.
pub struct Stopped {
    pub name: &'static str,
    pub exit: Exit,
    /// It ignored SIGINT and was killed.
    pub killed: bool,
    /// Its memory just before the stop.
    pub memory: Option<Memory>,
    /// Its busiest BPF program's counters just before the stop.
    pub prog: Option<ProgStats>,
    /// Its CPU time (user + system, seconds) just before the stop.
    pub cpu_s: Option<f64>,
}

impl Stopped {
    /// Reads the memory and BPF counters of a process, then stops it with SIGINT (a tracer
    /// then writes its summary), SIGKILL a minute later.
    pub fn stop(proc: &mut Proc) -> Result<Self> {
        let memory = sys::memory(proc.pid);
        let prog = sys::busiest_program(proc.pid);
        let cpu_s = sys::cpu_seconds_reaped(proc.pid);
        let (exit, killed) = proc.stop(libc::SIGINT, Duration::from_secs(60))?;
        Ok(Self {
            name: proc.name,
            exit,
            killed,
            memory,
            prog,
            cpu_s,
        })
    }
}

impl Observer {
    /// Starts the observer of `mode` on `port` and waits until it is attached (`None` for
    /// no observer). It stops by itself past `limit`.
    pub fn start(
        tools: &Tools,
        mode: Mode,
        port: u16,
        round: usize,
        limit: Duration,
    ) -> Result<Option<Self>> {
        let stem = format!("{}-r{round}-{port}", mode.name());
        let file = |ext: &str| tools.dir.join(format!("{stem}.{ext}"));
        let (output, errors) = (file("out"), file("err"));
        let export = (mode == Mode::TracerExport).then(|| file("export"));
        let mut files = Scratch {
            paths: vec![output.clone(), errors.clone()],
            keep: tools.keep,
        };
        files.paths.extend(export.clone());
        let metrics = (mode == Mode::TracerScraped)
            .then(free_loopback_addr)
            .transpose()?;
        let (name, mut cmd) = match mode {
            Mode::None => return Ok(None),
            _ if mode.is_tracer() => {
                let mut cmd = Command::new(&tools.tracer);
                cmd.args(["--json", "-p", &port.to_string(), "--duration"])
                    .arg(format!("{}s", limit.as_secs()));
                if mode == Mode::TracerTracepoint {
                    cmd.args(["--hook", "tracepoint"]);
                }
                if mode == Mode::TracerTrackReads {
                    cmd.arg("--track-reads");
                }
                if mode == Mode::TracerTimelines || mode.is_python() {
                    cmd.arg("--timelines");
                }
                if let Some(path) = &export {
                    cmd.arg("--export").arg(path);
                }
                if let Some(addr) = metrics {
                    cmd.arg("--metrics").arg(addr.to_string());
                }
                ("tracer", cmd)
            }
            Mode::Tcpstates => {
                let binary = tools.tcpstates.as_ref().context("no tcpstates")?;
                ("tcpstates", Command::new(binary))
            }
            Mode::Bpftrace | Mode::BpftraceCount => {
                let peer = tools.peer.as_ref().context("no bpftrace")?;
                let script = if mode == Mode::Bpftrace {
                    &peer.stream_script
                } else {
                    &peer.count_script
                };
                let mut cmd = Command::new(&peer.binary);
                cmd.arg(script).arg(port.to_string());
                ("bpftrace", cmd)
            }
            _ => unreachable!("{mode:?}: every other mode is our tracer (Mode::is_tracer)"),
        };
        let out =
            fs::File::create(&output).with_context(|| format!("creating {}", output.display()))?;
        let err =
            fs::File::create(&errors).with_context(|| format!("creating {}", errors.display()))?;
        cmd.stdin(Stdio::null()).stderr(err);
        if mode.is_python() {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(out.try_clone()?);
        }
        let (mut proc, mut child) = Proc::spawn(name, &mut cmd, libc::SIGTERM)?;
        let reader = match (mode, child.stdout.take()) {
            (mode, Some(pipe)) if mode.is_python() => {
                let (python, script) = tools.python.as_ref().context("no python")?;
                let mut reader = Command::new(python);
                reader
                    .arg(script)
                    .arg(port.to_string())
                    .stdin(pipe)
                    .stdout(out)
                    .stderr(Stdio::inherit());
                let (reader, _child) = Proc::spawn("python reader", &mut reader, libc::SIGTERM)?;
                Some(reader)
            }
            _ => None,
        };
        // Our tracer starts its output thread after attaching and filling the port map; the
        // bpftrace scripts print READY from BEGIN, which runs once every probe is attached;
        // tcpstates buffers its header, so it is attached once it holds a BPF program.
        wait_attached(&mut proc, &errors, |pid| match mode {
            _ if mode.is_tracer() => tracer_attached(pid),
            Mode::Tcpstates => {
                let held = sys::busiest_program(pid).is_some();
                if held {
                    // Between loading and attaching: give it the moment it needs.
                    std::thread::sleep(Duration::from_millis(200));
                }
                held
            }
            _ => fs::read_to_string(&output).is_ok_and(|t| t.lines().any(|l| l == "READY")),
        })?;
        let scraper = metrics.map(Scraper::start);
        Ok(Some(Self {
            proc,
            mode,
            port,
            output,
            errors,
            export,
            reader,
            scraper,
            _files: files,
        }))
    }

    /// After the churn: lets the observer write everything out, stops it and counts what it
    /// wrote.
    pub fn finish(mut self) -> Result<(Stopped, Capture)> {
        if self.reader.is_some() {
            // The reader writes only at the end: wait until neither process works.
            wait_idle(
                &[self.proc.pid, self.reader.as_ref().map_or(0, |r| r.pid)],
                Duration::from_millis(500),
                Duration::from_secs(120),
            );
        } else if self.mode.streams() {
            wait_quiet(
                &self.output,
                Duration::from_millis(300),
                Duration::from_secs(60),
            );
        } else {
            std::thread::sleep(Duration::from_millis(300));
        }
        let scrape_note = self.scraper.take().map(Scraper::stop);
        let stopped = Stopped::stop(&mut self.proc)?;
        if let Some(mut reader) = self.reader.take() {
            // The tracer's exit closed the pipe: the reader writes its counts and ends.
            match reader.reap_within(Duration::from_secs(60))? {
                Some(exit) if exit.success() => {}
                Some(exit) => bail!("the Python reader ended with {}", exit.describe()),
                None => bail!("the Python reader did not end within a minute of the tracer"),
            }
        }
        let mut capture = count::capture(
            self.mode,
            &self.output,
            &self.errors,
            self.export.as_deref(),
            self.port,
        )?;
        capture.notes.extend(scrape_note);
        Ok((stopped, capture))
    }
}

/// True once our tracer is attached: it starts its output thread after attaching and filling
/// the port map.
pub fn tracer_attached(pid: u32) -> bool {
    sys::thread_names(pid).iter().any(|n| n == "tracer-output")
}

/// Waits up to a minute until `attached(pid)`; fails if the process exits first, with what
/// it wrote to `errors`.
pub fn wait_attached(proc: &mut Proc, errors: &Path, attached: impl Fn(u32) -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !attached(proc.pid) {
        if let Some(exit) = proc.try_reap()? {
            bail!(
                "{} exited before attaching ({}): {}",
                proc.name,
                exit.describe(),
                fs::read_to_string(errors).unwrap_or_default().trim()
            );
        }
        if Instant::now() > deadline {
            bail!("{} did not attach within a minute", proc.name);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Waits until the processes have used no CPU for `quiet`, at most `limit`.
fn wait_idle(pids: &[u32], quiet: Duration, limit: Duration) {
    let start = Instant::now();
    let used = || -> f64 { pids.iter().filter_map(|&p| sys::cpu_seconds(p)).sum() };
    let mut last = used();
    let mut since = Instant::now();
    while start.elapsed() < limit && since.elapsed() < quiet {
        std::thread::sleep(Duration::from_millis(100));
        let now = used();
        if now > last {
            last = now;
            since = Instant::now();
        }
    }
}

/// A free loopback address for `--metrics` (bound and released: the tracer binds it next).
fn free_loopback_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Scrapes `/metrics` once a second, as Prometheus does, until stopped.
struct Scraper {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Vec<Duration>, u64)>,
}

impl Scraper {
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let (mut answered, mut failed) = (Vec::new(), 0);
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                if scrape(addr).is_ok() {
                    answered.push(started.elapsed());
                } else {
                    failed += 1;
                }
                std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
            }
            (answered, failed)
        });
        Self { stop, thread }
    }

    /// Stops it and says how the scrapes went: how many, and how long they took to answer
    /// (median and slowest).
    fn stop(self) -> String {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok((mut answered, failed)) => {
                answered.sort_unstable();
                let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
                format!(
                    "scraped /metrics {} times ({failed} failed), median {:.1} ms, slowest {:.1} ms",
                    answered.len(),
                    ms(answered.get(answered.len() / 2)),
                    ms(answered.last()),
                )
            }
            Err(_) => "the scraper panicked".into(),
        }
    }
}

/// One `GET /metrics`, read to the end.
fn scrape(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body)?;
    if body.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other("not 200"))
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

/// Output files of an observer: removed when the run ends, however it ends, unless kept.
pub struct Scratch {
    pub paths: Vec<PathBuf>,
    pub keep: bool,
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
