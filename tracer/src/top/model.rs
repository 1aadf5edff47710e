//! What `tracer top` knows, built from the engine's records alone (the records the stream
//! prints and the export keeps): [`Model::observe`] takes them as they are made, and
//! [`Model::sample`], once an interval, turns what was gathered into the [`Snapshot`] the
//! screen shows. Pure: time comes from the records and from the caller, and the holders' file
//! descriptors are handed in, so every figure is tested from recorded streams.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    time::Duration,
};

use crate::{
    event::{Name, TcpState},
    forecast::{time_to_limit, Series},
    metrics::FdUsage,
    record::{CloseWaitRecord, CloseWaitResolvedRecord, Header, Record, TransitionRecord},
    timeline::Outcome,
};

/// The eleven TCP states of RFC 793 and the kernel, in the kernel's order: the rows of the
/// "sockets by state" panel.
pub const STATES: [TcpState; 11] = [
    TcpState::Established,
    TcpState::SynSent,
    TcpState::SynRecv,
    TcpState::FinWait1,
    TcpState::FinWait2,
    TcpState::TimeWait,
    TcpState::Close,
    TcpState::CloseWait,
    TcpState::LastAck,
    TcpState::Listen,
    TcpState::Closing,
];

/// Outcomes of ended connections, in the order the panel lists them: every outcome but
/// `open` (not an end), which [`Outcome::ALL`] lists last.
pub const ENDINGS: &[Outcome] = match Outcome::ALL.split_last() {
    Some((Outcome::Open, ended)) => ended,
    _ => panic!("Outcome::ALL lists `open` last"),
};

/// Why a connection ended, as the panel names it: the errno its application saw, else who
/// sent the RST; `None` when the kernel said neither.
pub fn cause(t: &crate::record::TimelineRecord) -> Option<String> {
    use crate::cause::ResetBy;
    match (&t.error, t.reset_by) {
        (Some(error), _) => Some(error.clone()),
        (None, Some(ResetBy::Peer)) => Some("RST from peer".to_owned()),
        (None, Some(ResetBy::Local)) => Some("RST sent".to_owned()),
        (None, None) => None,
    }
}

/// How far back "recently ended" and the growth rates look.
pub const RECENT: Duration = Duration::from_secs(60);

/// History a process's growth rate is computed over.
const GROWTH_WINDOW: Duration = Duration::from_secs(300);

/// The tracer's own health at one moment: run totals and resources.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Health {
    /// Records received from the kernel so far.
    pub events: u64,
    /// Records lost because the ring buffer was full, so far.
    pub lost_ringbuf: u64,
    /// Program runs the kernel skipped, so far.
    pub recursion_misses: u64,
    /// Records a destination dropped, plus records that could not be decoded, so far.
    pub dropped: u64,
    /// CPU time used by the tracer (user + system), seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident memory of the tracer, bytes.
    pub rss_bytes: Option<u64>,
}

/// Who holds stuck sockets, and in which state: one row of the "stuck sockets" panel.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Holder {
    /// The owning process, when known.
    pub pid: Option<u32>,
    /// Its name, when known.
    pub comm: Option<Name>,
    /// The state its sockets are stuck in.
    pub state: TcpState,
}

/// One reported stuck socket, as the detail view lists it.
#[derive(Clone, Debug, PartialEq)]
pub struct StuckSocket {
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// Network namespace inode, when known.
    pub netns: Option<u64>,
    /// The holder's descriptor, when known.
    pub fd: Option<i32>,
    /// Unread bytes in the receive queue when reported.
    pub recv_q: Option<u32>,
    /// Age when reported, ms, and the kernel time of the report: the age now follows.
    age_ms: u64,
    reported_ns: u64,
    /// It was already stuck at start: the age is a lower bound.
    pub age_at_least: bool,
    /// Container id of the holder, when it runs in one.
    pub container: Option<String>,
    /// What the report said about the holding process (`crate::diagnosis`), when it had one.
    pub diagnosis: Option<crate::diagnosis::Diagnosis>,
}

impl StuckSocket {
    /// Its age at `now_ns`, ms.
    pub fn age_ms(&self, now_ns: u64) -> u64 {
        self.age_ms + now_ns.saturating_sub(self.reported_ns) / 1_000_000
    }
}

