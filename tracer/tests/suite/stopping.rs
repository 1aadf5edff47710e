//! Stopping with a slow reader of stdout: the first Ctrl-C says how many records are queued
//! and keeps writing them; the second drops them, each counted, and the tracer exits.
//! Privileged, bounded in count and time, loopback only.

use std::{
    collections::HashMap,
    io::{BufRead as _, Read as _},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use tracer::delivery::ByType;

use crate::support::{
    self,
    load::{churn, serve},
    NetNs, WAIT,
};

/// The first number in `line` after `prefix`.
fn number_after(line: &str, prefix: &str) -> Option<u64> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
#[ignore = "needs root and BPF"]
fn a_second_ctrl_c_drops_what_a_stalled_reader_left_queued() {
    let _netns = NetNs::enter();
    let (listener, addr) = support::listen("127.0.0.1:0");
    let port_arg = addr.port().to_string();
    let (mut child, err) =
        support::spawn_piped(&["--json", "-p", &port_arg, "--output-buffer", "64KiB"]);
    let (tx, stderr) = mpsc::channel();
    thread::spawn(move || {
        for line in err.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Nobody reads stdout while 1,000 connections make 10,000 transitions (about 4 MB of
    // JSON): more than the pipe (1 MiB) and the output buffer hold.
    let connections = 1_000;
    let server = serve(listener, connections);
    churn(addr, connections, 2);
    server.join().unwrap();
    thread::sleep(Duration::from_millis(300));

    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, Signal::SIGINT).unwrap();
    let deadline = Instant::now() + WAIT;
    let said = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = stderr
            .recv_timeout(left)
            .expect("a message about the records queued for stdout");
        if line.contains("queued records to stdout") {
            break line;
        }
    };
    let queued = number_after(&said, "writing ").expect("the count of queued records");
    assert!(queued > 0, "{said}");
    assert!(said.contains("Ctrl-C again to drop them"), "{said}");
    // Still writing: the reader has not read anything.
    assert!(
        child.try_wait().unwrap().is_none(),
        "exited after one SIGINT"
    );

    kill(pid, Signal::SIGINT).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "still running 20 s after the second SIGINT"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    // The process is gone: its stderr ends, and the pipe holds what it wrote.
    let rest: Vec<String> = stderr.iter().collect();
    let rest = rest.join("\n");
    assert!(rest.contains("SIGINT: dropping up to "), "{rest}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    // Whole lines only: the write the second SIGINT interrupted may have cut the last one.
    let whole = &out[..out.rfind('\n').map_or(0, |i| i + 1)];
    let delivered = ByType::count(&support::records(whole));

    // The summary on stderr accounts for every record: delivered + dropped = shown.
    let transitions = rest
        .lines()
        .find_map(|l| number_after(l, " events, "))
        .unwrap_or_else(|| panic!("no summary: {rest}"));
    let dropped_line = rest
        .lines()
        .find(|l| l.starts_with("tracer: stdout dropped "))
        .unwrap_or_else(|| panic!("no stdout drops in the summary: {rest}"));
    let dropped = number_after(dropped_line, "dropped ").unwrap();
    let shown = number_after(dropped_line, " of ").unwrap();
    let by_type: HashMap<&str, u64> = dropped_line
        .split_once("records: ")
        .unwrap()
        .1
        .split(", ")
        .filter_map(|part| {
            let (n, name) = part.split_once(' ')?;
            Some((name, n.parse().ok()?))
        })
        .collect();
    assert_eq!(by_type.values().sum::<u64>(), dropped, "{dropped_line}");
    assert!(transitions > 0, "{rest}");
    assert_eq!(
        delivered.transition + by_type.get("transition").copied().unwrap_or(0),
        transitions,
        "transitions: delivered {delivered:?}, {dropped_line}"
    );
    assert_eq!(
        delivered.total() + dropped,
        shown,
        "every type: delivered {delivered:?}, {dropped_line}"
    );
}
