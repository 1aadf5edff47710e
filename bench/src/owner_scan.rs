//! The owner-scan bench (`--owner-scan`): the tracer's socket table scans with many sockets
//! held. The `scan-holder` program (see [`crate::holder`]) opens `--scan-connections` established loopback
//! connections in a private namespace and holds both ends; the tracer starts as users run it
//! (`--json -v --close-wait-threshold 1s`, to a file); then the holder's clients close
//! `--scan-close-wait` of them, leaving the server ends in CLOSE_WAIT, while a side churn keeps
//! transitions flowing. Read back: the `close_wait` alerts (count, owner, lateness past the
//! threshold), the summary's ring buffer losses, each scan's wall and CPU time from the `-v`
//! lines (`socket table scan: N sockets in M namespaces in X ms (Y ms CPU), fd walk: W`) and the tracer's
//! CPU.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    process::{ChildStdin, Command, Stdio},
    sync::mpsc::{self, Receiver},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::{
    holder::Message,
    observer::{self, Scratch, Stopped},
    report::Target,
    runner::Tools,
    sys::Proc,
    util::sibling_program,
};

/// The CLOSE_WAIT threshold the tracer runs with.
pub const THRESHOLD: Duration = Duration::from_secs(1);
/// An alert is on time when it comes at most this long after its socket crossed the threshold.
pub const ON_TIME: Duration = Duration::from_secs(1);

/// What the owner-scan bench measured.
#[derive(Clone, Debug, Serialize)]
pub struct OwnerScan {
    /// Established connections held (both ends in the holder).
    pub connections: u64,
    /// Seconds the holder took to open them.
    pub open_s: f64,
    /// Worker processes holding the connections the holder's RLIMIT_NOFILE left over.
    pub workers: u64,
    /// Client ends closed: server ends left in CLOSE_WAIT.
    pub close_wait: u64,
    pub holder_pid: u32,
    /// `close_wait` records for the held listener's port.
    pub alerts: u64,
    /// Of those, the ones naming the holder as owner.
    pub alerts_owned: u64,
    /// Lateness of each alert as the tracer dates it: `age_ms` minus the threshold, ms,
    /// sorted. The report's time is when it became due (a 100 ms tick), before the socket
    /// tables were read.
    pub late_ms: Vec<i64>,
    /// Arrival of each alert: when its line reached the output file (seen by polling every
    /// 10 ms) less when its socket crossed the threshold, ms, sorted.
    pub arrival_ms: Vec<i64>,
    /// The summary's `lost_ringbuf` (`None`: no summary).
    pub lost_ringbuf: Option<u64>,
    /// Each scan's wall and CPU time, ms, and sockets read, in order.
    pub scans: Vec<Scan>,
    /// The tracer's CPU from start to exit (wait4), s.
    pub tracer_cpu_s: f64,
    /// The tracer's wall time from start to exit, s.
    pub tracer_wall_s: f64,
    /// Short connections the side churn made while the alerts were due.
    pub churned: u64,
}

/// One `socket table scan` line of the tracer's `-v` log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scan {
    pub sockets: u64,
    pub namespaces: u64,
    pub wall_ms: f64,
    pub cpu_ms: f64,
    /// How the descriptors were found: `bpf iter/task_file` or `/proc/*/fd` (empty from a
    /// tracer that did not say).
    pub walk: String,
}

impl Scan {
    /// Parses `... socket table scan: N sockets in M namespaces in X ms (Y ms CPU), fd walk: W`.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.split_once("socket table scan: ")?.1;
        let (counts, walk) = rest.split_once(", fd walk: ").unwrap_or((rest, ""));
        let words: Vec<&str> = counts
            .split_whitespace()
            .map(|w| w.trim_start_matches('('))
            .collect();
        match words[..] {
            [n, "sockets", "in", m, "namespaces", "in", x, "ms", y, "ms", "CPU)"] => Some(Self {
                sockets: n.parse().ok()?,
                namespaces: m.parse().ok()?,
                wall_ms: x.parse().ok()?,
                cpu_ms: y.parse().ok()?,
                walk: walk.trim().to_owned(),
            }),
            _ => None,
        }
    }
}

