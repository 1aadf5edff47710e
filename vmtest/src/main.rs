//! `vm-test`: the tracer proven on real kernels. Boots each pinned Debian kernel under qemu with
//! an initramfs holding the freshly built tracer and its privileged test binaries, runs the tests
//! inside, and prints one line per kernel and scenario. Hostile-kernel scenarios (lockdown, no
//! tracefs mounted, a hardened JIT) boot the same image with other kernel arguments and check the
//! tracer's own start-up.
//!
//! `cargo xtask vm-test` builds this program, runs it with `--prepare` (kernels and qemu, before
//! the long build), builds the artefacts (the eBPF object, the release tracer, the test binaries
//! and helpers: `xtask/src/vm.rs`), then runs it with `--artefacts FILE` and the user's flags.
//! Run by hand, it boots what the last build recorded in the cache (`--reuse-build`).

mod image;
mod kernels;
mod plan;
mod qemu;
mod report;
mod table;

use std::{
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use xtask_common::{workspace_root, Artefacts, ARTEFACTS_FILE};

use crate::{
    plan::{Suite, BOOT_LIMIT_S},
    report::Report,
    table::{explain, judge, table},
};

/// Boot Debian's 5.10 to 7.3 kernels under qemu and run the privileged tests inside each;
/// prints a table and fails if any kernel fails. Kernels are cached under target/vm.
#[derive(Parser)]
#[command(name = "vm-test")]
struct VmArgs {
    /// Kernels to boot (repeatable, or comma-separated): 5.10, 6.1, 6.12, 6.18, 7.3. Default: all.
    #[arg(long = "kernel", value_delimiter = ',')]
    kernels: Vec<String>,
    /// Which privileged tests run in the guest: `full` (all), `core` (a fixed core set), or
    /// `auto` (what CI runs): full on the oldest and newest kernel booted, core on the others.
    #[arg(long, value_enum, default_value_t = Suite::Auto)]
    suite: Suite,
    /// Only tests whose name contains one of these (libtest filters; overrides --suite).
    #[arg(long = "filter", value_delimiter = ',')]
    filters: Vec<String>,
    /// Skip the hostile-kernel scenarios (lockdown, no tracefs, hardened JIT).
    #[arg(long)]
    no_hostile: bool,
    /// Seconds one boot may take before qemu is killed.
    #[arg(long, default_value_t = BOOT_LIMIT_S)]
    timeout: u64,
    /// Where kernels, the guest image and each boot's evidence are kept (default: `target/vm` in
    /// the workspace). Must be writable by the user running vm-test.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Boot the artefacts the last build recorded in the cache (`artefacts.json`) instead of
    /// building them: no eBPF toolchain, and no cargo when run as `target/debug/vm-test`.
    #[arg(long)]
    reuse_build: bool,
    /// `tcg` (software emulation), `kvm`, or `auto` (kvm only where /dev/kvm is usable and the
    /// CPU has vmx or svm: a stock kernel does not run under the nested kvm_pvm hypervisor).
    #[arg(long, default_value = "auto")]
    accel: String,
    /// Fetch the kernels (and install qemu) into the cache, then stop: what `cargo xtask
    /// vm-test` runs before its build, so a bad flag or a missing kernel fails early.
    #[arg(long, hide = true)]
    prepare: bool,
    /// The artefacts `cargo xtask vm-test` just built (a manifest: tracer, tests, helpers);
    /// recorded in the cache as `artefacts.json` for a later --reuse-build.
    #[arg(long, hide = true, value_name = "FILE")]
    artefacts: Option<PathBuf>,
}

fn main() -> ExitCode {
    match vm_test(&VmArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn vm_test(args: &VmArgs) -> Result<()> {
    let pins = kernels::select(&args.kernels)?;
    let accel = qemu::accel(&args.accel)?;
    qemu::ensure_installed()?;
    let cache = args
        .cache
        .clone()
        .unwrap_or_else(|| workspace_root().join("target/vm"));
    fs::create_dir_all(&cache).with_context(|| {
        format!(
            "creating the vm-test cache {}: it must be writable by this user (or choose one with --cache)",
            cache.display()
        )
    })?;
    let (kernels, busybox) = kernels::fetch(&pins, &cache)?;
    if args.prepare {
        return Ok(());
    }
    for kernel in &kernels {
        eprintln!(
            "vm-test: kernel {}: {}",
            kernel.name,
            kernel.source.lines().next().unwrap_or_default()
        );
    }
    let built = artefacts(args, &cache)?;
    let initramfs = cache.join("initramfs.cpio");
    image::build(
        &image::Contents {
            busybox: &busybox,
            tracer: &built.tracer,
            tests: &built.tests,
            helpers: &built.helpers,
            // Files the tests read by absolute path: the recorded exports, the deploy files
            // (checked against the binary), the schema document.
            data: &[
                workspace_root().join("tracer/tests/data"),
                workspace_root().join("deploy"),
                workspace_root().join("docs"),
            ],
        },
        &initramfs,
    )?;
    eprintln!(
        "vm-test: guest image {} ({} MiB)",
        initramfs.display(),
        fs::metadata(&initramfs)?.len() >> 20
    );

    let mut rows = Vec::new();
    let mut failed = false;
    for (i, kernel) in kernels.iter().enumerate() {
        let edge = i == 0 || i + 1 == kernels.len();
        let runs = plan::runs(
            kernel.name,
            args.suite,
            &args.filters,
            args.no_hostile,
            edge,
        );
        let image = cache.join("runs").join(kernel.name).join("initramfs.cpio");
        fs::create_dir_all(image.parent().context("a runs directory")?)?;
        image::with_modules(&busybox, &initramfs, &kernel.modules, &image)?;
        for (scenario, append, suite) in runs {
            let out = cache.join("runs").join(kernel.name).join(scenario.name);
            let started = Instant::now();
            let booted = qemu::boot(
                &kernel.vmlinuz,
                &image,
                &out,
                &append,
                accel,
                Duration::from_secs(args.timeout),
            )?;
            let report =
                Report::parse(&fs::read_to_string(out.join("report.log")).unwrap_or_default());
            let row = judge(
                kernel.name,
                &scenario,
                suite,
                &report,
                &booted,
                started.elapsed(),
            );
            failed |= !row.pass;
            eprintln!("{}", row.line());
            if !row.pass {
                eprint!("{}", explain(&report, &out));
            }
            rows.push(row);
        }
    }
    println!("{}", table(&rows));
    if failed {
        bail!(
            "vm-test: a kernel failed (evidence under {})",
            cache.join("runs").display()
        );
    }
    Ok(())
}

/// The artefacts to boot: those xtask just built (`--artefacts`), recorded in the cache as they
/// come, or with `--reuse-build` the ones last recorded there.
fn artefacts(args: &VmArgs, cache: &Path) -> Result<Artefacts> {
    let recorded = cache.join(ARTEFACTS_FILE);
    let read = |path: &Path| -> Result<Artefacts> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
    };
    if let Some(built) = &args.artefacts {
        let artefacts = read(built)?;
        fs::write(&recorded, serde_json::to_string_pretty(&artefacts)?)?;
        Ok(artefacts)
    } else if args.reuse_build {
        read(&recorded).with_context(|| {
            format!(
                "--reuse-build: no build recorded at {} (run `cargo xtask vm-test` once without it)",
                recorded.display()
            )
        })
    } else {
        bail!(
            "nothing to boot: `cargo xtask vm-test` builds the tracer and its tests and runs this \
             with them; --reuse-build boots those last recorded in {}",
            recorded.display()
        )
    }
}
