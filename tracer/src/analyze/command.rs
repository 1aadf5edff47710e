//! `tracer analyze` as a command: opens the input (a file or stdin), prints to stdout, and
//! reports warnings and errors on stderr. Exit codes: 0 analysed (perhaps with warnings),
//! 1 bad input or I/O error, 2 bad arguments.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, BufRead, BufReader, Write as _},
    path::Path,
    process::ExitCode,
};

use super::{analyze, Options};
use crate::{
    cli::AnalyzeArgs,
    error::{AnalyzeError, Warning},
    output::is_broken_pipe,
    sink::{JsonSink, Sink, TextSink},
};

pub fn command(args: &AnalyzeArgs) -> ExitCode {
    let opts = match Options::try_from(args) {
        Ok(opts) => opts,
        Err(e) => {
            eprintln!("tracer: error: {e}");
            return ExitCode::from(2);
        }
    };
    let input: Box<dyn BufRead> = if args.input == Path::new("-") {
        Box::new(io::stdin().lock())
    } else {
        match File::open(&args.input) {
            Ok(file) => Box::new(BufReader::with_capacity(256 * 1024, file)),
            Err(e) => {
                eprintln!("tracer: error: cannot open {}: {e}", args.input.display());
                return ExitCode::from(1);
            }
        }
    };
    let stdout = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let mut sink: Box<dyn Sink> = if opts.json {
        Box::new(JsonSink::new(stdout))
    } else {
        Box::new(TextSink::new(stdout, opts.wide))
    };
    let mut shown = Warnings::new(opts.all_warnings);
    let result = analyze(input, &opts, &mut *sink, &mut |w| shown.print(&w));
    let _ = sink.flush();
    shown.finish();
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(AnalyzeError::Output { source }) if is_broken_pipe(&source) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: error: {}", chain(&e));
            ExitCode::from(1)
        }
    }
}

/// `error: cause: cause`.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
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