/// A process's stuck sockets as the screen shows them.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessRow {
    /// Who and in which state.
    pub holder: Holder,
    /// Container id, when it runs in one.
    pub container: Option<String>,
    /// Sockets stuck.
    pub count: usize,
    /// Age of the oldest, ms.
    pub oldest_ms: u64,
    /// Stuck sockets gained per minute over the last minutes (`None` until two samples a
    /// second apart).
    pub growth_per_min: Option<f64>,
    /// The holder's descriptors and limit, when readable.
    pub fds: Option<FdUsage>,
    /// When the holder runs out of descriptors at this growth (`None` when not growing or the
    /// limit is unknown).
    pub forecast: Option<Duration>,
    /// Each socket, oldest first, with its age now (ms).
    pub sockets: Vec<(StuckSocket, u64)>,
    /// The latest diagnosis a report of these sockets carried, if any.
    pub diagnosis: Option<crate::diagnosis::Diagnosis>,
}

/// Everything the screen shows, as of one sample.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Host name and kernel release.
    pub host: String,
    /// Kernel release (`uname -r`), from the header.
    pub kernel: String,
    /// Time since the trace started.
    pub uptime: Duration,
    /// Kernel records received per second over the last interval.
    pub events_per_s: f64,
    /// The totals the header shows (losses in red when non-zero).
    pub health: Health,
    /// CPU used by the tracer over the last interval, percent of one CPU.
    pub cpu_percent: Option<f64>,
    /// Each of [`STATES`]: sockets in it now, and the change over the last interval.
    pub states: Vec<(TcpState, u64, i64)>,
    /// Transitions per second over the last interval by kind, the most frequent first.
    pub transitions: Vec<(TcpState, TcpState, f64)>,
    /// Stuck sockets grouped by holder and state, unsorted ([`crate::top::ui`] sorts).
    pub processes: Vec<ProcessRow>,
    /// Each of [`ENDINGS`]: connections that ended so in the last minute, and since start.
    pub ended: Vec<(Outcome, u64, u64)>,
    /// Why they ended, where the kernel said ([`cause`]): outcome, cause, in the last minute,
    /// and since start; in [`ENDINGS`] order, then the most frequent cause first.
    pub causes: Vec<(Outcome, String, u64, u64)>,
    /// Sockets not counted in the states panel (more than `--max-sockets` at once).
    pub untracked: u64,
}

/// Identity of a stuck socket: its state and 4-tuple within its namespace.
type StuckKey = (TcpState, Option<u64>, SocketAddr, SocketAddr);

/// Endings by (index in [`ENDINGS`], cause).
type CauseCounts = HashMap<(usize, String), u64>;

/// The state of everything `tracer top` watches, fed with records.
#[derive(Debug)]
pub struct Model {
    host: String,
    kernel: String,
    start_ns: u64,
    max_sockets: usize,
    /// The state of every socket seen (kernel address), until it closes.
    sockets: HashMap<u64, TcpState>,
    counts: [u64; STATES.len()],
    counted: [u64; STATES.len()],
    untracked: u64,
    /// Transitions by kind since the last sample.
    kinds: HashMap<(TcpState, TcpState), u64>,
    stuck: HashMap<StuckKey, (Holder, StuckSocket)>,
    growth: HashMap<Holder, Series>,
    /// Endings since the last sample, then per sample over [`RECENT`], and in total.
    ending: [u64; Outcome::ALL.len() - 1],
    recent: VecDeque<(u64, [u64; Outcome::ALL.len() - 1])>,
    ended: [u64; Outcome::ALL.len() - 1],
    /// The same for each (outcome index, cause).
    cause_ending: CauseCounts,
    cause_recent: VecDeque<(u64, CauseCounts)>,
    cause_ended: CauseCounts,
    last: Option<(u64, Health)>,
}

impl Model {
    /// An empty model; `max_sockets` bounds the sockets it follows for the states panel (as
    /// `--max-sockets` bounds the engine).
    pub fn new(max_sockets: usize) -> Self {
        Self {
            host: String::new(),
            kernel: String::new(),
            start_ns: 0,
            max_sockets,
            sockets: HashMap::new(),
            counts: [0; STATES.len()],
            counted: [0; STATES.len()],
            untracked: 0,
            kinds: HashMap::new(),
            stuck: HashMap::new(),
            growth: HashMap::new(),
            ending: [0; Outcome::ALL.len() - 1],
            recent: VecDeque::new(),
            ended: [0; Outcome::ALL.len() - 1],
            cause_ending: HashMap::new(),
            cause_recent: VecDeque::new(),
            cause_ended: HashMap::new(),
            last: None,
        }
    }

