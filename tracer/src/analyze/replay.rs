//! Rebuilds what the live run produced by feeding its transitions, in order, to a fresh
//! [`Engine`] with the run's options. The live CLOSE_WAIT alerts are replayed at the same
//! instants, with the owner the live `/proc` scan found, because that owner is kept for the
//! socket and shows in its timeline: so the timelines come out exactly as the live run's.

use std::collections::HashMap;

use crate::{
    cause::Cause,
    close_wait::SockId,
    container::Placement,
    engine::{CauseSource, Engine, Options},
    event::{Task, TcpState, Transition},
    owner::{Owner, SocketEntry, SocketTable},
    record::{
        self, CloseWaitRecord, Header, Record, SkAddr, Summary, TimelineRecord, TransitionRecord,
        Unowned, UnownedReason,
    },
    units::WallClock,
};

impl From<&TransitionRecord> for Transition {
    fn from(r: &TransitionRecord) -> Self {
        Transition {
            ts_ns: r.ts_ns,
            skaddr: r.skaddr.0,
            family: r.family,
            protocol: r.protocol,
            laddr: r.laddr,
            lport: r.lport,
            raddr: r.raddr,
            rport: r.rport,
            old: r.old_state,
            new: r.new_state,
            task: Task {
                pid: r.ctx_pid,
                // Exports older than `ctx_tid` read it as 0: the process's main thread.
                tid: if r.ctx_tid == 0 { r.ctx_pid } else { r.ctx_tid },
                comm: r.ctx_comm.clone(),
                // Exports older than `ctx_thread` name the thread as its process.
                thread: r.ctx_thread.clone().unwrap_or_else(|| r.ctx_comm.clone()),
            },
            cpu: r.cpu,
            netns: r.netns.unwrap_or(0),
            // Exports older than these fields read them as null: the state pair decides the
            // owner and an active close rests in TIME_WAIT, as those exports said.
            sock_owned: r.sock_owned,
            // Not in the records, but told by them: with the lock owned, the running task
            // became the owner (`pid` = `ctx_pid`) unless it was a kernel thread.
            kernel_thread: (r.sock_owned == Some(true)).then_some(r.pid != Some(r.ctx_pid)),
            peer_fin: r.peer_fin,
            // Not in the records: only the live cause window uses them.
            orphan: None,
            ulp: None,
        }
    }
}

/// The engine options of a replay: every record, and the run's threshold and socket cap.
pub fn engine_options(header: Option<&Header>) -> Options {
    let mut opts = Options {
        transitions: true,
        timelines: true,
        ..Options::default()
    };
    if let Some(h) = header {
        opts.close_wait_threshold_ns = h.options.close_wait_threshold_ns;
        opts.stuck = h
            .options
            .stuck
            .iter()
            .map(|s| (s.state, s.threshold_ns))
            .collect();
        opts.max_sockets = h.options.max_sockets;
        // A run that traced causes recorded them on its transitions to CLOSE; an older one
        // did not, and called every abrupt end a reset.
        let traced_causes = h
            .kernel_features
            .as_ref()
            .is_some_and(|f| f.cause_tracepoints.is_some());
        opts.causes = if traced_causes {
            CauseSource::Given
        } else {
            CauseSource::Legacy
        };
    }
    opts
}

/// Timelines held for the check, waiting for their recorded (or rebuilt) twin. In an export
/// the twin comes within a few records; beyond this many, the stream is not one whose
/// timelines can be checked, and holding more would only grow memory.
const CHECK_WINDOW: usize = 4096;

pub struct Replay {
    engine: Engine,
    /// Kernel time the run started (its header), when known.
    start_ns: Option<u64>,
    /// CLOSE_WAIT alerts of one tick, replayed together when the tick's last one is read.
    alerts: Vec<CloseWaitRecord>,
    /// Synthetic inodes for sockets already in CLOSE_WAIT at start.
    next_inode: u64,
    /// Check the rebuilt timelines against the recorded ones (a complete export has them all).
    check: bool,
    recorded: HashMap<(SkAddr, u64), TimelineRecord>,
    rebuilt: HashMap<(SkAddr, u64), TimelineRecord>,
    mismatches: u64,
    /// The check gave up (more than [`CHECK_WINDOW`] timelines without a twin).
    gave_up: bool,
}

