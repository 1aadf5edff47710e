//! Turns decoded transitions into output records: owner attribution, durations, timelines,
//! CLOSE_WAIT alerts and digests. Pure: time comes in as arguments and the socket table is
//! handed in, so every path is tested from recorded streams without root.

use crate::{
    cause::{Cause, Causes, Closing, Signal},
    close_wait::{self, Detector, Found, Resolved, SockId, Stuck},
    defaults,
    event::{TcpState, Transition},
    owner::SocketTable,
    record::{
        self, CloseWaitRecord, CloseWaitResolvedRecord, DigestProcess, DigestRecord, Record,
        SkAddr, Summary, TimelineRecord, TransitionRecord,
    },
    timeline::{Timeline, Tracker},
    units::{whole_ms, WallClock},
};

/// What to produce.
#[derive(Clone, Debug)]
pub struct Options {
    /// Emit one record per transition.
    pub transitions: bool,
    /// Emit one record per finished connection.
    pub timelines: bool,
    /// How long a socket may stay in CLOSE_WAIT before it is reported, in ns.
    pub close_wait_threshold_ns: u64,
    /// Other states to report sockets stuck in (`--stuck STATE=DURATION`), with thresholds.
    pub stuck: Vec<(TcpState, u64)>,
    /// Sockets tracked at most; the oldest are evicted beyond.
    pub max_sockets: usize,
    /// Where the causes of connection ends come from.
    pub causes: CauseSource,
}

/// Where the causes of connection ends (`error`, `reset_by`, and the outcomes that depend on
/// them) come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CauseSource {
    /// With each transition ([`Engine::transition_with_cause`]): the replay of an export that
    /// records them. None given means the kernel reported none.
    #[default]
    Given,
    /// Nowhere: a stream written before causes were traced. An open connection that jumped to
    /// CLOSE is a `reset`, as such streams said.
    Legacy,
    /// From the kernel ([`Engine::cause`]): transitions to CLOSE are held back until their
    /// cause is known (see [`crate::cause`]). `error_reports`: `inet_sk_error_report` is
    /// attached, so a transition's error may still come.
    Live {
        /// `inet_sk_error_report` is attached: a transition's error may still come.
        error_reports: bool,
    },
}

impl Default for Options {
    fn default() -> Self {
        Self {
            transitions: true,
            timelines: false,
            close_wait_threshold_ns: defaults::nanos(defaults::CLOSE_WAIT_THRESHOLD),
            stuck: Vec::new(),
            max_sockets: defaults::MAX_SOCKETS,
            causes: CauseSource::default(),
        }
    }
}

impl Options {
    /// Every watched state with its threshold, CLOSE_WAIT first.
    pub fn thresholds(&self) -> Vec<(TcpState, u64)> {
        let mut all = vec![(TcpState::CloseWait, self.close_wait_threshold_ns)];
        all.extend(self.stuck.iter().filter(|(s, _)| *s != TcpState::CloseWait));
        all
    }
}

/// Turns transitions into records. One per run (live) or per replay (`tracer analyze`).
///
/// Feed it every transition in kernel order ([`Engine::transition`]); on each tick ask which
/// CLOSE_WAIT sockets are due ([`Engine::due`]), look their owners up in the socket tables,
/// and hand the table back ([`Engine::alert`]); end with [`Engine::finish`]. Every method
/// appends the records it makes to the `out` it is given, in the order they happened. Times
/// are kernel monotonic ns (`bpf_ktime_get_ns`); the [`WallClock`] turns them into the
/// records' `time`. Memory is bounded by [`Options::max_sockets`].
pub struct Engine {
    opts: Options,
    clock: WallClock,
    tracker: Tracker,
    detector: Detector,
    summary: Summary,
    /// Transitions to CLOSE waiting for their cause (live only).
    causes: Option<Causes>,
}

impl Engine {
    /// An engine producing what `opts` asks for, stamping records with `clock`.
    pub fn new(opts: Options, clock: WallClock) -> Self {
        Self {
            tracker: Tracker::keeping_steps(opts.max_sockets, opts.timelines),
            detector: Detector::with_states(&opts.thresholds()),
            causes: match opts.causes {
                CauseSource::Live { error_reports } => Some(Causes::new(error_reports)),
                CauseSource::Given | CauseSource::Legacy => None,
            },
            opts,
            clock,
            summary: Summary::default(),
        }
    }

    /// Counters so far (`ts_ns`/`time` are filled by [`Engine::finish`]); the metrics read
    /// them on each tick.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// A record that could not be decoded.
    pub fn decode_error(&mut self) {
        self.summary.events += 1;
        self.summary.decode_errors += 1;
    }

    /// Feeds one transition. It is taken by value: its task name moves into the record. Live,
    /// the records of a transition to CLOSE come out once its cause is known (at most
    /// [`crate::cause::WINDOW_NS`] later).
    pub fn transition(&mut self, t: Transition, out: &mut Vec<Record>) {
        self.transition_with_cause(t, None, out);
    }

