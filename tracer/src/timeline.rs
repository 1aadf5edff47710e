//! Per-connection timelines rebuilt from transitions. Pure: no clock, no I/O.
//!
//! A connection is keyed by the kernel address of its socket; CLOSE ends its timeline, so a
//! reused address starts a new one. Memory is bounded by the number of live sockets, with a
//! hard cap that evicts the oldest (and counts it).

use std::collections::{hash_map::Entry, BTreeMap};

use serde::{Deserialize, Serialize};

use crate::{
    cause::{Cause, ResetBy},
    event::{Endpoints, TcpState, Transition},
    hash::AddrMap,
    owner::Owner,
};

/// One state a connection was in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// The state.
    pub state: TcpState,
    /// When it entered the state (kernel monotonic ns); `None` if before the tracer saw it.
    pub enter_ns: Option<u64>,
    /// How long it stayed; `None` if unknown (first seen mid-state, or the last state).
    pub duration_ns: Option<u64>,
    /// The tracepoint never reports this state; it is inferred: the TIME_WAIT, or the FIN_WAIT2
    /// of a timewait socket still waiting for the peer's FIN, that a connection rests in
    /// after it left its full socket.
    pub inferred: bool,
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// We sent FIN first: FIN_WAIT1 -> FIN_WAIT2 -> TIME_WAIT.
    ActiveClose,
    /// The peer closed first: CLOSE_WAIT -> LAST_ACK -> CLOSE.
    PassiveClose,
    /// Both sent FIN at once: FIN_WAIT1 -> CLOSING -> TIME_WAIT.
    SimultaneousClose,
    /// An open connection jumped to CLOSE with an RST sent or received (`reset_by` says which
    /// side). In exports written before causes were traced: any open connection that jumped
    /// to CLOSE.
    Reset,
    /// An open connection killed by a timer (`TCP_USER_TIMEOUT`, keepalive, retransmission
    /// timeouts): the application got an error (`ETIMEDOUT`, or the ICMP error met on the
    /// way, such as `EHOSTUNREACH`) and no RST came from the peer. Keepalive sends an RST as it
    /// gives up (`reset_by: local`).
    Timeout,
    /// An open connection jumped to CLOSE with no RST sent or received and no error for the
    /// application, or only `ECONNABORTED` (`SOCK_DESTROY`, a timer killing a connection its
    /// application had already closed, or a kernel without the cause tracepoints).
    Aborted,
    /// SYN_SENT -> CLOSE (`error` tells refused from timed out).
    ConnectFailed,
    /// SYN_RECV -> CLOSE.
    HandshakeFailed,
    /// LISTEN -> CLOSE.
    ListenerClosed,
    /// Still alive when the tracer stopped (or its end was not seen).
    Open,
}

impl Outcome {
    /// Every outcome, in the order reports list them.
    pub const ALL: [Outcome; 10] = [
        Outcome::ActiveClose,
        Outcome::PassiveClose,
        Outcome::SimultaneousClose,
        Outcome::Reset,
        Outcome::Timeout,
        Outcome::Aborted,
        Outcome::ConnectFailed,
        Outcome::HandshakeFailed,
        Outcome::ListenerClosed,
        Outcome::Open,
    ];

    /// The outcome as the schema writes it: `active_close`, `reset`, ...
    pub fn name(self) -> &'static str {
        match self {
            Outcome::ActiveClose => "active_close",
            Outcome::PassiveClose => "passive_close",
            Outcome::SimultaneousClose => "simultaneous_close",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
            Outcome::Aborted => "aborted",
            Outcome::ConnectFailed => "connect_failed",
            Outcome::HandshakeFailed => "handshake_failed",
            Outcome::ListenerClosed => "listener_closed",
            Outcome::Open => "open",
        }
    }

    /// The outcome of a connection whose last transition was `old -> CLOSE`, with its cause.
    /// `legacy`: the stream predates causes, so an open connection that jumped to CLOSE is a
    /// `reset`, as such streams said.
    pub fn of_close(old: TcpState, cause: &Cause, legacy: bool) -> Outcome {
        match old {
            TcpState::FinWait2 | TcpState::TimeWait => Outcome::ActiveClose,
            TcpState::Closing => Outcome::SimultaneousClose,
            TcpState::LastAck => Outcome::PassiveClose,
            TcpState::SynSent => Outcome::ConnectFailed,
            TcpState::SynRecv | TcpState::NewSynRecv => Outcome::HandshakeFailed,
            TcpState::Listen => Outcome::ListenerClosed,
            _ if legacy => Outcome::Reset,
            // A received RST; an abort (`ss -K`: an RST sent and ECONNABORTED); a timer's
            // error, also when the kernel sent an RST as it gave up (keepalive does); an RST
            // sent by `close()` (no error: the application closed the socket itself).
            _ => match (cause.reset_by, cause.error.as_deref()) {
                (Some(ResetBy::Peer), _) | (Some(ResetBy::Local), None) => Outcome::Reset,
                (_, Some("ECONNABORTED")) | (None, None) => Outcome::Aborted,
                (_, Some(_)) => Outcome::Timeout,
            },
        }
    }
}

