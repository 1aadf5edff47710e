//! The matcher and the engine with causes, from recorded orders of events: each test is one
//! order in which a kernel reports a connection's end.

use std::net::SocketAddr;

use tracer_common::{
    cause::{CauseEvent, CAUSE_ERROR_REPORT, CAUSE_RECEIVED_RESET, CAUSE_SENT_RESET},
    AF_INET, AF_INET6,
};

use super::{errno_name, ResetBy, Signal, WINDOW_NS};
use crate::{
    engine::{CauseSource, Engine, Options},
    record::Record,
    testing::{
        state::{CLOSE, ESTABLISHED, SYN_SENT},
        transition, C, MS, S,
    },
    timeline::Outcome,
    units::WallClock,
};

const US: u64 = 1_000;

fn raw(ts_ns: u64, kind: u16) -> CauseEvent {
    CauseEvent {
        ts_ns,
        skaddr: 0,
        saddr: [0; 16],
        daddr: [0; 16],
        tgid: 100,
        tid: 100,
        cpu: 0,
        error: 0,
        kind,
        sport: 0,
        dport: 0,
        family: 0,
    }
}

fn reset(ts_ns: u64, skaddr: u64, kind: u16) -> Signal {
    Signal::from_raw(&CauseEvent {
        skaddr,
        ..raw(ts_ns, kind)
    })
    .unwrap()
}

/// An error report on CPU 0 by task 100 (as [`transition`] makes them).
fn error(ts_ns: u64, local: &str, remote: &str, errno: i32) -> Signal {
    let local: SocketAddr = local.parse().unwrap();
    let remote: SocketAddr = remote.parse().unwrap();
    let bytes = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => {
            let mut out = [0; 16];
            out[..4].copy_from_slice(&v4.ip().octets());
            out
        }
        SocketAddr::V6(v6) => v6.ip().octets(),
    };
    Signal::from_raw(&CauseEvent {
        saddr: bytes(local),
        daddr: bytes(remote),
        error: errno,
        sport: local.port(),
        dport: remote.port(),
        family: if local.is_ipv4() { AF_INET } else { AF_INET6 },
        ..raw(ts_ns, CAUSE_ERROR_REPORT)
    })
    .unwrap()
}

fn live() -> Engine {
    Engine::new(
        Options {
            timelines: true,
            causes: CauseSource::Live {
                error_reports: true,
            },
            ..Options::default()
        },
        WallClock::fixed(0),
    )
}

/// A connection opened at 1 ms, whose end is fed by `end`; then the engine is settled at
/// `settle_ns` (if any). Returns (error, reset_by, outcome) of its transition to CLOSE and
/// timeline, checking that they agree, and everything that came out before the settle.
fn ended(
    end: impl FnOnce(&mut Engine, &mut Vec<Record>),
    settle_ns: Option<u64>,
) -> ((Option<String>, Option<ResetBy>, Outcome), Vec<Record>) {
    let mut e = live();
    let mut out = Vec::new();
    e.transition(transition(MS, 9, C, S, CLOSE, SYN_SENT), &mut out);
    e.transition(transition(MS, 9, C, S, SYN_SENT, ESTABLISHED), &mut out);
    end(&mut e, &mut out);
    let before = out.clone();
    if let Some(now) = settle_ns {
        e.settle(now, &mut out);
    }
    e.finish(u64::MAX / 2, 0, None, &mut out);
    let close = out
        .iter()
        .find_map(|r| match r {
            Record::Transition(t) if t.new_state.name() == "CLOSE" => Some(t.clone()),
            _ => None,
        })
        .expect("a transition to CLOSE");
    let tl = out
        .iter()
        .find_map(|r| match r {
            Record::Timeline(t) => Some(t.clone()),
            _ => None,
        })
        .expect("a timeline");
    assert_eq!((&tl.error, tl.reset_by), (&close.error, close.reset_by));
    ((close.error, close.reset_by, tl.outcome), before)
}

fn closes(records: &[Record]) -> usize {
    records
        .iter()
        .filter(|r| matches!(r, Record::Transition(t) if t.new_state.name() == "CLOSE"))
        .count()
}

/// `tcp_reset`: the RST is reported, then the CLOSE, then the error (if the application still
/// holds the socket). The CLOSE waits for the error, and no longer.
#[test]
fn a_peer_reset_is_reset_with_its_error() {
    let (got, before) = ended(
        |e, out| {
            e.cause(reset(2 * MS, 9, CAUSE_RECEIVED_RESET), out);
            e.transition(transition(2 * MS + US, 9, C, S, ESTABLISHED, CLOSE), out);
            assert_eq!(closes(out), 0, "held for its error");
            e.cause(error(2 * MS + 2 * US, C, S, libc::ECONNRESET), out);
        },
        None,
    );
    assert_eq!(
        got,
        (
            Some("ECONNRESET".into()),
            Some(ResetBy::Peer),
            Outcome::Reset
        )
    );
    assert_eq!(closes(&before), 1, "released by its error report");
}

