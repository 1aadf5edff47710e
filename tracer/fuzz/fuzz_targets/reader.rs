//! Any bytes as an export file: `tracer analyze`'s whole pure path (reader, replay, statistics,
//! text and JSON output) may refuse the input, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::{
    analyze::{analyze, Options},
    sink::{JsonSink, TextSink},
};

fuzz_target!(|data: &[u8]| {
    let opts = Options {
        timelines: true,
        transitions: true,
        close_wait_threshold_ns: Some(1),
        ..Options::default()
    };
    let _ = analyze(
        data,
        &opts,
        &mut JsonSink::new(std::io::sink()),
        &mut |_| {},
    );
    let _ = analyze(
        data,
        &opts,
        &mut TextSink::new(std::io::sink(), true),
        &mut |_| {},
    );
});
