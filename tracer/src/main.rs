use std::process::ExitCode;

use clap::Parser as _;
use tracer::{app, cli, error::ProbeError};

fn main() -> ExitCode {
    let args = cli::Args::parse();
    if let Some(cli::Command::Analyze(analyze)) = &args.command {
        return tracer::analyze::command(analyze);
    }
    env_logger::Builder::new()
        .filter_level(match args.verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            _ => log::LevelFilter::Debug,
        })
        .parse_env("TRACER_LOG")
        .init();
    let config = match cli::Config::try_from(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tracer: error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tracer: error: starting the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(app::run(config)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tracer: error: {e:#}");
            if e.downcast_ref::<ProbeError>()
                .is_some_and(|p| matches!(p, ProbeError::Permission { .. }))
            {
                return ExitCode::from(77);
            }
            ExitCode::from(1)
        }
    }
}
