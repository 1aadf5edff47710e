//! Turns runs into a summary per mode (medians with min and max), judges the targets, and
//! prints a Markdown table (the one kept in docs/bench.md).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::runner::{Mode, RunResult};

/// Median, min and max of some runs.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$} ({:.d$}–{:.d$})",
            self.median,
            self.min,
            self.max,
            d = digits
        )
    }
}

/// One mode over all its runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModeSummary {
    pub mode: String,
    pub description: String,
    pub runs: usize,
    /// Runs during which other processes used more than a tenth of a CPU.
    pub noisy_runs: usize,
    pub conn_per_s: Option<Spread>,
    /// conn/s over the no-tracer run of the same round (paired, so that a drift of the
    /// machine's speed between rounds cancels out).
    pub ratio: Option<Spread>,
    pub expected_per_run: Option<u64>,
    pub captured_total: Option<u64>,
    pub reported_lost_total: Option<u64>,
    pub kernel_recursion_misses_total: Option<u64>,
    pub missing_unreported_total: Option<u64>,
    pub shape_mismatch_runs: usize,
    pub cpu_s_per_m_events: Option<Spread>,
    pub peak_rss_mib: Option<Spread>,
    pub ns_per_run: Option<Spread>,
}

pub fn summarize(runs: &[RunResult], modes: &[Mode]) -> Vec<ModeSummary> {
    let baseline = |round: usize| {
        runs.iter()
            .find(|r| r.mode == Mode::None.name() && r.round == round)
            .map(|r| r.conn_per_s)
    };
    modes
        .iter()
        .map(|&mode| {
            let of: Vec<&RunResult> = runs.iter().filter(|r| r.mode == mode.name()).collect();
            // Rate and CPU as users get them: from the rounds without the kernel's BPF
            // statistics, where there are any.
            let plain: Vec<&RunResult> = of.iter().copied().filter(|r| !r.bpf_stats).collect();
            let timed = if plain.is_empty() { &of } else { &plain };
            let traced = mode != Mode::None;
            let sum = |f: fn(&RunResult) -> Option<u64>| {
                traced.then(|| of.iter().filter_map(|r| f(r)).sum::<u64>())
            };
            ModeSummary {
                mode: mode.name().into(),
                description: mode.describe().into(),
                runs: of.len(),
                noisy_runs: of
                    .iter()
                    .filter(|r| r.background_cpus > super::runner::NOISY_CPUS)
                    .count(),
                conn_per_s: Spread::of(timed.iter().map(|r| r.conn_per_s)),
                ratio: Spread::of(
                    timed
                        .iter()
                        .filter_map(|r| Some(r.conn_per_s / baseline(r.round)?)),
                ),
                expected_per_run: of.iter().find_map(|r| r.expected),
                captured_total: sum(|r| r.captured),
                reported_lost_total: sum(|r| r.reported_lost),
                kernel_recursion_misses_total: sum(|r| r.kernel_recursion_misses),
                missing_unreported_total: sum(|r| r.missing_unreported),
                shape_mismatch_runs: of
                    .iter()
                    .filter(|r| traced && !r.shape_mismatches.is_empty())
                    .count(),
                cpu_s_per_m_events: Spread::of(timed.iter().filter_map(|r| r.cpu_s_per_m_events)),
                peak_rss_mib: Spread::of(
                    of.iter()
                        .filter_map(|r| r.peak_rss_kib)
                        .map(|k| k as f64 / 1024.0),
                ),
                ns_per_run: Spread::of(of.iter().filter_map(|r| r.ns_per_run)),
            }
        })
        .collect()
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "–".into(), |v| v.to_string())
}

fn spread(v: Option<Spread>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |s| s.show(digits))
}

