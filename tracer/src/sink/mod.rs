//! Where records go. Sinks are generic over `io::Write` and tested by printing into a `Vec<u8>`.

pub mod analysis;
pub mod filter;
mod json;
pub mod text;
pub mod unattended;

use std::io;

pub use filter::{Filter, Shown};
pub use json::{JsonChunkSink, JsonSink};
pub use text::TextSink;

use crate::record::Record;

/// Formats records into a writer: [`TextSink`] for people, [`JsonSink`] for programs (the
/// schema of `docs/schema.md`). Errors are the writer's.
pub trait Sink {
    /// Called once before the first record (the text sink prints its header).
    fn begin(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Writes one record (one line).
    fn write(&mut self, record: &Record) -> io::Result<()>;
    /// Flushes the writer.
    fn flush(&mut self) -> io::Result<()>;
    /// Whether [`Sink::write`] writes exactly [`JsonSink`]'s line for every record, so that an
    /// output may copy another JSON-lines output's line instead of formatting the record again.
    fn json_lines(&self) -> bool {
        false
    }
    /// `tracer analyze` hands each record it reads from its input here, before replaying it
    /// (the header too), so a report can show what was captured as well as what was rebuilt.
    fn input(&mut self, _record: &Record) {}
}

impl<S: Sink + ?Sized> Sink for Box<S> {
    fn begin(&mut self) -> io::Result<()> {
        (**self).begin()
    }
    fn write(&mut self, record: &Record) -> io::Result<()> {
        (**self).write(record)
    }
    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }
    fn json_lines(&self) -> bool {
        (**self).json_lines()
    }
    fn input(&mut self, record: &Record) {
        (**self).input(record);
    }
}

#[cfg(test)]
mod tests;
