//! The event loop: drain the ring buffer, feed the engine, tick the CLOSE_WAIT detector, and
//! stop on a signal, `--duration`, or a closed stdout.
//!
//! The engine produces every record kind; stdout shows what the flags ask for, the `--export`
//! file, on its own output thread, gets everything, and `--metrics` counts everything
//! (`crate::metrics`, served from a thread of its own). `tracer top` ([`run_top`]) is one more
//! destination of the same records, on the same loop: the screen replaces stdout.

use std::{collections::HashMap, io, path::PathBuf, time::Duration};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    task::JoinHandle,
    time::{interval, sleep, MissedTickBehavior},
};

use crate::{
    close_wait::SockId,
    config::Config,
    decode::{Decoded, Decoder},
    delivery::Destination,
    diagnosis::{self, Diagnoser},
    engine::{self, Engine},
    export::{self, ExportFile},
    metrics::{self, process::fd_usages, Metrics, Totals},
    output::{is_broken_pipe, Output, WhenFull},
    owner::{self, SocketTable},
    probe::Probe,
    record::{LostRecord, Record, SkAddr, WrittenTo},
    sink::{self, unattended::Reports, Filter, JsonChunkSink, Sink, TextSink},
    stopping::{self, Signals},
    top,
    units::{monotonic_ns, WallClock},
};

/// How often the CLOSE_WAIT detector and the loss counters are checked.
const TICK: Duration = Duration::from_millis(100);

/// Ticks between refreshes of the per-process metrics (stuck sockets, fd usage): 1 s.
const PROCESS_REFRESH_TICKS: u64 = 10;

/// How long to let records gather after the ring buffer wakes us, before draining it. The
/// kernel wakes the reader only for a record committed into a ring the reader had emptied, and
/// each wakeup is an inter-processor interrupt paid by the traced code (inside our program's
/// run). While records gather, none is sent: at full churn that is one wakeup per batch of
/// thousands instead of one every few events. It is also the most a record waits to be read.
const DRAIN_DELAY: Duration = Duration::from_millis(10);

/// Records formatted at a time while draining. Small, so that records are freed soon after
/// they are made (the allocator then reuses the same few blocks), and so that a ring buffer
/// full after a stall never becomes one huge batch.
const DRAIN_SLICE: usize = 32;

/// Why the loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A signal (its name) asked the tracer to stop.
    Signal(&'static str),
    /// `--duration` passed.
    Duration,
    /// stdout was closed by its reader.
    OutputClosed,
    /// Writing the export file failed.
    ExportFailed,
    /// The operator left `tracer top` (q, Ctrl-C, or the terminal closed).
    Quit,
}

/// Runs the tracer until a stop condition; prints the summary on stderr.
pub async fn run(config: Config) -> anyhow::Result<Stop> {
    let mut session = Session::start(&config, false).await?;
    let stop = session.event_loop(&config).await?;
    // Boxed: the end of a run (the wait for the writers included) is a large future.
    Box::pin(session.finish(stop)).await
}

/// Runs `tracer top` on the same loop until a stop condition: the screen takes the place of
/// stdout. The terminal is given back on every way out before the summary is printed on
/// stderr.
pub async fn run_top(config: Config, options: top::Options) -> anyhow::Result<Stop> {
    if !io::IsTerminal::is_terminal(&io::stdout()) {
        anyhow::bail!(
            "tracer top needs a terminal on stdout (for a stream of records, run tracer without `top`)"
        );
    }
    let mut session = Session::start(&config, true).await?;
    let live = top::live::Live::start(
        &session.header,
        &config.pids,
        config.engine.max_sockets,
        &options,
    )
    .context("taking the terminal")?;
    session.outputs.top = Some(live);
    let stop = session.event_loop(&config).await;
    if let Some(live) = session.outputs.top.take() {
        live.leave().context("restoring the terminal")?;
    }
    Box::pin(session.finish(stop?)).await
}

/// A running trace: the attached probe, its ring buffer, the engine and the destinations.
struct Session {
    probe: Probe,
    ring: AsyncFd<RingBuf<MapData>>,
    engine: Engine,
    outputs: Outputs,
    clock: WallClock,
    signals: Signals,
    /// Records made and not yet handed to the outputs.
    batch: Vec<Record>,
    /// Decodes the ring buffer's records.
    decoder: Decoder,
    /// The socket table lookup under way for due CLOSE_WAIT alerts, if any.
    lookup: Option<Lookup>,
    /// When followed timewait sockets were last checked in the tables.
    rechecked_ns: u64,
    /// Transitions drained from the ring buffer while a lookup or a diagnosis is under way:
    /// the engine takes them once the alerts it was asked for are out, so the records come in
    /// the same order as if the lookup had been instant, while the ring buffer keeps being
    /// emptied.
    held: Vec<Decoded>,
    /// The diagnosis thread, `None` if it could not be started (reports then go without).
    diagnoser: Option<DiagnosisThread>,
    /// The diagnosis under way for reports or a digest, if any.
    diagnosing: Option<Diagnosing>,
    /// The run's header, as the export has it.
    header: crate::record::Header,
    /// The loss counters (ring buffer, recursion misses, output drops) as of the last `lost`
    /// record: the next one carries the difference.
    reported_lost: Losses,
    /// `lost` records dropped by the outputs as of the last one made.
    lost_records_dropped: u64,
}