/// `tcp_disconnect` (`SO_LINGER {1, 0}`) and `tcp_close` with unread data: the CLOSE, then the
/// RST; no error (the application closed the socket itself). Released when the window ends.
#[test]
fn a_reset_sent_by_close_is_a_local_reset_without_error() {
    let (got, before) = ended(
        |e, out| {
            e.transition(transition(2 * MS, 9, C, S, ESTABLISHED, CLOSE), out);
            e.cause(reset(2 * MS + US, 9, CAUSE_SENT_RESET), out);
        },
        Some(2 * MS + WINDOW_NS),
    );
    assert_eq!(got, (None, Some(ResetBy::Local), Outcome::Reset));
    assert_eq!(closes(&before), 0, "held until the window ends");
}

/// Up to Linux 6.9 a timer's error comes before the CLOSE (`tcp_write_err`), since 6.10 after
/// it (`tcp_done_with_error`): a timeout either way.
#[test]
fn a_timer_kill_is_a_timeout_in_either_order() {
    let (before_close, _) = ended(
        |e, out| {
            e.cause(error(5 * MS, C, S, libc::ETIMEDOUT), out);
            e.transition(transition(5 * MS + US, 9, C, S, ESTABLISHED, CLOSE), out);
            assert_eq!(closes(out), 1, "its error is known: not held");
        },
        None,
    );
    let (after_close, _) = ended(
        |e, out| {
            e.transition(transition(5 * MS, 9, C, S, ESTABLISHED, CLOSE), out);
            e.cause(error(5 * MS + US, C, S, libc::ETIMEDOUT), out);
        },
        None,
    );
    let timeout = (Some("ETIMEDOUT".to_owned()), None, Outcome::Timeout);
    assert_eq!((before_close, after_close), (timeout.clone(), timeout));
}

/// Nothing reported at all: neither a reset nor a timeout.
#[test]
fn an_end_with_no_cause_is_aborted() {
    let (got, _) = ended(
        |e, out| e.transition(transition(5 * MS, 9, C, S, ESTABLISHED, CLOSE), out),
        Some(5 * MS + WINDOW_NS),
    );
    assert_eq!(got, (None, None, Outcome::Aborted));
}

/// Causes of other sockets, other threads or from too long ago are not taken.
#[test]
fn causes_of_other_sockets_are_not_taken() {
    let (got, _) = ended(
        |e, out| {
            e.cause(reset(5 * MS, 10, CAUSE_RECEIVED_RESET), out);
            e.cause(error(5 * MS, C, "127.0.0.1:8081", libc::ECONNRESET), out);
            let mut other_cpu = error(5 * MS, C, S, libc::ECONNRESET);
            other_cpu.cpu = 1;
            e.cause(other_cpu, out);
            e.cause(reset(MS, 9, CAUSE_RECEIVED_RESET), out);
            e.transition(
                transition(MS + WINDOW_NS + MS, 9, C, S, ESTABLISHED, CLOSE),
                out,
            );
        },
        None,
    );
    assert_eq!(got, (None, None, Outcome::Aborted));
}

/// A refused connect: RST received in SYN_SENT, then CLOSE, then ECONNREFUSED.
#[test]
fn a_refused_connect_says_so() {
    let mut e = live();
    let mut out = Vec::new();
    e.transition(transition(MS, 9, C, S, CLOSE, SYN_SENT), &mut out);
    e.cause(reset(2 * MS, 9, CAUSE_RECEIVED_RESET), &mut out);
    e.transition(transition(2 * MS, 9, C, S, SYN_SENT, CLOSE), &mut out);
    e.cause(error(2 * MS, C, S, libc::ECONNREFUSED), &mut out);
    let tl = out
        .iter()
        .find_map(|r| match r {
            Record::Timeline(t) => Some(t),
            _ => None,
        })
        .expect("released by its error");
    assert_eq!(
        (tl.outcome, tl.error.as_deref(), tl.reset_by),
        (
            Outcome::ConnectFailed,
            Some("ECONNREFUSED"),
            Some(ResetBy::Peer)
        )
    );
}

