//! qemu: installing it when missing, choosing the accelerator, and one bounded boot.
//!
//! The guest has no disk, network or shared filesystem: the kernel and the initramfs go in,
//! the console comes out on the first serial port and the report on the second (both host
//! files). `panic=-1` with `-no-reboot` ends qemu on a guest panic; the guest's `poweroff -f`
//! ends it normally; the deadline ends everything else (a hang, or a KVM error, which pauses
//! qemu instead of exiting).

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use xtask_common::{as_root, is_root, probe_output, run, which};

const QEMU: &str = "qemu-system-x86_64";

/// How a boot ended.
pub struct Booted {
    pub timed_out: bool,
}

/// `tcg`, `kvm`, or `auto`: KVM only when /dev/kvm is usable and the CPU has hardware
/// virtualization (vmx/svm). A nested software hypervisor (kvm_pvm) offers /dev/kvm without
/// them and cannot run a stock kernel.
pub fn accel(choice: &str) -> Result<&'static str> {
    match choice {
        "tcg" => Ok("tcg"),
        "kvm" => Ok("kvm"),
        "auto" => {
            let usable = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
                .is_ok();
            let hw = fs::read_to_string("/proc/cpuinfo")
                .unwrap_or_default()
                .split_whitespace()
                .any(|flag| flag == "vmx" || flag == "svm");
            Ok(if usable && hw { "kvm" } else { "tcg" })
        }
        other => bail!("--accel {other}: expected tcg, kvm or auto"),
    }
}

/// Installs Debian's qemu-system-x86 when `qemu-system-x86_64` is missing. On bookworm with
/// qemu-utils from bookworm-backports installed, bookworm's own qemu-system-x86 would remove
/// it (Breaks: qemu-system-common << 8.0): then it comes from bookworm-backports, through an apt
/// state of its own so the machine's sources stay as they are.
pub fn ensure_installed() -> Result<()> {
    if which(QEMU).is_some() {
        return Ok(());
    }
    if !is_root()? {
        bail!("{QEMU} is missing: install it as root (`apt-get install qemu-system-x86`), or run `cargo xtask vm-test` as root once");
    }
    eprintln!("vm-test: installing qemu-system-x86 (Debian)");
    let simulated = probe_output(Command::new("apt-get").args([
        "-s",
        "install",
        "--no-install-recommends",
        "qemu-system-x86",
    ]))
    .unwrap_or_default();
    let removes = simulated.lines().any(|l| l.starts_with("Remv "));
    let mut cmd = as_root("apt-get")?;
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    if removes {
        let dir = xtask_common::workspace_root().join("target/vm/apt-qemu");
        fs::create_dir_all(dir.join("lists/partial"))?;
        let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let mut sources = String::new();
        let targets = probe_output(Command::new("apt-get").args([
            "indextargets",
            "--no-release-info",
            "--format",
            "$(REPO_URI) $(RELEASE)",
        ]))
        .unwrap_or_default();
        let mut seen = Vec::new();
        for line in targets.lines() {
            if !seen.contains(&line) {
                seen.push(line);
                if let Some((uri, suite)) = line.split_once(' ') {
                    sources.push_str(&format!("deb [signed-by={keyring}] {uri} {suite} main\n"));
                }
            }
        }
        let main = targets
            .lines()
            .find_map(|l| l.split_once(' ').filter(|(_, s)| *s == "bookworm").map(|(u, _)| u.to_owned()))
            .context("qemu-system-x86 would remove installed packages and no bookworm archive is configured to take it from bookworm-backports; install qemu-system-x86_64 by hand")?;
        sources.push_str(&format!(
            "deb [signed-by={keyring}] {main} bookworm-backports main\n"
        ));
        fs::write(dir.join("sources.list"), sources)?;
        let opts = [
            format!(
                "-oDir::Etc::sourcelist={}",
                dir.join("sources.list").display()
            ),
            "-oDir::Etc::sourceparts=-".to_owned(),
            format!("-oDir::State::Lists={}", dir.join("lists").display()),
            "-oDir::Cache::pkgcache=".to_owned(),
            "-oDir::Cache::srcpkgcache=".to_owned(),
            "-oAcquire::Languages=none".to_owned(),
        ];
        let mut update = as_root("apt-get")?;
        run(update.args(&opts).args(["update", "-qq"]))?;
        cmd.args(&opts).args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "-t",
            "bookworm-backports",
            "qemu-system-x86",
        ]);
    } else {
        let mut update = as_root("apt-get")?;
        run(update.args(["update", "-qq"]))?;
        cmd.args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "qemu-system-x86",
        ]);
    }
    run(&mut cmd).context("installing qemu-system-x86")?;
    if which(QEMU).is_none() {
        bail!("qemu-system-x86 was installed but {QEMU} is not on PATH");
    }
    Ok(())
}

/// Boots `vmlinuz` with `initramfs` and extra kernel arguments; the console goes to
/// `out/console.log`, the guest's report to `out/report.log`, qemu's own messages to
/// `out/qemu.log`. qemu is killed after `limit`.
pub fn boot(
    vmlinuz: &Path,
    initramfs: &Path,
    out: &Path,
    append: &str,
    accel: &str,
    limit: Duration,
) -> Result<Booted> {
    fs::create_dir_all(out)?;
    for file in ["console.log", "report.log", "qemu.log"] {
        let _ = fs::remove_file(out.join(file));
    }
    let cpu = if accel == "kvm" { "host" } else { "max" };
    let mut child = Command::new(QEMU)
        .args([
            "-machine", "q35", "-accel", accel, "-cpu", cpu, "-smp", "2", "-m", "2048",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 rdinit=/init loglevel=4 {append}"
        ))
        .arg("-serial")
        .arg(format!("file:{}", out.join("console.log").display()))
        .arg("-serial")
        .arg(format!("file:{}", out.join("report.log").display()))
        .stdin(Stdio::null())
        .stdout(fs::File::create(out.join("qemu.log"))?)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {QEMU}"))?;
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(Booted { timed_out: false });
        }
        if Instant::now() >= deadline {
            // Our own child, by PID: kill and reap it.
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Booted { timed_out: true });
        }
        thread::sleep(Duration::from_millis(200));
    }
}