    /// Feeds one transition with its cause as recorded (a replay); see [`Engine::transition`].
    pub fn transition_with_cause(
        &mut self,
        t: Transition,
        cause: Option<Cause>,
        out: &mut Vec<Record>,
    ) {
        let ts_ns = t.ts_ns;
        if let Some(causes) = &mut self.causes {
            // A socket born at the address of one whose CLOSE is held: that one's records
            // first. Only a birth can follow a CLOSE at one address, so only births look.
            // CLOSE -> CLOSE (`tcp_done()` on a socket already closed) is no birth: its causes
            // may have come before it.
            let taken = crate::timeline::is_birth(&t)
                .then(|| causes.take(t.skaddr))
                .flatten();
            if let Some(mut done) = taken {
                complete_close(&mut done.records, &done.cause, done.old, false);
                out.append(&mut done.records);
            }
            self.release(Some(ts_ns), out);
        }
        if t.new != TcpState::Close {
            self.apply(t, out);
            return;
        }
        let closing = Closing::of(&t);
        if let Some(causes) = &self.causes {
            // An orphan's CLOSE with no cause seen before it: none can follow either, so its
            // records go out now instead of waiting in the window.
            if crate::sock_state::nothing_follows_close(&t) && causes.none_seen(&closing) {
                let start = out.len();
                let old = t.old;
                self.apply(t, out);
                complete_close(&mut out[start..], &Cause::default(), old, false);
                return;
            }
            let mut records = Vec::new();
            self.apply(t, &mut records);
            if let Some(causes) = &mut self.causes {
                causes.hold(closing, records);
            }
            self.release(Some(ts_ns), out);
        } else {
            let start = out.len();
            let old = t.old;
            self.apply(t, out);
            let legacy = self.opts.causes == CauseSource::Legacy;
            complete_close(&mut out[start..], &cause.unwrap_or_default(), old, legacy);
        }
    }

    /// A cause of a connection's end reported by the kernel (live only; ignored otherwise).
    pub fn cause(&mut self, signal: Signal, out: &mut Vec<Record>) {
        let ts_ns = signal.ts_ns;
        if let Some(causes) = &mut self.causes {
            causes.signal(signal);
            self.release(Some(ts_ns), out);
        }
    }

    /// Releases the transitions to CLOSE whose wait for a cause ended by `now_ns` (kernel
    /// monotonic ns, read before the ring buffer was last drained).
    pub fn settle(&mut self, now_ns: u64, out: &mut Vec<Record>) {
        self.release(Some(now_ns), out);
    }

    /// Hands out held transitions to CLOSE (all of them for `None`), completed with their cause.
    fn release(&mut self, now_ns: Option<u64>, out: &mut Vec<Record>) {
        let Some(causes) = &mut self.causes else {
            return;
        };
        for mut done in causes.release(now_ns) {
            complete_close(&mut done.records, &done.cause, done.old, false);
            out.append(&mut done.records);
        }
    }

    /// Applies one transition and makes its records.
    fn apply(&mut self, t: Transition, out: &mut Vec<Record>) {
        self.summary.events += 1;
        let evicted_before = self.tracker.evicted();
        // `X -> X` (MPTCP reports them, and the kernel for a socket already closed) changes no
        // state: a stuck socket stays stuck, its clock running.
        let moves = t.old != t.new;
        // The stuck socket this transition moves out of its state, with its owner before it.
        let left = if moves { self.detector.leave(&t) } else { None };
        let known = left.as_ref().and_then(|s| s.owner(&self.tracker)).cloned();
        // A socket found stuck at start has no timeline yet: it starts with the owner its
        // report named.
        let untied = left
            .as_ref()
            .is_some_and(|s| !matches!(s.id, SockId::Kernel(_)));
        let mut applied = self
            .tracker
            .apply_known(&t, known.as_ref().filter(|_| untied));
        if self.tracker.evicted() != evicted_before {
            self.summary.evicted = self.tracker.evicted();
        }
        let owner = left
            .as_ref()
            .and_then(|s| s.owner_leaving(known.as_ref(), applied.owner.as_ref()));
        let resolved = if moves {
            self.detector.enter(&t, left, owner)
        } else {
            None
        };
        if self.opts.transitions {
            self.summary.transitions += 1;
            let owner = applied.owner.take();
            out.push(Record::Transition(TransitionRecord {
                ts_ns: t.ts_ns,
                time: self.clock.wall(t.ts_ns),
                skaddr: SkAddr(t.skaddr),
                family: t.family,
                laddr: t.laddr,
                lport: t.lport,
                raddr: t.raddr,
                rport: t.rport,
                protocol: t.protocol,
                old_state: t.old,
                new_state: t.new,
                duration_ns: applied.duration_ns,
                pid: owner.as_ref().map(|o| o.pid),
                comm: owner.map(|o| o.comm),
                ctx_pid: t.task.pid,
                ctx_comm: t.task.comm,
                ctx_tid: t.task.tid,
                ctx_thread: Some(t.task.thread),
                cpu: t.cpu,
                error: None,
                reset_by: None,
                netns: netns(t.netns),
                sock_owned: t.sock_owned,
                peer_fin: t.peer_fin,
            }));
        }
        if let Some(resolved) = resolved {
            self.push_resolved(resolved, out);
        }
        for timeline in applied.finished {
            self.push_timeline(timeline, t.ts_ns, out);
        }
    }

    /// Adds the sockets already in a watched state when the tracer starts.
    pub fn preexisting(&mut self, table: &SocketTable, now_ns: u64) {
        for entry in &table.entries {
            if self.detector.threshold(entry.state).is_none() {
                continue;
            }
            self.detector.add_preexisting(
                entry.state,
                entry.inode,
                entry.netns,
                entry.endpoints,
                now_ns,
                entry.owner().cloned(),
                entry.recv_q,
                entry.times,
            );
        }
    }

    /// What a socket table scan must read for the sockets `ids` (none: the start-up scan, which
    /// reads every namespace): the watched states, and the namespaces of these sockets.
    pub fn wanted(&self, ids: &[SockId]) -> crate::owner::Wanted {
        let mut wanted =
            crate::owner::Wanted::for_states(self.opts.thresholds().into_iter().map(|(s, _)| s));
        if !ids.is_empty() {
            let netns: Option<Vec<u64>> = ids
                .iter()
                .filter_map(|&id| self.detector.get(id))
                .map(|s| s.netns)
                .collect();
            wanted.netns = netns;
        }
        wanted
    }

