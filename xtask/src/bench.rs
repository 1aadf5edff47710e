//! `bench`: builds the bench crate (`bench/`: the `bench` and `churn` binaries) and the tracer
//! in release, then replaces this process with the bench, given the flags as they are. With
//! `--help`, only the bench is built, to print its own help.

use std::{ffi::OsString, os::unix::process::CommandExt as _, process::Command};

use anyhow::{bail, Context as _, Result};

use crate::{
    ebpf,
    run::{self, Profile},
    util::{echo, is_root},
};

pub fn bench(args: &[OsString]) -> Result<()> {
    let help = args.iter().any(|a| a == "--help" || a == "-h");
    if help {
        // The tracer library (a dependency of the bench) embeds the object if it is there.
        run::build_package("bench", &ebpf::object_path(), Profile::Release)?;
    } else {
        if !is_root()? {
            bail!("the bench loads eBPF programs and creates network namespaces: run it as root");
        }
        // The tracer first (it builds the eBPF object): the bench runs the one beside it.
        run::build(Profile::Release)?;
        run::build_package("bench", &ebpf::object_path(), Profile::Release)?;
    }
    let binary = run::binary_path("bench", Profile::Release)?;
    let mut cmd = Command::new(&binary);
    cmd.args(args);
    echo(&cmd);
    let err = cmd.exec();
    Err(err).with_context(|| format!("failed to exec {}", binary.display()))
}
