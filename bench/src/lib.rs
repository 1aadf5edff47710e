//! The bench behind `cargo xtask bench`: the tracer's cost at full TCP connection churn,
//! beside no tracer and beside a peer (bpftrace), measured side by side on loopback.
//!
//! A bench is planned ([`plan`]: flags, modes, programs), run (a shape check, the rounds,
//! the soak) and reported ([`results`]).
//!
//! - [`churn`]: the load, a generator of short connections of a known shape (the `churn`
//!   binary); [`generator`] drives one run of it.
//! - [`runner`]: one run of one mode and what it measured; [`observer`]: the tracer or
//!   bpftrace beside the generator; [`count`]: what an observer wrote.
//! - [`peer`]: bpftrace and its scripts.
//! - [`report`]: medians, the table, the targets.
//! - [`html`]: `tracer analyze --html` on a synthetic export of a million transitions.
//! - [`owner_scan`]: the owner lookups with many sockets held, by the [`holder`] (the
//!   `scan-holder` binary).
//! - [`soak`]: the time-bounded soak, one tracer for minutes of churn, output counted from a
//!   pipe.
//! - [`sys`]: /proc (procfs), fdinfo, child processes, BPF run-time statistics.
//!
//! Bounded in count and time: every run has a deadline, every process started is stopped by
//! PID and reaped, and the churn runs in a private network namespace with only `lo`.

mod args;
pub mod churn;
mod count;
mod generator;
pub mod holder;
mod html;
mod observer;
mod owner_scan;
mod peer;
mod plan;
mod protocol;
mod report;
mod results;
mod runner;
mod soak;
mod sys;
mod util;

use std::time::Duration;

use anyhow::{bail, Result};

pub use self::args::BenchArgs;
use self::{
    churn::ChurnArgs,
    plan::Plan,
    report::Soak,
    runner::{Mode, RunResult},
};

/// How often a run samples the observer's memory.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// Runs the bench: the plan, the runs, the report.
pub fn run(args: &BenchArgs) -> Result<()> {
    let plan = Plan::new(args)?;
    if (args.rounds > 0 && plan.modes.contains(&Mode::Tracer)) || plan.soaking() {
        check_shape(&plan)?;
    }
    let runs = rounds(&plan)?;
    let soak = soak(&plan)?;
    let html = if args.html_report {
        runner::wait_quiet_machine(plan.quiet_wait());
        eprintln!(
            "bench: tracer analyze --html on a synthetic export of {} connections",
            args.html_connections
        );
        let run = html::run(
            &plan.tools.tracer,
            &plan.tools.dir,
            args.html_connections,
            args.keep,
        )?;
        eprintln!(
            "bench: report of {} transitions: {:.2} s wall, {:.2} s CPU, peak {:.1} MiB",
            run.transitions,
            run.wall_s,
            run.cpu_s,
            run.peak_rss_kib as f64 / 1024.0
        );
        Some(run)
    } else {
        None
    };
    let owner_scan = if args.owner_scan {
        runner::wait_quiet_machine(plan.quiet_wait());
        eprintln!(
            "bench: owner scan: {} held connections, {} left in CLOSE_WAIT",
            args.scan_connections, args.scan_close_wait
        );
        let scan = owner_scan::run(
            &plan.tools,
            args.scan_connections,
            args.scan_close_wait,
            args.scan_churn_rate,
        )?;
        eprint!("bench: {}", scan.table());
        Some(scan)
    } else {
        None
    };
    results::report(&plan, runs, soak, html, owner_scan)
}

/// Checks the shape of a connection on a small, slow run first: the expected counts rest
/// on it.
fn check_shape(plan: &Plan) -> Result<()> {
    let small = ChurnArgs {
        connections: 200,
        load: churn::Load {
            concurrency: 1,
            ..plan.churn.load.clone()
        },
        progress_every: 0,
        ..plan.churn.clone()
    };
    let check = runner::run(&plan.tools, Mode::Tracer, &small, 0, SAMPLE_EVERY)?;
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
    std::thread::sleep(plan.cooldown());
    Ok(())
}

/// The rounds: every mode once per round, in turn. Round 1 also times the programs in the
/// kernel: the kernel's BPF statistics are on for it only (each program run then reads the
/// clock twice, a cost users do not pay; the summary takes the rate and CPU from the other
/// rounds).
fn rounds(plan: &Plan) -> Result<Vec<RunResult>> {
    let mut runs = Vec::new();
    let always = sys::bpf_stats_always_on();
    if always {
        eprintln!(
            "bench: note: the kernel's BPF statistics are on for everyone \
             (kernel.bpf_stats_enabled = 1): every round pays for them \
             (sysctl kernel.bpf_stats_enabled=0 to measure as users run)"
        );
    }
    for round in 1..=plan.args.rounds {
        let stats = (round == 1).then(sys::enable_bpf_stats).transpose()?;
        for &mode in &plan.modes {
            // Writes still cached from before (the build, an earlier round's output) would be
            // written back during the round and slow its writes into the same file system:
            // every round starts with none.
            nix::unistd::sync();
            let load = runner::wait_quiet_machine(plan.quiet_wait());
            eprintln!(
                "bench: round {round}/{}: {} (background load {load:.2} CPUs)",
                plan.args.rounds,
                mode.describe()
            );
            let churn = plan.churn_for(mode);
            let mut result = runner::run(&plan.tools, mode, &churn, round, SAMPLE_EVERY)?;
            result.bpf_stats |= always || stats.is_some();
            eprint!(
                "bench: {}",
                report::run_lines(std::slice::from_ref(&result))
            );
            runs.push(result);
            std::thread::sleep(plan.cooldown());
        }
    }
    Ok(runs)
}

/// The soak, when asked for: for `--soak-minutes`, one tracer for that long; for `--soak`,
/// one long run of our tracer.
fn soak(plan: &Plan) -> Result<Option<Soak>> {
    let args = &plan.args;
    if !plan.soaking() {
        return Ok(None);
    }
    // The soak reports the in-kernel time per run too.
    let _stats = sys::enable_bpf_stats()?;
    nix::unistd::sync();
    let load = runner::wait_quiet_machine(plan.quiet_wait());
    let soak = if let Some(minutes) = args.soak_minutes {
        eprintln!(
            "bench: soak: our tracer for {minutes} minutes of churn, output counted from a pipe \
             (background load {load:.2} CPUs)"
        );
        let soak_plan = soak::Plan {
            minutes,
            chunk: args.soak_chunk,
            sample_every: Duration::from_secs(10),
        };
        soak::run(&plan.tools, &plan.churn, &soak_plan)?
    } else {
        eprintln!(
            "bench: soak: our tracer over {} connections (background load {load:.2} CPUs)",
            args.soak_connections
        );
        let soak_args = ChurnArgs {
            connections: args.soak_connections,
            progress_every: (args.soak_connections / 100).max(1),
            ..plan.churn.clone()
        };
        let every = Duration::from_millis(250);
        Soak::judge(runner::run(
            &plan.tools,
            Mode::Tracer,
            &soak_args,
            0,
            every,
        )?)
    };
    eprint!(
        "bench: soak {}",
        report::run_lines(std::slice::from_ref(&soak.run))
    );
    Ok(Some(soak))
}
