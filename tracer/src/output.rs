//! A dedicated thread that owns a sink, so a stalled reader of stdout never blocks the event
//! loop (and so never the draining of the kernel ring buffer). Each sink (stdout, the export
//! file) has its own `Output`, so a stalled stdout never costs the export a record; batches are
//! shared, not copied. The queue is bounded in records: what does not fit is dropped and
//! counted. Every batch is flushed once written, so a killed tracer leaves whole lines behind.

use std::{
    io,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
};

use crate::{
    record::Record,
    sink::{Filter, Filtered, Sink},
};

/// Batches waiting for the writer before new ones are dropped.
const QUEUE_BATCHES: usize = 4096;
/// Records waiting for the writer before new batches are dropped: bounds memory when the
/// reader of stdout stalls (a few MB of records).
pub const QUEUE_RECORDS: usize = 16_384;

/// A batch of records, shared by every output that writes it.
pub type Batch = Arc<[Record]>;

enum Message {
    /// A batch, and how many of its records this output shows.
    Batch(Batch, usize),
    /// Must be written (the final records): waits for room instead of dropping.
    Final(Batch, usize),
}

pub struct Output {
    tx: Option<SyncSender<Message>>,
    /// Records sent and not yet written.
    queued: Arc<AtomicUsize>,
    thread: Option<JoinHandle<io::Result<()>>>,
    filter: Filter,
    dropped: u64,
    offered: u64,
}

impl Output {
    /// Starts the writer thread of `sink`, which shows what `filter` lets through.
    pub fn spawn(sink: Box<dyn Sink + Send>, filter: Filter) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_BATCHES);
        let queued = Arc::new(AtomicUsize::new(0));
        let written = Arc::clone(&queued);
        let mut sink = Filtered::new(sink, filter.clone());
        let thread = std::thread::Builder::new()
            .name("tracer-output".into())
            .spawn(move || write_all(&mut sink, &rx, &written))?;
        Ok(Self {
            tx: Some(tx),
            queued,
            thread: Some(thread),
            filter,
            dropped: 0,
            offered: 0,
        })
    }

    /// How many records of `batch` this output shows.
    fn shown(&self, batch: &[Record]) -> usize {
        if self.filter.is_everything() {
            batch.len()
        } else {
            batch
                .iter()
                .filter(|r| self.filter.apply(r).is_some())
                .count()
        }
    }

    /// Queues a batch. Returns false once the writer has stopped (closed stdout).
    pub fn send(&mut self, batch: impl Into<Batch>) -> bool {
        let Some(tx) = &self.tx else { return false };
        let batch = batch.into();
        let len = self.shown(&batch);
        self.offered += len as u64;
        if self.queued.load(Ordering::Relaxed) + len > QUEUE_RECORDS {
            self.dropped += len as u64;
            // Still tell a closed stdout apart from a slow one.
            return !matches!(
                tx.try_send(Message::Batch(Arc::new([]), 0)),
                Err(TrySendError::Disconnected(_))
            );
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        match tx.try_send(Message::Batch(batch, len)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.queued.fetch_sub(len, Ordering::Relaxed);
                self.dropped += len as u64;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Records this output was to show so far (the final ones aside).
    pub fn offered(&self) -> u64 {
        self.offered
    }

    /// Records dropped so far because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Writes the final records, waits for the writer and returns its result.
    pub fn finish(mut self, last: impl Into<Batch>) -> io::Result<()> {
        if let Some(tx) = self.tx.take() {
            let last = last.into();
            let len = self.shown(&last);
            self.queued.fetch_add(len, Ordering::Relaxed);
            let _ = tx.send(Message::Final(last, len));
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("output thread panicked")),
            None => Ok(()),
        }
    }
}

fn write_all(sink: &mut dyn Sink, rx: &Receiver<Message>, queued: &AtomicUsize) -> io::Result<()> {
    sink.begin()?;
    sink.flush()?;
    while let Ok(message) = rx.recv() {
        let mut next = Some(message);
        // Write what is already queued before paying for a flush.
        while let Some(message) = next {
            let (Message::Batch(batch, shown) | Message::Final(batch, shown)) = message;
            for record in batch.iter() {
                sink.write(record)?;
            }
            queued.fetch_sub(shown, Ordering::Relaxed);
            next = rx.try_recv().ok();
        }
        sink.flush()?;
    }
    sink.flush()
}

/// Is this error a closed pipe (`tracer | head`)? Such an end is quiet and successful.
pub fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

#[cfg(test)]
mod tests {
    use std::sync::{Condvar, Mutex};

    use super::*;
    use crate::record::{Record, Summary};

    /// A sink that blocks until released, like a reader of stdout that stalls.
    struct Stalled {
        gate: Arc<(Mutex<bool>, Condvar)>,
        written: Arc<Mutex<usize>>,
    }

    impl Sink for Stalled {
        fn write(&mut self, _: &Record) -> io::Result<()> {
            let (open, cv) = &*self.gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            *self.written.lock().unwrap() += 1;
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn record() -> Record {
        Record::Summary(Summary::default())
    }

    #[test]
    fn a_stalled_reader_costs_bounded_memory_and_every_drop_is_counted() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let written = Arc::new(Mutex::new(0));
        let mut out = Output::spawn(
            Box::new(Stalled {
                gate: Arc::clone(&gate),
                written: Arc::clone(&written),
            }),
            Filter::everything(),
        )
        .unwrap();
        let batches = 100;
        let per_batch = QUEUE_RECORDS / 10;
        for _ in 0..batches {
            assert!(out.send(vec![record(); per_batch]));
        }
        assert!(out.queued.load(Ordering::Relaxed) <= QUEUE_RECORDS);
        let dropped = out.dropped();
        assert!(dropped > 0);
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        out.finish(vec![record()]).unwrap();
        let total = (batches * per_batch + 1) as u64;
        assert_eq!(*written.lock().unwrap() as u64 + dropped, total);
    }

    /// A reader that went away (`tracer | head`).
    struct Closed;

    impl Sink for Closed {
        fn write(&mut self, _: &Record) -> io::Result<()> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_reader_stops_the_output() {
        let mut out = Output::spawn(Box::new(Closed), Filter::everything()).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while out.send(vec![record()]) {
            assert!(
                std::time::Instant::now() < deadline,
                "never noticed the closed reader"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let err = out.finish(Vec::<Record>::new()).unwrap_err();
        assert!(is_broken_pipe(&err));
    }
}
