//! `tracer analyze --html FILE`: the analysis as a self-contained HTML report (one file, no
//! network: inline styles, SVG charts drawn by plotters, a Content-Security-Policy that forbids
//! loading anything). Built from the same analysis `tracer analyze` prints: a [`Collector`]
//! rides along as the analysis's sink, sees every record read and every timeline rebuilt, and
//! keeps only bounded summaries, so a report of any input has a bounded size.
//!
//! The report, in order: a loss banner (a lossy or incomplete capture says so first), the
//! CLOSE_WAIT findings and digests in words, the capture's header, the RFC 793 state diagram as
//! observed, the CLOSE_WAIT pile-up per process, a Gantt of chosen connections, outcomes and
//! dwell times. Every chart has a text alternative (an SVG `<title>`, a caption, and its numbers
//! as a table).

mod charts;
mod collect;
mod diagram;
mod page;
mod words;

use std::{
    fs,
    io::{self, Write as _},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

pub use collect::Collector;

use crate::{record::AnalysisRecord, sink::Sink};

/// Writing the report failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the report to {}", path.display())]
pub struct WriteError {
    /// The report's path, as given to `--html`.
    pub path: PathBuf,
    #[source]
    /// The I/O error from creating, writing, syncing or renaming the file.
    pub source: io::Error,
}

/// The report as HTML text.
pub fn render<S: Sink>(collector: &Collector<S>, analysis: &AnalysisRecord) -> String {
    page::render(collector, analysis)
}

/// Writes the report to `path` whole or not at all (a temporary file beside it, renamed), and
/// returns its size in bytes.
pub fn write<S: Sink>(
    path: &Path,
    collector: &Collector<S>,
    analysis: &AnalysisRecord,
) -> Result<u64, WriteError> {
    let html = render(collector, analysis);
    let err = |source| WriteError {
        path: path.to_owned(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Owner only, as the export: the report shows what the host talks to and its processes.
    let result = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(html.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(html.len() as u64)
}

/// Why `tracer analyze --html` made no report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    /// The analysis failed (bad input, or writing to the sink).
    Analyze(#[from] crate::error::AnalyzeError),
    #[error(transparent)]
    /// Writing the report file failed.
    Write(#[from] WriteError),
}

/// `tracer analyze --html FILE`: runs the analysis of `input` with `opts`, printing to `sink`
/// what `tracer analyze` prints, then writes the report to `path` and returns its size in bytes.
pub fn report(
    path: &Path,
    input: Box<dyn io::BufRead>,
    opts: &super::Options,
    sink: Box<dyn Sink>,
    warn: &mut dyn FnMut(crate::error::Warning),
) -> Result<u64, ReportError> {
    // The report needs every rebuilt timeline; the collector prints them only if asked.
    let run = super::Options {
        timelines: true,
        ..opts.clone()
    };
    let mut collector = Collector::new(sink, opts.timelines);
    let result = super::analyze(input, &run, &mut collector, warn);
    let _ = collector.flush();
    let analysis = result?;
    Ok(write(path, &collector, &analysis)?)
}
