//! Golden output of the sinks, rendered into a `Vec<u8>`.

use super::{JsonSink, Sink, TextSink};
use crate::{
    cause::{Cause, ResetBy},
    engine::{Engine, Options},
    record::Record,
    testing::{by, transition, MS},
    units::WallClock,
};

/// 2026-11-23T08:00:00Z at monotonic zero.
const EPOCH: i128 = 1_795_420_800_000_000_000;

fn records() -> Vec<Record> {
    let mut e = Engine::new(
        Options {
            timelines: true,
            ..Options::default()
        },
        WallClock::fixed(EPOCH),
    );
    let mut out = Vec::new();
    // The connection's later transitions, run in the context of another task (pid 1, nginx).
    let nginx = |ts_ns, old, new| {
        by(
            transition(
                ts_ns,
                0xffff_8880_0000_1000,
                "127.0.0.1:40000",
                "127.0.0.1:8080",
                old,
                new,
            ),
            1,
            "nginx",
        )
    };
    for t in [
        by(
            transition(
                MS,
                0xffff_8880_0000_1000,
                "127.0.0.1:0",
                "127.0.0.1:8080",
                7,
                2,
            ),
            4242,
            "curl",
        ),
        nginx(2 * MS + 250_000, 2, 1),
        nginx(3 * MS, 1, 7),
        by(
            transition(
                4 * MS,
                0xffff_8880_0000_2000,
                "[2001:db8::1234:5678:9abc:def0]:443",
                "[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:55555",
                1,
                8,
            ),
            7,
            "swapper/0",
        ),
    ] {
        // The reset comes from the peer, as the kernel reports it.
        let cause = (t.new.name() == "CLOSE").then(|| Cause {
            error: Some("ECONNRESET".into()),
            reset_by: Some(ResetBy::Peer),
        });
        e.transition_with_cause(t, cause, &mut out);
    }
    out
}

fn text(wide: bool) -> String {
    let mut sink = TextSink::new(Vec::new(), wide);
    sink.begin().unwrap();
    for r in records() {
        sink.write(&r).unwrap();
    }
    String::from_utf8(sink.into_inner()).unwrap()
}

#[test]
fn text_lines() {
    let expected = "\
TIME         PID     COMM             LADDR           LPORT RADDR           RPORT OLDSTATE     -> NEWSTATE     MS
08:00:00.001 4242    curl             127.0.0.1       0     127.0.0.1       8080  CLOSE        -> SYN_SENT     -
08:00:00.002 4242    curl             127.0.0.1       40000 127.0.0.1       8080  SYN_SENT     -> ESTABLISHED  1.250
08:00:00.003 4242    curl             127.0.0.1       40000 127.0.0.1       8080  ESTABLISHED  -> CLOSE        0.750
08:00:00.003 TIMELINE pid=4242 comm=curl 127.0.0.1:40000 -> 127.0.0.1:8080 outcome=reset error=ECONNRESET reset_by=peer SYN_SENT(1.250) > ESTABLISHED(0.750) > CLOSE
08:00:00.004 -       -                2001:db8::1234:5678:9abc:def0 443   2001:db8:ffff:ffff:ffff:ffff:ffff:ffff 55555 ESTABLISHED  -> CLOSE_WAIT   -
";
    assert_eq!(text(false), expected);
}

#[test]
fn wide_columns_fit_ipv6() {
    let out = text(true);
    let lines: Vec<&str> = out.lines().collect();
    // Header and every transition line align when addresses fit in 39 columns.
    let col = lines[0].find("OLDSTATE").unwrap();
    for line in [lines[1], lines[2], lines[5]] {
        assert_eq!(&line[col - 1..col], " ", "{line}");
        assert!(
            line[col..].starts_with("CLOSE")
                || line[col..].starts_with("SYN_SENT")
                || line[col..].starts_with("ESTABLISHED"),
            "{line}"
        );
    }
}

