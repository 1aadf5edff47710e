//! CLOSE_WAIT detection. Pure: the caller passes the time in, and resolves owners.
//!
//! A socket enters CLOSE_WAIT when the peer's FIN arrives; it leaves when the application calls
//! close() (-> LAST_ACK) or the connection is reset (-> CLOSE). One that stays longer than the
//! threshold is reported once, when it crosses it, and again when it finally leaves.

use std::collections::HashMap;

use crate::{
    event::{Endpoints, TcpState, Transition},
    hash::AddrMap,
    owner::Owner,
};

/// Identifies a socket in CLOSE_WAIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SockId {
    /// Seen entering CLOSE_WAIT: the kernel's socket address.
    Kernel(u64),
    /// Already in CLOSE_WAIT when the tracer started: found in the socket tables.
    Preexisting { inode: u64, netns: u64 },
}

/// A socket in CLOSE_WAIT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stuck {
    pub id: SockId,
    pub endpoints: Endpoints,
    /// When it entered CLOSE_WAIT, or (preexisting) when the tracer started.
    pub since_ns: u64,
    /// It was in CLOSE_WAIT before `since_ns`: its age is a lower bound.
    pub at_least: bool,
    pub alerted: bool,
    pub owner: Option<Owner>,
    /// Unread bytes when last looked up.
    pub recv_q: Option<u32>,
}

impl Stuck {
    pub fn age_ns(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.since_ns)
    }
}

/// A reported socket that left CLOSE_WAIT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub stuck: Stuck,
    pub left_ns: u64,
    pub new_state: TcpState,
}

/// Tracks sockets in CLOSE_WAIT.
pub struct Detector {
    threshold_ns: u64,
    stuck: AddrMap<SockId, Stuck>,
}

impl Detector {
    pub fn new(threshold_ns: u64) -> Self {
        Self {
            threshold_ns,
            stuck: AddrMap::default(),
        }
    }

    /// Feeds one transition. Returns the socket it resolves, if it had been reported.
    pub fn observe(&mut self, t: &Transition) -> Option<Resolved> {
        if t.new == TcpState::CloseWait {
            // Seen entering CLOSE_WAIT after all: it was not there before the tracer started.
            if let Some(dup) = self.preexisting_with(&t.endpoints()) {
                self.stuck.remove(&dup);
            }
            let id = SockId::Kernel(t.skaddr);
            self.stuck.insert(
                id,
                Stuck {
                    id,
                    endpoints: t.endpoints(),
                    since_ns: t.ts_ns,
                    at_least: false,
                    alerted: false,
                    owner: None,
                    recv_q: None,
                },
            );
            return None;
        }
        if t.old != TcpState::CloseWait {
            return None;
        }
        let id = if self.stuck.contains_key(&SockId::Kernel(t.skaddr)) {
            SockId::Kernel(t.skaddr)
        } else {
            self.preexisting_with(&t.endpoints())?
        };
        let stuck = self.stuck.remove(&id)?;
        let alerted = stuck.alerted;
        alerted.then_some(Resolved {
            stuck,
            left_ns: t.ts_ns,
            new_state: t.new,
        })
    }

    /// Adds a socket found in CLOSE_WAIT at start-up.
    pub fn add_preexisting(
        &mut self,
        inode: u64,
        netns: u64,
        endpoints: Endpoints,
        now_ns: u64,
        owner: Option<Owner>,
        recv_q: u32,
    ) {
        let id = SockId::Preexisting { inode, netns };
        self.stuck.insert(
            id,
            Stuck {
                id,
                endpoints,
                since_ns: now_ns,
                at_least: true,
                alerted: false,
                owner,
                recv_q: Some(recv_q),
            },
        );
    }

    /// Sockets that have crossed the threshold by `now_ns` and were not reported yet. They are
    /// marked reported: fill in their owner with [`Detector::update`] before emitting them.
    pub fn poll(&mut self, now_ns: u64) -> Vec<SockId> {
        let mut due: Vec<&mut Stuck> = self
            .stuck
            .values_mut()
            .filter(|s| !s.alerted && (s.at_least || s.age_ns(now_ns) >= self.threshold_ns))
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

    /// Records what a socket table lookup found.
    pub fn update(&mut self, id: SockId, owner: Option<Owner>, recv_q: Option<u32>) {
        if let Some(s) = self.stuck.get_mut(&id) {
            if let Some(mut owner) = owner {
                // A system call names the process but not the fd a table lookup found.
                if let Some(known) = s.owner.as_ref().filter(|k| k.pid == owner.pid) {
                    owner.fd = owner.fd.or(known.fd);
                }
                s.owner = Some(owner);
            }
            if recv_q.is_some() {
                s.recv_q = recv_q;
            }
        }
    }

    pub fn get(&self, id: SockId) -> Option<&Stuck> {
        self.stuck.get(&id)
    }

    /// Sockets in CLOSE_WAIT now, reported or not.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.stuck.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.stuck.is_empty()
    }