    /// Sockets that crossed the CLOSE_WAIT threshold by `now_ns`; the caller looks up the
    /// socket table (only when this is not empty) and hands it to [`Engine::alert`].
    pub fn due(&mut self, now_ns: u64) -> Vec<SockId> {
        self.detector.poll(now_ns)
    }

    /// Emits the alerts for `due` sockets, with owner, fd and receive queue from `table`.
    pub fn alert(
        &mut self,
        due: &[SockId],
        table: Option<&SocketTable>,
        now_ns: u64,
        out: &mut Vec<Record>,
    ) {
        for &id in due {
            let Some(stuck) = self.detector.get(id) else {
                continue;
            };
            // Identity first: the socket's inode in its namespace (found at start), or its
            // 4-tuple within its namespace; the 4-tuple alone repeats across namespaces. An
            // MPTCP socket is in no table (its first subflow, a TCP socket, has its 4-tuple).
            let entry = table.filter(|_| stuck.listed).and_then(|t| {
                let by_inode = match id {
                    SockId::Preexisting { inode, netns } => t.by_inode(netns, inode),
                    SockId::Kernel(_) | SockId::Tuple { .. } => None,
                };
                by_inode
                    .or_else(|| t.find(stuck.netns, &stuck.endpoints, stuck.state))
                    .or_else(|| t.unbound(stuck.netns, &stuck.endpoints, stuck.state))
            });
            // connect() reports SYN_SENT before it picks the local port: learnt here.
            let learnt = entry
                .filter(|e| e.endpoints.lport != stuck.endpoints.lport)
                .map(|e| e.endpoints);
            if stuck.followed {
                // A timewait socket is stuck only if the tables still show it in its state
                // (it waits for the peer's FIN); without the tables it is not reported.
                let state = stuck.state;
                if entry.is_none_or(|e| e.state != state) {
                    self.detector.remove(id);
                    continue;
                }
            }
            // A socket seen entering its state that the tables of its namespace, read now, do
            // not show in it left it in transitions the tracer lost (counted, as ring buffer
            // losses or runs the kernel skipped): it is not stuck, and no report names it. The
            // tables list TCP sockets only: an MPTCP socket is reported all the same.
            let read = |t: &SocketTable| t.has_read(stuck.netns);
            if matches!(id, SockId::Kernel(_))
                && stuck.listed
                && entry.is_none()
                && table.is_some_and(read)
            {
                log::debug!(
                    "{} {:?} is not in its namespace's tables: it left the state unseen",
                    stuck.state.name(),
                    stuck.endpoints
                );
                self.detector.remove(id);
                continue;
            }
            if let (Some(table), Some(entry)) = (table, entry) {
                let found = Found {
                    holders: entry.holders.clone(),
                    recv_q: entry.recv_q,
                    netns: entry.netns,
                    unowned: table.no_owner(entry),
                    placement: entry
                        .owner()
                        .and_then(|o| table.placements.get(&o.pid))
                        .cloned()
                        .unwrap_or_default(),
                    times: entry.times,
                    fin_read: entry.fin_read,
                };
                if let (Some(owner), SockId::Kernel(skaddr)) = (found.holders.first(), id) {
                    self.tracker.set_owner(skaddr, owner.clone());
                }
                if let Some(endpoints) = learnt {
                    self.detector.set_endpoints(id, endpoints);
                }
                self.detector.found(id, found);
            }
            // The owner: the first holder the tables named or, not in the tables read, what
            // system calls told (a socket seen by its kernel address) or the start-up scan found.
            let Some(stuck) = self.detector.get(id) else {
                continue;
            };
            let record = close_wait_record(stuck, stuck.owner(&self.tracker), now_ns, &self.clock);
            if stuck.state == TcpState::CloseWait {
                self.summary.close_wait_alerts += 1;
                out.push(Record::CloseWait(Box::new(record)));
            } else {
                self.summary.stuck_alerts += 1;
                out.push(Record::Stuck(Box::new(record)));
            }
        }
    }

    /// Reported sockets that live on as timewait sockets: the caller reads the socket tables
    /// (only when this is not empty) and hands them to [`Engine::recheck`].
    /// With `lossy` (the kernel side has lost events), also every reported socket seen by its
    /// kernel address: the transition that took it out of its state may be among those lost.
    pub fn followed(&self, lossy: bool) -> Vec<SockId> {
        self.detector.followed_reported(lossy)
    }

    /// Resolves the followed sockets the tables no longer show in their state: the peer's FIN
    /// came (the timewait socket moved on to TIME_WAIT) or the timewait socket expired. A
    /// socket seen by its kernel address is resolved so only when the tables of its namespace
    /// were read: it left its state in a transition the tracer lost (and counted).
    pub fn recheck(
        &mut self,
        ids: &[SockId],
        table: &SocketTable,
        now_ns: u64,
        out: &mut Vec<Record>,
    ) {
        for &id in ids {
            let Some(stuck) = self.detector.get(id) else {
                continue;
            };
            if matches!(id, SockId::Kernel(_)) && (!stuck.listed || !table.has_read(stuck.netns)) {
                continue;
            }
            let now = table.find(stuck.netns, &stuck.endpoints, stuck.state);
            let new_state = match now {
                Some(e) if e.state == stuck.state => continue,
                Some(e) => e.state,
                None => TcpState::Close,
            };
            if let Some(stuck) = self.detector.remove(id) {
                let owner = stuck.owner(&self.tracker).cloned();
                self.push_resolved(
                    Resolved {
                        stuck,
                        left_ns: now_ns,
                        new_state,
                        owner,
                    },
                    out,
                );
            }
        }
    }

