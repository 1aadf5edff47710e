//! Formatting on the event loop's thread, writing on a dedicated one.
//!
//! Records are formatted as soon as the engine produces them, into an in-memory chunk. A
//! dedicated thread owns the destination (stdout, or the export file: each has its own
//! `Output`) and writes whole chunks, so a slow reader never blocks the event loop directly.
//! The bytes waiting for the writer are bounded by `--output-buffer` ([`Buffer`]); what happens
//! when they would exceed it is the destination's [`WhenFull`]:
//!
//! - stdout drops the chunk and counts its records by type: a stalled reader of stdout never
//!   holds up the export, the CLOSE_WAIT alerts, nor the draining of the ring buffer.
//! - the export waits for its writer: it never drops a record while its disk accepts writes.
//!   While it waits the event loop does not drain the ring buffer; the kernel side never
//!   waits, it keeps filling the ring buffer and counts what does not fit.
//!
//! Every record is counted by type as shown, and as dropped when it is not delivered: dropped
//! here, or lost because the writer failed (a closed pipe, a failed disk) with the record
//! still unwritten, or dropped on request at the end of a run ([`Output::drop_queued`]: a second
//! Ctrl-C while stdout's reader is slow). So `delivered + dropped = shown` for each type,
//! exactly.

use std::{
    cell::RefCell,
    io::{self, Write},
    ops::Range,
    os::unix::thread::JoinHandleExt as _,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, Sender, SyncSender},
        Arc, Condvar, Mutex, MutexGuard, Once, PoisonError,
    },
    thread::JoinHandle,
    time::Duration,
};

use nix::sys::{
    pthread::pthread_kill,
    signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal},
};

use crate::{
    delivery::{ByType, Destination, Kind},
    record::Record,
    sink::{Filter, Shown, Sink},
};

/// Formatted bytes that may wait for a destination's writer: `--output-buffer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// The most formatted bytes that may wait, in bytes.
    pub bytes: usize,
}

impl Buffer {
    /// Bytes of one formatted record the default is sized for: a JSON transition of an IPv4
    /// connection takes 440-490 bytes with the command names of the bench and of Python
    /// (measured), about 500 with three 15-character names (text lines are shorter, IPv6 ones
    /// up to about 560).
    pub const RECORD_BYTES: usize = 512;

    /// The smallest buffer accepted: a few chunks of the smallest size.
    pub const MIN_BYTES: usize = 16 << 10;

    /// The default for a ring buffer of `ring_buffer_bytes`: room for as many records as the
    /// ring buffer holds events, so that a reader held off for as long as the ring buffer can
    /// wait loses nothing either. 4 MiB of ring buffer (34,952 events of 120 bytes) gives 19 MiB.
    pub fn default_for(ring_buffer_bytes: u32) -> Self {
        let events = tracer_common::ring_buffer_events(ring_buffer_bytes);
        let records = events.saturating_mul(Self::RECORD_BYTES);
        // A chunk is charged its allocation: a full one, CHUNK_SLACK_BYTES more than it holds.
        let bytes =
            records.saturating_add(records.saturating_mul(CHUNK_SLACK_BYTES) / MAX_CHUNK_BYTES);
        // Whole MiB, and at least one chunk's worth.
        let mib = 1 << 20;
        Self {
            bytes: bytes.div_ceil(mib).max(1) * mib,
        }
    }

    /// Chunk size for this buffer: small enough that the buffer holds several chunks.
    fn chunk_bytes(self) -> usize {
        (self.bytes / 8).clamp(4 << 10, MAX_CHUNK_BYTES)
    }
}

/// What a destination does when its buffer is full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Drop the records (counted): stdout, whose reader may stall for any time.
    Drop,
    /// Wait for the writer: the export file.
    Wait,
}

/// A chunk is handed to the writer once it holds this much (or at the end of a batch).
const MAX_CHUNK_BYTES: usize = 256 << 10;
/// Room a chunk is allocated with beyond its size, for the line that fills it.
const CHUNK_SLACK_BYTES: usize = 16 << 10;
/// Emptied chunk buffers kept for reuse.
const SPARE_CHUNKS: usize = 4;

/// Formatted records on their way to the writer.
struct Chunk {
    bytes: Vec<u8>,
    /// For each record: where its bytes end in `bytes`, and its kind (`None`: not counted).
    marks: Vec<(usize, Option<Kind>)>,
    /// Bytes this chunk counts against the buffer (its allocation).
    charge: usize,
}

