//! `tracer analyze`: reads an export (or `tracer --json` output) back, rebuilds the timelines
//! and the CLOSE_WAIT reports by replaying its transitions, prints them as the live run does,
//! and ends with an [`AnalysisRecord`]. Pure apart from the reader and sink it is handed: no
//! root, no eBPF.

pub mod html;
pub mod reader;
mod replay;
mod report;
pub mod synthetic;

use std::{collections::HashSet, io::BufRead};

use crate::{
    error::{AnalyzeError, InputError, LineProblem, Warning},
    record::{AnalysisRecord, Header, Record, Summary, WrittenTo, SCHEMA},
    sink::{Filter, Sink},
    units::{WallClock, WallTime},
};
use reader::Reader;
use replay::Replay;
use report::Stats;

/// What `tracer analyze` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Print NDJSON instead of text.
    pub json: bool,
    /// Wide address columns in the text output.
    pub wide: bool,
    /// Print the rebuilt timelines.
    pub timelines: bool,
    /// Print every transition.
    pub transitions: bool,
    /// Threshold of the CLOSE_WAIT report; `None`: the traced run's.
    pub close_wait_threshold_ns: Option<u64>,
    /// Keep only sockets of these processes; `None`: the traced run's `--pid`.
    pub pids: Option<HashSet<u32>>,
    /// Print every warning (the caller's concern: warnings are all handed out).
    pub all_warnings: bool,
    /// Also write the analysis as an HTML report to this file (`--html`).
    pub html: Option<std::path::PathBuf>,
}

/// Reads `input` to its end, writes the rebuilt records that `opts` asks for to `sink` as they
/// come, then the analysis, which it also returns. Warnings go to `warn` as they are met.
pub fn analyze<R: BufRead>(
    input: R,
    opts: &Options,
    sink: &mut dyn Sink,
    warn: &mut dyn FnMut(Warning),
) -> Result<AnalysisRecord, AnalyzeError> {
    let mut warnings = 0u64;
    let mut counted = |w: Warning| {
        warnings += 1;
        warn(w);
    };
    let mut reader = Reader::new(input);
    let Some((line, first)) = reader.next_record(&mut counted)? else {
        return Err(InputError::Empty.into());
    };
    let (header, first) = match first {
        Record::Header(h) => (Some(h), None),
        other => (None, Some((line, other))),
    };
    let clock = match (&header, &first) {
        (Some(h), _) => check_header(h, line, &mut counted)?,
        (None, first) => {
            counted(Warning::NoHeader);
            first
                .as_ref()
                .and_then(|(_, r)| estimated_clock(r))
                .unwrap_or(WallClock::fixed(0))
        }
    };
    if let Some(h) = &header {
        sink.input(&Record::Header(h.clone()));
    }
    let mut run = Run::new(header.as_deref(), clock, opts);
    if opts.transitions {
        sink.begin().map_err(output)?;
    }
    if let Some((line, record)) = first {
        run.read(line, record, sink)?;
    }
    while let Some((line, record)) = reader.next_record(&mut counted)? {
        run.read(line, record, sink)?;
    }
    run.finish(sink, &mut counted)?;
    let mut analysis = run.analysis(header.as_deref(), clock);
    analysis.warnings = warnings;
    sink.write(&Record::Analysis(analysis.clone()))
        .and_then(|()| sink.flush())
        .map_err(output)?;
    Ok(analysis)
}

fn output(source: std::io::Error) -> AnalyzeError {
    AnalyzeError::Output { source }
}

fn check_header(
    h: &Header,
    line: u64,
    warn: &mut dyn FnMut(Warning),
) -> Result<WallClock, InputError> {
    if h.schema == 0 {
        return Err(InputError::Line {
            line,
            problem: LineProblem::Schema { schema: h.schema },
        });
    }
    if h.schema > SCHEMA {
        warn(Warning::NewerSchema {
            schema: h.schema,
            known: SCHEMA,
        });
    }
    // Timelines are rebuilt: only missing transitions make the analysis incomplete.
    if !h.complete && (!h.options.transitions || !h.options.pids.is_empty()) {
        warn(Warning::Incomplete);
    }
    Ok(WallClock::fixed(i128::from(h.wall_offset_ns)))
}

/// Without a header, the wall clock follows from a record's own `time` and `ts_ns`.
fn estimated_clock(r: &Record) -> Option<WallClock> {
    let (ts_ns, time) = stamp(r)?;
    Some(WallClock::fixed(
        i128::from(time.unix_ns()) - i128::from(ts_ns),
    ))
}

/// A record's kernel time and wall-clock time.
fn stamp(r: &Record) -> Option<(u64, WallTime)> {
    Some(match r {
        Record::Transition(r) => (r.ts_ns, r.time),
        Record::Timeline(r) => (r.ts_ns, r.time),
        Record::CloseWait(r) | Record::Stuck(r) => (r.ts_ns, r.time),
        Record::CloseWaitResolved(r) | Record::StuckResolved(r) => (r.ts_ns, r.time),
        Record::Digest(r) => (r.ts_ns, r.time),
        Record::Lost(r) => (r.ts_ns, r.time),
        Record::Summary(r) => (r.ts_ns, r.time),
        Record::Header(_) | Record::Analysis(_) => return None,
    })
}

/// One analysis under way.
struct Run {
    replay: Option<Replay>,
    stats: Stats,
    /// Sockets the analysis covers (`--pid`).
    scope: Filter,
    /// What is printed.
    display: Filter,
    out: Vec<Record>,
    end_ns: u64,
    summary: Option<Summary>,
    /// Which destination the stream was: its drops are the summary's `export_dropped` for the
    /// export, `output_dropped` for stdout.
    export: bool,
    check: replay::Check,
}

