//! Why a connection ended: the `error` the application saw and who sent the RST (`reset_by`),
//! learnt from the kernel's `tcp:tcp_send_reset`, `tcp:tcp_receive_reset` and
//! `sock:inet_sk_error_report` tracepoints and joined to the socket's transition to CLOSE.
//!
//! The kernel reports them around that transition, in an order that depends on the path and
//! the kernel version: a received RST comes before the CLOSE and its error report after it
//! (`tcp_reset`); an RST sent by `close()` (`SO_LINGER {1, 0}`, unread data) comes after it
//! (`tcp_disconnect`, `tcp_close`); a timer's error report comes before it up to Linux 6.9 and
//! after it since 6.10 (`tcp_done_with_error`). So [`Causes`] keeps the causes seen recently and
//! holds each transition to CLOSE back for a short window ([`WINDOW_NS`]), until its error report
//! arrives or the window has passed. Pure: time comes in as arguments.

pub mod format;
pub mod probe;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use tracer_common::cause::{
    CauseEvent, CAUSE_ERROR_REPORT, CAUSE_RECEIVED_RESET, CAUSE_SENT_RESET,
};

use crate::{
    event::{Endpoints, TcpState, Transition},
    hash::AddrMap,
    record::Record,
};

/// How long a cause and a transition to CLOSE may be apart and still belong together, and how
/// long a transition to CLOSE is held back waiting for its cause, in kernel ns. The kernel
/// reports both in one call chain, microseconds apart, but the chain can run the delivery of
/// the RST to a local peer in between, and a loaded (virtual) machine can stall it: 50 ms was
/// seen to be too short under emulation on a shared host.
pub const WINDOW_NS: u64 = 250_000_000;

/// Causes kept at most while waiting for their transition (older ones are dropped first).
const RECENT_CAP: usize = 4096;

/// Which side sent the RST that ended a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResetBy {
    /// This host sent it (`tcp:tcp_send_reset`).
    Local,
    /// The peer sent it (`tcp:tcp_receive_reset`).
    Peer,
}

/// Why a connection ended, as far as the kernel told.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cause {
    /// The errno name the application saw (`ECONNRESET`, `ETIMEDOUT`, ...).
    pub error: Option<String>,
    /// Who sent the RST, when one was sent or received.
    pub reset_by: Option<ResetBy>,
}

impl Cause {
    fn add(&mut self, signal: &Signal) {
        match signal.what {
            What::Reset(by) => self.reset_by = self.reset_by.or(Some(by)),
            What::Error(errno) => self.error = Some(errno_name(errno)),
        }
    }
}

/// The name of a (positive) errno value, as `errno.h` spells it; `errno N` when unknown.
pub fn errno_name(errno: i32) -> String {
    match nix::errno::Errno::from_raw(errno) {
        nix::errno::Errno::UnknownErrno => format!("errno {errno}"),
        known => format!("{known:?}"),
    }
}

/// What a cause tracepoint reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum What {
    Reset(ResetBy),
    Error(i32),
}

/// One decoded [`CauseEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    /// Kernel monotonic ns.
    pub ts_ns: u64,
    /// The socket's kernel address (resets); 0 for error reports.
    pub skaddr: u64,
    /// The socket's addresses (error reports only).
    pub endpoints: Option<Endpoints>,
    /// CPU and thread it fired on: an error report is matched to the transition that fired in
    /// the same call chain.
    pub cpu: u32,
    /// Thread id it fired on.
    pub tid: u32,
    what: What,
}

impl Signal {
    /// Decodes the shared record; `None` for an unknown kind or family.
    pub fn from_raw(raw: &CauseEvent) -> Option<Signal> {
        let (what, endpoints) = match raw.kind {
            CAUSE_SENT_RESET => (What::Reset(ResetBy::Local), None),
            CAUSE_RECEIVED_RESET => (What::Reset(ResetBy::Peer), None),
            CAUSE_ERROR_REPORT => {
                let (laddr, raddr) = crate::decode::addresses(raw.family, &raw.saddr, &raw.daddr)?;
                let endpoints = Endpoints {
                    laddr,
                    lport: raw.sport,
                    raddr,
                    rport: raw.dport,
                };
                (What::Error(raw.error), Some(endpoints))
            }
            _ => return None,
        };
        Some(Signal {
            ts_ns: raw.ts_ns,
            skaddr: raw.skaddr,
            endpoints,
            cpu: raw.cpu,
            tid: raw.tid,
            what,
        })
    }
}

