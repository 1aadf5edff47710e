//! Command helpers shared by the subcommands: echoing, status checks, environment
//! cleaning for nested cargo runs, and small probes of the machine (root, PATH).

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// The repository root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Prints a command the way a shell would show it, on stderr (stdout stays free for
/// the tracer's own output and for paths a script may capture).
pub fn echo(cmd: &Command) {
    let mut line = String::from("$");
    if let Some(dir) = cmd.get_current_dir() {
        line.push_str(&format!(" (cd {} &&", dir.display()));
    }
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            line.push_str(&format!(
                " {}={}",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    line.push(' ');
    line.push_str(&cmd.get_program().to_string_lossy());
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&arg.to_string_lossy());
    }
    if cmd.get_current_dir().is_some() {
        line.push(')');
    }
    eprintln!("{line}");
}

/// Echoes and runs a command with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    echo(cmd);
    let program = cmd.get_program().to_string_lossy().into_owned();
    let status = cmd
        .status()
        .with_context(|| format!("failed to start `{program}`"))?;
    if !status.success() {
        bail!("`{program}` failed ({status})");
    }
    Ok(())
}

/// Runs a command quietly and returns its stdout, or `None` if it could not start
/// or did not exit 0. For probes such as `bpf-linker --version`.
pub fn probe_output(cmd: &mut Command) -> Option<String> {
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

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

/// True when the effective uid is 0.
pub fn is_root() -> Result<bool> {
    let status = procfs::process::Process::myself()
        .and_then(|me| me.status())
        .context("reading /proc/self/status")?;
    Ok(status.euid == 0)
}

/// Finds an executable by name on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
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

/// A command that needs root: as is when root, under `sudo` otherwise.
pub fn as_root(program: &str) -> Result<Command> {
    if is_root()? {
        return Ok(Command::new(program));
    }
    if which("sudo").is_none() {
        bail!("`{program}` needs root and sudo is not installed: run this as root");
    }
    let mut cmd = Command::new("sudo");
    cmd.arg(program);
    Ok(cmd)
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
