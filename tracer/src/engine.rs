//! Turns decoded transitions into output records: owner attribution, durations, timelines,
//! CLOSE_WAIT alerts and digests. Pure: time comes in as arguments and the socket table is
//! handed in, so every path is tested from recorded streams without root.

use std::collections::HashSet;

use crate::{
    close_wait::{self, Detector, Resolved, SockId, Stuck},
    event::{TcpState, Transition},
    owner::SocketTable,
    record::{
        self, CloseWaitRecord, CloseWaitResolvedRecord, DigestProcess, DigestRecord, Record,
        Summary, TimelineRecord, TransitionRecord,
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
    /// Keep only sockets owned by these processes (empty: all).
    pub pids: HashSet<u32>,
    pub close_wait_threshold_ns: u64,
    pub max_sockets: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            transitions: true,
            timelines: false,
            pids: HashSet::new(),
            close_wait_threshold_ns: 5_000_000_000,
            max_sockets: 262_144,
        }
    }
}

pub struct Engine {
    opts: Options,
    clock: WallClock,
    tracker: Tracker,
    detector: Detector,
    summary: Summary,
}

impl Engine {
    pub fn new(opts: Options, clock: WallClock) -> Self {
        Self {
            tracker: Tracker::new(opts.max_sockets),
            detector: Detector::new(opts.close_wait_threshold_ns),
            opts,
            clock,
            summary: Summary::default(),
        }
    }

    pub fn clock(&self) -> WallClock {
        self.clock
    }

    /// Counters so far (`ts_ns`/`time` are filled by [`Engine::finish`]).
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Sockets tracked now.
    pub fn live_sockets(&self) -> usize {
        self.tracker.len()
    }

    /// A record that could not be decoded.
    pub fn decode_error(&mut self) {
        self.summary.events += 1;
        self.summary.decode_errors += 1;
    }

    /// Records the output could not take.
    pub fn output_dropped(&mut self, n: u64) {
        self.summary.output_dropped += n;
    }

    /// Feeds one transition. It is taken by value: its task name moves into the record.
    pub fn transition(&mut self, t: Transition, out: &mut Vec<Record>) {
        self.summary.events += 1;
        let evicted_before = self.tracker.evicted();
        let mut applied = self.tracker.apply(&t);
        if self.tracker.evicted() != evicted_before {
            self.summary.evicted = self.tracker.evicted();
        }
        if let Some(owner) = &applied.owner {
            // Owners learnt from system calls also name CLOSE_WAIT sockets (looked up first:
            // most sockets are not in CLOSE_WAIT, and the owner is not cloned for those).
            let id = SockId::Kernel(t.skaddr);
            if self.detector.get(id).is_some() {
                self.detector.update(id, Some(owner.clone()), None);
            }
        }
        let resolved = self.detector.observe(&t);
        if self.opts.transitions && self.wanted(applied.owner.as_ref().map(|o| o.pid)) {
            self.summary.transitions += 1;
            // The owner is needed again below only when a CLOSE_WAIT report is resolved.
            let owner = if resolved.is_some() {
                applied.owner.clone()
            } else {
                applied.owner.take()
            };
            out.push(Record::Transition(TransitionRecord {
                ts_ns: t.ts_ns,
                time: self.clock.rfc3339(t.ts_ns),
                skaddr: record::skaddr(t.skaddr),
                family: t.family,
                laddr: t.laddr,
                lport: t.lport,
                raddr: t.raddr,
                rport: t.rport,
                old_state: t.old,
                new_state: t.new,
                duration_ns: applied.duration_ns,
                pid: owner.as_ref().map(|o| o.pid),
                comm: owner.map(|o| o.comm),
                ctx_pid: t.task.pid,
                ctx_comm: t.task.comm,
                cpu: t.cpu,
            }));
        }
        if let Some(resolved) = resolved {
            self.push_resolved(resolved, applied.owner.as_ref(), out);
        }
        for timeline in applied.finished {
            self.push_timeline(&timeline, t.ts_ns, out);
        }
    }

