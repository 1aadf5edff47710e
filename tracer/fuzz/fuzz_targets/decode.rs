//! Any bytes from the ring buffer: decoding returns a value or an error, never panics, and a
//! decoded record feeds the engine without panicking either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::{
    decode::decode,
    engine::{Engine, Options},
    units::WallClock,
};

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new(
        Options {
            timelines: true,
            max_sockets: 8,
            close_wait_threshold_ns: 1,
            ..Options::default()
        },
        WallClock::fixed(0),
    );
    let mut out = Vec::new();
    for chunk in data.chunks(tracer_common::EVENT_SIZE) {
        if let Ok(t) = decode(chunk) {
            engine.transition(t, &mut out);
        }
    }
    let due = engine.due(u64::MAX / 2);
    engine.alert(&due, None, u64::MAX / 2, &mut out);
    engine.finish(u64::MAX, 0, Some(0), &mut out);
});
