//! Prometheus metrics for `--metrics ADDR`: the facts the JSON stream reports, as counters,
//! gauges and a histogram in the official `prometheus-client` registry. Every metric and label
//! is documented in `docs/metrics.md`.
//!
//! The event loop feeds [`Metrics`] through three narrow hooks and nothing else:
//! - [`Metrics::observe`]: every record the engine made (the same records the JSON stream
//!   carries), counted into plain integers without locks;
//! - [`Metrics::publish`]: on each tick, those counts and the run's totals ([`Totals`]) are
//!   copied into the registry;
//! - [`Metrics::processes`]: about once a second, the stuck sockets grouped by state and
//!   process (the `digest` record) and each holder's file descriptors ([`process::fd_usage`]).
//!
//! The HTTP side ([`server`]) only reads the registry.

pub mod process;
pub mod server;

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{atomic::AtomicU64, Arc},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::{Registry, Unit},
};

use crate::{
    cause::ResetBy,
    delivery::ByType,
    event::TcpState,
    record::{DigestProcess, DigestRecord, Record, SCHEMA},
    timeline::Outcome,
};

pub use process::FdUsage;
pub use server::{Exposition, Listener, MetricsError};

/// Label value for stuck sockets whose holder is not known.
pub const UNKNOWN: &str = "unknown";
/// Label value of the series that aggregates the processes beyond the cap, and of an
/// `error` that `errno.h` does not name.
pub const OTHER: &str = "other";
/// Label value of an `error` or `reset_by` the connection's end did not have.
pub const NONE: &str = "none";

/// Upper bounds of `tracer_close_wait_duration_seconds`: 1 ms to 1 day.
const CLOSE_WAIT_BUCKETS: [f64; 14] = [
    0.001, 0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0,
];

/// States by kernel number (1..=12); index 0 stands for every unknown number, so that a bad
/// record cannot mint new series.
const STATES: usize = 13;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    old_state: String,
    new_state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
    /// The errno name the application saw, [`NONE`] when it got none, [`OTHER`] for a
    /// number `errno.h` does not name (so that a bad record cannot mint new series).
    error: Cow<'static, str>,
    /// `local`, `peer`, or [`NONE`] when no RST was sent or received.
    reset_by: &'static str,
}

