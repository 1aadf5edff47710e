//! Small probes of the machine: root, programs on PATH or beside this one, git, apt.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// The repository root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let bench_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    bench_dir
        .parent()
        .map_or_else(|| bench_dir.into(), Path::to_path_buf)
}

/// A program built beside this one (`target/release/tracer`, `target/release/churn`).
pub fn sibling_program(name: &str) -> Result<PathBuf> {
    let me = env::current_exe().context("locating the bench's own binary")?;
    let path = me.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} is missing: build it first (`cargo xtask bench` builds the tracer and the bench \
             in release)",
            path.display()
        );
    }
    Ok(path)
}

/// The first line a command prints, when it runs and exits 0.
pub fn first_line(cmd: &mut Command) -> Option<String> {
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    output
        .status
        .success()
        .then(|| text.lines().next().unwrap_or("").trim().to_owned())
}

/// True when the effective uid is 0.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Finds an executable by name on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    which::which(name).ok()
}

/// Installs a Debian package with apt-get (the bench runs as root), refreshing the package
/// lists once if the first attempt fails.
pub fn apt_install(package: &str) -> Result<()> {
    if which("apt-get").is_none() {
        bail!("no apt-get on this machine");
    }
    let install = || {
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends", package])
            .status()
            .is_ok_and(|s| s.success())
    };
    eprintln!("bench: installing the Debian package {package}");
    if install() {
        return Ok(());
    }
    let updated = Command::new("apt-get")
        .args(["update", "-q"])
        .status()
        .is_ok_and(|s| s.success());
    if updated && install() {
        return Ok(());
    }
    bail!("`apt-get install {package}` failed")
}
