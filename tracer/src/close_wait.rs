//! Stuck-socket detection: CLOSE_WAIT, and any state given with `--stuck STATE=DURATION`.
//! Pure: the caller passes the time in, and resolves owners.
//!
//! A socket enters CLOSE_WAIT when the peer's FIN arrives; it leaves when the application calls
//! close() (-> LAST_ACK) or the connection is reset (-> CLOSE). One that stays longer than the
//! threshold is reported once, when it crosses it, and again when it finally leaves. Other
//! states work the same way (FIN_WAIT2 held long is a peer leaking CLOSE_WAIT; LAST_ACK,
//! SYN_SENT, SYN_RECV stuck long are a dead or filtered peer). A socket that leaves FIN_WAIT2
//! for a timewait socket (`FIN_WAIT2 -> CLOSE`) produces no more transitions: it is followed
//! through the socket tables, where a timewait socket shows its sub-state.

use std::collections::HashMap;

use crate::{
    container::Placement,
    event::{Endpoints, Name, TcpState, Transition},
    hash::AddrMap,
    owner::{NoOwner, Owner},
    sock_diag::{TcpInfoTimes, MAX_JIFFY_NS},
    timeline::Tracker,
};

/// Identifies a stuck socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SockId {
    /// Seen entering the state: the kernel's socket address.
    Kernel(u64),
    /// Already in the state when the tracer started: found in the socket tables.
    Preexisting { inode: u64, netns: u64 },
    /// A socket with no inode, known by namespace and 4-tuple: found at start in a listener's
    /// accept queue or as a timewait socket, or followed into a timewait socket.
    Tuple { netns: u64, endpoints: Endpoints },
}

/// A stuck socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stuck {
    pub id: SockId,
    /// The kernel's socket address, when it was seen through the tracepoint (kept when the
    /// socket is followed into a timewait socket).
    pub skaddr: Option<u64>,
    /// The state it is stuck in.
    pub state: TcpState,
    pub endpoints: Endpoints,
    /// When it entered the state, or (preexisting) when the tracer started.
    pub since_ns: u64,
    /// It was in the state before `since_ns`: its age is a lower bound.
    pub at_least: bool,
    pub alerted: bool,
    /// It lives on as a timewait socket: only the socket tables say whether it still waits.
    pub followed: bool,
    /// Where its owner is known: read it with [`Stuck::owner`].
    pub owner_from: OwnerFrom,
    /// Unread bytes when last looked up.
    pub recv_q: Option<u32>,
    /// Its network namespace's inode, when known.
    pub netns: Option<u64>,
    /// A TCP socket: the socket tables list it (they list no MPTCP or SCTP socket, which
    /// `--all-protocols` traces), so their silence about it means something.
    pub listed: bool,
    /// Every process holding it when last looked up in the socket tables at its report (the
    /// first is its owner then).
    pub holders: Vec<Owner>,
    /// Why no process holds it, when the lookup found none.
    pub unowned: Option<NoOwner>,
    /// The owner's cgroup and container.
    pub placement: Placement,
    /// Its `tcp_info` times when last looked up.
    pub times: Option<TcpInfoTimes>,
    /// The application has read up to and including the peer's FIN, when last looked up.
    pub fin_read: Option<bool>,
}

/// Where a stuck socket's owner is known: one place at a time, never a copy to keep in step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerFrom {
    /// The timeline tracker, under the socket's kernel address: what system calls on it told
    /// (a socket seen entering its state, not looked up in the tables since).
    Timeline,
    /// The first of [`Stuck::holders`]: the socket tables' lookup at its report.
    Holders,
    /// Kept here, where nothing else keeps it: named by the start-up scan (no kernel address
    /// known yet), or by its timeline as it left its full socket for a timewait socket (its
    /// timeline ended there).
    Kept(Option<Owner>),
}

/// What a socket table lookup found about a stuck socket.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    pub holders: Vec<Owner>,
    pub recv_q: u32,
    pub netns: u64,
    pub unowned: Option<NoOwner>,
    pub placement: Placement,
    pub times: Option<TcpInfoTimes>,
    pub fin_read: Option<bool>,
}

