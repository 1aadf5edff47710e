//! The end of a bench: the summary and the targets printed (Markdown, as kept in
//! docs/bench.md) and everything written as JSON.

use std::{
    fs,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::{
    churn,
    html::HtmlRun,
    owner_scan::OwnerScan,
    plan::Plan,
    report::{self, ModeSummary, Soak, Target},
    runner::RunResult,
};

#[derive(Serialize)]
struct Results {
    meta: Meta,
    summary: Vec<ModeSummary>,
    targets: Vec<Target>,
    runs: Vec<RunResult>,
    soak: Option<Soak>,
    html: Option<HtmlRun>,
    owner_scan: Option<OwnerScan>,
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

/// Prints the runs, the summary table and the targets, and writes all of it to the plan's
/// output file.
pub fn report(
    plan: &Plan,
    runs: Vec<RunResult>,
    soak: Option<Soak>,
    html: Option<HtmlRun>,
    owner_scan: Option<OwnerScan>,
) -> Result<()> {
    let modes = if plan.args.rounds == 0 {
        &[][..]
    } else {
        &plan.modes[..]
    };
    let summary = report::summarize(&runs, modes);
    let mut targets = report::targets(&summary, &runs, soak.as_ref());
    targets.push(report::html_target(html.as_ref()));
    if let Some(scan) = &owner_scan {
        targets.extend(scan.targets());
    }
    let table = report::table(&summary);
    let command = std::iter::once("cargo xtask bench".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");

    if !runs.is_empty() {
        println!("{}", report::run_lines(&runs));
        println!("{table}");
    }
    println!("{}", report::targets_table(&targets));
    if let Some(soak) = &soak {
        print_soak(soak);
    }
    if let Some(scan) = &owner_scan {
        println!("{}", scan.table());
    }
    println!("command: {command}");

    let results = Results {
        meta: meta(plan, command),
        summary,
        targets,
        runs,
        soak,
        html,
        owner_scan,
        table,
    };
    fs::write(&plan.output, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", plan.output.display()))?;
    eprintln!("bench: results in {}", plan.output.display());
    Ok(())
}

/// The soak's verdict and its memory over time (or over connections seen).
fn print_soak(soak: &Soak) {
    println!("soak: {}", soak.describe());
    if soak.timed.is_some() {
        print!("{}", report::run_lines(std::slice::from_ref(&soak.run)));
        println!("soak RSS of the tracer over time:");
        println!("{}", report::soak_table(soak));
        return;
    }
    println!("soak RSS over connections seen (MiB):");
    let step = (soak.run.connections / 10).max(1);
    let mut next = 0;
    for sample in &soak.run.rss_samples {
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

fn meta(plan: &Plan, command: String) -> Meta {
    let args = &plan.args;
    Meta {
        command,
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        git_commit: plan.git_commit.clone(),
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned(),
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model: cpu_model(),
        connections: args.connections,
        rounds: args.rounds,
        soak_minutes: args.soak_minutes,
        churn: plan.churn.to_args(),
        expected_per_run: churn::expected_transitions(args.connections, 1),
        bpftrace: plan.bpftrace_version.clone(),
        peer_skipped: plan.peer_skipped.clone(),
        notes: vec![
            "each run's churn is in a fresh network namespace with only lo; clients connect to \
             127.0.0.1..=127.0.0.16 on the listener's port"
                .into(),
            "observer CPU per event is utime+stime with its reaped children's \
             (/proc/<pid>/stat, 10 ms ticks) from attach to the stop signal, sent once the \
             observer is done (its output file quiet for 300 ms; with the Python reader, both \
             idle for 500 ms; counting, after 300 ms); what it uses from the signal to its exit, \
             once a run, is stop_cpu_s (an upper bound within the ticks). Until 2026-12-01 the \
             figure ran to the exit \
             and also counted the CPU of our tracer's start-up child (which parses the kernel's \
             BTF, before attach): about 0.15 s, 0.15 µs per event of a 1M-event run"
                .into(),
            "peak RSS is the tracer's VmHWM just before the stop (ru_maxrss at exit, which also counts its reaped children, only when VmHWM is unknown)".into(),
            "every round starts after sync(2): no write from before it is written back \
             while it runs"
                .into(),
            "kernel BPF statistics (run_time_ns, run_cnt; BPF_ENABLE_STATS) are on in round 1 \
             and the soak only, unless kernel.bpf_stats_enabled was already 1 or another process \
             held them on (runs whose programs counted runs are marked bpf_stats): they add two \
             clock reads to every program run, which users do not pay, so rate and CPU per event \
             are medians over the runs without them (all runs when there are none) and in-kernel \
             ns per run comes from the runs with them (round 1: one run per mode)"
                .into(),
        ],
    }
}

fn cpu_model() -> String {
    use procfs::Current as _;
    procfs::CpuInfo::current()
        .ok()
        .and_then(|info| info.model_name(0).map(str::to_owned))
        .unwrap_or_default()
}
