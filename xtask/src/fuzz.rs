//! `fuzz`: run a cargo-fuzz target of `tracer/fuzz` for a bounded time. cargo-fuzz needs
//! rustup's nightly (for the sanitizer flags); it is installed on demand.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::util::{clean_toolchain_env, probe_output, run, workspace_root};

pub fn fuzz(target: &str, seconds: u32) -> Result<()> {
    if probe_output(Command::new("cargo").args(["+nightly", "--version"])).is_none() {
        bail!("fuzzing needs rustup's nightly toolchain: `rustup toolchain install nightly`");
    }
    if probe_output(Command::new("cargo").args(["fuzz", "--version"])).is_none() {
        eprintln!("installing cargo-fuzz");
        run(clean_toolchain_env(&mut Command::new("cargo")).args([
            "install",
            "--locked",
            "cargo-fuzz",
        ]))
        .context("installing cargo-fuzz")?;
    }
    run(clean_toolchain_env(&mut Command::new("cargo"))
        .current_dir(workspace_root().join("tracer"))
        .args(["+nightly", "fuzz", "run", target, "--"])
        .arg(format!("-max_total_time={seconds}")))
}