/// Replays: causes come with the transition; a stream from before causes keeps its resets.
#[test]
fn replays_take_the_recorded_cause() {
    for (source, outcome) in [
        (CauseSource::Given, Outcome::Aborted),
        (CauseSource::Legacy, Outcome::Reset),
    ] {
        let mut e = Engine::new(
            Options {
                timelines: true,
                causes: source,
                ..Options::default()
            },
            WallClock::fixed(0),
        );
        let mut out = Vec::new();
        e.transition(transition(MS, 9, C, S, CLOSE, SYN_SENT), &mut out);
        e.transition(transition(MS, 9, C, S, SYN_SENT, ESTABLISHED), &mut out);
        e.transition_with_cause(
            transition(2 * MS, 9, C, S, ESTABLISHED, CLOSE),
            None,
            &mut out,
        );
        let Some(Record::Timeline(tl)) = out.last() else {
            panic!("{out:?}")
        };
        assert_eq!(tl.outcome, outcome, "{source:?}");
    }
}

#[test]
fn errno_names() {
    assert_eq!(errno_name(libc::ECONNRESET), "ECONNRESET");
    assert_eq!(errno_name(libc::ETIMEDOUT), "ETIMEDOUT");
    assert_eq!(errno_name(libc::EHOSTUNREACH), "EHOSTUNREACH");
    assert_eq!(errno_name(4242), "errno 4242");
}

#[test]
fn unknown_kinds_and_families_do_not_decode() {
    assert!(Signal::from_raw(&raw(1, 9)).is_none());
    assert!(Signal::from_raw(&CauseEvent {
        family: 1,
        ..raw(1, CAUSE_ERROR_REPORT)
    })
    .is_none());
}

/// A storm of causes of sockets never seen, and of closes with no cause: memory stays bounded
/// by the cap and the window, and every close comes out.
#[test]
fn storms_stay_bounded() {
    let mut causes = super::Causes::new(true);
    for i in 0..10_000u64 {
        causes.signal(reset(MS + i, 1_000_000 + i, CAUSE_RECEIVED_RESET));
    }
    assert_eq!(causes.sizes().0, super::RECENT_CAP);
    for i in 0..1_000u64 {
        let t = transition(2 * MS + i, i, C, S, ESTABLISHED, CLOSE);
        causes.hold(super::Closing::of(&t), Vec::new());
    }
    assert_eq!(causes.sizes().1, 1_000);
    let out = causes.release(Some(2 * MS + WINDOW_NS + 1_000));
    assert_eq!(out.len(), 1_000);
    assert_eq!(causes.sizes(), (0, 0), "the window ended for all");
    assert!(causes.index.is_empty() && causes.recent.is_empty());
}

