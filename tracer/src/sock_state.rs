//! What the socket itself told the eBPF program at a transition ([`tracer_common::TcpStateEvent::sock`]),
//! and the three decisions made from it: whether the running task holds the socket (the
//! transition ran in its process context, and the task is no kernel thread), whether an active close ended in TIME_WAIT or
//! still waits in FIN_WAIT2 for the peer's FIN, and whether anything (an RST, an error) can
//! still follow a transition to CLOSE.
//!
//! All come from the kernel, not from the state pair:
//! - `sk_lock.owned` (`sock_owned_by_user()`) is set while a process holds the socket lock:
//!   `connect()`, `listen()`, `shutdown()` and `close()` (`tcp_close()` keeps it through the
//!   RST of `SO_LINGER {1, 0}` or of unread bytes, and through the orphan's move to a timewait
//!   socket), and `release_sock()` keeps it while it runs the packets queued on the backlog
//!   meanwhile, in the lock holder's context. Softirq and the TCP timers change a socket's
//!   state only while no process owns it (they queue the packet or defer the timer otherwise).
//!   Clear, the transition ran in softirq, a timer, or a process holding only the spinlock
//!   (`lock_sock_fast()`, as MPTCP's subflow close does).
//! - `SOCK_DONE` in `sk_flags` is set by `tcp_fin()` only, when the peer's FIN arrives; its
//!   FIN_WAIT2 case moves the connection to TIME_WAIT. An orphan whose FIN was acknowledged
//!   before the peer's FIN moves to a timewait socket in the FIN_WAIT2 sub-state
//!   (`tcp_time_wait(sk, TCP_FIN_WAIT2, ..)`) with `SOCK_DONE` clear. `sk_shutdown` cannot
//!   tell them apart: `__tcp_close()` sets `RCV_SHUTDOWN` on every closed socket.
//! - `SOCK_DEAD` in `sk_flags` (`sock_orphan()`): the socket's last file was closed.
//! - `icsk_ulp_ops`: an upper layer protocol is attached (an MPTCP subflow, kernel TLS).
//! - `PF_KTHREAD` in the lock holder's `task_struct.flags`: a kernel thread holds the lock.
//!   MPTCP's worker (a `kworker`) locks the MPTCP sockets it moves (`ESTABLISHED ->
//!   CLOSE_WAIT` when the peer's DATA_FIN is in, the last ACK's `LAST_ACK -> CLOSE`): it runs
//!   in no process's context and owns nothing.

use tracer_common::{
    IPPROTO_TCP, SOCK_KTHREAD, SOCK_KTHREAD_READ, SOCK_ORPHAN, SOCK_ORPHAN_READ, SOCK_OWNED,
    SOCK_OWNED_READ, SOCK_PEER_FIN, SOCK_PEER_FIN_READ, SOCK_ULP, SOCK_ULP_READ,
};

use crate::{
    event::{TcpState, Transition},
    owner,
};

/// The socket lock's `owned` flag from the event's bits; `None` when it was not read.
pub fn owned(bits: u16) -> Option<bool> {
    (bits & SOCK_OWNED_READ != 0).then_some(bits & SOCK_OWNED != 0)
}

/// The peer's FIN seen (FIN_WAIT2 -> CLOSE only); `None` when it was not read.
pub fn peer_fin(bits: u16) -> Option<bool> {
    (bits & SOCK_PEER_FIN_READ != 0).then_some(bits & SOCK_PEER_FIN != 0)
}

/// Whether the socket was already orphaned (`SOCK_DEAD`: its process had closed it), on
/// transitions to CLOSE only; `None` when it was not read.
pub fn orphan(bits: u16) -> Option<bool> {
    (bits & SOCK_ORPHAN_READ != 0).then_some(bits & SOCK_ORPHAN != 0)
}

/// Whether an upper layer protocol was attached to the socket (`icsk_ulp_ops`: an MPTCP
/// subflow, or kernel TLS), on transitions to CLOSE only; `None` when it was not read.
pub fn ulp(bits: u16) -> Option<bool> {
    (bits & SOCK_ULP_READ != 0).then_some(bits & SOCK_ULP != 0)
}

/// Whether the task holding the socket lock (the running one) is a kernel thread; `None` when
/// the lock was not owned or it was not read.
pub fn kernel_thread(bits: u16) -> Option<bool> {
    (bits & SOCK_KTHREAD_READ != 0).then_some(bits & SOCK_KTHREAD != 0)
}

