//! What the report needs beyond the [`AnalysisRecord`]: gathered as `tracer analyze` reads its
//! input and rebuilds timelines, in memory bounded by the number of distinct edges, processes
//! and CLOSE_WAIT visits (24 bytes each, at most [`MAX_INTERVALS`]), never by the transitions.

use std::{
    collections::{BTreeMap, HashMap},
    io,
};

use crate::{
    event::{Name, TcpState},
    record::{DigestRecord, Header, LostRecord, Record, Summary, TimelineRecord},
    sink::Sink,
    timeline::Outcome,
};

/// Dwell times kept exactly per edge; beyond this, a uniform sample of this many (and the
/// report says its percentiles are estimates).
pub const EDGE_SAMPLE: usize = 100_000;
/// CLOSE_WAIT visits kept for the pile-up chart; the rest are counted and the report says so.
pub const MAX_INTERVALS: usize = 2_000_000;
/// `lost` records kept (the rest are counted).
pub const MAX_LOST: usize = 1_000;
/// Connections kept per reason for the Gantt chart.
pub const GANTT_PER_REASON: usize = 8;
/// Decade buckets of the dwell-time table: `< 1µs`, `1-10µs`, ... `>= 100s`.
pub const DWELL_BUCKETS: usize = 10;

/// Time spent in a state before leaving it by one edge.
#[derive(Clone, Debug, Default)]
pub struct Edge {
    pub count: u64,
    /// Dwell times, exact or a uniform sample once `count` passes [`EDGE_SAMPLE`].
    pub dwell: Vec<u64>,
    /// Edges taken whose dwell time is known (`dwell` samples these).
    pub timed: u64,
}

impl Edge {
    pub fn sampled(&self) -> bool {
        self.timed > self.dwell.len() as u64
    }
}

/// One stay in CLOSE_WAIT: kernel ns; `end` is `None` while still there at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub start: u64,
    pub end: Option<u64>,
    pub process: u32,
}

/// A watched state other than CLOSE_WAIT: its stays and when sockets were reported stuck in it.
#[derive(Debug, Default)]
pub struct Pile {
    /// The `--stuck` threshold, ns.
    pub threshold_ns: u64,
    pub intervals: Vec<Interval>,
    /// Stays left out past [`MAX_INTERVALS`].
    pub dropped: u64,
    /// Each `stuck` report of the state: when, and its holder (index in `processes`).
    pub reports: Vec<(u64, u32)>,
}

/// Why a connection is in the Gantt chart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// Longest in CLOSE_WAIT.
    CloseWait,
    /// Ended badly (reset, failed handshake or connect, any other abnormal outcome).
    EndedBadly,
    /// Longest-lived.
    LongestLived,
}

impl Reason {
    pub const ALL: [Reason; 3] = [Reason::CloseWait, Reason::EndedBadly, Reason::LongestLived];

    pub fn words(self) -> &'static str {
        match self {
            Reason::CloseWait => "longest in CLOSE_WAIT",
            Reason::EndedBadly => "ended badly",
            Reason::LongestLived => "longest-lived",
        }
    }
}

/// The `GANTT_PER_REASON` timelines with the largest key.
#[derive(Debug, Default)]
pub struct Top {
    pub kept: Vec<(u64, TimelineRecord)>,
    pub seen: u64,
}

impl Top {
    fn offer(&mut self, key: u64, t: &TimelineRecord) {
        self.seen += 1;
        if self.kept.len() >= GANTT_PER_REASON
            && self.kept.last().is_some_and(|(min, _)| *min >= key)
        {
            return;
        }
        let at = self.kept.partition_point(|(k, _)| *k >= key);
        self.kept.insert(at, (key, t.clone()));
        self.kept.truncate(GANTT_PER_REASON);
    }
}