/// A connection's life, from the first transition seen to CLOSE (or the tracer's stop).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timeline {
    /// Kernel address of the socket (`struct sock *`).
    pub skaddr: u64,
    /// Its addresses and ports, as of its last transition.
    pub endpoints: Endpoints,
    /// Inode of its network namespace; 0 when not known.
    pub netns: u64,
    /// The first transition seen was the socket's birth (CLOSE -> x, LISTEN -> SYN_RECV, or
    /// LISTEN -> ESTABLISHED for an accepted MPTCP socket).
    pub from_birth: bool,
    /// The process that owns the socket, when known.
    pub owner: Option<Owner>,
    /// The states it went through, oldest first.
    pub steps: Vec<Step>,
    /// How it ended.
    pub outcome: Outcome,
}

/// What applying one transition told us.
#[derive(Debug, Default)]
pub struct Applied {
    /// Time spent in the old state, when known.
    pub duration_ns: Option<u64>,
    /// The socket's owner as known after this transition.
    pub owner: Option<Owner>,
    /// Timelines that ended: this socket's on CLOSE, and a stale one whose CLOSE was missed.
    pub finished: Vec<Timeline>,
}

struct Conn {
    seq: u64,
    endpoints: Endpoints,
    netns: u64,
    from_birth: bool,
    owner: Option<Owner>,
    /// When the socket entered its current state (kernel monotonic ns); `None` when it was
    /// first seen in it.
    entered_ns: Option<u64>,
    /// The states it went through, oldest first; empty when the tracker keeps no steps.
    steps: Vec<Step>,
}

impl Conn {
    /// A socket first seen in `t`: from its birth, or from the state it was in. With `steps`,
    /// its history starts (else it stays empty and unallocated).
    fn new(seq: u64, t: &Transition, born: bool, steps: bool) -> Self {
        let steps = if steps {
            // Room for a connection's whole life (five states from birth to its end, six for
            // a simultaneous close): the history never reallocates on the event loop.
            let mut history = Vec::with_capacity(6);
            if !born {
                history.push(Step {
                    state: t.old,
                    enter_ns: None,
                    duration_ns: None,
                    inferred: false,
                });
            }
            history
        } else {
            Vec::new()
        };
        Self {
            seq,
            endpoints: t.endpoints(),
            netns: t.netns,
            from_birth: born,
            owner: None,
            entered_ns: None,
            steps,
        }
    }

    fn into_timeline(mut self, skaddr: u64, outcome: Outcome) -> Timeline {
        if outcome == Outcome::Open {
            if let Some(last) = self.steps.last_mut() {
                last.duration_ns = None;
            }
        }
        Timeline {
            skaddr,
            endpoints: self.endpoints,
            netns: self.netns,
            from_birth: self.from_birth,
            owner: self.owner,
            steps: self.steps,
            outcome,
        }
    }
}

/// Live connections, keyed by socket address.
pub struct Tracker {
    /// Whether connections keep their states for timelines (else only what durations and
    /// owners need, and no timeline is made).
    steps: bool,
    conns: AddrMap<u64, Conn>,
    /// Creation order, for evicting the oldest at the cap.
    order: BTreeMap<u64, u64>,
    next_seq: u64,
    cap: usize,
    evicted: u64,
}

impl Tracker {
    /// A tracker of timelines holding at most `cap` sockets (at least 1).
    pub fn new(cap: usize) -> Self {
        Self::keeping_steps(cap, true)
    }

    /// A tracker holding at most `cap` sockets (at least 1) that makes timelines only when
    /// `steps` is true; without, it tracks only what durations and owners need, and
    /// [`Applied::finished`] and [`Tracker::flush`] are always empty.
    pub fn keeping_steps(cap: usize, steps: bool) -> Self {
        Self {
            steps,
            conns: AddrMap::default(),
            order: BTreeMap::new(),
            next_seq: 0,
            cap: cap.max(1),
            evicted: 0,
        }
    }

    /// Number of sockets tracked now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.conns.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Sockets dropped because the cap was reached.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The owner known for a live socket: kept here while the socket has a timeline (what
    /// system calls told, and a report's first holder copied in); the CLOSE_WAIT detector reads
    /// it through `Stuck::owner` when its `OwnerFrom` says so.
    pub fn owner(&self, skaddr: u64) -> Option<&Owner> {
        self.conns.get(&skaddr).and_then(|c| c.owner.as_ref())
    }

