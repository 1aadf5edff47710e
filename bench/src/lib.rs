//! The bench behind `cargo xtask bench`: the tracer's cost at full TCP connection churn, beside no tracer and
//! beside a peer (bpftrace), measured side by side on loopback.
//!
//! - [`churn`]: the load, a generator of short connections of a known shape.
//! - [`runner`]: one run of one mode, and how its output is counted.
//! - [`peer`]: bpftrace and its scripts.
//! - [`report`]: medians, the table, the targets.
//! - [`soak`]: the time-bounded soak, one tracer for minutes of churn, output counted from a
//!   pipe.
//! - [`sys`]: /proc, fdinfo, signals, BPF run-time statistics.
//!
//! Bounded in count and time: every run has a deadline, every process started is stopped by
//! PID and reaped, and the churn runs in a private network namespace with only `lo`.

pub mod churn;
mod peer;
mod report;
mod runner;
mod soak;
mod sys;
mod util;

use std::{
    fs,
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use self::{
    churn::ChurnArgs,
    report::{ModeSummary, Soak, Target},
    runner::{Mode, RunResult, Tools},
};
use crate::util::{is_root, probe_output, sibling_program, workspace_root};

/// The flags of `cargo xtask bench`.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "cargo xtask bench",
    about = "Benchmark the tracer at full connection churn on loopback, beside no tracer and a \
             peer (bpftrace); needs root"
)]
pub struct BenchArgs {
    /// Connections per run.
    #[arg(long, default_value_t = 100_000)]
    connections: u64,
    /// Rounds; each round runs every mode once, in turn (A B C A B C ...). 0 with --soak or
    /// --soak-minutes: the soak only.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Modes to run, in this order within a round.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "none,tracer,bpftrace,bpftrace-count"
    )]
    modes: Vec<String>,
    /// Connections in flight at most.
    #[arg(long, default_value_t = 128)]
    concurrency: u64,
    /// Client threads of the generator (connect, write, close).
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Server threads of the generator (accept, read to EOF, close).
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Leave the generator's threads unpinned (by default client and server thread i run on
    /// CPU i: unpinned, the scheduler's placement makes the rate swing by a third from run
    /// to run on 2 cores).
    #[arg(long)]
    no_pin: bool,
    /// Also run one long tracer run and sample its memory over time.
    #[arg(long)]
    soak: bool,
    /// Connections of the soak run.
    #[arg(long, default_value_t = 1_000_000)]
    soak_connections: u64,
    /// Instead, soak for this many minutes: one tracer process, its output counted from a
    /// pipe (not stored), the churn generator run again and again on one port until the time
    /// is up, RSS sampled every 10 s. Implies --soak.
    #[arg(long, value_name = "MINUTES", conflicts_with = "soak_connections")]
    soak_minutes: Option<u64>,
    /// Connections per run of the generator in a --soak-minutes soak (about 30 s each).
    #[arg(long, default_value_t = 1_000_000)]
    soak_chunk: u64,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "target/bench/results.json")]
    output: PathBuf,
    /// Keep the tracers' output files (in the output's directory).
    #[arg(long)]
    keep: bool,
    /// Do not install bpftrace when it is missing (the peer is then skipped).
    #[arg(long)]
    no_install: bool,
    /// Pause between runs, so the previous run's namespace teardown and writeback settle.
    #[arg(long, default_value_t = 1000)]
    cooldown_ms: u64,
    /// Before each run, wait up to this many seconds for other processes to go quiet
    /// (runs still noisy are marked so in the report).
    #[arg(long, default_value_t = 30)]
    quiet_wait_s: u64,
}

#[derive(Serialize)]
struct Results {
    meta: Meta,
    summary: Vec<ModeSummary>,
    targets: Vec<Target>,
    runs: Vec<RunResult>,
    soak: Option<Soak>,
    table: String,
}

#[derive(Serialize)]
struct Meta {
    command: String,
    unix_time: u64,
    git_commit: String,
    kernel: String,
    cpus: usize,
    cpu_model: String,
    connections: u64,
    rounds: usize,
    soak_minutes: Option<u64>,
    churn: Vec<String>,
    expected_per_run: u64,
    bpftrace: Option<String>,
    peer_skipped: Option<String>,
    notes: Vec<String>,
}