/// Gathers the report's data. As a [`Sink`] it sees every rebuilt timeline (the analysis is
/// run with timelines on) and passes on to `inner` only what the user asked to print.
pub struct Collector<S> {
    inner: S,
    /// Print the rebuilt timelines on stdout (`--timelines`).
    print_timelines: bool,
    /// The input's header; `None` without one.
    pub header: Option<Header>,
    /// The input's summary; `None` when it does not end with one.
    pub summary: Option<Summary>,
    /// Kernel time of the first and last record read.
    pub first_ns: Option<u64>,
    /// Kernel monotonic ns of the last record read (0 before any).
    pub last_ns: u64,
    /// `transition` records read.
    pub transitions: u64,
    /// Timelines rebuilt by the analysis (each seen by this sink).
    pub timelines: u64,
    /// The input's `lost` records, the first `MAX_LOST` (1,000) of them.
    pub lost: Vec<LostRecord>,
    /// Every `lost` record read, kept or not.
    pub lost_records: u64,
    /// `digest` records read.
    pub digests: u64,
    /// The last `digest` record read.
    pub last_digest: Option<DigestRecord>,
    /// The `digest` record with the most stuck sockets (the first of equals).
    pub peak_digest: Option<DigestRecord>,
    /// State changes by (from, to) edge, from the rebuilt timelines.
    pub edges: BTreeMap<(TcpState, TcpState), Edge>,
    /// Steps of known duration per state, counted in `DWELL_BUCKETS` (10) decade buckets of their duration.
    pub dwell: BTreeMap<TcpState, [u64; DWELL_BUCKETS]>,
    /// Owners, in order of first appearance; `Interval::process` indexes it.
    pub processes: Vec<(Option<u32>, Option<Name>)>,
    process_index: HashMap<(Option<u32>, Option<Name>), u32>,
    /// Stays in CLOSE_WAIT from the rebuilt timelines, the first `MAX_INTERVALS` (2,000,000) of them.
    pub intervals: Vec<Interval>,
    /// Stays in CLOSE_WAIT left out past `MAX_INTERVALS` (2,000,000).
    pub intervals_dropped: u64,
    /// Stays in the other states the run watched (`--stuck`), for their own pile-up charts.
    pub piles: BTreeMap<TcpState, Pile>,
    /// Connections kept for the Gantt chart, at most `GANTT_PER_REASON` (8) per reason.
    pub gantt: BTreeMap<Reason, Top>,
    /// Ended connections whose end has a known cause, by outcome name and cause
    /// (`ECONNRESET, RST from the peer`): from the timelines' `error` and `reset_by`.
    pub causes: BTreeMap<(&'static str, String), u64>,
    /// The latest diagnosis of each holding process, from the export's reports and digests.
    pub diagnoses: BTreeMap<u32, crate::diagnosis::Diagnosis>,
    /// The container of each holding process that runs in one (the reports' and digests'
    /// `container`: a runtime's container id or a pod UID).
    pub containers: BTreeMap<u32, String>,
    rng: u64,
}

impl<S: Sink> Collector<S> {
    /// Wraps `inner`, which receives what `tracer analyze` prints; `print_timelines` passes the rebuilt timelines on too (`--timelines`).
    pub fn new(inner: S, print_timelines: bool) -> Self {
        Self {
            inner,
            print_timelines,
            header: None,
            summary: None,
            first_ns: None,
            last_ns: 0,
            transitions: 0,
            timelines: 0,
            lost: Vec::new(),
            lost_records: 0,
            digests: 0,
            last_digest: None,
            peak_digest: None,
            edges: BTreeMap::new(),
            dwell: BTreeMap::new(),
            processes: Vec::new(),
            process_index: HashMap::new(),
            intervals: Vec::new(),
            intervals_dropped: 0,
            piles: BTreeMap::new(),
            gantt: BTreeMap::new(),
            causes: BTreeMap::new(),
            diagnoses: BTreeMap::new(),
            containers: BTreeMap::new(),
            rng: 0x9e37_79b9_7f4a_7c15,
        }
    }

    /// The wrapped sink.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Index of an owner in [`Self::processes`].
    pub fn process(&mut self, pid: Option<u32>, comm: Option<&str>) -> u32 {
        let key = (pid, comm.map(Name::from));
        if let Some(&i) = self.process_index.get(&key) {
            return i;
        }
        let i = u32::try_from(self.processes.len()).unwrap_or(u32::MAX);
        self.processes.push(key.clone());
        self.process_index.insert(key, i);
        i
    }

    /// When the capture started: the header's start, else the first record.
    pub fn start_ns(&self) -> u64 {
        self.header
            .as_ref()
            .map(|h| h.monotonic_start_ns)
            .or(self.first_ns)
            .unwrap_or(0)
    }

    fn random(&mut self) -> u64 {
        // xorshift64: deterministic, so a report is the same every time it is built.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn edge(&mut self, from: TcpState, to: TcpState, dwell: Option<u64>) {
        let slot = self.random();
        let edge = self.edges.entry((from, to)).or_default();
        edge.count += 1;
        let Some(d) = dwell else { return };
        edge.timed += 1;
        if edge.dwell.len() < EDGE_SAMPLE {
            edge.dwell.push(d);
        } else {
            // Reservoir sampling: each of the `timed` values is kept with the same chance.
            let i = usize::try_from(slot % edge.timed).unwrap_or(usize::MAX);
            if let Some(kept) = edge.dwell.get_mut(i) {
                *kept = d;
            }
        }
    }

