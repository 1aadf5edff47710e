//! The `tracer` command: parses the command line, runs the live tracer or `tracer analyze`, and
//! turns the outcome into an exit code. Every error leaves through [`main`], which prints it
//! with its causes.
//!
//! Exit codes: 0 done, 1 failed, 2 bad arguments, 77 not enough privileges to load eBPF.

mod analyze;
mod cli;

use std::{
    io::{self, Write},
    process::ExitCode,
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::Context as _;
use clap::Parser as _;
use tracer::{
    app,
    config::Config,
    error::{ConfigError, ProbeError},
};

/// mimalloc instead of glibc's malloc: a transition record makes and frees several small
/// strings, and the allocator was 17% of the event loop's CPU at full churn (`perf`, issue 12);
/// `cargo xtask bench` measures the difference.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tracer::memory::no_huge_pages();
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tracer: error: {e:#}");
            exit_code(&e)
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let args = cli::Args::parse();
    if let Some(cli::Command::Analyze(analyze)) = &args.command {
        return analyze::run(analyze);
    }
    let verbose = match &args.command {
        Some(cli::Command::Top(top)) => top.trace.verbose,
        _ => args.trace.verbose,
    };
    let mut logger = env_logger::Builder::new();
    logger
        .filter_level(match verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            _ => log::LevelFilter::Debug,
        })
        .parse_env("TRACER_LOG");
    // Under `tracer top` the screen owns the terminal: messages wait, and are printed after it.
    let held = Held::default();
    if matches!(args.command, Some(cli::Command::Top(_))) {
        logger.target(env_logger::Target::Pipe(Box::new(held.clone())));
    }
    logger.init();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
    };
    if let Some(cli::Command::Top(top)) = &args.command {
        let (config, options) = <(Config, tracer::top::Options)>::try_from(top)?;
        let result = runtime()?.block_on(app::run_top(config, options));
        held.print();
        result?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = Config::try_from(&args)?;
    runtime()?.block_on(app::run(config))?;
    Ok(ExitCode::SUCCESS)
}

/// Log messages kept while `tracer top` owns the terminal.
#[derive(Clone, Default)]
struct Held(Arc<Mutex<Vec<u8>>>);

impl Write for Held {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Held {
    /// Prints the kept messages on stderr.
    fn print(&self) {
        let held = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        let _ = io::stderr().write_all(&held);
    }
}

/// 2 for bad arguments, 77 when privileges (or, before Linux 5.11, locked memory) are missing,
/// 1 for anything else.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<ConfigError>().is_some() {
        ExitCode::from(2)
    } else if matches!(
        e.downcast_ref::<ProbeError>(),
        Some(
            ProbeError::Permission { .. }
                | ProbeError::Memlock { .. }
                | ProbeError::TracefsUnreadable { .. }
        )
    ) {
        ExitCode::from(77)
    } else {
        ExitCode::FAILURE
    }
}