    /// Records an owner found some other way (a /proc scan).
    pub fn set_owner(&mut self, skaddr: u64, owner: Owner) {
        if let Some(conn) = self.conns.get_mut(&skaddr) {
            conn.owner = Some(owner);
        }
    }

    /// Applies one transition.
    ///
    /// # Panics
    ///
    /// Never: the socket's entry is inserted before it is looked up.
    pub fn apply(&mut self, t: &Transition) -> Applied {
        self.apply_known(t, None)
    }

    /// Applies one transition of a socket whose owner was found some other way (the
    /// start-up scan) when the tracer has not learnt one itself.
    ///
    /// # Panics
    ///
    /// Never: the socket's entry is inserted before it is looked up.
    pub fn apply_known(&mut self, t: &Transition, known: Option<&Owner>) -> Applied {
        let mut applied = Applied::default();
        // `CLOSE -> CLOSE` of a tracked socket (its real CLOSE was lost) ends it below.
        let stays = t.old == t.new && t.new != TcpState::Close;
        if t.old == TcpState::Close
            && t.new == TcpState::Close
            && !self.conns.contains_key(&t.skaddr)
        {
            // A socket already closed (its CLOSE ended its timeline): nothing to track.
            applied.owner = crate::sock_state::in_owner_context(t)
                .then(|| Owner::from_task(&t.task))
                .or_else(|| known.cloned());
            return applied;
        }
        let born = is_birth(t);
        if born {
            // A birth on an address still tracked means its CLOSE was never seen.
            if let Some(stale) = self.remove(t.skaddr).filter(|_| self.steps) {
                applied
                    .finished
                    .push(stale.into_timeline(t.skaddr, Outcome::Open));
            }
        }
        if self.conns.len() >= self.cap && !self.conns.contains_key(&t.skaddr) {
            self.make_room();
        }
        // One lookup per event: the entry is found or made in place.
        let conn = match self.conns.entry(t.skaddr) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.order.insert(seq, t.skaddr);
                e.insert(Conn::new(seq, t, born, self.steps))
            }
        };
        conn.endpoints = t.endpoints();
        conn.netns = t.netns;
        if conn.owner.is_none() {
            conn.owner = known.cloned();
        }
        if crate::sock_state::in_owner_context(t) {
            conn.owner = Some(Owner::from_task(&t.task));
        }
        applied.owner.clone_from(&conn.owner);
        if stays {
            // No change of state: no step; the time in the state runs on.
            applied.duration_ns = conn.entered_ns.map(|enter| t.ts_ns.saturating_sub(enter));
            return applied;
        }

        if let Some(enter) = conn.entered_ns {
            let duration = t.ts_ns.saturating_sub(enter);
            applied.duration_ns = Some(duration);
            if let Some(last) = conn.steps.last_mut() {
                last.duration_ns = Some(duration);
            }
        }
        conn.entered_ns = Some(t.ts_ns);
        if !self.steps {
            if t.new == TcpState::Close {
                self.remove(t.skaddr);
            }
            return applied;
        }
        if t.new == TcpState::Close {
            // Without its cause yet: the engine completes the outcome when it knows it.
            let outcome = Outcome::of_close(t.old, &Cause::default(), false);
            let state = match outcome {
                // Only TCP sockets rest in a timewait socket (an MPTCP socket closes for good).
                Outcome::ActiveClose | Outcome::SimultaneousClose
                    if t.protocol == tracer_common::IPPROTO_TCP =>
                {
                    crate::sock_state::resting_state(t.old, t.peer_fin)
                }
                _ => TcpState::Close,
            };
            let mut conn = self.remove(t.skaddr).expect("present");
            conn.steps.push(Step {
                state,
                enter_ns: Some(t.ts_ns),
                duration_ns: None,
                inferred: state != TcpState::Close,
            });
            applied.finished.push(conn.into_timeline(t.skaddr, outcome));
        } else {
            conn.steps.push(Step {
                state: t.new,
                enter_ns: Some(t.ts_ns),
                duration_ns: None,
                inferred: false,
            });
        }
        applied
    }

    /// Ends every live timeline as `open` (the tracer is stopping), oldest first.
    pub fn flush(&mut self) -> Vec<Timeline> {
        let order = std::mem::take(&mut self.order);
        if !self.steps {
            self.conns.clear();
            return Vec::new();
        }
        order
            .into_values()
            .filter_map(|skaddr| {
                self.conns
                    .remove(&skaddr)
                    .map(|c| c.into_timeline(skaddr, Outcome::Open))
            })
            .collect()
    }

    /// Evicts the oldest sockets until one more fits under the cap.
    fn make_room(&mut self) {
        while self.conns.len() >= self.cap {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.conns.remove(&oldest);
            self.evicted += 1;
        }
    }

    fn remove(&mut self, skaddr: u64) -> Option<Conn> {
        let conn = self.conns.remove(&skaddr)?;
        self.order.remove(&conn.seq);
        Some(conn)
    }
}

