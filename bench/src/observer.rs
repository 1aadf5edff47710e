//! The observer of a run (our tracer or bpftrace, writing to a file): started with the
//! generator's port, waited for until attached, stopped with SIGINT after the churn, and what
//! it used and wrote read back.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
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
    _files: Scratch,
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
}

impl Stopped {
    /// Reads the memory and BPF counters of a process, then stops it with SIGINT (a tracer
    /// then writes its summary), SIGKILL a minute later.
    pub fn stop(proc: &mut Proc) -> Result<Self> {
        let memory = sys::memory(proc.pid);
        let prog = sys::busiest_program(proc.pid);
        let (exit, killed) = proc.stop(libc::SIGINT, Duration::from_secs(60))?;
        Ok(Self {
            name: proc.name,
            exit,
            killed,
            memory,
            prog,
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
        let (name, mut cmd) = match mode {
            Mode::None => return Ok(None),
            Mode::Tracer => {
                let mut cmd = Command::new(&tools.tracer);
                cmd.args(["--json", "-p", &port.to_string(), "--duration"])
                    .arg(format!("{}s", limit.as_secs()));
                ("tracer", cmd)
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
        };
        let stem = format!("{}-r{round}-{port}", mode.name());
        let (output, errors) = (
            tools.dir.join(format!("{stem}.out")),
            tools.dir.join(format!("{stem}.err")),
        );
        let files = Scratch {
            paths: vec![output.clone(), errors.clone()],
            keep: tools.keep,
        };
        let out =
            fs::File::create(&output).with_context(|| format!("creating {}", output.display()))?;
        let err =
            fs::File::create(&errors).with_context(|| format!("creating {}", errors.display()))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let (mut proc, _child) = Proc::spawn(name, &mut cmd, libc::SIGTERM)?;
        // Our tracer starts its output thread after attaching and filling the port map; the
        // bpftrace scripts print READY from BEGIN, which runs once every probe is attached.
        wait_attached(&mut proc, &errors, |pid| match mode {
            Mode::Tracer => tracer_attached(pid),
            _ => fs::read_to_string(&output).is_ok_and(|t| t.lines().any(|l| l == "READY")),
        })?;
        Ok(Some(Self {
            proc,
            mode,
            port,
            output,
            errors,
            _files: files,
        }))
    }

    /// After the churn: lets the observer write everything out, stops it and counts what it
    /// wrote.
    pub fn finish(mut self) -> Result<(Stopped, Capture)> {
        if self.mode.streams() {
            wait_quiet(
                &self.output,
                Duration::from_millis(300),
                Duration::from_secs(60),
            );
        } else {
            std::thread::sleep(Duration::from_millis(300));
        }
        let stopped = Stopped::stop(&mut self.proc)?;
        let capture = count::capture(self.mode, &self.output, &self.errors, self.port)?;
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
