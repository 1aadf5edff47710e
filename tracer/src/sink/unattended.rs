//! `--quiet`: what an unattended tracer writes. Only the records an operator acts on (CLOSE_WAIT
//! reports, their resolutions, and loss reports) pass, one JSON line each, so that a service
//! manager's log (journald, under systemd) holds one entry per report.

use std::io;

use super::Sink;
use crate::record::Record;

/// Lets through only `close_wait`, `close_wait_resolved` and `lost` records.
pub struct Reports<S> {
    sink: S,
}

impl<S: Sink> Reports<S> {
    /// Wraps `sink`, which receives the records let through.
    pub fn new(sink: S) -> Self {
        Self { sink }
    }
}

impl<S: Sink> Sink for Reports<S> {
    fn write(&mut self, record: &Record) -> io::Result<()> {
        match record {
            Record::CloseWait(_) | Record::CloseWaitResolved(_) | Record::Lost(_) => {
                self.sink.write(record)
            }
            _ => Ok(()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{record::LostRecord, sink::JsonSink};

    #[test]
    fn only_reports_pass() {
        let mut out = Vec::new();
        let mut sink = Reports::new(JsonSink::new(&mut out));
        sink.begin().unwrap();
        sink.write(&Record::Summary(Box::default())).unwrap();
        sink.write(&Record::Lost(Box::new(LostRecord {
            ts_ns: 1,
            time: crate::units::WallTime::default(),
            ringbuf: 2,
            recursion_misses: 0,
            stdout: crate::delivery::Destination::default(),
            export: None,
        })))
        .unwrap();
        sink.flush().unwrap();
        drop(sink);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with(r#"{"type":"lost""#), "{text}");
    }
}