/// The summary as a Markdown table.
pub fn table(summaries: &[ModeSummary]) -> String {
    let mut out = String::new();
    out.push_str(
        "| mode | runs | conn/s median (min–max) | vs no tracer | events expected per run | \
         captured, all runs | lost, reported by the tool | kernel skips (recursion_misses) | \
         missing without a report | CPU µs per event (= s per 1M) | peak RSS MiB | in-kernel ns per run (round 1) |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for s in summaries {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.mode,
            if s.noisy_runs > 0 {
                format!("{} ({} noisy)", s.runs, s.noisy_runs)
            } else {
                s.runs.to_string()
            },
            spread(s.conn_per_s, 0),
            s.ratio.map_or_else(
                || "–".into(),
                |r| format!(
                    "{:.0}% ({:.0}–{:.0}%)",
                    r.median * 100.0,
                    r.min * 100.0,
                    r.max * 100.0
                )
            ),
            opt(s.expected_per_run),
            opt(s.captured_total),
            opt(s.reported_lost_total),
            opt(s.kernel_recursion_misses_total),
            opt(s.missing_unreported_total),
            spread(s.cpu_s_per_m_events, 2),
            spread(s.peak_rss_mib, 1),
            spread(s.ns_per_run, 0),
        );
    }
    out
}

/// One line per run, for the record.
pub fn run_lines(runs: &[RunResult]) -> String {
    let mut out = String::new();
    for r in runs {
        let _ = write!(
            out,
            "round {} {:<16} {:>8.0} conn/s ({:.2} s)",
            r.round, r.mode, r.conn_per_s, r.elapsed_s
        );
        if let (Some(e), Some(c)) = (r.expected, r.captured) {
            let _ = write!(
                out,
                "  expected {e} captured {c} lost-reported {} (buffer full {}, output dropped {}) \
                 recursion-misses {} missing {}",
                opt(r.reported_lost),
                opt(r.reported_buffer_full),
                opt(r.reported_output_dropped),
                opt(r.kernel_recursion_misses),
                opt(r.missing_unreported)
            );
        }
        if let Some(exported) = r.export_captured {
            let _ = write!(out, "  export {exported}");
        }
        if let Some(cpu) = r.cpu_s_per_m_events {
            let _ = write!(out, "  cpu {cpu:.2} us/event");
        }
        if let Some(stop) = r.stop_cpu_s {
            let _ = write!(out, " (+{stop:.2} s to stop)");
        }
        if let Some(rss) = r.peak_rss_kib {
            let _ = write!(out, "  peak {:.1} MiB", rss as f64 / 1024.0);
        }
        if let Some(ns) = r.ns_per_run {
            let _ = write!(out, "  {ns:.0} ns/run");
        }
        let _ = write!(out, "  bg {:.2} CPUs", r.background_cpus);
        for (kind, want, got) in &r.shape_mismatches {
            let _ = write!(out, "  [{kind}: expected {want}, got {got}]");
        }
        for note in &r.notes {
            let _ = write!(out, "  ({note})");
        }
        out.push('\n');
    }
    out
}

/// A target and whether the measurements meet it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    /// `None` when not measured in this bench run.
    pub met: Option<bool>,
    /// What limits the figure, for a target not met (from the profiles in docs/bench.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
}

/// `limit` for a target measured and not met.
fn unmet(met: Option<bool>, limit: &str) -> Option<String> {
    (met == Some(false)).then(|| limit.to_owned())
}

