//! The `tracer` command: parses the command line, runs the live tracer or `tracer analyze`, and
//! turns the outcome into an exit code. Every error leaves through [`main`], which prints it
//! with its causes.
//!
//! Exit codes: 0 done, 1 failed, 2 bad arguments, 77 not enough privileges to load eBPF.

mod analyze;
mod cli;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use tracer::{
    app,
    config::Config,
    error::{ConfigError, ProbeError},
};

fn main() -> ExitCode {
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
    env_logger::Builder::new()
        .filter_level(match verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            _ => log::LevelFilter::Debug,
        })
        .parse_env("TRACER_LOG")
        .init();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
    };
    if let Some(cli::Command::Top(top)) = &args.command {
        let (config, options) = <(Config, tracer::top::Options)>::try_from(top)?;
        runtime()?.block_on(app::run_top(config, options))?;
        return Ok(ExitCode::SUCCESS);
    }
    let config = Config::try_from(&args)?;
    runtime()?.block_on(app::run(config))?;
    Ok(ExitCode::SUCCESS)
}

/// 2 for bad arguments, 77 when privileges are missing, 1 for anything else.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<ConfigError>().is_some() {
        ExitCode::from(2)
    } else if matches!(
        e.downcast_ref::<ProbeError>(),
        Some(ProbeError::Permission { .. })
    ) {
        ExitCode::from(77)
    } else {
        ExitCode::FAILURE
    }
}
