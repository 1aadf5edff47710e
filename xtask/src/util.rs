//! Command helpers of the subcommands: environment cleaning for nested cargo runs, `PATH`,
//! stages. Those `vm-test` uses too (echoing, status checks, probes of the machine) are in
//! `xtask-common`, re-exported here.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
pub use xtask_common::{
    as_root, echo, is_executable, is_root, probe_output, run, which, workspace_root,
};

/// Variables set by rustup and by the `cargo run` that started xtask. They must not leak
/// into a nested build driven by another toolchain (aya-build strips the same set).
const TOOLCHAIN_VARS: &[&str] = &[
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTDOC",
    "RUSTFLAGS",
    "RUSTDOCFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
];

/// Strips every toolchain and cargo variable except `CARGO_HOME` (and `RUSTUP_HOME`,
/// which is not a cargo variable), for a build with a toolchain other than xtask's.
pub fn clean_toolchain_env(cmd: &mut Command) -> &mut Command {
    for var in TOOLCHAIN_VARS {
        cmd.env_remove(var);
    }
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO") && key != "CARGO_HOME" {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// Strips only what `cargo run` sets for the xtask binary itself (package metadata),
/// keeping the user's own configuration (`RUSTFLAGS`, `CARGO_TARGET_DIR`, ...).
fn clean_package_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let set_by_cargo_run = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_MANIFEST_")
            || matches!(
                key.as_ref(),
                "CARGO_CRATE_NAME" | "CARGO_BIN_NAME" | "CARGO_PRIMARY_PACKAGE"
            );
        if set_by_cargo_run {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

/// The cargo that runs xtask (rustup's stable), for userspace builds, tests and lints.
pub fn host_cargo() -> Command {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut cmd = Command::new(cargo);
    clean_package_env(&mut cmd);
    cmd.current_dir(workspace_root());
    cmd
}

/// `PATH` with `dir` in front, unless it is already there.
pub fn path_with(dir: &Path) -> Result<OsString> {
    let current = env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = env::split_paths(&current).collect();
    if !dirs.iter().any(|d| d == dir) {
        dirs.insert(0, dir.to_path_buf());
    }
    env::join_paths(dirs).context("joining PATH")
}

/// Outcome of one stage of a multi-stage chore (`test`, `lint`).
pub struct Stages {
    chore: &'static str,
    failed: Vec<String>,
}

impl Stages {
    pub fn new(chore: &'static str) -> Self {
        Self {
            chore,
            failed: Vec::new(),
        }
    }

    /// Runs a stage, printing a banner, and records its failure instead of returning it.
    pub fn run(&mut self, name: &'static str, stage: impl FnOnce() -> Result<()>) -> bool {
        eprintln!("==> {} {name}", self.chore);
        match stage() {
            Ok(()) => true,
            Err(err) => {
                eprintln!("error: {} stage `{name}` failed: {err:#}", self.chore);
                self.failed.push(name.to_owned());
                false
            }
        }
    }

    pub fn skip(&mut self, name: &'static str, why: &str) {
        eprintln!("==> {} {name}: skipped ({why})", self.chore);
    }

    /// Fails if any stage failed, after all of them have run.
    pub fn finish(self) -> Result<()> {
        if self.failed.is_empty() {
            // Nothing more on success: cargo's own `test result:` lines stay the last ones.
            Ok(())
        } else {
            bail!("{}: failed stages: {}", self.chore, self.failed.join(", "))
        }
    }
}