impl Run {
    fn new(header: Option<&Header>, clock: WallClock, opts: &Options) -> Self {
        let pids = opts.pids.clone().unwrap_or_else(|| {
            header
                .map(|h| h.options.pids.iter().copied().collect())
                .unwrap_or_default()
        });
        let threshold = opts
            .close_wait_threshold_ns
            .unwrap_or_else(|| replay::engine_options(header).close_wait_threshold_ns);
        Self {
            replay: Some(Replay::new(header, clock)),
            stats: Stats::new(threshold),
            scope: Filter {
                pids: pids.clone(),
                ..Filter::everything()
            },
            display: Filter {
                transitions: opts.transitions,
                timelines: opts.timelines,
                pids,
            },
            out: Vec::new(),
            end_ns: header.map_or(0, |h| h.monotonic_start_ns),
            summary: None,
            // Streams from before `written_to`: a complete one was an export.
            export: header.is_some_and(|h| match h.written_to {
                Some(to) => to == WrittenTo::Export,
                None => h.complete,
            }),
            check: replay::Check::None,
        }
    }

    fn read(&mut self, line: u64, record: Record, sink: &mut dyn Sink) -> Result<(), AnalyzeError> {
        let bad = |problem| InputError::Line { line, problem };
        sink.input(&record);
        if self.summary.is_some() {
            return Err(bad(LineProblem::AfterSummary {
                kind: record.type_name(),
            })
            .into());
        }
        if let Some((ts, _)) = stamp(&record) {
            self.end_ns = self.end_ns.max(ts);
        }
        match &record {
            Record::Header(_) => return Err(bad(LineProblem::SecondHeader).into()),
            Record::CloseWait(r) if self.scope.apply(&record).is_some() => self.stats.alert(r),
            Record::CloseWaitResolved(r) if self.scope.apply(&record).is_some() => {
                self.stats.resolved(r);
            }
            Record::Lost(_) => self.out.push(record.clone()),
            _ => {}
        }
        if let Some(replay) = &mut self.replay {
            replay.feed(&record, &mut self.out);
        }
        if let Record::Summary(s) = record {
            self.summary = Some(*s);
        }
        self.emit(sink)
    }

    /// Counts and prints the records rebuilt so far.
    fn emit(&mut self, sink: &mut dyn Sink) -> Result<(), AnalyzeError> {
        for record in self.out.drain(..) {
            if let Record::Timeline(t) = &record {
                if self.scope.apply(&record).is_some() {
                    self.stats.timeline(t);
                }
            }
            if let Some(shown) = self.display.apply(&record) {
                sink.write(&shown).map_err(output)?;
            }
        }
        Ok(())
    }

    fn finish(
        &mut self,
        sink: &mut dyn Sink,
        warn: &mut dyn FnMut(Warning),
    ) -> Result<(), AnalyzeError> {
        if let Some(replay) = self.replay.take() {
            let (_, check) = replay.finish(self.summary.as_ref(), self.end_ns, &mut self.out);
            self.check = check;
        }
        self.emit(sink)?;
        match &self.summary {
            None => warn(Warning::NoSummary),
            Some(s) if self.lost() > 0 => warn(Warning::Lost {
                events: self.lost(),
                detail: self.lost_detail(s),
            }),
            Some(_) => {}
        }
        match self.check {
            replay::Check::Mismatches(count) if count > 0 => {
                warn(Warning::TimelineMismatch { count });
            }
            replay::Check::GaveUp => warn(Warning::TimelinesUnchecked),
            _ => {}
        }
        Ok(())
    }

    /// Records the traced run lost: in the kernel, undecodable, or dropped by this stream's
    /// writer (the export's for an export, stdout's for stdout).
    fn lost(&self) -> u64 {
        self.summary.as_ref().map_or(0, |s| {
            let dropped = if self.export {
                s.export_dropped
            } else {
                s.output_dropped
            };
            s.lost_ringbuf + s.recursion_misses.unwrap_or(0) + s.decode_errors + dropped
        })
    }

    /// Where the lost records went: the kernel's counts, then this stream's drops by type
    /// (a total only, from tracers that did not count them by type).
    fn lost_detail(&self, s: &Summary) -> String {
        let (destination, total) = if self.export {
            (s.export, s.export_dropped)
        } else {
            (Some(s.stdout), s.output_dropped)
        };
        let dropped = match destination {
            Some(d) if d.dropped.total() == total && total > 0 => {
                crate::sink::text::by_type(&d.dropped)
            }
            _ => total.to_string(),
        };
        format!(
            "ring buffer full: {}, kernel-skipped runs: {}, undecodable: {}, dropped by this stream's writer: {dropped}",
            s.lost_ringbuf, s.recursion_misses.map_or_else(|| "not available".to_owned(), |n| n.to_string()), s.decode_errors
        )
    }

    fn analysis(&self, header: Option<&Header>, clock: WallClock) -> AnalysisRecord {
        let (close_wait, top_processes) = self.stats.close_wait(self.end_ns);
        AnalysisRecord {
            hostname: header.map(|h| h.hostname.clone()),
            start_time: header.map(|h| h.start_time.clone()),
            end_ts_ns: self.end_ns,
            end_time: clock.rfc3339(self.end_ns),
            clean_end: self.summary.is_some(),
            lost: self.lost(),
            warnings: 0,
            connections: self.stats.connections(),
            outcomes: self.stats.outcomes(),
            dwell: self.stats.dwell(),
            close_wait_threshold_ns: self.stats.threshold_ns(),
            close_wait,
            top_processes,
        }
    }
}
