//! The event loop: drain the ring buffer, feed the engine, tick the CLOSE_WAIT detector, and
//! stop on a signal, `--duration`, or a closed stdout.
//!
//! The engine produces every record kind; stdout shows what the flags ask for, and the
//! `--export` file, on its own output thread, gets everything.

use std::{collections::HashSet, io, path::PathBuf, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    time::{interval, sleep, MissedTickBehavior},
};

use crate::{
    cli::Config,
    decode::decode,
    engine::{self, Engine},
    export::{self, ExportFile},
    output::{is_broken_pipe, Output},
    owner,
    probe::Probe,
    record::{LostRecord, Record},
    sink::{self, Filter, JsonSink, Sink, TextSink},
    units::{monotonic_ns, WallClock},
};

/// How often the CLOSE_WAIT detector and the loss counters are checked.
const TICK: Duration = Duration::from_millis(100);

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
    Signal(&'static str),
    Duration,
    /// stdout was closed by its reader.
    OutputClosed,
    /// Writing the export file failed.
    ExportFailed,
}

/// Runs the tracer until a stop condition; prints the summary on stderr.
pub async fn run(config: Config) -> anyhow::Result<Stop> {
    // Signals are handled from the start, so one sent as soon as we report being attached
    // still ends the run cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    // Before loading eBPF, so a refused file is reported at once, with or without root.
    let export = match &config.export {
        Some(target) => Some(ExportFile::open(&target.path, target.force)?),
        None => None,
    };
    let (probe, ring) = match Probe::load(&config.kernel) {
        Ok(loaded) => loaded,
        Err(e) => {
            if let Some(file) = export {
                file.discard();
            }
            return Err(e.into());
        }
    };
    let clock = WallClock::now();
    // The export takes every record; without one, records stdout does not show are not made.
    let everything = export.is_some();
    let mut engine = Engine::new(
        engine::Options {
            transitions: everything || config.engine.transitions,
            timelines: everything || config.engine.timelines,
            pids: HashSet::new(),
            ..config.engine.clone()
        },
        clock,
    );

    let start = monotonic_ns();
    if let Some(mut table) = scan_tables().await {
        table
            .entries
            .retain(|e| config.kernel.matches(&e.endpoints));
        engine.preexisting(&table, start);
    }

    let display = config.display();
    let header = |complete| export::header(config.run_options(), clock, start, complete);
    let exporting = match export {
        Some(file) => Some(spawn_export(file, header(true))?),
        None => None,
    };
    let mut outputs = Outputs {
        stdout: stdout_output(&config, display.clone())?,
        export: exporting,
    };
    outputs
        .stdout
        .send(&[Record::Header(header(display.is_everything()))]);
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
    // `AsyncFd` (and the ring buffer inside it) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
        .context("polling the ring buffer")?;

    // Sockets that entered CLOSE_WAIT while the tables were read are in the ring buffer:
    // replay them now so they are not mistaken for older ones.
    let mut batch: Vec<Record> = Vec::new();
    drain(ring.get_mut(), &mut engine, &mut batch, &mut outputs);
    eprintln!("tracer: attached to sock:inet_sock_set_state; Ctrl-C to stop");

    let mut tick = interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut digest = interval(config.report_interval);
    digest.set_missed_tick_behavior(MissedTickBehavior::Delay);
    digest.tick().await;
    let deadline = sleep(config.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);

    let mut reported_lost = (0u64, 0u64);
    let stop = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for the ring buffer")?;
                sleep(DRAIN_DELAY).await;
                drain(guard.get_inner_mut(), &mut engine, &mut batch, &mut outputs);
                guard.clear_ready();
            }
            _ = tick.tick() => {
                // A safety net: nothing stays in the ring longer than a tick.
                drain(ring.get_mut(), &mut engine, &mut batch, &mut outputs);
                let now = monotonic_ns();
                alert(&mut engine, now, &mut batch).await;
                let lost = (probe.lost(), probe.recursion_misses());
                if lost != reported_lost {
                    batch.push(Record::Lost(LostRecord {
                        ts_ns: now,
                        time: clock.rfc3339(now),
                        ringbuf: lost.0.saturating_sub(reported_lost.0),
                        recursion_misses: lost.1.saturating_sub(reported_lost.1),
                    }));
                    reported_lost = lost;
                }
            }
            _ = digest.tick() => {
                let now = monotonic_ns();
                if let Record::Digest(d) = engine.digest(now) {
                    if d.stuck > 0 {
                        batch.push(Record::Digest(d));
                    }
                }
            }
            _ = sigint.recv() => break Stop::Signal("SIGINT"),
            _ = sigterm.recv() => break Stop::Signal("SIGTERM"),
            _ = sighup.recv() => break Stop::Signal("SIGHUP"),
            () = &mut deadline => break Stop::Duration,
        }
        if let Some(stop) = outputs.send(&mut batch) {
            break stop;
        }
    };

    // What is still in the ring buffer was emitted before the stop: deliver it too.
    drain(ring.get_mut(), &mut engine, &mut batch, &mut outputs);
    let now = monotonic_ns();
    alert(&mut engine, now, &mut batch).await;
    outputs.format(&mut batch);
    let Outputs { stdout, export } = outputs;
    engine.output_stats(stdout.offered(), stdout.dropped());
    let mut summary = engine.finish(now, probe.lost(), probe.recursion_misses(), &mut batch);
    summary.export_dropped = export.as_ref().map_or(0, |(e, _)| e.dropped());
    batch.push(Record::Summary(summary.clone()));
    let exported = export.map(|(export, path)| (export.finish(&batch), path));
    let written = stdout.finish(&batch);
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

