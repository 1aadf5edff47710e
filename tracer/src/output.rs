//! A dedicated thread that owns the sink, so a stalled reader of stdout never blocks the event
//! loop (and so never the draining of the kernel ring buffer). Batches that do not fit in the
//! bounded queue are dropped and counted. Each sink (stdout, the export file) has its own
//! `Output`, so a stalled stdout never costs the export a record; batches are shared, not copied.
//! Every batch is flushed once written, so a killed tracer leaves whole lines behind.

use std::{
    io,
    sync::{
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
};

use crate::{record::Record, sink::Sink};

/// Batches waiting for the writer before new ones are dropped.
const QUEUE_BATCHES: usize = 4096;

/// A batch of records, shared by every output that writes it.
pub type Batch = Arc<[Record]>;

enum Message {
    Batch(Batch),
    /// Must be written (the final records): waits for room instead of dropping.
    Final(Batch),
}

pub struct Output {
    tx: Option<SyncSender<Message>>,
    thread: Option<JoinHandle<io::Result<()>>>,
    dropped: u64,
}

impl Output {
    pub fn spawn(mut sink: Box<dyn Sink + Send>) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE_BATCHES);
        let thread = std::thread::Builder::new()
            .name("tracer-output".into())
            .spawn(move || write_all(&mut *sink, &rx))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            dropped: 0,
        })
    }

    /// Queues a batch. Returns false once the writer has stopped (closed stdout).
    pub fn send(&mut self, batch: impl Into<Batch>) -> bool {
        let Some(tx) = &self.tx else { return false };
        match tx.try_send(Message::Batch(batch.into())) {
            Ok(()) => true,
            Err(TrySendError::Full(Message::Batch(lost) | Message::Final(lost))) => {
                self.dropped += lost.len() as u64;
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Records dropped so far because the writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Writes the final records, waits for the writer and returns its result.
    pub fn finish(mut self, last: impl Into<Batch>) -> io::Result<()> {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Message::Final(last.into()));
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("output thread panicked")),
            None => Ok(()),
        }
    }
}

fn write_all(sink: &mut dyn Sink, rx: &Receiver<Message>) -> io::Result<()> {
    sink.begin()?;
    while let Ok(message) = rx.recv() {
        let (Message::Batch(batch) | Message::Final(batch)) = message;
        for record in batch.iter() {
            sink.write(record)?;
        }
        // Drain what is already queued before paying for a flush.
        if let Ok(more) = rx.try_recv() {
            let (Message::Batch(batch) | Message::Final(batch)) = more;
            for record in batch.iter() {
                sink.write(record)?;
            }
        }
        sink.flush()?;
    }
    sink.flush()
}

/// Is this error a closed pipe (`tracer | head`)? Such an end is quiet and successful.
pub fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}