/// Loss counters at one instant: ring buffer drops, recursion misses (0 where the kernel does
/// not count them) and output records dropped, each a running total since the start.
type Losses = (u64, u64, u64);

/// Reports (or a digest) waiting for their holders' diagnosis.
struct Diagnosing {
    pending: Vec<Record>,
    /// `--track-reads`: the last read of each report's socket, by `skaddr`.
    reads: HashMap<SkAddr, crate::reads::LastReadReport>,
    done: tokio::sync::oneshot::Receiver<Diagnoses>,
}

/// A diagnosis per pid.
type Diagnoses = HashMap<u32, diagnosis::Diagnosis>;

/// One diagnosis to make: the socket tables read for the reports (`None`: read them there),
/// the processes, the reports' time, and where to send the result.
type Job = (
    Option<SocketTable>,
    Vec<diagnosis::Target>,
    u64,
    tokio::sync::oneshot::Sender<Diagnoses>,
);

/// The thread that makes diagnoses, off the event loop. It owns the [`Diagnoser`] (which
/// keeps files' unwind sections between runs; the symbolizer cannot move between threads),
/// hands the memory a run parsed and freed back to the OS, and ends when this handle is
/// dropped.
struct DiagnosisThread {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl DiagnosisThread {
    fn start() -> Option<Self> {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("diagnosis".into())
            .spawn(move || {
                let mut diagnoser = Diagnoser::new();
                for (table, targets, at_ns, done) in queue {
                    let _ = done.send(diagnoser.run(table.as_ref(), &targets, at_ns));
                    crate::memory::release_freed();
                }
            })
            .map_err(|e| log::warn!("no diagnosis thread, reports go without: {e}"))
            .ok()?;
        Some(Self { jobs })
    }
}

/// Due CLOSE_WAIT alerts waiting for the socket tables, read on a blocking thread.
struct Lookup {
    due: Vec<SockId>,
    /// Reported sockets followed into timewait sockets, to check in the tables.
    followed: Vec<SockId>,
    /// When they became due: the alerts' time.
    at_ns: u64,
    scan: JoinHandle<Result<SocketTable, procfs::ProcError>>,
}

impl Session {
    /// Opens the export, loads and attaches the probe, reads the sockets already in CLOSE_WAIT
    /// and sends the headers. With `top`, stdout is left to the screen.
    async fn start(config: &Config, top: bool) -> anyhow::Result<Self> {
        // Signals are handled from the start, so one sent as soon as we report being attached
        // still ends the run cleanly.
        let signals = Signals::install()?;
        // Before anything else, so a bad address or a port in use fails at once, without root.
        let listener = match &config.metrics {
            Some(target) => Some(metrics::Listener::bind(target.addr)?),
            None => None,
        };
        // Before loading eBPF, so a refused file is reported at once, with or without root.
        let export = match &config.export {
            Some(target) => Some(ExportFile::open(&target.path, target.force)?),
            None => None,
        };
        let (mut probe, ring) = match Probe::load(&config.kernel) {
            Ok(loaded) => loaded,
            Err(e) => {
                if let Some(file) = export {
                    file.discard();
                }
                return Err(e.into());
            }
        };
        let clock = WallClock::now();
        // The export and the metrics take every record; without them, records stdout does not
        // show are not made.
        let everything = top || export.is_some() || listener.is_some();
        let mut engine = Engine::new(
            engine::Options {
                transitions: everything || config.engine.transitions,
                timelines: everything || config.engine.timelines,
                causes: match &probe.features().cause_tracepoints {
                    Some(attached) if !attached.is_empty() => engine::CauseSource::Live {
                        error_reports: probe.causes().error_reports(),
                    },
                    _ => engine::CauseSource::Given,
                },
                ..config.engine.clone()
            },
            clock,
        );

        let start = monotonic_ns();
        let wanted = engine.wanted(&[]);
        let files = probe.held_files();
        if let Some(mut table) =
            settle(tokio::task::spawn_blocking(move || timed_scan(&wanted, files)).await)
        {
            if let Some(netns) = config.kernel.netns {
                // The scan read every namespace there is: a mistyped inode is said now.
                if !table.netns.contains(&u64::from(netns)) {
                    log::warn!(
                        "--netns {netns}: no network namespace has this inode now (`lsns -t net` \
                         lists them); only one made later with it would be traced"
                    );
                }
            }
            table
                .entries
                .retain(|e| config.kernel.matches(e.netns, &e.endpoints));
            engine.preexisting(&table, start);
        }

        log::info!(
            "ring buffer {} KiB; output buffer {} KiB per destination (--output-buffer): \
             what a slow reader leaves no room for is dropped and counted",
            config.kernel.ring_buffer_bytes / 1024,
            config.output_buffer.bytes / 1024
        );
        for pid in &config.pids {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                log::warn!(
                    "--pid {pid}: no such process now; only sockets of a process started later \
                     with this pid would be shown"
                );
            }
        }
        let display = config.display();
        let header = |complete, written_to| crate::record::Header {
            kernel_features: Some(probe.features().clone()),
            written_to,
            ..export::header(config.run_options(), clock, start, complete)
        };
        let exporting = match export {
            Some(file) => Some(spawn_export(
                file,
                header(true, Some(WrittenTo::Export)),
                config,
            )?),
            None => None,
        };
        let metrics = match (listener, &config.metrics) {
            (Some(listener), Some(target)) => {
                Some(serve_metrics(listener, target, &header(true, None))?)
            }
            _ => None,
        };
        let stdout = if top {
            // The screen shows the records; the stdout destination only keeps the count.
            Output::spawn(
                |chunk| Box::new(JsonChunkSink::new(chunk)),
                io::sink(),
                Filter {
                    transitions: false,
                    timelines: false,
                    pids: display.pids.clone(),
                },
                config.output_buffer,
                WhenFull::Drop,
            )
            .context("starting the output thread")?
        } else {
            stdout_output(config, display.clone())?
        };
        let run_header = header(true, Some(WrittenTo::Export));
        let mut outputs = Outputs {
            stdout,
            export: exporting,
            metrics,
            top: None,
        };
        outputs.stdout.send(&[Record::Header(Box::new(header(
            display.is_everything(),
            Some(WrittenTo::Stdout),
        )))]);
        // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
        // `AsyncFd` (and the ring buffer inside it) is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)
            .context("polling the ring buffer")?;
        let mut session = Self {
            probe,
            ring,
            engine,
            outputs,
            clock,
            signals,
            batch: Vec::new(),
            decoder: Decoder::default(),
            lookup: None,
            rechecked_ns: 0,
            held: Vec::new(),
            diagnoser: DiagnosisThread::start(),
            diagnosing: None,
            header: run_header,
            reported_lost: (0, 0, 0),
            lost_records_dropped: 0,
        };
        // Sockets that entered CLOSE_WAIT while the tables were read are in the ring buffer:
        // replay them now so they are not mistaken for older ones.
        session.drain();
        let features = session.probe.features();
        let fallback = features
            .hook_fallback
            .as_deref()
            .map(|why| format!(" (tp_btf refused: {why})"))
            .unwrap_or_default();
        if let Some(why) = session.probe.reads_refused() {
            let hint = if why.contains("does not have the tracepoint") {
                " (it came in Linux 6.3)"
            } else {
                ""
            };
            eprintln!(
                "tracer: --track-reads: not tracking reads: sock:sock_recv_length: {why}{hint}; reports' last_read stays null"
            );
        }
        eprintln!(
            "tracer: attached to sock:inet_sock_set_state via {}{fallback}; Ctrl-C to stop",
            session.probe.hook().name()
        );
        Ok(session)
    }