/// State shared with the writer thread.
#[derive(Default)]
struct Shared {
    /// Bytes queued for the writer (chunk allocations).
    queued: Mutex<usize>,
    /// Signalled whenever `queued` goes down.
    room: Condvar,
    /// The writer failed: nothing more can be delivered.
    failed: AtomicBool,
    /// Records the writer could not write, by type.
    unwritten: Mutex<ByType>,
    /// Records (every line, counted types or not) handed to the writer and not yet written
    /// or dropped by it.
    pending: AtomicU64,
    /// The writer is to drop what it holds instead of writing it ([`Output::drop_queued`]).
    abandoned: AtomicBool,
}

/// The signal that interrupts a write blocked on a stalled reader: ignored by default, and
/// not otherwise used by the tracer.
const WAKE_SIGNAL: Signal = Signal::SIGURG;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `io::Write` the sink formats into: the chunk being filled.
#[derive(Clone, Default)]
pub struct ChunkWriter(Rc<RefCell<Vec<u8>>>);

impl ChunkWriter {
    /// Lets `fill` append to the chunk in place; what it appended is taken back if it fails.
    pub fn append(&self, fill: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        let mut bytes = self.0.borrow_mut();
        let start = bytes.len();
        let filled = fill(&mut bytes);
        if filled.is_err() {
            bytes.truncate(start);
        }
        filled
    }
}

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
/// them to `out`. Past the [`Buffer`] of waiting bytes it drops the records (counted by type)
/// or waits for the writer, as its [`WhenFull`] says; [`Output::delivery`] tells what it was
/// to show and what it lost. [`Output::finish`] writes the last records and reports the
/// writer's I/O error, if any, with the final count.
pub struct Output {
    sink: Box<dyn Sink>,
    /// Which records this destination shows.
    filter: Filter,
    chunk: ChunkWriter,
    marks: Vec<(usize, Option<Kind>)>,
    buffer: Buffer,
    chunk_bytes: usize,
    when_full: WhenFull,
    tx: Option<Sender<Chunk>>,
    spare: Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<()>>>,
    /// Records shown so far, and those dropped here (not counting the writer's failures).
    shown: ByType,
    dropped: ByType,
}

