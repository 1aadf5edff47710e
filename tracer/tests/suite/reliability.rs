//! Reliability against the real kernel: overload, a stalled reader, kill -9, two tracers at
//! once, signals and a closed stdout. Privileged, bounded in count and time, loopback only.

use std::{
    io::{BufRead, BufReader, Read},
    net::{TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use tracer::record::{Record, TransitionRecord};

use crate::support::{
    self,
    load::{churn, serve, Oracle, PER_CONNECTION},
    NetNs, Tracer, WAIT,
};

/// How many transitions the last life of a socket had, from its birth (the `CLOSE ->` or
/// `LISTEN ->` transition of its address before the one `is_mine` picks) to its `-> CLOSE`;
/// `None` until that life has ended.
fn last_life(
    ts: &[TransitionRecord],
    is_mine: impl Fn(&TransitionRecord) -> bool,
) -> Option<usize> {
    let at = ts.iter().rposition(is_mine)?;
    let skaddr = &ts[at].skaddr;
    let life: Vec<&TransitionRecord> = ts.iter().filter(|t| &t.skaddr == skaddr).collect();
    let mine = life.iter().position(|t| std::ptr::eq(*t, &ts[at]))?;
    let born = life[..=mine]
        .iter()
        .rposition(|t| matches!(t.old_state.name().as_ref(), "CLOSE" | "LISTEN"))?;
    let died = mine
        + life[mine..]
            .iter()
            .position(|t| t.new_state.name() == "CLOSE")?;
    Some(died - born + 1)
}

#[test]
#[ignore = "needs root and BPF"]
fn overload_counts_every_loss_exactly_and_recovers() {
    let _netns = NetNs::enter();
    let tracer_port = {
        let (l, a) = support::listen("127.0.0.1:0");
        drop(l);
        a.port()
    };
    let port_arg = tracer_port.to_string();
    // One page: room for about 39 events.
    let tracer = Tracer::start(&["-p", &port_arg, "--ring-buffer-size", "4096"]);
    let oracle = Oracle::start(tracer_port);
    let listener = TcpListener::bind(("127.0.0.1", tracer_port)).unwrap();
    let addr = listener.local_addr().unwrap();
    let burst = 2_000;
    let server = serve(listener.try_clone().unwrap(), burst + 1);
    churn(addr, burst, 4);
    // After the burst: one more connection must come through whole.
    thread::sleep(Duration::from_millis(300));
    let client = TcpStream::connect(addr).unwrap();
    let client_port = client.local_addr().unwrap().port();
    drop(client);
    server.join().unwrap();
    tracer.wait_for("the connection after the burst", |rs| {
        // Ports and socket addresses are both reused during the burst: take the last life of
        // the client socket (connect() reports SYN_SENT before the local port is known) and of
        // the accepted one, each from its birth to its CLOSE.
        let ts = support::transitions_on(rs, tracer_port);
        let client = last_life(&ts, |t| {
            t.lport == client_port && t.old_state.name() == "SYN_SENT"
        })?;
        let accepted = last_life(&ts, |t| {
            t.rport == client_port && t.old_state.name() == "LAST_ACK"
        })?;
        (client + accepted == PER_CONNECTION).then_some(())
    });
    drop(listener);
    thread::sleep(Duration::from_millis(200));
    let (records, summary) = tracer.stop();
    let made = oracle.stop();
    let captured = support::transitions_on(&records, tracer_port).len() as u64;
    let lost_records: u64 = records
        .iter()
        .map(|r| match r {
            Record::Lost(l) => l.ringbuf,
            _ => 0,
        })
        .sum();
    assert!(
        summary.lost_ringbuf > 0,
        "the burst never overflowed one page: {summary:?}"
    );
    assert_eq!(
        lost_records, summary.lost_ringbuf,
        "lost records add up to the summary"
    );
    assert_eq!(summary.decode_errors, 0);
    made.assert_accounts_for(
        captured + summary.lost_ringbuf,
        summary.recursion_misses,
        &format!("{summary:?}"),
    );
}

#[test]
#[ignore = "needs root and BPF"]
fn a_stalled_reader_does_not_block_the_kernel_side() {
    let _netns = NetNs::enter();
    let (listener, addr) = support::listen("127.0.0.1:0");
    let port_arg = addr.port().to_string();
    let (mut child, _err) =
        support::spawn_piped(&["--json", "-p", &port_arg, "--output-buffer", "1MiB"]);
    let oracle = Oracle::start(addr.port());
    // Nobody reads stdout while 30,000 transitions (about 10 MB of JSON) happen: ten times
    // the output buffer.
    let connections = 3_000;
    let server = serve(listener, connections);
    churn(addr, connections, 2);
    server.join().unwrap();
    thread::sleep(Duration::from_millis(500));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let (status, out) = support::stop_piped(&mut child);
    assert!(status.success());
    let made = oracle.stop();
    let records = support::records(&out);
    let Some(Record::Summary(summary)) = records.last() else {
        panic!("no summary last")
    };
    // The header and the summary aside.
    let delivered = records.len() as u64 - 2;
    assert_eq!(
        summary.lost_ringbuf, 0,
        "the kernel side was blocked: {summary:?}"
    );
    assert!(
        summary.output_dropped > 0,
        "the stall never filled the queue: {summary:?}"
    );
    assert_eq!(
        delivered + summary.output_dropped,
        summary.output_records,
        "{summary:?}"
    );
    // Every transition the kernel ran our program for was received: none lost to the stall.
    made.assert_accounts_for(
        summary.transitions,
        summary.recursion_misses,
        &format!("{summary:?}"),
    );
    assert!(
        rss_kb < 100 * 1024,
        "memory grew with the backlog: {rss_kb} kB"
    );
}

/// BPF object ids the tracer process holds (programs, maps), from its fdinfo.
fn bpf_ids(pid: u32) -> Vec<(String, u32)> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for key in ["prog_id", "map_id"] {
            if let Some(id) = tracer::probe::fdinfo_field(&info, key) {
                ids.push((key.to_owned(), id as u32));
            }
        }
    }
    ids
}