    /// Drains the ring buffer as it fills, ticks the CLOSE_WAIT detector and the loss counters,
    /// and says why it stopped.
    async fn event_loop(&mut self, config: &Config) -> anyhow::Result<Stop> {
        let mut tick = interval(TICK);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut digest = interval(config.report_interval);
        digest.set_missed_tick_behavior(MissedTickBehavior::Delay);
        digest.tick().await;
        let deadline = sleep(config.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
        tokio::pin!(deadline);

        let mut ticks = 0u64;
        // A digest that came due during a lookup waits for its owners.
        let mut digest_due = false;
        loop {
            tokio::select! {
                guard = self.ring.readable_mut() => {
                    let mut guard = guard.context("waiting for the ring buffer")?;
                    sleep(DRAIN_DELAY).await;
                    guard.clear_ready();
                    drop(guard);
                    self.drain();
                }
                _ = tick.tick() => {
                    // A safety net: nothing stays in the ring longer than a tick.
                    let before_drain = monotonic_ns();
                    self.drain();
                    // Every cause reported by then has been read: transitions to CLOSE whose
                    // wait ended before it can go (not while records are held back: the
                    // causes may be among them).
                    if self.lookup.is_none() && self.diagnosing.is_none() {
                        self.engine.settle(before_drain, &mut self.batch);
                    }
                    let now = monotonic_ns();
                    if self.lookup.is_none() && self.diagnosing.is_none() {
                        let recheck = now.saturating_sub(self.rechecked_ns) >= RECHECK_NS;
                        self.lookup = Lookup::start(&mut self.engine, &mut self.probe, now, recheck);
                        if recheck && self.lookup.as_ref().is_some_and(|l| !l.followed.is_empty()) {
                            self.rechecked_ns = now;
                        }
                    }
                    let lost = self.push_lost(now);
                    ticks += 1;
                    if self.outputs.top.as_ref().is_some_and(|t| t.due(now)) {
                        self.outputs.format(&mut self.batch);
                        let health = health(&self.engine, (lost.0, lost.1), &self.outputs);
                        if let Some(live) = &mut self.outputs.top {
                            live.refresh(now, health).await.context("drawing tracer top")?;
                        }
                    }
                    if let Some(metrics) = &mut self.outputs.metrics {
                        let outputs = (&self.outputs.stdout, self.outputs.export.as_ref());
                        metrics.publish(&totals(&self.engine, (lost.0, lost.1), outputs));
                        if ticks.is_multiple_of(PROCESS_REFRESH_TICKS) {
                            refresh_processes(metrics, &self.engine, now).await;
                        }
                    }
                }
                scanned = scanned(&mut self.lookup) => {
                    self.alert(settle(scanned));
                }
                diagnosed = diagnosed(&mut self.diagnosing) => {
                    self.diagnosed(diagnosed);
                }
                _ = digest.tick() => {
                    digest_due = true;
                }
                request = input(&mut self.outputs.top) => {
                    if request.context("drawing tracer top")? == top::live::Request::Quit {
                        return Ok(Stop::Quit);
                    }
                }
                name = self.signals.next() => return Ok(Stop::Signal(name)),
                () = &mut deadline => return Ok(Stop::Duration),
            }
            // A digest that came due during a lookup or a diagnosis waits for it.
            if digest_due && self.lookup.is_none() && self.diagnosing.is_none() {
                digest_due = false;
                self.digest();
            }
            if let Some(stop) = self.outputs.send(&mut self.batch) {
                return Ok(stop);
            }
        }
    }

    /// Delivers what is left, prints the summary on stderr and says how the run ended.
    async fn finish(mut self, stop: Stop) -> anyhow::Result<Stop> {
        self.settle_diagnosis().await;
        if let Some(lookup) = &mut self.lookup {
            let scanned = (&mut lookup.scan).await;
            self.alert(settle(scanned));
        }
        self.settle_diagnosis().await;
        // What is still in the ring buffer was emitted before the stop: deliver it too.
        self.drain();
        let now = monotonic_ns();
        if let Some(lookup) = Lookup::start(&mut self.engine, &mut self.probe, now, false) {
            self.lookup = Some(lookup);
            let scanned = (&mut self.lookup.as_mut().expect("just set").scan).await;
            self.alert(settle(scanned));
            self.settle_diagnosis().await;
        }
        // Losses since the last tick get their `lost` record too, so that the records add up
        // to the summary's totals (which are read from the same counters below).
        let (ringbuf, misses, _) = self.push_lost(now);
        let Self {
            probe,
            mut engine,
            mut outputs,
            mut batch,
            mut signals,
            ..
        } = self;
        outputs.format(&mut batch);
        log::info!("the kernel ran the program {} times", probe.runs());
        let misses = probe.recursion_misses().map(|_| misses);
        let mut summary = engine.finish(now, ringbuf, misses, &mut batch);
        summary.lost_causes = probe.causes().lost();
        // The open timelines are counted before the summary that counts them.
        outputs.format(&mut batch);
        let Outputs {
            mut stdout,
            export,
            metrics,
            ..
        } = outputs;
        // The endpoint stops now: what it would serve no longer changes.
        drop(metrics);
        // The export is written to its end first: its own summary counts what it dropped
        // before it; stdout's then counts what the export dropped in the end (all it still
        // held, when its disk failed).
        let (exported, export) = match export {
            Some((mut export, path)) => {
                summary.set_delivery(stdout.delivery(), Some(export.delivery()));
                export.close(&[Record::Summary(Box::new(summary.clone()))]);
                stopping::wait_for_export(&export, &path, &mut signals).await;
                let (result, delivery) = export.finish(&[]);
                (Some((result, path)), Some(delivery))
            }
            None => (None, None),
        };
        summary.set_delivery(stdout.delivery(), export);
        stdout.close(&[Record::Summary(Box::new(summary.clone()))]);
        // A slow reader of stdout may hold this for long: a second stop signal cuts it short.
        stopping::wait_for_writers(&stdout, &mut signals, stop).await;
        let (written, stdout) = stdout.finish(&[]);
        // On stderr, the final count: it includes records stdout's writer failed to write
        // after the summary was made, and its queue dropped on a second stop signal.
        summary.set_delivery(stdout, export);
        eprintln!("{}", sink::text::summary(&summary));
        if let Some((Err(e), path)) = exported {
            return Err(e).with_context(|| format!("writing the export {}", path.display()));
        }
        match written {
            Err(e) if is_broken_pipe(&e) => Ok(Stop::OutputClosed),
            Err(e) => Err(e).context("writing the output"),
            Ok(()) => Ok(stop),
        }
    }

    /// Reads the loss counters and, if any moved since the last `lost` record, queues a new one
    /// with the differences. Returns the counters read.
    fn push_lost(&mut self, now: u64) -> Losses {
        let (stdout, export) = self.outputs.delivery();
        // Records of any type but `lost` dropped so far, over both destinations.
        let dropped =
            stdout.dropped.total_but_lost() + export.map_or(0, |e| e.dropped.total_but_lost());
        let lost = (
            self.probe.lost(),
            self.probe.recursion_misses().unwrap_or(0),
            dropped,
        );
        let reported = self.reported_lost;
        let lost_records_dropped = stdout.dropped.lost + export.map_or(0, |e| e.dropped.lost);
        // A stalled reader dropped the last `lost` record: once there is room again, it gets
        // the figures once more, so a reader that catches up knows what it missed.
        let resend =
            lost_records_dropped != self.lost_records_dropped && self.outputs.stdout.has_room();
        if lost != reported || resend {
            self.batch.push(Record::Lost(Box::new(LostRecord {
                ts_ns: now,
                time: self.clock.wall(now),
                ringbuf: lost.0.saturating_sub(reported.0),
                recursion_misses: lost.1.saturating_sub(reported.1),
                stdout,
                export,
            })));
            self.reported_lost = lost;
            self.lost_records_dropped = lost_records_dropped;
        }
        lost
    }

    /// Empties the ring buffer into the engine, or, while a lookup is under way, into `held`.
    fn drain(&mut self) {
        let ring = self.ring.get_mut();
        while let Some(item) = ring.next() {
            match self.decoder.decode_any(&item) {
                Ok(decoded) if self.lookup.is_some() || self.diagnosing.is_some() => {
                    self.held.push(decoded);
                }
                Ok(decoded) => {
                    if self.batch.len() >= DRAIN_SLICE {
                        self.outputs.format(&mut self.batch);
                    }
                    feed(&mut self.engine, decoded, &mut self.batch);
                }
                Err(e) => {
                    log::debug!("skipping a ring buffer record: {e}");
                    self.engine.decode_error();
                }
            }
        }
    }

    /// Ends the lookup: makes its alerts with what the socket tables say; starts the
    /// diagnosis of their holders (the alerts and the transitions held meanwhile wait for it),
    /// or emits them and hands the held transitions to the engine.
    fn alert(&mut self, table: Option<SocketTable>) {
        let Some(lookup) = self.lookup.take() else {
            return;
        };
        let mut fresh = Vec::new();
        self.engine
            .alert(&lookup.due, table.as_ref(), lookup.at_ns, &mut fresh);
        if let Some(table) = &table {
            self.engine
                .recheck(&lookup.followed, table, lookup.at_ns, &mut fresh);
        }
        let reads = self.last_reads(&fresh, lookup.at_ns);
        if !self.diagnose(fresh, table, lookup.at_ns) {
            self.release_held();
        } else if let Some(d) = &mut self.diagnosing {
            d.reads = reads;
        }
    }

    /// With `--track-reads`: the last read of each report's socket (those seen through the
    /// kernel: the map is keyed by the socket's address), as of `now_ns`.
    fn last_reads(
        &self,
        records: &[Record],
        now_ns: u64,
    ) -> HashMap<SkAddr, crate::reads::LastReadReport> {
        let Some(reads) = self.probe.reads() else {
            return HashMap::new();
        };
        records
            .iter()
            .filter_map(|r| match r {
                Record::CloseWait(r) | Record::Stuck(r) => r.skaddr.as_ref(),
                _ => None,
            })
            .filter_map(|skaddr| {
                let read = reads.get(skaddr.0)?;
                Some((*skaddr, crate::reads::LastReadReport::new(&read, now_ns)))
            })
            .collect()
    }

    /// Starts diagnosing the holders named by `records` (reports or a digest) with `table`
    /// (`None`: the task reads it), holding the records until it is done. Says whether it
    /// did; otherwise (no holder, or a diagnosis under way) the records go out at once.
    fn diagnose(&mut self, records: Vec<Record>, table: Option<SocketTable>, at_ns: u64) -> bool {
        let targets = targets(&records);
        if targets.is_empty() || self.diagnosing.is_some() {
            self.batch.extend(records);
            return false;
        }
        let Some(thread) = &self.diagnoser else {
            self.batch.extend(records);
            return false;
        };
        let (send, done) = tokio::sync::oneshot::channel();
        if thread.jobs.send((table, targets, at_ns, send)).is_err() {
            log::warn!("the diagnosis thread stopped: reports go without");
            self.diagnoser = None;
            self.batch.extend(records);
            return false;
        }
        self.diagnosing = Some(Diagnosing {
            pending: records,
            reads: HashMap::new(),
            done,
        });
        true
    }

    /// Ends a diagnosis: its records go out with it, then the transitions held meanwhile.
    fn diagnosed(&mut self, result: Result<Diagnoses, tokio::sync::oneshot::error::RecvError>) {
        let Some(diagnosing) = self.diagnosing.take() else {
            return;
        };
        let mut records = diagnosing.pending;
        if let Ok(found) = result {
            attach(&mut records, &found, &diagnosing.reads);
        } else {
            log::warn!("the diagnosis thread stopped: reports go without");
            self.diagnoser = None;
        }
        self.batch.extend(records);
        self.release_held();
    }

    /// Waits for the diagnosis under way, if any (bounded by [`diagnosis::BUDGET`]).
    async fn settle_diagnosis(&mut self) {
        if let Some(diagnosing) = &mut self.diagnosing {
            let result = (&mut diagnosing.done).await;
            self.diagnosed(result);
        }
    }

    /// Hands the transitions held during a lookup or diagnosis to the engine.
    fn release_held(&mut self) {
        if self.lookup.is_some() || self.diagnosing.is_some() {
            return;
        }
        for decoded in std::mem::take(&mut self.held) {
            if self.batch.len() >= DRAIN_SLICE {
                self.outputs.format(&mut self.batch);
            }
            feed(&mut self.engine, decoded, &mut self.batch);
        }
    }

    /// The CLOSE_WAIT digest, when some socket is stuck, with its processes' diagnoses.
    fn digest(&mut self) {
        let now = monotonic_ns();
        if let Record::Digest(d) = self.engine.digest(now) {
            if d.stuck > 0 {
                self.diagnose(vec![Record::Digest(d)], None, now);
            }
        }
    }
}

/// How often reported sockets followed into timewait sockets are checked in the tables.
const RECHECK_NS: u64 = 1_000_000_000;

impl Lookup {
    /// Starts reading the socket tables when some alert is due at `now_ns`, or (with
    /// `recheck`) when reported sockets are followed through the tables.
    fn start(engine: &mut Engine, probe: &mut Probe, now_ns: u64, recheck: bool) -> Option<Self> {
        let due = engine.due(now_ns);
        let followed = if recheck {
            let lossy = probe.lost() + probe.recursion_misses().unwrap_or(0) > 0;
            engine.followed(lossy)
        } else {
            Vec::new()
        };
        if due.is_empty() && followed.is_empty() {
            return None;
        }
        let wanted = engine.wanted(&[due.as_slice(), followed.as_slice()].concat());
        let files = probe.held_files();
        Some(Self {
            due,
            followed,
            at_ns: now_ns,
            scan: tokio::task::spawn_blocking(move || timed_scan(&wanted, files)),
        })
    }
}

/// The result of the diagnosis under way; never ready without one.
async fn diagnosed(
    diagnosing: &mut Option<Diagnosing>,
) -> Result<Diagnoses, tokio::sync::oneshot::error::RecvError> {
    match diagnosing {
        Some(d) => (&mut d.done).await,
        None => std::future::pending().await,
    }
}

/// The processes to diagnose for these records: each report's owner (with the fds it holds
/// the stuck socket by, and the socket), each digest line's process.
fn targets(records: &[Record]) -> Vec<diagnosis::Target> {
    let mut targets: Vec<diagnosis::Target> = Vec::new();
    let mut target = |pid: u32| -> usize {
        if let Some(i) = targets.iter().position(|t| t.pid == pid) {
            return i;
        }
        targets.push(diagnosis::Target {
            pid,
            ..diagnosis::Target::default()
        });
        targets.len() - 1
    };
    let mut found = Vec::new();
    for record in records {
        match record {
            Record::CloseWait(r) | Record::Stuck(r) => {
                let Some(pid) = r.pid else { continue };
                let i = target(pid);
                let fds = r
                    .holders
                    .iter()
                    .filter(|h| h.pid == pid)
                    .filter_map(|h| h.fd)
                    .chain(r.fd);
                let endpoints = crate::event::Endpoints {
                    laddr: r.laddr,
                    lport: r.lport,
                    raddr: r.raddr,
                    rport: r.rport,
                };
                found.push((i, fds.collect::<Vec<i32>>(), Some((r.netns, endpoints))));
            }
            Record::Digest(d) => {
                for pid in d.processes.iter().filter_map(|p| p.pid) {
                    found.push((target(pid), Vec::new(), None));
                }
            }
            _ => {}
        }
    }
    for (i, fds, stuck) in found {
        let t = &mut targets[i];
        for fd in fds {
            if !t.stuck_fds.contains(&fd) {
                t.stuck_fds.push(fd);
            }
        }
        t.stuck.extend(stuck);
    }
    targets
}

/// Puts each process's diagnosis on the records that name it, with each report's last read
/// (and what the reading thread blocks in now, when the diagnosis lists it).
fn attach(
    records: &mut [Record],
    found: &HashMap<u32, diagnosis::Diagnosis>,
    reads: &HashMap<SkAddr, crate::reads::LastReadReport>,
) {
    for record in records {
        match record {
            Record::CloseWait(r) | Record::Stuck(r) => {
                r.diagnosis = r.pid.and_then(|pid| found.get(&pid)).cloned();
                let read = r.skaddr.as_ref().and_then(|a| reads.get(a));
                if let (Some(d), Some(read)) = (&mut r.diagnosis, read) {
                    let mut read = read.clone();
                    read.now_blocked_in = d
                        .threads
                        .iter()
                        .find(|t| t.tid == read.tid)
                        .map(|t| t.blocked_in.clone());
                    d.last_read = Some(read);
                }
            }
            Record::Digest(d) => {
                for p in &mut d.processes {
                    p.diagnosis = p.pid.and_then(|pid| found.get(&pid)).cloned();
                }
            }
            _ => {}
        }
    }
}

/// The result of the lookup under way; never ready without one.
/// Hands one ring buffer record to the engine.
fn feed(engine: &mut Engine, decoded: Decoded, out: &mut Vec<Record>) {
    match decoded {
        Decoded::Transition(transition) => engine.transition(transition, out),
        Decoded::Cause(signal) => engine.cause(signal, out),
    }
}

async fn scanned(lookup: &mut Option<Lookup>) -> Scanned {
    match lookup {
        Some(lookup) => (&mut lookup.scan).await,
        None => std::future::pending().await,
    }
}

/// What a scan task returns.
type Scanned = Result<Result<SocketTable, procfs::ProcError>, tokio::task::JoinError>;

/// The socket tables a scan read. A failed read is logged and yields nothing: owners then
/// stay unknown.
fn settle(scanned: Scanned) -> Option<SocketTable> {
    match scanned {
        Ok(Ok(table)) => Some(table),
        Ok(Err(e)) => {
            log::warn!("could not read the socket tables: {e}");
            None
        }
        Err(e) => {
            log::warn!("socket table scan failed: {e}");
            None
        }
    }
}

/// Where records go: stdout, the export file when there is one, the metrics, and the screen
/// of `tracer top`.
struct Outputs {
    stdout: Output,
    export: Option<(Output, PathBuf)>,
    metrics: Option<Metrics>,
    top: Option<top::live::Live>,
}

impl Outputs {
    /// What stdout and the export were to show and lost so far.
    fn delivery(&self) -> (Destination, Option<Destination>) {
        (
            self.stdout.delivery(),
            self.export.as_ref().map(|(e, _)| e.delivery()),
        )
    }