/// The latest a socket found in `state` when the tracer started can have entered it, from the
/// kernel's `tcp_info` times: a lower bound of its age, as the time since the tracer started is.
///
/// For CLOSE_WAIT it is the time since the last ACK received (`tcpi_last_ack_recv`): the peer's
/// FIN carries an ACK, which `tcp_ack()` takes (setting `rcv_tstamp`) before
/// `tcp_data_queue()` sees the FIN and `tcp_fin()` moves the socket to CLOSE_WAIT, and any
/// later ACK only moves `rcv_tstamp` forward; so the last ACK came at or after the FIN. The
/// time since the last data (`tcpi_last_data_recv`) is no lower bound: a bare FIN carries no
/// data and leaves `lrcvtime` at the data before it. The kernel counts in jiffies, which may
/// overstate the time by one tick: [`MAX_JIFFY_NS`] (and 1 ms for the rounding to ms) is taken
/// off. Other states: `None` (no segment the socket received marks their start).
pub fn kernel_since(state: TcpState, times: &TcpInfoTimes) -> Option<u64> {
    (state == TcpState::CloseWait).then(|| {
        times
            .read_ns
            .saturating_sub(u64::from(times.last_ack_recv_ms) * 1_000_000)
            .saturating_add(MAX_JIFFY_NS + 1_000_000)
    })
}

impl Stuck {
    /// Found at start-up and not yet seen by its kernel address, nor followed: a transition
    /// of its 4-tuple is its first.
    fn is_untied(&self) -> bool {
        !matches!(self.id, SockId::Kernel(_)) && !self.followed
    }

    /// Its owner, the one lookup reports, resolutions and digests go through: the tracker's
    /// (for a socket it keeps by kernel address), the holder the tables named at its report,
    /// or the one kept here.
    pub fn owner<'a>(&'a self, tracker: &'a Tracker) -> Option<&'a Owner> {
        match &self.owner_from {
            OwnerFrom::Timeline => self.skaddr.and_then(|skaddr| tracker.owner(skaddr)),
            OwnerFrom::Holders => self.holders.first(),
            OwnerFrom::Kept(owner) => owner.as_ref(),
        }
    }

    /// Its owner as a transition takes it out of its state: `known` is what
    /// [`Stuck::owner`] said before the transition, `named` the owner the tracker knows after
    /// it. For a socket seen by its kernel address, the transition's owner is the latest word,
    /// and a system call that names the process the tables named keeps the fd they found
    /// (a system call names no fd). A socket found at start-up keeps the owner its report named.
    pub fn owner_leaving(&self, known: Option<&Owner>, named: Option<&Owner>) -> Option<Owner> {
        if !matches!(self.id, SockId::Kernel(_)) {
            return known.or(named).cloned();
        }
        let Some(named) = named else {
            return known.cloned();
        };
        let mut owner = named.clone();
        if let Some(known) = known.filter(|k| k.pid == owner.pid) {
            owner.fd = owner.fd.or(known.fd);
        }
        Some(owner)
    }

    fn new(id: SockId, state: TcpState, endpoints: Endpoints, since_ns: u64) -> Self {
        Self {
            id,
            skaddr: match id {
                SockId::Kernel(addr) => Some(addr),
                SockId::Preexisting { .. } | SockId::Tuple { .. } => None,
            },
            state,
            endpoints,
            since_ns,
            at_least: false,
            alerted: false,
            followed: false,
            owner_from: OwnerFrom::Timeline,
            recv_q: None,
            netns: None,
            listed: true,
            holders: Vec::new(),
            unowned: None,
            placement: Placement::default(),
            times: None,
            fin_read: None,
        }
    }

    pub fn age_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.since_ns)
    }
}

/// A reported socket that left its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub stuck: Box<Stuck>,
    pub left_ns: u64,
    pub new_state: TcpState,
    /// Its owner as it left (see [`Stuck::owner_leaving`]).
    pub owner: Option<Owner>,
}

