//! `build` and `run`: the userspace tracer, with the eBPF object embedded.

use std::{
    ffi::OsString,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

use crate::{
    ebpf,
    util::{echo, host_cargo, is_root, run, which},
};

/// Env var through which `tracer/build.rs` finds the eBPF object to embed.
pub const OBJECT_VAR: &str = "TRACER_EBPF_OBJECT";

#[derive(Clone, Copy)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    fn dir(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }
}

/// Builds the eBPF object, then the tracer binary; returns the binary's path.
pub fn build(profile: Profile) -> Result<PathBuf> {
    let built = ebpf::build()?;
    build_package("tracer", &built.object, profile)?;
    binary_path("tracer", profile)
}

/// Builds the binaries of a workspace package, with `object` as the eBPF object the tracer
/// library embeds (whether or not it exists yet).
pub fn build_package(package: &str, object: &Path, profile: Profile) -> Result<()> {
    let mut cmd = host_cargo();
    cmd.env(OBJECT_VAR, object)
        .args(["build", "--bins", "-p", package]);
    if let Profile::Release = profile {
        cmd.arg("--release");
    }
    run(&mut cmd).with_context(|| format!("building {package}"))
}

/// Where cargo put a binary built with `profile`; fails if it is not there.
pub fn binary_path(name: &str, profile: Profile) -> Result<PathBuf> {
    let binary = target_dir()?.join(profile.dir()).join(name);
    if !binary.is_file() {
        bail!("the build succeeded but {} is missing", binary.display());
    }
    Ok(binary)
}

/// Builds, then replaces this process with the tracer (under `sudo -E` when not root),
/// so stdin/stdout, signals and the exit code are the tracer's own.
pub fn run_tracer(profile: Profile, args: &[OsString]) -> Result<()> {
    let root = is_root()?;
    if !root && which("sudo").is_none() {
        bail!("tracer needs root (CAP_BPF+CAP_PERFMON): run as root");
    }
    let binary = build(profile)?;
    let mut cmd = if root {
        Command::new(&binary)
    } else {
        let mut sudo = Command::new("sudo");
        sudo.arg("-E").arg(&binary);
        sudo
    };
    cmd.args(args);
    echo(&cmd);
    let err = cmd.exec();
    Err(err).with_context(|| format!("failed to exec {}", binary.display()))
}

#[derive(Deserialize)]
struct Metadata {
    target_directory: PathBuf,
}

/// Cargo's target directory for the workspace (honours `CARGO_TARGET_DIR` and config).
pub fn target_dir() -> Result<PathBuf> {
    let output = host_cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("failed to run `cargo metadata`")?;
    if !output.status.success() {
        bail!(
            "`cargo metadata` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let metadata: Metadata =
        serde_json::from_slice(&output.stdout).context("parsing `cargo metadata` output")?;
    Ok(metadata.target_directory)
}