impl OutcomeLabels {
    /// The series a timeline with `outcome`, `error` and `reset_by` counts in.
    fn of(outcome: Outcome, error: Option<&str>, reset_by: Option<ResetBy>) -> Self {
        let error = match error {
            None => Cow::Borrowed(NONE),
            Some(name) if name.starts_with('E') && !name.contains(' ') => {
                Cow::Owned(name.to_owned())
            }
            Some(_) => Cow::Borrowed(OTHER),
        };
        OutcomeLabels {
            outcome: outcome.name(),
            error,
            reset_by: match reset_by {
                None => NONE,
                Some(ResetBy::Local) => "local",
                Some(ResetBy::Peer) => "peer",
            },
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabels {
    destination: &'static str,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// A holder of stuck sockets: `pid`/`comm`, [`UNKNOWN`] while not known, [`OTHER`] for the
/// processes beyond the cap; `container` is its container id, empty outside a container (an
/// empty label is an absent one to Prometheus).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProcessLabels {
    /// Process id in decimal, `unknown` or `other`.
    pub pid: String,
    /// Process name, `unknown` or `other`.
    pub comm: String,
    /// Container id; empty outside a container.
    pub container: String,
}

/// Stuck sockets of one holder in one state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StuckLabels {
    /// The kernel's state name: `CLOSE_WAIT`, or another state `--stuck` watches.
    pub state: String,
    /// Process id in decimal, `unknown` or `other`.
    pub pid: String,
    /// Process name, `unknown` or `other`.
    pub comm: String,
    /// Container id; empty outside a container.
    pub container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    kernel: String,
    schema: String,
}

/// Run-wide totals, read by the event loop on each tick (the summary's counters so far).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// Records received from the kernel.
    pub events: u64,
    /// Records lost because the ring buffer was full.
    pub lost_ringbuf: u64,
    /// Runs of the program the kernel skipped.
    pub recursion_misses: u64,
    /// Records that could not be decoded.
    pub decode_errors: u64,
    /// Sockets dropped from tracking at `--max-sockets`.
    pub evicted: u64,
    /// Records stdout could not take, by type.
    pub stdout_dropped: ByType,
    /// Records the export file could not take, by type; `None` without `--export`.
    pub export_dropped: Option<ByType>,
}

/// The tracer's metrics and the registry that serves them.
pub struct Metrics {
    exposition: Arc<Exposition>,
    /// The endpoint's thread, once [`Metrics::serve`] started it; stopped when this is dropped.
    server: Option<server::Serving>,
    max_processes: usize,
    // Counted by `observe`, lock-free, until the next `publish`.
    pending_transitions: [[u64; STATES]; STATES],
    pending_outcomes: HashMap<OutcomeLabels, u64>,
    pending_reports: [u64; STATES],
    published: Totals,
    m: Handles,
}

/// The handles of the registered metrics (each shares its values with the registry).
struct Handles {
    transitions: Family<TransitionLabels, Counter>,
    ended: Family<OutcomeLabels, Counter>,
    reports: Family<StateLabels, Counter>,
    close_wait_duration: Histogram,
    stuck: Family<StuckLabels, Gauge>,
    oldest_age: Family<StuckLabels, Gauge<f64, AtomicU64>>,
    open_fds: Family<ProcessLabels, Gauge>,
    max_fds: Family<ProcessLabels, Gauge>,
    aggregated: Gauge,
    events: Counter,
    lost: Family<ReasonLabels, Counter>,
    evicted: Counter,
    dropped: Family<DestinationLabels, Counter>,
    cpu: Counter<f64, AtomicU64>,
    rss: Gauge,
}

impl Metrics {
    /// Registers every metric. `kernel` is the kernel release (`uname -r`) for
    /// `tracer_build_info`; `max_processes` is the per-process series cap.
    pub fn new(kernel: &str, max_processes: usize) -> Self {
        let mut registry = Registry::default();
        let m = Handles {
            transitions: Family::default(),
            ended: Family::default(),
            reports: Family::default(),
            close_wait_duration: Histogram::new(CLOSE_WAIT_BUCKETS),
            stuck: Family::default(),
            oldest_age: Family::default(),
            open_fds: Family::default(),
            max_fds: Family::default(),
            aggregated: Gauge::default(),
            events: Counter::default(),
            lost: Family::default(),
            evicted: Counter::default(),
            dropped: Family::default(),
            cpu: Counter::default(),
            rss: Gauge::default(),
        };
        registry.register(
            "tracer_transitions",
            "TCP state transitions seen, by old and new kernel state",
            m.transitions.clone(),
        );
        registry.register(
            "tracer_connections_ended",
            "Connections whose timeline ended, by outcome, the errno the application saw and who sent the RST",
            m.ended.clone(),
        );
        registry.register(
            "tracer_stuck_reports",
            "Sockets reported for staying in a watched state too long (CLOSE_WAIT longer than \
             --close-wait-threshold, or a --stuck state), by state",
            m.reports.clone(),
        );
        registry.register_with_unit(
            "tracer_close_wait_duration",
            "Time sockets seen entering CLOSE_WAIT spent there before leaving it",
            Unit::Seconds,
            m.close_wait_duration.clone(),
        );
        registry.register(
            "tracer_stuck_sockets",
            "Sockets stuck now (reported and still in their state), by state and holding process",
            m.stuck.clone(),
        );
        registry.register_with_unit(
            "tracer_stuck_oldest_age",
            "Age of the holding process's oldest socket stuck in that state",
            Unit::Seconds,
            m.oldest_age.clone(),
        );
        registry.register(
            "tracer_process_open_fds",
            "Open file descriptors of a process holding stuck sockets",
            m.open_fds.clone(),
        );
        registry.register(
            "tracer_process_max_fds",
            "Soft limit on open file descriptors (RLIMIT_NOFILE) of a process holding stuck sockets",
            m.max_fds.clone(),
        );
        registry.register(
            "tracer_stuck_processes_aggregated",
            "Processes holding stuck sockets beyond --metrics-max-processes, aggregated into pid=\"other\"",
            m.aggregated.clone(),
        );
        registry.register(
            "tracer_events",
            "Records received from the kernel's ring buffer",
            m.events.clone(),
        );
        registry.register(
            "tracer_events_lost",
            "Events lost, by reason: ringbuf_full, recursion_miss, undecodable",
            m.lost.clone(),
        );
        registry.register(
            "tracer_sockets_evicted",
            "Sockets dropped from tracking at the --max-sockets cap",
            m.evicted.clone(),
        );
        registry.register(
            "tracer_records_dropped",
            "Output records a stalled destination could not take, by destination and record type",
            m.dropped.clone(),
        );
        registry.register_with_unit(
            "process_cpu",
            "Total user and system CPU time of the tracer process",
            Unit::Seconds,
            m.cpu.clone(),
        );
        registry.register_with_unit(
            "process_resident_memory",
            "Resident set size of the tracer process",
            Unit::Bytes,
            m.rss.clone(),
        );
        registry.register(
            "tracer_build",
            "The tracer's version, the kernel it runs on, and its JSON schema version",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                kernel: kernel.to_owned(),
                schema: SCHEMA.to_string(),
            }),
        );
        // Series that exist from the start, at zero, so rates and alerts see them.
        for outcome in Outcome::ALL {
            m.ended
                .get_or_create_owned(&OutcomeLabels::of(outcome, None, None));
        }
        for reason in LOSS_REASONS {
            m.lost.get_or_create_owned(&ReasonLabels { reason });
        }
        for kind in ByType::KINDS {
            m.dropped.get_or_create_owned(&DestinationLabels {
                destination: "stdout",
                r#type: kind.name(),
            });
        }
        m.reports.get_or_create_owned(&StateLabels {
            state: TcpState::CloseWait.name().into_owned(),
        });
        let (cpu, rss) = (m.cpu.clone(), m.rss.clone());
        let refresh = move || {
            if let Some((cpu_seconds, rss_bytes)) = process::own_usage() {
                let before = cpu.get();
                if cpu_seconds > before {
                    cpu.inc_by(cpu_seconds - before);
                }
                rss.set(saturate(rss_bytes));
            }
        };
        Self {
            exposition: Arc::new(Exposition::new(registry, Box::new(refresh))),
            server: None,
            max_processes,
            pending_transitions: [[0; STATES]; STATES],
            pending_outcomes: HashMap::new(),
            pending_reports: [0; STATES],
            published: Totals::default(),
            m,
        }
    }

    /// What the HTTP server serves (the registry) and the loop's heartbeat.
    pub fn exposition(&self) -> Arc<Exposition> {
        Arc::clone(&self.exposition)
    }

    /// Serves these metrics on `listener`, from a thread of its own, until `self` is dropped.
    ///
    /// # Errors
    /// As [`Listener::serve`].
    pub fn serve(&mut self, listener: Listener) -> std::io::Result<()> {
        self.server = Some(listener.serve(self.exposition())?);
        Ok(())
    }

    /// Counts what a batch of records tells. Called with every record the engine made, before
    /// the outputs filter them.
    pub fn observe(&mut self, batch: &[Record]) {
        for record in batch {
            match record {
                Record::Transition(t) => {
                    self.pending_transitions[state_index(t.old_state)][state_index(t.new_state)] +=
                        1;
                    if t.old_state == TcpState::CloseWait {
                        if let Some(ns) = t.duration_ns {
                            #[expect(
                                clippy::cast_precision_loss,
                                reason = "seconds for a histogram: 2^53 ns is 104 days"
                            )]
                            self.m.close_wait_duration.observe(ns as f64 / 1e9);
                        }
                    }
                }
                Record::Timeline(t) => {
                    let labels = OutcomeLabels::of(t.outcome, t.error.as_deref(), t.reset_by);
                    *self.pending_outcomes.entry(labels).or_default() += 1;
                }
                Record::CloseWait(r) | Record::Stuck(r) => {
                    self.pending_reports[state_index(r.state)] += 1;
                }
                _ => {}
            }
        }
    }

    /// Copies the counts gathered since the last call, and the run's totals, into the registry.
    pub fn publish(&mut self, totals: &Totals) {
        for (old, row) in self.pending_transitions.iter_mut().enumerate() {
            for (new, count) in row.iter_mut().enumerate() {
                if *count > 0 {
                    self.m
                        .transitions
                        .get_or_create(&TransitionLabels {
                            old_state: state_name(old),
                            new_state: state_name(new),
                        })
                        .inc_by(std::mem::take(count));
                }
            }
        }
        for (labels, count) in self.pending_outcomes.drain() {
            self.m.ended.get_or_create(&labels).inc_by(count);
        }
        for (state, count) in self.pending_reports.iter_mut().enumerate() {
            if *count > 0 {
                self.m
                    .reports
                    .get_or_create(&StateLabels {
                        state: state_name(state),
                    })
                    .inc_by(std::mem::take(count));
            }
        }
        let was = self.published;
        self.m
            .events
            .inc_by(totals.events.saturating_sub(was.events));
        for (reason, now, before) in [
            (LOSS_REASONS[0], totals.lost_ringbuf, was.lost_ringbuf),
            (
                LOSS_REASONS[1],
                totals.recursion_misses,
                was.recursion_misses,
            ),
            (LOSS_REASONS[2], totals.decode_errors, was.decode_errors),
        ] {
            self.m
                .lost
                .get_or_create(&ReasonLabels { reason })
                .inc_by(now.saturating_sub(before));
        }
        self.m
            .evicted
            .inc_by(totals.evicted.saturating_sub(was.evicted));
        let destinations = [
            (
                "stdout",
                Some(&totals.stdout_dropped),
                Some(&was.stdout_dropped),
            ),
            (
                "export",
                totals.export_dropped.as_ref(),
                was.export_dropped.as_ref(),
            ),
        ];
        for (destination, now, before) in destinations {
            let Some(now) = now else { continue };
            for kind in ByType::KINDS {
                let new = now
                    .get(kind)
                    .saturating_sub(before.map_or(0, |b| b.get(kind)));
                // The export's series appear with --export; each from zero.
                let series = self.m.dropped.get_or_create(&DestinationLabels {
                    destination,
                    r#type: kind.name(),
                });
                series.inc_by(new);
            }
        }
        self.published = *totals;
        self.exposition.heartbeat(crate::units::monotonic_ns());
    }

    /// The processes of `digest` that get series of their own: at most
    /// `--metrics-max-processes`, those with the most stuck sockets (then the oldest) first.
    /// Their fd usage is what [`Metrics::processes`] wants.
    pub fn tracked_pids(&self, digest: &DigestRecord) -> Vec<u32> {
        self.rank(digest).0
    }

    /// Splits the digest's processes (in every stuck state) into the pids that get series of
    /// their own, most stuck sockets first, and the entries beyond the cap.
    fn rank<'a>(&self, digest: &'a DigestRecord) -> (Vec<u32>, Vec<&'a DigestProcess>) {
        let mut sizes: HashMap<Option<u32>, (usize, u64)> = HashMap::new();
        for p in &digest.processes {
            let size = sizes.entry(p.pid).or_default();
            size.0 += p.count;
            size.1 = size.1.max(p.oldest_age_ms);
        }
        let mut by_size: Vec<(Option<u32>, (usize, u64))> = sizes.into_iter().collect();
        by_size.sort_by(|(pa, a), (pb, b)| (b.0, b.1, pa).cmp(&(a.0, a.1, pb)));
        by_size.truncate(self.max_processes);
        let own: Vec<Option<u32>> = by_size.into_iter().map(|(pid, _)| pid).collect();
        let rest = digest
            .processes
            .iter()
            .filter(|p| !own.contains(&p.pid))
            .collect();
        (own.into_iter().flatten().collect(), rest)
    }

    /// Replaces the per-process series with the processes of `digest` (stuck sockets grouped
    /// by state and holder), the [`Metrics::tracked_pids`] ones (and the unknown holder) with
    /// series of their own and the rest summed per state into `pid="other"` series, the
    /// processes aggregated counted in `tracer_stuck_processes_aggregated`. A process that
    /// no longer holds stuck sockets loses its series. `fds` gives holders' descriptors
    /// ([`process::fd_usage`]).
    pub fn processes(&self, digest: &DigestRecord, fds: &HashMap<u32, FdUsage>) {
        self.m.stuck.clear();
        self.m.oldest_age.clear();
        self.m.open_fds.clear();
        self.m.max_fds.clear();
        let (_, rest) = self.rank(digest);
        let is_rest = |p: &DigestProcess| rest.iter().any(|r| std::ptr::eq(*r, p));
        for p in digest.processes.iter().filter(|p| !is_rest(p)) {
            let holder = ProcessLabels {
                pid: p
                    .pid
                    .map_or_else(|| UNKNOWN.to_owned(), |pid| pid.to_string()),
                comm: p
                    .comm
                    .as_ref()
                    .map_or_else(|| UNKNOWN.to_owned(), std::string::ToString::to_string),
                container: p.container.clone().unwrap_or_default(),
            };
            self.set_stuck(p.state, &holder, p.count, p.oldest_age_ms);
            if let Some(usage) = p.pid.and_then(|pid| fds.get(&pid)) {
                self.m
                    .open_fds
                    .get_or_create(&holder)
                    .set(saturate(usage.open));
                if let Some(limit) = usage.limit {
                    self.m.max_fds.get_or_create(&holder).set(saturate(limit));
                }
            }
        }
        let mut other: HashMap<TcpState, (usize, u64)> = HashMap::new();
        for p in &rest {
            let sum = other.entry(p.state).or_default();
            sum.0 += p.count;
            sum.1 = sum.1.max(p.oldest_age_ms);
        }
        let holder = ProcessLabels {
            pid: OTHER.to_owned(),
            comm: OTHER.to_owned(),
            container: String::new(),
        };
        for (state, (count, oldest)) in other {
            self.set_stuck(state, &holder, count, oldest);
        }
        let mut aggregated: Vec<Option<u32>> = rest.iter().map(|p| p.pid).collect();
        aggregated.sort_unstable();
        aggregated.dedup();
        self.m.aggregated.set(saturate(aggregated.len() as u64));
    }

    fn set_stuck(&self, state: TcpState, holder: &ProcessLabels, count: usize, oldest_ms: u64) {
        let labels = StuckLabels {
            state: state.name().into_owned(),
            pid: holder.pid.clone(),
            comm: holder.comm.clone(),
            container: holder.container.clone(),
        };
        self.m
            .stuck
            .get_or_create(&labels)
            .set(saturate(count as u64));
        #[expect(
            clippy::cast_precision_loss,
            reason = "an age in seconds, exact to the ms for 285,000 years"
        )]
        self.m
            .oldest_age
            .get_or_create(&labels)
            .set(oldest_ms as f64 / 1000.0);
    }
}

