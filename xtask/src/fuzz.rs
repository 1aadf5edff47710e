//! `fuzz`: run a cargo-fuzz target of `tracer/fuzz` for a bounded time. cargo-fuzz needs
//! rustup's nightly (for the sanitizer flags); cargo-fuzz itself is installed on demand.
//! The targets are also type-checked on stable by `cargo xtask lint` (the fuzz crate is a
//! workspace member), so a target that stops compiling fails CI.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::util::{clean_toolchain_env, probe_output, run, workspace_root};

/// The fuzz crate, relative to the workspace root.
const FUZZ_DIR: &str = "tracer/fuzz";

pub fn fuzz(target: &str, seconds: u32) -> Result<()> {
    if !matches!(target, "decode" | "reader") {
        bail!("unknown fuzz target `{target}`: the targets are `decode` and `reader`");
    }
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
    let root = workspace_root();
    let corpus = root.join(FUZZ_DIR).join("corpus").join(target);
    std::fs::create_dir_all(&corpus).context("creating the fuzz corpus directory")?;
    // Start the export reader from a real export rather than from nothing.
    if target == "reader" {
        let seed = root.join("tracer/tests/data/export-v1.ndjson");
        std::fs::copy(&seed, corpus.join("export-v1.ndjson")).context("seeding the corpus")?;
    }
    run(clean_toolchain_env(&mut Command::new("cargo"))
        .current_dir(&root)
        .args(["+nightly", "fuzz", "run", "--fuzz-dir", FUZZ_DIR, target])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}")))
}
