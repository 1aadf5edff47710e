//! Formatting on the event loop's thread, writing on a dedicated one.
//!
//! Records are formatted as soon as the engine produces them, into an in-memory chunk, and
//! dropped on the thread that allocated them. A dedicated thread owns the destination (stdout,
//! or the export file: each has its own `Output`) and writes whole chunks, so a stalled reader
//! of stdout never blocks the event loop (and so never the draining of the kernel ring buffer)
//! nor costs the export a record. Chunks that would push the bytes waiting for the writer past
//! [`MAX_QUEUED_BYTES`] are dropped, and their records counted. Chunks are bounded too
//! (`CHUNK_BYTES`), so a burst never makes one huge buffer. Every chunk is flushed once
//! written, so a killed tracer leaves whole lines behind.

use std::{
    cell::RefCell,
    io::{self, Write},
    rc::Rc,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
};

use crate::{
    record::Record,
    sink::{Filter, Sink},
};

/// Formatted bytes waiting for the writer, at most: about 80 ms of NDJSON at full churn on
/// two cores, and a bound on the memory a stalled reader can make us hold.
pub const MAX_QUEUED_BYTES: usize = 8 << 20;
/// A chunk is handed to the writer once it holds this much (or at the end of a batch).
const CHUNK_BYTES: usize = 256 << 10;
/// Chunks in flight between the threads, at most.
const QUEUE_CHUNKS: usize = 1024;
/// Emptied chunk buffers kept for reuse.
const SPARE_CHUNKS: usize = 8;

enum Message {
    Chunk(Vec<u8>),
    /// The last chunk: waits for room instead of being dropped.
    Final(Vec<u8>),
}

/// The `io::Write` the sink formats into: the chunk being filled.
#[derive(Clone, Default)]
pub struct ChunkWriter(Rc<RefCell<Vec<u8>>>);

impl Write for ChunkWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One destination of records (stdout, or the export file) with its own writer thread.
///
/// The event loop formats records into chunks of bytes ([`Output::format`]) through the
/// [`Sink`] it was given, and ships full chunks to the thread ([`Output::send`]), which writes
/// them to `out`. The loop never blocks on a slow reader: past [`MAX_QUEUED_BYTES`] of
/// waiting bytes, records are dropped and counted ([`Output::dropped`]).
/// [`Output::finish`] writes the last records and reports the writer's I/O error, if any.
pub struct Output {
    sink: Box<dyn Sink>,
    /// Which records this destination shows.
    filter: Filter,
    chunk: ChunkWriter,
    /// Records formatted into the current chunk.
    records: u64,
    tx: Option<SyncSender<Message>>,
    spare: Receiver<Vec<u8>>,
    queued: Arc<AtomicUsize>,
    thread: Option<JoinHandle<io::Result<()>>>,
    /// Records shown so far (formatted, or dropped trying).
    offered: u64,
    dropped: u64,
}

impl Output {
    /// Starts the writer thread on `out`; `sink` formats into the [`ChunkWriter`] it is given
    /// the records `filter` lets through. The sink's preamble (the text header) is written at
    /// once.
    pub fn spawn(
        sink: impl FnOnce(ChunkWriter) -> Box<dyn Sink>,
        out: impl Write + Send + 'static,
        filter: Filter,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_CHUNKS);
        let (spare_tx, spare) = mpsc::sync_channel(SPARE_CHUNKS);
        let queued = Arc::new(AtomicUsize::new(0));
        let thread = {
            let queued = Arc::clone(&queued);
            std::thread::Builder::new()
                .name("tracer-output".into())
                .spawn(move || write_chunks(out, &rx, &spare_tx, &queued))?
        };
        let chunk = ChunkWriter::default();
        let mut output = Self {
            sink: sink(chunk.clone()),
            filter,
            chunk,
            records: 0,
            tx: Some(tx),
            spare,
            queued,
            thread: Some(thread),
            offered: 0,
            dropped: 0,
        };
        output.sink.begin()?;
        output.ship();
        Ok(output)
    }

    /// Formats the records this output shows and queues them. Returns false once the writer
    /// has stopped (closed stdout, failed disk).
    pub fn send(&mut self, batch: &[Record]) -> bool {
        self.format(batch);
        self.ship()
    }

    /// Formats the records this output shows into the current chunk, shipping only full
    /// chunks; [`Output::send`] ships the rest.
    pub fn format(&mut self, batch: &[Record]) {
        for record in batch {
            let Some(shown) = self.filter.apply(record) else {
                continue;
            };
            self.offered += 1;
            match self.sink.write(&shown) {
                Ok(()) => self.records += 1,
                Err(e) => {
                    log::debug!("could not format a {} record: {e}", record.type_name());
                    self.dropped += 1;
                }
            }
            if self.chunk.0.borrow().len() >= CHUNK_BYTES {
                self.ship();
            }
        }
    }

    /// Records this output was to show so far.
    pub fn offered(&self) -> u64 {
        self.offered
    }

    /// Records dropped so far because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Formats and writes the final records, waits for the writer and returns its result.
    pub fn finish(mut self, last: &[Record]) -> io::Result<()> {
        self.format(last);
        let bytes = std::mem::take(&mut *self.chunk.0.borrow_mut());
        if let Some(tx) = self.tx.take() {
            self.queued.fetch_add(bytes.len(), Ordering::AcqRel);
            let _ = tx.send(Message::Final(bytes));
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("output thread panicked")),
            None => Ok(()),
        }
    }

    /// Hands the current chunk to the writer, or drops it (counting its records) when the
    /// writer is that far behind.
    fn ship(&mut self) -> bool {
        let Some(tx) = &self.tx else { return false };
        let len = self.chunk.0.borrow().len();
        if len == 0 {
            return true;
        }
        let records = std::mem::take(&mut self.records);
        if self.queued.load(Ordering::Acquire) > MAX_QUEUED_BYTES {
            self.chunk.0.borrow_mut().clear();
            self.dropped += records;
            return true;
        }
        let fresh = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK_BYTES + (64 << 10)));
        let bytes = std::mem::replace(&mut *self.chunk.0.borrow_mut(), fresh);
        self.queued.fetch_add(len, Ordering::AcqRel);
        match tx.try_send(Message::Chunk(bytes)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(len, Ordering::AcqRel);
                self.dropped += records;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }
}