/// Where records go: stdout, and the export file when there is one.
struct Outputs {
    stdout: Output,
    export: Option<(Output, PathBuf)>,
}

impl Outputs {
    /// Formats the batch for every destination and empties it (keeping its capacity).
    fn format(&mut self, batch: &mut Vec<Record>) {
        if let Some((export, _)) = &mut self.export {
            export.format(batch);
        }
        self.stdout.format(batch);
        batch.clear();
    }

    /// Formats and ships the batch; says why to stop when a destination is gone.
    fn send(&mut self, batch: &mut Vec<Record>) -> Option<Stop> {
        if let Some((export, _)) = &mut self.export {
            if !export.send(batch) {
                return Some(Stop::ExportFailed);
            }
        }
        let open = self.stdout.send(batch);
        batch.clear();
        (!open).then_some(Stop::OutputClosed)
    }
}

/// Sends the header at once (so a file with a header means the probe is attached), on the
/// file's own output thread.
fn spawn_export(
    file: ExportFile,
    header: crate::record::Header,
) -> anyhow::Result<(Output, PathBuf)> {
    let path = file.path().to_owned();
    let context = || format!("writing the export {}", path.display());
    let file = file.into_file().with_context(context)?;
    let mut output = Output::spawn(
        |chunk| Box::new(JsonSink::new(chunk)),
        file,
        Filter::everything(),
    )
    .context("starting the export thread")?;
    if !output.send(&[Record::Header(header)]) {
        anyhow::bail!("{}: the export writer stopped", context());
    }
    Ok((output, path))
}

/// The stdout destination: text (coloured on a terminal unless `NO_COLOR`) or NDJSON.
fn stdout_output(config: &Config, filter: Filter) -> anyhow::Result<Output> {
    let (json, wide) = (config.json, config.wide);
    let color =
        std::io::IsTerminal::is_terminal(&io::stdout()) && std::env::var_os("NO_COLOR").is_none();
    Output::spawn(
        move |chunk| -> Box<dyn Sink> {
            if json {
                Box::new(JsonSink::new(chunk))
            } else {
                Box::new(TextSink::new(chunk, wide).with_color(color))
            }
        },
        io::stdout(),
        filter,
    )
    .context("starting the output thread")
}

fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    engine: &mut Engine,
    batch: &mut Vec<Record>,
    outputs: &mut Outputs,
) {
    while let Some(item) = ring.next() {
        if batch.len() >= DRAIN_SLICE {
            outputs.format(batch);
        }
        match decode(&item) {
            Ok(transition) => engine.transition(transition, batch),
            Err(e) => {
                log::debug!("skipping a ring buffer record: {e}");
                engine.decode_error();
            }
        }
    }
}

/// Emits CLOSE_WAIT alerts that are due, looking up owners in the socket tables only then.
async fn alert(engine: &mut Engine, now: u64, batch: &mut Vec<Record>) {
    let due = engine.due(now);
    if due.is_empty() {
        return;
    }
    let table = scan_tables().await;
    engine.alert(&due, table.as_ref(), now, batch);
}

/// The kernel's socket tables with their holders, read off the event loop's thread. A failed
/// read is logged and yields nothing: owners then stay unknown.
async fn scan_tables() -> Option<owner::SocketTable> {
    match tokio::task::spawn_blocking(owner::scan).await {
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