/// Judges the targets on our tracer's runs, in every configuration users run it in
/// (and the soak, when run); rate, CPU and memory on the plain `--json > file` mode.
pub fn targets(summaries: &[ModeSummary], runs: &[RunResult], soak: Option<&Soak>) -> Vec<Target> {
    let ours: Vec<&RunResult> = runs
        .iter()
        .filter(|r| r.mode.starts_with(Mode::Tracer.name()))
        .chain(soak.map(|s| &s.run))
        .collect();
    let tracer = summaries.iter().find(|s| s.mode == Mode::Tracer.name());
    let mut out = Vec::new();
    let missing: u64 = ours.iter().filter_map(|r| r.missing_unreported).sum();
    out.push(Target {
        target: "zero events missing without a report, in every run of every tracer mode".into(),
        measured: format!("{missing} missing over {} runs", ours.len()),
        met: (!ours.is_empty()).then_some(missing == 0),
        limit: None,
    });
    // Every mode whose reader keeps up on average: all but the Python reader at full churn,
    // which reads a fraction of what the churn makes (its drops are counted, by type).
    let keeping_up: Vec<&&RunResult> = ours
        .iter()
        .filter(|r| r.mode != Mode::TracerPython.name())
        .collect();
    let lost: u64 = keeping_up
        .iter()
        .filter_map(|r| Some(r.reported_lost? + r.missing_unreported?))
        .sum();
    out.push(Target {
        target: "zero events lost (reported or not) at full churn on 2 cores, every tracer \
                 mode whose reader keeps up on average (the Python reader paced)"
            .into(),
        measured: format!("{lost} lost over {} runs", keeping_up.len()),
        met: (!keeping_up.is_empty()).then_some(lost == 0),
        limit: None,
    });
    let ratio = tracer.and_then(|t| t.ratio);
    out.push(Target {
        target: "churn rate with the tracer streaming JSON >= 85% of no tracer (median of per-round ratios)".into(),
        measured: ratio.map_or_else(
            || "not measured".into(),
            |r| {
                format!(
                    "{:.1}% (runs {:.1}–{:.1}%)",
                    r.median * 100.0,
                    r.min * 100.0,
                    r.max * 100.0
                )
            },
        ),
        met: ratio.map(|r| r.median >= 0.85),
        limit: unmet(
            ratio.map(|r| r.median >= 0.85),
            "the tracer's CPU and its program's time in the kernel (the next two rows) share the \
             churn's 2 cores; the no-tracer rate itself moves by about 15% between rounds",
        ),
    });
    let cpu = tracer.and_then(|t| t.cpu_s_per_m_events);
    out.push(Target {
        target: "<= 0.6 µs of tracer CPU (user + sys) per event writing NDJSON (median)".into(),
        measured: cpu.map_or_else(|| "not measured".into(), |c| format!("{} µs", c.show(2))),
        met: cpu.map(|c| c.median <= 0.6),
        limit: unmet(
            cpu.map(|c| c.median <= 0.6),
            "the output thread's writes of 480 bytes per event into ext4 (in the kernel: \
             0.14-0.22 µs per event on a quiet machine), formatting (about 1,520 instructions \
             per JSON line, a fifth of the CPU) and the engine's per-socket maps and the \
             records moved between them: docs/bench.md",
        ),
    });
    let ns = tracer.and_then(|t| t.ns_per_run);
    out.push(Target {
        target: "<= 200 ns in the kernel per program run (round 1)".into(),
        measured: ns.map_or_else(|| "not measured".into(), |n| format!("{} ns", n.show(0))),
        met: ns.map(|n| n.median <= 200.0),
        limit: unmet(
            ns.map(|n| n.median <= 200.0),
            "on this VM a program that only bumps a counter in a map (bpftrace-count) measures \
             220-260 ns, the statistics' own clock reads included; of the rest (perf, all \
             CPUs, during a churn): the program's own loads and stores (a third: the socket's \
             fields, the 120-byte record written into the ring), the ring buffer's \
             reservation and commit (a fifth, contended when both CPUs emit at once), the \
             helper reads of the source address and port and of the process's name, the \
             thread's name and the clock: docs/bench.md",
        ),
    });
    let rss = tracer.and_then(|t| t.peak_rss_mib);
    out.push(Target {
        target: "peak RSS <= 40 MiB with default settings (max over runs)".into(),
        measured: rss.map_or_else(|| "not measured".into(), |r| format!("{:.1} MiB", r.max)),
        met: rss.map(|r| r.max <= 40.0),
        limit: None,
    });
    // Scraping /metrics every second must not slow the event loop: the scraped mode's rate
    // against the plain mode's, in the same rounds.
    let scraped = summaries
        .iter()
        .find(|s| s.mode == Mode::TracerScraped.name())
        .and_then(|s| s.ratio);
    let both = ratio.zip(scraped);
    out.push(Target {
        target: "churn rate with /metrics scraped every 1 s within 5 points of without".into(),
        measured: both.map_or_else(
            || "not measured".into(),
            |(plain, scraped)| {
                format!(
                    "{:.1}% scraped vs {:.1}% not (medians vs no tracer)",
                    scraped.median * 100.0,
                    plain.median * 100.0
                )
            },
        ),
        met: both.map(|(plain, scraped)| scraped.median >= plain.median - 0.05),
        limit: None,
    });
    out.push(match soak {
        Some(s) => Target {
            target:
                "RSS flat over the soak: grows with live connections, not with connections seen"
                    .into(),
            measured: s.describe(),
            met: Some(s.flat),
            limit: None,
        },
        None => Target {
            target: "RSS flat over a soak (run with --soak)".into(),
            measured: "not run".into(),
            met: None,
            limit: None,
        },
    });
    out
}

