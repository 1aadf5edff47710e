use std::sync::{Condvar, Mutex};

use super::*;
use crate::{
    record::{LostRecord, Summary},
    sink::JsonChunkSink,
};

/// A writer the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Shared {
    fn records(&self) -> Vec<Record> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const BIG: Buffer = Buffer { bytes: 8 << 20 };

fn summary(events: u64) -> Record {
    Record::Summary(Box::new(Summary {
        events,
        ..Summary::default()
    }))
}

fn lost(n: u64) -> Record {
    Record::Lost(Box::new(LostRecord {
        ts_ns: n,
        time: crate::units::WallTime::default(),
        ringbuf: n,
        recursion_misses: 0,
        ..LostRecord::default()
    }))
}

fn timeline(n: u64) -> Record {
    let mut r: Record = serde_json::from_str(
            r#"{"type":"timeline","ts_ns":1,"time":"1970-01-01T00:00:00.000000Z","skaddr":"0x1","family":"ipv4","laddr":"127.0.0.1","lport":1,"raddr":"127.0.0.1","rport":2,"pid":null,"comm":null,"from_birth":true,"outcome":"open","duration_ns":null,"states":[]}"#,
        )
        .unwrap();
    if let Record::Timeline(t) = &mut r {
        t.ts_ns = n;
    }
    r
}

/// Records of two counted kinds, alternating.
fn mixed(n: u64) -> Vec<Record> {
    (0..n)
        .map(|i| if i % 3 == 0 { timeline(i) } else { lost(i) })
        .collect()
}

fn json(out: impl Write + Send + 'static, buffer: Buffer, when_full: WhenFull) -> Output {
    Output::spawn(
        |w| Box::new(JsonChunkSink::new(w)),
        out,
        Filter::everything(),
        buffer,
        when_full,
    )
    .unwrap()
}

/// `delivered + dropped = shown`, for every type.
fn assert_balanced(delivered: &ByType, d: &Destination) {
    for kind in ByType::KINDS {
        assert_eq!(
            delivered.get(kind) + d.dropped.get(kind),
            d.shown.get(kind),
            "{kind:?}: delivered {delivered:?}, accounted {d:?}"
        );
    }
}