/// Tracks sockets in the watched states.
pub struct Detector {
    /// Watched states and their thresholds (a handful: a list beats a map).
    thresholds: Vec<(TcpState, u64)>,
    /// Boxed: a `Stuck` is a few hundred bytes, moved in and out on every CLOSE_WAIT.
    stuck: AddrMap<SockId, Box<Stuck>>,
    /// The sockets found at start-up and not yet seen by their kernel address (nor followed),
    /// by 4-tuple: a transition finds its own among them without a scan of every socket.
    untied: AddrMap<Endpoints, Vec<SockId>>,
}

impl Detector {
    /// Watches CLOSE_WAIT only.
    #[cfg(test)]
    pub fn new(threshold_ns: u64) -> Self {
        Self::with_states(&[(TcpState::CloseWait, threshold_ns)])
    }

    /// Watches each state with its threshold.
    pub fn with_states(thresholds: &[(TcpState, u64)]) -> Self {
        Self {
            thresholds: thresholds.to_vec(),
            stuck: AddrMap::default(),
            untied: AddrMap::default(),
        }
    }

    /// The threshold of a watched state.
    pub fn threshold(&self, state: TcpState) -> Option<u64> {
        self.thresholds
            .iter()
            .find(|(s, _)| *s == state)
            .map(|(_, t)| *t)
    }

    /// Feeds one transition whose socket's owner the tracker does not know: [`Detector::leave`]
    /// then [`Detector::enter`]. Returns the socket it resolves, if it had been reported.
    #[cfg(test)]
    pub fn observe(&mut self, t: &Transition) -> Option<Resolved> {
        let left = self.leave(t);
        let owner = left
            .as_ref()
            .and_then(|s| s.owner(&Tracker::new(1)).cloned());
        self.enter(t, left, owner)
    }

    /// The first half of a transition: takes out the socket `t` moves out of its watched
    /// state, if one is tracked (seen by its kernel address, or found at start-up with its
    /// 4-tuple). Its owner, read before the tracker applies `t`, is
    /// [`Stuck::owner_leaving`]'s `known`.
    pub fn leave(&mut self, t: &Transition) -> Option<Box<Stuck>> {
        let kernel = SockId::Kernel(t.skaddr);
        let id = if self.stuck.contains_key(&kernel) {
            kernel
        } else if self.threshold(t.old).is_some() {
            self.preexisting_with(t.netns, &t.endpoints(), t.old)?
        } else {
            return None;
        };
        self.take(id)
    }

    /// The second half of a transition: the socket `left` (from [`Detector::leave`]), with
    /// `owner` as it left, is followed into a timewait socket, or resolved if it had been
    /// reported; a socket entering a watched state is tracked. Returns the socket it resolves.
    pub fn enter(
        &mut self,
        t: &Transition,
        left: Option<Box<Stuck>>,
        owner: Option<Owner>,
    ) -> Option<Resolved> {
        let mut resolved = None;
        if let Some(mut stuck) = left {
            if stuck.state == TcpState::FinWait2
                && t.old == TcpState::FinWait2
                && t.new == TcpState::Close
            {
                // Into a timewait socket: it may wait there for the peer's FIN. Its timeline
                // ends here: its owner is kept with it.
                let id = SockId::Tuple {
                    netns: stuck.netns.unwrap_or(0),
                    endpoints: t.endpoints(),
                };
                stuck.id = id;
                stuck.followed = true;
                stuck.owner_from = OwnerFrom::Kept(owner);
                self.put(stuck);
            } else if stuck.alerted {
                resolved = Some(Resolved {
                    stuck,
                    left_ns: t.ts_ns,
                    new_state: t.new,
                    owner,
                });
            }
        }
        if self.threshold(t.new).is_some() {
            // Seen entering the state after all: it was not there before the tracer started.
            if let Some(dup) = self.preexisting_with(t.netns, &t.endpoints(), t.new) {
                self.take(dup);
            }
            let mut stuck = Stuck::new(SockId::Kernel(t.skaddr), t.new, t.endpoints(), t.ts_ns);
            stuck.netns = (t.netns != 0).then_some(t.netns);
            stuck.listed = t.protocol == tracer_common::IPPROTO_TCP;
            self.put(Box::new(stuck));
        }
        resolved
    }