#[test]
fn json_lines_have_the_documented_fields_and_parse_back() {
    let mut sink = JsonSink::new(Vec::new());
    let records = records();
    for r in &records {
        sink.write(r).unwrap();
    }
    let out = String::from_utf8(sink.into_inner()).unwrap();
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for key in [
        "type",
        "ts_ns",
        "time",
        "skaddr",
        "family",
        "laddr",
        "lport",
        "raddr",
        "rport",
        "old_state",
        "new_state",
        "duration_ns",
        "pid",
        "comm",
        "ctx_pid",
        "ctx_comm",
        "ctx_tid",
        "ctx_thread",
    ] {
        assert!(keys.contains(&key), "missing {key} in {first}");
    }
    assert_eq!(first["type"], "transition");
    assert_eq!(first["time"], "2026-11-23T08:00:00.001000Z");
    assert_eq!(first["skaddr"], "0xffff888000001000");
    assert_eq!(first["family"], "ipv4");
    assert_eq!(first["old_state"], "CLOSE");
    assert_eq!(first["new_state"], "SYN_SENT");
    assert!(first["duration_ns"].is_null());
    let parsed: Vec<Record> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(parsed, records);
}

#[test]
fn close_wait_reports_are_highlighted_only_with_color() {
    let alert = Record::CloseWait(Box::new(leaky_alert()));
    let render = |color| {
        let mut sink = TextSink::new(Vec::new(), false).with_color(color);
        sink.write(&alert).unwrap();
        String::from_utf8(sink.into_inner()).unwrap()
    };
    let plain = render(false);
    assert_eq!(
        plain,
        "08:00:05.000 *** CLOSE_WAIT for >=5000ms: pid=7 comm=leaky fd=9 holders=2 127.0.0.1:8080 <- 127.0.0.1:40000 recv-q=3 netns=4026531840 container=abababababab (the process has not closed a socket its peer closed)\n"
    );
    assert_eq!(
        render(true),
        format!("\x1b[1;31m{}\x1b[0m\n", plain.trim_end())
    );
}

/// A CLOSE_WAIT report of a leaky process found at start.
fn leaky_alert() -> crate::record::CloseWaitRecord {
    crate::record::CloseWaitRecord {
        ts_ns: 0,
        time: crate::units::WallTime::parse("2026-11-23T08:00:05.000000Z").unwrap(),
        skaddr: None,
        pid: Some(7),
        comm: Some("leaky".into()),
        fd: Some(9),
        family: crate::event::Family::Ipv4,
        laddr: "127.0.0.1".parse().unwrap(),
        lport: 8080,
        raddr: "127.0.0.1".parse().unwrap(),
        rport: 40000,
        age_ms: 5000,
        age_at_least: true,
        recv_q: Some(3),
        netns: Some(4_026_531_840),
        holders: vec![
            crate::record::Holder {
                pid: 7,
                comm: "leaky".into(),
                fd: Some(9),
            },
            crate::record::Holder {
                pid: 8,
                comm: "leaky".into(),
                fd: Some(9),
            },
        ],
        unowned: None,
        cgroup: Some(format!("/system.slice/docker-{}.scope", "ab".repeat(32))),
        container: Some("ab".repeat(32)),
        pod_uid: None,
        state: crate::event::TcpState::CloseWait,
        tcp_info: None,
        fin_read: None,
        diagnosis: None,
    }
}

/// The kernel's history of the socket is one short line under the report.
#[test]
fn close_wait_reports_show_the_sockets_history() {
    let record = |tcp_info, fin_read| crate::record::CloseWaitRecord {
        tcp_info,
        fin_read,
        ..leaky_alert()
    };
    let render = |r: crate::record::CloseWaitRecord| {
        let mut sink = TextSink::new(Vec::new(), false);
        sink.write(&Record::CloseWait(Box::new(r))).unwrap();
        String::from_utf8(sink.into_inner()).unwrap()
    };
    let text = render(record(
        Some(crate::record::TcpInfo {
            last_data_recv_ms: 41_250,
            last_ack_recv_ms: 3_004,
        }),
        Some(false),
    ));
    let second = text.lines().nth(1).expect("a second line");
    assert_eq!(
        second.trim(),
        "socket: last data from the peer 41.2 s ago, last ACK 3.0 s ago; FIN not read"
    );
    assert_eq!(render(record(None, None)).lines().count(), 1);
}