/// A transition to CLOSE, as the matcher needs it.
#[derive(Clone, Debug)]
pub struct Closing {
    ts_ns: u64,
    skaddr: u64,
    endpoints: Endpoints,
    cpu: u32,
    tid: u32,
    old: TcpState,
}

impl Closing {
    /// What identifies transition `t` (to CLOSE) and its causes.
    pub fn of(t: &Transition) -> Closing {
        Closing {
            ts_ns: t.ts_ns,
            skaddr: t.skaddr,
            endpoints: t.endpoints(),
            cpu: t.cpu,
            tid: t.task.tid,
            old: t.old,
        }
    }
}

/// Records of a transition to CLOSE held back until its cause is known.
struct Held {
    closing: Closing,
    cause: Cause,
    records: Vec<Record>,
}

impl From<Held> for Released {
    fn from(held: Held) -> Self {
        Released {
            cause: held.cause,
            old: held.closing.old,
            records: held.records,
        }
    }
}

/// Records of a transition to CLOSE released with their cause.
pub struct Released {
    /// Why the connection ended: the errno and who sent the RST, each when known.
    pub cause: Cause,
    /// The state the socket left for CLOSE.
    pub old: TcpState,
    /// The records made from that transition, held back until now.
    pub records: Vec<Record>,
}

/// What joins a cause to its transition: the socket's address (resets), or the addresses with
/// the CPU and thread of the call chain that reported both (error reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Socket(u64),
    Call {
        endpoints: Endpoints,
        cpu: u32,
        tid: u32,
    },
}

impl Signal {
    fn key(&self) -> Option<Key> {
        match self.what {
            What::Reset(_) => Some(Key::Socket(self.skaddr)),
            What::Error(_) => self.endpoints.map(|endpoints| Key::Call {
                endpoints,
                cpu: self.cpu,
                tid: self.tid,
            }),
        }
    }
}

impl Closing {
    fn keys(&self) -> [Key; 2] {
        [
            Key::Socket(self.skaddr),
            Key::Call {
                endpoints: self.endpoints,
                cpu: self.cpu,
                tid: self.tid,
            },
        ]
    }
}

/// Joins causes to transitions to CLOSE (see the module's documentation). Every step is a
/// hash lookup. Memory is bounded: causes waiting for their transition by a cap (4096) and the
/// window, held transitions by the window.
pub struct Causes {
    /// Whether error reports come at all (the kernel has `inet_sk_error_report`): if not, a
    /// transition is not held back for one.
    error_reports: bool,
    /// Causes seen before their transition, by key, and their keys in arrival order (to expire
    /// them).
    recent: AddrMap<Key, Vec<Signal>>,
    order: VecDeque<(u64, Key)>,
    /// Held transitions in order; the first has sequence number `first_seq`. `None`: taken out
    /// of order ([`Causes::take`]).
    held: VecDeque<Option<Held>>,
    first_seq: u64,
    /// The latest held transition of each key, by sequence number.
    index: Index,
}

/// The latest held transition of each key, by sequence number. Socket keys have a map of their
/// own, of 16-byte entries: every event looks its socket up there, and a map of whole [`Key`]s
/// (address pairs, CPU, thread) is four times the memory for the CPU's caches to miss.
#[derive(Default)]
struct Index {
    sockets: AddrMap<u64, u64>,
    calls: AddrMap<Key, u64>,
}

impl Index {
    fn get(&self, key: &Key) -> Option<u64> {
        match key {
            Key::Socket(skaddr) => self.sockets.get(skaddr),
            Key::Call { .. } => self.calls.get(key),
        }
        .copied()
    }

    fn insert(&mut self, key: Key, seq: u64) {
        match key {
            Key::Socket(skaddr) => self.sockets.insert(skaddr, seq),
            Key::Call { .. } => self.calls.insert(key, seq),
        };
    }

    fn remove(&mut self, key: &Key) {
        match key {
            Key::Socket(skaddr) => self.sockets.remove(skaddr),
            Key::Call { .. } => self.calls.remove(key),
        };
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.sockets.is_empty() && self.calls.is_empty()
    }
}

impl Causes {
    /// A matcher; `error_reports` says whether `inet_sk_error_report` is attached.
    pub fn new(error_reports: bool) -> Self {
        Self {
            error_reports,
            recent: AddrMap::default(),
            order: VecDeque::new(),
            held: VecDeque::new(),
            first_seq: 0,
            index: Index::default(),
        }
    }