fn write_chunks(
    mut out: impl Write,
    rx: &Receiver<Message>,
    spare: &SyncSender<Vec<u8>>,
    queued: &AtomicUsize,
) -> io::Result<()> {
    while let Ok(message) = rx.recv() {
        let (Message::Chunk(mut bytes) | Message::Final(mut bytes)) = message;
        let written = out.write_all(&bytes).and_then(|()| out.flush());
        queued.fetch_sub(bytes.len(), Ordering::AcqRel);
        written?;
        bytes.clear();
        let _ = spare.try_send(bytes);
    }
    out.flush()
}

/// Is this error a closed pipe (`tracer | head`)? Such an end is quiet and successful.
pub fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::{record::Summary, sink::JsonSink};

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn summary(events: u64) -> Record {
        Record::Summary(Summary {
            events,
            ..Summary::default()
        })
    }

    #[test]
    fn records_arrive_in_order() {
        let out = Shared::default();
        let mut output = Output::spawn(
            |w| Box::new(JsonSink::new(w)),
            out.clone(),
            Filter::everything(),
        )
        .unwrap();
        for i in 0..3 {
            assert!(output.send(&[summary(i), summary(i + 100)]));
        }
        output.finish(&[summary(7)]).unwrap();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let events: Vec<u64> = text
            .lines()
            .map(|l| match serde_json::from_str(l).unwrap() {
                Record::Summary(s) => s.events,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(events, vec![0, 100, 1, 101, 2, 102, 7]);
    }

    #[test]
    fn a_closed_output_stops_the_loop() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut output =
            Output::spawn(|w| Box::new(JsonSink::new(w)), Closed, Filter::everything()).unwrap();
        let mut open = true;
        for _ in 0..1000 {
            open = output.send(&[summary(1)]);
            if !open {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!open);
        assert!(is_broken_pipe(&output.finish(&[]).unwrap_err()));
    }

    /// A writer that blocks until released, like a reader of stdout that stalls.
    struct Stalled {
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        out: Shared,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (open, cv) = &*self.gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.out.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_reader_costs_bounded_memory_and_every_drop_is_counted() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let out = Shared::default();
        let stalled = Stalled {
            gate: Arc::clone(&gate),
            out: out.clone(),
        };
        let mut output = Output::spawn(
            |w| Box::new(JsonSink::new(w)),
            stalled,
            Filter::everything(),
        )
        .unwrap();
        let batch: Vec<Record> = (0..1000).map(summary).collect();
        for _ in 0..200 {
            assert!(output.send(&batch));
            assert!(
                output.queued.load(Ordering::Acquire)
                    <= MAX_QUEUED_BYTES + CHUNK_BYTES + (64 << 10)
            );
        }
        let dropped = output.dropped();
        assert!(dropped > 0, "200,000 records never filled the queue");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        let offered = output.offered();
        output.finish(&[summary(1)]).unwrap();
        let written = out
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        assert_eq!(offered, 200_000);
        assert_eq!(written + dropped, offered + 1);
    }

    #[test]
    fn the_filter_decides_what_is_shown_and_counted() {
        let out = Shared::default();
        let mut filter = Filter::everything();
        filter.timelines = false;
        let mut output =
            Output::spawn(|w| Box::new(JsonSink::new(w)), out.clone(), filter).unwrap();
        let timeline: Record = serde_json::from_str(
            r#"{"type":"timeline","ts_ns":1,"time":"t","skaddr":"0x1","family":"ipv4","laddr":"127.0.0.1","lport":1,"raddr":"127.0.0.1","rport":2,"pid":null,"comm":null,"from_birth":true,"outcome":"open","duration_ns":null,"states":[]}"#,
        )
        .unwrap();
        assert!(output.send(&[timeline, summary(3)]));
        assert_eq!(output.offered(), 1);
        output.finish(&[]).unwrap();
        assert_eq!(
            out.0
                .lock()
                .unwrap()
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            1
        );
    }
}
