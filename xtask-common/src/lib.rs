//! What `xtask` and the programs it builds and runs (`vm-test`, in `vmtest/`) share: echoing and
//! running commands, small probes of the machine (root, PATH), and the manifest of the
//! artefacts `cargo xtask vm-test` builds for the guest.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

/// The tracer and its test binaries as `cargo xtask vm-test` built them for the guest, with the
/// eBPF object embedded. Written by xtask to `artefacts.json` in the vm-test cache, read by
/// `vm-test` (and again by `vm-test --reuse-build`).
#[derive(Serialize, Deserialize)]
pub struct Artefacts {
    /// The release tracer (the tests run it in the guest: `TRACER_TEST_BINARY`).
    pub tracer: PathBuf,
    /// The integration test binaries, run in this order with `--ignored`.
    pub tests: Vec<PathBuf>,
    /// The helper binaries the tests start.
    pub helpers: Vec<PathBuf>,
}

/// The file name of the [`Artefacts`] manifest in the vm-test cache.
pub const ARTEFACTS_FILE: &str = "artefacts.json";

/// The repository root: the parent of this crate's manifest directory (a workspace member at the top).
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

/// True when `path` is a file with an execute bit.
pub fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
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
