//! `lint`: rustfmt and clippy on both workspaces.

use anyhow::Result;

use crate::{
    ebpf,
    run::OBJECT_VAR,
    util::{host_cargo, run, Stages},
};

pub fn lint() -> Result<()> {
    let mut stages = Stages::new("lint");
    stages.run("fmt", || {
        let workspace = run(host_cargo().args(["fmt", "--all", "--check"]));
        // The eBPF crate is its own workspace: `--all` above does not reach it.
        let manifest = ebpf::crate_dir().join("Cargo.toml");
        let ebpf = run(host_cargo()
            .args(["fmt", "--check", "--manifest-path"])
            .arg(&manifest));
        workspace.and(ebpf)
    });

    // tracer/build.rs embeds the object, so clippy on the workspace needs it built.
    let mut built = None;
    stages.run("build-ebpf", || {
        built = Some(ebpf::build()?);
        Ok(())
    });
    let Some(built) = built else {
        stages.skip("clippy", "no eBPF object");
        stages.skip("clippy-ebpf", "no eBPF object");
        return stages.finish();
    };

    // Every member and target: the tracer's tests and helper binary, the bench, the kernel
    // matrix (vmtest/, with its unit tests), and the fuzz targets of tracer/fuzz (type-checked here on stable; `cargo xtask fuzz` runs them).
    // `--locked`: a Cargo.lock that no longer matches the manifests fails here, not in a user's
    // build.
    stages.run("clippy", || {
        run(host_cargo().env(OBJECT_VAR, &built.object).args([
            "clippy",
            "--locked",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    });
    // The library's docs build without warnings (broken or private links), and those of the
    // kernel matrix (vmtest/, outside the default members) and of what it shares with xtask.
    stages.run("doc", || {
        run(host_cargo()
            .env(OBJECT_VAR, &built.object)
            .env("RUSTDOCFLAGS", "-D warnings")
            .args(["doc", "--no-deps", "--package", "tracer"])
            .args(["--package", "vmtest", "--package", "xtask-common"]))
    });
    match ebpf::clippy_command(&built.toolchain) {
        Ok(Some(mut cmd)) => {
            stages.run("clippy-ebpf", || run(&mut cmd));
        }
        Ok(None) => stages.skip("clippy-ebpf", "no clippy for the eBPF toolchain"),
        Err(err) => {
            stages.run("clippy-ebpf", || Err(err));
        }
    }
    stages.finish()
}