    /// Adds the sockets already in CLOSE_WAIT when the tracer starts.
    pub fn preexisting(&mut self, table: &SocketTable, now_ns: u64) {
        for entry in table.in_state(TcpState::CloseWait) {
            self.detector.add_preexisting(
                entry.inode,
                entry.netns,
                entry.endpoints,
                now_ns,
                entry.owner.clone(),
                entry.recv_q,
            );
        }
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
            let entry = table.and_then(|t| t.find(&stuck.endpoints, TcpState::CloseWait));
            let owner = entry.and_then(|e| e.owner.clone()).or_else(|| match id {
                SockId::Kernel(skaddr) => self.tracker.owner(skaddr).cloned(),
                SockId::Preexisting { .. } => None,
            });
            if let (Some(owner), SockId::Kernel(skaddr)) = (&owner, id) {
                self.tracker.set_owner(skaddr, owner.clone());
            }
            self.detector.update(id, owner, entry.map(|e| e.recv_q));
            let Some(stuck) = self.detector.get(id) else {
                continue;
            };
            if !self.wanted(stuck.owner.as_ref().map(|o| o.pid)) {
                continue;
            }
            self.summary.close_wait_alerts += 1;
            out.push(Record::CloseWait(close_wait_record(
                stuck,
                now_ns,
                &self.clock,
            )));
        }
    }

    /// The CLOSE_WAIT digest, grouped by process.
    pub fn digest(&self, now_ns: u64) -> Record {
        let reported: Vec<&Stuck> = self
            .detector
            .reported()
            .filter(|s| self.wanted(s.owner.as_ref().map(|o| o.pid)))
            .collect();
        let processes = close_wait::digest(reported.iter().copied(), now_ns)
            .into_iter()
            .map(|g| DigestProcess {
                pid: g.pid,
                comm: g.comm,
                count: g.count,
                oldest_age_ms: whole_ms(g.oldest_ns),
            })
            .collect();
        Record::Digest(DigestRecord {
            ts_ns: now_ns,
            time: self.clock.rfc3339(now_ns),
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
        recursion_misses: u64,
        out: &mut Vec<Record>,
    ) -> Summary {
        for timeline in self.tracker.flush() {
            self.push_timeline(&timeline, now_ns, out);
        }
        self.summary.ts_ns = now_ns;
        self.summary.time = self.clock.rfc3339(now_ns);
        self.summary.lost_ringbuf = lost_ringbuf;
        self.summary.recursion_misses = recursion_misses;
        self.summary.evicted = self.tracker.evicted();
        self.summary.clone()
    }

    fn wanted(&self, pid: Option<u32>) -> bool {
        self.opts.pids.is_empty() || pid.is_some_and(|p| self.opts.pids.contains(&p))
    }

    fn push_timeline(&mut self, tl: &Timeline, ts_ns: u64, out: &mut Vec<Record>) {
        if !self.opts.timelines || !self.wanted(tl.owner.as_ref().map(|o| o.pid)) {
            return;
        }
        self.summary.timelines += 1;
        let durations: Vec<u64> = tl.steps.iter().filter_map(|s| s.duration_ns).collect();
        let e = &tl.endpoints;
        out.push(Record::Timeline(TimelineRecord {
            ts_ns,
            time: self.clock.rfc3339(ts_ns),
            skaddr: record::skaddr(tl.skaddr),
            family: e.family(),
            laddr: e.laddr,
            lport: e.lport,
            raddr: e.raddr,
            rport: e.rport,
            pid: tl.owner.as_ref().map(|o| o.pid),
            comm: tl.owner.as_ref().map(|o| o.comm.clone()),
            from_birth: tl.from_birth,
            outcome: tl.outcome,
            duration_ns: (!durations.is_empty()).then(|| durations.iter().sum()),
            states: tl.steps.clone(),
        }));
    }

    fn push_resolved(
        &mut self,
        r: Resolved,
        owner: Option<&crate::owner::Owner>,
        out: &mut Vec<Record>,
    ) {
        let owner = r.stuck.owner.as_ref().or(owner);
        if !self.wanted(owner.map(|o| o.pid)) {
            return;
        }
        self.summary.close_wait_resolved += 1;
        let e = &r.stuck.endpoints;
        out.push(Record::CloseWaitResolved(CloseWaitResolvedRecord {
            ts_ns: r.left_ns,
            time: self.clock.rfc3339(r.left_ns),
            skaddr: kernel_addr(r.stuck.id),
            pid: owner.map(|o| o.pid),
            comm: owner.map(|o| o.comm.clone()),
            fd: owner.and_then(|o| o.fd),
            family: e.family(),
            laddr: e.laddr,
            lport: e.lport,
            raddr: e.raddr,
            rport: e.rport,
            stuck_ms: whole_ms(r.stuck.age_ns(r.left_ns)),
            stuck_at_least: r.stuck.at_least,
            new_state: r.new_state,
        }));
    }
}

fn kernel_addr(id: SockId) -> Option<String> {
    match id {
        SockId::Kernel(addr) => Some(record::skaddr(addr)),
        SockId::Preexisting { .. } => None,
    }
}

fn close_wait_record(s: &Stuck, now_ns: u64, clock: &WallClock) -> CloseWaitRecord {
    let e = &s.endpoints;
    CloseWaitRecord {
        ts_ns: now_ns,
        time: clock.rfc3339(now_ns),
        skaddr: kernel_addr(s.id),
        pid: s.owner.as_ref().map(|o| o.pid),
        comm: s.owner.as_ref().map(|o| o.comm.clone()),
        fd: s.owner.as_ref().and_then(|o| o.fd),
        family: e.family(),
        laddr: e.laddr,
        lport: e.lport,
        raddr: e.raddr,
        rport: e.rport,
        age_ms: whole_ms(s.age_ns(now_ns)),
        age_at_least: s.at_least,
        recv_q: s.recv_q,
    }
}
