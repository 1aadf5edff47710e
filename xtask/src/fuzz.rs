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
        // Start the export reader from a real export rather than from nothing.
        let corpus = workspace_root().join("tracer/fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus).context("creating the fuzz corpus directory")?;
        if target == "reader" {
            let seed = workspace_root().join("tracer/tests/data/export-v1.ndjson");
            std::fs::copy(&seed, corpus.join("export-v1.ndjson")).context("seeding the corpus")?;
        }
        run(clean_toolchain_env(&mut Command::new("cargo")).args([
            "install",
            "--locked",
            "cargo-fuzz",
        ]))
        .context("installing cargo-fuzz")?;
    }
    // Start the export reader from a real export rather than from nothing.
    let corpus = workspace_root().join("tracer/fuzz/corpus").join(target);
    std::fs::create_dir_all(&corpus).context("creating the fuzz corpus directory")?;
    if target == "reader" {
        let seed = workspace_root().join("tracer/tests/data/export-v1.ndjson");
        std::fs::copy(&seed, corpus.join("export-v1.ndjson")).context("seeding the corpus")?;
    }
    run(clean_toolchain_env(&mut Command::new("cargo"))
        .current_dir(workspace_root().join("tracer"))
        .args(["+nightly", "fuzz", "run", target, "--"])
        .arg(format!("-max_total_time={seconds}")))
}