/// Is `t` the first transition of a socket: out of CLOSE, or a child leaving the LISTEN state
/// it was cloned in (a TCP request into SYN_RECV; an accepted MPTCP socket straight into
/// ESTABLISHED)? `CLOSE -> CLOSE` and `LISTEN -> LISTEN` change nothing, and a listener
/// leaves LISTEN only for CLOSE.
pub(crate) fn is_birth(t: &Transition) -> bool {
    let out_of = |state| t.old == state && t.new != state;
    out_of(TcpState::Close) || (out_of(TcpState::Listen) && t.new != TcpState::Close)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{
        by,
        state::{
            CLOSE, CLOSE_WAIT, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, LISTEN,
            SYN_RECV, SYN_SENT,
        },
        transition, C, MS, S,
    };

    const ANY: &str = "0.0.0.0:0";

    /// Feeds `(old, new)` pairs at 1 ms steps to one socket; returns what finished.
    fn run(
        tracker: &mut Tracker,
        sk: u64,
        local: &str,
        remote: &str,
        path: &[(u32, u32)],
    ) -> Vec<Timeline> {
        let mut done = Vec::new();
        for (i, &(old, new)) in path.iter().enumerate() {
            let ts = (i as u64 + 1) * 1_000_000;
            done.extend(
                tracker
                    .apply(&transition(ts, sk, local, remote, old, new))
                    .finished,
            );
        }
        done
    }

    fn names(tl: &Timeline) -> Vec<String> {
        tl.steps
            .iter()
            .map(|s| format!("{}{}", s.state.name(), if s.inferred { "*" } else { "" }))
            .collect()
    }

    /// Local, remote, transitions, expected outcome, expected states.
    type Case = (
        &'static str,
        &'static str,
        &'static [(u32, u32)],
        Outcome,
        &'static [&'static str],
    );

    #[test]
    fn every_outcome() {
        let cases: [Case; 8] = [
            (
                C,
                S,
                &[
                    (CLOSE, SYN_SENT),
                    (SYN_SENT, ESTABLISHED),
                    (ESTABLISHED, FIN_WAIT1),
                    (FIN_WAIT1, FIN_WAIT2),
                    (FIN_WAIT2, CLOSE),
                ],
                Outcome::ActiveClose,
                &[
                    "SYN_SENT",
                    "ESTABLISHED",
                    "FIN_WAIT1",
                    "FIN_WAIT2",
                    "TIME_WAIT*",
                ],
            ),
            (
                S,
                C,
                &[
                    (LISTEN, SYN_RECV),
                    (SYN_RECV, ESTABLISHED),
                    (ESTABLISHED, CLOSE_WAIT),
                    (CLOSE_WAIT, LAST_ACK),
                    (LAST_ACK, CLOSE),
                ],
                Outcome::PassiveClose,
                &["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"],
            ),
            (
                C,
                S,
                &[
                    (CLOSE, SYN_SENT),
                    (SYN_SENT, ESTABLISHED),
                    (ESTABLISHED, FIN_WAIT1),
                    (FIN_WAIT1, CLOSING),
                    (CLOSING, CLOSE),
                ],
                Outcome::SimultaneousClose,
                &[
                    "SYN_SENT",
                    "ESTABLISHED",
                    "FIN_WAIT1",
                    "CLOSING",
                    "TIME_WAIT*",
                ],
            ),
            (
                C,
                S,
                &[
                    (CLOSE, SYN_SENT),
                    (SYN_SENT, ESTABLISHED),
                    (ESTABLISHED, CLOSE),
                ],
                Outcome::Aborted,
                &["SYN_SENT", "ESTABLISHED", "CLOSE"],
            ),
            (
                S,
                C,
                &[
                    (LISTEN, SYN_RECV),
                    (SYN_RECV, ESTABLISHED),
                    (ESTABLISHED, CLOSE_WAIT),
                    (CLOSE_WAIT, CLOSE),
                ],
                Outcome::Aborted,
                &["SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "CLOSE"],
            ),
            (
                C,
                S,
                &[(CLOSE, SYN_SENT), (SYN_SENT, CLOSE)],
                Outcome::ConnectFailed,
                &["SYN_SENT", "CLOSE"],
            ),
            (
                S,
                C,
                &[(LISTEN, SYN_RECV), (SYN_RECV, CLOSE)],
                Outcome::HandshakeFailed,
                &["SYN_RECV", "CLOSE"],
            ),
            (
                S,
                ANY,
                &[(CLOSE, LISTEN), (LISTEN, CLOSE)],
                Outcome::ListenerClosed,
                &["LISTEN", "CLOSE"],
            ),
        ];
        for (local, remote, path, outcome, states) in cases {
            let mut tracker = Tracker::new(16);
            let done = run(&mut tracker, 0xa, local, remote, path);
            assert_eq!(done.len(), 1, "{path:?}");
            let tl = &done[0];
            assert_eq!(tl.outcome, outcome, "{path:?}");
            assert_eq!(names(tl), states, "{path:?}");
            assert!(tl.from_birth);
            // 1 ms between transitions: every state but the last has a known 1 ms duration.
            let (last, rest) = tl.steps.split_last().unwrap();
            assert!(
                rest.iter().all(|s| s.duration_ns == Some(1_000_000)),
                "{tl:?}"
            );
            assert_eq!(last.duration_ns, None);
            assert!(tracker.is_empty(), "a finished timeline is dropped");
        }
    }

    /// An open connection that jumped to CLOSE: a reset only with an RST seen, a timeout with
    /// an error and no RST; the state-driven endings whatever the cause.
    #[test]
    fn outcome_of_an_abrupt_close_follows_its_cause() {
        let cause = |error: Option<&str>, reset_by| Cause {
            error: error.map(str::to_owned),
            reset_by,
        };
        let est = TcpState::Established;
        let peer = Some(crate::cause::ResetBy::Peer);
        assert_eq!(
            Outcome::of_close(est, &cause(Some("ECONNRESET"), peer), false),
            Outcome::Reset
        );
        assert_eq!(
            Outcome::of_close(est, &cause(None, Some(crate::cause::ResetBy::Local)), false),
            Outcome::Reset
        );
        assert_eq!(
            Outcome::of_close(est, &cause(Some("ETIMEDOUT"), None), false),
            Outcome::Timeout
        );
        assert_eq!(
            Outcome::of_close(est, &cause(Some("EHOSTUNREACH"), None), false),
            Outcome::Timeout
        );
        // Keepalive gives up with an RST of its own.
        assert_eq!(
            Outcome::of_close(
                est,
                &cause(Some("ETIMEDOUT"), Some(crate::cause::ResetBy::Local)),
                false
            ),
            Outcome::Timeout
        );
        assert_eq!(
            Outcome::of_close(est, &cause(Some("ECONNABORTED"), None), false),
            Outcome::Aborted
        );
        assert_eq!(
            Outcome::of_close(est, &Cause::default(), false),
            Outcome::Aborted
        );
        assert_eq!(
            Outcome::of_close(est, &Cause::default(), true),
            Outcome::Reset
        );
        assert_eq!(
            Outcome::of_close(TcpState::SynSent, &cause(Some("ECONNREFUSED"), peer), false),
            Outcome::ConnectFailed
        );
        assert_eq!(
            Outcome::of_close(TcpState::LastAck, &cause(None, peer), false),
            Outcome::PassiveClose
        );
        for o in Outcome::ALL {
            assert_eq!(
                serde_json::to_value(o).unwrap(),
                serde_json::Value::from(o.name())
            );
        }
    }

    #[test]
    fn first_seen_mid_life_gets_no_invented_durations() {
        let mut tracker = Tracker::new(16);
        let applied = tracker.apply(&transition(5, 1, S, C, ESTABLISHED, CLOSE_WAIT));
        assert_eq!(applied.duration_ns, None);
        let applied = tracker.apply(&transition(9, 1, S, C, CLOSE_WAIT, LAST_ACK));
        assert_eq!(applied.duration_ns, Some(4));
        let done = tracker
            .apply(&transition(10, 1, S, C, LAST_ACK, CLOSE))
            .finished;
        let tl = &done[0];
        assert!(!tl.from_birth);
        assert_eq!(tl.steps[0].state, TcpState::Established);
        assert_eq!(
            (tl.steps[0].enter_ns, tl.steps[0].duration_ns),
            (None, None)
        );
        assert_eq!(tl.outcome, Outcome::PassiveClose);
    }

    #[test]
    fn reused_address_starts_a_new_timeline() {
        let mut tracker = Tracker::new(16);
        let first = run(
            &mut tracker,
            7,
            C,
            S,
            &[(CLOSE, SYN_SENT), (SYN_SENT, CLOSE)],
        );
        let second = run(
            &mut tracker,
            7,
            "127.0.0.1:40001",
            S,
            &[(CLOSE, SYN_SENT), (SYN_SENT, ESTABLISHED)],
        );
        assert_eq!(first.len(), 1);
        assert!(second.is_empty());
        let open = tracker.flush();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].endpoints.lport, 40001);
        assert_eq!(open[0].outcome, Outcome::Open);
        assert_eq!(names(&open[0]), ["SYN_SENT", "ESTABLISHED"]);
        assert_eq!(
            open[0].steps[1].duration_ns, None,
            "still running: no duration"
        );
    }

    #[test]
    fn a_birth_over_a_missed_close_ends_the_stale_timeline() {
        let mut tracker = Tracker::new(16);
        run(
            &mut tracker,
            7,
            C,
            S,
            &[(CLOSE, SYN_SENT), (SYN_SENT, ESTABLISHED)],
        );
        let done = tracker
            .apply(&transition(50, 7, "127.0.0.1:40001", S, CLOSE, SYN_SENT))
            .finished;
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].endpoints.lport, 40000);
        assert_eq!(done[0].outcome, Outcome::Open);
        assert_eq!(tracker.len(), 1);
    }

    #[test]
    fn cap_evicts_the_oldest_and_counts() {
        let mut tracker = Tracker::new(2);
        for sk in 1..=3 {
            tracker.apply(&transition(sk, sk, C, S, CLOSE, SYN_SENT));
        }
        assert_eq!(tracker.len(), 2);
        assert_eq!(tracker.evicted(), 1);
        let left: Vec<u64> = tracker.flush().iter().map(|t| t.skaddr).collect();
        assert_eq!(left, [2, 3]);
    }

    /// At the cap, a tracked socket's next transition evicts nothing, and a birth on the
    /// address of a tracked socket (its CLOSE never seen) replaces it without evicting another.
    #[test]
    fn at_the_cap_only_a_new_socket_evicts() {
        let mut tracker = Tracker::new(2);
        tracker.apply(&transition(1, 1, C, S, CLOSE, SYN_SENT));
        tracker.apply(&transition(2, 2, C, S, CLOSE, SYN_SENT));
        tracker.apply(&transition(3, 1, C, S, SYN_SENT, ESTABLISHED));
        assert_eq!((tracker.len(), tracker.evicted()), (2, 0));
        let done = tracker
            .apply(&transition(4, 2, C, S, CLOSE, SYN_SENT))
            .finished;
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].outcome, Outcome::Open);
        assert_eq!((tracker.len(), tracker.evicted()), (2, 0));
        let left: Vec<u64> = tracker.flush().iter().map(|t| t.skaddr).collect();
        assert_eq!(left, [1, 2]);
    }

    #[test]
    fn owner_comes_only_from_syscall_transitions() {
        let mut tracker = Tracker::new(16);
        // Packet-driven transitions of a server socket run on top of the client.
        let a = tracker.apply(&by(transition(1, 9, S, C, LISTEN, SYN_RECV), 111, "client"));
        assert_eq!(a.owner, None);
        let a = tracker.apply(&by(
            transition(2, 9, S, C, SYN_RECV, ESTABLISHED),
            111,
            "client",
        ));
        assert_eq!(a.owner, None);
        let a = tracker.apply(&by(
            transition(3, 9, S, C, ESTABLISHED, CLOSE_WAIT),
            333,
            "apt-cache",
        ));
        assert_eq!(a.owner, None);
        // close() by the server.
        let a = tracker.apply(&by(
            transition(4, 9, S, C, CLOSE_WAIT, LAST_ACK),
            222,
            "server",
        ));
        assert_eq!(a.owner.as_ref().map(|o| o.pid), Some(222));
        // The final ACK arrives in softirq over someone else: the owner stays.
        let a = tracker.apply(&by(transition(5, 9, S, C, LAST_ACK, CLOSE), 444, "other"));
        assert_eq!(
            a.owner.as_ref().map(|o| (o.pid, o.comm.as_str())),
            Some((222, "server"))
        );
        assert_eq!(a.finished[0].owner.as_ref().map(|o| o.pid), Some(222));
    }

    /// Without steps the tracker gives every transition the same duration and owner as with
    /// them, and makes no timeline: sockets born and first seen mid-life, an address reused
    /// after a missed CLOSE, owners from system calls, and evictions at the cap.
    #[test]
    fn without_steps_durations_and_owners_are_the_same() {
        let stream = [
            by(transition(1, 1, C, S, CLOSE, SYN_SENT), 10, "client"),
            transition(2, 2, S, C, ESTABLISHED, CLOSE_WAIT),
            transition(4, 1, C, S, SYN_SENT, ESTABLISHED),
            by(transition(7, 2, S, C, CLOSE_WAIT, LAST_ACK), 20, "server"),
            transition(11, 3, S, ANY, LISTEN, SYN_RECV),
            transition(16, 2, S, C, LAST_ACK, CLOSE),
            by(
                transition(22, 1, C, S, ESTABLISHED, FIN_WAIT1),
                10,
                "client",
            ),
            transition(29, 3, S, ANY, SYN_RECV, ESTABLISHED),
            // A birth at an address whose CLOSE was missed.
            by(transition(37, 1, C, S, CLOSE, SYN_SENT), 30, "again"),
            transition(46, 4, C, S, FIN_WAIT1, FIN_WAIT2),
            transition(56, 1, C, S, SYN_SENT, CLOSE),
            transition(67, 3, S, ANY, ESTABLISHED, FIN_WAIT1),
            transition(79, 4, C, S, FIN_WAIT2, CLOSE),
        ];
        for cap in [2, 16] {
            let (mut full, mut lean) = (Tracker::new(cap), Tracker::keeping_steps(cap, false));
            let mut timelines = 0;
            for t in &stream {
                let (a, b) = (full.apply(t), lean.apply(t));
                assert_eq!((a.duration_ns, a.owner), (b.duration_ns, b.owner), "{t:?}");
                assert!(b.finished.is_empty());
                timelines += a.finished.len();
            }
            assert!(timelines > 0);
            assert_eq!(full.evicted(), lean.evicted());
            assert!(!full.flush().is_empty());
            assert!(lean.flush().is_empty());
        }
    }

    #[test]
    fn listener_spawns_child_sockets() {
        let mut tracker = Tracker::new(16);
        tracker.apply(&transition(1, 100, S, ANY, CLOSE, LISTEN));
        tracker.apply(&transition(2, 200, S, C, LISTEN, SYN_RECV));
        assert_eq!(tracker.len(), 2, "the child has its own timeline");
        let done = tracker
            .apply(&transition(3, 100, S, ANY, LISTEN, CLOSE))
            .finished;
        assert_eq!(done[0].outcome, Outcome::ListenerClosed);
        assert_eq!(tracker.len(), 1);
    }

    #[test]
    fn unknown_states_do_not_panic() {
        let mut tracker = Tracker::new(16);
        run(&mut tracker, 1, C, S, &[(CLOSE, 99), (99, 0), (0, CLOSE)]);
        run(&mut tracker, 2, C, S, &[(42, CLOSE)]);
        assert!(tracker.is_empty());
    }

    /// `X -> X`, as MPTCP reports for its sockets and subflows (`FIN_WAIT1 -> FIN_WAIT1` when
    /// it closes a subflow, `LISTEN -> LISTEN`, `CLOSE -> CLOSE` after the end), changes no
    /// state: no step, the time in the state runs on, and no timeline starts or ends.
    #[test]
    fn a_transition_to_the_same_state_changes_nothing() {
        let mut tracker = Tracker::new(16);
        let done = run(
            &mut tracker,
            1,
            C,
            S,
            &[
                (CLOSE, SYN_SENT),
                (SYN_SENT, ESTABLISHED),
                (ESTABLISHED, FIN_WAIT1),
                (FIN_WAIT1, FIN_WAIT1),
                (FIN_WAIT1, FIN_WAIT2),
                (FIN_WAIT2, FIN_WAIT2),
                (FIN_WAIT2, CLOSE),
                (CLOSE, CLOSE),
                (CLOSE, CLOSE),
            ],
        );
        assert_eq!(done.len(), 1, "{done:?}");
        assert_eq!(
            names(&done[0]),
            [
                "SYN_SENT",
                "ESTABLISHED",
                "FIN_WAIT1",
                "FIN_WAIT2",
                "TIME_WAIT*"
            ]
        );
        // FIN_WAIT1 from 3 ms to 5 ms, its self-transition at 4 ms in between.
        assert_eq!(done[0].steps[2].duration_ns, Some(2_000_000));
        assert!(tracker.is_empty());

        // The time in the state so far, on the self-transition itself.
        let mut tracker = Tracker::new(16);
        run(&mut tracker, 2, S, ANY, &[(CLOSE, LISTEN)]);
        let same = tracker.apply(&transition(5_000_000, 2, S, ANY, LISTEN, LISTEN));
        assert_eq!(same.duration_ns, Some(4_000_000));
        assert!(same.finished.is_empty());
        let end = tracker.apply(&transition(6_000_000, 2, S, ANY, LISTEN, CLOSE));
        assert_eq!(names(&end.finished[0]), ["LISTEN", "CLOSE"]);
        assert_eq!(end.finished[0].steps[0].duration_ns, Some(5_000_000));

        // A socket first seen staying where it is: its state, entered at a time unknown.
        let mut tracker = Tracker::new(16);
        let same = tracker.apply(&transition(MS, 3, C, S, FIN_WAIT1, FIN_WAIT1));
        assert_eq!(same.duration_ns, None);
        let done = run(
            &mut tracker,
            3,
            C,
            S,
            &[(FIN_WAIT1, FIN_WAIT2), (FIN_WAIT2, CLOSE)],
        );
        assert_eq!(names(&done[0]), ["FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT*"]);
        assert_eq!(done[0].steps[0].duration_ns, None);

        // `CLOSE -> CLOSE` of a socket still tracked (its CLOSE was lost): it ends there.
        let mut tracker = Tracker::new(16);
        run(
            &mut tracker,
            5,
            C,
            S,
            &[(CLOSE, SYN_SENT), (SYN_SENT, ESTABLISHED)],
        );
        let end = tracker.apply(&transition(9 * MS, 5, C, S, CLOSE, CLOSE));
        assert_eq!(end.finished.len(), 1);
        assert!(tracker.is_empty());

        // `CLOSE -> CLOSE` of a socket never seen: nothing to track, the owner it ran for.
        let mut tracker = Tracker::new(16);
        let mut t = transition(MS, 4, C, S, CLOSE, CLOSE);
        t.sock_owned = Some(true);
        let applied = tracker.apply(&t);
        assert!(applied.finished.is_empty() && tracker.is_empty());
        assert_eq!(applied.owner.map(|o| o.pid), Some(100));
    }

    /// An accepted MPTCP socket is cloned from its listener in LISTEN and goes straight to
    /// ESTABLISHED: that is its birth. An MPTCP socket has no timewait socket: an active
    /// close ends in CLOSE, nothing inferred after it.
    #[test]
    fn mptcp_sockets_are_born_from_listen_and_close_for_good() {
        let mptcp = |ts, sk, local, remote, old, new| Transition {
            protocol: 262,
            ..transition(ts, sk, local, remote, old, new)
        };
        let mut tracker = Tracker::new(16);
        let mut done = Vec::new();
        for (i, (old, new)) in [
            (LISTEN, ESTABLISHED),
            (ESTABLISHED, CLOSE_WAIT),
            (CLOSE_WAIT, LAST_ACK),
            (LAST_ACK, CLOSE),
        ]
        .into_iter()
        .enumerate()
        {
            let ts = (i as u64 + 1) * MS;
            done.extend(tracker.apply(&mptcp(ts, 1, S, C, old, new)).finished);
        }
        assert!(done[0].from_birth);
        assert_eq!(
            names(&done[0]),
            ["ESTABLISHED", "CLOSE_WAIT", "LAST_ACK", "CLOSE"]
        );
        for (i, (old, new)) in [
            (CLOSE, SYN_SENT),
            (SYN_SENT, ESTABLISHED),
            (ESTABLISHED, FIN_WAIT1),
            (FIN_WAIT1, FIN_WAIT2),
            (FIN_WAIT2, CLOSE),
        ]
        .into_iter()
        .enumerate()
        {
            let ts = (i as u64 + 1) * MS;
            done.extend(tracker.apply(&mptcp(ts, 2, C, S, old, new)).finished);
        }
        assert_eq!(done[1].outcome, Outcome::ActiveClose);
        assert_eq!(
            names(&done[1]),
            ["SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2", "CLOSE"]
        );
        // A listener still leaves LISTEN only for CLOSE.
        let done = run(&mut tracker, 3, S, ANY, &[(CLOSE, LISTEN), (LISTEN, CLOSE)]);
        assert_eq!(done[0].outcome, Outcome::ListenerClosed);
    }

    /// A kernel thread holding the socket lock (MPTCP's worker) is running, not owning: the
    /// owner learnt from `connect()` stays, and a socket it alone moved has none.
    #[test]
    fn a_kernel_thread_holding_the_lock_owns_nothing() {
        let run_by = |ts, sk, old, new, pid, kthread: bool| {
            let mut t = by(transition(ts, sk, C, S, old, new), pid, "task");
            t.sock_owned = Some(true);
            t.kernel_thread = Some(kthread);
            t
        };
        let mut tracker = Tracker::new(16);
        tracker.apply(&run_by(MS, 1, CLOSE, SYN_SENT, 7, false));
        let moved = tracker.apply(&run_by(2 * MS, 1, SYN_SENT, ESTABLISHED, 99, true));
        assert_eq!(moved.owner.map(|o| o.pid), Some(7));
        let mut tracker = Tracker::new(16);
        let alone = tracker.apply(&run_by(MS, 2, ESTABLISHED, CLOSE_WAIT, 99, true));
        assert_eq!(alone.owner, None);
        let end = tracker.apply(&run_by(2 * MS, 2, CLOSE_WAIT, CLOSE, 99, true));
        assert_eq!(end.finished[0].owner, None);
    }
}