    /// Reported sockets still in CLOSE_WAIT.
    pub fn reported(&self) -> impl Iterator<Item = &Stuck> {
        self.stuck.values().filter(|s| s.alerted)
    }

    fn preexisting_with(&self, endpoints: &Endpoints) -> Option<SockId> {
        self.stuck
            .values()
            .find(|s| matches!(s.id, SockId::Preexisting { .. }) && s.endpoints == *endpoints)
            .map(|s| s.id)
    }
}

/// Stuck sockets grouped by owning process: the answer to "who is leaking CLOSE_WAIT".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub count: usize,
    pub oldest_ns: u64,
}

/// Groups reported sockets by owner, most sockets first.
pub fn digest<'a>(stuck: impl Iterator<Item = &'a Stuck>, now_ns: u64) -> Vec<Group> {
    let mut groups: HashMap<Option<u32>, Group> = HashMap::new();
    for s in stuck {
        let pid = s.owner.as_ref().map(|o| o.pid);
        let group = groups.entry(pid).or_insert_with(|| Group {
            pid,
            comm: s.owner.as_ref().map(|o| o.comm.clone()),
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
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::transition;

    const S: &str = "127.0.0.1:8080";
    const C: &str = "127.0.0.1:40000";
    const MS: u64 = 1_000_000;

    fn owner(pid: u32) -> Owner {
        Owner {
            pid,
            comm: format!("p{pid}"),
            fd: Some(3),
        }
    }

    #[test]
    fn alerts_once_when_crossing_the_threshold_then_resolves() {
        let mut d = Detector::new(500 * MS);
        assert_eq!(d.observe(&transition(1000 * MS, 7, S, C, 1, 8)), None);
        assert!(d.poll(1499 * MS).is_empty(), "not yet");
        let due = d.poll(1500 * MS);
        assert_eq!(due, [SockId::Kernel(7)]);
        assert!(d.poll(9000 * MS).is_empty(), "only once");
        d.update(due[0], Some(owner(42)), Some(10));
        let resolved = d
            .observe(&transition(3000 * MS, 7, S, C, 8, 9))
            .expect("resolved");
        assert_eq!(resolved.stuck.age_ns(resolved.left_ns), 2000 * MS);
        assert_eq!(resolved.new_state, TcpState::LastAck);
        assert_eq!(resolved.stuck.owner, Some(owner(42)));
        assert!(d.is_empty());
    }

    #[test]
    fn leaving_before_the_threshold_is_silent() {
        let mut d = Detector::new(500 * MS);
        d.observe(&transition(0, 7, S, C, 1, 8));
        assert_eq!(d.observe(&transition(100 * MS, 7, S, C, 8, 9)), None);
        assert!(d.poll(10_000 * MS).is_empty());
        assert!(d.is_empty());
    }

    #[test]
    fn preexisting_sockets_alert_at_once_and_match_by_endpoints() {
        let mut d = Detector::new(500 * MS);
        let ep = transition(0, 0, S, C, 8, 9).endpoints();
        d.add_preexisting(11, 1, ep, 100 * MS, Some(owner(5)), 3);
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

    #[test]
    fn a_socket_seen_entering_replaces_its_preexisting_twin() {
        let mut d = Detector::new(500 * MS);
        let t = transition(200 * MS, 7, S, C, 1, 8);
        d.add_preexisting(11, 1, t.endpoints(), 100 * MS, None, 0);
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
            d.update(SockId::Kernel(sk), pid.map(owner), None);
        }
        d.poll(10 * MS);
        let groups = digest(d.reported(), 10 * MS);
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
                d.add_preexisting(inode, 1, endpoints(rport), 10, None, 0);
            }
            assert_eq!(
                d.poll(10),
                [4, 1, 2, 3].map(|inode| SockId::Preexisting { inode, netns: 1 }),
                "added in the order {order:?}"
            );
        }
    }
}