/// The event's bits for the five facts (the inverse of [`owned`], [`peer_fin`], [`orphan`],
/// [`ulp`] and [`kernel_thread`]).
pub fn bits(
    owned: Option<bool>,
    peer_fin: Option<bool>,
    orphan: Option<bool>,
    ulp: Option<bool>,
    kernel_thread: Option<bool>,
) -> u16 {
    let one = |value: Option<bool>, read: u16, set: u16| match value {
        None => 0,
        Some(false) => read,
        Some(true) => read | set,
    };
    one(owned, SOCK_OWNED_READ, SOCK_OWNED)
        | one(peer_fin, SOCK_PEER_FIN_READ, SOCK_PEER_FIN)
        | one(orphan, SOCK_ORPHAN_READ, SOCK_ORPHAN)
        | one(ulp, SOCK_ULP_READ, SOCK_ULP)
        | one(kernel_thread, SOCK_KTHREAD_READ, SOCK_KTHREAD)
}

/// Is `t` a TCP socket's transition to CLOSE after which the kernel reports nothing more of
/// it: no RST sent and no error (so its records need not wait for a cause to follow)? Only
/// the ends of a normal close of an orphan (`SOCK_DEAD`: its process had closed it) with no
/// upper layer protocol attached (MPTCP may reset a subflow after its CLOSE, in softirq, with
/// `mptcp_subflow_reset()`, on kernels up to 6.4 at least; kernel TLS sockets are held along
/// with them), where no kernel path sends an RST or reports an error afterwards:
/// - LAST_ACK or CLOSING -> CLOSE with no process holding the lock: the last ACK in softirq,
///   or a timer (whose RST or, up to 6.9, error comes before; since 6.10 an orphan gets no
///   error report). With the lock held it may be `__tcp_close()` giving up on memory, which
///   sends its RST after the CLOSE (as MPTCP's `tcp_disconnect()` of a subflow does);
/// - FIN_WAIT2 -> CLOSE with the peer's FIN seen: the move to TIME_WAIT in `tcp_fin()`. The
///   other FIN_WAIT2 ends (`TCP_LINGER2` < 0, data arriving after `close()`) send an RST after
///   the CLOSE and have not seen the peer's FIN.
///
/// A cause seen before the CLOSE still makes its records wait (the caller checks that).
pub fn nothing_follows_close(t: &Transition) -> bool {
    if t.new != TcpState::Close
        || t.protocol != IPPROTO_TCP
        || t.orphan != Some(true)
        || t.ulp != Some(false)
    {
        return false;
    }
    match t.old {
        TcpState::LastAck | TcpState::Closing => t.sock_owned == Some(false),
        TcpState::FinWait2 => t.peer_fin == Some(true),
        _ => false,
    }
}

/// Did the transition run in the context of a process holding the socket, so that the running
/// task is the socket's owner? The kernel's answer (the socket lock was owned) where it was
/// read; else the state pair's (`owner::is_process_context`: only the transitions that no
/// packet can drive).
pub fn in_owner_context(t: &Transition) -> bool {
    // A kernel thread holding the lock (MPTCP's worker moving an MPTCP socket) owns nothing.
    t.kernel_thread != Some(true)
        && t.sock_owned
            .unwrap_or_else(|| owner::is_process_context(t.old, t.new))
}

