//! The HTML report's bench: `tracer analyze --html` on a synthetic export of a million
//! transitions (issue 15's target: under 10 s on this machine kind), its wall and CPU time
//! and peak memory.

use std::{
    fs,
    io::BufWriter,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use tracer::analyze::synthetic;

use crate::sys::Proc;

/// What building one report took.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HtmlRun {
    pub transitions: u64,
    pub export_bytes: u64,
    pub wall_s: f64,
    /// User + system CPU of `tracer analyze`.
    pub cpu_s: f64,
    pub peak_rss_kib: u64,
    pub report_bytes: u64,
}

/// Writes a synthetic export of `connections` connections (40 processes) in `dir`, times
/// `tracer analyze --html` on it, and removes both files unless `keep`.
pub fn run(tracer: &Path, dir: &Path, connections: u64, keep: bool) -> Result<HtmlRun> {
    let export = dir.join("html-bench.ndjson");
    let report = dir.join("html-bench.html");
    {
        let file =
            fs::File::create(&export).with_context(|| format!("creating {}", export.display()))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        synthetic::write(&mut out, connections, 40)?;
        std::io::Write::flush(&mut out)?;
    }
    let _ = fs::remove_file(&report);
    let mut cmd = Command::new(tracer);
    cmd.args(["analyze", "--html"])
        .arg(&report)
        .arg(&export)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let start = Instant::now();
    let (mut proc, _child) = Proc::spawn("tracer analyze", &mut cmd, libc::SIGTERM)?;
    let Some(exit) = proc.reap_within(Duration::from_secs(600))? else {
        proc.stop(libc::SIGKILL, Duration::from_secs(5))?;
        bail!("tracer analyze --html did not finish within 10 minutes");
    };
    let wall_s = start.elapsed().as_secs_f64();
    if !exit.success() {
        bail!("tracer analyze --html ended with {}", exit.describe());
    }
    let result = HtmlRun {
        transitions: connections * synthetic::TRANSITIONS_PER_CONNECTION,
        export_bytes: fs::metadata(&export)?.len(),
        wall_s,
        cpu_s: exit.cpu_s,
        peak_rss_kib: exit.maxrss_kib,
        report_bytes: fs::metadata(&report)?.len(),
    };
    if !keep {
        let _ = fs::remove_file(&export);
        let _ = fs::remove_file(&report);
    }
    Ok(result)
}