    /// A cause the kernel reported: joined to a held transition, or kept for one to come.
    pub fn signal(&mut self, signal: Signal) {
        let Some(key) = signal.key() else {
            return;
        };
        if let Some(seq) = self.index.get(&key) {
            let held = seq
                .checked_sub(self.first_seq)
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| self.held.get_mut(i))
                .and_then(Option::as_mut);
            if let Some(held) = held.filter(|h| within(h.closing.ts_ns, signal.ts_ns)) {
                held.cause.add(&signal);
                return;
            }
        }
        if self.order.len() >= RECENT_CAP {
            self.expire_one();
        }
        self.order.push_back((signal.ts_ns, key));
        self.recent.entry(key).or_default().push(signal);
    }

    /// Whether no cause of the transition to CLOSE `closing` has been seen (within the window
    /// before it).
    pub fn none_seen(&self, closing: &Closing) -> bool {
        closing.keys().iter().all(|key| {
            self.recent
                .get(key)
                .is_none_or(|signals| !signals.iter().any(|s| within(s.ts_ns, closing.ts_ns)))
        })
    }

    /// Holds the records made for a transition to CLOSE, with the causes seen before it.
    pub fn hold(&mut self, closing: Closing, records: Vec<Record>) {
        let mut cause = Cause::default();
        let seq = self.first_seq + self.held.len() as u64;
        for key in closing.keys() {
            if let Some(signals) = self.recent.remove(&key) {
                for s in signals.iter().filter(|s| within(s.ts_ns, closing.ts_ns)) {
                    cause.add(s);
                }
            }
            self.index.insert(key, seq);
        }
        self.held.push_back(Some(Held {
            closing,
            cause,
            records,
        }));
    }

    /// Releases at once the held transition to CLOSE of the socket at `skaddr`, if any: a new
    /// socket got its address, so its causes have all come (they come in the call chain that
    /// closed it, before the kernel can free it) and its records must precede the new one's.
    pub fn take(&mut self, skaddr: u64) -> Option<Released> {
        // Causes waiting under this address were the old socket's: a socket's own come after
        // its birth.
        self.recent.remove(&Key::Socket(skaddr));
        let seq = self.index.get(&Key::Socket(skaddr))?;
        let i = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        let held = self.held.get_mut(i)?.take()?;
        self.unindex(&held.closing, seq);
        Some(held.into())
    }

    /// Hands out, in order, the held records whose cause is complete or whose window ended by
    /// `now_ns`, each with its cause. `now_ns` of `None` releases everything (the end).
    pub fn release(&mut self, now_ns: Option<u64>) -> Vec<Released> {
        if let Some(now) = now_ns {
            let horizon = now.saturating_sub(WINDOW_NS);
            while self.order.front().is_some_and(|(ts, _)| *ts < horizon) {
                self.expire_one();
            }
        }
        let mut out = Vec::new();
        while let Some(front) = self.held.front() {
            if let Some(front) = front {
                let complete = self.error_reports && front.cause.error.is_some();
                let expired =
                    now_ns.is_none_or(|now| now >= front.closing.ts_ns.saturating_add(WINDOW_NS));
                if !complete && !expired {
                    break;
                }
            }
            let seq = self.first_seq;
            self.first_seq += 1;
            if let Some(held) = self.held.pop_front().flatten() {
                self.unindex(&held.closing, seq);
                out.push(held.into());
            }
        }
        out
    }

    /// Forgets the keys of held transition `seq`, unless a later one took them over.
    fn unindex(&mut self, closing: &Closing, seq: u64) {
        for key in closing.keys() {
            if self.index.get(&key) == Some(seq) {
                self.index.remove(&key);
            }
        }
    }

    /// Drops the oldest cause still waiting for its transition (and any older of its key).
    fn expire_one(&mut self) {
        let Some((ts, key)) = self.order.pop_front() else {
            return;
        };
        if let Some(signals) = self.recent.get_mut(&key) {
            signals.retain(|s| s.ts_ns > ts);
            if signals.is_empty() {
                self.recent.remove(&key);
            }
        }
    }

    /// Causes waiting for their transition, and transitions held back, now.
    pub fn sizes(&self) -> (usize, usize) {
        (self.order.len(), self.held.len())
    }
}

/// Are a transition at `a` and a cause at `b` (either order) close enough to belong together?
fn within(a: u64, b: u64) -> bool {
    a.abs_diff(b) <= WINDOW_NS
}

#[cfg(test)]
mod tests;
