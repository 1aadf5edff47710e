//! `scan-holder`: the owner-scan bench's load (see `bench::holder`), started by `bench --owner-scan`.

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    match bench::holder::holder(&bench::holder::HolderArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("scan-holder: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