/// A dual-stack socket serving an IPv4 peer: in the narrow layout its v4-mapped addresses
/// show as IPv4 and the columns stay aligned, and so in its timeline; `-w` shows them whole.
#[test]
fn v4_mapped_addresses_keep_the_columns_aligned() {
    let mut e = Engine::new(
        Options {
            timelines: true,
            ..Options::default()
        },
        WallClock::fixed(EPOCH),
    );
    let mut out = Vec::new();
    for (sk, local, remote) in [
        (1, "127.0.0.1:8080", "127.0.0.1:40000"),
        (
            2,
            "[::ffff:192.168.100.200]:8080",
            "[::ffff:192.168.100.201]:40001",
        ),
    ] {
        e.transition(transition(MS, sk, local, remote, 1, 8), &mut out);
    }
    let ended = out.len();
    e.transition(
        transition(
            2 * MS,
            2,
            "[::ffff:192.168.100.200]:8080",
            "[::ffff:192.168.100.201]:40001",
            8,
            9,
        ),
        &mut out,
    );
    e.transition(
        transition(
            3 * MS,
            2,
            "[::ffff:192.168.100.200]:8080",
            "[::ffff:192.168.100.201]:40001",
            9,
            7,
        ),
        &mut out,
    );
    let render = |wide| {
        let mut sink = TextSink::new(Vec::new(), wide);
        sink.begin().unwrap();
        for r in &out {
            sink.write(r).unwrap();
        }
        String::from_utf8(sink.into_inner()).unwrap()
    };
    let narrow = render(false);
    let lines: Vec<&str> = narrow.lines().collect();
    let col = lines[0].find("OLDSTATE").unwrap();
    for line in &lines[1..=ended] {
        assert!(line[col..].starts_with("ESTABLISHED"), "{narrow}");
    }
    assert!(
        narrow
            .contains("TIMELINE pid=100 comm=test 192.168.100.200:8080 -> 192.168.100.201:40001 "),
        "{narrow}"
    );
    assert!(
        lines[2].contains(" 192.168.100.200 8080  192.168.100.201 40001 "),
        "{narrow}"
    );
    let wide = render(true);
    assert!(
        wide.contains("TIMELINE pid=100 comm=test [::ffff:192.168.100.200]:8080 -> "),
        "{wide}"
    );
}

#[test]
fn summary_says_not_available_where_the_kernel_counts_no_skipped_runs() {
    let mut s = crate::record::Summary {
        recursion_misses: None,
        ..crate::record::Summary::default()
    };
    let text = super::text::summary(&s);
    assert!(
        text.contains("not available (kernel skipped the program: recursion_misses)"),
        "{text}"
    );
    s.recursion_misses = Some(3);
    assert!(
        super::text::summary(&s).contains(" 3 (kernel skipped the program"),
        "{}",
        super::text::summary(&s)
    );
    // `--stuck` reports are counted when there were any.
    assert!(!super::text::summary(&s).contains("stuck"));
    (s.stuck_alerts, s.stuck_resolved) = (2, 1);
    assert!(
        super::text::summary(&s).contains("(0 resolved), 2 stuck alerts (1 resolved)\n"),
        "{}",
        super::text::summary(&s)
    );
}

/// A process names itself (`prctl(PR_SET_NAME)`) with a newline, an escape sequence and a
/// backslash: each of its records stays one line of text, its name escaped; JSON keeps it as
/// it is, escaped by serde.
#[test]
fn a_process_name_cannot_break_a_text_line() {
    let name = "a\nb\u{1b}[2J\\";
    let mut e = Engine::new(
        Options {
            timelines: true,
            ..Options::default()
        },
        WallClock::fixed(EPOCH),
    );
    let mut records = Vec::new();
    for (ts, old, new) in [(MS, 7, 2), (2 * MS, 2, 1), (3 * MS, 1, 7)] {
        let t = transition(
            ts,
            0xffff_8880_0000_3000,
            "127.0.0.1:40000",
            "127.0.0.1:8080",
            old,
            new,
        );
        e.transition_with_cause(by(t, 4242, name), None, &mut records);
    }
    let mut sink = TextSink::new(Vec::new(), false);
    for r in &records {
        sink.write(r).unwrap();
    }
    let text = String::from_utf8(sink.into_inner()).unwrap();
    assert_eq!(text.lines().count(), records.len(), "{text}");
    assert!(!text.contains('\u{1b}'), "{text}");
    assert!(text.contains(r"a\nb\u{1b}[2J\\"), "{text}");
    let mut json = JsonSink::new(Vec::new());
    for r in &records {
        json.write(r).unwrap();
    }
    let json = String::from_utf8(json.into_inner()).unwrap();
    assert_eq!(json.lines().count(), records.len());
    let first: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(first["comm"], name);
}
