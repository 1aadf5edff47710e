//! Embeds the eBPF object built by `cargo xtask build-ebpf`. When it is missing, an empty file
//! is embedded instead and loading fails at run time with a clear error, so the pure logic still
//! builds and tests without the eBPF toolchain.

use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=TRACER_EBPF_OBJECT");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let object = env::var_os("TRACER_EBPF_OBJECT").map_or_else(
        || manifest.join("../tracer-ebpf/target/bpfel-unknown-none/release/tracer-ebpf"),
        PathBuf::from,
    );
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("tracer-ebpf.o");
    if let Ok(bytes) = fs::read(&object) {
        fs::write(&out, bytes).expect("write OUT_DIR/tracer-ebpf.o");
    } else {
        println!(
            "cargo:warning=eBPF object {} not found: the tracer will build but cannot load; run `cargo xtask build`",
            object.display()
        );
        fs::write(&out, []).expect("write OUT_DIR/tracer-ebpf.o");
    }
}