    fn timeline(&mut self, t: &TimelineRecord) {
        if let Some(cause) = cause(t.error.as_deref(), t.reset_by) {
            *self.causes.entry((t.outcome.name(), cause)).or_default() += 1;
        }
        self.timelines += 1;
        if t.from_birth {
            if let Some(first) = t.states.first() {
                let from = match first.state {
                    TcpState::SynRecv | TcpState::NewSynRecv => TcpState::Listen,
                    _ => TcpState::Close,
                };
                self.edge(from, first.state, None);
            }
        }
        for pair in t.states.windows(2) {
            // An orphan's FIN_WAIT2 continued in a timewait socket (inferred): no edge taken.
            if pair[1].inferred && pair[0].state == pair[1].state {
                continue;
            }
            self.edge(pair[0].state, pair[1].state, pair[0].duration_ns);
        }
        for step in &t.states {
            if let Some(d) = step.duration_ns {
                self.dwell.entry(step.state).or_default()[bucket(d)] += 1;
            }
        }
        self.close_wait(t);
        self.offer_gantt(t);
    }

    fn close_wait(&mut self, t: &TimelineRecord) {
        let stays = self.stays(t, TcpState::CloseWait);
        if !stays.is_empty() {
            let process = self.process(t.pid, t.comm.as_deref());
            for (start, end) in stays {
                if self.intervals.len() < MAX_INTERVALS {
                    self.intervals.push(Interval {
                        start,
                        end,
                        process,
                    });
                } else {
                    self.intervals_dropped += 1;
                }
            }
        }
        let watched: Vec<TcpState> = self.piles.keys().copied().collect();
        for state in watched {
            let stays = self.stays(t, state);
            if stays.is_empty() {
                continue;
            }
            let process = self.process(t.pid, t.comm.as_deref());
            let pile = self.piles.entry(state).or_default();
            for (start, end) in stays {
                if pile.intervals.len() < MAX_INTERVALS {
                    pile.intervals.push(Interval {
                        start,
                        end,
                        process,
                    });
                } else {
                    pile.dropped += 1;
                }
            }
        }
    }

    /// The stays of `t` in `state`: entered (or the capture's start), left (null: still there).
    fn stays(&self, t: &TimelineRecord, state: TcpState) -> Vec<(u64, Option<u64>)> {
        let start_ns = self.start_ns();
        let mut stays = Vec::new();
        for (i, step) in t.states.iter().enumerate() {
            if step.state != state {
                continue;
            }
            let next = t.states.get(i + 1).and_then(|s| s.enter_ns);
            let start = step.enter_ns.unwrap_or(start_ns);
            let end = match (step.enter_ns, step.duration_ns) {
                (Some(s), Some(d)) => Some(s.saturating_add(d)),
                _ => next,
            };
            stays.push((start, end));
        }
        stays
    }

    fn offer_gantt(&mut self, t: &TimelineRecord) {
        let listener = t.states.iter().all(|s| s.state == TcpState::Listen);
        if listener {
            return;
        }
        let start = t
            .states
            .iter()
            .find_map(|s| s.enter_ns)
            .unwrap_or(self.start_ns());
        let life = t.ts_ns.saturating_sub(start);
        let close_wait: u64 = t
            .states
            .iter()
            .filter(|s| s.state == TcpState::CloseWait)
            .map(|s| {
                s.duration_ns
                    .unwrap_or_else(|| t.ts_ns.saturating_sub(s.enter_ns.unwrap_or(start)))
            })
            .sum();
        if t.states.iter().any(|s| s.state == TcpState::CloseWait) {
            self.gantt
                .entry(Reason::CloseWait)
                .or_default()
                .offer(close_wait, t);
        }
        if ended_badly(t.outcome) {
            self.gantt
                .entry(Reason::EndedBadly)
                .or_default()
                .offer(life, t);
        }
        self.gantt
            .entry(Reason::LongestLived)
            .or_default()
            .offer(life, t);
    }

