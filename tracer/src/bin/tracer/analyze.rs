//! `tracer analyze` as a command: opens the input (a file or stdin), prints to stdout, and
//! reports warnings on stderr. Errors go back to `main`: 1 for bad input or an I/O error, 2 for
//! bad arguments.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, BufRead, BufReader, Write as _},
    path::Path,
    process::ExitCode,
};

use anyhow::Context as _;
use tracer::{
    analyze::{analyze, html, Options},
    error::{AnalyzeError, Warning},
    output::is_broken_pipe,
    sink::{JsonSink, Sink, TextSink},
};

use crate::cli::AnalyzeArgs;

/// Runs `tracer analyze`; a closed stdout ends it quietly.
pub fn run(args: &AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let opts = Options::try_from(args)?;
    let input: Box<dyn BufRead> = if args.input == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        let file = File::open(&args.input)
            .with_context(|| format!("cannot open {}", args.input.display()))?;
        Box::new(BufReader::with_capacity(256 * 1024, file))
    };
    let stdout = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut sink: Box<dyn Sink> = if opts.json {
        Box::new(JsonSink::new(stdout))
    } else {
        // -v: every warning, and each report's whole diagnosis.
        Box::new(TextSink::new(stdout, opts.wide).with_detail(opts.all_warnings))
    };
    let mut shown = Warnings::new(opts.all_warnings);
    if let Some(path) = &opts.html {
        let result = html::report(path, input, &opts, sink, &mut |w| shown.print(&w));
        shown.finish();
        return match result {
            Ok(bytes) => {
                eprintln!(
                    "tracer: report written to {} ({} KiB)",
                    path.display(),
                    bytes.div_ceil(1024)
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(html::ReportError::Analyze(AnalyzeError::Output { source }))
                if is_broken_pipe(&source) =>
            {
                Ok(ExitCode::SUCCESS)
            }
            Err(e @ html::ReportError::Analyze(_)) => {
                Err(anyhow::Error::new(e).context("no report written"))
            }
            Err(e) => Err(e.into()),
        };
    }
    let result = analyze(input, &opts, &mut *sink, &mut |w| shown.print(&w));
    let _ = sink.flush();
    shown.finish();
    match result {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(AnalyzeError::Output { source }) if is_broken_pipe(&source) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e.into()),
    }
}

/// Prints the first warning of each kind (all with `-v`) and counts the rest.
struct Warnings {
    all: bool,
    seen: HashMap<String, u64>,
    hidden: u64,
}

impl Warnings {
    fn new(all: bool) -> Self {
        Self {
            all,
            seen: HashMap::new(),
            hidden: 0,
        }
    }

    fn print(&mut self, w: &Warning) {
        let count = self.seen.entry(w.key()).or_default();
        *count += 1;
        if self.all || *count == 1 {
            let _ = writeln!(io::stderr(), "tracer: warning: {w}");
        } else {
            self.hidden += 1;
        }
    }

    fn finish(&self) {
        if self.hidden > 0 {
            eprintln!(
                "tracer: warning: {} more warning(s) like those above (-v prints them all)",
                self.hidden
            );
        }
    }
}
