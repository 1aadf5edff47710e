//! `vm-test`: builds the kernel matrix (`vmtest/`, the `vm-test` binary) and runs it with the
//! flags as they are. Unless `--reuse-build` (or `--help`), it first lets `vm-test --prepare`
//! fetch the kernels and install qemu, then builds what the guest runs (the eBPF object, the
//! release tracer, the test binaries and their helpers) and hands `vm-test` their manifest.

use std::{
    ffi::OsString,
    fs,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use xtask_common::{Artefacts, ARTEFACTS_FILE};

use crate::{
    ebpf,
    run::{binary_path, build_package, target_dir, Profile, OBJECT_VAR},
    util::{echo, host_cargo, run},
};

/// `cargo xtask vm-test`: replaces this process with `vm-test`, so its table, messages and exit
/// status are the chore's own.
pub fn vm_test(args: &[OsString]) -> Result<()> {
    let mut cmd = command(args)?;
    echo(&cmd);
    let err = cmd.exec();
    Err(err).with_context(|| format!("failed to exec {}", cmd.get_program().to_string_lossy()))
}

/// The kernel matrix as a stage of `cargo xtask test` (every kernel, `--suite auto`).
pub fn stage() -> Result<()> {
    run(&mut command(&[])?)
}

/// `vm-test` with `args`, ready to run after the preparation and the build it needs.
fn command(args: &[OsString]) -> Result<Command> {
    // vm-test does not embed the eBPF object (it does not depend on the tracer): no eBPF build.
    build_package("vmtest", &ebpf::object_path(), Profile::Debug)?;
    let binary = binary_path("vm-test", Profile::Debug)?;
    let mut cmd = Command::new(&binary);
    let help = args.iter().any(|a| a == "--help" || a == "-h");
    if !help && !args.iter().any(|a| a == "--reuse-build") {
        run(Command::new(&binary).arg("--prepare").args(args))?;
        let manifest = target_dir()?.join("vm-test").join(ARTEFACTS_FILE);
        fs::create_dir_all(manifest.parent().context("a manifest directory")?)?;
        fs::write(&manifest, serde_json::to_string_pretty(&build()?)?)?;
        cmd.arg("--artefacts").arg(manifest);
    }
    cmd.args(args);
    Ok(cmd)
}

#[derive(Deserialize)]
struct Artifact {
    reason: String,
    #[serde(default)]
    executable: Option<PathBuf>,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    profile: Option<ArtifactProfile>,
}

#[derive(Deserialize)]
struct ArtifactProfile {
    test: bool,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    kind: Vec<String>,
}

/// The tracer and its test binaries, built as `cargo test` builds them, with the eBPF object.
fn build() -> Result<Artefacts> {
    let object = ebpf::build()?.object;
    let out = host_cargo()
        .env(OBJECT_VAR, &object)
        .args(["test", "-p", "tracer", "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut built = Artefacts {
        tracer: PathBuf::new(),
        tests: Vec::new(),
        helpers: Vec::new(),
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(artifact) = serde_json::from_str::<Artifact>(line) else {
            continue;
        };
        let (Some(exe), Some(target)) = (artifact.executable, artifact.target) else {
            continue;
        };
        // A bin or lib built as a test harness (its unit tests) is not the program itself.
        let harness = artifact.profile.as_ref().is_some_and(|p| p.test);
        if artifact.reason != "compiler-artifact"
            || (harness && !target.kind.iter().any(|k| k == "test"))
        {
            continue;
        }
        if target.kind.iter().any(|k| k == "test") {
            built.tests.push(exe);
        } else if target.kind.iter().any(|k| k == "bin") && target.name != "tracer" {
            // The tracer itself is the release build (below).
            built.helpers.push(exe);
        }
    }
    if built.tests.is_empty() {
        bail!("cargo test --no-run built no integration test binary");
    }
    built.tests.sort();
    built.tests.dedup();
    // The guest's tests run the release tracer (`TRACER_TEST_BINARY`): under software emulation
    // the unoptimized one spends about ten seconds of every start parsing the kernel's BTF.
    build_package("tracer", &object, Profile::Release)?;
    built.tracer = binary_path("tracer", Profile::Release)?;
    Ok(built)
}
