//! Owned domain types for TCP state transitions. Nothing here knows about raw kernel bytes.

use std::{fmt, net::IpAddr};

use serde::{Deserialize, Serialize};

/// A TCP state, numbered as the kernel numbers them (`include/net/tcp_states.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    /// `TCP_ESTABLISHED` (1): the connection is open.
    Established,
    /// `TCP_SYN_SENT` (2): `connect()` sent a SYN and waits for the answer.
    SynSent,
    /// `TCP_SYN_RECV` (3): a SYN arrived and a SYN-ACK was sent.
    SynRecv,
    /// `TCP_FIN_WAIT1` (4): this side closed and sent a FIN.
    FinWait1,
    /// `TCP_FIN_WAIT2` (5): this side's FIN was acknowledged; waiting for the peer's.
    FinWait2,
    /// `TCP_TIME_WAIT` (6): both sides closed; waiting for stray segments.
    TimeWait,
    /// `TCP_CLOSE` (7): closed (also the state of a new socket).
    Close,
    /// `TCP_CLOSE_WAIT` (8): the peer closed; this side's process has not.
    CloseWait,
    /// `TCP_LAST_ACK` (9): both closed, the peer closing first; waiting for the last ACK.
    LastAck,
    /// `TCP_LISTEN` (10): a listening socket.
    Listen,
    /// `TCP_CLOSING` (11): both sides sent a FIN at once.
    Closing,
    /// `TCP_NEW_SYN_RECV` (12): a request socket for a connection being accepted.
    NewSynRecv,
    /// A number this tool does not know (a newer kernel, or a bad record).
    Unknown(u32),
}

pub(crate) const NAMES: [(TcpState, &str); 12] = [
    (TcpState::Established, "ESTABLISHED"),
    (TcpState::SynSent, "SYN_SENT"),
    (TcpState::SynRecv, "SYN_RECV"),
    (TcpState::FinWait1, "FIN_WAIT1"),
    (TcpState::FinWait2, "FIN_WAIT2"),
    (TcpState::TimeWait, "TIME_WAIT"),
    (TcpState::Close, "CLOSE"),
    (TcpState::CloseWait, "CLOSE_WAIT"),
    (TcpState::LastAck, "LAST_ACK"),
    (TcpState::Listen, "LISTEN"),
    (TcpState::Closing, "CLOSING"),
    (TcpState::NewSynRecv, "NEW_SYN_RECV"),
];

impl From<u32> for TcpState {
    fn from(raw: u32) -> Self {
        match raw {
            1..=12 => NAMES[raw as usize - 1].0,
            other => TcpState::Unknown(other),
        }
    }
}

impl TcpState {
    /// The kernel's name without the `TCP_` prefix.
    pub fn name(self) -> std::borrow::Cow<'static, str> {
        match self.known_name() {
            Some(name) => name.into(),
            None => format!("UNKNOWN({})", self.number()).into(),
        }
    }

    /// The name of a state the kernel defines (without `TCP_`); `None` for
    /// [`TcpState::Unknown`].
    pub fn known_name(self) -> Option<&'static str> {
        match self {
            TcpState::Unknown(_) => None,
            known => Some(NAMES[known.number() as usize - 1].1),
        }
    }

    /// The kernel's number for the state (`TCP_ESTABLISHED` is 1).
    pub fn number(self) -> u32 {
        match self {
            TcpState::Established => 1,
            TcpState::SynSent => 2,
            TcpState::SynRecv => 3,
            TcpState::FinWait1 => 4,
            TcpState::FinWait2 => 5,
            TcpState::TimeWait => 6,
            TcpState::Close => 7,
            TcpState::CloseWait => 8,
            TcpState::LastAck => 9,
            TcpState::Listen => 10,
            TcpState::Closing => 11,
            TcpState::NewSynRecv => 12,
            TcpState::Unknown(n) => n,
        }
    }

    /// Parses a name as written by [`TcpState::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        if let Some(n) = name
            .strip_prefix("UNKNOWN(")
            .and_then(|r| r.strip_suffix(')'))
        {
            return n.parse().ok().map(TcpState::Unknown);
        }
        NAMES.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.name())
    }
}

impl Serialize for TcpState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

impl<'de> Deserialize<'de> for TcpState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<str>::deserialize(d)?;
        TcpState::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown TCP state {name:?}")))
    }
}

/// Address family of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// `AF_INET`, shown as `ipv4`.
    Ipv4,
    /// `AF_INET6`, shown as `ipv6` (also for IPv4 peers of a dual-stack socket).
    Ipv6,
}

/// A task name (`comm`: at most 15 bytes in the kernel, lossy UTF-8), stored inline: making
/// one for every event allocates nothing. Compares with `&str` and serializes as a string.
pub type Name = compact_str::CompactString;

/// The task that was running when a transition fired. It owns the socket only when the
/// transition was made in its process context (see the `sock_state` module).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// Thread group id (the process id).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Name of the process: its thread-group leader's `comm`.
    pub comm: Name,
    /// Name of the running thread: its own `comm`.
    pub thread: Name,
}