/// What checking the rebuilt timelines against the recorded ones found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Not checked: the stream is not a complete export.
    None,
    /// Checked: this many differ or have no twin.
    Mismatches(u64),
    /// Too many timelines had no twin: the recorded ones do not follow the transitions.
    GaveUp,
}

impl Replay {
    /// A replay with the options and clock of `header`; without one, the clock is `clock`.
    pub fn new(header: Option<&Header>, clock: WallClock) -> Self {
        Self {
            engine: Engine::new(engine_options(header), clock),
            start_ns: header.map(|h| h.monotonic_start_ns),
            alerts: Vec::new(),
            next_inode: 1,
            check: header.is_some_and(|h| h.complete),
            recorded: HashMap::new(),
            rebuilt: HashMap::new(),
            mismatches: 0,
            gave_up: false,
        }
    }

    /// Feeds one record read from the stream; rebuilt records go to `out`.
    pub fn feed(&mut self, record: &Record, out: &mut Vec<Record>) {
        if let Record::CloseWait(alert) | Record::Stuck(alert) = record {
            if self.alerts.first().is_some_and(|a| a.ts_ns != alert.ts_ns) {
                self.replay_alerts(out);
            }
            self.alerts.push(alert.as_ref().clone());
            return;
        }
        self.replay_alerts(out);
        match record {
            Record::Transition(r) => {
                let t = Transition::from(r);
                let cause = Cause {
                    error: r.error.clone(),
                    reset_by: r.reset_by,
                };
                let first = out.len();
                self.engine.transition_with_cause(t, Some(cause), out);
                self.check_rebuilt(&out[first..]);
            }
            Record::Timeline(r) if self.check => self.check_recorded(r),
            Record::StuckResolved(r) | Record::CloseWaitResolved(r) => self.replay_followed(r, out),
            _ => {}
        }
    }

    /// A resolution the live run found by re-reading the tables (a socket followed into a
    /// timewait socket): the same re-read, with the table the resolution describes.
    fn replay_followed(&mut self, r: &record::CloseWaitResolvedRecord, out: &mut Vec<Record>) {
        let endpoints = crate::event::Endpoints {
            laddr: r.laddr,
            lport: r.lport,
            raddr: r.raddr,
            rport: r.rport,
        };
        let ids: Vec<SockId> = self
            .engine
            .followed(true)
            .into_iter()
            .filter(|&id| match id {
                SockId::Tuple { endpoints: e, .. } => e == endpoints,
                // Resolved live from the tables after a loss (see `Engine::followed`).
                SockId::Kernel(skaddr) => r.skaddr.is_some_and(|s| s.0 == skaddr),
                SockId::Preexisting { .. } => false,
            })
            .collect();
        if ids.is_empty() {
            return;
        }
        let mut table = SocketTable {
            netns: r.netns.into_iter().collect(),
            ..SocketTable::default()
        };
        if r.new_state != TcpState::Close {
            table.entries.push(SocketEntry {
                endpoints,
                state: r.new_state,
                recv_q: 0,
                inode: 0,
                netns: r.netns.unwrap_or(0),
                holders: Vec::new(),
                times: None,
                fin_read: None,
            });
        }
        self.engine.recheck(&ids, &table, r.ts_ns, out);
    }

    /// Ends the replay as the live run ended (`summary`), or at `end_ns` when it has no summary.
    pub fn finish(
        mut self,
        summary: Option<&Summary>,
        end_ns: u64,
        out: &mut Vec<Record>,
    ) -> (Summary, Check) {
        self.replay_alerts(out);
        let (now, lost, misses) = summary.map_or((end_ns, 0, None), |s| {
            (s.ts_ns, s.lost_ringbuf, s.recursion_misses)
        });
        let first = out.len();
        let rebuilt = self.engine.finish(now, lost, misses, out);
        self.check_rebuilt(&out[first..]);
        let unmatched = self.recorded.len().max(self.rebuilt.len());
        let check = if self.gave_up {
            Check::GaveUp
        } else if self.check {
            Check::Mismatches(self.mismatches + unmatched as u64)
        } else {
            Check::None
        };
        (rebuilt, check)
    }

