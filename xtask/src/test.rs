//! `test`: the whole workspace's tests, then the privileged ones (every `#[ignore]`d test of
//! the tracer, in any test target) as root.

use anyhow::{bail, Result};

use crate::{
    ebpf,
    run::OBJECT_VAR,
    util::{host_cargo, is_root, run, Stages},
};

pub fn test(unprivileged: bool) -> Result<()> {
    if !unprivileged && !is_root()? {
        bail!(
            "the privileged tests need root (CAP_BPF+CAP_PERFMON): run `cargo xtask test` as \
             root, or pass --unprivileged to run only the tests that need no root"
        );
    }
    let object = ebpf::build()?.object;
    let mut stages = Stages::new("test");
    stages.run("workspace", || {
        run(host_cargo()
            .env(OBJECT_VAR, &object)
            .args(["test", "--workspace"]))
    });
    if unprivileged {
        stages.skip("privileged", "--unprivileged");
    } else {
        // Every test target (privileged.rs, privileged_export.rs, ...): the privileged tests
        // are the ignored ones, and the others already ran in the workspace stage. Each
        // asserts root itself, so run without it they fail rather than skip.
        stages.run("privileged", || {
            // Every test target's ignored tests: those are the ones that need root and BPF.
            // One at a time: they share the kernel's tracepoint and the machine's ports.
            run(host_cargo().env(OBJECT_VAR, &object).args([
                "test",
                "-p",
                "tracer",
                "--tests",
                "--",
                "--ignored",
                "--test-threads=1",
            ]))
        });
    }
    stages.finish()
}