/// Issue 15's target: the HTML report of a million-transition export in under 10 s.
pub fn html_target(run: Option<&crate::html::HtmlRun>) -> Target {
    let target = "tracer analyze --html on a 1M-transition export in < 10 s (wall)".to_owned();
    match run {
        Some(r) => Target {
            target,
            measured: format!(
                "{} transitions: {:.2} s wall, {:.2} s CPU, peak RSS {:.1} MiB, report {} KiB",
                r.transitions,
                r.wall_s,
                r.cpu_s,
                r.peak_rss_kib as f64 / 1024.0,
                r.report_bytes / 1024
            ),
            met: (r.transitions >= 1_000_000).then_some(r.wall_s < 10.0),
            limit: None,
        },
        None => Target {
            target,
            measured: "not run (--html-report)".into(),
            met: None,
            limit: None,
        },
    }
}

pub fn targets_table(targets: &[Target]) -> String {
    let mut out = String::from(
        "| target | measured | met | what limits it (when not met) |\n|---|---|---|---|\n",
    );
    for t in targets {
        let met = match t.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let limit = t.limit.as_deref().unwrap_or("");
        let _ = writeln!(out, "| {} | {} | {met} | {limit} |", t.target, t.measured);
    }
    out
}

/// The tracer's default bound on formatted output waiting for its writer (`--output-buffer`,
/// sized from the default ring buffer): memory a slow disk can make it hold, whatever the
/// number of connections.
pub fn output_queue_kib() -> u64 {
    let buffer = tracer::output::Buffer::default_for(tracer::defaults::RING_BUFFER_BYTES);
    buffer.bytes as u64 >> 10
}
/// Growth allowed besides the output queue (allocator slack, a map's capacity step).
pub const SLACK_KIB: u64 = 2 << 10;

/// The long run: memory over connections seen (`--soak`), or over time (`--soak-minutes`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Soak {
    pub run: RunResult,
    /// Set for the time-bounded soak; its RSS marks are then at 10% and 50% of the time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timed: Option<Timed>,
    pub rss_at_tenth_kib: u64,
    pub rss_at_half_kib: u64,
    pub rss_at_end_kib: u64,
    /// RSS grew from a tenth of the connections to the end by no more than the output
    /// queue's bound plus [`SLACK_KIB`]: what is left would be memory per connection seen.
    pub flat: bool,
}

impl Soak {
    pub fn judge(run: RunResult) -> Self {
        let at = |fraction: u64| {
            let mark = run.connections / fraction;
            run.rss_samples
                .iter()
                .find(|s| s.connections >= mark && s.connections > 0)
                .or(run.rss_samples.first())
                .map_or(0, |s| s.rss_kib)
        };
        let (at_tenth, at_half) = (at(10), at(2));
        let at_end = run.rss_samples.last().map_or(0, |s| s.rss_kib);
        Self {
            timed: None,
            flat: at_end <= at_tenth + output_queue_kib() + SLACK_KIB,
            rss_at_tenth_kib: at_tenth,
            rss_at_half_kib: at_half,
            rss_at_end_kib: at_end,
            run,
        }
    }

    /// Judges a time-bounded soak: flat when the RSS at the end (all output drained) is no
    /// more than [`SLACK_KIB`] above the RSS at a tenth of the time.
    pub fn judge_timed(run: RunResult, mut timed: Timed) -> Self {
        let last_t = run.rss_samples.last().map_or(0.0, |s| s.t_s);
        let at = |fraction: f64| {
            run.rss_samples
                .iter()
                .find(|s| s.t_s >= last_t * fraction)
                .map_or(0, |s| s.rss_kib)
        };
        let (at_tenth, at_half) = (at(0.1), at(0.5));
        let at_end = run.rss_samples.last().map_or(0, |s| s.rss_kib);
        timed.allowed_growth_kib = SLACK_KIB;
        timed.growth_kib = at_end as i64 - at_tenth as i64;
        Self {
            flat: at_end <= at_tenth + SLACK_KIB,
            timed: Some(timed),
            rss_at_tenth_kib: at_tenth,
            rss_at_half_kib: at_half,
            rss_at_end_kib: at_end,
            run,
        }
    }