    /// Takes records in the order the engine made them.
    pub fn observe<'a>(&mut self, records: impl IntoIterator<Item = &'a Record>) {
        for record in records {
            match record {
                Record::Header(h) => self.header(h),
                Record::Transition(t) => self.transition(t),
                Record::Timeline(t) => {
                    if let Some(i) = ENDINGS.iter().position(|o| *o == t.outcome) {
                        self.ending[i] += 1;
                        self.ended[i] += 1;
                        if let Some(why) = cause(t) {
                            *self.cause_ending.entry((i, why.clone())).or_default() += 1;
                            *self.cause_ended.entry((i, why)).or_default() += 1;
                        }
                    }
                }
                Record::CloseWait(r) | Record::Stuck(r) => self.stuck(r),
                Record::CloseWaitResolved(r) | Record::StuckResolved(r) => self.resolved(r),
                _ => {}
            }
        }
    }

    fn header(&mut self, h: &Header) {
        self.host.clone_from(&h.hostname);
        self.kernel.clone_from(&h.kernel);
        self.start_ns = h.monotonic_start_ns;
    }

    fn transition(&mut self, t: &TransitionRecord) {
        *self.kinds.entry((t.old_state, t.new_state)).or_default() += 1;
        let skaddr = t.skaddr.0;
        let was = if t.new_state == TcpState::Close {
            self.sockets.remove(&skaddr)
        } else if self.sockets.len() >= self.max_sockets && !self.sockets.contains_key(&skaddr) {
            self.untracked += 1;
            return;
        } else {
            self.sockets.insert(skaddr, t.new_state)
        };
        if let Some(i) = was.and_then(index) {
            self.counts[i] = self.counts[i].saturating_sub(1);
        }
        if t.new_state != TcpState::Close {
            if let Some(i) = index(t.new_state) {
                self.counts[i] += 1;
            }
        }
    }

    fn stuck(&mut self, r: &CloseWaitRecord) {
        let holder = Holder {
            pid: r.pid,
            comm: r.comm.clone(),
            state: r.state,
        };
        let socket = StuckSocket {
            local: SocketAddr::new(r.laddr, r.lport),
            remote: SocketAddr::new(r.raddr, r.rport),
            netns: r.netns,
            fd: r.fd,
            recv_q: r.recv_q,
            age_ms: r.age_ms,
            reported_ns: r.ts_ns,
            age_at_least: r.age_at_least,
            container: r.container.clone(),
            diagnosis: r.diagnosis.clone(),
        };
        self.stuck.insert(
            (r.state, r.netns, socket.local, socket.remote),
            (holder, socket),
        );
    }

    fn resolved(&mut self, r: &CloseWaitResolvedRecord) {
        let key = (
            r.state,
            r.netns,
            SocketAddr::new(r.laddr, r.lport),
            SocketAddr::new(r.raddr, r.rport),
        );
        self.stuck.remove(&key);
    }

    /// The processes holding stuck sockets: whose descriptors [`Model::sample`] wants.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.stuck.values().filter_map(|(h, _)| h.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// What the screen shows at `now_ns` (kernel monotonic), given the tracer's health and
    /// the descriptors of the [`Model::pids`]; rates are over the time since the previous
    /// sample.
    pub fn sample(&mut self, now_ns: u64, health: Health, fds: &HashMap<u32, FdUsage>) -> Snapshot {
        let elapsed_s = self
            .last
            .map(|(at, _)| secs(now_ns.saturating_sub(at)))
            .filter(|s| *s > 0.0);
        let per_s = |n: u64| elapsed_s.map_or(0.0, |s| as_f64(n) / s);
        let before = self.last.map(|(_, h)| h).unwrap_or_default();
        let cpu_percent = match (elapsed_s, health.cpu_seconds, before.cpu_seconds) {
            (Some(s), Some(now), Some(was)) => Some((now - was).max(0.0) / s * 100.0),
            _ => None,
        };
        let events_per_s = per_s(health.events.saturating_sub(before.events));

        let states = STATES
            .iter()
            .zip(self.counts.iter().zip(self.counted))
            .map(|(&state, (&now, was))| (state, now, signed(now) - signed(was)))
            .collect();
        self.counted = self.counts;

        let mut transitions: Vec<(TcpState, TcpState, f64)> = self
            .kinds
            .drain()
            .map(|((old, new), n)| (old, new, per_s(n)))
            .collect();
        transitions.sort_by(|a, b| b.2.total_cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));

        let window = now_ns.saturating_sub(nanos(RECENT));
        self.recent
            .push_back((now_ns, std::mem::take(&mut self.ending)));
        while self.recent.front().is_some_and(|(at, _)| *at <= window) {
            self.recent.pop_front();
        }
        self.cause_recent
            .push_back((now_ns, std::mem::take(&mut self.cause_ending)));
        while self
            .cause_recent
            .front()
            .is_some_and(|(at, _)| *at <= window)
        {
            self.cause_recent.pop_front();
        }
        let mut causes: Vec<(usize, String, u64, u64)> = self
            .cause_ended
            .iter()
            .map(|((i, why), &total)| {
                let key = (*i, why.clone());
                let recent = self
                    .cause_recent
                    .iter()
                    .filter_map(|(_, c)| c.get(&key))
                    .sum();
                (*i, why.clone(), recent, total)
            })
            .collect();
        causes.sort_by(|a, b| a.0.cmp(&b.0).then(b.3.cmp(&a.3)).then(a.1.cmp(&b.1)));
        let causes = causes
            .into_iter()
            .map(|(i, why, recent, total)| (ENDINGS[i], why, recent, total))
            .collect();
        let ended = ENDINGS
            .iter()
            .enumerate()
            .map(|(i, &o)| {
                (
                    o,
                    self.recent.iter().map(|(_, c)| c[i]).sum(),
                    self.ended[i],
                )
            })
            .collect();

        let processes = self.processes(now_ns, fds);
        self.last = Some((now_ns, health));
        Snapshot {
            host: self.host.clone(),
            kernel: self.kernel.clone(),
            uptime: Duration::from_nanos(now_ns.saturating_sub(self.start_ns)),
            events_per_s,
            health,
            cpu_percent,
            states,
            transitions,
            processes,
            ended,
            causes,
            untracked: self.untracked,
        }
    }

    /// Groups the stuck sockets by holder, updates each holder's growth and forecasts.
    fn processes(&mut self, now_ns: u64, fds: &HashMap<u32, FdUsage>) -> Vec<ProcessRow> {
        let mut groups: HashMap<&Holder, Vec<&StuckSocket>> = HashMap::new();
        for (holder, socket) in self.stuck.values() {
            groups.entry(holder).or_default().push(socket);
        }
        self.growth.retain(|h, _| groups.contains_key(h));
        let mut rows = Vec::with_capacity(groups.len());
        for (holder, sockets) in groups {
            let series = self
                .growth
                .entry(holder.clone())
                .or_insert_with(|| Series::new(GROWTH_WINDOW));
            series.push(now_ns, sockets.len() as u64);
            let growth_per_min = series.per_minute();
            let fds = holder.pid.and_then(|pid| fds.get(&pid)).copied();
            let forecast = match (fds, growth_per_min) {
                (
                    Some(FdUsage {
                        open,
                        limit: Some(limit),
                    }),
                    Some(rate),
                ) => time_to_limit(open, limit, rate),
                _ => None,
            };
            let mut sockets: Vec<(StuckSocket, u64)> = sockets
                .into_iter()
                .map(|s| (s.clone(), s.age_ms(now_ns)))
                .collect();
            sockets.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.local.cmp(&b.0.local)));
            let diagnosis = sockets
                .iter()
                .filter(|(s, _)| s.diagnosis.is_some())
                .max_by_key(|(s, _)| s.reported_ns)
                .and_then(|(s, _)| s.diagnosis.clone());
            rows.push(ProcessRow {
                diagnosis,
                holder: holder.clone(),
                container: sockets.iter().find_map(|(s, _)| s.container.clone()),
                count: sockets.len(),
                oldest_ms: sockets.first().map_or(0, |s| s.1),
                growth_per_min,
                fds,
                forecast,
                sockets,
            });
        }
        rows
    }
}

/// The row of `state` in [`STATES`].
fn index(state: TcpState) -> Option<usize> {
    STATES.iter().position(|s| *s == state)
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[expect(
    clippy::cast_precision_loss,
    reason = "counts and ns shown as rates: exact below 2^53"
)]
fn as_f64(n: u64) -> f64 {
    n as f64
}

fn secs(ns: u64) -> f64 {
    as_f64(ns) / 1e9
}

impl Health {
    /// Bytes as MiB, for display.
    pub fn mib(bytes: u64) -> f64 {
        as_f64(bytes) / f64::from(1u32 << 20)
    }
}
