//! `tracer analyze --html`: the report's structure and numbers on the committed export (not its
//! bytes), hostile inputs, a real browser rendering it (ignored: it installs Debian's chromium
//! when missing, so it runs in the root stage of `cargo xtask test`), and a real capture of the
//! classic CLOSE_WAIT leak (ignored: needs root and BPF). Screenshots are kept under
//! `target/tmp/html-report/` for a person to look at.

use std::{
    fs,
    io::Read as _,
    net::TcpListener,
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use expect_test::expect_file;

use crate::support::{
    self, analyze, browser, edited, fixture, text, tracer_command as tracer, NetNs,
};
use serde_json::Value;
use tracer::{event::TcpState, record::Record};

/// Builds the report of `input` in `dir` and returns its text (panics on failure).
fn report(dir: &Path, input: &Path, extra: &[&str]) -> (String, Output) {
    let out_path = dir.join("report.html");
    let mut args = vec!["--html", out_path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = analyze(&args, input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Owner only, as the export: it shows what the host talks to.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&out_path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    (fs::read_to_string(&out_path).unwrap(), out)
}

/// The report's own key numbers (its `report-data` JSON).
fn data(html: &str) -> Value {
    let start = html.find("id=\"report-data\">").expect("report data") + 17;
    let end = start + html[start..].find("</script>").unwrap();
    serde_json::from_str(&html[start..end].replace("<\\/", "</")).unwrap()
}

/// Section ids in page order.
fn sections(html: &str) -> Vec<&str> {
    html.match_indices("<section id=\"")
        .map(|(i, m)| {
            let rest = &html[i + m.len()..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect()
}

#[test]
fn golden_structure_and_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let (html, out) = report(dir.path(), &fixture(), &[]);
    // The text output is unchanged by --html; the report is announced on stderr.
    assert_eq!(out.stdout, analyze(&[], &fixture()).stdout);
    assert!(
        text(&out.stderr).contains("report written to"),
        "{}",
        text(&out.stderr)
    );
    // Findings first, then the capture, then the charts.
    assert_eq!(
        sections(&html),
        ["findings", "capture", "diagram", "pileup", "gantt", "outcomes", "dwell"]
    );
    let banner = html.find("id=\"losses\"").unwrap();
    assert!(banner < html.find("<section").unwrap());
    assert!(html.contains("Complete capture: no record was lost"));
    // Self-contained: nothing to load, and a policy that forbids loading anything.
    assert!(html.contains("Content-Security-Policy\" content=\"default-src 'none'"));
    for needle in [" src=", "<link", "@import", "url("] {
        assert!(!html.contains(needle), "{needle} in the report");
    }
    let without_ns = html.replace("http://www.w3.org/2000/svg", "");
    assert!(!without_ns.contains("http://") && !without_ns.contains("https://"));
    // Every chart has a text alternative: an SVG title, a caption, and a table of numbers.
    let figures = html.matches("<figure data-figure=").count();
    assert_eq!(figures, 5);
    assert_eq!(
        html.matches("<svg role=\"img\" aria-labelledby=").count(),
        figures
    );
    assert_eq!(html.matches("<figcaption>").count(), figures);
    assert_eq!(
        html.matches("<summary>The numbers</summary><table").count(),
        figures
    );
    // The findings in words, with the numbers of `tracer analyze`.
    for words in [
        "3 sockets stayed in CLOSE_WAIT for 300ms or more",
        "held by 1 process; 1 of them still there",
        "<strong>python3 (pid 9871)</strong> held 3 sockets in CLOSE_WAIT, the oldest for 1.58s",
        "1 never left CLOSE_WAIT during the capture",
        "2 closed late by the process (→ LAST_ACK)",
        "<td class=n>≥ 1.27s</td>",
        "kernel</dt><dd>6.18.44-fc-v595",
        "52 transitions, 14 connections rebuilt",
        "3 stuck past the threshold",
    ] {
        assert!(html.contains(words), "missing {words:?}");
    }
    assert!(html.contains("data-edge=\"ESTABLISHED>CLOSE_WAIT\" data-count=\"4\""));
    assert!(html.contains("data-edge=\"CLOSE_WAIT>LAST_ACK\" data-count=\"4\""));
    assert!(html.contains("data-edge=\"CLOSING>TIME_WAIT\" data-count=\"0\" class=\"faint\""));
    let data = serde_json::to_string_pretty(&data(&html)).unwrap() + "\n";
    expect_file!["../data/export-v1.report.json"].assert_eq(&data);
}

#[test]
fn timelines_still_print_with_html() {
    let dir = tempfile::tempdir().unwrap();
    let (_, out) = report(dir.path(), &fixture(), &["--timelines"]);
    assert_eq!(out.stdout, analyze(&["--timelines"], &fixture()).stdout);
    let (_, json) = report(dir.path(), &fixture(), &["--json"]);
    assert_eq!(json.stdout, analyze(&["--json"], &fixture()).stdout);
}

#[test]
fn truncated_and_unknown_records_still_make_a_report_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let lines = fs::read_to_string(fixture()).unwrap().lines().count();
    let cut = edited(dir.path(), 40, "{\"type\":\"transition\",\"ts_ns\":15116");
    let (html, out) = report(dir.path(), &cut, &[]);
    assert!(
        text(&out.stderr).contains("cut short"),
        "{}",
        text(&out.stderr)
    );
    assert!(html.contains("<strong>Lossy or incomplete capture:</strong>"));
    assert!(html.contains("the input has no summary"));
    let odd = edited(dir.path(), lines, "{\"type\":\"socket_stats\",\"x\":1}\n");
    let body =
        fs::read_to_string(&odd)
            .unwrap()
            .replacen("\"cpu\":1}", "\"cpu\":1,\"cgroup\":\"/x\"}", 1);
    // The unknown record must come before the summary to be read at all.
    let mut lines: Vec<&str> = body.lines().collect();
    let unknown = lines.pop().unwrap();
    lines.insert(5, unknown);
    fs::write(&odd, lines.join("\n") + "\n").unwrap();
    let (html, _) = report(dir.path(), &odd, &[]);
    assert!(html.contains("reading it gave 2 warnings"), "{html}");
    assert_eq!(data(&html)["findings"], 3);
}

#[test]
fn bad_input_is_a_clear_error_and_no_report() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("r.html");
    let bad = edited(
        dir.path(),
        5,
        "{\"type\":\"transition\",\"ts_ns\":\"soon\"}\n{}\n",
    );
    let out = analyze(&["--html", out_path.to_str().unwrap()], &bad);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("tracer: error: no report written: line 6: bad transition record"),
        "{err}"
    );
    assert!(!out_path.exists());
    let empty = dir.path().join("empty.ndjson");
    fs::write(&empty, "").unwrap();
    let out = analyze(&["--html", out_path.to_str().unwrap()], &empty);
    assert_eq!(out.status.code(), Some(1));
    assert!(!out_path.exists());
    // A report that cannot be written is an error naming the file.
    let out = analyze(&["--html", "/nonexistent-dir/r.html"], &fixture());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot write the report to /nonexistent-dir/r.html"));
}

/// An export of `n` server connections, each `ESTABLISHED -> CLOSE_WAIT -> LAST_ACK -> CLOSE`
/// with a CLOSE_WAIT of `i` ms, from `procs` processes: many timelines, edges and stays.
fn synthetic(path: &Path, n: u64, procs: u32) {
    let mut f = std::io::BufWriter::new(fs::File::create(path).unwrap());
    tracer::analyze::synthetic::write(&mut f, n, procs).unwrap();
}

#[test]
fn a_large_export_gives_a_bounded_report() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("big.ndjson");
    synthetic(&input, 5_000, 40);
    let (html, _) = report(dir.path(), &input, &[]);
    assert!(html.len() < 1 << 20, "report of {} bytes", html.len());
    let d = data(&html);
    assert_eq!(d["connections"], 5_000);
    assert_eq!(d["transitions"], 25_000);
    assert!(d["gantt"].as_array().unwrap().len() <= 24);
    // A lossy capture says so first.
    let banner = html.find("Lossy or incomplete capture").unwrap();
    assert!(banner < html.find("<section").unwrap());
    assert!(html.contains("the traced run lost 7 records"));
    // 40 processes: 6 lines and the rest summed.
    assert!(html.contains("34 other processes"), "pile-up legend");
    assert!(html.contains("data-edge=\"CLOSE_WAIT>LAST_ACK\" data-count=\"5000\""));
}

/// The browser renders the committed fixture's report: not blank, its own consistency check
/// passed, no console message but that check's.
#[test]
#[ignore = "installs Debian's chromium when missing (root): run by `cargo xtask test`"]
fn browser_renders_the_fixture_report() {
    let dir = browser::artefacts();
    let html = dir.join("fixture.html");
    let out = analyze(&["--html", html.to_str().unwrap()], &fixture());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shot = browser::check(&html, &dir.join("fixture.png"));
    eprintln!("screenshot: {}", shot.display());
}

/// The classic leak, really traced: a thread-per-connection server that sleeps before it
/// closes, two clients killed. The report names the server and its two stuck sockets.
#[test]
#[ignore = "needs root and BPF: run by `cargo xtask test`"]
fn real_capture_of_the_classic_leak() {
    const HOLD: Duration = Duration::from_millis(2500);
    support::require_root();
    let _netns = NetNs::enter();
    // A port free now rather than a fixed one: the tracepoint sees every namespace, so a
    // fixed port would count another run's connections (another checkout's tests).
    let port = support::dead_port("127.0.0.1:0").port();
    let dir = browser::artefacts();
    let export = dir.join("leak.ndjson");
    let _ = fs::remove_file(&export);
    let mut tracer_run = tracer()
        .args(["--export", export.to_str().unwrap(), "--force"])
        .args([
            "-p",
            &port.to_string(),
            "--close-wait-threshold",
            "500ms",
            "--no-transitions",
        ])
        .args(["--report-interval", "1s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the tracer");
    let deadline = Instant::now() + support::WAIT;
    while !fs::read_to_string(&export).is_ok_and(|t| t.contains('\n')) {
        assert!(Instant::now() < deadline, "the tracer did not start");
        assert!(
            tracer_run.try_wait().unwrap().is_none(),
            "the tracer exited"
        );
        thread::sleep(Duration::from_millis(50));
    }
    // The server: one thread per connection, which reads until the peer is gone, then sleeps
    // before closing (the leak, bounded).
    // A connect refused (nothing listens yet): an end whose cause the kernel reports.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let server = thread::spawn(move || {
        let mut workers = Vec::new();
        for _ in 0..2 {
            let (mut conn, _) = listener.accept().unwrap();
            workers.push(thread::spawn(move || {
                let mut buf = [0u8; 64];
                while conn.read(&mut buf).is_ok_and(|n| n > 0) {}
                thread::sleep(HOLD);
                drop(conn);
            }));
        }
        for w in workers {
            w.join().unwrap();
        }
    });
    // Two clients, each a process that connects, writes, and is killed.
    for _ in 0..2 {
        let mut client = Command::new("bash")
            .args([
                "-c",
                &format!("exec 3<>/dev/tcp/127.0.0.1/{port}; echo hi >&3; echo up; sleep 30"),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("bash");
        let mut up = [0u8; 3];
        client.stdout.take().unwrap().read_exact(&mut up).unwrap();
        thread::sleep(Duration::from_millis(200));
        client.kill().unwrap();
        client.wait().unwrap();
    }
    server.join().unwrap();
    thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(tracer_run.id()).unwrap()),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = tracer_run.wait().unwrap();
    let mut stderr = String::new();
    tracer_run
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "tracer: {stderr}");
    let html = dir.join("leak.html");
    let out = analyze(&["--html", html.to_str().unwrap()], &export);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = fs::read_to_string(&html).unwrap();
    let d = data(&page);
    let me = std::process::id();
    assert_eq!(d["findings"], 2, "{d:#}");
    assert_eq!(d["processes"].as_array().unwrap().len(), 1, "{d:#}");
    assert_eq!(d["processes"][0]["pid"], me, "{d:#}");
    assert_eq!(d["processes"][0]["sockets"], 2);
    let oldest = d["processes"][0]["oldest_ms"].as_u64().unwrap();
    assert!((2_000..10_000).contains(&oldest), "{oldest}");
    assert!(page.contains("2 closed late by the process (→ LAST_ACK)"));
    let edge = |from: &str, to: &str| {
        d["edges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["from"] == from && e["to"] == to)
            .map_or(0, |e| e["count"].as_u64().unwrap())
    };
    // Both sides of both connections: the server's sockets went through CLOSE_WAIT.
    assert_eq!(edge("ESTABLISHED", "CLOSE_WAIT"), 2, "{d:#}");
    assert_eq!(edge("CLOSE_WAIT", "LAST_ACK"), 2, "{d:#}");
    assert_eq!(edge("ESTABLISHED", "FIN_WAIT1"), 2, "{d:#}");
    assert!(page.contains("Complete capture"), "a clean capture");
    // Why connections ended, as the kernel told: the refused connect's errno and RST.
    assert!(
        page.contains("ECONNREFUSED, RST from the peer ×1"),
        "the refused connect's cause"
    );
    // What the holding process was doing when reported: its diagnosis under its finding.
    let why = page
        .find("<ul class=\"why\">")
        .expect("a diagnosis in the findings");
    assert!(why < page.find("<table class=\"findings\">").unwrap());
    assert!(page[why..].contains("threads: "), "thread groups");
    let shot = browser::check(&html, &dir.join("leak.png"));
    eprintln!("screenshot: {}", shot.display());
}

/// A holder that runs in a container is named with it in the findings.
#[test]
fn findings_name_the_holders_container() {
    let dir = tempfile::tempdir().unwrap();
    let id = "4f9a0c2b7d1e";
    let body: String = fs::read_to_string(fixture())
        .unwrap()
        .lines()
        .map(|line| {
            if line.starts_with("{\"type\":\"close_wait\",") {
                format!("{},\"container\":\"{id}\"}}\n", &line[..line.len() - 1])
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    let input = dir.path().join("in-a-container.ndjson");
    fs::write(&input, body).unwrap();
    let (html, _) = report(dir.path(), &input, &[]);
    let start = html.find("<section id=\"findings\"").unwrap();
    let findings = &html[start..start + html[start..].find("</section>").unwrap()];
    assert!(
        findings.contains(&format!(
            "<strong>python3 (pid 9871)</strong> in container <code>{id}</code> held"
        )),
        "{findings}"
    );
}

/// A state watched with `--stuck` gets its own pile-up chart: a client that shut down its
/// side waits in FIN_WAIT2 while the server keeps its end open, past the threshold.
#[test]
#[ignore = "needs root and BPF"]
fn a_watched_state_gets_its_own_pile_up() {
    support::require_root();
    let _netns = NetNs::enter();
    let (listener, server) = support::listen("127.0.0.1:0");
    let tracer = support::Tracer::start(&[
        "-p",
        &server.port().to_string(),
        "--stuck",
        "FIN_WAIT2=300ms",
        "--timelines",
    ]);
    let mut client = std::net::TcpStream::connect(server).unwrap();
    let (mut held, _) = listener.accept().unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    support::read_to_end(&mut held);
    tracer.wait_for("a FIN_WAIT2 report", |rs| {
        rs.iter()
            .any(|r| matches!(r, Record::Stuck(s) if s.state == TcpState::FinWait2))
            .then_some(())
    });
    drop(held);
    support::read_to_end(&mut client);
    drop(client);
    tracer.wait_for("the client's timeline", |rs| {
        rs.iter()
            .any(|r| {
                matches!(r, Record::Timeline(t) if t.rport == server.port()
                    && t.states.iter().any(|s| s.state == TcpState::FinWait2))
            })
            .then_some(())
    });
    let (records, _) = tracer.stop();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("fin-wait2.ndjson");
    let lines: String = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    fs::write(&input, lines).unwrap();
    let (html, _) = report(dir.path(), &input, &[]);
    assert!(
        sections(&html).contains(&"pileup-fin_wait2"),
        "{:?}",
        sections(&html)
    );
    let start = html.find("<section id=\"pileup-fin_wait2\"").unwrap();
    let pile = &html[start..start + html[start..].find("</section>").unwrap()];
    assert!(pile.contains("FIN_WAIT2 pile-up by process"), "{pile}");
    assert!(
        pile.contains("1 socket in FIN_WAIT2, at most 1 at once")
            && pile.contains("1 crossed the 300ms threshold"),
        "{pile}"
    );
}

/// A socket not seen leaving CLOSE_WAIT in a capture that lost records is not said to be one
/// its process never closed: its leaving may be among the records lost.
#[test]
fn a_lossy_capture_does_not_claim_a_socket_was_never_closed() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, _) = report(dir.path(), &fixture(), &[]);
    assert!(whole.contains("never left CLOSE_WAIT during the capture"));
    let lossy = dir.path().join("lossy.ndjson");
    let body = fs::read_to_string(fixture())
        .unwrap()
        .replace("\"lost_ringbuf\":0", "\"lost_ringbuf\":5");
    fs::write(&lossy, body).unwrap();
    let (html, _) = report(dir.path(), &lossy, &[]);
    assert!(html.contains("not seen leaving CLOSE_WAIT (the capture lost records"));
    assert!(!html.contains("never left CLOSE_WAIT during the capture"));
}