fn alive(kind: &str, id: u32) -> bool {
    match kind {
        "prog_id" => aya::programs::loaded_programs()
            .flatten()
            .any(|p| p.id() == id),
        _ => aya::maps::loaded_maps().flatten().any(|m| m.id() == id),
    }
}

#[test]
#[ignore = "needs root and BPF"]
fn kill_9_leaves_nothing_attached() {
    let _netns = NetNs::enter();
    let tracer = Tracer::start(&["-p", "1"]);
    let ids = bpf_ids(tracer.pid());
    assert!(ids.iter().any(|(k, _)| k == "prog_id"), "{ids:?}");
    assert!(ids.iter().all(|(k, id)| alive(k, *id)));
    tracer.signal(Signal::SIGKILL);
    drop(tracer);
    let deadline = Instant::now() + WAIT;
    loop {
        let left: Vec<_> = ids.iter().filter(|(k, id)| alive(k, *id)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still in the kernel after kill -9: {left:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "needs root and BPF"]
fn two_tracers_work_independently() {
    let _netns = NetNs::enter();
    let (listener, addr) = support::listen("[::1]:0");
    let port_arg = addr.port().to_string();
    let first = Tracer::start(&["-p", &port_arg]);
    let second = Tracer::start(&["-p", &port_arg]);
    let server = serve(listener.try_clone().unwrap(), 2);
    churn(addr, 1, 1);
    for tracer in [&first, &second] {
        tracer.wait_for("the first connection", |rs| {
            (support::transitions_on(rs, addr.port()).len() == PER_CONNECTION).then_some(())
        });
    }
    let (_, summary) = first.stop();
    assert_eq!(summary.transitions, PER_CONNECTION as u64);
    churn(addr, 1, 1);
    second.wait_for("the second connection", |rs| {
        (support::transitions_on(rs, addr.port()).len() == 2 * PER_CONNECTION).then_some(())
    });
    server.join().unwrap();
    let (_, summary) = second.stop();
    assert_eq!(summary.lost_ringbuf, 0);
}

#[test]
#[ignore = "needs root and BPF"]
fn sigterm_and_sighup_end_with_a_summary() {
    let _netns = NetNs::enter();
    let dir = tempfile::tempdir().unwrap();
    for signal in [Signal::SIGTERM, Signal::SIGHUP] {
        let export = dir.path().join(format!("{signal}.ndjson"));
        let tracer = Tracer::start(&["-p", "1", "--export", export.to_str().unwrap()]);
        tracer.signal(signal);
        tracer.wait_for("the summary", |rs| {
            rs.iter().find(|r| matches!(r, Record::Summary(_))).cloned()
        });
        // The export is complete: header first, summary last.
        let deadline = Instant::now() + WAIT;
        let lines = loop {
            let text = std::fs::read_to_string(&export).unwrap();
            let lines = support::records(&text);
            if matches!(lines.last(), Some(Record::Summary(_))) {
                break lines;
            }
            assert!(
                Instant::now() < deadline,
                "{signal}: export without a summary: {text}"
            );
            thread::sleep(Duration::from_millis(20));
        };
        assert!(matches!(lines.first(), Some(Record::Header(_))), "{signal}");
    }
}

#[test]
#[ignore = "needs root and BPF"]
fn a_closed_stdout_ends_quietly_with_success() {
    let _netns = NetNs::enter();
    let (listener, addr) = support::listen("127.0.0.1:0");
    let port_arg = addr.port().to_string();
    let (mut child, mut err) = support::spawn_piped(&["-p", &port_arg]);
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let mut out = BufReader::new(out);
        let mut header = String::new();
        let _ = out.read_line(&mut header);
        let _ = tx.send(header);
        // `out` is dropped here: like `tracer | head -1`.
    });
    let header = rx
        .recv_timeout(WAIT)
        .expect("the header line, before any event");
    assert!(header.starts_with("TIME"), "{header}");
    let rounds = 40;
    let server = serve(listener, rounds);
    let mut status = None;
    for _ in 0..rounds {
        churn(addr, 1, 1);
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the tracer kept running with stdout closed");
    };
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(!rest.contains("error"), "{rest}");
    drop(server); // Blocked in accept() for the rounds not needed; ends with the test binary.
}
