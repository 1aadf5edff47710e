//! What the tracer says about the kernel it runs on: the header's `kernel_features` match what
//! the kernel really offers, and a kernel that does not count skipped runs gets a summary that
//! says so (`recursion_misses: null`, "not available") instead of a 0 it cannot vouch for.
//! `cargo xtask vm-test` runs this on every kernel from 5.10 (no `recursion_misses`, no
//! bpf_link for perf events) to the newest.

use std::{fs, path::Path};

use tracer::record::Record;

use crate::support::{NetNs, Tracer};

/// `major.minor` of the running kernel.
fn kernel_version() -> (u32, u32) {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

#[test]
#[ignore = "needs root and BPF"]
fn header_and_summary_state_what_the_kernel_offers() {
    let _netns = NetNs::enter();
    let tracer = Tracer::start(&["-p", "9", "-v"]);
    let stderr = tracer.stderr();
    assert!(
        stderr.contains("kernel features: lockdown"),
        "-v names the kernel's features:\n{stderr}"
    );
    let (records, summary) = tracer.stop();
    let Some(Record::Header(header)) = records.first() else {
        panic!("no header first: {records:?}")
    };
    let features = header
        .kernel_features
        .as_ref()
        .expect("kernel_features in the header");
    let version = kernel_version();
    // Facts the kernel states elsewhere: the tracer must report the same.
    assert_eq!(features.btf, Path::new("/sys/kernel/btf/vmlinux").exists());
    assert_eq!(
        features.ring_buffer,
        Some(true),
        "the program runs, so the ring buffer exists"
    );
    let fdinfo_counts_misses = version >= (5, 12);
    assert_eq!(
        features.recursion_misses,
        Some(fdinfo_counts_misses),
        "{version:?}"
    );
    assert_eq!(features.bpf_link, Some(version >= (5, 15)), "{version:?}");
    assert!(features
        .tracepoints
        .iter()
        .any(|t| t == "sock/inet_sock_set_state"));
    for tp in features
        .tracepoints
        .iter()
        .chain(&features.missing_tracepoints)
    {
        let present = Path::new("/sys/kernel/tracing/events").join(tp).is_dir();
        assert_eq!(features.tracepoints.contains(tp), present, "{tp}");
    }
    // The hook: tp_btf wherever the kernel has BTF (every supported kernel), with every group
    // of struct offsets found; otherwise the classic tracepoint, saying why.
    if features.btf {
        assert_eq!(
            features.hook.as_deref(),
            Some("tp_btf/inet_sock_set_state"),
            "{features:?}"
        );
        assert!(features.missing_offsets.is_empty(), "{features:?}");
        assert_eq!(features.hook_fallback, None);
    } else {
        assert_eq!(
            features.hook.as_deref(),
            Some("tracepoint/sock/inet_sock_set_state")
        );
        assert!(features.hook_fallback.is_some(), "{features:?}");
    }
    assert!(
        stderr.contains("; hook "),
        "-v names the hook:
{stderr}"
    );
    // The degradation: no count on a kernel that keeps none, never a made-up 0.
    if fdinfo_counts_misses {
        assert_eq!(summary.recursion_misses, Some(0), "{summary:?}");
    } else {
        assert_eq!(summary.recursion_misses, None, "{summary:?}");
    }
}