/// The inferred state a connection rests in after an active or simultaneous close reported
/// as `old -> CLOSE`: TIME_WAIT, except after FIN_WAIT2 when the peer's FIN had not arrived
/// (the timewait socket waits in FIN_WAIT2 for it, up to `net.ipv4.tcp_fin_timeout`).
/// Where the peer's FIN could not be read (no BTF offset, an export older than the field)
/// TIME_WAIT, as before.
pub fn resting_state(old: TcpState, peer_fin: Option<bool>) -> TcpState {
    if old == TcpState::FinWait2 && peer_fin == Some(false) {
        TcpState::FinWait2
    } else {
        TcpState::TimeWait
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::transition;

    #[test]
    fn bits_round_trip() {
        let any = [None, Some(false), Some(true)];
        for o in any {
            for f in any {
                for d in any {
                    for u in any {
                        for k in any {
                            let b = bits(o, f, d, u, k);
                            assert_eq!(
                                (owned(b), peer_fin(b), orphan(b), ulp(b), kernel_thread(b)),
                                (o, f, d, u, k)
                            );
                        }
                    }
                }
            }
        }
        assert_eq!(
            owned(SOCK_OWNED),
            None,
            "a set bit without its read bit is unknown"
        );
    }

    /// Only an orphan's LAST_ACK or CLOSING -> CLOSE outside a system call, and its FIN_WAIT2
    /// -> CLOSE after the peer's FIN, of TCP.
    #[test]
    fn nothing_follows_only_a_normal_end_of_an_orphan() {
        use crate::testing::state::{
            CLOSE, CLOSING, ESTABLISHED, FIN_WAIT1, FIN_WAIT2, LAST_ACK, SYN_SENT,
        };
        let (yes, no) = (Some(true), Some(false));
        let with_ulp = |old, orphan, owned, fin, ulp| {
            let mut t = transition(1, 1, "127.0.0.1:1", "127.0.0.1:2", old, CLOSE);
            (t.orphan, t.sock_owned, t.peer_fin, t.ulp) = (orphan, owned, fin, ulp);
            nothing_follows_close(&t)
        };
        let close = |old, orphan, owned, fin| with_ulp(old, orphan, owned, fin, no);
        assert!(close(LAST_ACK, yes, no, None));
        assert!(close(CLOSING, yes, no, None));
        assert!(close(FIN_WAIT2, yes, no, yes));
        assert!(
            close(FIN_WAIT2, yes, yes, yes),
            "the FIN handled as close() releases"
        );
        // Not an orphan, or not known to be.
        assert!(!close(LAST_ACK, no, no, None));
        assert!(!close(LAST_ACK, None, no, None));
        // __tcp_close() giving up on memory, or a subflow's disconnect: the lock is held.
        assert!(!close(LAST_ACK, yes, yes, None));
        assert!(!close(CLOSING, yes, None, None));
        // TCP_LINGER2 < 0 or data after close(): no FIN from the peer.
        assert!(!close(FIN_WAIT2, yes, no, no));
        assert!(!close(FIN_WAIT2, yes, no, None));
        for old in [ESTABLISHED, SYN_SENT, FIN_WAIT1] {
            assert!(!close(old, yes, no, yes), "{old}");
        }
        // An MPTCP subflow (or a kernel TLS socket), or not known not to be one.
        for ulp in [yes, None] {
            assert!(!with_ulp(LAST_ACK, yes, no, None, ulp));
            assert!(!with_ulp(CLOSING, yes, no, None, ulp));
            assert!(!with_ulp(FIN_WAIT2, yes, no, yes, ulp));
        }
        // Not a CLOSE.
        let mut t = transition(1, 1, "127.0.0.1:1", "127.0.0.1:2", FIN_WAIT1, FIN_WAIT2);
        (t.orphan, t.sock_owned, t.peer_fin, t.ulp) = (yes, no, yes, no);
        assert!(!nothing_follows_close(&t), "not a CLOSE");
        let mut t = transition(1, 1, "127.0.0.1:1", "127.0.0.1:2", LAST_ACK, CLOSE);
        (t.orphan, t.sock_owned, t.ulp, t.protocol) = (yes, no, no, 262);
        assert!(!nothing_follows_close(&t), "the MPTCP socket itself");
    }

    #[test]
    fn the_kernel_decides_the_context_and_the_state_pair_only_without_it() {
        // ESTABLISHED -> CLOSE: close() with an RST, or a received RST.
        let mut t = transition(1, 1, "127.0.0.1:1", "127.0.0.1:2", 1, 7);
        assert!(!in_owner_context(&t), "unknown: the state pair cannot tell");
        t.sock_owned = Some(true);
        assert!(in_owner_context(&t));
        // CLOSE -> SYN_SENT with the lock not owned (never seen, but the kernel wins).
        let mut t = transition(1, 1, "127.0.0.1:1", "127.0.0.1:2", 7, 2);
        assert!(in_owner_context(&t));
        t.sock_owned = Some(false);
        assert!(!in_owner_context(&t));
    }

    #[test]
    fn fin_wait2_rests_in_time_wait_only_after_the_peer_fin() {
        use TcpState::{Closing, FinWait2, TimeWait};
        assert_eq!(resting_state(FinWait2, Some(true)), TimeWait);
        assert_eq!(resting_state(FinWait2, Some(false)), FinWait2);
        assert_eq!(resting_state(FinWait2, None), TimeWait);
        assert_eq!(resting_state(Closing, Some(false)), TimeWait);
    }
}