    /// Replays the alerts of one tick: the sockets found in CLOSE_WAIT at start first, then
    /// the due ones, with what the live socket table lookup found.
    fn replay_alerts(&mut self, out: &mut Vec<Record>) {
        let Some(first) = self.alerts.first() else {
            return;
        };
        let now = first.ts_ns;
        let alerts = std::mem::take(&mut self.alerts);
        let preexisting: Vec<&CloseWaitRecord> =
            alerts.iter().filter(|a| a.skaddr.is_none()).collect();
        if !preexisting.is_empty() {
            let start = self
                .start_ns
                .unwrap_or_else(|| now.saturating_sub(alerts[0].age_ms.saturating_mul(1_000_000)));
            let table = self.table(preexisting.into_iter());
            self.engine.preexisting(&table, start);
        }
        // A live alert with no receive queue found no socket table entry: its owner came from
        // the engine itself, as it will again.
        let table = self.table(alerts.iter().filter(|a| a.recv_q.is_some()));
        let due = self.engine.due(now);
        let first = out.len();
        self.engine.alert(&due, Some(&table), now, out);
        // What the live /proc scan saw beyond the owner (every holder, the namespace, the
        // cgroup) cannot be read again: the rebuilt report keeps what was recorded (nothing,
        // in exports older than these fields).
        for rebuilt in &mut out[first..] {
            let (Record::CloseWait(r) | Record::Stuck(r)) = rebuilt else {
                continue;
            };
            if let Some(a) = alerts.iter().find(|a| {
                (a.laddr, a.lport, a.raddr, a.rport, a.state)
                    == (r.laddr, r.lport, r.raddr, r.rport, r.state)
            }) {
                r.holders.clone_from(&a.holders);
                r.netns = a.netns;
                r.cgroup.clone_from(&a.cgroup);
                r.container.clone_from(&a.container);
                r.pod_uid.clone_from(&a.pod_uid);
                r.diagnosis.clone_from(&a.diagnosis);
                // The kernel's times are not in the stream: kept as recorded, with the age of a
                // socket found stuck at start, which the live run bounded with them.
                r.tcp_info.clone_from(&a.tcp_info);
                r.fin_read = a.fin_read;
                if a.age_at_least && a.tcp_info.is_some() {
                    r.age_ms = a.age_ms;
                }
            }
        }
    }