/// One TCP state transition, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// Kernel monotonic clock, nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the socket.
    pub skaddr: u64,
    /// Address family of the socket.
    pub family: Family,
    /// IP protocol number: 6 (TCP), 132 (SCTP), 262 (MPTCP).
    pub protocol: u16,
    /// Local IP address.
    pub laddr: IpAddr,
    /// Local port (can be 0 before `connect()` completes).
    pub lport: u16,
    /// Remote IP address.
    pub raddr: IpAddr,
    /// Remote port (0 for a listener).
    pub rport: u16,
    /// State before the transition.
    pub old: TcpState,
    /// State after the transition.
    pub new: TcpState,
    /// The task that was running when it fired (not the owner in softirq).
    pub task: Task,
    /// CPU that ran the transition.
    pub cpu: u32,
    /// Inode number of the socket's network namespace (as `lsns -t net` shows it); 0 when
    /// the kernel's BTF did not give its offsets.
    pub netns: u64,
    /// A process held the socket lock when the transition fired (`sock_owned_by_user()`):
    /// it ran in that process's context, so the running task holds the socket. `None` when
    /// the kernel's BTF did not give the offset (then the state pair decides, see
    /// [`crate::sock_state::in_owner_context`]).
    pub sock_owned: Option<bool>,
    /// With the socket lock owned: the task holding it, the running one, is a kernel thread
    /// (`PF_KTHREAD`: MPTCP's worker, a `kworker`), never the socket's owner. `None` when the
    /// lock was not owned or this could not be read.
    pub kernel_thread: Option<bool>,
    /// On FIN_WAIT2 -> CLOSE: the peer's FIN had arrived (the connection moved to TIME_WAIT);
    /// `Some(false)`: it waits for that FIN in a timewait socket (FIN_WAIT2 sub-state).
    /// `None` on other transitions and where it could not be read.
    pub peer_fin: Option<bool>,
    /// On transitions to CLOSE: the socket was already orphaned (`SOCK_DEAD`: its process had
    /// closed it). `None` on other transitions and where it could not be read.
    pub orphan: Option<bool>,
    /// On transitions to CLOSE: an upper layer protocol was attached to the socket
    /// (`icsk_ulp_ops`): an MPTCP subflow, or kernel TLS. `None` on other transitions and where
    /// it could not be read.
    pub ulp: Option<bool>,
}

impl Transition {
    /// The connection's 4-tuple.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            laddr: self.laddr,
            lport: self.lport,
            raddr: self.raddr,
            rport: self.rport,
        }
    }
}

/// Local and remote address and port of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Endpoints {
    /// Local IP address.
    pub laddr: IpAddr,
    /// Local port.
    pub lport: u16,
    /// Remote IP address.
    pub raddr: IpAddr,
    /// Remote port.
    pub rport: u16,
}

/// Hashed as two 128-bit words and one 32-bit one (a derived hash feeds each address's variant
/// and bytes apart, twice the work on every cause-window lookup). Equal endpoints hash equal;
/// an IPv4 address and the IPv6 one with the same low 32 bits merely collide.
impl std::hash::Hash for Endpoints {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => u128::from(v4.to_bits()),
            IpAddr::V6(v6) => v6.to_bits(),
        };
        state.write_u128(bits(self.laddr));
        state.write_u128(bits(self.raddr));
        state.write_u32(u32::from(self.lport) << 16 | u32::from(self.rport));
    }
}

impl Endpoints {
    /// IPv4 on the wire: IPv4 addresses, or v4-mapped ones on a dual-stack socket
    /// ([`tracer_common::ipv4_on_wire`]).
    pub fn ipv4_on_wire(&self) -> bool {
        let words = |ip: IpAddr| match ip {
            IpAddr::V4(_) => None,
            IpAddr::V6(v6) => {
                let bits = u128::from_le_bytes(v6.octets());
                // The low and high 8 bytes, as the kernel side reads them from memory.
                Some((bits as u64, (bits >> 64) as u64))
            }
        };
        match (words(self.laddr), words(self.raddr)) {
            (Some(l), Some(r)) => tracer_common::ipv4_on_wire(tracer_common::AF_INET6, l, r),
            _ => true,
        }
    }

    /// IPv4 when the local address is IPv4, else IPv6 (v4-mapped addresses included).
    pub fn family(&self) -> Family {
        if self.laddr.is_ipv4() {
            Family::Ipv4
        } else {
            Family::Ipv6
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for raw in 0..=14 {
            let state = TcpState::from(raw);
            assert_eq!(TcpState::from_name(&state.name()), Some(state));
        }
        assert_eq!(TcpState::from(8).name(), "CLOSE_WAIT");
        assert_eq!(TcpState::from(99).name(), "UNKNOWN(99)");
        for raw in 0..=20 {
            assert_eq!(TcpState::from(raw).number(), raw);
        }
        assert_eq!(TcpState::from(0), TcpState::Unknown(0));
    }
}
