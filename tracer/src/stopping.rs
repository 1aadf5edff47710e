//! Stopping a run: the signals that end it, and the wait for the writers at its end, which a
//! second stop signal cuts short for stdout (a slow reader of stdout otherwise holds the exit
//! for as long as it takes to read what is queued).

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    time::sleep,
};

use crate::{app::Stop, output::Output};

/// How often the wait for the writers checks whether they are done.
const POLL: Duration = Duration::from_millis(50);

/// How long stdout may take to write what is queued at a stop before the tracer says it is
/// waiting for a slow reader (a normal stop writes its last records well within it).
const GRACE: Duration = Duration::from_millis(500);

/// The signals that end a run: SIGINT (Ctrl-C), SIGTERM and SIGHUP.
pub(crate) struct Signals {
    sigint: Signal,
    sigterm: Signal,
    sighup: Signal,
}

impl Signals {
    /// Installs the handlers. From then on these signals no longer kill the process.
    pub(crate) fn install() -> anyhow::Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            sigterm: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            sighup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
        })
    }

    /// Waits for the next stop signal and returns its name. A signal that came while nobody
    /// waited is returned at once.
    pub(crate) async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.sigint.recv() => "SIGINT",
            _ = self.sigterm.recv() => "SIGTERM",
            _ = self.sighup.recv() => "SIGHUP",
        }
    }
}

/// Waits until the export's writer is done, after it was closed: the export is always written
/// to its end. When it still writes after [`GRACE`] (a slow disk), says so once on stderr. A
/// stop signal meanwhile is answered on stderr and changes nothing: stdout's last records and
/// summary follow the export, and only a signal during [`wait_for_writers`] drops them.
pub(crate) async fn wait_for_export(export: &Output, path: &Path, signals: &mut Signals) {
    let started = Instant::now();
    let mut told = false;
    while !export.is_done() {
        if !told && started.elapsed() >= GRACE {
            told = true;
            eprintln!(
                "tracer: writing {} queued records to the export {}",
                export.queued(),
                path.display()
            );
        }
        tokio::select! {
            () = sleep(POLL) => {}
            name = signals.next() => {
                eprintln!(
                    "tracer: {name}: the export {} is written to its end first",
                    path.display()
                );
            }
        }
    }
}

/// Waits until stdout's writer is done, after it was closed. When a signal stopped the run and
/// stdout is still writing queued records after [`GRACE`] (a slow reader: a normal stop drains
/// them at once), says so once on stderr. A stop signal during the wait (or during
/// [`wait_for_export`]) drops what stdout still holds, each record counted as dropped by type.
pub(crate) async fn wait_for_writers(stdout: &Output, signals: &mut Signals, stop: Stop) {
    let started = Instant::now();
    let mut told = !matches!(stop, Stop::Signal(_));
    let mut dropping = false;
    loop {
        if stdout.is_done() {
            return;
        }
        if !told && started.elapsed() >= GRACE {
            told = true;
            let queued = stdout.queued();
            if queued > 0 && !stdout.is_done() {
                eprintln!(
                    "tracer: writing {queued} queued records to stdout; Ctrl-C again to drop them"
                );
            }
        }
        if dropping {
            // Again: a write that had just started when the first request came is
            // interrupted now.
            stdout.drop_queued();
        }
        tokio::select! {
            () = sleep(POLL) => {}
            name = signals.next(), if !dropping => {
                dropping = true;
                let queued = stdout.queued();
                stdout.drop_queued();
                if queued > 0 {
                    eprintln!(
                        "tracer: {name}: dropping up to {queued} records still queued for stdout\
                         ; the summary counts those dropped"
                    );
                }
            }
        }
    }
}
