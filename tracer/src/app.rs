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
    output::{is_broken_pipe, Batch, Output},
    owner,
    probe::Probe,
    record::{LostRecord, Record},
    sink::{self, Filter, JsonSink, Sink, TextSink},
    units::{monotonic_ns, WallClock},
};

/// How often the CLOSE_WAIT detector and the loss counters are checked.
const TICK: Duration = Duration::from_millis(100);

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
    let mut engine = Engine::new(
        engine::Options {
            transitions: true,
            timelines: true,
            pids: HashSet::new(),
            ..config.engine.clone()
        },
        clock,
    );

    let start = monotonic_ns();
    match tokio::task::spawn_blocking(owner::scan).await {
        Ok(Ok(mut table)) => {
            table
                .entries
                .retain(|e| config.kernel.matches(&e.endpoints));
            engine.preexisting(&table, start);
        }
        Ok(Err(e)) => log::warn!("could not read the socket tables at start: {e}"),
        Err(e) => log::warn!("socket table scan failed: {e}"),
    }

    let display = config.display();
    let header = |complete| export::header(config.run_options(), clock, start, complete);
    let mut exporting = match export {
        Some(file) => Some(spawn_export(file, header(true))?),
        None => None,
    };
    let mut output = Output::spawn(stdout_sink(&config), display.clone())
        .context("starting the output thread")?;
    output.send(vec![Record::Header(header(display.is_everything()))]);
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
    // `AsyncFd` (and the ring buffer inside it) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
        .context("polling the ring buffer")?;

    // Sockets that entered CLOSE_WAIT while the tables were read are in the ring buffer:
    // replay them now so they are not mistaken for older ones.
    let mut batch: Vec<Record> = Vec::new();
    drain(ring.get_mut(), &mut engine, &mut batch);
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
                drain(guard.get_inner_mut(), &mut engine, &mut batch);
                guard.clear_ready();
            }
            _ = tick.tick() => {
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
        if !batch.is_empty() {
            let shared: Batch = std::mem::take(&mut batch).into();
            if let Some((export, _)) = &mut exporting {
                if !export.send(shared.clone()) {
                    break Stop::ExportFailed;
                }
            }
            if !output.send(shared) {
                break Stop::OutputClosed;
            }
        }
    };

    // What is still in the ring buffer was emitted before the stop: deliver it too.
    drain(ring.get_mut(), &mut engine, &mut batch);
    let now = monotonic_ns();
    alert(&mut engine, now, &mut batch).await;
    engine.output_stats(output.offered(), output.dropped());
    let mut summary = engine.finish(now, probe.lost(), probe.recursion_misses(), &mut batch);
    summary.export_dropped = exporting.as_ref().map_or(0, |(e, _)| e.dropped());
    batch.push(Record::Summary(summary.clone()));
    let last: Batch = batch.into();
    let exported = exporting.map(|(export, path)| (export.finish(last.clone()), path));
    let written = output.finish(last);
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

/// Writes the header at once (so a file with a header means the probe is attached), then hands
/// the file to its own output thread.
fn spawn_export(
    file: ExportFile,
    header: crate::record::Header,
) -> anyhow::Result<(Output, PathBuf)> {
    let path = file.path().to_owned();
    let context = || format!("writing the export {}", path.display());
    let file = file.into_file().with_context(context)?;
    let mut sink = JsonSink::new(io::BufWriter::with_capacity(64 * 1024, file));
    sink.write(&Record::Header(header))
        .and_then(|()| sink.flush())
        .with_context(context)?;
    let output = Output::spawn(Box::new(sink), Filter::everything())
        .context("starting the export thread")?;
    Ok((output, path))
}

fn stdout_sink(config: &Config) -> Box<dyn Sink + Send> {
    let stdout = io::BufWriter::with_capacity(64 * 1024, io::stdout());
    if config.json {
        Box::new(JsonSink::new(stdout))
    } else {
        let color = std::io::IsTerminal::is_terminal(&io::stdout())
            && std::env::var_os("NO_COLOR").is_none();
        Box::new(TextSink::new(stdout, config.wide).with_color(color))
    }
}

fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    engine: &mut Engine,
    batch: &mut Vec<Record>,
) {
    while let Some(item) = ring.next() {
        match decode(&item) {
            Ok(transition) => engine.transition(&transition, batch),
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
    let table = match tokio::task::spawn_blocking(owner::scan).await {
        Ok(Ok(table)) => Some(table),
        Ok(Err(e)) => {
            log::warn!("could not read the socket tables: {e}");
            None
        }
        Err(e) => {
            log::warn!("socket table scan failed: {e}");
            None
        }
    };
    engine.alert(&due, table.as_ref(), now, batch);
}
