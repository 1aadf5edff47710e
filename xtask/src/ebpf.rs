//! The eBPF toolchain (see shared TOOLCHAIN.md) and the build of `tracer-ebpf`.
//!
//! Two routes: rustup nightly with `rust-src` (aya's usual one), or Debian's
//! `rustc-web` with its library source, for machines whose rustup has no `rust-src`.
//! Both link with `bpf-linker`. `TRACER_EBPF_TOOLCHAIN=debian|nightly` forces a route.

use std::{
    env, fmt,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{bail, Context as _, Result};

use crate::util::{
    as_root, clean_toolchain_env, host_cargo, is_executable, path_with, probe_output, run, which,
    workspace_root,
};

const DEBIAN_PACKAGES: &[&str] = &["rustc-web", "cargo-web", "rust-web-src", "llvm-22-dev"];
const DEBIAN_CLIPPY_PACKAGE: &str = "rust-web-clippy";
const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const DEBIAN_CARGO_CLIPPY: &str = "/usr/bin/cargo-clippy";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13.0";
const TOOLCHAIN_VAR: &str = "TRACER_EBPF_TOOLCHAIN";

/// The eBPF toolchain a build uses.
pub enum Toolchain {
    /// Debian's rustc-web; `version` is its `major.minor`.
    Debian { version: String },
    /// rustup's nightly with the `rust-src` component.
    Nightly,
}

impl fmt::Display for Toolchain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Debian { version } => write!(f, "Debian rustc-web {version} ({DEBIAN_RUSTC})"),
            Self::Nightly => f.write_str("rustup nightly with rust-src"),
        }
    }
}

/// A built eBPF object and the toolchain that built it.
pub struct Built {
    pub toolchain: Toolchain,
    pub object: PathBuf,
}

pub fn crate_dir() -> PathBuf {
    workspace_root().join("tracer-ebpf")
}

pub fn object_path() -> PathBuf {
    crate_dir().join("target/bpfel-unknown-none/release/tracer-ebpf")
}

/// Picks the eBPF toolchain and installs what it lacks. Idempotent.
pub fn setup() -> Result<Toolchain> {
    let forced = env::var(TOOLCHAIN_VAR).ok().filter(|v| !v.is_empty());
    let toolchain = match forced.as_deref() {
        Some("debian") => setup_debian()?,
        Some("nightly") => setup_nightly()?,
        Some(other) => bail!("{TOOLCHAIN_VAR}={other}: expected `debian` or `nightly`"),
        None if nightly_has_rust_src() && bpf_linker().is_some() => setup_nightly()?,
        None => setup_debian()?,
    };
    eprintln!("eBPF toolchain: {toolchain}");
    Ok(toolchain)
}

/// Sets up the toolchain, builds the eBPF crate (release) and returns the object.
pub fn build() -> Result<Built> {
    let toolchain = setup()?;
    let dir = crate_dir();
    if !dir.join("Cargo.toml").is_file() {
        bail!(
            "{} has no Cargo.toml: the eBPF crate is missing",
            dir.display()
        );
    }
    let mut cmd = toolchain_cargo(&toolchain)?;
    cmd.args(["build", "--release"]);
    run(&mut cmd).context("building the eBPF crate")?;
    let object = object_path();
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} is missing",
            object.display()
        );
    }
    Ok(Built { toolchain, object })
}

/// `cargo clippy` for the eBPF crate, or `None` (with a note) when the toolchain has
/// no clippy. May install Debian's clippy package.
pub fn clippy_command(toolchain: &Toolchain) -> Result<Option<Command>> {
    let mut cmd = match toolchain {
        Toolchain::Debian { .. } => {
            if !is_executable(Path::new(DEBIAN_CARGO_CLIPPY))
                && !apt_install_if_available(DEBIAN_CLIPPY_PACKAGE)?
            {
                eprintln!("note: Debian has no `{DEBIAN_CLIPPY_PACKAGE}` package here: eBPF clippy skipped");
                return Ok(None);
            }
            // cargo-clippy runs `$CARGO check` with the clippy-driver beside itself.
            let mut cmd = debian_cargo_env(Command::new(DEBIAN_CARGO_CLIPPY))?;
            cmd.env("CARGO", DEBIAN_CARGO).arg("clippy");
            cmd
        }
        Toolchain::Nightly => {
            if !nightly_has_component("clippy") {
                eprintln!("note: rustup nightly has no clippy component: eBPF clippy skipped");
                return Ok(None);
            }
            let mut cmd = toolchain_cargo(toolchain)?;
            cmd.arg("clippy");
            cmd
        }
    };
    cmd.args(["--release", "--", "-D", "warnings"]);
    Ok(Some(cmd))
}

/// A cargo of the given toolchain, in the eBPF crate, with a clean environment.
fn toolchain_cargo(toolchain: &Toolchain) -> Result<Command> {
    match toolchain {
        Toolchain::Debian { .. } => debian_cargo_env(Command::new(DEBIAN_CARGO)),
        Toolchain::Nightly => {
            let mut cmd = Command::new("rustup");
            cmd.args(["run", "nightly", "cargo"]);
            ebpf_env(cmd)
        }
    }
}

fn debian_cargo_env(cmd: Command) -> Result<Command> {
    let mut cmd = ebpf_env(cmd)?;
    // Without RUSTC, Debian's cargo would find rustup's rustc on PATH.
    cmd.env("RUSTC", DEBIAN_RUSTC).env("RUSTC_BOOTSTRAP", "1");
    Ok(cmd)
}