impl Output {
    /// Starts the writer thread on `out`; `sink` formats into the [`ChunkWriter`] it is given
    /// the records `filter` lets through. The sink's preamble (the text header) is written at
    /// once.
    pub fn spawn(
        sink: impl FnOnce(ChunkWriter) -> Box<dyn Sink>,
        out: impl Write + Send + 'static,
        filter: Filter,
        buffer: Buffer,
        when_full: WhenFull,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let (spare_tx, spare) = mpsc::sync_channel(SPARE_CHUNKS);
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("tracer-output".into())
                .spawn(move || write_chunks(out, &rx, &spare_tx, &shared))?
        };
        let chunk = ChunkWriter::default();
        let chunk_bytes = buffer.chunk_bytes();
        chunk
            .0
            .borrow_mut()
            .reserve(chunk_bytes + CHUNK_SLACK_BYTES);
        let mut output = Self {
            sink: sink(chunk.clone()),
            filter,
            chunk,
            marks: Vec::new(),
            buffer,
            chunk_bytes,
            when_full,
            tx: Some(tx),
            spare,
            shared,
            thread: Some(thread),
            shown: ByType::default(),
            dropped: ByType::default(),
        };
        output.sink.begin()?;
        output.mark(None);
        output.ship();
        Ok(output)
    }

    /// Formats the records this output shows and queues them: at once when the writer is
    /// idle; while it still has chunks to write, in the chunk being filled, shipped once full
    /// or once the writer is idle (a chunk not full is copied out, an allocation of its own:
    /// shipped behind a busy writer it would only add memory, as a reader that stalls showed,
    /// not get written sooner). Returns false once the writer has stopped (closed stdout,
    /// failed disk).
    pub fn send(&mut self, batch: &[Record]) -> bool {
        self.format(batch);
        if *lock(&self.shared.queued) > 0 {
            return self.tx.is_some() && !self.shared.failed.load(Ordering::Acquire);
        }
        self.ship()
    }

    /// Formats the records this output shows into the current chunk, shipping only full
    /// chunks; [`Output::send`] ships the rest.
    pub fn format(&mut self, batch: &[Record]) {
        for record in batch {
            self.format_record(record);
            self.ship_if_full();
        }
    }

    /// Formats the batch for this output and for `other` at once. Where both write JSON lines
    /// ([`Sink::json_lines`]) and both show a record unchanged, `other` gets a copy of the line
    /// formatted here instead of formatting it again (with `--json --export`, every record is
    /// formatted once, not twice). Each output's bytes and counts are what [`Output::format`]
    /// would have made.
    pub fn format_with(&mut self, batch: &[Record], other: &mut Output) {
        let shared = self.sink.json_lines() && other.sink.json_lines();
        for record in batch {
            match self.format_record(record) {
                Some(line) if shared => {
                    let chunk = self.chunk.0.borrow();
                    other.copy_record(record, &chunk[line]);
                }
                _ => {
                    other.format_record(record);
                }
            }
            self.ship_if_full();
            other.ship_if_full();
        }
    }

    /// Formats `record` into the chunk if this output shows it. Returns where its line is in
    /// the chunk when the record was written as it is (not one the filter changed).
    fn format_record(&mut self, record: &Record) -> Option<Range<usize>> {
        let shown = self.filter.apply(record)?;
        let kind = Kind::of(record);
        if let Some(kind) = kind {
            self.shown.add(kind, 1);
        }
        let start = self.chunk.0.borrow().len();
        match self.sink.write(&shown) {
            Ok(()) => {
                self.mark(kind);
                let end = self.chunk.0.borrow().len();
                matches!(shown, Shown::Unchanged(_)).then_some(start..end)
            }
            Err(e) => {
                log::debug!("could not format a {} record: {e}", record.type_name());
                if let Some(kind) = kind {
                    self.dropped.add(kind, 1);
                }
                None
            }
        }
    }

    /// Shows `record` as `line`, the JSON line another output wrote for it, if this output
    /// shows it unchanged; formats it if the filter changes it.
    fn copy_record(&mut self, record: &Record, line: &[u8]) {
        match self.filter.apply(record) {
            None => {}
            Some(Shown::Unchanged(_)) => {
                let kind = Kind::of(record);
                if let Some(kind) = kind {
                    self.shown.add(kind, 1);
                }
                self.chunk.0.borrow_mut().extend_from_slice(line);
                self.mark(kind);
            }
            Some(Shown::Changed(_)) => {
                self.format_record(record);
            }
        }
    }

    /// Ships the chunk once it is full.
    fn ship_if_full(&mut self) {
        if self.chunk.0.borrow().len() >= self.chunk_bytes {
            self.ship();
        }
    }

    /// What this output was to show so far and what it lost, by type. Records still waiting
    /// for the writer count as shown and not dropped.
    pub fn delivery(&self) -> Destination {
        let mut dropped = self.dropped;
        dropped.add_all(&lock(&self.shared.unwritten));
        Destination {
            shown: self.shown,
            dropped,
        }
    }

    /// Formats the final records and hands everything left to the writer (the last chunk
    /// waits for room instead of being dropped); nothing can be sent after this.
    pub fn close(&mut self, last: &[Record]) {
        self.format(last);
        if let Some(tx) = self.tx.take() {
            let chunk = self.take_chunk(None);
            self.charge(chunk.charge);
            self.shared
                .pending
                .fetch_add(chunk.marks.len() as u64, Ordering::AcqRel);
            if let Err(mpsc::SendError(chunk)) = tx.send(chunk) {
                self.uncharge_lost(&chunk);
            }
        }
    }

    /// Is there room in the buffer for a record now (nothing queued, or a record's worth of
    /// [`Buffer::RECORD_BYTES`] free)?
    pub fn has_room(&self) -> bool {
        let queued = *lock(&self.shared.queued);
        queued == 0 || queued + Buffer::RECORD_BYTES <= self.buffer.bytes
    }

    /// Waits until the writer has written everything handed to it, or failed; says whether
    /// it is still writing (false: it failed, [`Output::finish`] returns why).
    pub fn written(&self) -> bool {
        let mut queued = lock(&self.shared.queued);
        while self.shared.pending.load(Ordering::Acquire) > 0
            && !self.shared.failed.load(Ordering::Acquire)
            && !self.is_done()
        {
            // Timed: the writer signals after lowering `pending`, without this lock held.
            queued = match self
                .shared
                .room
                .wait_timeout(queued, Duration::from_millis(10))
            {
                Ok((queued, _)) => queued,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        !self.shared.failed.load(Ordering::Acquire) && !self.is_done()
    }

    /// Records (lines) handed to the writer and not yet written or dropped by it.
    pub fn queued(&self) -> u64 {
        self.shared.pending.load(Ordering::Acquire)
    }

    /// The writer has ended: after [`Output::close`], everything was written or dropped.
    pub fn is_done(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Makes the writer drop what it still holds, counting each record by type as dropped,
    /// and interrupts a write blocked on a stalled reader (records whose last byte was not
    /// written are dropped: the last line out may be cut). Call it again until
    /// [`Output::is_done`]: a write that started as the first call came is interrupted by a
    /// later one.
    pub fn drop_queued(&self) {
        self.shared.abandoned.store(true, Ordering::Release);
        if let Some(thread) = self.thread.as_ref().filter(|t| !t.is_finished()) {
            interrupt(thread);
        }
    }

    /// Formats and writes the final records, waits for the writer and returns its result
    /// with the final accounting.
    pub fn finish(mut self, last: &[Record]) -> (io::Result<()>, Destination) {
        self.close(last);
        let result = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("output thread panicked")),
            None => Ok(()),
        };
        (result, self.delivery())
    }

    /// Notes the end of a record just formatted.
    fn mark(&mut self, kind: Option<Kind>) {
        let end = self.chunk.0.borrow().len();
        self.marks.push((end, kind));
    }

    /// Is a chunk of `len` bytes copied out (and charged its length) rather than handed over
    /// whole (and charged its allocation)? Every chunk not full is: a slow stream ships a
    /// chunk at the end of each small batch, and charged its whole allocation each would let
    /// the buffer hold a fraction of the records it is sized for.
    fn copied(&self, len: usize) -> bool {
        len < self.chunk_bytes
    }

    /// Takes the chunk being filled, leaving an empty one. A chunk not full is copied out so
    /// the large buffer stays here; a full one is swapped for a spare.
    fn take_chunk(&mut self, fresh: Option<Vec<u8>>) -> Chunk {
        let charge = self.pending_charge();
        let mut current = self.chunk.0.borrow_mut();
        let bytes = if self.copied(current.len()) {
            let copy = current.clone();
            current.clear();
            copy
        } else {
            let fresh =
                fresh.unwrap_or_else(|| Vec::with_capacity(self.chunk_bytes + CHUNK_SLACK_BYTES));
            std::mem::replace(&mut *current, fresh)
        };
        let marks = std::mem::take(&mut self.marks);
        Chunk {
            bytes,
            marks,
            charge,
        }
    }

    /// What the chunk being filled is charged once taken: its length when it is copied out,
    /// its allocation when it is handed over whole.
    fn pending_charge(&self) -> usize {
        let chunk = self.chunk.0.borrow();
        if self.copied(chunk.len()) {
            chunk.len()
        } else {
            chunk.capacity()
        }
    }

    /// Adds `bytes` to what the writer holds, waiting for room first when this output waits.
    /// Returns false if the chunk must be dropped instead.
    fn reserve(&self, bytes: usize) -> bool {
        let mut queued = lock(&self.shared.queued);
        loop {
            let fits = *queued == 0 || *queued + bytes <= self.buffer.bytes;
            if fits || self.shared.failed.load(Ordering::Acquire) {
                *queued += bytes;
                return true;
            }
            match self.when_full {
                WhenFull::Drop => return false,
                WhenFull::Wait => {
                    queued = self
                        .shared
                        .room
                        .wait(queued)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }

    fn charge(&self, bytes: usize) {
        *lock(&self.shared.queued) += bytes;
    }

    /// A chunk that could not be handed over: its records are lost.
    fn uncharge_lost(&mut self, chunk: &Chunk) {
        *lock(&self.shared.queued) -= chunk.charge;
        self.shared
            .pending
            .fetch_sub(chunk.marks.len() as u64, Ordering::AcqRel);
        for &(_, kind) in &chunk.marks {
            if let Some(kind) = kind {
                self.dropped.add(kind, 1);
            }
        }
    }

    /// Hands the current chunk to the writer, or drops it (counting its records) when the
    /// writer is that far behind and this output drops.
    fn ship(&mut self) -> bool {
        if self.tx.is_none() {
            return false;
        }
        if self.marks.is_empty() {
            return !self.shared.failed.load(Ordering::Acquire);
        }
        let charge = self.pending_charge();
        if !self.reserve(charge) {
            self.chunk.0.borrow_mut().clear();
            for (_, kind) in std::mem::take(&mut self.marks) {
                if let Some(kind) = kind {
                    self.dropped.add(kind, 1);
                }
            }
            return true;
        }
        // A spare buffer replaces a full chunk; a small one is copied out instead.
        let fresh = if self.copied(self.chunk.0.borrow().len()) {
            None
        } else {
            self.spare.try_recv().ok()
        };
        // Charged what was reserved: what the writer gives back.
        let chunk = self.take_chunk(fresh);
        let Some(tx) = &self.tx else { return false };
        self.shared
            .pending
            .fetch_add(chunk.marks.len() as u64, Ordering::AcqRel);
        if let Err(mpsc::SendError(chunk)) = tx.send(chunk) {
            self.uncharge_lost(&chunk);
            return false;
        }
        !self.shared.failed.load(Ordering::Acquire)
    }
}

/// How writing a chunk ended.
enum Written {
    /// Every byte is out.
    All,
    /// The writer was told to drop what it holds ([`Output::drop_queued`]).
    Abandoned,
    /// The destination failed.
    Failed(io::Error),
}

/// Writes `bytes` and returns how many were written before an error or the request to drop
/// them, if one came.
fn write_counted(out: &mut impl Write, bytes: &[u8], abandoned: &AtomicBool) -> (usize, Written) {
    let mut written = 0;
    while written < bytes.len() {
        if abandoned.load(Ordering::Acquire) {
            return (written, Written::Abandoned);
        }
        match out.write(&bytes[written..]) {
            Ok(0) => return (written, Written::Failed(io::ErrorKind::WriteZero.into())),
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (written, Written::Failed(e)),
        }
    }
    match out.flush() {
        Ok(()) => (written, Written::All),
        Err(e) => (written, Written::Failed(e)),
    }
}

/// Interrupts a `write` the thread is blocked in (it returns what it wrote so far, or
/// `EINTR`), with [`WAKE_SIGNAL`] and a handler that does nothing, installed without
/// `SA_RESTART` on first use.
fn interrupt(thread: &JoinHandle<io::Result<()>>) {
    static HANDLER: Once = Once::new();
    extern "C" fn wake(_: libc::c_int) {}
    HANDLER.call_once(|| {
        let action = SigAction::new(SigHandler::Handler(wake), SaFlags::empty(), SigSet::empty());
        // SAFETY: the handler does nothing, so it is async-signal-safe; the signal is one the
        // tracer does not otherwise use.
        if let Err(e) = unsafe { sigaction(WAKE_SIGNAL, &action) } {
            log::debug!("could not handle {WAKE_SIGNAL}: {e}");
        }
    });
    if let Err(e) = pthread_kill(thread.as_pthread_t(), WAKE_SIGNAL) {
        log::debug!("could not interrupt the output thread: {e}");
    }
}

fn write_chunks(
    mut out: impl Write,
    rx: &Receiver<Chunk>,
    spare: &SyncSender<Vec<u8>>,
    shared: &Shared,
) -> io::Result<()> {
    let mut result = Ok(());
    let mut abandoned = false;
    while let Ok(mut chunk) = rx.recv() {
        let written = if result.is_ok() && !abandoned {
            let (written, outcome) = write_counted(&mut out, &chunk.bytes, &shared.abandoned);
            match outcome {
                Written::All => {}
                Written::Abandoned => abandoned = true,
                Written::Failed(e) => {
                    shared.failed.store(true, Ordering::Release);
                    result = Err(e);
                }
            }
            written
        } else {
            0
        };
        // Records whose last byte was not written are lost (a cut last line included).
        let lost = chunk.marks.iter().filter(|(end, _)| *end > written);
        let mut unwritten = ByType::default();
        for &(_, kind) in lost {
            if let Some(kind) = kind {
                unwritten.add(kind, 1);
            }
        }
        if unwritten.total() > 0 {
            lock(&shared.unwritten).add_all(&unwritten);
        }
        *lock(&shared.queued) -= chunk.charge;
        shared
            .pending
            .fetch_sub(chunk.marks.len() as u64, Ordering::AcqRel);
        shared.room.notify_all();
        if chunk.bytes.capacity() >= MAX_CHUNK_BYTES / 4 {
            chunk.bytes.clear();
            let _ = spare.try_send(chunk.bytes);
        }
    }
    result
}

/// Is this error a closed pipe (`tracer | head`)? Such an end is quiet and successful.
pub fn is_broken_pipe(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::BrokenPipe
}

#[cfg(test)]
mod tests;