    pub fn describe(&self) -> String {
        if let Some(t) = &self.timed {
            return format!(
                "{:.1} min, {} connections in {} runs of the generator ({:.0} conn/s), {} events \
                 expected, {} captured, {} reported lost, {} missing without a report: RSS \
                 {:.1} MiB at 10% of the time, {:.1} MiB at 50%, {:.1} MiB at the end (peak \
                 {:.1} MiB); growth {:+.1} MiB, allowed {:.0} MiB",
                t.wall_s / 60.0,
                self.run.connections,
                t.chunks,
                self.run.conn_per_s,
                self.run.expected.unwrap_or(0),
                self.run.captured.unwrap_or(0),
                self.run.reported_lost.unwrap_or(0),
                self.run.missing_unreported.unwrap_or(0),
                self.rss_at_tenth_kib as f64 / 1024.0,
                self.rss_at_half_kib as f64 / 1024.0,
                self.rss_at_end_kib as f64 / 1024.0,
                self.run.peak_rss_kib.unwrap_or(0) as f64 / 1024.0,
                t.growth_kib as f64 / 1024.0,
                t.allowed_growth_kib as f64 / 1024.0,
            );
        }
        format!(
            "{} connections at {:.0} conn/s, {} events captured, {} lost: RSS {:.1} MiB at 10% \
             of them, {:.1} MiB at 50%, {:.1} MiB at the end (peak {:.1} MiB); allowed growth \
             {:.0} MiB (the output queue's default bound + 2 MiB)",
            self.run.connections,
            self.run.conn_per_s,
            self.run.captured.unwrap_or(0),
            self.run.reported_lost.unwrap_or(0) + self.run.missing_unreported.unwrap_or(0),
            self.rss_at_tenth_kib as f64 / 1024.0,
            self.rss_at_half_kib as f64 / 1024.0,
            self.rss_at_end_kib as f64 / 1024.0,
            self.run.peak_rss_kib.unwrap_or(0) as f64 / 1024.0,
            (output_queue_kib() + SLACK_KIB) as f64 / 1024.0,
        )
    }
}

/// What is particular to the time-bounded soak.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timed {
    /// Minutes asked for (`--soak-minutes`).
    pub minutes: u64,
    /// From the first run's start to the last run's end, seconds.
    pub wall_s: f64,
    /// Runs of the generator, one after another, against the same tracer process.
    pub chunks: u64,
    /// Connections per run at most (the last run is sized to end about on time).
    pub chunk_connections: u64,
    /// The port every run listened on, and the tracer's `-p`.
    pub port: u16,
    /// Tracer PID, the same for the whole soak.
    pub tracer_pid: u32,
    /// Bytes of NDJSON the tracer wrote to the pipe (counted, not stored).
    pub output_bytes: u64,
    /// Other processes seen holding BPF programs during the soak.
    pub other_bpf_holders: Vec<String>,
    pub allowed_growth_kib: u64,
    /// RSS at the end minus RSS at a tenth of the time.
    pub growth_kib: i64,
}

