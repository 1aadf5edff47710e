//! The guest image: one kernel-independent initramfs (uncompressed newc cpio) holding a static
//! busybox, the guest's `/init`, and the project's freshly built binaries (the tracer, the test
//! binaries and their helpers) at the same absolute paths as on the host, so the tests' compiled-in
//! paths (`CARGO_BIN_EXE_*`, `CARGO_MANIFEST_DIR`) hold inside the guest too. The Debian cloud
//! kernels build in the serial console, loopback, tmpfs, BPF and tracefs; each boot appends the
//! one kernel's netlink `sock_diag` modules ([`with_modules`]), which the guest loads.

use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

use xtask_common::{probe_output, which};

/// The guest's PID 1 (a busybox shell script).
const INIT: &str = include_str!("guest-init.sh");

/// Host tools the tests call that busybox lacks or implements only in part: iproute2 (network
/// namespaces, veth) and util-linux's `setpriv` (dropping capabilities).
const HOST_TOOLS: &[&str] = &["ip", "ss", "setpriv", "nsenter", "unshare"];

/// What goes into the image.
pub struct Contents<'a> {
    pub busybox: &'a Path,
    /// The tracer binary (the one the tests run).
    pub tracer: &'a Path,
    /// Test binaries, run in this order with `--ignored`.
    pub tests: &'a [PathBuf],
    /// Other executables the tests start (helper binaries).
    pub helpers: &'a [PathBuf],
    /// Directories copied as they are (test data the tests read by absolute path).
    pub data: &'a [PathBuf],
}

/// Builds the initramfs at `out`.
pub fn build(contents: &Contents<'_>, out: &Path) -> Result<()> {
    let stage = out.with_extension("stage");
    let _ = fs::remove_dir_all(&stage);
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "etc",
        "vm",
        "var/run",
        "sys/fs/bpf",
    ] {
        fs::create_dir_all(stage.join(dir))?;
    }
    fs::copy(contents.busybox, stage.join("bin/busybox"))?;
    let applets =
        probe_output(Command::new(contents.busybox).arg("--list")).context("busybox --list")?;
    for applet in applets.lines().filter(|a| *a != "busybox") {
        symlink("busybox", stage.join("bin").join(applet))?;
    }
    fs::write(stage.join("init"), INIT)?;
    fs::set_permissions(stage.join("init"), fs::Permissions::from_mode(0o755))?;
    fs::write(
        stage.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    fs::write(stage.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;

    let mut programs: Vec<PathBuf> = vec![contents.tracer.to_path_buf()];
    programs.extend(contents.tests.iter().cloned());
    programs.extend(contents.helpers.iter().cloned());
    for tool in HOST_TOOLS {
        match which(tool) {
            // /usr/bin first: busybox's applets of the same name stay in /bin as fallbacks.
            Some(path) => {
                copy_at(&path, &stage, &Path::new("/usr/bin").join(tool))?;
                programs.push(path);
            }
            None => eprintln!(
                "vm-test: `{tool}` is not on this host; tests that need it will fail in the guest"
            ),
        }
    }
    for program in &programs {
        copy_at(program, &stage, program)?;
        strip(&stage.join(program.strip_prefix("/").unwrap_or(program)));
        for lib in libraries(program) {
            copy_at(&lib, &stage, &lib)?;
        }
    }
    for dir in contents.data {
        copy_tree(dir, &stage.join(dir.strip_prefix("/").unwrap_or(dir)))?;
    }
    // The tests to run, one path a line, and the tracer's path for the smoke check.
    let list: String = contents
        .tests
        .iter()
        .map(|t| format!("{}\n", t.display()))
        .collect();
    fs::write(stage.join("vm/tests"), list)?;
    fs::write(
        stage.join("vm/tracer"),
        format!("{}\n", contents.tracer.display()),
    )?;

    archive(contents.busybox, &stage, out)?;
    fs::remove_dir_all(&stage)?;
    Ok(())
}

/// Writes `out`: the kernel-independent image `base` followed by a second archive holding one
/// kernel's `modules` as `/vm/modules/N-FILE` (N keeps the load order); the kernel unpacks
/// concatenated archives in turn.
pub fn with_modules(busybox: &Path, base: &Path, modules: &[PathBuf], out: &Path) -> Result<()> {
    let stage = out.with_extension("stage");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(stage.join("vm/modules"))?;
    for (i, module) in modules.iter().enumerate() {
        let name = module.file_name().context("a module file")?;
        fs::copy(
            module,
            stage.join(format!("vm/modules/{i}-{}", name.to_string_lossy())),
        )?;
    }
    let extra = out.with_extension("modules.cpio");
    archive(busybox, &stage, &extra)?;
    fs::remove_dir_all(&stage)?;
    let mut image = fs::File::create(out)?;
    for part in [base, &extra] {
        std::io::copy(&mut fs::File::open(part)?, &mut image)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    fs::remove_file(extra)?;
    Ok(())
}

/// Drops debug info (a debug test binary is mostly DWARF; the image is unpacked into the
/// guest's memory at every boot). Without objcopy the binary stays as it is.
fn strip(binary: &Path) {
    if which("objcopy").is_some() {
        let _ = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .status();
    }
}

/// Copies `from` to `stage` + `at`, following links (the guest gets plain files).
fn copy_at(from: &Path, stage: &Path, at: &Path) -> Result<()> {
    let dest = stage.join(at.strip_prefix("/").unwrap_or(at));
    if dest.exists() {
        return Ok(());
    }
    fs::create_dir_all(dest.parent().context("a path with a parent")?)?;
    fs::copy(from, &dest)
        .with_context(|| format!("copying {} into the guest image", from.display()))?;
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// The shared libraries (and the ELF interpreter) `ldd` lists for `program`, at host paths.
fn libraries(program: &Path) -> Vec<PathBuf> {
    let Some(out) = probe_output(Command::new("ldd").arg(program)) else {
        // "not a dynamic executable" exits 1: a static program needs nothing.
        return Vec::new();
    };
    out.split_whitespace()
        .filter(|word| word.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// Writes the staged tree as an uncompressed newc archive (the kernel unpacks it faster than it
/// inflates gzip), with busybox's `cpio` so the host needs none.
fn archive(busybox: &Path, stage: &Path, out: &Path) -> Result<()> {
    let files = probe_output(Command::new("find").arg(".").current_dir(stage))
        .context("listing the guest image")?;
    let mut child = Command::new(busybox)
        .args(["cpio", "-o", "-H", "newc"])
        .current_dir(stage)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(out)?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting busybox cpio")?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().context("cpio stdin")?;
        stdin.write_all(files.as_bytes())?;
    }
    if !child.wait()?.success() {
        bail!("busybox cpio failed writing {}", out.display());
    }
    Ok(())
}
