//! Any bytes from the ring buffer: decoding returns a value or an error, never panics, and a
//! decoded record (a transition or a cause of a connection's end) feeds the engine without
//! panicking either. Each record is preceded by one byte choosing its size (transition or
//! cause).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::{
    decode::{decode_any, Decoded},
    engine::{CauseSource, Engine, Options},
    units::WallClock,
};
use tracer_common::{cause::CAUSE_EVENT_SIZE, EVENT_SIZE};

fuzz_target!(|data: &[u8]| {
    let mut engine = Engine::new(
        Options {
            timelines: true,
            max_sockets: 8,
            close_wait_threshold_ns: 1,
            causes: CauseSource::Live {
                error_reports: true,
            },
            ..Options::default()
        },
        WallClock::fixed(0),
    );
    let mut out = Vec::new();
    let mut rest = data;
    while let Some((&pick, tail)) = rest.split_first() {
        let size = if pick & 1 == 0 {
            EVENT_SIZE
        } else {
            CAUSE_EVENT_SIZE
        };
        let (chunk, tail) = tail.split_at(size.min(tail.len()));
        match decode_any(chunk) {
            Ok(Decoded::Transition(t)) => engine.transition(t, &mut out),
            Ok(Decoded::Cause(c)) => engine.cause(c, &mut out),
            Err(_) => {}
        }
        if pick & 2 != 0 {
            engine.settle(u64::from(pick) << 24, &mut out);
        }
        rest = tail;
    }
    let due = engine.due(u64::MAX / 2);
    engine.alert(&due, None, u64::MAX / 2, &mut out);
    engine.finish(u64::MAX, 0, Some(0), &mut out);
});