#[test]
fn records_arrive_in_order() {
    let out = Shared::default();
    let mut output = json(out.clone(), BIG, WhenFull::Drop);
    for i in 0..3 {
        assert!(output.send(&[summary(i), summary(i + 100)]));
    }
    let (result, delivery) = output.finish(&[summary(7)]);
    result.unwrap();
    let events: Vec<u64> = out
        .records()
        .into_iter()
        .map(|r| match r {
            Record::Summary(s) => s.events,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(events, vec![0, 100, 1, 101, 2, 102, 7]);
    assert_eq!(
        delivery,
        Destination::default(),
        "summaries are not counted"
    );
}

#[test]
fn a_closed_output_stops_the_loop_and_counts_what_it_lost() {
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut output = json(Closed, BIG, WhenFull::Drop);
    let mut open = true;
    for _ in 0..1000 {
        open = output.send(&mixed(3));
        if !open {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(!open);
    let (result, delivery) = output.finish(&mixed(3));
    assert!(is_broken_pipe(&result.unwrap_err()));
    assert!(delivery.shown.total() >= 6);
    assert_eq!(delivery.dropped, delivery.shown, "nothing was delivered");
}

/// A writer that blocks until released, like a reader of stdout that stalls.
struct Stalled {
    gate: Arc<(Mutex<bool>, Condvar)>,
    out: Shared,
}

impl Stalled {
    fn new() -> (Self, Arc<(Mutex<bool>, Condvar)>, Shared) {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let out = Shared::default();
        let stalled = Stalled {
            gate: Arc::clone(&gate),
            out: out.clone(),
        };
        (stalled, gate, out)
    }
}

fn release(gate: &(Mutex<bool>, Condvar)) {
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
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
fn a_stalled_reader_costs_bounded_memory_and_every_drop_is_counted_by_type() {
    let (stalled, gate, out) = Stalled::new();
    let buffer = Buffer { bytes: 256 << 10 };
    let mut output = json(stalled, buffer, WhenFull::Drop);
    let batch = mixed(999);
    for _ in 0..30 {
        assert!(output.send(&batch));
        let queued = *lock(&output.shared.queued);
        assert!(queued <= buffer.bytes, "{queued} bytes queued");
    }
    let during = output.delivery();
    assert!(during.dropped.timeline > 0 && during.dropped.lost > 0);
    release(&gate);
    let (result, delivery) = output.finish(&mixed(3));
    result.unwrap();
    assert_eq!(delivery.shown.total(), 30 * 999 + 3);
    assert_eq!(
        delivery.dropped, during.dropped,
        "nothing dropped after the stall"
    );
    assert_balanced(&ByType::count(&out.records()), &delivery);
}

#[test]
fn a_waiting_output_holds_the_caller_and_drops_nothing() {
    let (stalled, gate, out) = Stalled::new();
    let buffer = Buffer { bytes: 64 << 10 };
    let sender = std::thread::spawn(move || {
        let mut output = json(stalled, buffer, WhenFull::Wait);
        for _ in 0..50 {
            assert!(output.send(&mixed(300)));
        }
        output.finish(&[])
    });
    // The sender is held once the buffer is full.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(!sender.is_finished(), "64 KiB took 15,000 records");
    release(&gate);
    let (result, delivery) = sender.join().unwrap();
    result.unwrap();
    assert_eq!(delivery.dropped, ByType::default());
    assert_eq!(delivery.shown.total(), 15_000);
    assert_balanced(&ByType::count(&out.records()), &delivery);
}

#[test]
fn a_write_that_fails_midway_counts_the_cut_records_as_lost() {
    /// Takes `left` bytes, a few at a time, then fails like a full disk.
    struct Disk {
        left: usize,
        out: Shared,
    }
    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.left == 0 {
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            let n = buf.len().min(self.left).min(1000);
            self.left -= n;
            self.out.write(&buf[..n])
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let out = Shared::default();
    let disk = Disk {
        left: 50_000,
        out: out.clone(),
    };
    let mut output = json(disk, BIG, WhenFull::Wait);
    for _ in 0..100 {
        if !output.send(&mixed(100)) {
            break;
        }
    }
    let (result, delivery) = output.finish(&mixed(10));
    assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
    // Only whole lines count as delivered.
    let bytes = out.0.lock().unwrap().clone();
    let whole = &bytes[..=bytes.iter().rposition(|&b| b == b'\n').unwrap()];
    let records: Vec<Record> = String::from_utf8(whole.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(delivery.dropped.total() > 0);
    assert_balanced(&ByType::count(&records), &delivery);
}

#[test]
fn the_filter_decides_what_is_shown_and_counted() {
    let out = Shared::default();
    let mut filter = Filter::everything();
    filter.timelines = false;
    let mut output = Output::spawn(
        |w| Box::new(JsonChunkSink::new(w)),
        out.clone(),
        filter,
        BIG,
        WhenFull::Drop,
    )
    .unwrap();
    assert!(output.send(&[timeline(1), summary(3), lost(2)]));
    let (result, delivery) = output.finish(&[]);
    result.unwrap();
    assert_eq!((delivery.shown.timeline, delivery.shown.lost), (0, 1));
    assert_eq!(out.records().len(), 2);
}

#[test]
fn the_default_buffer_holds_a_full_ring_buffer_of_records() {
    for ring in [4096, 1 << 20, tracer_common::DEFAULT_RING_BUFFER_BYTES] {
        let buffer = Buffer::default_for(ring);
        let events = tracer_common::ring_buffer_events(ring);
        assert!(buffer.bytes >= events * Buffer::RECORD_BYTES, "{ring}");
        assert!(buffer.bytes >= 1 << 20);
    }
    assert_eq!(
        Buffer::default_for(tracer_common::DEFAULT_RING_BUFFER_BYTES).bytes,
        19 << 20
    );
}

#[test]
fn dropping_the_queue_interrupts_a_write_blocked_on_a_stalled_pipe() {
    use std::io::Read as _;
    // A real pipe nobody reads: the writer blocks in write(2), in the kernel.
    let (reader, writer) = nix::unistd::pipe().unwrap();
    let mut output = json(
        std::fs::File::from(writer),
        Buffer { bytes: 64 << 10 },
        WhenFull::Drop,
    );
    for _ in 0..20 {
        assert!(output.send(&mixed(999)));
    }
    output.close(&[summary(1)]);
    assert!(output.queued() > 0, "the stalled pipe left nothing queued");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !output.is_done() {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer is still blocked"
        );
        output.drop_queued();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(output.queued(), 0);
    let (result, delivery) = output.finish(&[]);
    result.expect("dropping on request is not a write error");
    // What reached the pipe, the writer's end closed: whole lines only (the last may be cut).
    let mut text = String::new();
    std::fs::File::from(reader)
        .read_to_string(&mut text)
        .unwrap();
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let delivered: Vec<Record> = whole
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(delivery.shown.total(), 20 * 999);
    assert!(delivery.dropped.total() > 0);
    assert_balanced(&ByType::count(&delivered), &delivery);
}

/// Transitions and a timeline from the engine, a digest naming owners 7 and 8 (for the pid
/// filter to split), then `lost` and `summary` records: every kind a run writes.
fn a_run() -> Vec<Record> {
    let mut out = crate::testing::a_client_and_a_server();
    out.push(
        serde_json::from_str(
            r#"{"type":"digest","ts_ns":7,"time":"1970-01-01T00:00:00.000007Z","stuck":3,"processes":[{"pid":7,"comm":"c","count":1,"oldest_age_ms":5},{"pid":8,"comm":"s","count":2,"oldest_age_ms":6}]}"#,
        )
        .unwrap(),
    );
    out.extend(mixed(5));
    out.push(summary(9));
    out
}

/// Writes `batch` through an export-like output (everything, JSON) and a stdout-like one
/// (`sink`, `filter`), either each formatting on its own or the second copying the first's
/// lines; returns both outputs' bytes and accounting.
fn both(
    batch: &[Record],
    sink: fn(ChunkWriter) -> Box<dyn Sink>,
    filter: &Filter,
    shared: bool,
) -> [(Vec<u8>, Destination); 2] {
    let (export_out, stdout_out) = (Shared::default(), Shared::default());
    // Small chunks, so that both ship in the middle of the batch.
    let small = Buffer { bytes: 4 << 10 };
    let mut export = json(export_out.clone(), BIG, WhenFull::Wait);
    let mut stdout = Output::spawn(
        sink,
        stdout_out.clone(),
        filter.clone(),
        small,
        WhenFull::Wait,
    )
    .unwrap();
    for part in batch.chunks(3) {
        if shared {
            export.format_with(part, &mut stdout);
        } else {
            export.format(part);
            stdout.format(part);
        }
        assert!(export.send(&[]) && stdout.send(&[]));
    }
    let (result, export) = export.finish(&[]);
    result.unwrap();
    let (result, stdout) = stdout.finish(&[]);
    result.unwrap();
    let bytes = |s: &Shared| s.0.lock().unwrap().clone();
    [(bytes(&export_out), export), (bytes(&stdout_out), stdout)]
}

#[test]
fn formatting_once_for_two_outputs_gives_each_the_bytes_and_counts_of_its_own() {
    let mut batch = a_run();
    // Enough records that the small chunks fill and ship between them.
    for _ in 0..6 {
        batch.extend(a_run());
    }
    let json: fn(ChunkWriter) -> Box<dyn Sink> = |w| Box::new(JsonChunkSink::new(w));
    let text: fn(ChunkWriter) -> Box<dyn Sink> = |w| Box::new(crate::sink::TextSink::new(w, true));
    let mut no_timelines = Filter::everything();
    no_timelines.timelines = false;
    let mut owner_7 = Filter::everything();
    // Changes the digest (Cow::Owned): that one must be formatted, not copied.
    owner_7.pids = [7].into();
    for (sink, filter, what) in [
        (json, Filter::everything(), "json, everything"),
        (json, no_timelines, "json, no timelines"),
        (json, owner_7.clone(), "json, pid 7"),
        (text, owner_7, "text, pid 7"),
    ] {
        let separate = both(&batch, sink, &filter, false);
        let shared = both(&batch, sink, &filter, true);
        assert!(!separate[1].0.is_empty(), "{what}: nothing shown");
        assert_eq!(
            String::from_utf8_lossy(&shared[1].0),
            String::from_utf8_lossy(&separate[1].0),
            "{what}"
        );
        assert_eq!(shared, separate, "{what}");
    }
}
