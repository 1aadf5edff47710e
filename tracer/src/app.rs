//! The event loop: drain the ring buffer, feed the engine, tick the CLOSE_WAIT detector, and
//! stop on a signal, `--duration`, or a closed stdout.

use std::{io, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    time::{interval, sleep, MissedTickBehavior},
};

use crate::{
    cli::Config,
    decode::decode,
    engine::Engine,
    output::{is_broken_pipe, Output},
    owner,
    probe::Probe,
    record::{LostRecord, Record},
    sink::{self, JsonSink, Sink, TextSink},
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

/// Why the loop stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    Signal(&'static str),
    Duration,
    /// stdout was closed by its reader.
    OutputClosed,
}

/// Runs the tracer until a stop condition; prints the summary on stderr.
pub async fn run(config: Config) -> anyhow::Result<Stop> {
    let (probe, ring) = Probe::load(&config.kernel)?;
    let clock = WallClock::now();
    let mut engine = Engine::new(config.engine.clone(), clock);

    let start = monotonic_ns();
    match tokio::task::spawn_blocking(owner::scan).await {
        Ok(Ok(table)) => engine.preexisting(&table, start),
        Ok(Err(e)) => log::warn!("could not read the socket tables at start: {e}"),
        Err(e) => log::warn!("socket table scan failed: {e}"),
    }

    let (json, wide) = (config.json, config.wide);
    let mut output = Output::spawn(
        move |chunk| -> Box<dyn Sink> {
            if json {
                Box::new(JsonSink::new(chunk))
            } else {
                Box::new(TextSink::new(chunk, wide))
            }
        },
        io::stdout(),
    )
    .context("starting the output thread")?;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
    // `AsyncFd` (and the ring buffer inside it) is dropped.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(io::Error::from)
        .context("polling the ring buffer")?;

    let mut tick = interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut digest = interval(config.report_interval);
    digest.set_missed_tick_behavior(MissedTickBehavior::Delay);
    digest.tick().await;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let deadline = sleep(config.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);

    let mut reported_lost = (0u64, 0u64);
    let mut batch: Vec<Record> = Vec::new();
    let stop = loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.context("waiting for the ring buffer")?;
                sleep(DRAIN_DELAY).await;
                drain(guard.get_inner_mut(), &mut engine, &mut batch, &mut output);
                guard.clear_ready();
            }
            _ = tick.tick() => {
                // A safety net: nothing stays in the ring longer than a tick.
                drain(ring.get_mut(), &mut engine, &mut batch, &mut output);
                let now = monotonic_ns();
                alert(&mut engine, now, &mut batch).await;
                let lost = (probe.lost(), probe.recursion_misses());
                if lost != reported_lost {
                    batch.push(Record::Lost(LostRecord {
                        ts_ns: now,
                        time: clock.rfc3339(now),
                        ringbuf: lost.0 - reported_lost.0,
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
        if !batch.is_empty() && !output.send(&mut batch) {
            break Stop::OutputClosed;
        }
    };

    // What is still in the ring buffer was emitted before the stop: deliver it too.
    drain(ring.get_mut(), &mut engine, &mut batch, &mut output);
    let now = monotonic_ns();
    alert(&mut engine, now, &mut batch).await;
    engine.output_dropped(output.dropped());
    let summary = engine.finish(now, probe.lost(), probe.recursion_misses(), &mut batch);
    batch.push(Record::Summary(summary.clone()));
    let written = output.finish(batch);
    eprintln!("{}", sink::text::summary(&summary));
    match written {
        Err(e) if is_broken_pipe(&e) => Ok(Stop::OutputClosed),
        Err(e) => Err(e).context("writing the output"),
        Ok(()) => Ok(stop),
    }
}

/// Records formatted at a time while draining. Small, so that records are freed soon after
/// they are made (the allocator then reuses the same few blocks), and so that a ring buffer
/// full after a stall never becomes one huge batch.
const DRAIN_SLICE: usize = 32;

fn drain(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    engine: &mut Engine,
    batch: &mut Vec<Record>,
    output: &mut Output,
) {
    while let Some(item) = ring.next() {
        if batch.len() >= DRAIN_SLICE {
            output.format(batch);
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