    fn read(&mut self, record: &Record) {
        let ts = match record {
            Record::Header(h) => {
                for o in &h.options.stuck {
                    if o.state != TcpState::CloseWait {
                        self.piles.entry(o.state).or_default().threshold_ns = o.threshold_ns;
                    }
                }
                self.header = Some(h.as_ref().clone());
                return;
            }
            Record::Transition(r) => {
                self.transitions += 1;
                r.ts_ns
            }
            Record::Lost(r) => {
                self.lost_records += 1;
                if self.lost.len() < MAX_LOST {
                    self.lost.push(r.as_ref().clone());
                }
                r.ts_ns
            }
            Record::Digest(d) => {
                self.digests += 1;
                for p in &d.processes {
                    if let (Some(pid), Some(diagnosis)) = (p.pid, &p.diagnosis) {
                        self.diagnoses.insert(pid, diagnosis.clone());
                    }
                    if let (Some(pid), Some(container)) = (p.pid, &p.container) {
                        self.containers.insert(pid, container.clone());
                    }
                }
                if self.peak_digest.as_ref().is_none_or(|p| d.stuck > p.stuck) {
                    self.peak_digest = Some(d.clone());
                }
                self.last_digest = Some(d.clone());
                d.ts_ns
            }
            Record::Summary(s) => {
                self.summary = Some(s.as_ref().clone());
                s.ts_ns
            }
            Record::Timeline(r) => r.ts_ns,
            Record::CloseWait(r) | Record::Stuck(r) => {
                if let (Some(pid), Some(diagnosis)) = (r.pid, &r.diagnosis) {
                    self.diagnoses.insert(pid, diagnosis.clone());
                }
                if let (Some(pid), Some(container)) =
                    (r.pid, r.container.as_ref().or(r.pod_uid.as_ref()))
                {
                    self.containers.insert(pid, container.clone());
                }
                if self.piles.contains_key(&r.state) {
                    let process = self.process(r.pid, r.comm.as_deref());
                    if let Some(pile) = self.piles.get_mut(&r.state) {
                        pile.reports.push((r.ts_ns, process));
                    }
                }
                r.ts_ns
            }
            Record::CloseWaitResolved(r) | Record::StuckResolved(r) => r.ts_ns,
            Record::Analysis(_) => return,
        };
        self.first_ns = Some(self.first_ns.map_or(ts, |f| f.min(ts)));
        self.last_ns = self.last_ns.max(ts);
    }
}

/// A connection's cause of death in words, when the kernel told one: the errno name the
/// application saw and who sent the RST.
pub fn cause(error: Option<&str>, reset_by: Option<crate::cause::ResetBy>) -> Option<String> {
    let rst = reset_by.map(|by| match by {
        crate::cause::ResetBy::Local => "RST sent by this host",
        crate::cause::ResetBy::Peer => "RST from the peer",
    });
    match (error, rst) {
        (None, None) => None,
        (Some(e), None) => Some(e.to_owned()),
        (None, Some(r)) => Some(r.to_owned()),
        (Some(e), Some(r)) => Some(format!("{e}, {r}")),
    }
}

/// Any end but the orderly ones (and `open`, which has not ended).
pub fn ended_badly(outcome: Outcome) -> bool {
    !matches!(
        outcome,
        Outcome::ActiveClose
            | Outcome::PassiveClose
            | Outcome::SimultaneousClose
            | Outcome::ListenerClosed
            | Outcome::Open
    )
}

/// The decade bucket of a duration: 0 is `< 1µs`, 9 is `>= 100s`.
pub fn bucket(ns: u64) -> usize {
    let mut edge = 1_000u64;
    for i in 0..DWELL_BUCKETS - 1 {
        if ns < edge {
            return i;
        }
        edge = edge.saturating_mul(10);
    }
    DWELL_BUCKETS - 1
}

impl<S: Sink> Sink for Collector<S> {
    fn begin(&mut self) -> io::Result<()> {
        self.inner.begin()
    }

    fn write(&mut self, record: &Record) -> io::Result<()> {
        if let Record::Timeline(t) = record {
            self.timeline(t);
            if !self.print_timelines {
                return Ok(());
            }
        }
        self.inner.write(record)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    fn input(&mut self, record: &Record) {
        self.read(record);
        self.inner.input(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decade_buckets() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(999), 0);
        assert_eq!(bucket(1_000), 1);
        assert_eq!(bucket(1_000_000), 4);
        assert_eq!(bucket(99_999_999_999), 8);
        assert_eq!(bucket(u64::MAX), 9);
    }

    #[test]
    fn reservoir_keeps_a_bounded_uniform_sample() {
        let mut c = Collector::new(crate::sink::JsonSink::new(Vec::new()), false);
        for d in 0..(EDGE_SAMPLE as u64 * 3) {
            c.edge(TcpState::Established, TcpState::CloseWait, Some(d));
        }
        let e = &c.edges[&(TcpState::Established, TcpState::CloseWait)];
        assert_eq!(
            (e.count, e.dwell.len()),
            (EDGE_SAMPLE as u64 * 3, EDGE_SAMPLE)
        );
        assert!(e.sampled());
        // A uniform sample of 0..3N has its median near 1.5N.
        let mut v = e.dwell.clone();
        v.sort_unstable();
        let median = v[v.len() / 2] as f64 / (EDGE_SAMPLE as f64 * 1.5);
        assert!((0.95..1.05).contains(&median), "{median}");
    }
}
