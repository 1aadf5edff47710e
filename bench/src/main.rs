//! `bench`: the tracer at full connection churn (see docs/bench.md). Run by `cargo xtask bench`,
//! which builds it, the churn generator and the tracer in release first.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    match bench::run(&bench::BenchArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
