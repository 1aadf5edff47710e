//! `churn`: the bench's load generator (see `bench::churn`), started by `bench` once per run.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    match bench::churn::churn(&bench::churn::ChurnArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("churn: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