    /// The CLOSE_WAIT digest, grouped by process.
    pub fn digest(&self, now_ns: u64) -> Record {
        let reported: Vec<&Stuck> = self.detector.reported().collect();
        let processes = close_wait::digest(reported.iter().copied(), &self.tracker, now_ns)
            .into_iter()
            .map(|g| DigestProcess {
                state: g.state,
                pid: g.pid,
                comm: g.comm,
                container: g.container,
                count: g.count,
                oldest_age_ms: whole_ms(g.oldest_ns),
                diagnosis: None,
            })
            .collect();
        Record::Digest(DigestRecord {
            ts_ns: now_ns,
            time: self.clock.wall(now_ns),
            stuck: reported.len(),
            processes,
        })
    }

    /// Flushes the live timelines as `open` and returns the summary, given the kernel's own
    /// loss counters.
    pub fn finish(
        &mut self,
        now_ns: u64,
        lost_ringbuf: u64,
        recursion_misses: Option<u64>,
        out: &mut Vec<Record>,
    ) -> Summary {
        self.release(None, out);
        for timeline in self.tracker.flush() {
            self.push_timeline(timeline, now_ns, out);
        }
        self.summary.ts_ns = now_ns;
        self.summary.time = self.clock.wall(now_ns);
        self.summary.lost_ringbuf = lost_ringbuf;
        self.summary.recursion_misses = recursion_misses;
        self.summary.evicted = self.tracker.evicted();
        self.summary.clone()
    }

    /// Makes the timeline's record; taken by value, its steps and owner move into it.
    fn push_timeline(&mut self, tl: Timeline, ts_ns: u64, out: &mut Vec<Record>) {
        if !self.opts.timelines {
            return;
        }
        self.summary.timelines += 1;
        // Saturating: `tracer analyze` replays timestamps from files it does not trust.
        let duration_ns = tl
            .steps
            .iter()
            .filter_map(|s| s.duration_ns)
            .reduce(u64::saturating_add);
        let e = &tl.endpoints;
        out.push(Record::Timeline(TimelineRecord {
            ts_ns,
            time: self.clock.wall(ts_ns),
            skaddr: SkAddr(tl.skaddr),
            family: e.family(),
            laddr: e.laddr,
            lport: e.lport,
            raddr: e.raddr,
            rport: e.rport,
            pid: tl.owner.as_ref().map(|o| o.pid),
            comm: tl.owner.map(|o| o.comm),
            netns: netns(tl.netns),
            from_birth: tl.from_birth,
            outcome: tl.outcome,
            error: None,
            reset_by: None,
            duration_ns,
            states: tl.steps,
        }));
    }

    /// Makes the record of a reported socket that left its state; taken by value, its owner
    /// moves into it.
    fn push_resolved(&mut self, r: Resolved, out: &mut Vec<Record>) {
        let Resolved {
            stuck,
            left_ns,
            new_state,
            owner,
        } = r;
        let (pid, fd) = (
            owner.as_ref().map(|o| o.pid),
            owner.as_ref().and_then(|o| o.fd),
        );
        let e = &stuck.endpoints;
        let record = CloseWaitResolvedRecord {
            ts_ns: left_ns,
            time: self.clock.wall(left_ns),
            skaddr: stuck.skaddr.map(SkAddr),
            pid,
            comm: owner.map(|o| o.comm),
            fd,
            family: e.family(),
            laddr: e.laddr,
            lport: e.lport,
            raddr: e.raddr,
            rport: e.rport,
            stuck_ms: whole_ms(stuck.age_ns(left_ns)),
            stuck_at_least: stuck.at_least,
            new_state,
            netns: stuck.netns,
            state: stuck.state,
        };
        if stuck.state == TcpState::CloseWait {
            self.summary.close_wait_resolved += 1;
            out.push(Record::CloseWaitResolved(record));
        } else {
            self.summary.stuck_resolved += 1;
            out.push(Record::StuckResolved(record));
        }
    }
}

/// Completes the records of a transition `old -> CLOSE` with its cause: the transition's
/// `error` and `reset_by`, and the timeline it ended (its outcome depends on the cause).
fn complete_close(records: &mut [Record], cause: &Cause, old: TcpState, legacy: bool) {
    for record in records {
        match record {
            Record::Transition(t) if t.new_state == TcpState::Close => {
                t.error.clone_from(&cause.error);
                t.reset_by = cause.reset_by;
            }
            Record::Timeline(t) if t.outcome != crate::timeline::Outcome::Open => {
                t.error.clone_from(&cause.error);
                t.reset_by = cause.reset_by;
                t.outcome = crate::timeline::Outcome::of_close(old, cause, legacy);
                // An RST at the end of a close (a peer's, data after close(), the orphan's
                // FIN_WAIT2 timer): the kernel made no timewait socket, the inferred
                // TIME_WAIT or FIN_WAIT2 is CLOSE.
                if let (Some(_), Some(last)) = (cause.reset_by, t.states.last_mut()) {
                    if last.inferred {
                        last.state = TcpState::Close;
                        last.inferred = false;
                    }
                }
            }
            _ => {}
        }
    }
}

/// A namespace inode as records carry it: 0 (not known) is null.
fn netns(inode: u64) -> Option<u64> {
    (inode != 0).then_some(inode)
}