/// Every metric name a scrape can show (histograms with their `_bucket`, `_sum` and `_count`
/// series), sorted: what dashboards and alert rules may query.
pub fn exported_names() -> Vec<String> {
    // Families show only once they have a series: give each one.
    let mut metrics = Metrics::new("", 1);
    metrics.pending_transitions[1][1] = 1;
    metrics.publish(&Totals::default());
    let holder = DigestProcess {
        state: TcpState::CloseWait,
        pid: Some(1),
        comm: None,
        container: None,
        count: 1,
        oldest_age_ms: 0,
        diagnosis: None,
    };
    let digest = DigestRecord {
        ts_ns: 0,
        time: crate::units::WallTime::default(),
        stuck: 1,
        processes: vec![holder],
    };
    let fds = FdUsage {
        open: 1,
        limit: Some(1),
    };
    metrics.processes(&digest, &HashMap::from([(1, fds)]));
    let text = metrics.exposition().encode(server::Format::Text);
    let mut names = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let Some((name, kind)) = rest.split_once(' ') else {
            continue;
        };
        if kind == "histogram" {
            names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
        } else {
            names.push(name.to_owned());
        }
    }
    names.sort();
    names
}

/// Label values of `tracer_events_lost_total{reason}`.
pub const LOSS_REASONS: [&str; 3] = ["ringbuf_full", "recursion_miss", "undecodable"];

fn saturate(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn state_index(state: TcpState) -> usize {
    match state.known_name() {
        Some(_) => state.number() as usize,
        None => 0,
    }
}

fn state_name(index: usize) -> String {
    match index {
        #[expect(clippy::cast_possible_truncation, reason = "index < 13")]
        1..STATES => TcpState::from(index as u32).name().into_owned(),
        _ => "UNKNOWN".to_owned(),
    }
}

#[cfg(test)]
mod tests;