    /// Formats the batch for every destination and empties it (keeping its capacity).
    fn format(&mut self, batch: &mut Vec<Record>) {
        if let Some(metrics) = &mut self.metrics {
            metrics.observe(batch);
        }
        if let Some(top) = &mut self.top {
            top.observe(batch);
        }
        match &mut self.export {
            // Formatted once for both when both are JSON lines.
            Some((export, _)) => export.format_with(batch, &mut self.stdout),
            None => self.stdout.format(batch),
        }
        batch.clear();
    }

    /// Formats and ships the batch; says why to stop when a destination is gone.
    fn send(&mut self, batch: &mut Vec<Record>) -> Option<Stop> {
        if let Some(metrics) = &mut self.metrics {
            metrics.observe(batch);
        }
        if let Some(top) = &mut self.top {
            top.observe(batch);
        }
        let mut left: &[Record] = batch;
        if let Some((export, _)) = &mut self.export {
            // Formatted once for both when both are JSON lines.
            export.format_with(left, &mut self.stdout);
            left = &[];
            if !export.send(left) {
                // Formatted for both already: the batch must not be formatted again at the end.
                batch.clear();
                return Some(Stop::ExportFailed);
            }
        }
        let open = self.stdout.send(left);
        batch.clear();
        (!open).then_some(Stop::OutputClosed)
    }
}

/// Sends the header at once (so a file with a header means the probe is attached), on the
/// file's own output thread.
fn spawn_export(
    file: ExportFile,
    header: crate::record::Header,
    config: &Config,
) -> anyhow::Result<(Output, PathBuf)> {
    let path = file.path().to_owned();
    let context = || format!("writing the export {}", path.display());
    let started = file.writer().and_then(|writer| {
        let mut output = Output::spawn(
            |chunk| Box::new(JsonChunkSink::new(chunk)),
            writer,
            Filter::everything(),
            config.output_buffer,
            WhenFull::Wait,
        )?;
        // Written before the run counts as started: a disk that refuses the first line is
        // a failed start (the file goes), not a run with an empty export.
        if output.send(&[Record::Header(Box::new(header))]) && output.written() {
            return Ok(output);
        }
        Err(output
            .finish(&[])
            .0
            .err()
            .unwrap_or_else(|| io::Error::other("the export writer stopped")))
    });
    match started.and_then(|output| file.cut().map(|()| output)) {
        Ok(output) => Ok((output, path)),
        Err(e) => {
            file.discard();
            Err(e).with_context(context)
        }
    }
}

/// The stdout destination: text (coloured on a terminal unless `NO_COLOR`) or NDJSON; with
/// `--quiet`, only the reports, as NDJSON on stderr. It drops (and counts) what a stalled
/// reader leaves no room for.
fn stdout_output(config: &Config, filter: Filter) -> anyhow::Result<Output> {
    if config.quiet {
        return Output::spawn(
            |chunk| Box::new(Reports::new(JsonChunkSink::new(chunk))),
            io::stderr(),
            filter,
            config.output_buffer,
            WhenFull::Drop,
        )
        .context("starting the output thread");
    }
    let (json, wide, detail) = (config.json, config.wide, config.detail);
    let color =
        std::io::IsTerminal::is_terminal(&io::stdout()) && std::env::var_os("NO_COLOR").is_none();
    let stdout = crate::stdout::raw().context("opening stdout")?;
    Output::spawn(
        move |chunk| -> Box<dyn Sink> {
            if json {
                Box::new(JsonChunkSink::new(chunk))
            } else {
                Box::new(
                    TextSink::new(chunk, wide)
                        .with_color(color)
                        .with_detail(detail),
                )
            }
        },
        stdout,
        filter,
        config.output_buffer,
        WhenFull::Drop,
    )
    .context("starting the output thread")
}

/// The terminal event of `tracer top`, acted on; never ready without the screen.
async fn input(top: &mut Option<top::live::Live>) -> io::Result<top::live::Request> {
    match top {
        Some(live) => live.input().await,
        None => std::future::pending().await,
    }
}

/// The tracer's health as `tracer top` shows it.
fn health(engine: &Engine, lost: (u64, u64), outputs: &Outputs) -> top::model::Health {
    let t = totals(engine, lost, (&outputs.stdout, outputs.export.as_ref()));
    let own = metrics::process::own_usage();
    top::model::Health {
        events: t.events,
        lost_ringbuf: t.lost_ringbuf,
        recursion_misses: t.recursion_misses,
        dropped: t.decode_errors
            + t.stdout_dropped.total()
            + t.export_dropped.map_or(0, |e| e.total()),
        cpu_seconds: own.map(|(cpu, _)| cpu),
        rss_bytes: own.map(|(_, rss)| rss),
    }
}

/// Registers the metrics and serves them on the listener bound at start, from the metrics
/// thread (so scrapes do not wait for this loop).
fn serve_metrics(
    listener: metrics::Listener,
    target: &crate::config::MetricsTarget,
    header: &crate::record::Header,
) -> anyhow::Result<Metrics> {
    let mut metrics = Metrics::new(&header.kernel, target.max_processes);
    let addr = listener.local_addr();
    metrics
        .serve(listener)
        .with_context(|| format!("serving --metrics on {addr}"))?;
    eprintln!("tracer: metrics on http://{addr}/metrics, health on http://{addr}/healthz");
    Ok(metrics)
}

/// The run's totals so far, for the metrics.
fn totals(
    engine: &Engine,
    lost: (u64, u64),
    (stdout, export): (&Output, Option<&(Output, PathBuf)>),
) -> Totals {
    let summary = engine.summary();
    Totals {
        events: summary.events,
        lost_ringbuf: lost.0,
        recursion_misses: lost.1,
        decode_errors: summary.decode_errors,
        evicted: summary.evicted,
        stdout_dropped: stdout.delivery().dropped,
        export_dropped: export.map(|(e, _)| e.delivery().dropped),
    }
}

/// Refreshes the per-process metrics from the engine's stuck sockets, reading the holders'
/// fd usage off the event loop's thread.
async fn refresh_processes(metrics: &Metrics, engine: &Engine, now: u64) {
    let Record::Digest(digest) = engine.digest(now) else {
        return;
    };
    let fds = fd_usages(metrics.tracked_pids(&digest)).await;
    metrics.processes(&digest, &fds);
}

/// [`owner::scan`] (the descriptors read from `files`, a run of the held-file iterator, when
/// given), its wall and CPU time (its helper threads' included) and its walk logged at `-v`
/// (the bench reads them).
fn timed_scan(
    wanted: &owner::Wanted,
    files: Option<std::fs::File>,
) -> Result<SocketTable, procfs::ProcError> {
    let (start, cpu_start) = (std::time::Instant::now(), owner::thread_cpu());
    let scanned = owner::scan_costed(wanted, files);
    if let Ok((table, (helpers_cpu, walk))) = &scanned {
        let cpu_ms =
            (owner::thread_cpu().saturating_sub(cpu_start) + *helpers_cpu).as_secs_f64() * 1e3;
        log::info!(
            "socket table scan: {} sockets in {} namespaces in {:.1} ms ({cpu_ms:.1} ms CPU), fd walk: {}",
            table.entries.len(),
            table.netns.len(),
            start.elapsed().as_secs_f64() * 1e3,
            walk.name(),
        );
    }
    scanned.map(|(table, _)| table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(json: &str) -> Record {
        serde_json::from_str(json).unwrap()
    }

    /// Each report's owner is diagnosed once, with the fds it holds its stuck sockets by; a
    /// digest's processes too; the diagnoses land on every record naming the process.
    #[test]
    fn reports_and_digests_get_their_owners_diagnosis() {
        let alert = |rport: u16, fd: i32| {
            record(&format!(
                r#"{{"type":"close_wait","ts_ns":1,"time":"1970-01-01T00:00:00.000000Z","skaddr":null,"pid":7,"comm":"srv","fd":{fd},"family":"ipv4","laddr":"127.0.0.1","lport":80,"raddr":"127.0.0.1","rport":{rport},"age_ms":1,"age_at_least":false,"recv_q":0,"netns":5,"holders":[{{"pid":7,"comm":"srv","fd":{fd}}},{{"pid":8,"comm":"srv","fd":9}}]}}"#
            ))
        };
        let digest = record(
            r#"{"type":"digest","ts_ns":1,"time":"1970-01-01T00:00:00.000000Z","stuck":3,"processes":[{"pid":7,"comm":"srv","count":2,"oldest_age_ms":5},{"pid":null,"comm":null,"count":1,"oldest_age_ms":5}]}"#,
        );
        let mut records = vec![alert(5000, 4), alert(5001, 6), digest];
        let targets = targets(&records);
        let [t] = &targets[..] else {
            panic!("{targets:?}")
        };
        assert_eq!((t.pid, t.stuck_fds.as_slice()), (7, &[4, 6][..]));
        assert_eq!(t.stuck.len(), 2);
        assert_eq!(t.stuck[1].0, Some(5));
        let found = HashMap::from([(
            7,
            diagnosis::Diagnosis {
                pid: 7,
                fds_open: Some(12),
                ..diagnosis::Diagnosis::default()
            },
        )]);
        attach(&mut records, &found, &HashMap::new());
        for r in &records[..2] {
            let Record::CloseWait(r) = r else { panic!() };
            assert_eq!(r.diagnosis.as_ref().map(|d| d.fds_open), Some(Some(12)));
        }
        let Record::Digest(d) = &records[2] else {
            panic!()
        };
        assert!(d.processes[0].diagnosis.is_some() && d.processes[1].diagnosis.is_none());
    }
}