/// Runs the bench: the tracer and the churn generator are the programs built beside this one.
pub fn run(args: &BenchArgs) -> Result<()> {
    if !is_root()? {
        bail!("the bench loads eBPF programs and creates network namespaces: run it as root");
    }
    let soaking = args.soak || args.soak_minutes.is_some();
    if (args.rounds == 0 && !soaking) || args.connections == 0 {
        bail!("--rounds (unless soaking) and --connections must be positive");
    }
    if args.soak_minutes == Some(0) || args.soak_chunk == 0 {
        bail!("--soak-minutes and --soak-chunk must be positive");
    }
    let mut modes = Vec::new();
    for name in &args.modes {
        let mode = Mode::from_name(name).with_context(|| {
            format!("unknown mode {name:?}: expected none, tracer, bpftrace, bpftrace-count")
        })?;
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    let output = workspace_root().join(&args.output);
    let dir = output
        .parent()
        .map_or_else(|| workspace_root().join("target/bench"), PathBuf::from);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    remove_stale_outputs(&dir);

    // Read before the runs: the code measured is the code built now.
    let git_commit = git_commit();
    let tracer = sibling_program("tracer")?;
    let mut peer_skipped = None;
    let mut bpftrace = None;
    if modes
        .iter()
        .any(|m| matches!(m, Mode::Bpftrace | Mode::BpftraceCount))
    {
        match peer::bpftrace(!args.no_install) {
            Ok(found) => bpftrace = Some(found),
            Err(why) => {
                eprintln!("bench: no peer: {why}");
                modes.retain(|m| !matches!(m, Mode::Bpftrace | Mode::BpftraceCount));
                peer_skipped = Some(why);
            }
        }
    }
    let tools = Tools {
        churn_exe: sibling_program("churn")?,
        tracer,
        stream_script: bpftrace
            .as_ref()
            .map(|_| peer::write_script(&dir, "tcpstates.bt", peer::STREAM_SCRIPT))
            .transpose()?,
        count_script: bpftrace
            .as_ref()
            .map(|_| peer::write_script(&dir, "count.bt", peer::COUNT_SCRIPT))
            .transpose()?,
        bpftrace: bpftrace.as_ref().map(|b| b.binary.clone()),
        dir: dir.clone(),
        keep: args.keep,
    };
    let churn_args = ChurnArgs {
        connections: args.connections,
        concurrency: args.concurrency,
        client_threads: args.client_threads,
        server_threads: args.server_threads,
        destinations: 16,
        progress_every: (args.connections / 20).max(1),
        pin: !args.no_pin,
        port: 0,
    };

    // In-kernel time per run needs the kernel's BPF statistics; held for the whole bench.
    let _stats = sys::enable_bpf_stats()?;
    let sample = Duration::from_millis(100);
    let cooldown = Duration::from_millis(args.cooldown_ms);

    // Check the shape on a small, slow run first: the expected counts rest on it.
    if (args.rounds > 0 && modes.contains(&Mode::Tracer)) || soaking {
        let small = ChurnArgs {
            connections: 200,
            concurrency: 1,
            progress_every: 0,
            ..churn_args.clone()
        };
        let check = runner::run(&tools, Mode::Tracer, &small, 0, sample)?;
        if !check.shape_mismatches.is_empty() || check.missing_unreported != Some(0) {
            bail!(
                "the connection shape is not what the bench expects on this kernel \
                 (200 connections, one at a time):\n{}",
                report::run_lines(&[check])
            );
        }
        eprintln!(
            "bench: shape checked: {} transitions per connection + {} for the listener",
            churn::SHAPE.len(),
            churn::LISTENER_SHAPE.len()
        );
        std::thread::sleep(cooldown);
    }

    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        for &mode in &modes {
            let load = runner::wait_quiet_machine(Duration::from_secs(args.quiet_wait_s));
            eprintln!(
                "bench: round {round}/{}: {} (background load {load:.2} CPUs)",
                args.rounds,
                mode.describe()
            );
            let result = runner::run(&tools, mode, &churn_args, round, sample)?;
            eprint!(
                "bench: {}",
                report::run_lines(std::slice::from_ref(&result))
            );
            runs.push(result);
            std::thread::sleep(cooldown);
        }
    }

    let soak = if let Some(minutes) = args.soak_minutes {
        let load = runner::wait_quiet_machine(Duration::from_secs(args.quiet_wait_s));
        eprintln!(
            "bench: soak: our tracer for {minutes} minutes of churn, output counted from a pipe \
             (background load {load:.2} CPUs)"
        );
        let plan = soak::Plan {
            minutes,
            chunk: args.soak_chunk,
            sample_every: Duration::from_secs(10),
        };
        let s = soak::run(&tools, &churn_args, &plan)?;
        eprint!(
            "bench: soak {}",
            report::run_lines(std::slice::from_ref(&s.run))
        );
        Some(s)
    } else if args.soak {
        let soak_args = ChurnArgs {
            connections: args.soak_connections,
            progress_every: (args.soak_connections / 100).max(1),
            ..churn_args.clone()
        };
        let load = runner::wait_quiet_machine(Duration::from_secs(args.quiet_wait_s));
        eprintln!(
            "bench: soak: our tracer over {} connections (background load {load:.2} CPUs)",
            args.soak_connections
        );
        let run = runner::run(
            &tools,
            Mode::Tracer,
            &soak_args,
            0,
            Duration::from_millis(250),
        )?;
        eprint!(
            "bench: soak {}",
            report::run_lines(std::slice::from_ref(&run))
        );
        Some(Soak::judge(run))
    } else {
        None
    };

    if args.rounds == 0 {
        modes.clear();
    }
    let summary = report::summarize(&runs, &modes);
    let targets = report::targets(&summary, &runs, soak.as_ref());
    let table = report::table(&summary);
    let command = std::iter::once("cargo xtask bench".to_owned())
        .chain(std::env::args().skip(2))
        .collect::<Vec<_>>()
        .join(" ");

    if !runs.is_empty() {
        println!("{}", report::run_lines(&runs));
        println!("{table}");
    }
    println!("{}", report::targets_table(&targets));
    if let Some(s) = soak.as_ref().filter(|s| s.timed.is_some()) {
        println!("soak: {}", s.describe());
        print!("{}", report::run_lines(std::slice::from_ref(&s.run)));
        println!("soak RSS of the tracer over time:");
        println!("{}", report::soak_table(s));
    } else if let Some(s) = &soak {
        println!("soak: {}", s.describe());
        println!("soak RSS over connections seen (MiB):");
        let step = (s.run.connections / 10).max(1);
        let mut next = 0;
        for sample in &s.run.rss_samples {
            if sample.connections >= next {
                println!(
                    "  {:>9} connections  {:>6.1}",
                    sample.connections,
                    sample.rss_kib as f64 / 1024.0
                );
                next = sample.connections + step;
            }
        }
    }
    println!("command: {command}");

    let results = Results {
        meta: Meta {
            command,
            unix_time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            git_commit,
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: cpu_model(),
            connections: args.connections,
            rounds: args.rounds,
            soak_minutes: args.soak_minutes,
            churn: churn_args.to_args(),
            expected_per_run: churn::expected_transitions(args.connections),
            bpftrace: bpftrace.map(|b| b.version),
            peer_skipped,
            notes: vec![
                "each run's churn is in a fresh network namespace with only lo; clients connect to \
                 127.0.0.1..=127.0.0.16 on the listener's port"
                    .into(),
                "observer CPU is utime+stime from attach (/proc/<pid>/stat) to exit (wait4)".into(),
                "peak RSS is the larger of VmHWM before the stop and ru_maxrss at exit".into(),
                "kernel BPF statistics (run_time_ns, run_cnt) are on for the whole bench \
                 (BPF_ENABLE_STATS, which ends with the bench)"
                    .into(),
            ],
        },
        summary,
        targets,
        runs,
        soak,
        table,
    };
    fs::write(&output, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", output.display()))?;
    eprintln!("bench: results in {}", output.display());
    Ok(())
}

/// Removes observer outputs a killed bench left behind (`<mode>-r<round>-<port>.out|err`).
fn remove_stale_outputs(dir: &std::path::Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let ours = Mode::ALL
            .iter()
            .any(|m| name.starts_with(&format!("{}-r", m.name())))
            && (name.ends_with(".out") || name.ends_with(".err"));
        if ours {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn git_commit() -> String {
    let root = workspace_root();
    let head = probe_output(
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["rev-parse", "--short", "HEAD"]),
    )
    .map_or_else(|| "unknown".into(), |s| s.trim().to_owned());
    let dirty = probe_output(
        std::process::Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(["status", "--porcelain", "--untracked-files=no"]),
    )
    .is_some_and(|s| !s.trim().is_empty());
    if dirty {
        format!("{head}-dirty")
    } else {
        head
    }
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default()
}