    /// Adds a socket found in a watched state at start-up (`now_ns`). One without an inode (a
    /// timewait socket, or one in an accept queue) is known by its namespace and 4-tuple; a
    /// timewait socket is followed through the tables. Its age counts from `now_ns` or, when
    /// the kernel's `times` say it was there earlier, from [`kernel_since`]: a lower bound
    /// either way.
    #[expect(
        clippy::too_many_arguments,
        reason = "one socket table row, field by field"
    )]
    pub fn add_preexisting(
        &mut self,
        state: TcpState,
        inode: u64,
        netns: u64,
        endpoints: Endpoints,
        now_ns: u64,
        owner: Option<Owner>,
        recv_q: u32,
        times: Option<TcpInfoTimes>,
    ) {
        let id = if inode == 0 {
            SockId::Tuple { netns, endpoints }
        } else {
            SockId::Preexisting { inode, netns }
        };
        let since = times
            .and_then(|t| kernel_since(state, &t))
            .map_or(now_ns, |k| k.min(now_ns));
        let mut stuck = Stuck::new(id, state, endpoints, since);
        stuck.times = times;
        stuck.at_least = true;
        stuck.followed = inode == 0 && matches!(state, TcpState::FinWait2 | TcpState::TimeWait);
        stuck.owner_from = OwnerFrom::Kept(owner);
        stuck.recv_q = Some(recv_q);
        stuck.netns = (netns != 0).then_some(netns);
        self.put(Box::new(stuck));
    }

    /// Sockets that have crossed their threshold by `now_ns` and were not reported yet. They
    /// are marked reported: fill in their owner with [`Detector::found`] before emitting them
    /// (a followed one is reported only if the tables still show it in its state).
    pub fn poll(&mut self, now_ns: u64) -> Vec<SockId> {
        let thresholds = &self.thresholds;
        let mut due: Vec<&mut Box<Stuck>> = self
            .stuck
            .values_mut()
            .filter(|s| {
                let threshold = thresholds
                    .iter()
                    .find(|(st, _)| *st == s.state)
                    .map_or(u64::MAX, |(_, t)| *t);
                !s.alerted && (s.at_least || s.age_ns(now_ns) >= threshold)
            })
            .collect();
        // A total order, so a replay of the same stream alerts in the same order (sockets
        // found at start all share one `since_ns`).
        due.sort_by_key(|s| (s.since_ns, s.endpoints, s.id));
        due.into_iter()
            .map(|s| {
                s.alerted = true;
                s.id
            })
            .collect()
    }

    /// Records what a socket table lookup found: the holders now are the owners (a process
    /// that held the socket once and gave it away or exited is no owner any more).
    pub fn found(&mut self, id: SockId, found: Found) {
        if let Some(s) = self.stuck.get_mut(&id) {
            s.owner_from = OwnerFrom::Holders;
            s.holders = found.holders;
            s.recv_q = Some(found.recv_q);
            // 0 is no namespace's inode: a replayed table that did not record it.
            s.netns = (found.netns != 0).then_some(found.netns);
            s.unowned = found.unowned;
            s.placement = found.placement;
            s.times = found.times;
            s.fin_read = found.fin_read;
        }
    }

    /// Corrects a socket's 4-tuple (its local port, learnt from the tables).
    pub fn set_endpoints(&mut self, id: SockId, endpoints: Endpoints) {
        if let Some(mut s) = self.take(id) {
            s.endpoints = endpoints;
            self.put(s);
        }
    }

    pub fn get(&self, id: SockId) -> Option<&Stuck> {
        self.stuck.get(&id).map(|s| &**s)
    }

    /// Drops a socket without a report or resolution (a followed socket the tables no longer
    /// show in its state before it was due).
    pub fn remove(&mut self, id: SockId) -> Option<Box<Stuck>> {
        self.take(id)
    }

    /// Adds (or replaces) a socket under its id, indexing it when it is untied.
    fn put(&mut self, stuck: Box<Stuck>) {
        let id = stuck.id;
        let untied = stuck.is_untied().then_some(stuck.endpoints);
        if let Some(replaced) = self.stuck.insert(id, stuck) {
            self.unindex(&replaced);
        }
        if let Some(endpoints) = untied {
            self.untied.entry(endpoints).or_default().push(id);
        }
    }

    /// Removes a socket and its index entry.
    fn take(&mut self, id: SockId) -> Option<Box<Stuck>> {
        let stuck = self.stuck.remove(&id)?;
        self.unindex(&stuck);
        Some(stuck)
    }

    /// Removes the index entry of `stuck`, when it is untied.
    fn unindex(&mut self, stuck: &Stuck) {
        if stuck.is_untied() {
            if let Some(ids) = self.untied.get_mut(&stuck.endpoints) {
                ids.retain(|i| *i != stuck.id);
                if ids.is_empty() {
                    self.untied.remove(&stuck.endpoints);
                }
            }
        }
    }

    /// Reported sockets still stuck.
    pub fn reported(&self) -> impl Iterator<Item = &Stuck> {
        self.stuck.values().filter(|s| s.alerted).map(|s| &**s)
    }

    /// Reported sockets followed through the tables: the caller re-reads the tables and
    /// resolves those that left their state.
    pub fn followed_reported(&self, lossy: bool) -> Vec<SockId> {
        let mut ids: Vec<SockId> = self
            .stuck
            .values()
            .filter(|s| s.alerted && (s.followed || (lossy && matches!(s.id, SockId::Kernel(_)))))
            .map(|s| s.id)
            .collect();
        ids.sort();
        ids
    }

    /// Sockets tracked now, reported or not.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.stuck.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.stuck.is_empty()
    }

    /// A socket found at start-up in `state` with this 4-tuple in namespace `netns` (0: the
    /// namespace is not known, and any namespace matches).
    fn preexisting_with(
        &self,
        netns: u64,
        endpoints: &Endpoints,
        state: TcpState,
    ) -> Option<SockId> {
        self.untied
            .get(endpoints)?
            .iter()
            .filter_map(|id| self.stuck.get(id))
            .find(|s| s.state == state && (netns == 0 || s.netns.is_none_or(|n| n == netns)))
            .map(|s| s.id)
    }
}