/// The report of a stuck socket, naming `owner` ([`Stuck::owner`]).
fn close_wait_record(
    s: &Stuck,
    owner: Option<&crate::owner::Owner>,
    now_ns: u64,
    clock: &WallClock,
) -> CloseWaitRecord {
    let e = &s.endpoints;
    CloseWaitRecord {
        ts_ns: now_ns,
        time: clock.wall(now_ns),
        skaddr: s.skaddr.map(SkAddr),
        pid: owner.map(|o| o.pid),
        comm: owner.map(|o| o.comm.clone()),
        fd: owner.and_then(|o| o.fd),
        family: e.family(),
        laddr: e.laddr,
        lport: e.lport,
        raddr: e.raddr,
        rport: e.rport,
        age_ms: whole_ms(s.age_ns(now_ns)),
        age_at_least: s.at_least,
        recv_q: s.recv_q,
        netns: s.netns,
        holders: s.holders.iter().map(record::Holder::from).collect(),
        unowned: s.unowned.as_ref().map(record::Unowned::from),
        cgroup: s.placement.cgroup.clone(),
        container: s.placement.container.clone(),
        pod_uid: s.placement.pod_uid.clone(),
        state: s.state,
        tcp_info: s.times.map(|t| record::TcpInfo {
            last_data_recv_ms: u64::from(t.last_data_recv_ms),
            last_ack_recv_ms: u64::from(t.last_ack_recv_ms),
        }),
        fin_read: s.fin_read,
        diagnosis: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        owner::{Owner, SocketEntry},
        testing::{by, transition, C, MS, S},
    };

    fn engine(opts: Options) -> Engine {
        Engine::new(opts, WallClock::fixed(0))
    }

    fn feed(e: &mut Engine, ts: &[Transition]) -> Vec<Record> {
        let mut out = Vec::new();
        for t in ts {
            e.transition(t.clone(), &mut out);
        }
        out
    }

    /// A server socket that the peer closed and the server never closes.
    fn stuck_server() -> Vec<Transition> {
        vec![
            by(transition(MS, 9, S, C, 10, 3), 111, "client"),
            by(transition(2 * MS, 9, S, C, 3, 1), 111, "client"),
            by(transition(3 * MS, 9, S, C, 1, 8), 111, "client"),
        ]
    }

    /// An engine reporting CLOSE_WAIT after 1 ms, fed [`stuck_server`].
    fn stuck_engine() -> Engine {
        // `transition` makes its records in namespace 0 (not known).
        stuck_engine_in(0)
    }

    /// [`stuck_engine`] with the socket in network namespace `netns`.
    fn stuck_engine_in(netns: u64) -> Engine {
        let mut e = engine(Options {
            close_wait_threshold_ns: MS,
            ..Options::default()
        });
        let ts: Vec<Transition> = stuck_server()
            .into_iter()
            .map(|t| Transition { netns, ..t })
            .collect();
        feed(&mut e, &ts);
        e
    }

    /// Socket tables that read namespaces `netns` and hold `entries`.
    fn read(netns: Vec<u64>, entries: Vec<SocketEntry>) -> SocketTable {
        SocketTable {
            entries,
            netns,
            ..SocketTable::default()
        }
    }

    /// The records of a report pass at `now_ns`: the sockets due then, reported with the
    /// socket table `table` when there is one.
    fn report_due(e: &mut Engine, now_ns: u64, table: Option<&SocketTable>) -> Vec<Record> {
        let mut out = Vec::new();
        let due = e.due(now_ns);
        e.alert(&due, table, now_ns, &mut out);
        out
    }

    fn table(pid: u32) -> SocketTable {
        SocketTable {
            entries: vec![SocketEntry {
                endpoints: transition(0, 0, S, C, 1, 8).endpoints(),
                state: TcpState::CloseWait,
                recv_q: 12,
                inode: 5,
                netns: 1,
                holders: vec![Owner {
                    pid,
                    comm: "server".into(),
                    fd: Some(7),
                }],
                times: None,
                fin_read: None,
            }],
            ..SocketTable::default()
        }
    }

    /// A socket seen entering CLOSE_WAIT whose leaving was lost (a ring buffer overflow) is not
    /// reported once the tables of its namespace, read, do not show it; tables that did not
    /// read its namespace leave it reported, and one they show is reported with its holder.
    #[test]
    fn a_socket_the_tables_of_its_namespace_do_not_show_is_not_reported() {
        let mut gone = stuck_engine_in(7);
        assert!(report_due(&mut gone, 10 * MS, Some(&read(vec![7], vec![]))).is_empty());
        assert!(gone.detector.get(SockId::Kernel(9)).is_none());
        let mut unread = stuck_engine_in(7);
        let out = report_due(&mut unread, 10 * MS, Some(&read(vec![8], vec![])));
        assert!(matches!(&out[..], [Record::CloseWait(_)]), "{out:?}");
        let mut shown = stuck_engine_in(1);
        let out = report_due(
            &mut shown,
            10 * MS,
            Some(&read(vec![1], table(333).entries)),
        );
        let [Record::CloseWait(report)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(report.pid, Some(333));
    }

    /// An MPTCP socket (`--all-protocols`) stuck in CLOSE_WAIT is in no socket table (they
    /// list TCP sockets): their silence is no sign it left, it is reported all the same (not
    /// matched with the TCP subflow that shares its 4-tuple), and a recheck after a loss
    /// leaves it alone.
    #[test]
    fn an_mptcp_socket_the_tables_do_not_list_is_still_reported() {
        let mut e = engine(Options {
            close_wait_threshold_ns: MS,
            ..Options::default()
        });
        let ts: Vec<Transition> = stuck_server()
            .into_iter()
            .map(|t| Transition {
                netns: 7,
                protocol: 262,
                ..t
            })
            .collect();
        feed(&mut e, &ts);
        let mut subflow = table(333).entries;
        subflow[0].netns = 7;
        let out = report_due(&mut e, 10 * MS, Some(&read(vec![7], subflow)));
        let [Record::CloseWait(report)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!((report.pid, report.fd), (None, None), "{report:?}");
        let mut out = Vec::new();
        e.recheck(&e.followed(true), &read(vec![7], vec![]), 20 * MS, &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert!(e.detector.get(SockId::Kernel(9)).is_some());
    }

    /// After a loss, a reported socket whose leaving transition was lost is resolved once the
    /// tables of its namespace no longer show it (it stayed "stuck" forever before); without
    /// a loss, or with tables that did not read its namespace, it is left alone.
    #[test]
    fn after_a_loss_a_reported_socket_the_tables_no_longer_show_is_resolved() {
        let mut e = stuck_engine_in(7);
        let mut shown = table(333).entries;
        shown[0].netns = 7;
        let out = report_due(&mut e, 10 * MS, Some(&read(vec![7], shown)));
        assert!(matches!(&out[..], [Record::CloseWait(_)]), "{out:?}");
        assert!(e.followed(false).is_empty());
        let ids = e.followed(true);
        assert_eq!(ids, [SockId::Kernel(9)]);
        let mut out = Vec::new();
        e.recheck(&ids, &read(vec![8], vec![]), 20 * MS, &mut out);
        assert!(out.is_empty(), "its namespace was not read: {out:?}");
        e.recheck(&ids, &read(vec![7], vec![]), 30 * MS, &mut out);
        let [Record::CloseWaitResolved(resolved)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(resolved.new_state, TcpState::Close);
        assert!(e.followed(true).is_empty());
    }

    /// A reported CLOSE_WAIT socket that reports `CLOSE_WAIT -> CLOSE_WAIT` (MPTCP reports
    /// such self-transitions) is still stuck: no resolution, no second report, and when it
    /// leaves, its time stuck counts from its entry.
    #[test]
    fn a_transition_to_the_same_state_leaves_a_stuck_socket_stuck() {
        let mut e = stuck_engine_in(1);
        let out = report_due(&mut e, 10 * MS, Some(&read(vec![1], table(333).entries)));
        assert!(matches!(&out[..], [Record::CloseWait(_)]), "{out:?}");
        let same = feed(&mut e, &[transition(20 * MS, 9, S, C, 8, 8)]);
        let [Record::Transition(t)] = &same[..] else {
            panic!("{same:?}")
        };
        assert_eq!(t.duration_ns, Some(17 * MS));
        assert!(report_due(&mut e, 30 * MS, None).is_empty());
        let out = feed(&mut e, &[transition(40 * MS, 9, S, C, 8, 9)]);
        let resolved = out
            .iter()
            .find_map(|r| match r {
                Record::CloseWaitResolved(r) => Some(r),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{out:?}"));
        assert_eq!(resolved.stuck_ms, 37);
    }

    /// An engine making timelines that found [`table`]`(222)`'s socket in CLOSE_WAIT at start.
    fn found_at_start() -> Engine {
        let mut e = engine(Options {
            timelines: true,
            ..Options::default()
        });
        e.preexisting(&table(222), MS);
        e
    }

    /// Issue 11 item 6: the kernel says whether the running task held the socket. An RST from
    /// `close()` (lock owned) names the closing process; a received RST (not owned) names
    /// nobody, though another process was running.
    #[test]
    fn the_socket_lock_decides_the_owner_of_an_abrupt_close() {
        let opts = Options {
            transitions: true,
            timelines: true,
            ..Options::default()
        };
        let owned = |t: Transition, owned: bool| Transition {
            sock_owned: Some(owned),
            ..t
        };
        let mut e = engine(opts.clone());
        let out = feed(
            &mut e,
            &[
                owned(by(transition(MS, 1, S, C, 3, 1), 111, "client"), false),
                owned(by(transition(2 * MS, 1, S, C, 1, 7), 222, "server"), true),
                owned(by(transition(3 * MS, 2, C, S, 1, 7), 222, "server"), false),
            ],
        );
        let owners: Vec<_> = out
            .iter()
            .map(|r| match r {
                Record::Transition(t) => ("t", t.skaddr.to_string(), t.pid, t.sock_owned),
                Record::Timeline(t) => ("tl", t.skaddr.to_string(), t.pid, None),
                _ => panic!("{r:?}"),
            })
            .collect();
        assert_eq!(
            owners,
            [
                ("t", "0x1".into(), None, Some(false)),
                ("t", "0x1".into(), Some(222), Some(true)),
                ("tl", "0x1".into(), Some(222), None),
                ("t", "0x2".into(), None, Some(false)),
                ("tl", "0x2".into(), None, None),
            ]
        );
    }

    /// Issue 11 item 8: FIN_WAIT2 -> CLOSE rests in TIME_WAIT only after the peer's FIN, in
    /// FIN_WAIT2 (a timewait socket waiting for it) without; with an RST, in neither.
    #[test]
    fn an_active_close_rests_where_the_kernel_says() {
        let opts = Options {
            timelines: true,
            ..Options::default()
        };
        let path = |sk: u64, fin: Option<bool>| {
            let mut ts: Vec<Transition> = [(7, 2), (2, 1), (1, 4), (4, 5), (5, 7)]
                .iter()
                .enumerate()
                .map(|(i, &(o, n))| transition(i as u64 * MS, sk, C, S, o, n))
                .collect();
            ts[4].peer_fin = fin;
            ts
        };
        let last = |out: &[Record]| match out.last() {
            Some(Record::Timeline(t)) => {
                let s = t.states.last().unwrap();
                (s.state.name().into_owned(), s.inferred, t.outcome)
            }
            other => panic!("{other:?}"),
        };
        let active = crate::timeline::Outcome::ActiveClose;
        for (fin, state) in [
            (Some(true), "TIME_WAIT"),
            (Some(false), "FIN_WAIT2"),
            (None, "TIME_WAIT"),
        ] {
            let out = feed(&mut engine(opts.clone()), &path(1, fin));
            assert_eq!(last(&out), (state.into(), true, active), "{fin:?}");
        }
        let mut e = engine(opts);
        let mut out = Vec::new();
        let mut ts = path(1, Some(false));
        let close = ts.pop().unwrap();
        for t in ts {
            e.transition(t, &mut out);
        }
        let rst = Cause {
            error: None,
            reset_by: Some(crate::cause::ResetBy::Local),
        };
        e.transition_with_cause(close, Some(rst), &mut out);
        assert_eq!(last(&out), ("CLOSE".into(), false, active));
    }

    #[test]
    fn transition_records_carry_owner_context_and_duration() {
        let mut e = engine(Options::default());
        let out = feed(
            &mut e,
            &[
                by(transition(MS, 1, C, S, 7, 2), 50, "curl"),
                by(transition(3 * MS, 1, C, S, 2, 1), 60, "nginx"),
            ],
        );
        let [Record::Transition(a), Record::Transition(b)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (a.pid, a.comm.as_deref(), a.duration_ns),
            (Some(50), Some("curl"), None)
        );
        assert_eq!(a.skaddr, "0x1");
        assert_eq!(a.time, "1970-01-01T00:00:00.001000Z");
        // SYN_SENT -> ESTABLISHED runs in softirq: the owner stays the connecting process.
        assert_eq!(
            (b.pid, b.ctx_pid, b.ctx_comm.as_str()),
            (Some(50), 60, "nginx")
        );
        assert_eq!(b.duration_ns, Some(2 * MS));
    }

    /// Item 4 of issue 11: the owner is whoever holds the socket at the report, not the process
    /// a system call named earlier; with no holder, the report says why.
    #[test]
    fn alert_owner_is_the_holder_now_or_the_reason_there_is_none() {
        let mut e = engine(Options {
            close_wait_threshold_ns: MS,
            ..Options::default()
        });
        // connect() by 111, then the socket is passed to 222 (the only holder now).
        let client = [
            by(transition(MS, 9, C, S, 7, 2), 111, "passer"),
            by(transition(2 * MS, 9, C, S, 2, 1), 0, "swapper/0"),
            by(transition(3 * MS, 9, C, S, 1, 8), 0, "swapper/0"),
        ];
        feed(&mut e, &client);
        let mut t = table(222);
        t.entries[0].endpoints = client[0].endpoints();
        t.entries[0].holders.push(Owner {
            pid: 333,
            comm: "worker".into(),
            fd: Some(4),
        });
        t.placements.insert(
            222,
            crate::container::Placement {
                cgroup: Some("/docker/x".into()),
                container: Some("x".into()),
                pod_uid: None,
            },
        );
        let out = report_due(&mut e, 10 * MS, Some(&t));
        let [Record::CloseWait(a)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!((a.pid, a.fd, a.holders.len()), (Some(222), Some(7), 2));
        assert_eq!((a.netns, a.container.as_deref()), (Some(1), Some("x")));

        // Nobody holds it: no owner, and the reason.
        let mut e = engine(Options {
            close_wait_threshold_ns: MS,
            ..Options::default()
        });
        feed(&mut e, &client);
        let mut t = table(222);
        t.entries[0].endpoints = client[0].endpoints();
        t.entries[0].holders.clear();
        let out = report_due(&mut e, 10 * MS, Some(&t));
        let [Record::CloseWait(a)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!((a.pid, a.fd), (None, None), "not the connect() caller");
        assert_eq!(
            a.unowned.as_ref().map(|u| u.reason),
            Some(record::UnownedReason::NoHolder)
        );
    }

    /// A socket found in CLOSE_WAIT at start and then reset by its peer (softirq): its
    /// transition and timeline name the owner its report named.
    #[test]
    fn owner_found_at_start_names_later_transitions() {
        let mut e = found_at_start();
        report_due(&mut e, MS, Some(&table(222)));
        let out = feed(
            &mut e,
            &[by(transition(5 * MS, 9, S, C, 8, 7), 0, "swapper/0")],
        );
        let owners: Vec<Option<u32>> = out
            .iter()
            .filter_map(|r| match r {
                Record::Transition(t) => Some(t.pid),
                Record::Timeline(t) => Some(t.pid),
                Record::CloseWaitResolved(r) => Some(r.pid),
                _ => None,
            })
            .collect();
        assert_eq!(owners, [Some(222), Some(222), Some(222)], "{out:?}");
    }

    /// A socket found in CLOSE_WAIT at start and reported without a fresh table (the scan
    /// failed): its report names the start-up scan's owner, and so do its first transition
    /// (a close() by another thread of the process) and its resolution.
    #[test]
    fn owner_found_at_start_survives_its_first_transition() {
        let mut e = found_at_start();
        let out = report_due(&mut e, MS, None);
        let [Record::CloseWait(a)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!((a.pid, a.fd, a.holders.len()), (Some(222), Some(7), 0));
        let out = feed(
            &mut e,
            &[by(transition(5 * MS, 9, S, C, 8, 9), 222, "worker")],
        );
        let owners: Vec<_> = out
            .iter()
            .filter_map(|r| match r {
                Record::Transition(t) => Some(("t", t.pid, t.comm.clone(), None)),
                Record::CloseWaitResolved(r) => Some(("r", r.pid, r.comm.clone(), r.fd)),
                _ => None,
            })
            .collect();
        assert_eq!(
            owners,
            [
                ("t", Some(222), Some("worker".into()), None),
                ("r", Some(222), Some("server".into()), Some(7)),
            ]
        );
    }

    /// `--stuck FIN_WAIT2`: an orphan (no holder at its report) that the kernel moves into a
    /// timewait socket keeps the owner its timeline named (the close() caller), and its
    /// resolution names it after the timeline ended.
    #[test]
    fn a_followed_socket_keeps_its_timelines_owner() {
        let mut e = engine(Options {
            stuck: vec![(TcpState::FinWait2, MS)],
            ..Options::default()
        });
        feed(
            &mut e,
            &[
                by(transition(MS, 9, C, S, 7, 2), 111, "client"),
                by(transition(2 * MS, 9, C, S, 2, 1), 0, "swapper/0"),
                by(transition(3 * MS, 9, C, S, 1, 4), 111, "client"),
                by(transition(4 * MS, 9, C, S, 4, 5), 0, "swapper/0"),
            ],
        );
        let mut orphan = table(222);
        orphan.entries[0].endpoints = transition(0, 0, C, S, 1, 8).endpoints();
        orphan.entries[0].state = TcpState::FinWait2;
        orphan.entries[0].holders.clear();
        let out = report_due(&mut e, 10 * MS, Some(&orphan));
        let [Record::Stuck(report)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(report.pid, None, "an orphan");
        let Record::Digest(digest) = e.digest(10 * MS) else {
            panic!()
        };
        assert_eq!(digest.processes[0].pid, None);
        feed(
            &mut e,
            &[by(transition(20 * MS, 9, C, S, 5, 7), 0, "swapper/0")],
        );
        let Record::Digest(digest) = e.digest(20 * MS) else {
            panic!()
        };
        assert_eq!(
            digest.processes[0].pid,
            Some(111),
            "the timeline's last word"
        );
        let followed = e.followed(false);
        let mut out = Vec::new();
        e.recheck(&followed, &SocketTable::default(), 30 * MS, &mut out);
        let [Record::StuckResolved(resolved)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (resolved.pid, resolved.new_state),
            (Some(111), TcpState::Close)
        );
    }

    #[test]
    fn close_wait_alert_names_the_holder_from_the_socket_table() {
        let mut e = engine(Options {
            close_wait_threshold_ns: 100 * MS,
            ..Options::default()
        });
        feed(&mut e, &stuck_server());
        assert!(e.due(50 * MS).is_empty());
        let mut out = report_due(&mut e, 103 * MS, Some(&table(222)));
        let [Record::CloseWait(alert)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (alert.pid, alert.comm.as_deref(), alert.fd),
            (Some(222), Some("server"), Some(7))
        );
        assert_eq!(
            (alert.age_ms, alert.recv_q, alert.age_at_least),
            (100, Some(12), false)
        );

        out.clear();
        e.transition(
            by(transition(500 * MS, 9, S, C, 8, 9), 222, "server"),
            &mut out,
        );
        let resolved = out.iter().find_map(|r| match r {
            Record::CloseWaitResolved(r) => Some(r),
            _ => None,
        });
        let resolved = resolved.expect("resolved record");
        // close() names the process, not the fd: the report's fd is kept.
        assert_eq!(
            (resolved.pid, resolved.fd, resolved.stuck_ms),
            (Some(222), Some(7), 497)
        );
        assert_eq!(e.summary().close_wait_alerts, 1);
        assert_eq!(e.summary().close_wait_resolved, 1);
    }

    #[test]
    fn alert_without_a_table_is_still_emitted() {
        let mut e = stuck_engine();
        let out = report_due(&mut e, 10 * MS, None);
        let [Record::CloseWait(alert)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(alert.pid, None, "unknown rather than the softirq's task");
    }

    #[test]
    fn finish_flushes_open_timelines_and_counts() {
        let mut e = engine(Options {
            timelines: true,
            transitions: false,
            ..Options::default()
        });
        let out = feed(
            &mut e,
            &[
                transition(MS, 1, C, S, 7, 2),
                transition(MS, 2, C, S, 7, 2),
                transition(2 * MS, 2, C, S, 2, 7),
            ],
        );
        assert_eq!(
            out.len(),
            1,
            "one finished timeline, no transitions: {out:?}"
        );
        e.decode_error();
        let mut out = Vec::new();
        let summary = e.finish(9 * MS, 3, Some(4), &mut out);
        let [Record::Timeline(open)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(open.outcome.name(), "open");
        assert_eq!(open.ts_ns, 9 * MS);
        assert_eq!(
            (summary.events, summary.decode_errors, summary.timelines),
            (4, 1, 2)
        );
        assert_eq!(
            (summary.lost_ringbuf, summary.recursion_misses),
            (3, Some(4))
        );
    }

    /// Found by `cargo xtask fuzz decode`: absurd timestamps overflowed the total duration.
    #[test]
    fn absurd_timestamps_do_not_overflow() {
        let mut e = engine(Options {
            timelines: true,
            ..Options::default()
        });
        let out = feed(
            &mut e,
            &[
                transition(0, 1, C, S, 7, 2),
                transition(u64::MAX - 1, 1, C, S, 2, 1),
                transition(u64::MAX, 1, C, S, 1, 7),
                // Time going backwards gives a zero duration, never a wrapped one.
                transition(5, 2, C, S, 7, 2),
                transition(1, 2, C, S, 2, 7),
            ],
        );
        let totals: Vec<Option<u64>> = out
            .iter()
            .filter_map(|r| match r {
                Record::Timeline(t) => Some(t.duration_ns),
                _ => None,
            })
            .collect();
        assert_eq!(totals, [Some(u64::MAX), Some(0)]);
    }

    #[test]
    fn digest_counts_reported_sockets_per_process() {
        let mut e = stuck_engine();
        report_due(&mut e, 10 * MS, Some(&table(222)));
        let Record::Digest(d) = e.digest(1000 * MS) else {
            panic!()
        };
        assert_eq!(d.stuck, 1);
        assert_eq!(d.processes[0].pid, Some(222));
        assert_eq!(d.processes[0].oldest_age_ms, 997);
    }
}