/// RSS over time of a time-bounded soak, one row a minute and the last, as a Markdown table.
pub fn soak_table(soak: &Soak) -> String {
    let mut out = String::from(
        "| elapsed | connections seen | events counted | RSS MiB | of which anonymous (heap) MiB | \
         peak RSS (VmHWM) MiB |\n|---|---|---|---|---|---|\n",
    );
    let samples = &soak.run.rss_samples;
    let mut next_minute = 0.0;
    for (i, s) in samples.iter().enumerate() {
        let last = i + 1 == samples.len();
        if s.t_s < next_minute && !last {
            continue;
        }
        next_minute = (s.t_s / 60.0).floor() * 60.0 + 60.0;
        let _ = writeln!(
            out,
            "| {}:{:02}{} | {} | {} | {:.1} | {} | {} |",
            s.t_s as u64 / 60,
            s.t_s as u64 % 60,
            if last { " (end)" } else { "" },
            s.connections,
            opt(s.events),
            s.rss_kib as f64 / 1024.0,
            s.anon_kib
                .map_or_else(|| "–".into(), |a| format!("{:.1}", a as f64 / 1024.0)),
            s.hwm_kib
                .map_or_else(|| "–".into(), |h| format!("{:.1}", h as f64 / 1024.0)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads() {
        assert_eq!(
            Spread::of([3.0, 1.0, 2.0]),
            Some(Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
        assert_eq!(Spread::of([4.0, 1.0]).unwrap().median, 2.5);
        assert_eq!(Spread::of(std::iter::empty()), None);
    }

    fn run(mode: Mode, round: usize, rate: f64) -> RunResult {
        RunResult {
            mode: mode.name().into(),
            round,
            conn_per_s: rate,
            connections: 10,
            ..RunResult::default()
        }
    }

    #[test]
    fn timed_soak_is_judged_over_time() {
        let sample = |t_s: f64, rss_kib: u64| super::super::runner::RssSample {
            t_s,
            connections: t_s as u64 * 1000,
            rss_kib,
            hwm_kib: Some(rss_kib),
            anon_kib: None,
            events: Some(t_s as u64 * 10_000),
        };
        let mut run = run(Mode::Tracer, 0, 1.0);
        run.rss_samples = (0..=60)
            .map(|i| sample(f64::from(i) * 10.0, 20_000))
            .collect();
        run.rss_samples[1].rss_kib = 25_000;
        let s = Soak::judge_timed(run.clone(), Timed::default());
        assert!(s.flat);
        assert_eq!(s.rss_at_tenth_kib, 20_000);
        assert_eq!(soak_table(&s).lines().count(), 2 + 11);
        run.rss_samples.last_mut().unwrap().rss_kib = 22_049;
        assert!(!Soak::judge_timed(run, Timed::default()).flat);
    }

    #[test]
    fn ratio_is_against_the_same_round() {
        let runs = [
            run(Mode::None, 1, 100.0),
            run(Mode::Tracer, 1, 90.0),
            run(Mode::None, 2, 200.0),
            run(Mode::Tracer, 2, 160.0),
        ];
        let s = summarize(&runs, &[Mode::None, Mode::Tracer]);
        assert_eq!(s[0].conn_per_s.unwrap().median, 150.0);
        let ratio = s[1].ratio.unwrap();
        assert!((ratio.median - 0.85).abs() < 1e-9);
        assert!((ratio.min - 0.8).abs() < 1e-9);
        assert!(table(&s).contains("| tracer | 2 |"));
    }

    /// The round with the kernel's BPF statistics on gives the in-kernel time only: rate and
    /// CPU come from the others.
    #[test]
    fn rate_and_cpu_leave_out_the_round_with_bpf_statistics() {
        let timed = |mut r: RunResult, cpu: f64, ns: Option<f64>| {
            r.cpu_s_per_m_events = Some(cpu);
            r.bpf_stats = ns.is_some();
            r.ns_per_run = ns;
            r
        };
        let runs = [
            timed(run(Mode::None, 1, 100.0), 0.0, Some(0.0)),
            timed(run(Mode::Tracer, 1, 50.0), 9.0, Some(400.0)),
            run(Mode::None, 2, 100.0),
            timed(run(Mode::Tracer, 2, 90.0), 0.5, None),
            run(Mode::None, 3, 100.0),
            timed(run(Mode::Tracer, 3, 80.0), 0.7, None),
        ];
        let s = summarize(&runs, &[Mode::None, Mode::Tracer]);
        assert!((s[1].ratio.unwrap().median - 0.85).abs() < 1e-9);
        assert!((s[1].cpu_s_per_m_events.unwrap().max - 0.7).abs() < 1e-9);
        assert_eq!(s[1].ns_per_run.unwrap().median, 400.0);
        assert_eq!(s[1].runs, 3);
        // One round only: it is all there is.
        let s = summarize(&runs[..2], &[Mode::None, Mode::Tracer]);
        assert!((s[1].ratio.unwrap().median - 0.5).abs() < 1e-9);
    }
}