/// Runs the owner-scan bench.
pub fn run(tools: &Tools, connections: u64, close_wait: u64, churn_rate: u64) -> Result<OwnerScan> {
    let mut holder_cmd = Command::new(sibling_program("scan-holder")?);
    holder_cmd
        .args(["--connections", &connections.to_string()])
        .args(["--close-wait", &close_wait.to_string()])
        .args(["--churn-rate", &churn_rate.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let (mut holder, mut child) = Proc::spawn("holder", &mut holder_cmd, libc::SIGKILL)?;
    let mut to_holder = child.stdin.take().context("the holder's stdin")?;
    let from_holder = lines(child.stdout.take().context("the holder's stdout")?);
    let next = |what: &str, limit: Duration| -> Result<Message> {
        let line = from_holder.recv_timeout(limit).map_err(|_| {
            anyhow::anyhow!("the holder did not say {what} within {limit:?} (its errors are above)")
        })?;
        serde_json::from_str(&line).with_context(|| format!("the holder said {line:?}"))
    };
    let Message::Ready { port, .. } = next("ready", Duration::from_secs(30))? else {
        bail!("the holder did not start with its ports");
    };

    eprintln!("bench: owner scan: opening {connections} connections in the holder");
    send(&mut to_holder, "open")?;
    let Message::Opened {
        elapsed_ns,
        workers,
        ..
    } = next("opened", Duration::from_secs(600))?
    else {
        bail!("the holder did not open its connections");
    };
    let open_s = elapsed_ns as f64 / 1e9;
    eprintln!(
        "bench: owner scan: {connections} connections open in {open_s:.1} s \
         (held by the holder and {workers} workers)"
    );

    let stem = format!("owner-scan-{port}");
    let (output, errors) = (
        tools.dir.join(format!("{stem}.out")),
        tools.dir.join(format!("{stem}.err")),
    );
    let _files = Scratch {
        paths: vec![output.clone(), errors.clone()],
        keep: tools.keep,
    };
    let mut tracer_cmd = Command::new(&tools.tracer);
    tracer_cmd
        .args(["--json", "-v", "--close-wait-threshold"])
        .arg(format!("{}ms", THRESHOLD.as_millis()))
        .args(["--duration", "600s"])
        .stdin(Stdio::null())
        .stdout(
            fs::File::create(&output).with_context(|| format!("creating {}", output.display()))?,
        )
        .stderr(
            fs::File::create(&errors).with_context(|| format!("creating {}", errors.display()))?,
        );
    let started = Instant::now();
    let (mut tracer, _tracer_child) = Proc::spawn("tracer", &mut tracer_cmd, libc::SIGTERM)?;
    observer::wait_attached(&mut tracer, &errors, observer::tracer_attached)?;
    // Past the start-up scan, so the closes below are seen as transitions.
    std::thread::sleep(Duration::from_secs(1));

    send(&mut to_holder, "close")?;
    let Message::Closed { .. } = next("closed", Duration::from_secs(30))? else {
        bail!("the holder did not close its clients");
    };
    // The alerts are due a threshold later: watch them arrive in the file (the time each line
    // is first seen is its arrival), at most a minute past the threshold.
    let mut watch = Tail::new(&output, port);
    let deadline = Instant::now() + THRESHOLD + Duration::from_secs(60);
    while watch.alerts.len() < close_wait as usize && Instant::now() < deadline {
        watch.poll();
        std::thread::sleep(POLL);
    }
    // A little longer, so a late straggler or a duplicate would show.
    let linger = Instant::now() + Duration::from_secs(2);
    while Instant::now() < linger {
        watch.poll();
        std::thread::sleep(POLL);
    }
    // The tracer stops before the holder ends, so closing the held sockets is not measured.
    let stopped = Stopped::stop(&mut tracer)?;
    let tracer_wall_s = started.elapsed().as_secs_f64();
    send(&mut to_holder, "end")?;
    let Message::Done { churned } = next("done", Duration::from_secs(30))? else {
        bail!("the holder did not stop its churn");
    };
    let holder_pid = holder.pid;
    if holder.reap_within(Duration::from_secs(60))?.is_none() {
        bail!("the holder did not exit within a minute of `end`");
    }
    if !stopped.exit.success() {
        bail!(
            "the tracer ended with {}: {}",
            stopped.exit.describe(),
            fs::read_to_string(&errors).unwrap_or_default().trim()
        );
    }

    watch.poll();
    let found = watch.alerts;
    let threshold_ms = THRESHOLD.as_millis() as i64;
    let mut late_ms: Vec<i64> = found
        .iter()
        .filter_map(|(a, _)| a["age_ms"].as_i64())
        .map(|age| age - threshold_ms)
        .collect();
    late_ms.sort_unstable();
    // Crossing: the report's time less its age past the threshold.
    let mut arrival_ms: Vec<i64> = found
        .iter()
        .filter_map(|(a, seen_ns)| {
            let crossed_ns =
                a["ts_ns"].as_i64()? - (a["age_ms"].as_i64()? - threshold_ms) * 1_000_000;
            Some((*seen_ns as i64 - crossed_ns) / 1_000_000)
        })
        .collect();
    arrival_ms.sort_unstable();
    let alerts_owned = found
        .iter()
        .filter(|(a, _)| a["pid"].as_u64() == Some(u64::from(holder_pid)))
        .count() as u64;
    let text = fs::read_to_string(&output).unwrap_or_default();
    let lost_ringbuf = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["type"] == "summary")
        .and_then(|v| v["lost_ringbuf"].as_u64());
    let scans = fs::read_to_string(&errors)
        .unwrap_or_default()
        .lines()
        .filter_map(Scan::parse)
        .collect();
    Ok(OwnerScan {
        connections,
        open_s,
        workers,
        close_wait,
        holder_pid,
        alerts: found.len() as u64,
        alerts_owned,
        late_ms,
        arrival_ms,
        lost_ringbuf,
        scans,
        tracer_cpu_s: stopped.exit.cpu_s,
        tracer_wall_s,
        churned,
    })
}

/// How often the output is read for new alerts (the arrival times' resolution).
const POLL: Duration = Duration::from_millis(10);

/// The tracer's output file, read as it grows: the `close_wait` records for local port
/// `port`, each with the `CLOCK_MONOTONIC` time its line was first seen.
struct Tail {
    file: Option<fs::File>,
    path: std::path::PathBuf,
    port: u16,
    partial: Vec<u8>,
    alerts: Vec<(serde_json::Value, u64)>,
}

impl Tail {
    fn new(path: &std::path::Path, port: u16) -> Self {
        Self {
            file: None,
            path: path.to_owned(),
            port,
            partial: Vec::new(),
            alerts: Vec::new(),
        }
    }

    fn poll(&mut self) {
        use std::io::Read as _;
        if self.file.is_none() {
            self.file = fs::File::open(&self.path).ok();
        }
        let Some(file) = &mut self.file else { return };
        let mut chunk = Vec::new();
        if file.read_to_end(&mut chunk).is_err() || chunk.is_empty() {
            return;
        }
        let seen = monotonic_ns();
        self.partial.extend_from_slice(&chunk);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        for line in complete.split(|&b| b == b'\n') {
            if !line.windows(12).any(|w| w == b"\"close_wait\"") {
                continue;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            if v["type"] == "close_wait" && v["lport"].as_u64() == Some(u64::from(self.port)) {
                self.alerts.push((v, seen));
            }
        }
    }
}

/// `CLOCK_MONOTONIC` now, ns: the clock of the tracer's `ts_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The lines a child writes, through a channel (so reading them can time out).
fn lines(stdout: std::process::ChildStdout) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn send(stdin: &mut ChildStdin, command: &str) -> Result<()> {
    writeln!(stdin, "{command}").with_context(|| format!("telling the holder `{command}`"))
}

impl OwnerScan {
    /// The `q` quantile of sorted `values` (nearest rank).
    fn quantile(values: &[i64], q: f64) -> Option<i64> {
        let n = values.len();
        (n > 0).then(|| values[((n as f64 * q).ceil() as usize).clamp(1, n) - 1])
    }

    /// The table printed and kept in the results.
    pub fn table(&self) -> String {
        let ms = |v: Option<i64>| v.map_or_else(|| "–".into(), |v| format!("{v} ms"));
        let (wall, cpu): (Vec<f64>, Vec<f64>) =
            self.scans.iter().map(|s| (s.wall_ms, s.cpu_ms)).unzip();
        let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let sum = |v: &[f64]| v.iter().sum::<f64>();
        let rows = [
            (
                "held connections (both ends in the same process)",
                format!(
                    "{} in the holder and {} workers (opened in {:.1} s)",
                    self.connections, self.workers, self.open_s
                ),
            ),
            (
                "close_wait alerts (owner = holder pid)",
                format!(
                    "{} of {} ({} name pid {})",
                    self.alerts, self.close_wait, self.alerts_owned, self.holder_pid
                ),
            ),
            (
                "alert arrival after crossing the 1 s threshold: p50 / max",
                format!(
                    "{} / {}",
                    ms(Self::quantile(&self.arrival_ms, 0.5)),
                    ms(self.arrival_ms.last().copied())
                ),
            ),
            (
                "alert age_ms past the threshold (its due tick): p50 / max",
                format!(
                    "{} / {}",
                    ms(Self::quantile(&self.late_ms, 0.5)),
                    ms(self.late_ms.last().copied())
                ),
            ),
            (
                "ring buffer losses (summary lost_ringbuf)",
                self.lost_ringbuf
                    .map_or_else(|| "no summary".into(), |l| l.to_string()),
            ),
            ("socket table scans: count", self.scans.len().to_string()),
            (
                "descriptor walk",
                self.scans
                    .last()
                    .map_or_else(|| "no scan".into(), |s| s.walk.clone()),
            ),
            (
                "scan wall time: max / total",
                format!("{:.1} ms / {:.1} ms", max(&wall), sum(&wall)),
            ),
            (
                "scan CPU time: max / total",
                format!("{:.1} ms / {:.1} ms", max(&cpu), sum(&cpu)),
            ),
            (
                "tracer CPU (start to exit)",
                format!(
                    "{:.2} s over {:.1} s",
                    self.tracer_cpu_s, self.tracer_wall_s
                ),
            ),
            (
                "side churn while the alerts were due",
                format!("{} connections", self.churned),
            ),
        ];
        let mut out = String::from("| owner scan | measured |\n|---|---|\n");
        for (what, value) in rows {
            out.push_str(&format!("| {what} | {value} |\n"));
        }
        out.push_str("\nscans (sockets read, namespaces, wall ms, CPU ms):");
        for s in &self.scans {
            out.push_str(&format!(
                " [{} {} {:.1} {:.1}]",
                s.sockets, s.namespaces, s.wall_ms, s.cpu_ms
            ));
        }
        out.push('\n');
        out
    }

    /// The targets, judged.
    pub fn targets(&self) -> Vec<Target> {
        let worst = self.arrival_ms.last().copied();
        vec![
            Target {
                target: format!(
                    "owner scan, {} held connections: all {} CLOSE_WAIT alerts, owned by the holder",
                    self.connections, self.close_wait
                ),
                measured: format!("{} alerts, {} owned", self.alerts, self.alerts_owned),
                met: Some(self.alerts == self.close_wait && self.alerts_owned == self.close_wait),
                limit: None,
            },
            Target {
                target: "owner scan: every alert written within 1 s of crossing its threshold"
                    .into(),
                measured: worst.map_or_else(
                    || "no alerts".into(),
                    |w| format!("latest arrived {w} ms after crossing"),
                ),
                met: worst.map(|w| w <= ON_TIME.as_millis() as i64),
                limit: None,
            },
            Target {
                target: "owner scan: 0 ring buffer losses during the scans".into(),
                measured: self
                    .lost_ringbuf
                    .map_or_else(|| "no summary".into(), |l| format!("{l} lost")),
                met: self.lost_ringbuf.map(|l| l == 0),
                limit: None,
            },
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_scan_line() {
        let line = "[2026-11-30T08:00:00Z INFO  tracer::app] socket table scan: 101 sockets in \
                    3 namespaces in 412.5 ms (380.2 ms CPU), fd walk: bpf iter/task_file";
        assert_eq!(
            Scan::parse(line),
            Some(Scan {
                sockets: 101,
                namespaces: 3,
                wall_ms: 412.5,
                cpu_ms: 380.2,
                walk: "bpf iter/task_file".into(),
            })
        );
        assert_eq!(Scan::parse("socket table scan failed: oops"), None);
    }

    #[test]
    fn lateness_quantiles() {
        let scan = OwnerScan {
            connections: 1,
            open_s: 0.0,
            workers: 0,
            close_wait: 3,
            holder_pid: 1,
            alerts: 3,
            alerts_owned: 3,
            late_ms: vec![10, 20, 90],
            arrival_ms: vec![10, 20, 900],
            lost_ringbuf: Some(0),
            scans: Vec::new(),
            tracer_cpu_s: 0.0,
            tracer_wall_s: 0.0,
            churned: 0,
        };
        assert_eq!(OwnerScan::quantile(&scan.arrival_ms, 0.5), Some(20));
        assert!(scan.targets().iter().all(|t| t.met == Some(true)));
    }
}