/// The kernel reuses a freed socket's address at once: the CLOSE held for the old socket comes
/// out before the new socket's first transition, so a replay of the stream sees them in order.
#[test]
fn a_reused_address_releases_the_held_close_first() {
    let mut e = live();
    let mut out = Vec::new();
    e.transition(transition(MS, 9, C, S, CLOSE, SYN_SENT), &mut out);
    e.transition(transition(MS, 9, C, S, SYN_SENT, ESTABLISHED), &mut out);
    e.transition(transition(2 * MS, 9, C, S, ESTABLISHED, CLOSE), &mut out);
    e.transition(transition(2 * MS, 8, C, S, ESTABLISHED, CLOSE), &mut out);
    e.transition(
        transition(2 * MS + US, 9, "127.0.0.1:40001", S, CLOSE, SYN_SENT),
        &mut out,
    );
    let order: Vec<(String, u16)> = out
        .iter()
        .filter_map(|r| match r {
            Record::Transition(t) => Some((format!("{}->{}", t.old_state, t.new_state), t.lport)),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        [
            ("CLOSE->SYN_SENT".to_owned(), 40000),
            ("SYN_SENT->ESTABLISHED".to_owned(), 40000),
            ("ESTABLISHED->CLOSE".to_owned(), 40000),
            ("CLOSE->SYN_SENT".to_owned(), 40001),
        ],
        "socket 8's CLOSE is still held, socket 9's came out before its successor"
    );
    e.finish(u64::MAX / 2, 0, None, &mut out);
    assert_eq!(closes(&out), 2);
}

/// An orphan's normal end (its process had closed it; the last ACK outside a system call, or
/// FIN_WAIT2 left for TIME_WAIT on the peer's FIN) with no cause seen before it goes out at
/// once, as a normal close. One with a cause before it still waits, and so do an orphan's
/// CLOSE under a held lock, one from FIN_WAIT1, one from FIN_WAIT2 without the peer's FIN, and
/// an MPTCP subflow's: their RST (`__tcp_close()` giving up on memory, data arriving after
/// `close()`, `mptcp_subflow_reset()`) comes after the CLOSE.
#[test]
fn an_orphans_normal_end_goes_out_at_once() {
    use crate::testing::state::{CLOSE_WAIT, FIN_WAIT1, FIN_WAIT2, LAST_ACK};
    // An orphan's CLOSE from `old`: the lock held or not, the peer's FIN seen (from
    // FIN_WAIT2), an upper layer protocol attached.
    let close = |old: u32, owned: bool, fin: Option<bool>, ulp: bool| {
        let mut t = transition(5 * MS, 9, C, S, old, CLOSE);
        (t.orphan, t.sock_owned, t.peer_fin, t.ulp) = (Some(true), Some(owned), fin, Some(ulp));
        t
    };
    let passive = |e: &mut Engine, out: &mut Vec<Record>| {
        e.transition(transition(3 * MS, 9, C, S, ESTABLISHED, CLOSE_WAIT), out);
        e.transition(transition(4 * MS, 9, C, S, CLOSE_WAIT, LAST_ACK), out);
    };
    let active = |e: &mut Engine, out: &mut Vec<Record>| {
        e.transition(transition(3 * MS, 9, C, S, ESTABLISHED, FIN_WAIT1), out);
        e.transition(transition(4 * MS, 9, C, S, FIN_WAIT1, FIN_WAIT2), out);
    };
    let (got, before) = ended(
        |e, out| {
            passive(e, out);
            e.transition(close(LAST_ACK, false, None, false), out);
        },
        None,
    );
    assert_eq!(closes(&before), 1, "out before any settle: {before:#?}");
    assert_eq!(got, (None, None, Outcome::PassiveClose));
    let (got, before) = ended(
        |e, out| {
            active(e, out);
            e.transition(close(FIN_WAIT2, false, Some(true), false), out);
        },
        None,
    );
    assert_eq!(closes(&before), 1, "out before any settle: {before:#?}");
    assert_eq!(got, (None, None, Outcome::ActiveClose));

    // A reset received before the CLOSE: it waits, and is the peer's.
    let (got, before) = ended(
        |e, out| {
            passive(e, out);
            e.cause(reset(5 * MS, 9, CAUSE_RECEIVED_RESET), out);
            e.transition(close(LAST_ACK, false, None, false), out);
        },
        None,
    );
    assert_eq!(closes(&before), 0, "held: {before:#?}");
    assert_eq!(got.1, Some(ResetBy::Peer));

    // Under a held lock, from FIN_WAIT1, from FIN_WAIT2 before the peer's FIN, and an MPTCP
    // subflow's: the RST sent after the CLOSE is joined to it.
    for (old, owned, fin, ulp) in [
        (LAST_ACK, true, None, false),
        (FIN_WAIT1, false, None, false),
        (FIN_WAIT2, false, Some(false), false),
        (LAST_ACK, false, None, true),
        (FIN_WAIT2, false, Some(true), true),
    ] {
        let (got, before) = ended(
            |e, out| {
                e.transition(transition(4 * MS, 9, C, S, ESTABLISHED, old), out);
                e.transition(close(old, owned, fin, ulp), out);
                e.cause(reset(5 * MS + US, 9, CAUSE_SENT_RESET), out);
            },
            Some(5 * MS + WINDOW_NS),
        );
        assert_eq!(closes(&before), 0, "held: {before:#?}");
        assert_eq!(got.1, Some(ResetBy::Local), "{old} ulp {ulp}");
    }
}

/// A reset seen under an address before a new socket is born there was the old socket's: the
/// new socket's end does not take it. Here the old socket ends in a reset sent after its CLOSE
/// (it keeps the RST) and a new socket at the same address is born before the window closes.
#[test]
fn a_new_socket_does_not_take_its_address_predecessors_reset() {
    let mut e = live();
    let mut out = Vec::new();
    e.transition(transition(MS, 9, C, S, CLOSE, SYN_SENT), &mut out);
    e.transition(transition(MS, 9, C, S, SYN_SENT, ESTABLISHED), &mut out);
    e.transition(transition(4 * MS, 9, C, S, ESTABLISHED, CLOSE), &mut out);
    e.cause(reset(5 * MS, 9, CAUSE_SENT_RESET), &mut out);
    e.transition(transition(6 * MS, 9, C, S, CLOSE, SYN_SENT), &mut out);
    e.transition(transition(7 * MS, 9, C, S, SYN_SENT, CLOSE), &mut out);
    e.settle(7 * MS + WINDOW_NS, &mut out);
    e.finish(u64::MAX / 2, 0, None, &mut out);
    let ends: Vec<_> = out
        .iter()
        .filter_map(|r| match r {
            Record::Transition(t) if t.new_state.name() == "CLOSE" => {
                Some((t.old_state.name().into_owned(), t.reset_by))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        ends,
        [
            ("ESTABLISHED".to_owned(), Some(ResetBy::Local)),
            ("SYN_SENT".to_owned(), None)
        ],
        "{out:#?}"
    );
}