    /// The socket table the live run saw for these alerts: each socket with its holders, the
    /// listener of one waiting in an accept queue, and the owners' cgroups.
    fn table<'a>(&mut self, alerts: impl Iterator<Item = &'a CloseWaitRecord>) -> SocketTable {
        let mut table = SocketTable::default();
        for a in alerts {
            self.next_inode += 1;
            let netns = a.netns.unwrap_or(0);
            let holders: Vec<Owner> = if a.holders.is_empty() {
                a.pid
                    .map(|pid| Owner {
                        pid,
                        comm: a.comm.clone().unwrap_or_default(),
                        fd: a.fd,
                    })
                    .into_iter()
                    .collect()
            } else {
                a.holders.iter().map(Owner::from).collect()
            };
            let mut inode = self.next_inode;
            if let Some(Unowned {
                reason: UnownedReason::AcceptQueue,
                listener: Some(listener),
                listener_pid,
                listener_comm,
            }) = &a.unowned
            {
                inode = 0;
                table.entries.push(SocketEntry {
                    endpoints: crate::event::Endpoints {
                        laddr: listener.ip(),
                        lport: listener.port(),
                        raddr: std::net::Ipv4Addr::UNSPECIFIED.into(),
                        rport: 0,
                    },
                    state: TcpState::Listen,
                    recv_q: 0,
                    inode: u64::MAX - self.next_inode,
                    netns,
                    holders: listener_pid
                        .map(|pid| Owner {
                            pid,
                            comm: listener_comm.clone().unwrap_or_default(),
                            fd: None,
                        })
                        .into_iter()
                        .collect(),
                    times: None,
                    fin_read: None,
                });
            }
            if let Some(owner) = holders.first() {
                table.placements.insert(
                    owner.pid,
                    Placement {
                        cgroup: a.cgroup.clone(),
                        container: a.container.clone(),
                        pod_uid: a.pod_uid.clone(),
                    },
                );
            }
            table.entries.push(SocketEntry {
                endpoints: crate::event::Endpoints {
                    laddr: a.laddr,
                    lport: a.lport,
                    raddr: a.raddr,
                    rport: a.rport,
                },
                state: TcpState::CloseWait,
                recv_q: a.recv_q.unwrap_or(0),
                inode,
                netns,
                holders,
                times: None,
                fin_read: None,
            });
        }
        table
    }

    /// Stops checking when too many timelines wait for a twin: they count as mismatches.
    fn bound_check(&mut self) {
        let pending = self.recorded.len() + self.rebuilt.len();
        if pending > CHECK_WINDOW {
            self.gave_up = true;
            self.recorded.clear();
            self.rebuilt.clear();
            self.check = false;
        }
    }

    fn check_rebuilt(&mut self, records: &[Record]) {
        if !self.check {
            return;
        }
        for r in records {
            if let Record::Timeline(t) = r {
                let key = (t.skaddr, t.ts_ns);
                match self.recorded.remove(&key) {
                    Some(recorded) => self.mismatches += u64::from(recorded != *t),
                    None => {
                        self.rebuilt.insert(key, t.clone());
                    }
                }
            }
        }
        self.bound_check();
    }

    fn check_recorded(&mut self, t: &TimelineRecord) {
        let key = (t.skaddr, t.ts_ns);
        match self.rebuilt.remove(&key) {
            Some(rebuilt) => self.mismatches += u64::from(rebuilt != *t),
            None => {
                self.recorded.insert(key, t.clone());
            }
        }
        self.bound_check();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        record::RunOptions,
        testing::{by, transition},
    };

    fn header(threshold_ns: u64) -> Header {
        crate::export::header(
            RunOptions {
                close_wait_threshold_ns: threshold_ns,
                ..RunOptions::default()
            },
            WallClock::fixed(1_700_000_000_000_000_000),
            0,
            true,
        )
    }

    /// Runs transitions through a live-like engine (alerting at `tick_ns`, with `table` as
    /// the /proc scan), then replays its output, and returns both outputs.
    fn live_and_replay(
        transitions: &[Transition],
        tick_ns: u64,
        table: &SocketTable,
    ) -> (Vec<Record>, Vec<Record>) {
        let h = header(100);
        let mut live = Engine::new(
            engine_options(Some(&h)),
            WallClock::fixed(i128::from(h.wall_offset_ns)),
        );
        let mut recorded = Vec::new();
        for t in transitions {
            if t.ts_ns > tick_ns && recorded.iter().all(|r| !matches!(r, Record::CloseWait(_))) {
                let due = live.due(tick_ns);
                live.alert(&due, Some(table), tick_ns, &mut recorded);
            }
            live.transition(t.clone(), &mut recorded);
        }
        let end = transitions.last().map_or(0, |t| t.ts_ns) + 1;
        let summary = live.finish(end, 0, Some(0), &mut recorded);
        recorded.push(Record::Summary(Box::new(summary.clone())));

        let mut replay = Replay::new(Some(&h), WallClock::fixed(i128::from(h.wall_offset_ns)));
        let mut rebuilt = Vec::new();
        for r in &recorded {
            replay.feed(r, &mut rebuilt);
        }
        let (_, check) = replay.finish(Some(&summary), end, &mut rebuilt);
        assert_eq!(check, Check::Mismatches(0));
        recorded.pop();
        (recorded, rebuilt)
    }

    /// The owner (`pid`) of each timeline in `records`, in order.
    fn timeline_owners(records: &[Record]) -> Vec<Option<u32>> {
        records
            .iter()
            .filter_map(|r| match r {
                Record::Timeline(t) => Some(t.pid),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn transition_records_convert_back() {
        let t = by(
            transition(5, 0xffff_8881_0271_6f00, "[::1]:80", "[::1]:5000", 1, 8),
            42,
            "srv",
        );
        let t = Transition {
            sock_owned: Some(false),
            ..t
        };
        let mut out = Vec::new();
        Engine::new(Options::default(), WallClock::fixed(0)).transition(t.clone(), &mut out);
        let Some(Record::Transition(r)) = out.first() else {
            panic!("a transition record")
        };
        let mut back = Transition::from(r);
        back.task.tid = t.task.tid;
        assert_eq!(back, t);
    }

    /// MPTCP's worker (a kernel thread) holding the lock of an MPTCP socket the client's
    /// `connect()` and `close()` moved, and of one it alone moved: live, it owns neither; the
    /// replay, which has no kernel-thread field, reads it off the records and agrees.
    #[test]
    fn replays_kernel_thread_transitions_without_making_it_the_owner() {
        let (c, s) = ("127.0.0.1:5000", "127.0.0.1:80");
        let run_by = |ts, sk, local, remote, old, new, pid, kthread| {
            let mut t = by(transition(ts, sk, local, remote, old, new), pid, "task");
            t.sock_owned = Some(true);
            t.kernel_thread = Some(kthread);
            t
        };
        let transitions = vec![
            run_by(10, 0xa, c, s, 7, 2, 7, false),
            run_by(20, 0xa, c, s, 2, 1, 7, false),
            run_by(30, 0xb, s, c, 10, 1, 99, true),
            run_by(40, 0xa, c, s, 1, 4, 7, false),
            run_by(50, 0xa, c, s, 4, 5, 99, true),
            run_by(60, 0xb, s, c, 1, 8, 99, true),
            run_by(70, 0xa, c, s, 5, 7, 99, true),
            run_by(80, 0xb, s, c, 8, 9, 99, true),
            run_by(90, 0xb, s, c, 9, 7, 99, true),
        ];
        let (recorded, rebuilt) = live_and_replay(&transitions, 1_000, &SocketTable::default());
        assert_eq!(recorded, rebuilt);
        assert_eq!(timeline_owners(&rebuilt), vec![Some(7), None]);
    }

    /// A server socket in CLOSE_WAIT whose owner only the /proc scan knows, then reset: its
    /// timeline names that owner, and so must the replay's.
    #[test]
    fn replays_alert_owners_into_timelines() {
        let (s, c) = ("127.0.0.1:80", "127.0.0.1:5000");
        let transitions = vec![
            transition(10, 0xb, s, c, 3, 1),
            transition(20, 0xb, s, c, 1, 8),
            transition(500, 0xb, s, c, 8, 7),
            transition(600, 0xc, c, s, 2, 1),
        ];
        let table = SocketTable {
            entries: vec![SocketEntry {
                endpoints: transitions[0].endpoints(),
                state: TcpState::CloseWait,
                recv_q: 12,
                inode: 99,
                netns: 1,
                holders: vec![Owner {
                    pid: 4242,
                    comm: "leaky".into(),
                    fd: Some(7),
                }],
                times: None,
                fin_read: None,
            }],
            ..SocketTable::default()
        };
        let (recorded, rebuilt) = live_and_replay(&transitions, 300, &table);
        assert_eq!(recorded, rebuilt);
        assert_eq!(timeline_owners(&rebuilt), vec![Some(4242), None]);
    }

    #[test]
    fn replays_sockets_in_close_wait_at_start() {
        let mut live = Engine::new(engine_options(None), WallClock::fixed(0));
        let entry = SocketEntry {
            endpoints: transition(0, 0, "127.0.0.1:80", "127.0.0.1:6000", 8, 8).endpoints(),
            state: TcpState::CloseWait,
            recv_q: 0,
            inode: 5,
            netns: 1,
            holders: Vec::new(),
            times: None,
            fin_read: None,
        };
        let table = SocketTable {
            entries: vec![entry],
            ..SocketTable::default()
        };
        live.preexisting(&table, 1_000);
        let mut recorded = Vec::new();
        let due = live.due(1_100);
        live.alert(&due, Some(&table), 1_100, &mut recorded);
        live.transition(
            by(
                transition(2_000_000_000, 0xd, "127.0.0.1:80", "127.0.0.1:6000", 8, 9),
                7,
                "app",
            ),
            &mut recorded,
        );
        let mut h = header(5_000_000_000);
        h.monotonic_start_ns = 1_000;
        h.wall_offset_ns = 0;
        let mut replay = Replay::new(Some(&h), WallClock::fixed(0));
        let mut rebuilt = Vec::new();
        for r in &recorded {
            replay.feed(r, &mut rebuilt);
        }
        assert_eq!(
            rebuilt.iter().map(Record::type_name).collect::<Vec<_>>(),
            vec!["close_wait", "transition", "close_wait_resolved"]
        );
        assert_eq!(recorded, rebuilt);
    }
}
