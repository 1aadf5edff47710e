//! `test`: the whole workspace's tests, then the privileged ones (every `#[ignore]`d test of
//! the tracer) as root, then those again on every supported kernel under qemu (`vm-test`).
//! `--unprivileged` runs only the first stage, without the eBPF object; `--no-vm` skips the
//! kernel matrix.

use anyhow::{bail, Result};

use crate::{
    ebpf,
    run::OBJECT_VAR,
    util::{host_cargo, is_root, run, Stages},
};

pub fn test(unprivileged: bool, vm: bool) -> Result<()> {
    let mut stages = Stages::new("test");
    if unprivileged {
        // Nothing here loads the eBPF program, so it is not built (no apt, no bpf-linker):
        // the tracer embeds whatever object is already there, or none.
        stages.run("workspace", || {
            run(host_cargo().args(["test", "--workspace"]))
        });
        stages.skip("privileged", "--unprivileged");
        return stages.finish();
    }
    if !is_root()? {
        bail!(
            "the privileged tests need root (CAP_BPF+CAP_PERFMON): run `cargo xtask test` as \
             root, or pass --unprivileged to run only the tests that need no root"
        );
    }
    let object = ebpf::build()?.object;
    stages.run("workspace", || {
        run(host_cargo()
            .env(OBJECT_VAR, &object)
            .args(["test", "--workspace"]))
    });
    // The privileged tests are the ignored ones (tests/suite/{privileged,reliability,...}.rs);
    // the others already ran above. One at a time: they share the kernel's tracepoint. Each
    // asserts root itself, so run without it they fail rather than skip.
    stages.run("privileged", || {
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
    // The same privileged tests on every supported kernel, booted under qemu.
    if vm {
        stages.run("vm", crate::vm::stage);
    } else {
        stages.skip("vm", "--no-vm");
    }
    stages.finish()
}