/// Stuck sockets grouped by state and owning process: the answer to "who is leaking
/// CLOSE_WAIT".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub state: TcpState,
    pub pid: Option<u32>,
    pub comm: Option<Name>,
    /// The owner's container id, where it runs in one.
    pub container: Option<String>,
    pub count: usize,
    pub oldest_ns: u64,
}

/// Groups reported sockets by owner ([`Stuck::owner`]), most sockets first.
pub fn digest<'a>(
    stuck: impl Iterator<Item = &'a Stuck>,
    tracker: &Tracker,
    now_ns: u64,
) -> Vec<Group> {
    let mut groups: HashMap<(TcpState, Option<u32>), Group> = HashMap::new();
    for s in stuck {
        let owner = s.owner(tracker);
        let pid = owner.map(|o| o.pid);
        let group = groups.entry((s.state, pid)).or_insert_with(|| Group {
            state: s.state,
            pid,
            comm: owner.map(|o| o.comm.clone()),
            container: s.placement.container.clone(),
            count: 0,
            oldest_ns: 0,
        });
        group.count += 1;
        group.oldest_ns = group.oldest_ns.max(s.age_ns(now_ns));
    }
    let mut out: Vec<Group> = groups.into_values().collect();
    out.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(b.oldest_ns.cmp(&a.oldest_ns))
            .then(a.pid.cmp(&b.pid))
            .then(a.state.cmp(&b.state))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{transition, C, MS, S};

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            comm: compact_str::format_compact!("p{pid}"),
            fd: Some(3),
        }
    }

    /// `--stuck`: each watched state has its threshold; a socket moving between watched
    /// states is resolved from one and tracked in the next; an orphan leaving FIN_WAIT2 for a
    /// timewait socket is followed, not resolved.
    #[test]
    fn other_states_and_followed_timewait_sockets() {
        let mut d = Detector::with_states(&[
            (TcpState::CloseWait, 500 * MS),
            (TcpState::FinWait1, 100 * MS),
            (TcpState::FinWait2, 200 * MS),
        ]);
        d.observe(&transition(0, 7, C, S, 1, 4));
        assert_eq!(d.poll(99 * MS), []);
        assert_eq!(d.poll(100 * MS), [SockId::Kernel(7)]);
        let resolved = d
            .observe(&transition(150 * MS, 7, C, S, 4, 5))
            .expect("left FIN_WAIT1");
        assert_eq!(
            (resolved.stuck.state, resolved.new_state),
            (TcpState::FinWait1, TcpState::FinWait2)
        );
        assert_eq!(d.poll(349 * MS), []);
        assert_eq!(d.poll(350 * MS), [SockId::Kernel(7)]);
        // Into a timewait socket: followed, keeping its age and address.
        assert_eq!(d.observe(&transition(400 * MS, 7, C, S, 5, 7)), None);
        let followed = d.followed_reported(false);
        let [id @ SockId::Tuple { .. }] = followed[..] else {
            panic!("{followed:?}")
        };
        let s = d.get(id).unwrap();
        assert_eq!(
            (s.skaddr, s.since_ns, s.state),
            (Some(7), 150 * MS, TcpState::FinWait2)
        );
        // Unwatched states are not tracked.
        d.observe(&transition(0, 8, C, S, 2, 1));
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn alerts_once_when_crossing_the_threshold_then_resolves() {
        let mut d = Detector::new(500 * MS);
        assert_eq!(d.observe(&transition(1000 * MS, 7, S, C, 1, 8)), None);
        assert!(d.poll(1499 * MS).is_empty(), "not yet");
        let due = d.poll(1500 * MS);
        assert_eq!(due, [SockId::Kernel(7)]);
        assert!(d.poll(9000 * MS).is_empty(), "only once");
        d.found(
            due[0],
            Found {
                holders: vec![owner(42)],
                recv_q: 10,
                ..Found::default()
            },
        );
        let resolved = d
            .observe(&transition(3000 * MS, 7, S, C, 8, 9))
            .expect("resolved");
        assert_eq!(resolved.stuck.age_ns(resolved.left_ns), 2000 * MS);
        assert_eq!(resolved.new_state, TcpState::LastAck);
        assert_eq!(resolved.owner, Some(owner(42)));
        assert!(d.is_empty());
    }

    /// Where a stuck socket's owner is read, and what a transition that takes it out of its
    /// state makes of it: a system call naming the process the tables named keeps their fd
    /// (it names none), naming another process does not; a socket found at start-up keeps
    /// the owner its report named.
    #[test]
    fn owner_is_read_from_one_place_and_a_system_call_keeps_the_tables_fd() {
        let mut tracker = Tracker::new(4);
        let mut d = Detector::new(MS);
        d.observe(&transition(0, 7, S, C, 1, 8));
        let id = SockId::Kernel(7);
        let stuck = |d: &Detector| d.get(id).cloned().unwrap();
        assert_eq!(stuck(&d).owner(&tracker), None);
        // Seen by its kernel address: the tracker's owner, until the tables name one.
        tracker.apply(&crate::testing::by(transition(0, 7, S, C, 1, 8), 5, "p5"));
        tracker.set_owner(7, owner(5));
        assert_eq!(stuck(&d).owner(&tracker), Some(&owner(5)));
        d.found(
            id,
            Found {
                holders: vec![owner(42), owner(43)],
                ..Found::default()
            },
        );
        let s = stuck(&d);
        let known = s.owner(&tracker);
        assert_eq!(
            known,
            Some(&owner(42)),
            "the first holder, not the tracker's"
        );
        let from_task = |pid: u32, comm: &str| Owner {
            pid,
            comm: comm.into(),
            fd: None,
        };
        let leaving = s.owner_leaving(known, Some(&from_task(42, "worker")));
        assert_eq!(
            leaving.map(|o| (o.pid, o.comm.to_string(), o.fd)),
            Some((42, "worker".into(), Some(3)))
        );
        let leaving = s.owner_leaving(known, Some(&from_task(43, "other")));
        assert_eq!(leaving.and_then(|o| o.fd), None, "another process");
        assert_eq!(s.owner_leaving(known, None).as_ref(), known);
        // Found at start-up: the owner its report named, whoever makes the transition.
        let mut d = Detector::new(MS);
        let ep = transition(0, 0, S, C, 8, 9).endpoints();
        d.add_preexisting(TcpState::CloseWait, 11, 1, ep, 0, Some(owner(5)), 0, None);
        let s = d
            .leave(&transition(MS, 9, S, C, 8, 9))
            .expect("found by 4-tuple");
        let known = s.owner(&tracker);
        assert_eq!(known, Some(&owner(5)));
        assert_eq!(
            s.owner_leaving(known, Some(&from_task(6, "p6"))).as_ref(),
            known
        );
    }

    #[test]
    fn leaving_before_the_threshold_is_silent() {
        let mut d = Detector::new(500 * MS);
        d.observe(&transition(0, 7, S, C, 1, 8));
        assert_eq!(d.observe(&transition(100 * MS, 7, S, C, 8, 9)), None);
        assert!(d.poll(10_000 * MS).is_empty());
        assert!(d.is_empty());
    }

    /// A socket found in CLOSE_WAIT ages from the kernel's last ACK (less a tick) when that is
    /// earlier than the start; the time since the last data is no bound (a bare FIN).
    #[test]
    fn preexisting_close_wait_ages_from_the_last_ack() {
        let times = TcpInfoTimes {
            read_ns: 10_000 * MS,
            last_data_recv_ms: 9_000,
            last_ack_recv_ms: 3_000,
        };
        assert_eq!(
            kernel_since(TcpState::CloseWait, &times),
            Some(7_000 * MS + MAX_JIFFY_NS + MS)
        );
        assert_eq!(kernel_since(TcpState::LastAck, &times), None);
        let mut d = Detector::new(500 * MS);
        let ep = transition(0, 7, S, C, 1, 8).endpoints();
        d.add_preexisting(
            TcpState::CloseWait,
            11,
            1,
            ep,
            9_990 * MS,
            None,
            0,
            Some(times),
        );
        let s = d
            .get(SockId::Preexisting {
                inode: 11,
                netns: 1,
            })
            .unwrap();
        assert_eq!(s.since_ns, 7_011 * MS);
        assert!(s.at_least);
        // Never later than the start: a socket the kernel says just got there.
        let fresh = TcpInfoTimes {
            last_ack_recv_ms: 0,
            ..times
        };
        d.add_preexisting(
            TcpState::CloseWait,
            12,
            1,
            ep,
            9_990 * MS,
            None,
            0,
            Some(fresh),
        );
        let s = d
            .get(SockId::Preexisting {
                inode: 12,
                netns: 1,
            })
            .unwrap();
        assert_eq!(s.since_ns, 9_990 * MS);
    }

    #[test]
    fn preexisting_sockets_alert_at_once_and_match_by_endpoints() {
        let mut d = Detector::new(500 * MS);
        let ep = transition(0, 0, S, C, 8, 9).endpoints();
        d.add_preexisting(
            TcpState::CloseWait,
            11,
            1,
            ep,
            100 * MS,
            Some(owner(5)),
            3,
            None,
        );
        let due = d.poll(100 * MS);
        assert_eq!(
            due,
            [SockId::Preexisting {
                inode: 11,
                netns: 1
            }]
        );
        let stuck = d.get(due[0]).unwrap();
        assert!(stuck.at_least);
        let resolved = d
            .observe(&transition(700 * MS, 0xbeef, S, C, 8, 7))
            .unwrap();
        assert_eq!(resolved.stuck.age_ns(resolved.left_ns), 600 * MS);
        assert_eq!(resolved.new_state, TcpState::Close);
    }

    /// Thousands of sockets found in CLOSE_WAIT at start: each is found by its own 4-tuple when
    /// it leaves, and after its port is corrected only under the new one.
    #[test]
    fn many_preexisting_sockets_are_found_by_their_own_tuple() {
        let mut d = Detector::new(500 * MS);
        let client = |port: u32| format!("127.0.0.1:{port}");
        for i in 0..5_000u32 {
            let ep = transition(0, 0, S, &client(10_000 + i), 8, 9).endpoints();
            d.add_preexisting(
                TcpState::CloseWait,
                u64::from(i) + 1,
                1,
                ep,
                100 * MS,
                Some(owner(i)),
                0,
                None,
            );
        }
        let tracker = Tracker::new(1);
        let owner_of = |d: &Detector, t: &Transition| {
            d.preexisting_with(t.netns, &t.endpoints(), t.old)
                .and_then(|id| d.get(id)?.owner(&tracker))
                .map(|o| o.pid)
        };
        let leaving = transition(700 * MS, 0xbeef, S, &client(14_321), 8, 9);
        assert_eq!(owner_of(&d, &leaving), Some(4_321));
        let id = SockId::Preexisting {
            inode: 4_322,
            netns: 1,
        };
        let moved = transition(0, 0, S, &client(60_000), 8, 9).endpoints();
        d.set_endpoints(id, moved);
        assert_eq!(owner_of(&d, &leaving), None);
        let leaving = transition(700 * MS, 0xbeef, S, &client(60_000), 8, 9);
        assert_eq!(owner_of(&d, &leaving), Some(4_321));
        let resolved = d.observe(&leaving);
        assert_eq!(resolved, None, "not reported yet: nothing to resolve");
        assert_eq!(d.len(), 4_999);
        assert_eq!(d.untied.values().map(Vec::len).sum::<usize>(), 4_999);
    }

    #[test]
    fn a_socket_seen_entering_replaces_its_preexisting_twin() {
        let mut d = Detector::new(500 * MS);
        let t = transition(200 * MS, 7, S, C, 1, 8);
        d.add_preexisting(
            TcpState::CloseWait,
            11,
            1,
            t.endpoints(),
            100 * MS,
            None,
            0,
            None,
        );
        d.observe(&t);
        assert_eq!(d.len(), 1);
        assert!(
            d.poll(300 * MS).is_empty(),
            "the kernel-seen entry has its own age"
        );
        assert_eq!(d.poll(700 * MS), [SockId::Kernel(7)]);
    }

    #[test]
    fn digest_groups_by_owner() {
        let mut d = Detector::new(0);
        for (sk, pid) in [(1, Some(10)), (2, Some(10)), (3, Some(20)), (4, None)] {
            d.observe(&transition(
                sk * MS,
                sk,
                S,
                &format!("127.0.0.1:{}", 40000 + sk),
                1,
                8,
            ));
            let found = Found {
                holders: pid.map(owner).into_iter().collect(),
                ..Found::default()
            };
            d.found(SockId::Kernel(sk), found);
        }
        d.poll(10 * MS);
        let groups = digest(d.reported(), &Tracker::new(1), 10 * MS);
        let summary: Vec<(Option<u32>, usize, u64)> = groups
            .iter()
            .map(|g| (g.pid, g.count, g.oldest_ns))
            .collect();
        assert_eq!(
            summary,
            [
                (Some(10), 2, 9 * MS),
                (Some(20), 1, 7 * MS),
                (None, 1, 6 * MS)
            ]
        );
    }

    fn endpoints(rport: u16) -> Endpoints {
        Endpoints {
            laddr: "127.0.0.1".parse().unwrap(),
            lport: 80,
            raddr: "127.0.0.1".parse().unwrap(),
            rport,
        }
    }

    /// Sockets found at start share their `since_ns`: they are still reported in one order,
    /// whatever order they were added in (and so whatever the hash map's), so a replay reports
    /// them as the live run did.
    #[test]
    fn due_order_is_total() {
        let sockets = [(3, 9000), (1, 7000), (2, 8000), (4, 6000)];
        // Every rotation of the sockets, forwards and backwards: eight insertion orders.
        let insertion_orders = (0..sockets.len()).flat_map(|start| {
            let mut rotated = sockets;
            rotated.rotate_left(start);
            let mut reversed = rotated;
            reversed.reverse();
            [rotated, reversed]
        });
        for order in insertion_orders {
            let mut d = Detector::new(1);
            for (inode, rport) in order {
                d.add_preexisting(
                    TcpState::CloseWait,
                    inode,
                    1,
                    endpoints(rport),
                    10,
                    None,
                    0,
                    None,
                );
            }
            assert_eq!(
                d.poll(10),
                [4, 1, 2, 3].map(|inode| SockId::Preexisting { inode, netns: 1 }),
                "added in the order {order:?}"
            );
        }
    }
}
