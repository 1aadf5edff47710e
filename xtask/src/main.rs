//! Chores for the tracer: toolchain setup, eBPF and userspace builds, run, test, lint, fuzz,
//! bench (bench/) and vm-test (vmtest/).
//!
//! Progress goes to stderr; stdout carries only what a script may want (object and
//! binary paths) and, for `run`, the tracer's own output.

mod bench;
mod ebpf;
mod fuzz;
mod lint;
mod run;
mod test;
mod util;
mod vm;

use std::{ffi::OsString, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::run::Profile;

#[derive(Parser)]
#[command(name = "xtask", about = "Chores for the tracer workspace")]
struct Cli {
    #[command(subcommand)]
    command: Chore,
}

#[derive(Subcommand)]
enum Chore {
    /// Install the eBPF toolchain if missing (Debian rustc-web + bpf-linker, or rustup
    /// nightly with rust-src). TRACER_EBPF_TOOLCHAIN=debian|nightly forces one.
    Setup,
    /// Build the eBPF object (release) and print its path.
    BuildEbpf,
    /// Build the eBPF object, then the tracer; print the binary's path.
    Build {
        /// The release profile (optimized, as `cargo xtask run` and the bench use); without
        /// it, the debug profile.
        #[arg(long)]
        release: bool,
    },
    /// Build (release unless --debug), then run the tracer as root (via `sudo -E` if needed).
    Run {
        /// Run the debug build (faster to build, slower to run) instead of the release one.
        #[arg(long)]
        debug: bool,
        /// Arguments for the tracer, after `--`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Run the workspace tests, then the privileged tests (needs root), then those on every
    /// supported kernel under qemu (`vm-test`).
    Test {
        /// Run only the tests that need no root (skips the ignored, privileged tests).
        #[arg(long)]
        unprivileged: bool,
        /// Skip the kernel matrix (`cargo xtask vm-test`).
        #[arg(long)]
        no_vm: bool,
    },
    /// rustfmt and clippy (warnings denied) on the workspace and on the eBPF crate, rustdoc
    /// with warnings denied, and the fuzz targets type-checked: what CI runs first.
    Lint,
    /// Fuzz a target of tracer/fuzz (decode, reader) for a bounded time (rustup nightly).
    Fuzz {
        /// The target: `decode` (ring buffer records) or `reader` (export files).
        target: String,
        /// Stop after this many seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u32,
    },
    /// Benchmark the tracer at full connection churn on loopback (root; `bench --help`).
    ///
    /// Builds the bench crate (bench/) and the tracer in release, then runs the bench with
    /// these flags; `cargo xtask bench --help` lists them.
    #[command(disable_help_flag = true)]
    Bench {
        /// The bench's flags (see `cargo xtask bench --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Boot Debian's 5.10 to 7.3 kernels under qemu and run the privileged tests inside each;
    /// prints a table and fails if any kernel fails. Kernels are cached under target/vm.
    ///
    /// Builds the kernel matrix (vmtest/) and what the guest runs, then runs the matrix with
    /// these flags; `cargo xtask vm-test --help` lists them.
    #[command(disable_help_flag = true)]
    VmTest {
        /// The matrix's flags (see `cargo xtask vm-test --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(chore: Chore) -> Result<()> {
    match chore {
        Chore::Setup => ebpf::setup().map(drop),
        Chore::BuildEbpf => {
            println!("{}", ebpf::build()?.object.display());
            Ok(())
        }
        Chore::Build { release } => {
            let profile = if release {
                Profile::Release
            } else {
                Profile::Debug
            };
            println!("{}", run::build(profile)?.display());
            Ok(())
        }
        Chore::Run { debug, args } => {
            let profile = if debug {
                Profile::Debug
            } else {
                Profile::Release
            };
            run::run_tracer(profile, &args)
        }
        Chore::Test {
            unprivileged,
            no_vm,
        } => test::test(unprivileged, !no_vm),
        Chore::Lint => lint::lint(),
        Chore::Fuzz { target, seconds } => fuzz::fuzz(&target, seconds),
        Chore::Bench { args } => bench::bench(&args),
        Chore::VmTest { args } => vm::vm_test(&args),
    }
}
