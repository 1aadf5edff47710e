//! Judging a boot from its report into a row, explaining a failed one, and the table of rows.

use std::{fmt::Write as _, fs, path::Path, time::Duration};

use crate::{
    plan::{self, Check, Scenario},
    qemu,
    report::{Outcome, Report},
};

/// One boot's line of the table.
pub struct Row {
    kernel: &'static str,
    scenario: &'static str,
    suite: &'static str,
    release: String,
    attached: String,
    passed: usize,
    failed: usize,
    skipped: Vec<String>,
    seconds: f64,
    /// Kernel features the guest found missing (`fact NAME no`).
    lacks: Vec<String>,
    /// Why the tracer fell back to the classic tracepoint, when it did.
    fallback: Option<String>,
    pub pass: bool,
    problems: Vec<String>,
}

impl Row {
    pub fn line(&self) -> String {
        format!(
            "vm-test: {} {} {}: {}{}",
            self.kernel,
            self.scenario,
            self.release,
            if self.pass { "PASS" } else { "FAIL" },
            if self.problems.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.problems.join("; "))
            }
        )
    }
}

pub fn judge(
    kernel: &'static str,
    scenario: &Scenario,
    suite: &'static str,
    report: &Report,
    booted: &qemu::Booted,
    took: Duration,
) -> Row {
    let mut problems = Vec::new();
    if booted.timed_out {
        problems.push(format!("killed after {} s", took.as_secs()));
    }
    if !report.complete {
        problems.push("the guest's report is incomplete (boot failure, panic or hang)".to_owned());
    }
    let attached = match report.smoke_rc {
        None => "-".to_owned(),
        Some(_) if report.attached() => report.hook().map_or("yes".to_owned(), |(hook, _)| hook),
        Some(rc) => format!("no (exit {rc})"),
    };
    let fallback = report.hook().and_then(|(_, why)| why);
    match scenario.check {
        Check::Tests => {
            if !report.attached() || report.smoke_rc != Some(0) {
                problems.push("the tracer did not start and attach".to_owned());
            }
            if report.tests.is_empty() {
                problems.push("no test ran".to_owned());
            }
            let failed: Vec<_> = report
                .tests
                .iter()
                .filter(|(_, o)| *o == Outcome::Failed)
                .map(|(n, _)| n.clone())
                .collect();
            if !failed.is_empty() {
                problems.push(format!("failed: {}", failed.join(", ")));
            }
            for (bin, rc) in &report.bad_exits {
                if failed.is_empty() {
                    problems.push(format!(
                        "{} exited {rc}",
                        Path::new(bin)
                            .file_name()
                            .unwrap_or_default()
                            .to_string_lossy()
                    ));
                }
            }
        }
        Check::Starts => {
            if !report.attached() || report.smoke_rc != Some(0) {
                problems.push("the tracer did not start and attach".to_owned());
            }
        }
        Check::Refuses(word) => {
            if report.smoke_rc == Some(0) {
                problems.push("the tracer started although it should have refused".to_owned());
            }
            if !report
                .smoke_stderr
                .iter()
                .any(|l| l.to_lowercase().contains(word))
            {
                problems.push(format!("its error does not name {word}"));
            }
        }
    }
    Row {
        kernel,
        scenario: scenario.name,
        suite,
        release: report.release.clone().unwrap_or_else(|| "?".to_owned()),
        attached,
        passed: report.count(|o| *o == Outcome::Passed),
        failed: report.count(|o| *o == Outcome::Failed),
        skipped: report
            .tests
            .iter()
            .filter_map(|(n, o)| match o {
                Outcome::Skipped(why) => Some(format!("{n}: {why}")),
                _ => None,
            })
            .chain(
                matches!(scenario.check, Check::Tests)
                    .then(|| plan::skips(kernel))
                    .into_iter()
                    .flatten()
                    .map(|(n, why)| format!("{n}: {why}")),
            )
            .collect(),
        seconds: took.as_secs_f64(),
        fallback,
        lacks: report
            .facts
            .iter()
            .filter(|(_, v)| v == "no")
            .map(|(k, _)| k.trim_start_matches("tracepoint:").to_owned())
            .collect(),
        pass: problems.is_empty(),
        problems,
    }
}

/// What a person needs to see when a boot failed: each failed test's own output, the
/// tracer's smoke stderr, and the end of the report or console.
pub fn explain(report: &Report, out: &Path) -> String {
    let mut text = String::new();
    for (name, body) in &report.failure_output {
        let _ = writeln!(text, "---- {name} (in the guest) ----\n{body}");
    }
    if report.smoke_rc != Some(0) || !report.attached() {
        let _ = writeln!(
            text,
            "---- tracer start-up stderr ----\n{}",
            report.smoke_stderr.join("\n")
        );
    }
    if !report.complete {
        let _ = writeln!(
            text,
            "---- last lines of the report ----\n{}",
            report.tail.join("\n")
        );
        let console = fs::read_to_string(out.join("console.log")).unwrap_or_default();
        let tail: Vec<&str> = console.lines().rev().take(30).collect();
        let _ = writeln!(text, "---- last lines of the console ----");
        for line in tail.iter().rev() {
            let _ = writeln!(text, "{line}");
        }
    }
    text
}

pub fn table(rows: &[Row]) -> String {
    let mut t = String::from(
        "KERNEL  SCENARIO    RELEASE                      ATTACHED    SUITE     PASSED  FAILED  SKIPPED  TIME    RESULT\n",
    );
    for r in rows {
        let _ = writeln!(
            t,
            "{:<7} {:<11} {:<28} {:<11} {:<9} {:>6}  {:>6}  {:>7}  {:>5.0}s  {}",
            r.kernel,
            r.scenario,
            r.release,
            r.attached,
            r.suite,
            r.passed,
            r.failed,
            r.skipped.len(),
            r.seconds,
            if r.pass {
                "PASS".to_owned()
            } else {
                format!("FAIL: {}", r.problems.join("; "))
            }
        );
        if !r.lacks.is_empty() {
            let _ = writeln!(t, "        lacks: {}", r.lacks.join(", "));
        }
        if let Some(why) = &r.fallback {
            let _ = writeln!(
                t,
                "        tp_btf refused, classic tracepoint attached: {why}"
            );
        }
        for skip in &r.skipped {
            let _ = writeln!(t, "        skipped {skip}");
        }
    }
    t
}
