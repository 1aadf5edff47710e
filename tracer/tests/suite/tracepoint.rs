//! The tracepoint record as the eBPF program reads it (`tracer_common::tracepoint`), against
//! the kernel's own description of it: a kernel that moves or resizes a field is caught here
//! with the field's name, before the program reads garbage.

use std::{fs, path::Path};

use tracer::cause::format::mismatches;
use tracer_common::tracepoint::FIELDS;

use crate::support::NetNs;

const TRACEFS: &str = "/sys/kernel/tracing";
const FORMAT: &str = "events/sock/inet_sock_set_state/format";

#[test]
#[ignore = "needs root and BPF"]
fn the_running_kernels_record_matches_the_programs_offsets() {
    let _netns = NetNs::enter();
    let tracefs = Path::new(TRACEFS);
    if !tracefs.join("events").is_dir() {
        // As the tracer does when tracefs is not mounted.
        nix::mount::mount(
            Some("nodev"),
            tracefs,
            Some("tracefs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .unwrap_or_else(|e| {
            panic!("tracefs is not mounted at {TRACEFS} and mounting it failed: {e}")
        });
    }
    let path = tracefs.join(FORMAT);
    let format = fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e} (a kernel without the tracepoint?)",
            path.display()
        )
    });
    let wrong = mismatches(&FIELDS, &format);
    assert!(
        wrong.is_empty(),
        "the eBPF program's tracepoint offsets (tracer-common/src/tracepoint.rs) do not match \
         this kernel ({}):\n{}\n{format}",
        path.display(),
        wrong.join("\n")
    );
}

/// The format file of Linux 6.18, as `format` shows it.
const FORMAT_6_18: &str = "name: inet_sock_set_state\nID: 2287\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;\n\
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;\n\
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;\n\
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;\n\
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;\n\
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;\n\
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;\n\
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;\n\
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;\n\
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;\n\n\
print fmt: \"family=%s protocol=%s\", REC->family, REC->protocol\n";

/// Without root: the offsets match Linux 6.18's record, and a moved field is named.
#[test]
fn the_offsets_match_linux_6_18_and_a_moved_field_is_named() {
    assert_eq!(mismatches(&FIELDS, FORMAT_6_18), Vec::<String>::new());
    let moved = FORMAT_6_18.replace("dport;\toffset:26;", "dport;\toffset:28;");
    assert_eq!(
        mismatches(&FIELDS, &moved),
        ["field `dport` at offset 28, size 2 (the program reads offset 26, size 2)"]
    );
    let gone = FORMAT_6_18.replace("skaddr", "sk");
    assert_eq!(mismatches(&FIELDS, &gone), ["no field `skaddr`"]);
}