fn ebpf_env(mut cmd: Command) -> Result<Command> {
    clean_toolchain_env(&mut cmd);
    cmd.current_dir(crate_dir());
    let (linker, _) = bpf_linker().context("bpf-linker not found: run `cargo xtask setup`")?;
    if let Some(dir) = linker.parent() {
        if which("bpf-linker").as_deref() != Some(linker.as_path()) {
            cmd.env("PATH", path_with(dir)?);
        }
    }
    Ok(cmd)
}

fn setup_debian() -> Result<Toolchain> {
    apt_install(DEBIAN_PACKAGES)?;
    ensure_bpf_linker()?;
    let version = probe_output(Command::new(DEBIAN_RUSTC).arg("--version"))
        .with_context(|| format!("{DEBIAN_RUSTC} --version failed"))?;
    // "rustc 1.96.0 (ac68faa20 2026-05-25) ..." -> "1.96"
    let version = version
        .split_whitespace()
        .nth(1)
        .map(|v| v.split('.').take(2).collect::<Vec<_>>().join("."))
        .with_context(|| format!("unexpected `{DEBIAN_RUSTC} --version` output: {version}"))?;
    Ok(Toolchain::Debian { version })
}

fn setup_nightly() -> Result<Toolchain> {
    if !nightly_has_rust_src() {
        bail!(
            "{TOOLCHAIN_VAR}=nightly, but rustup's nightly has no rust-src component: \
             run `rustup toolchain install nightly --component rust-src`, or use {TOOLCHAIN_VAR}=debian"
        );
    }
    match bpf_linker() {
        Some((path, version)) => eprintln!("bpf-linker {version} found ({})", path.display()),
        None => ensure_bpf_linker()?,
    }
    Ok(Toolchain::Nightly)
}

fn nightly_has_component(component: &str) -> bool {
    which("rustup").is_some()
        && probe_output(Command::new("rustup").args([
            "component",
            "list",
            "--toolchain",
            "nightly",
            "--installed",
        ]))
        .is_some_and(|out| out.lines().any(|line| line.starts_with(component)))
}

fn nightly_has_rust_src() -> bool {
    nightly_has_component("rust-src")
}

/// bpf-linker's path and version, from PATH or cargo's bin directory.
fn bpf_linker() -> Option<(PathBuf, String)> {
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    let path = which("bpf-linker").or_else(|| {
        cargo_home
            .map(|home| home.join("bin/bpf-linker"))
            .filter(|p| is_executable(p))
    })?;
    // "bpf-linker 0.13.0"
    let version = probe_output(Command::new(&path).arg("--version"))?;
    let version = version.split_whitespace().last()?.to_owned();
    Some((path, version))
}

fn ensure_bpf_linker() -> Result<()> {
    let found = bpf_linker();
    if let Some((path, version)) = &found {
        if version == BPF_LINKER_VERSION {
            eprintln!(
                "bpf-linker {version} already installed ({})",
                path.display()
            );
            return Ok(());
        }
        eprintln!(
            "bpf-linker {version} found ({}), want {BPF_LINKER_VERSION}",
            path.display()
        );
    }
    apt_install(&["llvm-22-dev"])?;
    eprintln!("installing bpf-linker {BPF_LINKER_VERSION} (LLVM 22 from {LLVM_PREFIX})");
    let mut cmd = host_cargo();
    cmd.env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "--locked",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--no-default-features",
        "--features",
        "llvm-22",
    ]);
    run(&mut cmd).context("installing bpf-linker")?;
    match bpf_linker() {
        Some((_, version)) if version == BPF_LINKER_VERSION => Ok(()),
        Some((path, version)) => bail!(
            "installed bpf-linker {BPF_LINKER_VERSION}, but {} (version {version}) comes first on PATH",
            path.display()
        ),
        None => bail!("installed bpf-linker, but it is neither on PATH nor in $CARGO_HOME/bin"),
    }
}

fn dpkg_installed(package: &str) -> bool {
    probe_output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.contains("install ok installed"))
}

/// Installs the Debian packages that are missing; says which ones it installs.
fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("Debian packages already installed: {}", packages.join(" "));
        return Ok(());
    }
    if which("apt-get").is_none() {
        bail!(
            "missing Debian packages {} and no apt-get: install rustup nightly with rust-src \
             and bpf-linker instead",
            missing.join(" ")
        );
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    apt_update_once()?;
    let mut cmd = as_root("apt-get")?;
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing);
    run(&mut cmd).context("apt-get install")
}

/// Installs `package` if apt knows it; `false` when it has no candidate version.
pub(crate) fn apt_install_if_available(package: &str) -> Result<bool> {
    if which("apt-cache").is_none() {
        return Ok(false);
    }
    if !apt_has_candidate(package) {
        // The package lists may be missing or stale: refresh them once and look again.
        apt_update_once()?;
        if !apt_has_candidate(package) {
            return Ok(false);
        }
    }
    apt_install(&[package])?;
    Ok(true)
}

fn apt_has_candidate(package: &str) -> bool {
    probe_output(Command::new("apt-cache").args(["policy", package])).is_some_and(|out| {
        out.lines()
            .filter_map(|line| line.trim().strip_prefix("Candidate:"))
            .any(|candidate| candidate.trim() != "(none)")
    })
}

fn apt_update_once() -> Result<()> {
    static UPDATED: AtomicBool = AtomicBool::new(false);
    if UPDATED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    let mut cmd = as_root("apt-get")?;
    cmd.args(["update", "-q"]);
    run(&mut cmd).context("apt-get update")
}
