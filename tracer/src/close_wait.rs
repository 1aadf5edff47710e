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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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

    pub fn threshold_ns(&self) -> u64 {
        self.threshold_ns
    }

    /// Feeds one transition. Returns the socket it resolves, if it had been reported.
    pub fn observe(&mut self, t: &Transition) -> Option<Resolved> {
        if t.new == TcpState::CloseWait {
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
        let id = match self.stuck.contains_key(&SockId::Kernel(t.skaddr)) {
            true => SockId::Kernel(t.skaddr),
            false => self.preexisting_with(&t.endpoints())?,
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
        due.sort_by_key(|s| s.since_ns);
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
            if owner.is_some() {
                s.owner = owner;
            }
            if recv_q.is_some() {
                s.recv_q = recv_q;
            }
        }
    }

    pub fn get(&self, id: SockId) -> Option<&Stuck> {
        self.stuck.get(&id)
    }

    /// Reported sockets still in CLOSE_WAIT.
    pub fn reported(&self) -> impl Iterator<Item = &Stuck> {
        self.stuck.values().filter(|s| s.alerted)
    }

    /// Sockets in CLOSE_WAIT now, reported or not.
    pub fn len(&self) -> usize {
        self.stuck.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stuck.is_empty()
    }

    /// Forgets a socket without a resolution (its timeline was evicted).
    pub fn forget(&mut self, skaddr: u64) {
        self.stuck.remove(&SockId::Kernel(skaddr));
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
